"""The names of upstream's SV4D helper module (which runs SV3D first) over ezvtb's pipelines.

`load_model` reads an official checkpoint into a `VideoModel` or `SV4DModel` (torch modules or exported sessions
per stage), `do_sample` / `run_img2vid` sample with upstream's semantics, `sv3d_orbit` is the SV3D entry (one
image -> 21 views, the last one the input view), `preprocess_video` crops and centres an object on white. The
sampling itself lives in `ezvtb.novel_view.sampling` (SV3D/SVD) and `ezvtb.novel_view.sv4d`; this module imports
both and neither imports it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ezvtb.models.sgm_video.checkpoint import VARIANTS
from ezvtb.novel_view.model import VideoModel, initial_model_load, load_module_gpu, unload_module_gpu
from ezvtb.novel_view.sampling import EulerEDMSampler, check_size, default_sampler, do_sample, orbit_cameras, sv3d_orbit
from ezvtb.novel_view.sv4d import SV4DModel, sv4d_run_img2vid
from ezvtb.novel_view.video_io import read_frames, tensor_to_uint8, write_mp4

log = logging.getLogger("ezvtb.novel_view")


def preprocess_video(input_path, remove_bg: bool = False, n_frames: int = 21, W: int = 576, H: int = 576,
                     output_folder=None, image_frame_ratio: float = 0.917, base_count: int = 0) -> str:
    """Crop the object of every frame (one box for the whole clip, from the alpha or a white background), centre
    it on a square padded so the object fills `image_frame_ratio`, resize to W x H, composite on white, write
    `{output_folder}/{base_count:06d}_process_input.mp4`; returns that path."""
    from PIL import Image

    if n_frames < 1:
        raise ValueError(f"n_frames: expected >= 1, got {n_frames}")
    if not 0 < image_frame_ratio <= 1:
        raise ValueError(f"image_frame_ratio: expected a value in (0, 1], got {image_frame_ratio}")
    check_size(H, W)
    frames = read_frames(input_path, n_frames)
    if len(frames) < n_frames:
        raise ValueError(f"input_path: {input_path} has {len(frames)} frames, fewer than n_frames={n_frames}")
    rgba = []
    for im in frames:
        if remove_bg and im.mode != "RGBA":
            im = _remove_background(im)
        rgba.append(im.convert("RGBA"))
    masks = []
    for im, src in zip(rgba, frames):
        a = np.asarray(im)
        if src.mode == "RGBA" or remove_bg:
            masks.append(a[..., 3] > 0)
        else:
            masks.append(a[..., :3].mean(-1) <= 250)
    union = np.logical_or.reduce(masks)
    if not union.any():
        raise ValueError(f"input_path: {input_path}: no object found (every pixel is background)")
    ys, xs = np.nonzero(union)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = int(max(x1 - x0, y1 - y0) / image_frame_ratio)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
    out = []
    for im, src in zip(rgba, frames):
        if src.mode != "RGBA" and not remove_bg:  # white background: opaque, the crop pads with white
            im = im.copy()
            im.putalpha(255)
        crop = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        crop.paste(im.crop(box), (0, 0))
        crop = crop.resize((W, H), Image.LANCZOS)
        a = np.asarray(crop).astype(np.float32) / 255.0
        rgb = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
        out.append((rgb * 255.0 + 0.5).astype(np.uint8))
    folder = Path(output_folder) if output_folder is not None else Path(str(input_path)).parent
    path = folder / f"{base_count:06d}_process_input.mp4"
    write_mp4(path, out)
    return str(path)


def _remove_background(image):
    try:
        from rembg import remove
    except ImportError as e:
        raise RuntimeError("remove_bg=True needs the 'rembg' package (pip install rembg); it downloads its "
                           "u2net model from a hub on first use. Or give frames with an alpha channel.") from e
    return remove(image.convert("RGBA"), alpha_matting=True)


def load_model(config, device: str = "cpu", num_frames: int | None = None, num_steps: int | None = None,
               verbose: bool = False, ckpt_path=None, *, backend: str = "torch", filter_weights=None, **kw: Any):
    """(model, filter): `config` is a model name (sv3d_u, sv3d_p, svd, svd_xt, sv4d, sv4d2) or an upstream
    sampling YAML (its `model.params.ckpt_path` is used when `ckpt_path` is None). The checkpoint is loaded
    strictly and must be that model. `filter` is upstream's safety filter (`safety_filter.SafetyFilter`) when
    `filter_weights` is given (a folder or {"clip", "p_head", "w_head"} paths, see `load_safety_filter`), else
    None: its weights are not bundled."""
    name, yaml_ckpt = _resolve_config(config)
    filt = None
    if filter_weights is not None:
        from ezvtb.novel_view.safety_filter import load_safety_filter

        filt = load_safety_filter(filter_weights, verbose=verbose)
    ckpt_path = ckpt_path or yaml_ckpt
    if ckpt_path is None:
        raise ValueError(f"ckpt_path: no checkpoint given for {name} (the official {name}.safetensors)")
    if name.startswith("sv4d"):
        model = SV4DModel.from_checkpoint(ckpt_path, name, num_frames=num_frames, num_steps=num_steps,
                                          backend=backend, device=device, **kw)
        return model, filt
    model = VideoModel.from_checkpoint(ckpt_path, name, num_frames=num_frames, num_steps=num_steps,
                                       backend=backend, device=device, **kw)
    model.sampler = default_sampler(model, num_steps, verbose)
    if verbose:
        log.info("loaded %s from %s: %d frames, %d steps, backend %s", name, ckpt_path, model.num_frames,
                 model.num_steps, backend)
    return model, filt


def _resolve_config(config) -> tuple[str, str | None]:
    if isinstance(config, str) and config in VARIANTS:
        return config, None
    p = Path(str(config))
    if not p.is_file():
        raise ValueError(f"config: expected a model name {sorted(VARIANTS)} or a YAML file, got {config!r}")
    import yaml

    cfg = yaml.safe_load(p.read_text())
    try:
        params = cfg["model"]["params"]
        adm = params["network_config"]["params"]["adm_in_channels"]
        target = params["network_config"]["target"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"config: {p} is not an sgm sampling YAML (model.params.network_config)") from e
    stem = p.stem if p.stem in VARIANTS else None
    if stem is None:
        stem = ("sv4d" if target.endswith("SpatialUNetModelWithTime")
                else {256: "sv3d_u", 768: "svd", 1280: "sv3d_p"}.get(adm))
    if stem is None:
        raise ValueError(f"config: cannot tell the model of {p} (adm_in_channels {adm})")
    return stem, params.get("ckpt_path")


def run_img2vid(version_dict, model, image, seed=23, polar_rad=[10] * 21,  # noqa: B006 - upstream's defaults
                azim_rad=np.linspace(0, 360, 21 + 1)[1:], cond_motion=None, cond_view=None, decoding_t=None,
                cond_mv=True):
    """Upstream's `run_img2vid`: one image -> T frames with the model's camera inputs (`polar_rad`, `azim_rad`
    per frame; SV3D_p). With an SV4D model (`load_model("sv4d", ...)`) it is SV4D's: `cond_motion` /
    `cond_view` / `cond_mv` drive the motion/view conditioning (`ezvtb.novel_view.sv4d.sv4d_run_img2vid`)."""
    if model.variant.name.startswith("sv4d"):
        return sv4d_run_img2vid(version_dict, model, image, seed=seed, polar_rad=polar_rad, azim_rad=azim_rad,
                                cond_motion=cond_motion, cond_view=cond_view, decoding_t=decoding_t, cond_mv=cond_mv)
    if cond_motion is not None or cond_view is not None:
        raise ValueError(f"cond_motion, cond_view: SV4D conditioning, but the model is {model.variant.name} "
                         "(load an SV4D checkpoint)")
    for name, values in (("polar_rad", polar_rad), ("azim_rad", azim_rad)):
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ValueError(f"{name}: expected finite radians, got {float(v[~np.isfinite(v)][0])!r}")
    if isinstance(image, torch.Tensor) and not torch.isfinite(image).all():
        raise ValueError("image: contains NaN or inf values (expected finite values in [-1, 1])")
    H, W = version_dict.get("H", 576), version_dict.get("W", 576)
    T = version_dict.get("T", model.num_frames)
    C, F = version_dict.get("C", 4), version_dict.get("f", 8)
    options = version_dict.get("options", {})
    cond_aug = float(options.get("cond_aug", 0.0))
    value_dict: dict[str, Any] = {
        "cond_frames_without_noise": image,
        "cond_frames": image + cond_aug * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed)),
        "cond_aug": cond_aug, "fps_id": options.get("fps_id", 6),
        "motion_bucket_id": options.get("motion_bucket_id", 127),
        "polars_rad": list(polar_rad)[:T], "azimuths_rad": list(azim_rad)[:T],
    }
    sampler = getattr(model, "sampler", None)
    if "num_steps" in options:
        sampler = default_sampler(model, int(options["num_steps"]))
    return do_sample(model, sampler, value_dict, 1, H, W, C, F, T=T, seed=seed, decoding_t=decoding_t,
                     force_uc_zero_embeddings=options.get("force_uc_zero_embeddings",
                                                          ["cond_frames", "cond_frames_without_noise"]))


_WIDE_GREY = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def load_image(path, H: int = 576, W: int = 576) -> torch.Tensor:
    """An RGB(A) or greyscale image file -> (1, 3, H, W) in [-1, 1] (alpha composited on white). 16-bit
    greyscale (PIL modes I;16 / I) is scaled by 1/65535, not clipped to 8 bits."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image: no file at {p}")
    with Image.open(p) as im:
        if im.width == 0 or im.height == 0:
            raise ValueError(f"image: {p} is empty")
        if im.mode in _WIDE_GREY:
            grey = np.asarray(im, dtype=np.float32)
            if grey.min() < 0 or grey.max() > _WIDE_GREY[im.mode]:
                raise ValueError(f"image: {p} is a {im.mode} greyscale image with values outside "
                                 f"[0, {_WIDE_GREY[im.mode]:.0f}]")
            grey = Image.fromarray(grey / _WIDE_GREY[im.mode]).resize((W, H), Image.LANCZOS)
            g = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0)
            return torch.from_numpy(np.repeat(g[None], 3, axis=0))[None] * 2.0 - 1.0
        im = im.convert("RGBA").resize((W, H), Image.LANCZOS)
    a = np.asarray(im).astype(np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2.0 - 1.0


def save_frames_mp4(path, frames: torch.Tensor, fps: float = 10.0) -> Path:
    return write_mp4(path, tensor_to_uint8(frames), fps)


__all__ = ["EulerEDMSampler", "do_sample", "initial_model_load", "load_image", "load_model", "load_module_gpu",
           "orbit_cameras", "preprocess_video", "run_img2vid", "save_frames_mp4", "sv3d_orbit", "unload_module_gpu"]
