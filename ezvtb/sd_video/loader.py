"""Load a ModelScope text-to-video model from either folder layout, strictly.

* ModelScope layout (the original release): ``configuration.json``, ``text2video_pytorch_model.pth``,
  ``VQGAN_autoencoder.pth``, ``open_clip_pytorch_model.bin`` (names as in ``configuration.json``
  ``model.model_args``), converted by `ezvtb.models.modelscope_t2v.convert`.
* diffusers layout (e.g. ``ali-vilab/text-to-video-ms-1.7b``): ``model_index.json``, ``unet/``,
  ``vae/``, ``text_encoder/``, ``tokenizer/`` with config.json + safetensors (or .bin) each.

The layout is detected from the files. Every checkpoint loads with safetensors or
``torch.load(..., weights_only=True)`` and ``load_state_dict(strict=True)``; sizes come from the
tensor shapes (the ModelScope config only adds the attention head width and ``max_frames``).
`save_diffusers_folder` writes the diffusers layout (what the trainer's checkpoints are).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ezvtb.paths import name_from_data

log = logging.getLogger(__name__)

MODELSCOPE_FILES = {"ckpt_unet": "text2video_pytorch_model.pth", "ckpt_autoencoder": "VQGAN_autoencoder.pth",
                    "ckpt_clip": "open_clip_pytorch_model.bin"}
DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer")
DEFAULT_MAX_FRAMES = 16
_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
            "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"),
    "text_encoder": ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin"),
}
LAYOUT_HELP = (
    "expected either the ModelScope layout (configuration.json, text2video_pytorch_model.pth, "
    "VQGAN_autoencoder.pth, open_clip_pytorch_model.bin) or the diffusers layout (model_index.json, unet/, vae/, "
    "text_encoder/, tokenizer/). Weights: ModelScope text-to-video v1.0.4 (Apache-2.0) at "
    "https://huggingface.co/damo-vilab/modelscope-damo-text-to-video-synthesis/tree/"
    "6961f660ba8d22f98da33829c73c7da5d205518e; later releases and ali-vilab/text-to-video-ms-1.7b are CC-BY-NC"
)


@dataclass
class T2VComponents:
    """The three networks, the tokenizer and the sampling facts of one model folder."""

    unet: Any  # diffusers UNet3DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel (penultimate block is its last)
    tokenizer: Any  # transformers CLIPTokenizer
    max_frames: int = DEFAULT_MAX_FRAMES
    num_train_timesteps: int = 1000
    unet_dropout: float = 0.1  # ModelScope's ResBlock dropout; the trainer applies it (diffusers builds 0.0)
    layout: str = "diffusers"
    path: Path | None = None

    def to(self, dtype: Any = None, device: Any = None) -> "T2VComponents":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.unet, self.vae, self.text_encoder):
            if "dtype" in kwargs and next(m.parameters()).dtype == kwargs["dtype"]:
                m.to(**{k: v for k, v in kwargs.items() if k != "dtype"})
            elif kwargs:
                m.to(**kwargs)
        return self


def detect_layout(path: str | os.PathLike) -> str:
    """"modelscope" or "diffusers" from the files in `path`; ValueError naming the expected files otherwise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model_path: {str(p)!r} does not exist; {LAYOUT_HELP}")
    if not p.is_dir():
        raise ValueError(f"model_path: {str(p)!r} is not a folder; {LAYOUT_HELP}")
    if (p / "model_index.json").is_file():
        missing = [d + "/" for d in DIFFUSERS_PARTS if not (p / d).is_dir()]
        if missing:
            raise FileNotFoundError(f"model_path: {str(p)!r} has model_index.json but lacks {', '.join(missing)}")
        return "diffusers"
    if (p / "configuration.json").is_file() or any((p / f).exists() for f in MODELSCOPE_FILES.values()):
        return "modelscope"
    raise ValueError(f"model_path: {str(p)!r} is in neither layout; {LAYOUT_HELP}")


def load_components(path: str | os.PathLike, dtype: Any = None) -> T2VComponents:
    """All parts of the model in `path` (either layout), in eval mode, cast to `dtype` if given."""
    layout = detect_layout(path)
    comps = _load_modelscope(Path(path)) if layout == "modelscope" else _load_diffusers(Path(path))
    for m in (comps.unet, comps.vae, comps.text_encoder):
        m.eval().requires_grad_(False)
    if dtype is not None:
        comps.to(dtype=dtype)
    return comps


def _checkpoint(path: Path) -> dict:
    from ezvtb.weights.wheel import load_checkpoint

    if not path.is_file():
        raise FileNotFoundError(f"model_path: checkpoint {str(path)!r} is missing; {LAYOUT_HELP}")
    return load_checkpoint(path, argument="model_path")


def _strict_load(module: Any, sd: dict, what: str) -> None:
    model_keys = set(module.state_dict())
    missing, unexpected = sorted(model_keys - set(sd)), sorted(set(sd) - model_keys)
    if missing or unexpected:
        raise ValueError(f"{what}: checkpoint does not match the model: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{what}: {str(e).splitlines()[0]} {str(e).splitlines()[1:3]}") from e


def _load_modelscope(p: Path) -> T2VComponents:
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ezvtb.models.modelscope_t2v import convert
    from ezvtb.sd_video.tokenizer import find_tokenizer

    conf = p / "configuration.json"
    if not conf.is_file():
        raise FileNotFoundError(f"model_path: {str(p)!r} lacks configuration.json; {LAYOUT_HELP}")
    cfg = _read_json(conf)
    model = _mapping(cfg.get("model", {}), conf, "model")
    args = _mapping(model.get("model_args", {}), conf, "model.model_args")
    mcfg = _mapping(model.get("model_cfg", {}), conf, "model.model_cfg")
    max_frames = _json_int(args.get("max_frames", DEFAULT_MAX_FRAMES), conf, "model.model_args.max_frames")
    files = {k: p / name_from_data(args.get(k, v), f"model_path: {str(conf)!r}: model.model_args.{k}")
             for k, v in MODELSCOPE_FILES.items()}
    for f in files.values():
        if not f.is_file():
            raise FileNotFoundError(f"model_path: checkpoint {str(f)!r} is missing; {LAYOUT_HELP}")
    if "unet_num_heads" in mcfg and _json_int(mcfg["unet_num_heads"], conf, "model.model_cfg.unet_num_heads") \
            != convert.TEMPORAL_IN_HEADS:
        raise ValueError(f"configuration.json: unet_num_heads {mcfg['unet_num_heads']} is not supported (must be 8)")
    head_dim = _json_int(mcfg["unet_head_dim"], conf, "model.model_cfg.unet_head_dim") if "unet_head_dim" in mcfg \
        else None

    tokenizer = find_tokenizer(p)

    def converted(fn: Any, f: Path, **kw: Any) -> tuple[dict, dict]:
        try:
            return fn(_checkpoint(f), **kw)
        except convert.ConversionError as e:
            raise ValueError(f"model_path: {str(f)!r}: {e}") from None

    config, sd = converted(convert.convert_unet, files["ckpt_unet"], head_dim=head_dim)
    unet = UNet3DConditionModel(**config)
    _strict_load(unet, sd, f"UNet {files['ckpt_unet'].name}")
    config, sd = converted(lambda c: convert.convert_vae(convert.vae_state_dict_from_ldm_checkpoint(c)),
                           files["ckpt_autoencoder"])
    vae = AutoencoderKL(**config)
    _strict_load(vae, sd, f"VAE {files['ckpt_autoencoder'].name}")
    config, sd = converted(convert.convert_text_encoder, files["ckpt_clip"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    sd = convert.match_text_prefix(sd, set(text_encoder.state_dict()))
    _strict_load(text_encoder, sd, f"text encoder {files['ckpt_clip'].name}")
    _check_tokenizer(tokenizer, text_encoder)
    return T2VComponents(unet, vae, text_encoder, tokenizer,
                         max_frames=max_frames,
                         num_train_timesteps=_json_int(mcfg.get("num_timesteps", 1000), conf,
                                                       "model.model_cfg.num_timesteps"),
                         unet_dropout=float(mcfg.get("unet_dropout", 0.1)), layout="modelscope", path=p)


def _weights_file(folder: Path, part: str) -> Path:
    for name in _WEIGHT_NAMES[part]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"model_path: {str(folder)!r} has none of {list(_WEIGHT_NAMES[part])}")


def _read_json(f: Path) -> dict:
    """The JSON object in `f`; ValueError naming the file when it is not valid JSON or not an object."""
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model_path: {str(f)!r} is not valid JSON: {e}") from None
    except OSError as e:
        raise ValueError(f"model_path: cannot read {str(f)!r}: {e.strerror or e}") from None
    return _mapping(obj, f, "the top level")


def _mapping(v: Any, f: Path, where: str) -> dict:
    if not isinstance(v, dict):
        raise ValueError(f"model_path: {str(f)!r}: {where} must be a JSON object, got {type(v).__name__} {v!r:.40}")
    return v


def _json_int(v: Any, f: Path, where: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"model_path: {str(f)!r}: {where} must be an integer >= {lo}, got {v!r:.40}")
    return v


def _read_config(folder: Path) -> dict:
    f = folder / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"model_path: {str(f)!r} is missing")
    return _read_json(f)


def _load_diffusers(p: Path) -> T2VComponents:
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ezvtb.models.modelscope_t2v.convert import match_text_prefix
    from ezvtb.sd_video.tokenizer import load_tokenizer_folder

    unet = UNet3DConditionModel.from_config(_read_config(p / "unet"))
    _strict_load(unet, _checkpoint(_weights_file(p / "unet", "unet")), "unet/")
    vae = AutoencoderKL.from_config(_read_config(p / "vae"))
    _strict_load(vae, _checkpoint(_weights_file(p / "vae", "vae")), "vae/")
    tcfg = _read_config(p / "text_encoder")
    tcfg = {k: v for k, v in tcfg.items() if k not in ("architectures", "transformers_version", "torch_dtype", "dtype")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**tcfg))
    sd = match_text_prefix(_checkpoint(_weights_file(p / "text_encoder", "text_encoder")),
                           set(text_encoder.state_dict()))
    _strict_load(text_encoder, sd, "text_encoder/")
    tokenizer = load_tokenizer_folder(p / "tokenizer")
    _check_tokenizer(tokenizer, text_encoder)
    index_file = p / "model_index.json"
    index = _read_json(index_file)
    sched = p / "scheduler" / "scheduler_config.json"
    steps = _json_int(_read_json(sched).get("num_train_timesteps", 1000), sched, "num_train_timesteps") \
        if sched.is_file() else 1000
    return T2VComponents(unet, vae, text_encoder, tokenizer,
                         max_frames=_json_int(index.get("max_frames", DEFAULT_MAX_FRAMES), index_file, "max_frames"),
                         num_train_timesteps=steps, unet_dropout=float(index.get("unet_dropout", 0.1)),
                         layout="diffusers", path=p)


def _check_tokenizer(tokenizer: Any, text_encoder: Any) -> None:
    n = text_encoder.config.vocab_size
    if len(tokenizer) > n:
        raise ValueError(f"tokenizer: {len(tokenizer)} tokens but the text encoder's embedding has {n} rows")


@contextlib.contextmanager
def _atomic_dir(folder: Path) -> Iterator[Path]:
    """Write a folder under a temporary sibling name; on success it replaces `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_diffusers_folder(comps: T2VComponents, folder: str | os.PathLike, *, unet: Any = None,
                          extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `comps` (with `unet` instead of comps.unet if given) as a diffusers-layout folder, atomically."""
    folder = Path(folder)
    with _atomic_dir(folder) as tmp:
        (unet if unet is not None else comps.unet).save_pretrained(tmp / "unet", safe_serialization=True)
        comps.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        comps.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        comps.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "scheduler").mkdir()
        config = scheduler_config(comps.num_train_timesteps)
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
        index = {"_class_name": "TextToVideoSDPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
                 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "max_frames": comps.max_frames, "unet_dropout": comps.unet_dropout}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=1))
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return folder


def scheduler_config(num_train_timesteps: int = 1000) -> dict:
    """ModelScope's sampler as a diffusers DDIMScheduler config (linear_sd betas, eps, leading+1 spacing)."""
    return {"_class_name": "DDIMScheduler", "num_train_timesteps": num_train_timesteps, "beta_start": 0.00085,
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
            "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"}
