"""One SVD / SV3D checkpoint as four networks, each run per stage on a chosen backend.

`VideoModel` holds the torch modules (the reference) and, per stage, opens a runner: on ``backend="torch"`` the
module itself, moved to `device` for the stage and back to the CPU after (`load_module_gpu` /
`unload_module_gpu`); on any other backend an exported graph on an `ezvtb.engines` session (`GraphRunner`),
opened when the stage starts and closed when it ends, so at most one network's memory is live at a time.
Attribute names follow upstream's `DiffusionEngine` (`model`, `conditioner`, `first_stage_model`) so the
seed's helpers can move them.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

import torch
from torch import nn

from ezvtb.models.sgm_video import spec as specs
from ezvtb.models.sgm_video.checkpoint import VARIANTS, CheckpointParts, Variant, load_checkpoint
from ezvtb.models.sgm_video.clip_vision import ImageEmbedder, build_clip_vision, resize_for_clip
from ezvtb.models.sgm_video.unet import VideoUNet, build_video_unet
from ezvtb.models.sgm_video.vae import VAEDecode, VAEEncodeMode, build_vae
from ezvtb.novel_view.sampling import count_or_default

log = logging.getLogger("ezvtb.novel_view")

SCALE_FACTOR = 0.18215  # samples are decoded from latents / SCALE_FACTOR; cond latents use scale 1.0


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


class _Stage:
    """A network's torch module plus how to build its graph spec for given input shapes."""

    def __init__(self, module: nn.Module, spec_fn) -> None:
        self.module = module
        self.spec_fn = spec_fn


class VideoModel(nn.Module):
    """The networks of one checkpoint (see module docstring).

    model: `VideoUNet`; conditioner: ModuleDict(image_embedder, cond_encoder); first_stage_model: `VAEDecode`.
    backend: "torch" (eager) or an `ezvtb.engines` backend ("auto", "cpu", "cuda", "tensorrt", ...).
    """

    def __init__(self, parts: CheckpointParts, variant: str, *, num_frames: int | None = None,
                 num_steps: int | None = None, backend: str = "torch", device: str = "cpu",
                 num_head_channels: int = 64, clip_head_width: int | None = None, **session_options: Any) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
        if variant.startswith("sv4d"):
            raise ValueError(f"variant: {variant} has its own UNet and conditioning: use "
                             "ezvtb.novel_view.sv4d.SV4DModel (or load_model)")
        self.variant: Variant = VARIANTS[variant]
        self.num_frames = count_or_default("num_frames", num_frames, self.variant.num_frames)
        self.num_steps = count_or_default("num_steps", num_steps, self.variant.num_steps)
        self.backend = backend
        self.device_name = device
        self.session_options = session_options
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

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, name: str | None = None, **kw: Any) -> "VideoModel":
        parts = load_checkpoint(path, name)
        return cls(parts, name or parts.variant, **kw)

    # -- stages ------------------------------------------------------------------------------------
    def _stage(self, which: str) -> _Stage:
        v = self.variant.name
        if which == "unet":
            return _Stage(self.model, lambda s: specs.unet_spec(f"{v}-unet", s, self.model.hp.out_channels))
        if which == "clip":
            return _Stage(self.conditioner["image_embedder"], lambda s: specs.clip_spec(f"{v}-clip", s, self.embed_dim))
        if which == "encoder":
            return _Stage(self.conditioner["cond_encoder"], lambda s: specs.vae_encode_spec(f"{v}-vae-encode", s))
        if which == "decoder":
            return _Stage(self.first_stage_model, lambda s: specs.vae_decode_spec(f"{v}-vae-decode", s))
        raise ValueError(f"stage: expected unet | clip | encoder | decoder, got {which!r}")

    @contextlib.contextmanager
    def stage(self, which: str) -> Iterator[Any]:
        """A callable running network `which` for the duration of the block, released after it."""
        st = self._stage(which)
        if self.backend == "torch":
            load_module_gpu(st.module, self.device_name)
            dtype = next(st.module.parameters()).dtype
            dev = next(st.module.parameters()).device

            def run(*xs):
                with torch.no_grad():
                    out = st.module(*(x.to(dev, dtype) for x in xs))
                return out.float().cpu()

            try:
                yield run
            finally:
                unload_module_gpu(st.module)
            return
        from ezvtb.engines.runner import GraphRunner

        runner = GraphRunner(st.module, st.spec_fn, name=f"{self.variant.name}-{which}",
                             backend=self.backend, **self.session_options)
        try:
            def run(*xs):
                with torch.no_grad():
                    return runner(*(x.float().contiguous() for x in xs))
            yield run
        finally:
            runner.close()

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
        from tqdm import tqdm

        n = latents.shape[0]
        chunk = n if decoding_t is None else int(decoding_t)
        if chunk < 1:
            raise ValueError(f"decoding_t: expected an int >= 1 or None, got {decoding_t!r}")
        z = latents.float() / SCALE_FACTOR
        outs = []
        with self.stage("decoder") as dec:
            for i in tqdm(range(0, n, chunk), desc="decoding", unit="chunk", disable=not progress, leave=False):
                outs.append(dec(z[i:i + chunk]))
        return torch.cat(outs, 0)


def load_module_gpu(model: nn.Module, device: str | None = None) -> None:
    """Move `model` to the GPU (or `device`) for its stage; a no-op on a CPU-only machine."""
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev != "cpu":
        model.to(dev)


def unload_module_gpu(model: nn.Module) -> None:
    """Move `model` back to the CPU and release the CUDA cache."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def initial_model_load(model: nn.Module) -> nn.Module:
    """Cast the denoising UNet (`model.model`) to half precision, as upstream; returns `model`."""
    target = getattr(model, "model", model)
    target.half()
    return model
