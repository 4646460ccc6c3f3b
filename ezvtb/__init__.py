"""ezvtb: realtime THA3 character animation (ONNX Runtime / TensorRT).

    from ezvtb import get_core
    core = get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False)
    core.setImage(cv2.imread("character.png", cv2.IMREAD_UNCHANGED))
    frames = core.inference(pose)   # list of np.uint8 (512, 512, 4) BGRA, reused next call
"""
from __future__ import annotations

import logging

logging.getLogger("ezvtb").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = ["Core", "CoreOptions", "get_core", "prepare_image", "__version__"]

# The public names load on first use, so that `ezvtb --help` and light subpackages do not pay for the core.
_LAZY = {"Core": "ezvtb.core", "CoreOptions": "ezvtb.options", "get_core": "ezvtb.factory",
         "prepare_image": "ezvtb.image"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ezvtb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
