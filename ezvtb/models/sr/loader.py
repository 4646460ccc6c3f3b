"""Build and load SR networks from state dicts, ncnn models or ``.pth`` files, detecting the architecture.

Detection looks only at key names and tensor shapes (never at file names), like spandrel:

* **UpConv7** (nunif ``net.N.*``): seven weighted layers ``net.0, 2, ..., 12``; the first six are
  3x3 convolutions with channels 16/32/64/128/128/256, the last a 4x4 transposed convolution
  (weight ``[256, out, 4, 4]``). in/out channels are read from the first and last weights.
* **SRVGGNetCompact** (Real-ESRGAN ``body.N.*``): ``body.0`` conv (nf, in, 3, 3); PReLU slopes at
  odd indices; the number of body convolutions gives ``num_conv`` (= convs - 2); the last conv's
  output channels = out * k^2 with out = in gives the upscale k.

Accepted containers: a plain state dict, nunif's ``{"nunif_model": 1, "state_dict": ...}``,
Real-ESRGAN's ``{"params_ema": ...}`` / ``{"params": ...}``, a ``module.`` prefix. Every key is
checked: missing, unexpected or mis-shaped tensors raise `SrCheckpointError` (a ValueError) listing them.
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ezvtb.models.sr.ncnn import load_ncnn, state_dict_from_ncnn
from ezvtb.models.sr.srvgg import SRVGGNetCompact
from ezvtb.models.sr.upconv7 import CHANNELS, UpConv7
from ezvtb.weights.wheel import WeightsError, load_checkpoint

log = logging.getLogger("ezvtb.sr")

ARCHS = ("upconv7", "srvgg")


class SrCheckpointError(WeightsError, ValueError):
    """A state dict is not a supported SR network, or does not fit the detected architecture."""


@dataclass(frozen=True)
class SrConfig:
    """What `detect_sr` read from a state dict."""

    arch: str           # "upconv7" | "srvgg"
    in_channels: int
    out_channels: int
    scale: int
    num_feat: int = 0   # srvgg
    num_conv: int = 0   # srvgg: hidden convolutions between the first and the last


def unwrap_state_dict(obj: object, what: str = "state dict") -> dict[str, Tensor]:
    """The flat name -> tensor dict inside a checkpoint object (see the module docstring)."""
    if isinstance(obj, Mapping):
        for key in ("params_ema", "params", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise SrCheckpointError(f"{what}: expected a state dict (mapping name -> tensor), got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise SrCheckpointError(f"{what}: entry {k!r} is a {type(v).__name__}, expected a tensor under a str key")
        name = k[len("module."):] if k.startswith("module.") else k
        if name in out:
            raise SrCheckpointError(f"{what}: key {k!r} collides with another key once 'module.' is stripped")
        out[name] = v
    return out


def _indices(sd: Mapping[str, Tensor], prefix: str) -> list[int]:
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})


def _shape(sd: Mapping[str, Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in sd:
        raise SrCheckpointError(f"{what}: missing tensor {key!r}")
    return tuple(sd[key].shape)


def detect_sr(sd: Mapping[str, Tensor], what: str = "state dict") -> SrConfig:
    """Architecture and hyper-parameters from key names and shapes; `SrCheckpointError` if unknown."""
    if any(k.startswith("net.") for k in sd):
        idx = _indices(sd, "net")
        if idx != list(range(0, 2 * len(CHANNELS) + 1, 2)):
            raise SrCheckpointError(f"{what}: UpConv7 expects weighted layers net.0, net.2, ..., net.12, got "
                                    f"{['net.%d' % i for i in idx]}")
        first = _shape(sd, "net.0.weight", what)
        last = _shape(sd, f"net.{idx[-1]}.weight", what)
        if len(first) != 4 or len(last) != 4 or last[0] != CHANNELS[-1] or last[2:] != (4, 4):
            raise SrCheckpointError(f"{what}: not an UpConv7 (net.0.weight {first}, net.{idx[-1]}.weight {last})")
        return SrConfig("upconv7", int(first[1]), int(last[1]), 2)
    if any(k.startswith("body.") for k in sd):
        idx = _indices(sd, "body")
        first = _shape(sd, "body.0.weight", what)
        if len(first) != 4 or first[2:] != (3, 3):
            raise SrCheckpointError(f"{what}: not an SRVGGNetCompact (body.0.weight {first})")
        nf, cin = int(first[0]), int(first[1])
        if "body.1.weight" not in sd:
            raise SrCheckpointError(f"{what}: SRVGGNetCompact without PReLU slopes (body.1.weight): only the PReLU "
                                    "variant (realesr-animevideov3, realesr-general-x4v3) is supported")
        convs = [i for i in idx if f"body.{i}.weight" in sd and sd[f"body.{i}.weight"].ndim == 4]
        if convs != list(range(0, 2 * len(convs) - 1, 2)) or len(convs) < 2:
            raise SrCheckpointError(f"{what}: SRVGGNetCompact convolutions must be body.0, body.2, ..., got "
                                    f"{['body.%d' % i for i in convs]}")
        last_out = _shape(sd, f"body.{convs[-1]}.weight", what)[0]
        k = math.isqrt(last_out // cin) if last_out % cin == 0 else 0
        if k < 1 or k * k * cin != last_out:
            raise SrCheckpointError(f"{what}: last convolution has {last_out} outputs, not in_channels*k^2 "
                                    f"for in_channels={cin}")
        return SrConfig("srvgg", cin, cin, k, num_feat=nf, num_conv=len(convs) - 2)
    raise SrCheckpointError(f"{what}: neither a waifu2x UpConv7 (net.N.*) nor an SRVGGNetCompact (body.N.*) "
                            f"state dict (first keys: {list(sd)[:5]})")


def build_sr(cfg: SrConfig) -> nn.Module:
    """An untrained module for `cfg`."""
    if cfg.arch == "upconv7":
        return UpConv7(cfg.in_channels, cfg.out_channels)
    if cfg.arch == "srvgg":
        return SRVGGNetCompact(cfg.in_channels, cfg.out_channels, cfg.num_feat, cfg.num_conv, cfg.scale)
    raise ValueError(f"arch: expected one of {list(ARCHS)}, got {cfg.arch!r}")


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, Tensor], what: str) -> None:
    """Load strictly, listing every missing, unexpected and mis-shaped key in one error."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        raise SrCheckpointError(f"{what}: does not fit {type(module).__name__}: missing {missing[:8]}, "
                                f"unexpected {unexpected[:8]}, mis-shaped {bad[:8]}")
    module.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)


def read_state_dict(source: str | os.PathLike | tuple) -> tuple[dict[str, Tensor], str]:
    """(state dict, description) from ``(param, bin)``, an ncnn ``.param`` (``.bin`` beside it), or a
    ``.pth``/``.pt``/``.safetensors`` checkpoint (loaded with ``weights_only=True``)."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ValueError(f"source: expected (param_path, bin_path), got a tuple of {len(source)}")
        param, binf = (os.fspath(p) for p in source)
    elif isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".param"):
        param = os.fspath(source)
        binf = str(Path(param).with_suffix(".bin"))
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return unwrap_state_dict(load_checkpoint(path), f"checkpoint {path!r}"), f"checkpoint {path!r}"
    else:
        raise ValueError(f"source: expected a checkpoint path or (param, bin) paths, got {type(source).__name__}")
    _, sd = state_dict_from_ncnn(load_ncnn(param, binf))
    return unwrap_state_dict(sd, f"ncnn model {param!r}"), f"ncnn model {param!r}"


def load_sr(source: str | os.PathLike | tuple | Mapping[str, Tensor],
            dtype: torch.dtype = torch.float32) -> tuple[nn.Module, SrConfig]:
    """(module in eval mode with `dtype` parameters, detected config) from a state dict or a file."""
    if isinstance(source, Mapping):
        sd, what = unwrap_state_dict(source), "state dict"
    else:
        sd, what = read_state_dict(source)
    cfg = detect_sr(sd, what)
    module = build_sr(cfg)
    load_state_dict_checked(module, sd, what)
    log.debug("loaded %s: %s", what, cfg)
    return module.to(dtype).eval(), cfg
