"""What to install for a backend: the ezvtb extra, after uninstalling the ONNX Runtime package in place.

Used by the backend policy (`ezvtb.engines.policy.require_backend`) and by the sessions' own errors; imports
neither, so both can name the fix.
"""
from __future__ import annotations

from importlib import metadata

from ezvtb.engines.driver import GPU_EXTRAS

# The ONNX Runtime packages: each installs the same `onnxruntime` module, so one replaces another's files.
ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml")


def installed_ort_packages() -> list[str]:
    """The ONNX Runtime packages (`ORT_PACKAGES`) installed in this environment."""
    found = []
    for name in ORT_PACKAGES:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def backend_install_hint(backend: str) -> str:
    """What to install for `backend`: the ezvtb extra(s), after uninstalling the ONNX Runtime package in place."""
    if backend in ("cuda", "tensorrt", "trt"):
        extras = " or ".join(f"`pip install 'ezvtb[{e.name if backend == 'cuda' else e.tensorrt_name}]'` for CUDA "
                             f"{e.cuda_major} (NVIDIA driver R{e.driver_branch}+)" for e in GPU_EXTRAS)
        extras += "; `ezvtb doctor` says which fits this driver"
    elif backend == "directml":
        extras = "`pip install 'ezvtb[directml]'` (Windows)"
    else:
        extras = "`pip install 'ezvtb[cpu]'`"
    present = installed_ort_packages()
    first = (f"`pip uninstall -y {' '.join(present)}` first (the ONNX Runtime packages install the same "
             f"`onnxruntime` module and overwrite each other), then " if present else "")
    return f"Install the extra for it: {first}{extras}."


__all__ = ["ORT_PACKAGES", "backend_install_hint", "installed_ort_packages"]
