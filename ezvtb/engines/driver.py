"""The NVIDIA driver of this machine and the GPU extra that fits it, without cuda-python.

`driver_facts()` reads the driver version, the newest CUDA it supports and each GPU's name and
compute capability from NVML (``libnvidia-ml``, loaded with ctypes: it ships with every NVIDIA
driver), else from ``nvidia-smi``; None on a machine without an NVIDIA driver.

`GPU_EXTRAS` is the one table of ezvtb's GPU extras (pyproject.toml's optional dependencies): the
CUDA major each is built for, the driver it needs and the GPUs it runs on. `recommend_extra`
picks the one that fits a driver.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuExtra:
    """One CUDA major's pair of extras (CUDA EP; CUDA EP + TensorRT) and what it needs."""

    name: str  # the CUDA-EP extra
    tensorrt_name: str  # the same with TensorRT (EP and native)
    cuda_major: int
    driver_branch: int  # the oldest NVIDIA driver branch that runs this CUDA major (R525, R580)
    min_compute: tuple[int, int]  # the oldest GPU architecture this CUDA major still builds for
    packages: str = ""


GPU_EXTRAS: tuple[GpuExtra, ...] = (
    GpuExtra("cuda", "tensorrt", 13, 580, (7, 5),
             "onnxruntime-gpu>=1.27 (built with CUDA 13), cuda-bindings 13, tensorrt-cu13 10.x"),
    GpuExtra("cuda12", "tensorrt-cuda12", 12, 525, (5, 0),
             "onnxruntime-gpu 1.21-1.26 (built with CUDA 12), cuda-python 12, tensorrt-cu12 10.x"),
)


def extra_for_major(major: int) -> GpuExtra | None:
    return next((e for e in GPU_EXTRAS if e.cuda_major == major), None)


@dataclass
class DriverFacts:
    """What the NVIDIA driver says: version text, newest CUDA (major, minor), GPUs, and the source."""

    version: str
    cuda: tuple[int, int]
    gpus: list[tuple[str, tuple[int, int] | None]] = field(default_factory=list)  # (name, compute capability)
    source: str = ""


def _nvml_library() -> ctypes.CDLL:
    name = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"
    return ctypes.CDLL(name)


def _from_nvml() -> DriverFacts | None:
    try:
        nvml = _nvml_library()
    except OSError:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        buf = ctypes.create_string_buffer(96)
        if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96)) != 0:
            return None
        cuda = ctypes.c_int(0)
        if nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda)) != 0:
            return None
        gpus: list[tuple[str, tuple[int, int] | None]] = []
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0:
            for i in range(count.value):
                handle = ctypes.c_void_p()
                if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
                    continue
                name = ctypes.create_string_buffer(96)
                nvml.nvmlDeviceGetName(handle, name, ctypes.c_uint(96))
                major, minor = ctypes.c_int(0), ctypes.c_int(0)
                cc = (major.value, minor.value) if nvml.nvmlDeviceGetCudaComputeCapability(
                    handle, ctypes.byref(major), ctypes.byref(minor)) == 0 else None
                gpus.append((name.value.decode(errors="replace"), cc))
        v = cuda.value
        return DriverFacts(buf.value.decode(errors="replace"), (v // 1000, v % 1000 // 10), gpus, "NVML")
    finally:
        nvml.nvmlShutdown()


def _from_nvidia_smi() -> DriverFacts | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        head = subprocess.run([exe], capture_output=True, text=True, timeout=30)
        rows = subprocess.run([exe, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", head.stdout)
    if head.returncode != 0 or m is None:
        return None
    gpus: list[tuple[str, tuple[int, int] | None]] = []
    version = ""
    for line in rows.stdout.splitlines() if rows.returncode == 0 else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        cc = re.fullmatch(r"(\d+)\.(\d+)", parts[2])
        gpus.append((parts[0], (int(cc.group(1)), int(cc.group(2))) if cc else None))
        version = version or parts[1]
    if not version:
        v = re.search(r"Driver Version:\s*([\d.]+)", head.stdout)
        version = v.group(1) if v else "?"
    return DriverFacts(version, (int(m.group(1)), int(m.group(2))), gpus, "nvidia-smi")


def driver_facts() -> DriverFacts | None:
    """The NVIDIA driver's facts from NVML, else nvidia-smi; None where neither answers."""
    try:
        facts = _from_nvml()
    except (OSError, AttributeError):  # an NVML too old for one of the calls
        facts = None
    return facts or _from_nvidia_smi()


def recommend_extra(facts: DriverFacts | None) -> tuple[GpuExtra | None, str]:
    """(the GPU extra that fits this driver and its GPUs, or None; why, in one sentence)."""
    if facts is None:
        return None, ("no NVIDIA driver found (neither NVML nor nvidia-smi answers): no GPU extra applies here; "
                      "use ezvtb[cpu] (or ezvtb[directml] on Windows)")
    drv = f"driver {facts.version} supports CUDA up to {facts.cuda[0]}.{facts.cuda[1]}"
    skipped = []
    for extra in GPU_EXTRAS:  # newest CUDA major first
        if facts.cuda[0] < extra.cuda_major:
            skipped.append(f"ezvtb[{extra.name}] needs R{extra.driver_branch}+ (CUDA {extra.cuda_major})")
            continue
        too_old = [f"{n} (sm {cc[0]}.{cc[1]})" for n, cc in facts.gpus if cc is not None and cc < extra.min_compute]
        if too_old:
            skipped.append(f"CUDA {extra.cuda_major} builds nothing for {', '.join(too_old)} "
                           f"(sm {extra.min_compute[0]}.{extra.min_compute[1]}+)")
            continue
        others = [e for e in GPU_EXTRAS[GPU_EXTRAS.index(extra) + 1:] if e.cuda_major <= facts.cuda[0]]
        also = f"; ezvtb[{others[0].name}] (CUDA {others[0].cuda_major}) also runs" if others else ""
        why = f" ({'; '.join(skipped)})" if skipped else ""
        return extra, (f"{drv}: ezvtb[{extra.name}] / ezvtb[{extra.tensorrt_name}] (CUDA {extra.cuda_major}) "
                       f"fit{why}{also}")
    return None, f"{drv}: no GPU extra fits ({'; '.join(skipped)})"
