"""Exported graphs of the ModelScope text-to-video model (torch-free).

Graph shapes are static; the frame count is baked in by the temporal layers' reshapes, so one
UNet graph exists per (batch, frames, latent height, latent width)::

    unet          latents f32[b, 4, f, h, w], timestep f32[b], context f32[b, L, D] -> eps f32[b, 4, f, h, w]
    text_encoder  input_ids i64[b, L]                                              -> context f32[b, L, D]
    vae_decoder   latents f32[n, 4, h, w]   (already divided by the scaling factor) -> images f32[n, 3, 8h, 8w]
    vae_encoder   images f32[n, 3, H, W]    (in [-1, 1])                            -> mean f32[n, 4, H/8, W/8]

(L = 77 tokens, D = 1024 for the released model; n = frames, VAE graphs run per frame batch.)
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec

Shapes = tuple[tuple[int, ...], ...]


def unet_spec(shapes: Shapes, out_channels: int | None = None) -> GraphSpec:
    (lat, ts, ctx) = shapes
    out = (lat[0], out_channels or lat[1], *lat[2:])
    b, c, f, h, w = lat
    return GraphSpec(f"t2v_unet_b{b}_f{f}_{h}x{w}", (
        TensorSpec("latents", tuple(lat), "float32"),
        TensorSpec("timestep", tuple(ts), "float32"),
        TensorSpec("context", tuple(ctx), "float32"),
    ), (TensorSpec("eps", out, "float32"),))


def text_encoder_spec(shapes: Shapes, width: int) -> GraphSpec:
    (ids,) = shapes
    return GraphSpec(f"t2v_text_b{ids[0]}", (TensorSpec("input_ids", tuple(ids), "int64"),),
                     (TensorSpec("context", (*ids, width), "float32"),))


def vae_decoder_spec(shapes: Shapes, out_channels: int = 3, factor: int = 8) -> GraphSpec:
    (lat,) = shapes
    n, _, h, w = lat
    return GraphSpec(f"t2v_vae_dec_n{n}_{h}x{w}", (TensorSpec("latents", tuple(lat), "float32"),),
                     (TensorSpec("images", (n, out_channels, h * factor, w * factor), "float32"),))


def vae_encoder_spec(shapes: Shapes, latent_channels: int = 4, factor: int = 8) -> GraphSpec:
    (img,) = shapes
    n, _, h, w = img
    return GraphSpec(f"t2v_vae_enc_n{n}_{h}x{w}", (TensorSpec("images", tuple(img), "float32"),),
                     (TensorSpec("mean", (n, latent_channels, h // factor, w // factor), "float32"),))
