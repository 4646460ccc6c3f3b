"""Backend-neutral description of an exported graph and the `Session` contract.

Every stage (THA, RIFE, SR, ...) declares its graphs once as `GraphSpec`s next to the model
definition; export, runtime and tests read them from there. A `Session` runs one graph on one
backend (ONNX Runtime on CPU/CUDA/TensorRT-EP/DirectML, or native TensorRT), so no stage ever
has a backend-specific copy.

This module must not import torch.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One named, statically shaped graph input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "uint8", "float32", "float16"

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.np_dtype.itemsize

    def with_dtype(self, dtype: str) -> "TensorSpec":
        return TensorSpec(self.name, self.shape, dtype)

    def check(self, value: np.ndarray, what: str = "input") -> None:
        """Raise ValueError naming this tensor if `value` has the wrong shape or dtype."""
        if tuple(value.shape) != self.shape or value.dtype != self.np_dtype:
            raise ValueError(
                f"{what} {self.name!r}: expected {self.dtype}{list(self.shape)}, "
                f"got {value.dtype}{list(value.shape)}"
            )


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one exported graph, in order."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return _find(self.inputs, name, self.name, "input")

    def output(self, name: str) -> TensorSpec:
        return _find(self.outputs, name, self.name, "output")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def as_float16(self) -> "GraphSpec":
        """The same graph with float32 tensors stored as float16, except pose-like inputs.

        Tensors whose name ends in ``_pose`` stay float32 (the cast happens inside the graph);
        uint8 image tensors are unchanged.
        """

        def conv(t: TensorSpec) -> TensorSpec:
            if t.dtype == "float32" and not t.name.endswith("_pose"):
                return t.with_dtype("float16")
            return t

        return GraphSpec(self.name, tuple(map(conv, self.inputs)), tuple(map(conv, self.outputs)))


def _find(tensors: tuple[TensorSpec, ...], name: str, graph: str, kind: str) -> TensorSpec:
    for t in tensors:
        if t.name == name:
            return t
    raise KeyError(f"graph {graph!r} has no {kind} named {name!r}")


class Session(abc.ABC):
    """Runs one exported graph on one backend.

    Contract:
      * `spec` declares the inputs and outputs (names, static shapes, dtypes).
      * `run(feeds)` takes every declared input by name and writes every output into buffers
        that the session allocated once, at construction. It returns a mapping name -> buffer.
        The returned buffers are owned by the session and are overwritten by the next `run`:
        copy what must outlive it. No per-run allocation happens on the hot path.
      * Feeds may be numpy arrays (host) or, on device backends, the same backend's device
        buffers (for example another session's outputs), so chained stages do not cross to the
        host between graphs.
      * Sessions are context managers; `close()` releases the backend's resources.
    """

    backend: str = "?"

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run the graph on `feeds`; return the session-owned output buffers."""

    @abc.abstractmethod
    def output(self, name: str) -> Any:
        """The session-owned buffer that receives output `name`."""

    # -- buffers ----------------------------------------------------------------------------
    # Stages move data only through these, so they never branch on the backend. The defaults
    # are the host (numpy) versions; device sessions (`on_device`) override them with the
    # `ezvtb.engines.memory` operations of their memory. A value may always be a host array.

    @property
    def on_device(self) -> bool:
        """True when this session's outputs are device buffers (`DeviceBuffer`)."""
        return False

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """A new zeroed buffer in this session's memory, owned by the caller."""
        return np.zeros(shape, dtype)

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host array suited to `to_host` downloads (page-locked on CUDA), owned by the caller."""
        return np.zeros(shape, dtype)

    def copy_into(self, dst: Any, src: Any) -> None:
        """dst <- src (same shape/dtype); src is a host array or a buffer of this session's memory."""
        if not isinstance(src, np.ndarray):
            src = _download(src)
        np.copyto(dst, src)

    def copy_buffer(self, value: Any) -> Any:
        """A copy of `value` that survives the next `run` (same memory), owned by the caller."""
        return value.copy() if isinstance(value, np.ndarray) else _download(value)

    def view(self, value: Any, index: int) -> Any:
        """``value[index]`` along the first axis, without a copy."""
        return value[index]

    def crop_into(self, dst: Any, src: Any, top: int, left: int) -> None:
        """dst (h, w, C) <- src[top:top+h, left:left+w] of an (H, W, C) frame."""
        if not isinstance(src, np.ndarray):
            src = _download(src)
        h, w = dst.shape[:2]
        np.copyto(dst, src[top:top + h, left:left + w])

    def to_host(self, value: Any, out: np.ndarray | None = None) -> np.ndarray:
        """`value` as a host array: written into `out` when given, else `value` itself on host
        sessions (no copy) or a new array."""
        if not isinstance(value, np.ndarray):
            return _download(value, out)
        if out is None or out is value:
            return value
        np.copyto(out, value)
        return out

    def close(self) -> None:  # pragma: no cover - trivial default
        pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_feeds(self, feeds: Mapping[str, Any]) -> None:
        """Validate names, shapes and dtypes of host feeds against the spec."""
        missing = [n for n in self.spec.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.spec.input_names]
        if missing or extra:
            raise ValueError(
                f"graph {self.spec.name!r}: missing inputs {missing}, unknown inputs {extra}; "
                f"expected {list(self.spec.input_names)}"
            )
        for t in self.spec.inputs:
            v = feeds[t.name]
            if isinstance(v, np.ndarray):
                t.check(v, f"graph {self.spec.name!r} input")
            elif hasattr(v, "shape") and hasattr(v, "dtype") and not callable(v.shape):
                if tuple(v.shape) != t.shape or np.dtype(v.dtype) != t.np_dtype:
                    raise ValueError(f"graph {self.spec.name!r} input {t.name!r}: expected "
                                     f"{t.dtype}{list(t.shape)}, got {np.dtype(v.dtype)}{list(v.shape)}")


def _download(value: Any, out: np.ndarray | None = None) -> np.ndarray:
    """Host copy of a device buffer through its own memory (a buffer that reached a host session)."""
    memory = getattr(value, "memory", None)
    if memory is None:
        raise TypeError(f"expected a numpy array or a DeviceBuffer, got {type(value).__name__}")
    return memory.to_host(value, out)
