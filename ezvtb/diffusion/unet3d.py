"""A diffusers `UNet3DConditionModel` (the ModelScope text-to-video UNet layout) as one exportable
denoiser step, its graph spec, and the small random configurations the tests and benchmarks use.

    unet3d_step   sample f32[b, c, f, h, w], timestep f32[b], encoder_hidden_states f32[b, L, D]
                  -> eps f32[b, c_out, f, h, w]

The frame count is baked into the graph by the temporal layers' reshapes; H and W are static too
(one graph per shape, as every ezvtb graph).
"""
from __future__ import annotations

import math
import torch
from torch import nn

from ezvtb.engines.base import GraphSpec, TensorSpec

Shapes = tuple[tuple[int, ...], ...]


class UNet3DStep(nn.Module):
    """``unet(sample, timestep, encoder_hidden_states).sample`` with plain tensor I/O (exportable)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


def unet3d_step_spec(shapes: Shapes, out_channels: int | None = None) -> GraphSpec:
    """The GraphSpec of `UNet3DStep` for input shapes (sample, timestep, context)."""
    if len(shapes) != 3 or len(shapes[0]) != 5 or len(shapes[1]) != 1 or len(shapes[2]) != 3:
        raise ValueError(f"shapes: expected (sample (b,c,f,h,w), timestep (b,), context (b,L,D)), got {shapes}")
    (b, c, f, h, w), ts, ctx = shapes
    return GraphSpec(f"unet3d_b{b}_f{f}_{h}x{w}",
                     (TensorSpec("sample", (b, c, f, h, w), "float32"), TensorSpec("timestep", tuple(ts), "float32"),
                      TensorSpec("encoder_hidden_states", tuple(ctx), "float32")),
                     (TensorSpec("eps", (b, out_channels or c, f, h, w), "float32"),))


def randomize_parameters(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-draw every parameter (upstream zero-initialises output convs, so an untouched UNet returns
    exactly 0 and any parity test would pass): weights ~ N(0, 1/fan_in), 1-D norm scales ~ 1 + N(0, 0.1^2),
    biases ~ N(0, 0.1^2). Deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
            elif name.endswith("weight"):
                v = 1 + 0.1 * torch.randn(p.shape, generator=g)
            else:
                v = 0.1 * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))
    return module


def unet3d(base_channels: int = 32, levels: int = 2, layers_per_block: int = 1, cross_attention_dim: int = 32,
           attention_head_dim: int = 8, in_channels: int = 4, seed: int | None = 0) -> nn.Module:
    """A diffusers UNet3DConditionModel with `levels` levels of base_channels * 2**i channels
    (multiples of 32: GroupNorm has 32 groups), cross-attention at every level but the deepest, in eval
    mode, SDPA attention; parameters re-randomised with `seed` (None: diffusers' init)."""
    from diffusers import UNet3DConditionModel

    if base_channels % 32:
        raise ValueError(f"base_channels: expected a multiple of 32 (GroupNorm has 32 groups), got {base_channels}")
    if levels < 2:
        raise ValueError(f"levels: expected >= 2, got {levels}")
    down = ("CrossAttnDownBlock3D",) * (levels - 1) + ("DownBlock3D",)
    up = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * (levels - 1)
    net = UNet3DConditionModel(sample_size=8, in_channels=in_channels, out_channels=in_channels,
                               block_out_channels=tuple(base_channels * 2 ** i for i in range(levels)),
                               down_block_types=down, up_block_types=up, layers_per_block=layers_per_block,
                               cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
                               norm_num_groups=32)
    if seed is not None:
        randomize_parameters(net, seed)
    return net.eval()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["UNet3DStep", "parameter_count", "randomize_parameters", "unet3d", "unet3d_step_spec"]
