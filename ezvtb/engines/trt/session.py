"""Native TensorRT session. Built by the GPU issue; importing it without TensorRT fails clearly."""
from __future__ import annotations

from ezvtb.engines.errors import BackendUnavailableError

try:  # pragma: no cover - no TensorRT on CPU machines
    import tensorrt  # noqa: F401
except Exception as e:  # noqa: BLE001
    raise BackendUnavailableError(
        "native TensorRT backend needs the `tensorrt` Python package (ezvtb[tensorrt]); "
        f"importing it failed: {e}"
    ) from e

raise BackendUnavailableError("native TensorRT sessions are not implemented yet")  # pragma: no cover
