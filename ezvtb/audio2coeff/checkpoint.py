"""Reading SadTalker Audio2Coeff weights: the old per-network ``.pth`` dicts and the bundled safetensors.

| format | file | content |
|---|---|---|
| old | ``auido2exp_00300-model.pth``, ``auido2pose_00140-model.pth`` (upstream spelling) | ``{'model': state_dict, 'optimizer': ..., 'epoch': int}`` |
| new | ``SadTalker_V0.0.2_{256,512}.safetensors`` | every network's keys prefixed ``audio2exp.``, ``audio2pose.``, ``kp_extractor.``, ``generator.``, ... |

Pickled files are read with ``torch.load(weights_only=True)``: a file whose pickle would build arbitrary objects
(and so could run code) is refused with a ValueError, never executed.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("ezvtb.audio2coeff")


def _check_file(path: Any, argument: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{argument}: expected a file path, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    return p


def read_pickled_checkpoint(checkpoint_path: str | os.PathLike, device: str = "cpu",
                            argument: str = "checkpoint_path") -> dict:
    """The checkpoint dict, loaded weights-only. ValueError for a file that is not one."""
    from ezvtb.weights.wheel import load_checkpoint

    return load_checkpoint(_check_file(checkpoint_path, argument), map_location=device, argument=argument)


def load_into(model: Any, state: dict, argument: str) -> None:
    """Strict `load_state_dict`, through `load_upstream_state_dict` when the model has one (PoseNet drops the
    training-only keys of a full Audio2Pose dict)."""
    loader = getattr(model, "load_upstream_state_dict", None)
    try:
        if loader is not None:
            loader(state)
        else:
            model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"{argument}: weights do not fit {type(model).__name__}: {e}") from None


def load_cpk(checkpoint_path: str | os.PathLike, model: Any = None, optimizer: Any = None,
             device: str = "cpu") -> int:
    """Load ``{'model', 'optimizer', 'epoch'}`` from `checkpoint_path` into `model` (strict) and `optimizer`;
    return the epoch. Weights-only: a pickle that would run code is refused (ValueError)."""
    ckpt = read_pickled_checkpoint(checkpoint_path, device)
    needed = ["epoch"] + (["model"] if model is not None else []) + (["optimizer"] if optimizer is not None else [])
    for key in needed:
        if key not in ckpt:
            raise ValueError(f"checkpoint_path: {str(checkpoint_path)!r} has no {key!r} entry "
                             f"(keys: {sorted(map(str, ckpt))[:8]})")
    if model is not None:
        load_into(model, ckpt["model"], "checkpoint_path")
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt["epoch"])


def read_safetensors_part(path: str | os.PathLike, name: str, argument: str = "checkpoint") -> dict:
    """The tensors of network `name` in a bundled SadTalker safetensors file, prefix ``name.`` stripped."""
    from ezvtb.weights.wheel import load_checkpoint

    p = _check_file(path, argument)
    if p.suffix != ".safetensors":
        raise ValueError(f"{argument}: {str(p)!r} is not a .safetensors file")
    tensors = load_checkpoint(p, argument=argument)
    prefix = name + "."
    part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not part:
        heads = sorted({k.split(".", 1)[0] for k in tensors})
        raise ValueError(f"{argument}: no {prefix}* tensors in {str(p)!r} (networks present: {heads})")
    return part


def read_network_state(sadtalker_path: dict, name: str, device: str = "cpu") -> dict:
    """State dict of ``audio2exp`` or ``audio2pose`` from the seed's path dict (either format)."""
    if sadtalker_path.get("use_safetensor"):
        if not sadtalker_path.get("checkpoint"):
            raise ValueError("sadtalker_path['checkpoint']: required when use_safetensor is true")
        return read_safetensors_part(sadtalker_path["checkpoint"], name, "sadtalker_path['checkpoint']")
    key = f"{name}_checkpoint"
    if not sadtalker_path.get(key):
        raise ValueError(f"sadtalker_path[{key!r}]: required when use_safetensor is false")
    ckpt = read_pickled_checkpoint(sadtalker_path[key], device, f"sadtalker_path[{key!r}]")
    if "model" not in ckpt or not isinstance(ckpt["model"], dict):
        raise ValueError(f"sadtalker_path[{key!r}]: expected {{'model': state_dict, ...}}, got keys {sorted(ckpt)[:8]}")
    return ckpt["model"]
