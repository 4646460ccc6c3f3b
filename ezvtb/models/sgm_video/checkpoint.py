"""Official single-file SVD / SV3D / SV4D checkpoints: detect the model, split its parts, load them strictly.

`load_checkpoint` / `split_state_dict` give the parts of an SVD / SV3D file, `load_sv4d_checkpoint` /
`split_sv4d_state_dict` those of an SV4D file (its UNet, CLIP tower, decoder and three conditioner VAE encoders).

One `.safetensors` holds the whole sgm `DiffusionEngine`: `model.diffusion_model.*` (the UNet),
`conditioner.embedders.N.*` (OpenCLIP image tower at N = 0, the cond-frame VAE encoder at the embedder's YAML
position) and `first_stage_model.*` (the VAE decoder; SVD's is temporal). The variant is read from the keys and
the ADM width (`label_emb.0.0.weight`): SV3D_u 256, SVD 768, SV3D_p 1280, SV4D 1280 plus motion blocks. Every
tensor must be claimed by a part; unknown keys are an error naming them.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
FIRST_STAGE = "first_stage_model."


@dataclass(frozen=True)
class Variant:
    """What differs between the sgm video models (from the upstream sampling YAMLs)."""

    name: str
    adm_in_channels: int
    vector_inputs: tuple[tuple[str, int], ...]  # (conditioner input key, sinusoid width), YAML order
    encoder_index: int  # conditioner position of the cond-frame VAE encoder
    num_frames: int
    num_steps: int
    guider: str  # "triangle" | "linear"
    min_scale: float
    max_scale: float
    height: int = 576
    width: int = 576
    defaults: dict = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    "sv3d_u": Variant("sv3d_u", 256, (("cond_aug", 256),), 1, 21, 50, "triangle", 1.0, 2.5,
                      defaults={"cond_aug": 1e-5}),
    "sv3d_p": Variant("sv3d_p", 1280, (("cond_aug", 256), ("polars_rad", 512), ("azimuths_rad", 512)), 1, 21, 50,
                      "triangle", 1.0, 2.5, defaults={"cond_aug": 1e-5}),
    "svd": Variant("svd", 768, (("fps_id", 256), ("motion_bucket_id", 256), ("cond_aug", 256)), 3, 14, 25, "linear",
                   1.0, 2.5, height=576, width=1024, defaults={"fps_id": 6, "motion_bucket_id": 127, "cond_aug": 0.02}),
    "svd_xt": Variant("svd_xt", 768, (("fps_id", 256), ("motion_bucket_id", 256), ("cond_aug", 256)), 3, 25, 30,
                      "linear", 1.5, 3.0, height=576, width=1024,
                      defaults={"fps_id": 6, "motion_bucket_id": 127, "cond_aug": 0.02}),
    "sv4d": Variant("sv4d", 1280, (("cond_aug", 256), ("polar_rad", 512), ("azimuth_rad", 512)), 4, 40, 20,
                    "linear", 1.0, 2.5),
    "sv4d2": Variant("sv4d2", 1280, (("cond_aug", 256), ("polar_rad", 512), ("azimuth_rad", 512)), 4, 48, 50,
                     "linear", 1.0, 2.0),
}
ENCODER_EMBEDDERS = {"cond_frames": 1, "cond_view": 4, "cond_motion": 5}  # SV4D's conditioner positions (sv4d*.yaml)
_FAMILY = {"sv3d_u": "sv3d_u", "sv3d_p": "sv3d_p", "svd": "svd", "svd_xt": "svd", "sv4d": "sv4d", "sv4d2": "sv4d"}


def detect_variant(shapes: dict[str, tuple[int, ...]]) -> str:
    """'sv3d_u' | 'sv3d_p' | 'svd' | 'sv4d' (SVD and SVD-XT, SV4D and SV4D 2.0 share a layout)."""
    adm = shapes.get(UNET_PREFIX + "label_emb.0.0.weight")
    if adm is None or UNET_PREFIX + "input_blocks.0.0.weight" not in shapes:
        raise ValueError("checkpoint: no sgm video UNet (model.diffusion_model.label_emb / input_blocks) in this file")
    if any(".motion_blocks." in k for k in shapes):
        return "sv4d"
    family = {256: "sv3d_u", 768: "svd", 1280: "sv3d_p"}.get(adm[1])
    if family is None:
        raise ValueError(f"checkpoint: ADM width {adm[1]} matches no known model (SV3D_u 256, SVD 768, SV3D_p 1280)")
    return family


def read_shapes(path: str | os.PathLike, argument: str = "ckpt_path") -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor of a ``.safetensors`` file, from its checked header (no weight is read)."""
    from ezvtb.weights.wheel import safetensors_header

    return {k: tuple(int(d) for d in t["shape"]) for k, t in safetensors_header(path, argument).items()}


def check_variant(name: str, detected: str, path) -> None:
    if name not in VARIANTS:
        raise ValueError(f"config: unknown model {name!r}; expected one of {sorted(VARIANTS)}")
    if _FAMILY[name] != detected:
        raise ValueError(f"ckpt_path: {path} is a {detected} checkpoint, not {name}")


@dataclass
class CheckpointParts:
    unet: dict
    clip_visual: dict
    encoder: dict
    quant_conv: dict
    decoder: dict
    variant: str


def claim_shared_key(k: str, v: Any, unet: dict, clip_visual: dict, decoder: dict) -> bool:
    """Put tensor `k` into the part every sgm video checkpoint has (UNet, CLIP image tower, first-stage
    decoder), or skip what no model uses (OpenCLIP text leftovers, SVD's first-stage encoder copy, sigma
    tables, EMA weights). False: the key is not one of these (the caller's own parts, or unknown)."""
    if k.startswith(UNET_PREFIX):
        unet[k[len(UNET_PREFIX):]] = v
    elif k.startswith(CLIP_PREFIX + "visual."):
        clip_visual[k[len(CLIP_PREFIX) + 7:]] = v
    elif k.startswith(FIRST_STAGE + "decoder."):
        decoder[k[len(FIRST_STAGE) + 8:]] = v
    elif not (k.startswith((CLIP_PREFIX, FIRST_STAGE + "encoder.", "model_ema."))
              or k in ("denoiser.sigmas", "denoiser.log_sigmas")):
        return False
    return True


def split_state_dict(sd: dict, variant: str) -> CheckpointParts:
    """Group the tensors by part; raise on any tensor no part claims."""
    enc_i = VARIANTS[variant].encoder_index
    enc_prefix = f"conditioner.embedders.{enc_i}.encoder."
    parts = CheckpointParts({}, {}, {}, {}, {}, variant)
    unknown = []
    for k, v in sd.items():
        if claim_shared_key(k, v, parts.unet, parts.clip_visual, parts.decoder):
            pass
        elif k.startswith(enc_prefix + "encoder."):
            parts.encoder[k[len(enc_prefix) + 8:]] = v
        elif k.startswith(enc_prefix + "quant_conv."):
            parts.quant_conv[k[len(enc_prefix) + 11:]] = v
        elif k.startswith(enc_prefix + "decoder.") or k.startswith(enc_prefix + "post_quant_conv."):
            pass  # the embedder's unused decoder half (AutoencoderKLModeOnly holds both)
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"checkpoint: {len(unknown)} tensors belong to no known part: {unknown[:5]}")
    for name in ("unet", "clip_visual", "encoder", "quant_conv", "decoder"):
        if not getattr(parts, name):
            raise ValueError(f"checkpoint: the {name} tensors are missing (expected a full {variant} checkpoint)")
    return parts


def read_state_dict(path: str | os.PathLike, check: Callable[[dict[str, tuple[int, ...]]], None] | None = None
                    ) -> dict[str, Any]:
    """The tensors of an official `.safetensors` or of a `.ckpt` (["state_dict"], loaded weights-only).

    `check(shapes)` sees every name -> shape first (for safetensors from the header, before any weight is read)
    and raises to refuse the file."""
    from ezvtb.weights.wheel import CheckpointFileError, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {path} (download the official .safetensors)")
    if path.suffix == ".safetensors":
        if check is not None:
            check(read_shapes(path))
        return load_checkpoint(path, argument="ckpt_path")
    sd = load_checkpoint(path, argument="ckpt_path")
    sd = sd.get("state_dict", sd)
    if not isinstance(sd, dict) or not all(hasattr(v, "shape") for v in sd.values()):
        raise CheckpointFileError(f"ckpt_path: {str(path)!r} holds no state dict of tensors (its 'state_dict' is "
                                  f"a {type(sd).__name__} or holds other objects)")
    if check is not None:
        check({k: tuple(v.shape) for k, v in sd.items()})
    return sd


def load_checkpoint(path: str | os.PathLike, name: str | None = None) -> CheckpointParts:
    """Read an official `.safetensors` (or `.ckpt` with ["state_dict"], loaded weights-only) and split it."""
    detected: list[str] = []

    def check(shapes: dict[str, tuple[int, ...]]) -> None:
        detected.append(detect_variant(shapes))
        if name is not None:
            check_variant(name, detected[0], path)

    sd = read_state_dict(path, check)
    return split_state_dict(sd, name or detected[0])


@dataclass
class SV4DParts:
    unet: dict
    clip_visual: dict
    encoders: dict  # conditioner position -> (encoder tensors, quant_conv tensors)
    decoder: dict
    variant: str


def split_sv4d_state_dict(sd: dict, variant: str | None = None) -> SV4DParts:
    """Group an official SV4D checkpoint's tensors by part; raise on any tensor no part claims. `variant` None:
    "sv4d2" when the UNet has SV4D 2.0's separate motion mixers, else "sv4d"."""
    if variant is None:
        variant = "sv4d2" if any(k.endswith("time_mixer_motion.mix_factor") for k in sd) else "sv4d"
    parts = SV4DParts({}, {}, {i: ({}, {}) for i in ENCODER_EMBEDDERS.values()}, {}, variant)
    unknown = []
    for k, v in sd.items():
        if claim_shared_key(k, v, parts.unet, parts.clip_visual, parts.decoder):
            pass
        elif k.startswith("conditioner.embedders."):
            i_str, _, rest = k[len("conditioner.embedders."):].partition(".")
            i = int(i_str) if i_str.isdigit() else -1
            if i in parts.encoders and rest.startswith("encoder.encoder."):
                parts.encoders[i][0][rest[len("encoder.encoder."):]] = v
            elif i in parts.encoders and rest.startswith("encoder.quant_conv."):
                parts.encoders[i][1][rest[len("encoder.quant_conv."):]] = v
            elif i in parts.encoders and rest.startswith(("encoder.decoder.", "encoder.post_quant_conv.")):
                pass  # the embedders' unused decoder halves
            else:
                unknown.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"checkpoint: {len(unknown)} tensors belong to no SV4D part: {unknown[:5]}")
    if not any(".motion_blocks." in k for k in parts.unet):
        raise ValueError("checkpoint: not an SV4D checkpoint (its UNet has no motion_blocks)")
    for name, d in (("UNet", parts.unet), ("CLIP image tower", parts.clip_visual), ("VAE decoder", parts.decoder)):
        if not d:
            raise ValueError(f"checkpoint: the {name} tensors are missing (expected a full {variant} checkpoint)")
    for key, i in ENCODER_EMBEDDERS.items():
        if not parts.encoders[i][0] or not parts.encoders[i][1]:
            raise ValueError(f"checkpoint: the {key} VAE encoder (conditioner.embedders.{i}) is missing")
    return parts


def load_sv4d_checkpoint(path: str | os.PathLike, name: str | None = None) -> SV4DParts:
    """Read an official SV4D `.safetensors` (or weights-only `.ckpt`) and split it."""

    def check(shapes: dict[str, tuple[int, ...]]) -> None:
        if not any(".motion_blocks." in k for k in shapes if k.startswith(UNET_PREFIX)):
            raise ValueError(f"ckpt_path: {path} is not an SV4D checkpoint (no motion_blocks in its UNet)")

    return split_sv4d_state_dict(read_state_dict(path, check), name)
