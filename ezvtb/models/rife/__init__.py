"""RIFE frame interpolation: RIFE HDv3 (v3.x) and Practical-RIFE v4.25.lite.

`spec` (torch-free) declares the exported graphs. The PyTorch modules live in `hdv3`
(`IFNetHDv3`), `v4_25_lite` (`IFNetV4Lite`), `blocks` (shared layers and the fp32 warp) and
`loader` (`load_rife`, `detect_rife`: version and hyper-parameters from the state dict's keys and
shapes). Importing this package does not import torch; the names below are loaded lazily.
"""
from __future__ import annotations

_LAZY = {
    "IFNetHDv3": "hdv3",
    "IFNetV4Lite": "v4_25_lite",
    "RifeConfig": "loader",
    "RifeCheckpointError": "loader",
    "build_rife": "loader",
    "detect_rife": "loader",
    "load_rife": "loader",
    "normalize_state_dict": "loader",
    "Interpolator": "wrapper",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
