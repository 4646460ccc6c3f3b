"""One SVD / SV3D checkpoint as four networks, each run per stage on a chosen backend.

`VideoModel` is a `ezvtb.diffusion.networks.NetworkSet` with per-stage sessions: each stage opens its
network's runner (on ``backend="torch"`` the module itself, moved to `device` for the stage and back to the CPU
after; on any other backend an exported graph on an `ezvtb.engines` session) and closes it when it ends, so at
most one network's memory is live at a time. Attribute names follow upstream's `DiffusionEngine` (`model`,
`conditioner`, `first_stage_model`) so the seed's helpers can move them.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ezvtb.diffusion.networks import NetworkSet
from ezvtb.engines.runner import release_module
from ezvtb.models.sgm_video import spec as specs
from ezvtb.models.sgm_video.checkpoint import VARIANTS, CheckpointParts, Variant, load_checkpoint
from ezvtb.models.sgm_video.clip_vision import ImageEmbedder, build_clip_vision, resize_for_clip
from ezvtb.models.sgm_video.unet import VideoUNet, build_video_unet
from ezvtb.models.sgm_video.vae import VAEDecode, VAEEncodeMode, build_vae

log = logging.getLogger("ezvtb.novel_view")

SCALE_FACTOR = 0.18215  # samples are decoded from latents / SCALE_FACTOR; cond latents use scale 1.0


def count_or_default(name: str, value: object, default: int) -> int:
    """`value` as an int >= 1, or `default` when it is None; ValueError naming `name` for anything else
    (0, a negative, a float, a bool): an explicit bad value never becomes the default."""
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1 (or None for the model's default {default}), "
                         f"got {value!r}")
    return int(value)


def vector_embedding(variant: Variant, values: dict, num_frames: int) -> torch.Tensor:
    """The per-frame ADM vector (T, adm): each scalar input embedded sinusoidally ([cos, sin], period 10000)
    at its width, concatenated in the YAML order (sgm `ConcatTimestepEmbedderND`)."""
    from diffusers.models.embeddings import get_timestep_embedding

    parts = []
    for key, width in variant.vector_inputs:
        if key not in values:
            names = [k for k, _ in variant.vector_inputs]
            raise ValueError(f"value_dict: {variant.name} needs {key!r} (keys: {names})")
        v = torch.as_tensor(values[key], dtype=torch.float32).reshape(-1)
        if v.numel() == 1:
            v = v.repeat(num_frames)
        if v.numel() != num_frames:
            raise ValueError(f"value_dict[{key!r}]: expected 1 or {num_frames} values, got {v.numel()}")
        parts.append(get_timestep_embedding(v, width, flip_sin_to_cos=True, downscale_freq_shift=0))
    return torch.cat(parts, dim=1)


class VideoModel(nn.Module, NetworkSet):
    """The networks of one checkpoint (see module docstring).

    model: `VideoUNet`; conditioner: ModuleDict(image_embedder, cond_encoder); first_stage_model: `VAEDecode`.
    backend: "torch" (eager) or an `ezvtb.engines` backend ("auto", "cpu", "cuda", "tensorrt", ...).
    precision: "fp32" (default) or "fp16" for the exported graphs. Networks (stages): unet, clip, encoder,
    decoder.
    """

    def __init__(self, parts: CheckpointParts, variant: str, *, num_frames: int | None = None,
                 num_steps: int | None = None, backend: str = "torch", device: str = "cpu",
                 num_head_channels: int = 64, clip_head_width: int | None = None, **session_options: Any) -> None:
        nn.Module.__init__(self)
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
        if variant.startswith("sv4d"):
            raise ValueError(f"variant: {variant} has its own UNet and conditioning: use "
                             "ezvtb.novel_view.sv4d.SV4DModel (or load_model)")
        self.variant: Variant = VARIANTS[variant]
        self.num_frames = count_or_default("num_frames", num_frames, self.variant.num_frames)
        self.num_steps = count_or_default("num_steps", num_steps, self.variant.num_steps)
        init_stages(self, backend, device, session_options)
        self.model: VideoUNet = build_video_unet(parts.unet, num_head_channels, self.num_frames)
        vae = build_vae(parts.encoder, parts.quant_conv, parts.decoder)
        self._set_networks(build_clip_vision(parts.clip_visual, clip_head_width), vae)

    def _set_networks(self, tower: nn.Module, vae: nn.Module, **encoders: nn.Module) -> None:
        """The conditioner (CLIP image embedder, cond-frame VAE encoder, extra `encoders` by stage name), the
        decoder and the sizes derived from them; eval mode."""
        self.conditioner = nn.ModuleDict({"image_embedder": ImageEmbedder(tower, resize=False),
                                          "cond_encoder": VAEEncodeMode(vae),
                                          **{name: VAEEncodeMode(e) for name, e in encoders.items()}})
        self.first_stage_model = VAEDecode(vae)
        self.embed_dim = tower.config.projection_dim
        self.clip_size = tower.config.image_size
        self.temporal_decoder = self.first_stage_model.temporal
        self.eval()
        v = self.variant.name
        self.add_network("unet", self.model, self.unet_spec, graph_name=f"{v}-unet")
        self.add_network("clip", self.conditioner["image_embedder"],
                         lambda s: specs.clip_spec(f"{v}-clip", s, self.embed_dim), graph_name=f"{v}-clip")
        self.add_network("encoder", self.conditioner["cond_encoder"],
                         lambda s: specs.vae_encode_spec(f"{v}-vae-encode", s), graph_name=f"{v}-encoder")
        self.add_network("decoder", self.first_stage_model, lambda s: specs.vae_decode_spec(f"{v}-vae-decode", s),
                         graph_name=f"{v}-decoder")
        for name in encoders:
            self.add_network(name, self.conditioner[name],
                             lambda s, n=name: specs.vae_encode_spec(f"{v}-vae-encode-{n.removesuffix('_encoder')}", s),
                             graph_name=f"{v}-{name}")

    def unet_spec(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        """The UNet graph's spec for these input shapes."""
        return specs.unet_spec(f"{self.variant.name}-unet", shapes, self.model.hp.out_channels)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, name: str | None = None, **kw: Any) -> "VideoModel":
        parts = load_checkpoint(path, name)
        return cls(parts, name or parts.variant, **kw)

    @classmethod
    def from_source(cls, path: Any, **options: Any) -> "VideoModel":
        """`load(path, name=None, **options)`: an official single-file checkpoint."""
        return cls.from_checkpoint(path, options.pop("name", None), **options)

    # -- the steps of a sample ---------------------------------------------------------------------
    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, D) CLIP image embeddings."""
        with self.stage("clip") as clip:
            return clip(resize_for_clip(images.float(), self.clip_size))

    def encode_cond(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, 4, H/8, W/8) posterior mode (scale 1.0)."""
        with self.stage("encoder") as enc:
            return enc(images.float())

    def decode(self, latents: torch.Tensor, decoding_t: int | None = None, progress: bool = False) -> torch.Tensor:
        """latents (T, 4, h, w) as sampled -> images (T, 3, 8h, 8w) in [-1, 1], `decoding_t` frames at a time."""
        n = latents.shape[0]
        chunk = n if decoding_t is None else int(decoding_t)
        if chunk < 1:
            raise ValueError(f"decoding_t: expected an int >= 1 or None, got {decoding_t!r}")
        z = latents.float() / SCALE_FACTOR
        outs = []
        with self.stage("decoder") as dec:
            for i in self.steps(range(0, n, chunk), "decoding", progress=progress):
                outs.append(dec(z[i:i + chunk]))
        return torch.cat(outs, 0)


def init_stages(model: NetworkSet, backend: str, device: Any, session_options: dict) -> None:
    """The runtime of an sgm video model: per-stage sessions, graphs in `session_options["precision"]` (fp32
    by default, as upstream's float32 sampling) on the backend the engines' policy picks."""
    precision = session_options.pop("precision", "fp32")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision: expected 'fp32' or 'fp16', got {precision!r}")
    model.init_networks(backend=backend, device=device, half=precision == "fp16", lifetime="stage",
                        **session_options)


def load_module_gpu(model: nn.Module, device: str | None = None) -> None:
    """Move `model` to the GPU (or `device`) for its stage; a no-op on a CPU-only machine."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev != "cpu":
        model.to(dev)


def unload_module_gpu(model: nn.Module) -> None:
    """Move `model` back to the CPU and release the CUDA cache."""
    release_module(model)


def initial_model_load(model: nn.Module) -> nn.Module:
    """Cast the denoising UNet (`model.model`) to half precision, as upstream; returns `model`."""
    target = getattr(model, "model", model)
    target.half()
    return model
