"""Super-resolution: waifu2x UpConv7 and Real-ESRGAN SRVGGNetCompact (realesr-animevideov3).

`spec` (torch-free) declares the exported graphs; `ncnn` (torch-free) reads ncnn ``.param``/``.bin``
files into state dicts with the real ``.pth`` key layouts. The PyTorch modules live in `upconv7`
(`UpConv7`), `srvgg` (`SRVGGNetCompact`), `loader` (`load_sr`, `detect_sr`: architecture and
hyper-parameters from a state dict's keys and shapes) and `wrapper` (`Upscaler`, the uint8 BGRA
module that is exported). Importing this package does not import torch.
"""
from __future__ import annotations

_LAZY = {
    "UpConv7": "upconv7",
    "SRVGGNetCompact": "srvgg",
    "SrConfig": "loader",
    "SrCheckpointError": "loader",
    "build_sr": "loader",
    "detect_sr": "loader",
    "load_sr": "loader",
    "Upscaler": "wrapper",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
