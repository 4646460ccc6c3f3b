"""Sessions: one small interface (`Session`), one folder per backend.

`create_session` picks the implementation from a backend name:
``auto | cpu | cuda | tensorrt | directml`` run on ONNX Runtime (`OrtSession`); ``trt`` is
native TensorRT (`TrtSession`, needs the tensorrt and cuda-python packages).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ezvtb.engines.errors import BackendUnavailableError
from ezvtb.engines.policy import BACKENDS, check_backend

if TYPE_CHECKING:
    from ezvtb.engines.base import GraphSpec, Session, TensorSpec


def create_session(model_path: str | os.PathLike, spec: GraphSpec, backend: str = "auto",
                   **options: Any) -> Session:
    """Open `model_path` (an ONNX file whose I/O matches `spec`) on `backend`."""
    check_backend(backend)
    if backend == "trt":
        from ezvtb.engines.trt import TrtSession  # imported lazily: needs tensorrt

        return TrtSession(model_path, spec, **options)
    from ezvtb.engines.ort import OrtOptions, OrtSession

    return OrtSession(model_path, spec, backend, OrtOptions(**options))


def __getattr__(name: str) -> Any:
    # `base` imports numpy: loaded on first use, so that importing the policy (the command line's
    # backend lists) stays light.
    if name in ("GraphSpec", "Session", "TensorSpec"):
        from ezvtb.engines import base

        return getattr(base, name)
    raise AttributeError(f"module 'ezvtb.engines' has no attribute {name!r}")


__all__ = ["BACKENDS", "BackendUnavailableError", "GraphSpec", "Session", "TensorSpec", "create_session"]
