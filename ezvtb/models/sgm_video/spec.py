"""Tensor names, shapes and dtypes of the exported SVD / SV3D graphs (torch-free).

    unet:        x f32[N,Cin,h,w], timesteps f32[N], context f32[N,1,D], y f32[N,A], image_only_indicator f32[B,T]
                 -> out f32[N,4,h,w]            (N = B*T; B = 2 with classifier-free guidance; T fixed per graph)
    clip:        images f32[N,3,224,224] in [-1, 1] (resized on the host) -> embeds f32[N,D]
    vae_encode:  images f32[N,3,H,W] in [-1, 1] -> latents f32[N,4,H/8,W/8] (posterior mode, unscaled)
    vae_decode:  latents f32[N,4,h,w] (already / 0.18215) -> images f32[N,3,8h,8w]
                 (SVD's temporal decoder: N frames of one clip, so one graph per `decoding_t`)
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec


def unet_spec(name: str, shapes: tuple[tuple[int, ...], ...], out_channels: int = 4) -> GraphSpec:
    x, t, ctx, y, ioi = shapes
    return GraphSpec(name, (TensorSpec("x", x, "float32"), TensorSpec("timesteps", t, "float32"),
                            TensorSpec("context", ctx, "float32"), TensorSpec("y", y, "float32"),
                            TensorSpec("image_only_indicator", ioi, "float32")),
                     (TensorSpec("out", (x[0], out_channels, x[2], x[3]), "float32"),))


def clip_spec(name: str, shapes: tuple[tuple[int, ...], ...], embed_dim: int) -> GraphSpec:
    (images,) = shapes
    return GraphSpec(name, (TensorSpec("images", images, "float32"),),
                     (TensorSpec("embeds", (images[0], embed_dim), "float32"),))


def vae_encode_spec(name: str, shapes: tuple[tuple[int, ...], ...], z_channels: int = 4) -> GraphSpec:
    (images,) = shapes
    n, _, h, w = images
    return GraphSpec(name, (TensorSpec("images", images, "float32"),),
                     (TensorSpec("latents", (n, z_channels, h // 8, w // 8), "float32"),))


def vae_decode_spec(name: str, shapes: tuple[tuple[int, ...], ...]) -> GraphSpec:
    (latents,) = shapes
    n, _, h, w = latents
    return GraphSpec(name, (TensorSpec("latents", latents, "float32"),),
                     (TensorSpec("images", (n, 3, h * 8, w * 8), "float32"),))
