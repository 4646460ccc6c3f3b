"""`TrtSession`: one exported ONNX graph as a native TensorRT 10 engine, memory through cuda-python.

Build: ONNX parser -> network (strongly typed for graphs that compute in float16 anywhere, read
from the ONNX file by `ezvtb.engines.trt.precision`: the fp16 RIFE and SR graphs have uint8 inputs
and outputs but float16 weights and casts; the graph's own precisions then hold, e.g. ezvtb's fp16
graphs keep grid construction and GridSample in fp32), builder
config with the workspace limit, TF32 and (weakly typed networks only) FP16 flags, the timing
cache and a progress line (tqdm) while building. The serialised engine is cached by
`ezvtb.engines.trt.engine_cache` (key: ONNX sha256, TensorRT version, GPU name, compute
capability, build flags); a changed key rebuilds, a corrupt file is rebuilt with a warning.

Run: outputs are `DeviceBuffer`s allocated once (`CudaMemory`); inputs are host arrays (copied
into a per-input device buffer) or device buffers of the same GPU (bound by address, e.g.
another session's outputs); `execute_async_v3` on the session's stream, synchronised before
`run` returns. Same `Session` contract as `OrtSession`.

Importing this module without the `tensorrt` package raises `BackendUnavailableError`.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ezvtb.engines.errors import BackendUnavailableError

try:
    import tensorrt as trt
except Exception as e:  # noqa: BLE001 - ImportError, or a broken install (missing libnvinfer)
    raise BackendUnavailableError(
        "native TensorRT backend needs the `tensorrt` Python package (ezvtb[tensorrt], CUDA 13, or "
        f"ezvtb[tensorrt-cuda12]); importing it failed: {e}"
    ) from e

from ezvtb.engines.base import GraphSpec, Session
from ezvtb.engines.cuda import CudaStream, cuda_memory, device_info
from ezvtb.engines.memory import DeviceBuffer
from ezvtb.engines.trt.engine_cache import (
    BuildFlags,
    EngineKey,
    model_sha256,
    load_or_build,
    load_timing_cache,
    save_timing_cache,
    timing_cache_path,
)
from ezvtb.engines.trt.precision import strongly_typed_for

log = logging.getLogger("ezvtb.engines.trt")

GB = 1024**3


class _Logger(trt.ILogger):
    """TensorRT's log -> `logging` ("ezvtb.engines.trt"); keeps the last errors for messages."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: list[str] = []

    def log(self, severity: Any, msg: str) -> None:  # noqa: A003 - TensorRT's name
        S = trt.ILogger.Severity
        if severity in (S.INTERNAL_ERROR, S.ERROR):
            self.errors = (self.errors + [msg])[-5:]
            log.error("TensorRT: %s", msg)
        elif severity == S.WARNING:
            log.warning("TensorRT: %s", msg)
        elif severity == S.INFO:
            log.debug("TensorRT: %s", msg)


class _Progress(trt.IProgressMonitor):
    """The builder's phases as one tqdm line: the top phase's steps, the current sub-phase shown."""

    def __init__(self, desc: str, enabled: bool) -> None:
        trt.IProgressMonitor.__init__(self)
        self._desc, self._enabled = desc, enabled
        self._bar: Any = None
        self._top: str | None = None
        self._lock = threading.Lock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        try:
            with self._lock:
                if parent_phase is None and self._bar is None and self._enabled:
                    from tqdm import tqdm

                    self._top = phase_name
                    self._bar = tqdm(total=num_steps, desc=f"TensorRT build {self._desc}", unit="step",
                                     leave=False)
                if self._bar is not None:
                    self._bar.set_postfix_str(phase_name[:40], refresh=True)
        except Exception:  # noqa: BLE001 - never break a build over the progress line
            pass

    def step_complete(self, phase_name: str, step: int) -> bool:
        try:
            with self._lock:
                if self._bar is not None and phase_name == self._top:
                    self._bar.update(max(step + 1 - self._bar.n, 0))
        except Exception:  # noqa: BLE001
            pass
        return True  # False would cancel the build

    def phase_finish(self, phase_name: str) -> None:
        try:
            with self._lock:
                if self._bar is not None and phase_name == self._top:
                    self._bar.close()
                    self._bar = None
        except Exception:  # noqa: BLE001
            pass


class TrtSession(Session):
    """Runs one ONNX file as a TensorRT engine (see the module docstring).

    device_id: GPU index. fp16: BuilderFlag.FP16 (weakly typed networks only: TensorRT may then
    run fp32 layers in fp16; GridSample layers are pinned to fp32). tf32: BuilderFlag.TF32.
    strongly_typed: None = True for graphs that compute in float16 (any float16 tensor in the ONNX
    file, `ezvtb.engines.trt.precision.strongly_typed_for`). workspace_gb: workspace pool
    limit. cache_dir: engine and timing cache folder (default ``$EZVTB_HOME/trt``).
    optimization_level: builder optimisation level 0..5 (None = TensorRT's default, 3).
    progress: show the tqdm line while building.
    """

    backend = "trt"

    def __init__(self, model_path: str | os.PathLike, spec: GraphSpec, *, device_id: int = 0, fp16: bool = False,
                 tf32: bool = True, strongly_typed: bool | None = None, workspace_gb: float = 2.0,
                 cache_dir: str | os.PathLike | None = None, optimization_level: int | None = None,
                 progress: bool = True) -> None:
        super().__init__(spec)
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_path: no ONNX file at {path!r}")
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise ValueError(f"device_id: expected an int >= 0, got {device_id!r}")
        self.memory = cuda_memory(device_id)  # BackendUnavailableError without a GPU / cuda-python
        self.device_id = device_id
        typed = strongly_typed_for(path, spec) if strongly_typed is None else bool(strongly_typed)
        self.flags = BuildFlags(fp16=bool(fp16), tf32=bool(tf32), strongly_typed=typed,
                                workspace_gb=float(workspace_gb), optimization_level=optimization_level)
        if cache_dir is None:
            from ezvtb import paths

            cache_dir = paths.subdir("trt")
        self.cache_dir = Path(cache_dir)
        gpu = device_info(device_id)
        self.gpu = gpu
        self.key = EngineKey(model_sha256(path), spec.name, trt.__version__, gpu["name"], gpu["compute_capability"],
                             self.flags)
        self._logger = _Logger()
        self._runtime = trt.Runtime(self._logger)
        self._timing = timing_cache_path(self.cache_dir, trt.__version__, gpu["name"], gpu["compute_capability"])
        self._progress = bool(progress)
        self._path = path
        self.engine, self.built = load_or_build(self.cache_dir, self.key, self._build, self._deserialize)
        self._context = self.engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{spec.name}: TensorRT could not create an execution context "
                               f"({'; '.join(self._logger.errors) or 'out of device memory?'})")
        self._check_engine_matches_spec()
        self._stream = CudaStream(device_id)
        self._outputs: dict[str, DeviceBuffer] = {}
        for t in spec.outputs:
            buf = self.memory.empty(t.shape, t.np_dtype)
            self._set_address(t.name, buf.ptr)
            self._outputs[t.name] = buf
        self._staging = {t.name: self.memory.empty(t.shape, t.np_dtype) for t in spec.inputs}
        log.info("%s: TensorRT %s engine on %s (sm %s)%s", spec.name, trt.__version__, gpu["name"],
                 gpu["compute_capability"], " (built)" if self.built else "")

    # -- engine ---------------------------------------------------------------------------------
    def _deserialize(self, payload: bytes) -> Any:
        return self._runtime.deserialize_cuda_engine(payload)

    def _build(self) -> bytes:
        f = self.flags
        builder = trt.Builder(self._logger)
        net_flags = 0
        if f.strongly_typed:
            net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(net_flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse_from_file(self._path):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{self.spec.name}: TensorRT's ONNX parser rejected {self._path}: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(f.workspace_gb * GB))
        if f.tf32:
            config.set_flag(trt.BuilderFlag.TF32)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
        if f.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
            pinned = 0
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.type == trt.LayerType.GRID_SAMPLE:
                    layer.precision = trt.float32
                    pinned += 1
            if pinned:
                config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        if f.optimization_level is not None:
            config.builder_optimization_level = f.optimization_level
        cache = load_timing_cache(self._timing, config.create_timing_cache)
        if cache is not None:
            config.set_timing_cache(cache, ignore_mismatch=False)
        config.progress_monitor = progress = _Progress(self.spec.name, self._progress)
        log.info("%s: building a TensorRT engine (%s); this takes a while once, then it is cached",
                 self.spec.name, ", ".join(k for k, v in (("strongly typed", f.strongly_typed), ("fp16", f.fp16),
                                                          ("tf32", f.tf32)) if v) or "fp32")
        plan = builder.build_serialized_network(network, config)
        progress.phase_finish(progress._top or "")
        if plan is None:
            raise RuntimeError(f"{self.spec.name}: TensorRT failed to build the engine: "
                               f"{'; '.join(self._logger.errors) or 'see the TensorRT log'}")
        if cache is not None:
            save_timing_cache(self._timing, cache)
        return bytes(memoryview(plan))

    def _check_engine_matches_spec(self) -> None:
        e = self.engine
        got = {}
        for i in range(e.num_io_tensors):
            name = e.get_tensor_name(i)
            mode = "in" if e.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "out"
            got[name] = (mode, tuple(e.get_tensor_shape(name)), np.dtype(trt.nptype(e.get_tensor_dtype(name))).name)
        want = {t.name: ("in", t.shape, t.dtype) for t in self.spec.inputs}
        want.update({t.name: ("out", t.shape, t.dtype) for t in self.spec.outputs})
        if got != want:
            raise ValueError(f"TensorRT engine does not match the declared spec {self.spec.name!r}: engine {got}, "
                             f"spec {want}. Re-export the model (`ezvtb export`).")

    def _set_address(self, name: str, ptr: int) -> None:
        if not self._context.set_tensor_address(name, int(ptr)):
            raise RuntimeError(f"{self.spec.name}: set_tensor_address({name!r}) failed")

    # -- Session ----------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run on host arrays and/or device buffers of this GPU; returns the session's buffers."""
        self.check_feeds(feeds)
        self.memory.make_current()  # this GPU in the calling thread (pipelined cores run in a worker)
        for t in self.spec.inputs:
            v = feeds[t.name]
            if isinstance(v, np.ndarray):
                staging = self._staging[t.name]
                self.memory.copy_into(staging, v)
                self._set_address(t.name, staging.ptr)
            elif isinstance(v, DeviceBuffer):
                if v.memory.name != self.memory.name:
                    raise ValueError(f"graph {self.spec.name!r} input {t.name!r}: a buffer in {v.memory.name} "
                                     f"cannot feed a session on {self.memory.name}")
                self._set_address(t.name, v.ptr)
            else:
                raise TypeError(f"graph {self.spec.name!r} input {t.name!r}: expected a numpy array or a "
                                f"DeviceBuffer, got {type(v).__name__}")
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"{self.spec.name}: TensorRT execute_async_v3 failed "
                               f"({'; '.join(self._logger.errors) or 'see the TensorRT log'})")
        self._stream.synchronize()
        return self._outputs

    def output(self, name: str) -> Any:
        return self._outputs[name]

    @property
    def on_device(self) -> bool:
        return True

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Any:
        buf = self.memory.empty(tuple(shape), dtype)
        self.memory.copy_into(buf, np.zeros(shape, dtype))
        return buf

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.memory.host_array(shape, dtype)

    def copy_into(self, dst: Any, src: Any) -> None:
        if isinstance(dst, np.ndarray):
            return super().copy_into(dst, src)
        self.memory.copy_into(dst, src)

    def copy_buffer(self, value: Any) -> Any:
        return value.copy() if isinstance(value, np.ndarray) else self.memory.copy(value)

    def view(self, value: Any, index: int) -> Any:
        return value[index] if isinstance(value, np.ndarray) else self.memory.view(value, index)

    def crop_into(self, dst: Any, src: Any, top: int, left: int) -> None:
        if isinstance(dst, np.ndarray):
            return super().crop_into(dst, src, top, left)
        self.memory.crop_into(dst, src, top, left)

    def to_host(self, value: Any, out: np.ndarray | None = None) -> np.ndarray:
        if isinstance(value, DeviceBuffer):
            return value.memory.to_host(value, out)
        return super().to_host(value, out)

    def close(self) -> None:
        self._outputs = {}
        self._staging = {}
        self._context = None
        self.engine = None
