"""SV4D: a video of an object -> the same motion seen from V+1 views, on the shared EDM / guidance pieces.

The flow of upstream's `simple_video_sample_4d.py` (Stability-AI/generative-models; our own code):

1. SV3D (u or p) orbits the first video frame (21 views, last = the input view); the orbit is rolled so the input
   view comes first and views [0, 2, 5, 7, 9, 12, 14, 16, 19] are kept (view 0 = the input video).
2. Anchor frames: one SV4D call at frames T-1, 2(T-1), ... (T = 5: 4, 8, 12, 16, 20) for the V = 8 novel views,
   conditioned on those input frames (`cond_motion`: CLIP context and the concat latents) and on the frame-0 views
   (`cond_view`, the motion-attention context).
3. Dense frames: per window of T frames starting at t0 = 0, T-1, ... the window's latents are denoised step by
   step, alternating two conditionings: backward at even steps (frames in reverse order, views of the window's
   last, anchor frame) and forward at odd steps (frames in order, views of the window's first frame). The whole
   window is then decoded (also replacing its first and last frames).

Both passes run the shared loop `ezvtb.diffusion.sampling.denoise` over EDM Euler with v-prediction
(`ezvtb.diffusion.schedulers.edm_euler`), classifier-free guidance per row (`ezvtb.diffusion.guidance.guided_model`)
with upstream's `SpatiotemporalPredictionGuider` scales (`grid_guidance_scales("spatiotemporal", ...)`; SV4D:
1.0 -> 2.0). Guidance mixes the v-predictions, which equals upstream's mixing of the denoised latents. The
unconditional branch zeroes the CLIP context, the concat latents, the view latents and - as upstream's conditioner
does for the cond-frames embedder's second output
- the 256-wide noise-level part of the ADM vector.

`SV4DModel` is a `VideoModel` whose UNet stage is `SV4DUNet` (an exported graph per (T, V) on non-torch backends,
one stage open at a time).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ezvtb.diffusion.guidance import grid_guidance_scales, guided_model
from ezvtb.diffusion.sampling import denoise
from ezvtb.diffusion.schedulers import edm_euler
from ezvtb.models.sgm_video.checkpoint import ENCODER_EMBEDDERS, VARIANTS, SV4DParts, load_sv4d_checkpoint
from ezvtb.models.sgm_video.clip_vision import build_clip_vision
from ezvtb.models.sgm_video.sv4d_unet import SV4DUNet, build_sv4d_unet, sv4d_unet_spec
from ezvtb.models.sgm_video.vae import build_vae
from ezvtb.novel_view.model import VideoModel, count_or_default, init_stages
from ezvtb.novel_view.sampling import orbit_cameras, sv3d_orbit

log = logging.getLogger("ezvtb.novel_view")

SV3D_SUBSAMPLED_VIEWS = (0, 2, 5, 7, 9, 12, 14, 16, 19)  # of the 21 rolled SV3D views; 0 = input view


@dataclass(frozen=True)
class SV4DSettings:
    """Sampling defaults of upstream's SV4D scripts."""

    frames_per_sample: int  # T
    views_per_sample: int  # V
    num_steps: int
    guider: str  # "spatiotemporal" | "linear"
    max_scale: float
    min_scale: float
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0


SETTINGS = {
    "sv4d": SV4DSettings(5, 8, 20, "spatiotemporal", 2.0, 1.0),
    # simple_video_sample_4d2.py: LinearPredictionGuider with cfg 2.0 (its min_cfg is not passed on: min 1.0)
    "sv4d2": SV4DSettings(12, 4, 50, "linear", 2.0, 1.0),
    # sv4d2_8views.safetensors: the SV4D 2.0 layout at T 5 x V 8 (not tellable from the tensors: views_per_sample=8)
    "sv4d2_8views": SV4DSettings(5, 8, 50, "spatiotemporal", 2.5, 1.5),
}


def guidance_for(settings: SV4DSettings, num_frames: int, num_views: int) -> torch.Tensor:
    """The per-row scales of a T x V grid for `settings`' guider ("spatiotemporal" | "linear")."""
    return grid_guidance_scales(settings.guider, num_frames, num_views, settings.max_scale, settings.min_scale)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


class SV4DModel(VideoModel):
    """An SV4D checkpoint as stages: unet (`SV4DUNet`), clip, encoder (cond frames), view_encoder, decoder.

    Same stage discipline and backends as `VideoModel`; `num_frames` is T*V rows per UNet call.
    """

    def __init__(self, parts: SV4DParts, variant: str | None = None, *, num_steps: int | None = None,
                 backend: str = "torch", device: str = "cpu", num_head_channels: int = 64,
                 clip_head_width: int | None = None, use_3d_attention: bool | None = None,
                 frames_per_sample: int | None = None, views_per_sample: int | None = None,
                 num_frames: int | None = None, **session_options: Any) -> None:
        nn.Module.__init__(self)
        variant = variant or parts.variant
        if variant not in SETTINGS:
            raise ValueError(f"variant: expected one of {sorted(SETTINGS)}, got {variant!r}")
        self.variant = VARIANTS[variant]
        s = SETTINGS[variant]
        if variant == "sv4d2" and views_per_sample == 8:
            s = SETTINGS["sv4d2_8views"]
        self.settings = s
        self.frames_per_sample = count_or_default("frames_per_sample", frames_per_sample, s.frames_per_sample)
        self.views_per_sample = count_or_default("views_per_sample", views_per_sample, s.views_per_sample)
        self.num_frames = self.frames_per_sample * self.views_per_sample
        if num_frames is not None and int(num_frames) != self.num_frames:
            raise ValueError(f"num_frames: {variant} denoises T*V = {self.frames_per_sample}*{self.views_per_sample}"
                             f" = {self.num_frames} latents per call, got {num_frames}")
        self.num_steps = count_or_default("num_steps", num_steps, s.num_steps)
        init_stages(self, backend, device, session_options)
        self.model: SV4DUNet = build_sv4d_unet(parts.unet, num_head_channels, use_3d_attention)
        enc, quant = parts.encoders[ENCODER_EMBEDDERS["cond_frames"]]
        vae = build_vae(enc, quant, parts.decoder)
        venc, vquant = parts.encoders[ENCODER_EMBEDDERS["cond_view"]]
        view_vae = vae if _same(enc, venc) and _same(quant, vquant) else build_vae(venc, vquant, parts.decoder)
        self._set_networks(build_clip_vision(parts.clip_visual, clip_head_width), vae, view_encoder=view_vae)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, name: str | None = None, **kw: Any) -> "SV4DModel":
        parts = load_sv4d_checkpoint(path, name)
        return cls(parts, name or parts.variant, **kw)

    def unet_spec(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        return sv4d_unet_spec(f"{self.variant.name}-unet", shapes, self.model.hp.out_channels)

    def encode_view(self, images: torch.Tensor) -> torch.Tensor:
        """(V, 3, H, W) in [-1, 1] -> (V, 4, H/8, W/8) posterior mode (scale 1.0), the `cond_view` embedder."""
        with self.stage("view_encoder") as enc:
            return enc(images.float())


# ---- conditioning and one Euler step --------------------------------------------------------------------------
@dataclass
class SV4DConditioning:
    """UNet conditioning of one T x V grid: concat (T*V,4,h,w), context (1,T,D), vector (T*V,A), cond_view (V,4,h,w)."""

    concat: torch.Tensor
    context: torch.Tensor
    vector: torch.Tensor
    cond_view: torch.Tensor


def _sinusoid(values, dim: int) -> torch.Tensor:
    from diffusers.models.embeddings import get_timestep_embedding

    v = torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=torch.float32).reshape(-1)
    return get_timestep_embedding(v, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


def _check_images(name: str, x: Any, n: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (N, 3, H, W) tensor in [-1, 1]")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: expected {n} images, got {x.shape[0]}")
    if x.shape[-1] % 64 or x.shape[-2] % 64:
        raise ValueError(f"{name}: H and W must be multiples of 64, got {tuple(x.shape[-2:])}")


def sv4d_conditioning(model: SV4DModel, cond_motion: torch.Tensor, cond_view: torch.Tensor, polar_rad,
                      azimuth_rad, cond_mv: bool = True) -> tuple[SV4DConditioning, SV4DConditioning]:
    """(cond, uncond) for T input-view frames `cond_motion` (T, 3, H, W) and V views `cond_view` (V, 3, H, W) of
    the anchor time; `polar_rad` / `azimuth_rad`: T*V values in (t, v) order. `cond_mv=False` zeroes the view
    latents in both branches (upstream's image_only_indicator 0)."""
    _check_images("cond_motion", cond_motion)
    T = cond_motion.shape[0]
    _check_images("cond_view", cond_view)
    V = cond_view.shape[0]
    if cond_view.shape[-2:] != cond_motion.shape[-2:]:
        raise ValueError(f"cond_view: size {tuple(cond_view.shape[-2:])} differs from cond_motion's "
                         f"{tuple(cond_motion.shape[-2:])}")
    for name, vals in (("polar_rad", polar_rad), ("azimuth_rad", azimuth_rad)):
        if np.asarray(vals).size != T * V:
            raise ValueError(f"{name}: expected {T * V} values (T={T} frames x V={V} views), "
                             f"got {np.asarray(vals).size}")
    adm = model.model.hp.adm_in_channels
    if adm != 256 + 512 + 512:
        raise ValueError(f"model: SV4D's ADM vector is 1280 wide (noise level 256 + polar 512 + azimuth 512), "
                         f"this UNet takes {adm}")
    ctx = model.embed_image(cond_motion)[None]  # (1, T, D)
    lat = model.encode_cond(cond_motion)  # (T, 4, h, w); upstream encodes each frame V times (deterministic)
    concat = lat[:, None].expand(T, V, *lat.shape[1:]).reshape(T * V, *lat.shape[1:]).contiguous()
    view = model.encode_view(cond_view) if cond_mv else None
    if view is None:
        view = torch.zeros(V, *lat.shape[1:])
    aug = _sinusoid(np.zeros(T * V), 256)  # the cond-frames embedder's noise level (ZeroSampler: sigma 0)
    geo = torch.cat([_sinusoid(polar_rad, 512), _sinusoid(azimuth_rad, 512)], 1)
    cond = SV4DConditioning(concat, ctx, torch.cat([aug, geo], 1), view)
    uncond = SV4DConditioning(torch.zeros_like(concat), torch.zeros_like(ctx),
                              torch.cat([torch.zeros_like(aug), geo], 1), torch.zeros_like(view))
    return cond, uncond


def sv4d_denoiser(unet, cond: SV4DConditioning, uncond: SV4DConditioning, scales: torch.Tensor,
                  reverse_frames: int | None = None):
    """The guided v-prediction ``fn(x, t)`` of the T*V latents `x` ((t, v) order) for `denoise`: one batched
    UNet call with [uncond, cond]. `reverse_frames` = T: the conditioning describes the frames in reverse order
    (the dense pass's backward steps), so x goes in flipped along time and the prediction comes back unflipped."""

    def net(x2, t, concat, context, vector, cond_view):
        ts = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(x2.shape[0]).contiguous()
        return unet(torch.cat([x2, concat], 1), ts, context, vector, cond_view)

    fn = guided_model(net, (cond.concat, cond.context, cond.vector, cond.cond_view),
                      (uncond.concat, uncond.context, uncond.vector, uncond.cond_view), scales, frame_axis=0)
    if reverse_frames is None:
        return fn

    def flip(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(reverse_frames, -1, *x.shape[1:]).flip(0).reshape(x.shape)

    return lambda x, t: flip(fn(flip(x), t))


def alternating(*denoisers):
    """A denoiser that calls `denoisers` in turn, one per step (SV4D's dense pass: backward at even steps,
    forward at odd ones)."""
    step = iter(range(1 << 62))
    return lambda x, t: denoisers[next(step) % len(denoisers)](x, t)


def sample_grid(model: SV4DModel, cond: SV4DConditioning, uncond: SV4DConditioning, noise: torch.Tensor,
                num_steps: int | None = None, progress: bool = True,
                settings: SV4DSettings | None = None) -> torch.Tensor:
    """The full Euler loop for one T x V grid (upstream's `do_sample` with SV4D inputs): latents (T*V, 4, h, w)."""
    n = count_or_default("num_steps", num_steps, model.num_steps)
    s = settings or model.settings
    T, V = cond.context.shape[1], cond.cond_view.shape[0]
    with model.stage("unet") as unet:
        fn = sv4d_denoiser(unet, cond, uncond, guidance_for(s, T, V))
        return denoise(edm_euler(s.sigma_min, s.sigma_max, s.rho), fn, noise.float(), n, progress=progress,
                       desc="sv4d anchor", callback=model.step_callback("sv4d anchor", n))


_GUIDERS = {2: "linear", 5: "spatiotemporal"}  # upstream's get_guider_no_st indices used by the SV4D scripts


def settings_from_options(model: SV4DModel, options: dict) -> SV4DSettings:
    """The model's defaults overridden by an upstream `version_dict["options"]` (cfg, min_cfg, guider 2 | 5,
    sigma_min, sigma_max, rho). As upstream, the linear guider ignores `min_cfg` (its minimum is 1.0)."""
    from dataclasses import replace

    s = model.settings
    guider = s.guider
    if "guider" in options:
        if options["guider"] not in _GUIDERS:
            raise ValueError(f"version_dict['options']['guider']: SV4D uses 2 (linear) or 5 (spatiotemporal), "
                             f"got {options['guider']!r}")
        guider = _GUIDERS[options["guider"]]
    max_scale = float(options.get("cfg", s.max_scale))
    min_scale = float(options.get("min_cfg", 1.0)) if guider == "spatiotemporal" else 1.0
    return replace(s, guider=guider, max_scale=max_scale, min_scale=min_scale,
                   sigma_min=float(options.get("sigma_min", s.sigma_min)),
                   sigma_max=float(options.get("sigma_max", s.sigma_max)), rho=float(options.get("rho", s.rho)))


def sv4d_run_img2vid(version_dict: dict, model: SV4DModel, image=None, seed: int = 23, polar_rad=None,
                     azim_rad=None, cond_motion: torch.Tensor | None = None, cond_view: torch.Tensor | None = None,
                     decoding_t: int | None = None, cond_mv: bool = True, progress: bool = True) -> torch.Tensor:
    """Upstream's `run_img2vid` for SV4D: T input-view frames `cond_motion` (T, 3, H, W) and V anchor views
    `cond_view` (V, 3, H, W) in [-1, 1], cameras `polar_rad` / `azim_rad` (T*V values, (t, v) order) -> the
    T x V grid of frames (T*V, 3, H, W) in [0, 1]. `image` is unused when `cond_motion` is given (as upstream);
    `cond_mv=False` drops the view conditioning. Noise is seeded with `seed`."""
    if cond_motion is None or cond_view is None:
        raise ValueError("cond_motion, cond_view: SV4D needs the input-view frames and the anchor views")
    options = dict(version_dict.get("options", {}))
    settings = settings_from_options(model, options)
    T, V = cond_motion.shape[0], cond_view.shape[0]
    if "T" in version_dict and int(version_dict["T"]) != T * V:
        raise ValueError(f"version_dict['T']: expected T*V = {T * V} ({T} frames x {V} views), "
                         f"got {version_dict['T']}")
    H, W = cond_motion.shape[-2:]
    cond, uncond = sv4d_conditioning(model, cond_motion, cond_view, polar_rad, azim_rad, cond_mv)
    noise = torch.randn((T * V, 4, H // 8, W // 8), generator=torch.Generator().manual_seed(seed))
    z = sample_grid(model, cond, uncond, noise, options.get("num_steps"), progress, settings)
    return _to_unit(model.decode(z, decoding_t))


# ---- the whole flow ----------------------------------------------------------------------------------------------
def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return torch.clamp((images + 1.0) / 2.0, 0.0, 1.0)


def sv4d_novel_views(sv4d: SV4DModel, frames: torch.Tensor, *, sv3d=None, views_t0: torch.Tensor | None = None,
                     elevation_deg=10.0, azimuths_deg=None, num_steps: int | None = None,
                     sv3d_steps: int | None = None, seed: int = 23, decoding_t: int | None = 4,
                     subsampled_views: Sequence[int] = SV3D_SUBSAMPLED_VIEWS, progress: bool = True,
                     return_t0_views: bool = False):
    """SV4D: `frames` (F, 3, H, W) in [-1, 1] (the preprocessed input video, view 0) -> (F, V+1, 3, H, W) in
    [0, 1]: every frame from the input view and the V novel views.

    The frame-0 orbit comes from `sv3d` (an SV3D `VideoModel`; its frame count is the orbit length, 21 upstream)
    or is given as `views_t0` (orbit frames in [-1, 1], input view LAST, as SV3D returns them). F must be
    1 + T*(T-1) (21 with T = 5: the T anchor frames are every T-1 frames). Deterministic for a `seed` (SV3D's
    noise is seeded with it as well). `return_t0_views=True` also returns the V+1 frame-0 views taken from the
    orbit (V+1, 3, H, W) in [0, 1] (upstream writes those as `_t000.mp4` before sampling).
    """
    if sv4d.variant.name != "sv4d":
        raise ValueError(f"sv4d: this is SV4D's flow; {sv4d.variant.name} has its own (sv4d2_novel_views)")
    T, V = sv4d.frames_per_sample, sv4d.views_per_sample
    _check_images("frames", frames)
    n_frames = frames.shape[0]
    if n_frames != 1 + T * (T - 1):
        raise ValueError(f"frames: expected {1 + T * (T - 1)} frames (1 + T*(T-1): T anchor frames every T-1; "
                         f"21 for SV4D), got {n_frames}")
    sub = np.asarray(subsampled_views, dtype=np.int64)
    if sub.size != V + 1:
        raise ValueError(f"subsampled_views: expected {V + 1} orbit indices (input view + {V}), got {sub.size}")
    if views_t0 is None:
        if sv3d is None:
            raise ValueError("sv3d: give an SV3D model (or the frame-0 orbit as views_t0)")
        orbit = sv3d_orbit(sv3d, frames[:1], elevation_deg=elevation_deg, azimuths_deg=azimuths_deg,
                           num_steps=count_or_default("sv3d_steps", sv3d_steps,
                                                      count_or_default("num_steps", num_steps, sv4d.num_steps)),
                           seed=seed, decoding_t=decoding_t,
                           progress=progress) * 2 - 1
    else:
        _check_images("views_t0", views_t0)
        orbit = views_t0.float()
    n_orbit = orbit.shape[0]
    if sub.max() >= n_orbit or sub.min() < 0:
        raise ValueError(f"subsampled_views: indices must lie in [0, {n_orbit}) (the orbit length)")
    polars, azimuths = (np.asarray(a) for a in orbit_cameras(n_orbit, elevation_deg, azimuths_deg))
    orbit = torch.roll(orbit, 1, 0)  # the input view first

    n_views = V + 1
    grid: list[list[torch.Tensor | None]] = [[None] * n_views for _ in range(n_frames)]
    for i, v in enumerate(sub):
        grid[0][i] = orbit[v:v + 1]
    for t in range(n_frames):
        grid[t][0] = frames[t:t + 1].float()
    t0_views = _to_unit(torch.cat(grid[0], 0))
    view_idx = list(range(1, n_views))
    polar_tv = np.tile(polars[sub[1:]], T)
    azim_tv = (np.tile(azimuths[sub[1:]], T) - azimuths[0]) % (2 * np.pi)
    g = torch.Generator().manual_seed(seed)
    H, W = frames.shape[-2:]
    lat_shape = (4, H // 8, W // 8)

    def cat(ts):
        return torch.cat(list(ts), 0)

    # anchor frames
    anchors = list(range(T - 1, n_frames, T - 1))
    cond, uncond = sv4d_conditioning(sv4d, cat(grid[t][0] for t in anchors), cat(grid[0][v] for v in view_idx),
                                     polar_tv, azim_tv)
    z = sample_grid(sv4d, cond, uncond, torch.randn((T * V, *lat_shape), generator=g), num_steps, progress)
    imgs = sv4d.decode(z, decoding_t).reshape(T, V, 3, H, W)
    for i, t in enumerate(anchors):
        for j, v in enumerate(view_idx):
            if grid[t][v] is None:
                grid[t][v] = _to_unit(imgs[i, j][None]) * 2 - 1

    # dense frames, alternating backward / forward conditioning per step
    n = count_or_default("num_steps", num_steps, sv4d.num_steps)
    s = sv4d.settings
    scales = guidance_for(s, T, V)
    starts = range(0, n_frames - 1, T - 1)
    for t0 in sv4d.steps(starts, "sv4d dense", progress=progress):
        window = list(range(t0, t0 + T))
        latents = torch.randn((n_frames, n_views, *lat_shape), generator=g)
        fwd = sv4d_conditioning(sv4d, cat(grid[t][0] for t in window), cat(grid[window[0]][v] for v in view_idx),
                                polar_tv, azim_tv)
        back = sv4d_conditioning(sv4d, cat(grid[t][0] for t in window[::-1]),
                                 cat(grid[window[-1]][v] for v in view_idx), polar_tv, azim_tv)
        with sv4d.stage("unet") as unet:
            z = denoise(edm_euler(s.sigma_min, s.sigma_max, s.rho), alternating(
                sv4d_denoiser(unet, *back, scales, reverse_frames=T), sv4d_denoiser(unet, *fwd, scales)),
                latents[window][:, view_idx].flatten(0, 1), n)
        imgs = sv4d.decode(z, decoding_t).reshape(T, V, 3, H, W)
        for i, t in enumerate(window):
            for j, v in enumerate(view_idx):
                grid[t][v] = _to_unit(imgs[i, j][None]) * 2 - 1
    views = _to_unit(torch.stack([torch.cat(row, 0) for row in grid]))
    return (views, t0_views) if return_t0_views else views


def sv4d2_novel_views(model: SV4DModel, frames: torch.Tensor, *, elevation_deg=0.0, azimuths_deg=None,
                      num_steps: int | None = None, seed: int = 23, decoding_t: int | None = 4,
                      progress: bool = True) -> torch.Tensor:
    """SV4D 2.0 (`simple_video_sample_4d2.py`): no SV3D stage; windows of T frames, each one `run_img2vid` call,
    the first without view conditioning (`cond_mv=False`), later ones conditioned on the views of the window's
    first frame from the previous window. 4-view model: windows at 0, T, ... (the last one moved back to end at
    the last frame); 8-view model: every T-1 frames. Polar angles relative to view 0 plus pi/2, azimuths relative
    to view 0; default azimuths [0, 60, 120, 180, 240] (4 views) or [0, 30, 75, ..., 330] (8 views), elevation 0.
    `frames` (F, 3, H, W) in [-1, 1] -> (F, V+1, 3, H, W) in [0, 1]. Window k's noise is seeded with seed + k.
    """
    if model.variant.name != "sv4d2":
        raise ValueError(f"model: sv4d2_novel_views needs an SV4D 2.0 model, got {model.variant.name}")
    T, V = model.frames_per_sample, model.views_per_sample
    _check_images("frames", frames)
    n_frames = frames.shape[0]
    if n_frames < T:
        raise ValueError(f"frames: expected at least T={T} frames, got {n_frames}")
    n_views = V + 1
    elev = [float(elevation_deg)] * n_views if np.isscalar(elevation_deg) else [float(e) for e in elevation_deg]
    if azimuths_deg is None:
        azimuths_deg = {4: [0, 60, 120, 180, 240], 8: [0, 30, 75, 120, 165, 210, 255, 300, 330]}.get(
            V, list(np.linspace(0, 360, n_views, endpoint=False)))
    az = np.asarray(azimuths_deg, dtype=np.float64)
    if len(elev) != n_views or az.size != n_views:
        raise ValueError(f"elevation_deg, azimuths_deg: expected 1 or {n_views} elevations and {n_views} azimuths")
    polars_rad = np.deg2rad(90 - np.asarray(elev))
    azimuths_rad = np.deg2rad((az - az[-1]) % 360)
    polars = (np.tile(polars_rad[1:], T) - polars_rad[0] + np.pi / 2) % (2 * np.pi)
    azims = (np.tile(azimuths_rad[1:], T) - azimuths_rad[0]) % (2 * np.pi)
    H, W = frames.shape[-2:]
    grid: list[list[torch.Tensor | None]] = [[None] * n_views for _ in range(n_frames)]
    for v in range(1, n_views):
        grid[0][v] = torch.zeros(1, 3, H, W)
    for t in range(n_frames):
        grid[t][0] = frames[t:t + 1].float()
    starts = range(0, n_frames, T) if V == 4 else range(0, n_frames - T + 1, T - 1)
    options = {"num_steps": count_or_default("num_steps", num_steps, model.num_steps)}
    for k, t0 in enumerate(model.steps(starts, "sv4d2", progress=progress)):
        t0 = min(t0, n_frames - T)
        window = list(range(t0, t0 + T))
        samples = sv4d_run_img2vid({"options": options}, model, None, seed + k, polars, azims,
                                   torch.cat([grid[t][0] for t in window]), torch.cat(grid[t0][1:]), decoding_t,
                                   cond_mv=t0 != 0, progress=False).reshape(T, V, 3, H, W)
        for i, t in enumerate(window):
            for j in range(V):
                grid[t][j + 1] = samples[i, j][None] * 2 - 1
    missing = [t for t in range(n_frames) if any(x is None for x in grid[t])]
    if missing:
        raise ValueError(f"frames: {n_frames} frames leave frames {missing[:5]} outside every window of T={T}")
    return _to_unit(torch.stack([torch.cat(row, 0) for row in grid]))


def write_novel_view_videos(out_dir: str | os.PathLike, views: torch.Tensor, base_count: int = 0,
                            fps: float = 10.0, t0_views: torch.Tensor | None = None) -> list[Path]:
    """Upstream's outputs from (F, V+1, 3, H, W) in [0, 1]: `{base:06d}_t000.mp4` (the views at frame 0:
    `t0_views` when given, as upstream's orbit views, else `views[0]`), one `{base:06d}_v{v:03d}.mp4` per novel
    view, and `{base:06d}_diag.mp4` (the view advancing with time)."""
    from ezvtb.novel_view.video_io import tensor_to_uint8, write_mp4

    if not isinstance(views, torch.Tensor) or views.dim() != 5 or views.shape[2] != 3:
        raise ValueError("views: expected a (frames, views, 3, H, W) tensor in [0, 1]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_frames, n_views = views.shape[:2]
    first = views[0] if t0_views is None else t0_views
    paths = [write_mp4(out / f"{base_count:06d}_t000.mp4", tensor_to_uint8(first), fps)]
    for v in range(1, n_views):
        paths.append(write_mp4(out / f"{base_count:06d}_v{v:03d}.mp4", tensor_to_uint8(views[:, v]), fps))
    step = max(1, n_frames // n_views)
    diag = torch.stack([views[t, (t // step) % n_views] for t in range(n_frames)])
    paths.append(write_mp4(out / f"{base_count:06d}_diag.mp4", tensor_to_uint8(diag), fps))
    return paths


__all__ = ["SETTINGS", "SV3D_SUBSAMPLED_VIEWS", "SV4DConditioning", "SV4DModel", "SV4DSettings",
           "alternating", "guidance_for", "sample_grid", "sv4d_denoiser",
           "settings_from_options", "sv4d_conditioning", "sv4d_novel_views",
           "sv4d_run_img2vid", "sv4d2_novel_views", "write_novel_view_videos"]
