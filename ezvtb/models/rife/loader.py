"""Build and load RIFE networks from ``flownet.pkl`` state dicts, detecting version and shapes.

Official files are written by a DDP-wrapped net, so keys start with ``module.``; it is stripped
(unprefixed keys are accepted too). Both torch serialisations (legacy pickle and zip) load through
`ezvtb.weights.load_checkpoint` (``weights_only=True``).

Detection looks only at key names and tensor shapes, never at file names:

* **HDv3** (v3.x): ``block{i}.conv0.0.0.weight`` + ``block{i}.convblock{j}...`` + ``block{i}.conv1/conv2``
  (PReLU weights). c = ``conv0.1.0.weight.shape[0]``, cin = ``conv0.0.0.weight.shape[1]`` (11).
  Its ``block_tea.*`` tensors are the training-only teacher block, which takes the ground-truth
  middle frame as extra input and is never used for inference: they are recognised and ignored
  (logged), any other extra key is an error.
* **v4.25.lite**: ``encode.cnn{0..3}`` + ``block{i}.convblock.{j}.beta`` + ``block{i}.lastconv.0``,
  with block channels 192/128/96/64/24, 4 head channels and 8 ResConvs per block. Other v4.x
  layouts (v4.25 full, v4.26, ...) are recognised as v4.x and refused by name: their
  per-block scales cannot be read from the weights.

Every key is checked explicitly: missing, unexpected and mis-shaped tensors are listed in a
`RifeCheckpointError` (a ValueError) rather than dropped.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ezvtb.models.rife.hdv3 import HDV3_SCALES, IFNetHDv3
from ezvtb.models.rife.v4_25_lite import BLOCK_OUT, V4_25_LITE_CHANNELS, IFNetV4Lite
from ezvtb.weights.wheel import WeightsError, load_checkpoint

log = logging.getLogger("ezvtb.rife")

PREFIX = "module."
TEACHER_PREFIX = "block_tea."


class RifeCheckpointError(WeightsError, ValueError):
    """A state dict is not a supported RIFE flownet, or does not fit the detected architecture."""


@dataclass(frozen=True)
class RifeConfig:
    """What `detect_rife` read from a state dict."""

    version: str                      # "hdv3" | "v4.25.lite"
    channels: tuple[int, ...]         # c of each IFBlock
    in_channels: tuple[int, ...]      # input channels of each IFBlock's first convolution
    res_blocks: int                   # residual units per IFBlock
    head_channels: int = 0            # v4: feature channels of the Head encoder
    teacher_keys: int = 0             # HDv3: number of block_tea.* tensors (ignored)


def normalize_state_dict(state_dict: Mapping[str, object], what: str = "state dict") -> dict[str, Tensor]:
    """Strip the ``module.`` prefix; check every value is a tensor and no two keys collide."""
    if not isinstance(state_dict, Mapping):
        raise RifeCheckpointError(f"{what}: expected a state dict (mapping name -> tensor), "
                                  f"got {type(state_dict).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise RifeCheckpointError(f"{what}: entry {k!r} is a {type(v).__name__}, expected a tensor under a str key")
        name = k[len(PREFIX):] if k.startswith(PREFIX) else k
        if name in out:
            raise RifeCheckpointError(f"{what}: key {k!r} collides with another key once {PREFIX!r} is stripped")
        out[name] = v
    return out


def _shape(sd: Mapping[str, Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise RifeCheckpointError(f"{what}: missing tensor {key!r}")
    return tuple(sd[key].shape)


def _block_ids(sd: Mapping[str, Tensor]) -> list[int]:
    ids = {int(m.group(1)) for k in sd if (m := re.match(r"block(\d+)\.", k))}
    return sorted(ids)


def detect_rife(state_dict: Mapping[str, Tensor], what: str = "state dict") -> RifeConfig:
    """Version and hyper-parameters of a (prefix-stripped) RIFE flownet state dict."""
    sd = state_dict
    ids = _block_ids(sd)
    if not ids or ids != list(range(len(ids))):
        raise RifeCheckpointError(
            f"{what}: not a RIFE flownet state dict (expected block0, block1, ... keys; "
            f"{len(sd)} tensors, first keys {sorted(sd)[:4]})")
    if any(k.startswith("encode.") for k in sd) or "block0.lastconv.0.weight" in sd:
        channels = tuple(_shape(sd, f"block{i}.conv0.1.0.weight", what)[0] for i in ids)
        cin = tuple(_shape(sd, f"block{i}.conv0.0.0.weight", what)[1] for i in ids)
        res = len({m.group(1) for k in sd if (m := re.match(r"block0\.convblock\.(\d+)\.beta$", k))})
        head = _shape(sd, "encode.cnn3.weight", what)[1]
        last = _shape(sd, "block0.lastconv.0.weight", what)
        if channels == V4_25_LITE_CHANNELS and head == 4 and res == 8 and last[1] == 4 * BLOCK_OUT:
            return RifeConfig("v4.25.lite", channels, cin, res, head_channels=head)
        raise RifeCheckpointError(
            f"{what}: a RIFE v4.x flownet with block channels {list(channels)}, {head} head channels and "
            f"{res} ResConvs per block is not supported; supported v4.x: v4.25.lite "
            f"(channels {list(V4_25_LITE_CHANNELS)}, head 4, 8 ResConvs)")
    if "block0.conv1.0.weight" in sd and "block0.convblock0.0.0.weight" in sd:
        channels = tuple(_shape(sd, f"block{i}.conv0.1.0.weight", what)[0] for i in ids)
        cin = tuple(_shape(sd, f"block{i}.conv0.0.0.weight", what)[1] for i in ids)
        res = len({m.group(1) for k in sd if (m := re.match(r"block0\.convblock(\d+)\.0\.0\.weight$", k))})
        teacher = sum(1 for k in sd if k.startswith(TEACHER_PREFIX))
        if len(ids) != len(HDV3_SCALES) or set(cin) != {11}:
            raise RifeCheckpointError(
                f"{what}: a RIFE v3-style flownet with {len(ids)} blocks and input channels {list(cin)} is not "
                f"supported; supported: HDv3 (3 blocks, 11 input channels)")
        return RifeConfig("hdv3", channels, cin, res, teacher_keys=teacher)
    raise RifeCheckpointError(
        f"{what}: not a RIFE HDv3 or v4.25.lite flownet state dict ({len(sd)} tensors, first keys {sorted(sd)[:4]})")


def build_rife(config: RifeConfig) -> nn.Module:
    """An untrained network of the detected architecture."""
    if config.version == "hdv3":
        return IFNetHDv3(config.channels, config.in_channels[0], config.res_blocks)
    if config.version == "v4.25.lite":
        return IFNetV4Lite(config.channels, config.head_channels, config.res_blocks)
    raise ValueError(f"config.version: expected 'hdv3' or 'v4.25.lite', got {config.version!r}")


def _listing(items: list[str], n: int = 6) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_rife(source: str | os.PathLike | Mapping[str, Tensor],
              dtype: torch.dtype = torch.float32) -> tuple[nn.Module, RifeConfig]:
    """Load a RIFE flownet (checkpoint path or state dict) into our network; return (module, config).

    The module is in eval mode, without gradients, cast to `dtype`. Raises `RifeCheckpointError`
    listing missing / unexpected / mis-shaped keys when the checkpoint does not fit.
    """
    if isinstance(source, (str, os.PathLike)):
        what = f"rife_model {os.fspath(source)!r}"
        raw = load_checkpoint(source, argument="rife_model")
    elif isinstance(source, Mapping):
        what, raw = "state dict", source
    else:
        raise ValueError(f"source: expected a checkpoint path or a state dict, got {type(source).__name__}")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype: expected torch.float32 or torch.float16, got {dtype}")
    sd = normalize_state_dict(raw, what)
    config = detect_rife(sd, what)
    module = build_rife(config)
    own = module.state_dict()
    ignored = [k for k in sd if k.startswith(TEACHER_PREFIX)] if config.version == "hdv3" else []
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own and k not in ignored]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = [f"{len(x)} {label}: {_listing(x)}" for label, x in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if x]
    if problems:
        raise RifeCheckpointError(f"{what}: does not fit RIFE {config.version}: " + "; ".join(problems))
    if ignored:
        log.debug("%s: ignoring %d training-only teacher tensors (block_tea.*)", what, len(ignored))
    module.load_state_dict({k: sd[k] for k in own}, strict=True)
    return module.to(dtype).eval().requires_grad_(False), config
