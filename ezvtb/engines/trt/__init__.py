"""Native TensorRT backend (`TrtSession`). Needs the `tensorrt` and `cuda-python` packages."""
from __future__ import annotations


def __getattr__(name: str):
    if name == "TrtSession":
        from ezvtb.engines.trt.session import TrtSession

        return TrtSession
    raise AttributeError(name)
