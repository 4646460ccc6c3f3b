"""CUDA through cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6): checked calls, device
memory, streams. The same calls exist under both names in cuda-python 12 and cuda-bindings 13.

cuda-python returns errors as values (``(err, result...)``); `call` turns every non-success
into a `CudaError` naming the call and CUDA's own message, so no error is ever ignored. Without
a driver or a GPU the runtime answers with an error value (cudaErrorInsufficientDriver,
cudaErrorNoDevice), which `device_count` reports as 0 devices with the reason.

`CudaMemory(device_id)` is the `Memory` of one GPU (see `ezvtb.engines.memory`): cudaMalloc'd
buffers, copies on its own non-blocking stream, each synchronised before returning (so buffers
are complete whenever a session or stage sees them), page-locked host arrays for downloads.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any

import numpy as np

from ezvtb.engines.errors import BackendUnavailableError
from ezvtb.engines.memory import D2D, D2H, H2D, Memory

log = logging.getLogger("ezvtb.engines.cuda")


class CudaError(RuntimeError):
    """A CUDA runtime call failed."""


_rt: Any = None

# Where each cuda-python generation keeps the runtime bindings, tried in order: cuda-bindings 12.6+ and 13
# (`cuda.bindings.runtime`; 13 has nothing else), cuda-python before 12.6 (`cuda.cudart`, kept by 12.x as a
# deprecated alias that warns).
RUNTIME_MODULES = ("cuda.bindings.runtime", "cuda.cudart")


def runtime() -> Any:
    """The cuda-python runtime module (the first of `RUNTIME_MODULES` that imports)."""
    global _rt
    if _rt is None:
        import importlib

        errors = []
        for name in RUNTIME_MODULES:
            try:
                _rt = importlib.import_module(name)
                break
            except ImportError as e:
                errors.append(f"{name}: {e}")
        else:
            raise BackendUnavailableError(
                "this needs cuda-python (`pip install cuda-bindings`, part of the GPU extras ezvtb[cuda], "
                "ezvtb[cuda12], ezvtb[tensorrt], ezvtb[tensorrt-cuda12]): " + "; ".join(errors))
    return _rt


def call(what: str, result: Any) -> Any:
    """Check a cuda-python result tuple ``(err, *values)``; return the value(s) or raise CudaError."""
    rt = runtime()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != rt.cudaError_t.cudaSuccess:
        try:
            name = rt.cudaGetErrorName(err)[1].decode()
            text = rt.cudaGetErrorString(err)[1].decode()
        except Exception:  # noqa: BLE001 - the message is best effort, the error is not
            name, text = str(err), ""
        raise CudaError(f"{what} failed: {name}: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_count() -> tuple[int, str]:
    """(number of CUDA devices, reason when 0). Never raises for a missing driver or GPU."""
    try:
        rt = runtime()
    except BackendUnavailableError as e:
        return 0, str(e)
    try:
        n = call("cudaGetDeviceCount", rt.cudaGetDeviceCount())
    except CudaError as e:
        return 0, str(e) + _mismatch_hint()
    return int(n), "" if n else "cudaGetDeviceCount reports no CUDA device" + _mismatch_hint()


def _mismatch_hint() -> str:
    """Why there may be no device: installed CUDA majors that disagree or a driver too old (or "")."""
    try:
        why = cuda_major_mismatch(cuda_majors(), driver_cuda_version())
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    return f" ({why})" if why else ""


def device_info(device_id: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory, driver and runtime versions of one GPU."""
    rt = runtime()
    prop = call("cudaGetDeviceProperties", rt.cudaGetDeviceProperties(int(device_id)))
    name = prop.name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    drv = int(call("cudaDriverGetVersion", rt.cudaDriverGetVersion()))
    rtv = int(call("cudaRuntimeGetVersion", rt.cudaRuntimeGetVersion()))
    return {
        "name": name.strip(),
        "compute_capability": f"{prop.major}.{prop.minor}",
        "total_memory_gb": round(int(prop.totalGlobalMem) / 1024**3, 1),
        "driver_api": f"{drv // 1000}.{drv % 1000 // 10}",
        "runtime": f"{rtv // 1000}.{rtv % 1000 // 10}",
    }


# Distributions whose name says the CUDA major they were built for (pip wheels).
_CUDA_NAMED = re.compile(r"^(tensorrt|nvidia-cuda-runtime)(?:-cu(\d+))?(?:-libs)?$")


def cuda_majors() -> dict[str, tuple[int, str]]:
    """The CUDA major each installed GPU component was built for: {component: (major, what says so)}.

    Read from package metadata, without loading any CUDA library: onnxruntime-gpu
    (``onnxruntime.cuda_version``), the tensorrt wheels (``tensorrt-cu12``/``-cu13``), cuda-python
    (its major is the CUDA major it binds) and the nvidia CUDA runtime wheel. Components that are
    not installed (or say nothing) are left out.
    """
    import importlib.metadata as md

    found: dict[str, tuple[int, str]] = {}
    try:
        import onnxruntime as ort

        cv = str(getattr(ort, "cuda_version", "") or "")
        if cv[:1].isdigit():
            found["onnxruntime-gpu"] = (int(cv.split(".")[0]), f"onnxruntime {ort.__version__} built with CUDA {cv}")
    except Exception:  # noqa: BLE001 - not installed or broken: nothing to compare
        pass
    for dist in md.distributions():
        name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        m = _CUDA_NAMED.match(name)
        if m is None:
            continue
        what = "tensorrt" if m.group(1) == "tensorrt" else "nvidia-cuda-runtime wheel"
        major = int(m.group(2)) if m.group(2) else int(dist.version.split(".")[0])  # nvidia-cuda-runtime 13.x
        if m.group(1) == "tensorrt" and not m.group(2):
            continue  # the `tensorrt` meta package names no CUDA major; its -cuNN parts do
        found.setdefault(what, (major, f"{name} {dist.version}"))
    for dist_name in ("cuda-bindings", "cuda-python"):
        try:
            v = md.version(dist_name)
        except md.PackageNotFoundError:
            continue
        found["cuda-python"] = (int(v.split(".")[0]), f"{dist_name} {v}")
        break
    return found


def cuda_major_mismatch(majors: dict[str, tuple[int, str]], driver: tuple[int, int] | None = None) -> str:
    """"" when the components of `cuda_majors` agree (and the driver supports them), else what is wrong.

    driver: the newest CUDA version the installed driver supports (`driver_cuda_version`), if known.
    """
    problems = []
    by_major: dict[int, list[str]] = {}
    for comp, (major, _) in majors.items():
        by_major.setdefault(major, []).append(comp)
    if len(by_major) > 1:
        parts = "; ".join(f"CUDA {m}: " + ", ".join(f"{c} ({majors[c][1]})" for c in comps)
                          for m, comps in sorted(by_major.items()))
        from ezvtb.engines.driver import GPU_EXTRAS

        sets = " or ".join(f"ezvtb[{e.name}] / ezvtb[{e.tensorrt_name}] (CUDA {e.cuda_major}, driver "
                           f"R{e.driver_branch}+)" for e in GPU_EXTRAS)
        problems.append(f"CUDA majors disagree ({parts}). Install one set: {sets}; a CUDA-13 cuda-python "
                        "reports no device on a driver older than R580")
    if driver is not None and driver[0] > 0:
        too_new = sorted(c for c, (m, _) in majors.items() if m > driver[0])
        if too_new:
            from ezvtb.engines.driver import extra_for_major

            fit = extra_for_major(driver[0])
            problems.append(f"the driver supports CUDA up to {driver[0]}.{driver[1]}, older than what "
                            f"{', '.join(too_new)} need: update the driver or install the CUDA-{driver[0]} builds"
                            + (f" (ezvtb[{fit.name}] / ezvtb[{fit.tensorrt_name}])" if fit else ""))
    return "; ".join(problems)


def driver_cuda_version() -> tuple[int, int] | None:
    """(major, minor) of the newest CUDA the installed driver supports; (0, 0) without a driver;
    None without cuda-python."""
    try:
        rt = runtime()
    except BackendUnavailableError:
        return None
    try:
        v = int(call("cudaDriverGetVersion", rt.cudaDriverGetVersion()))
    except CudaError:
        return (0, 0)
    return (v // 1000, v % 1000 // 10)


_KINDS = {H2D: "cudaMemcpyHostToDevice", D2H: "cudaMemcpyDeviceToHost", D2D: "cudaMemcpyDeviceToDevice"}


class _DeviceBlock:
    """cudaMalloc'd memory, freed when collected."""

    __slots__ = ("ptr", "nbytes", "device_id")

    def __init__(self, nbytes: int, device_id: int) -> None:
        rt = runtime()
        call("cudaSetDevice", rt.cudaSetDevice(device_id))
        self.ptr = int(call(f"cudaMalloc({nbytes})", rt.cudaMalloc(nbytes)))
        self.nbytes, self.device_id = nbytes, device_id

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            try:
                runtime().cudaFree(self.ptr)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
            self.ptr = 0


class _PinnedBlock:
    """Page-locked host memory exposed to numpy through the array interface; freed when collected."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        nbytes = max(int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize, 1)
        self.ptr = int(call(f"cudaMallocHost({nbytes})", runtime().cudaMallocHost(nbytes)))

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3}

    def __del__(self) -> None:
        if getattr(self, "ptr", 0):
            try:
                runtime().cudaFreeHost(self.ptr)
            except Exception:  # noqa: BLE001
                pass
            self.ptr = 0


class CudaStream:
    """A non-blocking CUDA stream on one device, destroyed with the object."""

    def __init__(self, device_id: int) -> None:
        rt = runtime()
        call("cudaSetDevice", rt.cudaSetDevice(device_id))
        self.handle = call("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        self.device_id = device_id

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", runtime().cudaStreamSynchronize(self.handle))

    def __del__(self) -> None:
        h = getattr(self, "handle", None)
        if h is not None:
            try:
                runtime().cudaStreamDestroy(h)
            except Exception:  # noqa: BLE001
                pass
            self.handle = None


class CudaMemory(Memory):
    """Device memory of one GPU. Copies run on the memory's own stream and are synchronised."""

    def __init__(self, device_id: int = 0) -> None:
        n, why = device_count()
        if not 0 <= int(device_id) < max(n, 1) or n == 0:
            raise BackendUnavailableError(f"device_id={device_id}: {why or f'only {n} CUDA device(s)'}")
        self.device_id = int(device_id)
        self.name = f"cuda:{self.device_id}"
        self._local = threading.local()
        self._stream = CudaStream(self.device_id)
        self._local.ready = True

    def make_current(self) -> Any:
        """Make this GPU current in the calling thread (once per thread); returns the runtime."""
        rt = runtime()
        if not getattr(self._local, "ready", False):
            call("cudaSetDevice", rt.cudaSetDevice(self.device_id))
            self._local.ready = True
        return rt

    @property
    def stream(self) -> CudaStream:
        return self._stream

    def _alloc(self, nbytes: int) -> tuple[int, Any]:
        self.make_current()
        block = _DeviceBlock(nbytes, self.device_id)
        return block.ptr, block

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        rt = self.make_current()
        call(f"cudaMemcpyAsync({kind}, {nbytes} B)",
             rt.cudaMemcpyAsync(dst, src, nbytes, getattr(rt.cudaMemcpyKind, _KINDS[kind]), self._stream.handle))
        self._stream.synchronize()

    def _copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str) -> None:
        rt = self.make_current()
        call(f"cudaMemcpy2DAsync({kind}, {width}x{height} B)",
             rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, getattr(rt.cudaMemcpyKind, _KINDS[kind]),
                                  self._stream.handle))
        self._stream.synchronize()

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self.make_current()
        a = np.asarray(_PinnedBlock(shape, dtype))
        a[...] = 0
        return a

    def synchronize(self) -> None:
        self._stream.synchronize()


_memories: dict[int, CudaMemory] = {}
_lock = threading.Lock()


def cuda_memory(device_id: int = 0) -> CudaMemory:
    """The shared `CudaMemory` of one GPU (created on first use)."""
    with _lock:
        m = _memories.get(int(device_id))
        if m is None:
            m = _memories[int(device_id)] = CudaMemory(int(device_id))
        return m
