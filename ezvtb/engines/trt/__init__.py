"""Native TensorRT backend (`TrtSession`). Needs the `tensorrt` and `cuda-python` packages and a GPU.

`engine_cache` (key and file handling) imports neither and is usable everywhere.
"""
from __future__ import annotations


def available() -> tuple[bool, str]:
    """(True, "") when native TensorRT can run here, else (False, the reason). Never raises."""
    from ezvtb.engines.errors import BackendUnavailableError

    try:
        from ezvtb.engines.trt.session import TrtSession  # noqa: F401 - imports tensorrt
    except BackendUnavailableError as e:
        return False, str(e)
    from ezvtb.engines.cuda import device_count

    n, why = device_count()
    return (True, "") if n else (False, f"native TensorRT: no usable CUDA device ({why})")


def __getattr__(name: str):
    if name == "TrtSession":
        from ezvtb.engines.trt.session import TrtSession

        return TrtSession
    raise AttributeError(name)
