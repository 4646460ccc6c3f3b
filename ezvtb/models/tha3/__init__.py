"""THA3 (Talking Head Anime 3): five sub-networks, separable and standard variants.

`spec` (torch-free) declares the five stage graphs; the PyTorch modules live in `networks`
(`build_tha3_network`, `load_tha3_network`, `detect_tha3_network`), `blocks` and `poser`
(`ThaPoser`, the pure-torch reference pipeline). They load the official state dicts with
``strict=True``. Importing this package does not import torch; the names below are loaded lazily.
"""
from __future__ import annotations

_LAZY = {
    "build_tha3_network": "networks",
    "load_tha3_network": "networks",
    "detect_tha3_network": "networks",
    "CheckpointMismatchError": "networks",
    "ThaPoser": "poser",
    "image_to_tensor": "poser",
    "tensor_to_image": "poser",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
