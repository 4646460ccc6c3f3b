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
from ezvtb.novel_view.model import count_or_default, vector_embedding


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
    return EulerEDMSampler(count_or_default("num_steps", num_steps, model.num_steps), v.guider, v.max_scale,
                           v.min_scale, verbose=verbose)


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
    sched = sampler.scheduler()
    report = model.step_callback("denoise", sampler.num_steps)

    def after_step(i, t, x):
        report(i, t, x)
        if callback is not None:
            callback(i, t, x)

    with model.stage("unet") as unet:
        def net(x2, t, concat, context, vector):
            n = x2.shape[0]
            ts = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(n).contiguous()
            ioi = torch.full((n // T, T), float(image_only_indicator))
            return unet(torch.cat([x2, concat], 1), ts, context, vector, ioi)

        fn = guided_model(net, (cond.concat, cond.context, cond.vector),
                          (uncond.concat, uncond.context, uncond.vector), sampler.scales(T), frame_axis=0)
        return denoise(sched, fn, noise.float(), sampler.num_steps, progress=progress, callback=after_step)


def do_sample(model, sampler, value_dict, num_samples, H, W, C, F, force_uc_zero_embeddings=None,
              force_cond_zero_embeddings=None, batch2model_input=None, return_latents=False, filter=None, T=None,
              additional_batch_uc_fields=None, decoding_t=None, *, noise: torch.Tensor | None = None,
              seed: int | None = None, progress: bool = True):
    """Upstream's `do_sample`: conditioning, the sampler's loop, decoding `decoding_t` frames at a time.

    Returns frames (T, 3, H, W) in [0, 1] (and the latents when `return_latents`). `value_dict` holds
    `cond_frames_without_noise`, `cond_frames` ((1, 3, H, W) in [-1, 1]) and the model's scalars; its
    `image_only_indicator` (default 0) marks frames as stills. Noise: `noise`, else seeded by `seed`, else
    torch's global generator (as upstream). `batch2model_input` / `additional_batch_uc_fields` are accepted
    for compatibility (the frame count and indicator always reach the UNet).
    """
    if num_samples not in (1, [1]):
        raise ValueError(f"num_samples: one sample per call is supported, got {num_samples!r}")
    if C != 4 or F != 8:
        raise ValueError(f"C, F: the KL-f8 latent space has C=4, F=8, got C={C}, F={F}")
    check_size(H, W)
    T = int(T or model.num_frames)
    if sampler is None:
        sampler = getattr(model, "sampler", None) or default_sampler(model)
    cond, uncond = build_conditioning(model, value_dict, T, force_uc_zero_embeddings or (),
                                      force_cond_zero_embeddings or ())
    if noise is None and seed is None:
        noise = torch.randn(T, C, H // F, W // F)
    z = sample_latents(model, sampler, cond, uncond, T, H, W, seed=seed, noise=noise,
                       image_only_indicator=float(value_dict.get("image_only_indicator", 0.0)), progress=progress)
    x = to_unit_range(model.decode(z, decoding_t, progress=progress))
    if filter is not None:
        x = filter(x)
    return (x, z) if return_latents else x


def orbit_cameras(num_frames: int = 21, elevation_deg=10.0, azimuths_deg=None) -> tuple[list, list]:
    """SV3D_p camera inputs: polar = radians(90 - elevation); azimuths default to linspace(0, 360, T+1)[1:] and
    are taken relative to the last one, so the last frame is the input view (azimuth 0)."""
    elev = ([float(elevation_deg)] * num_frames if np.isscalar(elevation_deg) else [float(e) for e in elevation_deg])
    if len(elev) != num_frames:
        raise ValueError(f"elevation_deg: expected 1 or {num_frames} values, got {len(elev)}")
    bad = [e for e in elev if not (np.isfinite(e) and -90.0 <= e <= 90.0)]
    if bad:
        raise ValueError(f"elevation_deg: expected finite degrees in [-90, 90], got {bad[0]!r}")
    az = (np.linspace(0, 360, num_frames + 1)[1:] % 360 if azimuths_deg is None
          else np.asarray(azimuths_deg, dtype=np.float64).reshape(-1))
    if len(az) != num_frames:
        raise ValueError(f"azimuths_deg: expected {num_frames} values, got {len(az)}")
    if not np.isfinite(az).all():
        raise ValueError(f"azimuths_deg: expected finite degrees, got {float(az[~np.isfinite(az)][0])!r}")
    polars = [float(np.deg2rad(90 - e)) for e in elev]
    azimuths = [float(np.deg2rad((a - az[-1]) % 360)) for a in az]
    return polars, azimuths


def sv3d_orbit(model, image: torch.Tensor, *, elevation_deg=10.0, azimuths_deg=None, num_steps: int | None = None,
               seed: int = 23, decoding_t: int | None = None, progress: bool = True, filter=None) -> torch.Tensor:
    """SV3D: one (1, 3, H, W) image in [-1, 1] -> (T, 3, H, W) orbit frames in [0, 1]; the last frame is the
    input view and, as upstream, is replaced by the input image. `filter` (load_model's) is applied to the
    sampled frames."""
    if not model.variant.name.startswith("sv3d"):
        raise ValueError(f"model: sv3d_orbit needs an SV3D model, got {model.variant.name}")
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3) or image.numel() == 0:
        raise ValueError("image: expected a non-empty (1, 3, H, W) tensor in [-1, 1]")
    if not torch.isfinite(image).all():
        raise ValueError(f"image: contains {int((~torch.isfinite(image)).sum())} NaN or inf values "
                         "(expected finite values in [-1, 1])")
    T = model.num_frames
    H, W = image.shape[-2:]
    check_size(H, W)
    polars, azimuths = orbit_cameras(T, elevation_deg, azimuths_deg)
    cond_aug = model.variant.defaults.get("cond_aug", 1e-5)
    g = torch.Generator().manual_seed(seed)
    value_dict = {"cond_frames_without_noise": image, "cond_aug": cond_aug,
                  "cond_frames": image + cond_aug * torch.randn(image.shape, generator=g),
                  "polars_rad": polars, "azimuths_rad": azimuths}
    sampler = default_sampler(model, num_steps)
    frames = do_sample(model, sampler, value_dict, 1, H, W, 4, 8, T=T, seed=seed, decoding_t=decoding_t,
                       force_uc_zero_embeddings=["cond_frames", "cond_frames_without_noise"], progress=progress,
                       filter=filter)
    frames[-1:] = to_unit_range(image)
    return frames


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return torch.clamp((images + 1.0) / 2.0, 0.0, 1.0)


def check_size(height: int, width: int) -> None:
    if height % 64 or width % 64 or height <= 0 or width <= 0:
        raise ValueError(f"H, W: expected positive multiples of 64, got {height}x{width}")


__all__ = ["Conditioning", "EulerEDMSampler", "build_conditioning", "check_size", "count_or_default", "default_sampler",
           "do_sample", "orbit_cameras", "sample_latents", "sv3d_orbit", "to_unit_range"]

