"""Device buffers and the copies between them, written once over raw addresses.

A `DeviceBuffer` is a statically shaped tensor at an address in one memory space (`Memory`):
CUDA device memory (`ezvtb.engines.cuda.CudaMemory`, through cuda-python) or plain host memory
addressed the same way (`HostPtrMemory`). Every higher-level operation a stage needs (copy a
buffer, keep a copy, download into a preallocated host array, take item i along the first axis,
crop an HWC region) is implemented here on three primitives (allocate, linear copy, pitched 2-D
copy), so the same code runs on CPU (where `HostPtrMemory`'s primitives are `ctypes.memmove`)
and on a GPU (where they are cudaMemcpy calls). The CPU variant is what the test suite uses to
exercise the device path of ONNX Runtime's IO binding without a GPU.

Ownership: a buffer's `owner` keeps its allocation alive (an OrtValue, a cudaMalloc block, a
numpy array); views hold their parent. Nothing here is thread-safe; callers serialise.

This module imports neither torch nor cuda-python.
"""
from __future__ import annotations

import abc
import ctypes
from typing import Any

import numpy as np

# Copy directions, as cudaMemcpyKind names them.
H2D, D2H, D2D = "h2d", "d2h", "d2d"


class DeviceBuffer:
    """A C-contiguous tensor of `shape`/`dtype` at address `ptr` in `memory`.

    `owner` is whatever keeps the memory alive (allocation, OrtValue, parent buffer of a view).
    """

    __slots__ = ("ptr", "shape", "dtype", "memory", "owner")

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: Any, memory: "Memory", owner: Any) -> None:
        self.ptr = int(ptr)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.memory = memory
        self.owner = owner

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def device(self) -> str:
        return self.memory.name

    def __repr__(self) -> str:
        return f"DeviceBuffer({self.memory.name}, {self.dtype}{list(self.shape)}, 0x{self.ptr:x})"


class Memory(abc.ABC):
    """One memory space. Subclasses supply `_alloc`, `_copy` and `_copy2d`.

    `name` identifies the space ("cuda:0", "cpu"); buffers of the same name can be copied
    into each other and fed to each other's sessions.
    """

    name: str = "?"

    # -- primitives -------------------------------------------------------------------------
    @abc.abstractmethod
    def _alloc(self, nbytes: int) -> tuple[int, Any]:
        """Allocate `nbytes`; return (address, owner that frees it when collected)."""

    @abc.abstractmethod
    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        """Copy `nbytes` from address `src` to `dst`; complete when it returns."""

    @abc.abstractmethod
    def _copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str) -> None:
        """Copy `height` rows of `width` bytes, rows `spitch`/`dpitch` bytes apart; complete on return."""

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host array suited to copies from this memory (page-locked on CUDA). Zero-filled."""
        return np.zeros(shape, dtype)

    def synchronize(self) -> None:
        """Wait for outstanding work in this memory space (no-op where copies are synchronous)."""

    # -- operations -------------------------------------------------------------------------
    def empty(self, shape: tuple[int, ...], dtype: Any) -> DeviceBuffer:
        """A new, uninitialised buffer."""
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr, owner = self._alloc(max(n, 1))
        return DeviceBuffer(ptr, shape, dtype, self, owner)

    def owns(self, buf: Any) -> bool:
        return isinstance(buf, DeviceBuffer) and buf.memory.name == self.name

    def _check_same(self, what: str, a: DeviceBuffer, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if tuple(a.shape) != tuple(shape) or a.dtype != dtype:
            raise ValueError(f"{what}: expected {np.dtype(dtype)}{list(shape)}, got {a.dtype}{list(a.shape)}")

    def _check_buffer(self, what: str, buf: Any) -> DeviceBuffer:
        if not isinstance(buf, DeviceBuffer):
            raise TypeError(f"{what}: expected a DeviceBuffer in {self.name}, got {type(buf).__name__}")
        if buf.memory.name != self.name:
            raise ValueError(f"{what}: buffer lives in {buf.memory.name}, expected {self.name}")
        return buf

    def copy_into(self, dst: DeviceBuffer, src: Any) -> None:
        """dst <- src, where src is a host array or a buffer of this memory (same shape and dtype)."""
        self._check_buffer("dst", dst)
        if isinstance(src, np.ndarray):
            self._check_same("src", src, dst.shape, dst.dtype)  # type: ignore[arg-type]
            src = np.ascontiguousarray(src)
            self._copy(dst.ptr, src.ctypes.data, dst.nbytes, H2D)
            return
        self._check_buffer("src", src)
        self._check_same("src", src, dst.shape, dst.dtype)
        if src.ptr != dst.ptr:
            self._copy(dst.ptr, src.ptr, dst.nbytes, D2D)

    def copy(self, src: Any) -> DeviceBuffer:
        """A new buffer of this memory holding a copy of `src` (host array or buffer)."""
        out = self.empty(tuple(src.shape), src.dtype)
        self.copy_into(out, src)
        return out

    def to_host(self, src: DeviceBuffer, out: np.ndarray | None = None) -> np.ndarray:
        """Download `src` into `out` (C-contiguous, same shape/dtype; allocated when None)."""
        self._check_buffer("src", src)
        if out is None:
            out = np.empty(src.shape, src.dtype)
        elif not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out: expected a writeable C-contiguous numpy array")
        self._check_same("out", out, src.shape, src.dtype)  # type: ignore[arg-type]
        self._copy(out.ctypes.data, src.ptr, src.nbytes, D2H)
        return out

    def view(self, buf: DeviceBuffer, index: int) -> DeviceBuffer:
        """`buf[index]` along the first axis, without a copy (the view keeps `buf` alive)."""
        self._check_buffer("buf", buf)
        if not buf.shape or not 0 <= int(index) < buf.shape[0]:
            raise IndexError(f"index: expected 0..{buf.shape[0] - 1 if buf.shape else -1}, got {index}")
        item = buf.nbytes // buf.shape[0]
        return DeviceBuffer(buf.ptr + int(index) * item, buf.shape[1:], buf.dtype, self, buf)

    def crop_into(self, dst: DeviceBuffer, src: Any, top: int, left: int) -> None:
        """dst (h, w, C) <- src[top:top+h, left:left+w] for an (H, W, C) host array or buffer."""
        self._check_buffer("dst", dst)
        if len(dst.shape) != 3 or len(src.shape) != 3 or src.shape[2] != dst.shape[2] or src.dtype != dst.dtype:
            raise ValueError(f"crop: expected (H, W, C) and (h, w, C) {dst.dtype} tensors, got "
                             f"{src.dtype}{list(src.shape)} -> {dst.dtype}{list(dst.shape)}")
        h, w, c = dst.shape
        if not (0 <= top and top + h <= src.shape[0] and 0 <= left and left + w <= src.shape[1]):
            raise ValueError(f"crop: region ({top}, {left}) + {h}x{w} outside a {src.shape[0]}x{src.shape[1]} frame")
        px = c * dst.dtype.itemsize
        spitch = src.shape[1] * px
        if isinstance(src, np.ndarray):
            src = np.ascontiguousarray(src)
            base, kind = src.ctypes.data, H2D
        else:
            self._check_buffer("src", src)
            base, kind = src.ptr, D2D
        self._copy2d(dst.ptr, w * px, base + top * spitch + left * px, spitch, w * px, h, kind)


class HostPtrMemory(Memory):
    """Host memory handled through addresses, like device memory (copies by `ctypes.memmove`).

    Used for ONNX Runtime CPU OrtValues bound by address, so the device code path of the
    sessions and stages runs, and is tested, on machines without a GPU.
    """

    name = "cpu"

    def _alloc(self, nbytes: int) -> tuple[int, Any]:
        block = np.empty(nbytes, np.uint8)
        return block.ctypes.data, block

    def _copy(self, dst: int, src: int, nbytes: int, kind: str) -> None:
        ctypes.memmove(dst, src, nbytes)

    def _copy2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str) -> None:
        for r in range(height):
            ctypes.memmove(dst + r * dpitch, src + r * spitch, width)


HOST_PTR = HostPtrMemory()
