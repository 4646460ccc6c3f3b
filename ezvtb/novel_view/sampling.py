"""Image-to-video sampling for SVD / SV3D: encode the conditions, Euler over EDM sigmas with per-frame CFG, decode.

The algorithm of sgm's `EulerEDMSampler` (s_churn 0) with `VScalingWithEDMcNoise`, on the shared pieces:
diffusers' `EulerDiscreteScheduler` configured by `ezvtb.diffusion.schedulers.edm_euler`, per-frame scales from
`ezvtb.diffusion.guidance` (SV3D: triangle 1.0 -> 2.5 -> 1.0; SVD: linear 1.0 -> 2.5, XT 1.5 -> 3.0), the seeded
loop `ezvtb.diffusion.sampling.denoise`. Guidance mixes the v-predictions, which equals upstream's mixing of the
denoised latents (x0 is affine in v with the same c_skip, c_out for both halves).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ezvtb.diffusion.guidance import guidance_scales, guided_model
from ezvtb.diffusion.sampling import denoise, initial_noise
from ezvtb.diffusion.schedulers import edm_euler


@dataclass
class EulerEDMSampler:
    """The seed's `sampler`: EDM Euler steps and the per-frame guider."""

    num_steps: int
    guider: str = "triangle"  # "triangle" | "linear" | "constant"
    max_scale: float = 2.5
    min_scale: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    verbose: bool = False

    def scales(self, num_frames: int) -> torch.Tensor:
        return guidance_scales(self.guider, num_frames, self.max_scale, self.min_scale)

    def scheduler(self):
        return edm_euler(self.sigma_min, self.sigma_max)


def default_sampler(model, num_steps: int | None = None, verbose: bool = False) -> EulerEDMSampler:
    v = model.variant
    return EulerEDMSampler(count_or_default("num_steps", num_steps, model.num_steps), v.guider, v.max_scale, v.min_scale, verbose=verbose)


@dataclass
class Conditioning:
    """Per-frame UNet conditioning for T frames: concat (T,4,h,w), context (T,1,D), vector (T,A)."""

    concat: torch.Tensor
    context: torch.Tensor
    vector: torch.Tensor


def build_conditioning(model, value_dict: dict, num_frames: int,
                       force_uc_zero_embeddings=("cond_frames", "cond_frames_without_noise"),
                       force_cond_zero_embeddings=()) -> tuple[Conditioning, Conditioning]:
    """(cond, uncond) from upstream's value_dict (`cond_frames_without_noise` and `cond_frames`: (1, 3, H, W) in
    [-1, 1]; plus the variant's scalars). Zeroed embeddings as upstream's `force_*_zero_embeddings`."""
    from ezvtb.novel_view.model import vector_embedding

    for key in ("cond_frames_without_noise", "cond_frames"):
        img = value_dict.get(key)
        if not isinstance(img, torch.Tensor) or img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"value_dict[{key!r}]: expected a (1, 3, H, W) tensor in [-1, 1]")
        if img.shape[-1] % 64 or img.shape[-2] % 64:
            raise ValueError(f"value_dict[{key!r}]: H and W must be multiples of 64, got {tuple(img.shape[-2:])}")
    ctx = model.embed_image(value_dict["cond_frames_without_noise"][:1])  # (1, D)
    lat = model.encode_cond(value_dict["cond_frames"][:1])  # (1, 4, h, w)
    T = num_frames
    vec = vector_embedding(model.variant, value_dict, T)
    cond = Conditioning(lat.expand(T, -1, -1, -1).contiguous(), ctx[:, None].expand(T, -1, -1).contiguous(), vec)
    uncond = Conditioning(cond.concat.clone(), cond.context.clone(), vec.clone())
    for name, target in ((force_uc_zero_embeddings or (), uncond), (force_cond_zero_embeddings or (), cond)):
        if "cond_frames" in name:
            target.concat = torch.zeros_like(target.concat)
        if "cond_frames_without_noise" in name:
            target.context = torch.zeros_like(target.context)
    return cond, uncond


def sample_latents(model, sampler: EulerEDMSampler, cond: Conditioning, uncond: Conditioning, num_frames: int,
                   height: int, width: int, *, seed: int | None = 23, noise: torch.Tensor | None = None,
                   image_only_indicator: float = 0.0, progress: bool = True, callback=None) -> torch.Tensor:
    """Latents (T, 4, H/8, W/8) from noise by Euler EDM steps with CFG; the UNet stage is open for the loop."""
    T = num_frames
    shape = (T, 4, height // 8, width // 8)
    if noise is None:
        noise = initial_noise(shape, seed=seed)
    elif tuple(noise.shape) != shape:
        raise ValueError(f"noise: expected shape {shape}, got {tuple(noise.shape)}")
    ioi = torch.full((2, T), float(image_only_indicator))
    sched = sampler.scheduler()
    with model.stage("unet") as unet:
        def net(x2, t, concat, context, vector):
            n = x2.shape[0]
            ts = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(n).contiguous()
            return unet(torch.cat([x2, concat], 1), ts, context, vector, ioi)

        fn = guided_model(net, (cond.concat, cond.context, cond.vector),
                          (uncond.concat, uncond.context, uncond.vector), sampler.scales(T), frame_axis=0)
        return denoise(sched, fn, noise.float(), sampler.num_steps, progress=progress, callback=callback)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return torch.clamp((images + 1.0) / 2.0, 0.0, 1.0)


def count_or_default(name: str, value: object, default: int) -> int:
    """`value` as an int >= 1, or `default` when it is None; ValueError naming `name` for anything else
    (0, a negative, a float, a bool): an explicit bad value never becomes the default."""
    if value is None:
        return int(default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1 (or None for the model's default {default}), "
                         f"got {value!r}")
    return int(value)


def check_size(height: int, width: int) -> None:
    if height % 64 or width % 64 or height <= 0 or width <= 0:
        raise ValueError(f"H, W: expected positive multiples of 64, got {height}x{width}")


__all__ = ["Conditioning", "EulerEDMSampler", "build_conditioning", "default_sampler", "sample_latents",
           "to_unit_range", "check_size", "count_or_default"]

