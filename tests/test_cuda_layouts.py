"""`ezvtb.engines.cuda` with each cuda-python module layout, on a machine without a GPU.

cuda-bindings 13 has only ``cuda.bindings.runtime``; cuda-python 12.6-12.9 has it and keeps ``cuda.cudart``
as a deprecated alias; cuda-python before 12.6 has only ``cuda.cudart`` (read from the wheels: 12.9.6 ships
``cuda/cudart.*.so`` and ``cuda/bindings/runtime.*.so``, 13.5.0 only the latter). The runtime module is
replaced here by a stand-in with the same call convention (``(cudaError_t, *values)`` tuples, the same
argument order) whose "device" memory is host memory it allocated itself: it refuses a copy whose
direction (cudaMemcpyKind) does not match where the addresses are, so a swapped argument or a wrong
direction fails the test. Real cuda-bindings on a GPU machine: tests/test_gpu.py.
"""
from __future__ import annotations

import ctypes
import enum
import sys
import types

import numpy as np
import pytest

from ezvtb.engines import cuda
from ezvtb.engines.errors import BackendUnavailableError


class FakeRuntime(types.ModuleType):
    """The subset of cudart that ezvtb calls, over host memory, with direction checks."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorInsufficientDriver = 35
        cudaErrorNoDevice = 100

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToHost = 0
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2
        cudaMemcpyDeviceToDevice = 3

    cudaStreamNonBlocking = 1

    def __init__(self, name: str, devices: int = 1) -> None:
        super().__init__(name)
        self.devices = devices
        self.device_blocks: dict[int, ctypes.Array] = {}
        self.host_blocks: dict[int, ctypes.Array] = {}
        self.calls: list[str] = []
        self.streams: set[int] = set()

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def _on_device(self, ptr: int, n: int) -> bool:
        return any(a <= ptr and ptr + n <= a + len(b) for a, b in self.device_blocks.items())

    def cudaGetErrorName(self, err):
        return self._ok(self.cudaError_t(err).name.encode())

    def cudaGetErrorString(self, err):
        return self._ok(b"stand-in error text")

    def cudaGetDeviceCount(self):
        if not self.devices:
            return (self.cudaError_t.cudaErrorNoDevice, None)
        return self._ok(self.devices)

    def cudaSetDevice(self, device):
        self.calls.append(f"cudaSetDevice({device})")
        return (self.cudaError_t.cudaSuccess if 0 <= device < self.devices else self.cudaError_t.cudaErrorInvalidValue,)

    def cudaDriverGetVersion(self):
        return self._ok(13000)

    def _alloc(self, blocks, n):
        b = ctypes.create_string_buffer(n)
        blocks[ctypes.addressof(b)] = b
        return self._ok(ctypes.addressof(b))

    def cudaMalloc(self, n):
        return self._alloc(self.device_blocks, n)

    def cudaFree(self, ptr):
        self.device_blocks.pop(int(ptr))
        return self._ok()

    def cudaMallocHost(self, n):
        return self._alloc(self.host_blocks, n)

    def cudaFreeHost(self, ptr):
        self.host_blocks.pop(int(ptr))
        return self._ok()

    def cudaStreamCreateWithFlags(self, flags):
        assert flags == self.cudaStreamNonBlocking
        handle = 0x5000 + len(self.streams)
        self.streams.add(handle)
        return self._ok(handle)

    def cudaStreamSynchronize(self, stream):
        return (self.cudaError_t.cudaSuccess if stream in self.streams else self.cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamDestroy(self, stream):
        self.streams.discard(stream)
        return self._ok()

    def _check_kind(self, dst, src, n, kind):
        want = {self.cudaMemcpyKind.cudaMemcpyHostToDevice: (True, False),
                self.cudaMemcpyKind.cudaMemcpyDeviceToHost: (False, True),
                self.cudaMemcpyKind.cudaMemcpyDeviceToDevice: (True, True)}[kind]
        got = (self._on_device(dst, n), self._on_device(src, n))
        assert got == want, f"{self.cudaMemcpyKind(kind).name} with dst/src on device = {got}"

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        assert stream in self.streams
        self._check_kind(dst, src, n, kind)
        ctypes.memmove(dst, src, n)
        self.calls.append(f"cudaMemcpyAsync({self.cudaMemcpyKind(kind).name})")
        return self._ok()

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        assert stream in self.streams and width <= min(dpitch, spitch)
        self._check_kind(dst, src, (height - 1) * dpitch + width, kind)
        for r in range(height):
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)
        self.calls.append(f"cudaMemcpy2DAsync({self.cudaMemcpyKind(kind).name})")
        return self._ok()


def _package(name: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__path__ = []  # a package: submodules resolve through sys.modules
    return m


@pytest.fixture
def layout(monkeypatch):
    """``layout(kind, devices=1)`` installs the cuda-python modules of one generation; returns the runtime."""
    for name in [n for n in sys.modules if n == "cuda" or n.startswith("cuda.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(cuda, "_rt", None)
    monkeypatch.setattr(cuda, "_memories", {})

    def install(kind: str, devices: int = 1) -> FakeRuntime:
        top = _package("cuda")
        monkeypatch.setitem(sys.modules, "cuda", top)
        if kind in ("bindings-13", "python-12.9"):
            rt = FakeRuntime("cuda.bindings.runtime", devices)
            monkeypatch.setitem(sys.modules, "cuda.bindings", _package("cuda.bindings"))
            monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
            if kind == "python-12.9":  # the deprecated alias exists too and must not be the one used
                alias = FakeRuntime("cuda.cudart", devices)
                monkeypatch.setitem(sys.modules, "cuda.cudart", alias)
            return rt
        if kind == "python-12.4":
            rt = FakeRuntime("cuda.cudart", devices)
            monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
            return rt
        assert kind == "none"
        return None

    return install


@pytest.mark.parametrize("kind, module", [("bindings-13", "cuda.bindings.runtime"),
                                          ("python-12.9", "cuda.bindings.runtime"),
                                          ("python-12.4", "cuda.cudart")])
def test_each_layout_is_found_and_device_memory_works(layout, kind, module):
    rt = layout(kind)
    assert cuda.runtime() is rt and rt.__name__ == module
    assert cuda.device_count() == (1, "")
    mem = cuda.cuda_memory(0)
    assert mem is cuda.cuda_memory(0) and mem.name == "cuda:0"
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 8, 10, 4), dtype=np.uint8)
    buf = mem.copy(frames)  # H2D
    assert rt._on_device(buf.ptr, buf.nbytes)
    np.testing.assert_array_equal(mem.to_host(buf), frames)  # D2H
    kept = mem.copy(mem.view(buf, 2))  # D2D
    mem.copy_into(buf, np.zeros_like(frames))
    np.testing.assert_array_equal(mem.to_host(kept), frames[2])
    crop = mem.empty((3, 4, 4), np.uint8)
    mem.crop_into(crop, kept, 5, 6)  # pitched D2D
    np.testing.assert_array_equal(mem.to_host(crop), frames[2, 5:8, 6:10])
    mem.crop_into(crop, frames[1], 1, 2)  # pitched H2D
    host = mem.host_array((3, 4, 4), np.uint8)  # page-locked
    assert host.ctypes.data in rt.host_blocks and not host.any()
    np.testing.assert_array_equal(mem.to_host(crop, host), frames[1, 1:4, 2:6])
    kinds = {c for c in rt.calls if c.startswith("cudaMemcpy")}
    assert kinds == {"cudaMemcpyAsync(cudaMemcpyHostToDevice)", "cudaMemcpyAsync(cudaMemcpyDeviceToHost)",
                     "cudaMemcpyAsync(cudaMemcpyDeviceToDevice)", "cudaMemcpy2DAsync(cudaMemcpyDeviceToDevice)",
                     "cudaMemcpy2DAsync(cudaMemcpyHostToDevice)"}, kinds
    ptr = kept.ptr
    del kept
    assert ptr not in rt.device_blocks, "freed with its buffer"


def test_no_cuda_python_names_both_modules(layout):
    layout("none")
    with pytest.raises(BackendUnavailableError, match=r"cuda\.bindings\.runtime: .*; cuda\.cudart: "):
        cuda.runtime()
    n, why = cuda.device_count()
    assert n == 0 and "pip install cuda-bindings" in why and "ezvtb[cuda12]" in why


def test_no_device_is_reported_not_raised(layout):
    layout("bindings-13", devices=0)
    n, why = cuda.device_count()
    assert n == 0 and why.startswith("cudaGetDeviceCount failed: cudaErrorNoDevice: stand-in error text"), why
    with pytest.raises(BackendUnavailableError, match="device_id=0: cudaGetDeviceCount failed"):
        cuda.CudaMemory(0)
    assert cuda.driver_cuda_version() == (13, 0)


def test_every_runtime_call_exists_in_the_stand_in_and_the_real_module():
    """The names cuda.py calls: all in the stand-in (but device_info's two), and, where a real cuda-python is
    installed, in it (checked with cuda-bindings 13.5.0 and 12.9.6 on PYTHONPATH)."""
    import re
    from pathlib import Path

    used = set(re.findall(r"(?:rt|runtime\(\))\.(cuda\w+)", Path(cuda.__file__).read_text()))
    assert len(used) >= 19, used
    assert used - set(vars(FakeRuntime)) == {"cudaGetDeviceProperties", "cudaRuntimeGetVersion"}
    try:
        real = cuda.runtime()
    except BackendUnavailableError as e:
        pytest.skip(f"no real cuda-python here ({e})")
    assert sorted(n for n in used if not hasattr(real, n)) == []
