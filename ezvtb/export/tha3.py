"""Export the five THA3 stage graphs (declared in `ezvtb.models.tha3.spec`) to ONNX.

The stage wrappers put the image conversion inside the first and last graphs (uint8 BGRA HWC
in and out, sRGB<->linear, RGBA zeroed where alpha is 0, [-1, 1]); the crop/paste glue comes from
`ezvtb.models.tha3.poser.ThaPoser`. Classic exporter, opset 17, static shapes, one file per graph.
fp16 graphs: networks in half, pose inputs float32 (cast inside), grid math float32 (the models).

Before export, `optimize_for_export` applies exact rewrites (`REWRITES`) to a copy of the poser:
the same function in operators ONNX Runtime's CPU provider runs faster (measured per rewrite by
benchmarks/bench_tha_rewrites.py). The torch models themselves stay upstream's computation.
"""
from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from ezvtb.models.tha3.blocks import (
    BlockedUpsample,
    EncoderDecoder,
    PointwiseMatMul,
    ResizeConvEncoderDecoder,
    ResizeConvUNet,
    TapSplitConv,
    ZeroInsertConvTranspose,
)
from ezvtb.models.tha3.poser import ThaPoser
from ezvtb.models.tha3.poser import _srgb_to_linear as _np_srgb_to_linear
from ezvtb.models.tha3.spec import graph_spec

log = logging.getLogger("ezvtb.export")
OPSET = 17

# Exact export-time rewrites (see `optimize_for_export`), all on by default.
REWRITES = (
    "fused_heads",  # the 3-5 output heads of a network as one conv (blocked convs pad outputs to 16)
    "split_skip_concat",  # editor U-Net: no concatenated skip tensor (conv of a concat = sum of convs)
    "zero_insert_convtranspose",  # depthwise ConvTranspose -> zero insertion + depthwise Conv
    "blocked_upsample",  # rotator/editor nearest x2 upsampling run in ORT's blocked layout
    "tap_split_grid_head",  # rotator's 2-channel 3x3 grid head as a 1x1 conv + shifted sums
    "concat_paste",  # crops pasted by Concat instead of ScatterND over the whole image
    "matmul_encoder_pointwise",  # encoder blocks' 1x1 convs as MatMul (NCHW): smaller layout reorders
)


def optimize_for_export(poser: ThaPoser, rewrites: Iterable[str] = REWRITES) -> ThaPoser:
    """A copy of `poser` with the named exact rewrites applied (`poser` itself is not changed).

    fused_heads: `FusedHeads` in the decomposer, combiner, morpher and editor (the rotator's
        only used head is already one conv; its unused direct head stays out of the graph).
    split_skip_concat: the editor's up blocks take [upsampled, skip] as two parts (`concat_conv_block`).
    zero_insert_convtranspose: `ZeroInsertConvTranspose` for the separable encoder-decoders'
        depthwise upsampling (the standard variant's dense ConvTranspose stays).
    blocked_upsample: `blocked_upsample` for the rotator's and editor's nearest x2 upsampling.
    tap_split_grid_head: `TapSplitConv` for the rotator's grid change head.
    concat_paste: `ThaPoser.paste_by_concat` (the combiner's eyebrow paste, the morpher's face paste).
    matmul_encoder_pointwise: `PointwiseMatMul` for the 1x1 conv of every separable encoder block
        (the stem and the stride-2 blocks, before the bottleneck) in all five networks.
    """
    rewrites = tuple(rewrites)
    unknown = sorted(set(rewrites) - set(REWRITES))
    if unknown:
        raise ValueError(f"rewrites: unknown {unknown}; expected some of {list(REWRITES)}")
    p = copy.deepcopy(poser)
    if "concat_paste" in rewrites:
        p.paste_by_concat = True
    for net in p.children():
        if "fused_heads" in rewrites and hasattr(net, "fuse_heads"):
            net.fuse_heads()
        for m in net.modules():
            if "split_skip_concat" in rewrites and isinstance(m, ResizeConvUNet):
                m.split_skip_concat = True
            if "blocked_upsample" in rewrites and isinstance(m, ResizeConvUNet):
                m.blocked_upsample = True
            if "blocked_upsample" in rewrites and isinstance(m, ResizeConvEncoderDecoder):
                for block in m.upsample_blocks:
                    if isinstance(block[0], nn.Upsample):
                        block[0] = BlockedUpsample()
            if "matmul_encoder_pointwise" in rewrites and isinstance(
                    m, (EncoderDecoder, ResizeConvEncoderDecoder, ResizeConvUNet)):
                for block in m.downsample_blocks:
                    if len(block) == 4 and isinstance(block[1], nn.Conv2d):  # separable [dw, 1x1, norm, act]
                        block[1] = PointwiseMatMul(block[1])
            if "zero_insert_convtranspose" in rewrites and isinstance(m, EncoderDecoder):
                for block in m.upsample_blocks:
                    t = block[0]
                    if isinstance(t, nn.ConvTranspose2d) and t.groups == t.in_channels == t.out_channels > 1:
                        block[0] = ZeroInsertConvTranspose(t)
    if "tap_split_grid_head" in rewrites and isinstance(p.rotator.grid_change_creator, nn.Conv2d):
        p.rotator.grid_change_creator = TapSplitConv(p.rotator.grid_change_creator)
    return p.eval()


def _input_table() -> np.ndarray:
    """[4 * 256] float32 model-space values of uint8 B, G, R, A (as `image_to_tensor` computes them)."""
    v = np.arange(256, dtype=np.float64) / 255.0
    colour = (_np_srgb_to_linear(v) * 2.0 - 1.0).astype(np.float32)
    alpha = (v * 2.0 - 1.0).astype(np.float32)
    return np.concatenate([colour, colour, colour, alpha])


_INPUT_TABLE = _input_table()


def _linear_to_srgb(c: Tensor) -> Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.003130804953560372, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


class _Stage(nn.Module):
    def __init__(self, poser: ThaPoser, stage: str) -> None:
        super().__init__()
        self.poser, self.stage = poser, stage
        self.dtype = poser.dtype

    def forward(self, *xs: Tensor):
        p, d = self.poser, self.dtype
        if self.stage == "decomposer":
            # uint8 -> model space by table lookup: each channel has 256 possible values, so a
            # table computed like `image_to_tensor` (float64, cast to float32) gives its exact
            # result. Index v + 256 * channel (B, G, R share the colour row); alpha 0 -> index 0
            # in every channel, i.e. RGBA -1 (upstream zeroes invisible pixels).
            u8 = xs[0]
            visible = (u8[..., 3:4] > 0).to(torch.int64)
            offsets = torch.tensor([0, 256, 512, 768], dtype=torch.int64)
            values = torch.from_numpy(_INPUT_TABLE)[u8.to(torch.int64) * visible + offsets]  # [H, W, 4] BGRA
            image = values.permute(2, 0, 1)[[2, 1, 0, 3]].unsqueeze(0).to(d)
            background, eyebrow = p.decompose(image)
            return image, background, eyebrow
        if self.stage == "combiner":
            image, bg, eb, pose = xs
            return p.combine(image, bg, eb, pose.to(d))
        if self.stage == "morpher":
            image, crop, feat, pose = xs
            return p.morph(image, crop, feat, pose.to(d))
        if self.stage == "rotator":
            half, pose = xs
            return p.rotate(half, pose.to(d))
        full, warped, grid, pose = xs
        y = p.edit(full, warped, grid, pose.to(d)).to(torch.float32)[0]
        y = (y + 1.0) * 0.5
        # Convert the planes (RGB at once), then BGRA order and the HWC transpose on uint8.
        rgb = _linear_to_srgb(y[0:3])
        bgra = torch.cat([rgb[2:3], rgb[1:2], rgb[0:1], y[3:4].clamp(0.0, 1.0)], dim=0)
        return torch.round(bgra * 255.0).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def stage_module(poser: ThaPoser, stage: str) -> nn.Module:
    """The torch module whose export is the `stage` graph (I/O as in the spec)."""
    return _Stage(poser, stage).eval()


def example_inputs(stage: str, precision: str) -> tuple[Tensor, ...]:
    spec = graph_spec(stage, precision)
    out = []
    for t in spec.inputs:
        dt = {"uint8": torch.uint8, "float32": torch.float32, "float16": torch.float16}[t.dtype]
        out.append(torch.zeros(t.shape, dtype=dt) if dt == torch.uint8 else torch.rand(t.shape).to(dt) * 0.2)
    return tuple(out)


def export_stage(poser: ThaPoser, stage: str, precision: str, rewrites: Iterable[str] = REWRITES) -> bytes:
    """Export one stage graph (after `optimize_for_export` with `rewrites`); returns the ONNX model."""
    spec = graph_spec(stage, precision)
    module = stage_module(optimize_for_export(poser, rewrites), stage)
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(module, example_inputs(stage, precision), buf,
                          opset_version=OPSET, input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamo=False, do_constant_folding=True)
    return buf.getvalue()
