"""Stand-ins for diffusers blocks that compute the same function in operators ONNX Runtime's CPU provider runs
faster. Used only while exporting (`ezvtb.export.network_rewrites.rewritten` swaps them in and out); each
shares the parameters of the block it stands for.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


# -- fused attention ---------------------------------------------------------------------------------
class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over `heads` heads; q (b, s, heads*d), k (b, l, heads*d), v (b, l, heads*dv)
    -> (b, s, heads*dv). Eager: torch's SDPA; exported: one ``com.microsoft.MultiHeadAttention`` node."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,  # noqa: ARG004
                scale: float) -> torch.Tensor:
        return _sdpa(q, k, v, heads, scale)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, heads: int, scale: float) -> Any:
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)
        q_sizes = q.type().sizes() if q.type().kind() == "TensorType" else None
        v_sizes = v.type().sizes() if v.type().kind() == "TensorType" else None
        if q_sizes and v_sizes:
            out.setType(q.type().with_sizes([q_sizes[0], q_sizes[1], v_sizes[2]]))
        return out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    b, s, _ = q.shape
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    o = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
    return o.transpose(1, 2).reshape(b, s, -1)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         scale: float) -> torch.Tensor:
    """Attention over `heads` heads on unsplit (batch, tokens, channels) tensors (see `_MultiHeadAttention`)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return _MultiHeadAttention.apply(q, k, v, int(heads), float(scale))
    return _sdpa(q, k, v, heads, scale)


class FrameCount:
    """The frame count F of the video a diffusers ``UNet3DConditionModel`` is running on, recorded by a forward
    pre-hook (`hook`) from its sample (b, c, F, h, w); that network repeats each video's context F times
    (``repeat_interleave`` over the batch) before its cross-attentions. 0 until the network has run."""

    def __init__(self) -> None:
        self.count = 0

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:  # noqa: ARG002
        sample = args[0] if args else kwargs["sample"]
        self.count = int(sample.shape[2])


def is_unet3d(m: nn.Module) -> bool:
    kind = _loaded_diffusers_class("diffusers.models.unets.unet_3d_condition", "UNet3DConditionModel")
    return kind is not None and isinstance(m, kind)


class ExportAttentionProcessor:
    """A diffusers attention processor computing what ``AttnProcessor2_0`` computes (SDPA with its default
    scale 1/sqrt(head dim)), in the form the export rewrites ask for:

    fused: the attention through `multi_head_attention` (one ONNX Runtime ``MultiHeadAttention`` node);
        otherwise the replaced processor's own computation.
    single_key: attention to a context of one token is that token's value for every query (the softmax of
        one logit is exactly 1), so it is computed as ``to_out(to_v(context))`` on the context tokens only and
        broadcast over the queries (no query or key projection, no attention).
    frames: for the cross-attention of a network that repeats each video's context for each of its frames
        (`FrameCount` of that network): keys and values are projected from one copy of the context per video
        (rows 0, F, 2F, ... of the repeated batch), and the queries of a video's F frames attend to them in
        one call, as F x tokens queries of one batch item. Exact: every frame's queries see the same keys.
    Calls it cannot express (an attention mask, extra arguments) go to the processor it replaced.
    """

    def __init__(self, fallback: Any, fused: bool = True, single_key: bool = False,
                 frames: FrameCount | None = None) -> None:
        self.fallback = fallback
        self.fused = fused
        self.single_key = single_key
        self.frames = frames

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        one_token = encoder_hidden_states is not None and encoder_hidden_states.shape[1] == 1
        frames = self.frames.count if self.frames is not None else 0
        shared = (frames > 1 and not one_token and encoder_hidden_states is not None
                  and encoder_hidden_states.ndim == 3 and encoder_hidden_states.shape[0] == hidden_states.shape[0]
                  and encoder_hidden_states.shape[0] % frames == 0)
        if attention_mask is not None or args or kwargs or not (self.fused or self.single_key and one_token
                                                                 or shared):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.reshape(b, c, h * w).transpose(1, 2)
        attend = multi_head_attention if self.fused else _sdpa
        if self.single_key and one_token:
            v = attn.to_out[1](attn.to_out[0](attn.to_v(encoder_hidden_states)))
            out = v.expand(hidden_states.shape[0], hidden_states.shape[1], v.shape[2]).to(hidden_states.dtype)
        elif shared:
            q = attn.to_q(hidden_states)
            bf, s = q.shape[0], q.shape[1]
            context = encoder_hidden_states[::frames]  # one copy per video
            k, v = attn.to_k(context), attn.to_v(context)
            out = attend(q.reshape(bf // frames, frames * s, q.shape[2]), k, v, attn.heads,
                         (k.shape[-1] // attn.heads) ** -0.5)
            out = attn.to_out[1](attn.to_out[0](out.reshape(bf, s, -1).to(q.dtype)))
        else:
            q = attn.to_q(hidden_states)
            context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
            k, v = attn.to_k(context), attn.to_v(context)
            out = attend(q, k, v, attn.heads, (k.shape[-1] // attn.heads) ** -0.5)
            out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _loaded_diffusers_class(module: str, name: str) -> Any:
    """A diffusers class if diffusers is already imported, else None: a module holding diffusers blocks has
    imported it, so networks without any (Audio2Coeff, CLIP towers) are walked without diffusers installed."""
    if sys.modules.get("diffusers") is None:
        return None
    import importlib

    return getattr(importlib.import_module(module), name, None)


def plain_attention(attn: Any) -> bool:
    """Whether `attn` is a diffusers Attention whose processor `ExportAttentionProcessor` can stand in for."""
    kinds = tuple(k for k in (_loaded_diffusers_class("diffusers.models.attention_processor", "AttnProcessor"),
                              _loaded_diffusers_class("diffusers.models.attention_processor", "AttnProcessor2_0"))
                  if k is not None)
    return (bool(kinds) and isinstance(getattr(attn, "processor", None), kinds)
            and all(getattr(attn, n, None) is None for n in ("spatial_norm", "group_norm", "norm_q", "norm_k",
                                                             "add_k_proj", "add_v_proj"))
            and not getattr(attn, "norm_cross", False) and isinstance(getattr(attn, "to_out", None), nn.ModuleList))


# -- temporal convolutions ------------------------------------------------------------------------
class TemporalConv2d(nn.Module):
    """A Conv3d with a (k, 1, 1) kernel, stride 1 and padding (p, 0, 0) computed as a Conv2d over
    (batch, channels, frames, height * width); shares the Conv3d's parameters."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    @staticmethod
    def applies(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv3d and conv.kernel_size[1:] == (1, 1) and conv.stride == (1, 1, 1)
                and conv.dilation == (1, 1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and tuple(conv.padding[1:]) == (0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        y = F.conv2d(x.reshape(b, c, f, h * w), self.conv.weight.squeeze(-1), self.conv.bias,
                     padding=(self.conv.padding[0], 0))
        return y.reshape(b, y.shape[1], y.shape[2], h, w)


# -- GEGLU ---------------------------------------------------------------------------------------------
class SplitGEGLU(nn.Module):
    """diffusers' GEGLU (``h, g = proj(x).chunk(2); h * gelu(g)``) with the two halves of its projection
    as two projections; shares the GEGLU's parameters."""

    def __init__(self, geglu: nn.Module) -> None:
        super().__init__()
        self.geglu = geglu

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        proj = self.geglu.proj
        half = proj.out_features // 2
        bias = proj.bias
        h = F.linear(x, proj.weight[:half], None if bias is None else bias[:half])
        g = F.linear(x, proj.weight[half:], None if bias is None else bias[half:])
        return h * self.geglu.gelu(g)


def is_geglu(m: nn.Module) -> bool:
    geglu = _loaded_diffusers_class("diffusers.models.activations", "GEGLU")
    return geglu is not None and type(m) is geglu and isinstance(getattr(m, "proj", None), nn.Linear)


__all__ = ["ExportAttentionProcessor", "FrameCount", "SplitGEGLU", "TemporalConv2d", "is_geglu", "is_unet3d",
           "multi_head_attention", "plain_attention"]
