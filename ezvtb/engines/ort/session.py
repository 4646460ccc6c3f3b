"""`OrtSession`: one exported graph on ONNX Runtime, outputs written into preallocated buffers.

ORT silently falls back to the CPU provider when a GPU provider fails to load (missing CUDA
libraries, no driver). We compare `get_providers()` with the request after creating the
session: an explicitly requested backend that did not load is an error, under ``auto`` it is a
warning.

Buffers. A session runs in one of two modes (`OrtSession.on_device`):
  * host: outputs are preallocated numpy arrays bound to the IO binding (on GPU providers ORT
    copies each output to host at the end of the run);
  * device: outputs are OrtValues allocated once in the provider's memory and handed out as
    `DeviceBuffer`s; such buffers (or views of them) are bound as the next graph's inputs by
    address, so chained graphs and stages never cross to the host. Host feeds (pose, image)
    are uploaded by ORT (`bind_cpu_input`). Copies between buffers (model cache, RIFE's previous
    frame, SR's crop) and downloads go through `ezvtb.engines.memory` (cuda-python on CUDA).
Device mode is the default on the CUDA and TensorRT EPs when cuda-python is importable;
``device_buffers=True`` on the CPU provider runs the same path with CPU OrtValues (tests).

GPU libraries. The onnxruntime-gpu wheel's CUDA and TensorRT provider libraries carry no RUNPATH:
they find libcudart, libcublas, libcurand, libcudnn and libnvinfer only if something loaded them.
`prepare_gpu_libraries` runs once before the first CUDA/TensorRT-EP session: it calls
`onnxruntime.preload_dlls()` (ORT >= 1.21; loads the pip-installed nvidia-* wheels' copies, else the
system's) and, for the TensorRT EP, imports `tensorrt` (whose import loads libnvinfer from the
tensorrt wheel). A provider that still fails to create its session counts as not loaded.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ezvtb.engines.base import GraphSpec, Session
from ezvtb.engines.errors import BackendUnavailableError
from ezvtb.engines.install import backend_install_hint
from ezvtb.engines.memory import HOST_PTR, DeviceBuffer, Memory

log = logging.getLogger("ezvtb.engines.ort")

# backend name -> (execution provider that must be active, providers to request in order)
_PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cpu": ("CPUExecutionProvider", ("CPUExecutionProvider",)),
    "cuda": ("CUDAExecutionProvider", ("CUDAExecutionProvider", "CPUExecutionProvider")),
    "tensorrt": (
        "TensorrtExecutionProvider",
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    ),
    "directml": ("DmlExecutionProvider", ("DmlExecutionProvider", "CPUExecutionProvider")),
}
# ORT device name used for OrtValues of device-resident buffers.
_DEVICE = {"cuda": "cuda", "tensorrt": "cuda", "directml": "dml"}
# `auto` prefers these, in order, among the providers this onnxruntime build offers.
_AUTO_ORDER = ("cuda", "directml", "cpu")

ORT_BACKENDS = tuple(_PROVIDERS)
# Backends whose providers need the CUDA (and TensorRT) libraries loaded first.
_CUDA_BACKENDS = ("cuda", "tensorrt")
# What `prepare_gpu_libraries` already did in this process: "preload_dlls", "tensorrt".
_prepared: set[str] = set()


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendUnavailableError(
            "onnxruntime is not installed: install exactly one of the extras "
            "ezvtb[cpu], ezvtb[cuda] / ezvtb[tensorrt] (CUDA 13), ezvtb[cuda12] / ezvtb[tensorrt-cuda12] (CUDA 12) "
            "or ezvtb[directml]"
        ) from e
    return onnxruntime


def prepare_gpu_libraries(backend: str) -> None:
    """Load the libraries the CUDA / TensorRT EPs need, once per process (see the module docstring).

    No-op for other backends. Never raises: what cannot be loaded shows up as a provider that did
    not load, which the session reports.
    """
    if backend not in _CUDA_BACKENDS:
        return
    ort = _ort()
    if "preload_dlls" not in _prepared:
        _prepared.add("preload_dlls")
        preload = getattr(ort, "preload_dlls", None)
        if preload is None:
            log.info("onnxruntime %s has no preload_dlls (ORT < 1.21): CUDA/cuDNN must be on the loader path",
                     getattr(ort, "__version__", "?"))
        else:
            import contextlib
            import io

            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):  # it prints its failures
                    preload()
            except Exception as e:  # noqa: BLE001 - best effort; a failed provider load is reported later
                log.warning("onnxruntime.preload_dlls() failed: %s: %s", type(e).__name__, e)
            said = " ".join(out.getvalue().split())
            if said:
                log.warning("onnxruntime.preload_dlls(): %s", said)
    if backend == "tensorrt" and "tensorrt" not in _prepared:
        _prepared.add("tensorrt")
        try:
            import tensorrt  # noqa: F401 - its import loads libnvinfer from the tensorrt wheel
        except Exception as e:  # noqa: BLE001 - a system TensorRT on the loader path works without it
            log.info("import tensorrt failed (%s: %s); the TensorRT EP needs libnvinfer on the loader path",
                     type(e).__name__, e)


def resolve_providers(backend: str) -> tuple[str, bool]:
    """Map a backend name (or ``auto``) to a concrete ORT backend name.

    Returns (backend, explicit). Raises ValueError for unknown names and
    BackendUnavailableError when an explicit backend's provider is not in this build.
    """
    ort = _ort()
    available = set(ort.get_available_providers())
    if backend == "auto":
        for b in _AUTO_ORDER:
            if _PROVIDERS[b][0] in available:
                return b, False
        return "cpu", False
    if backend not in _PROVIDERS:
        raise ValueError(f"backend: expected one of {['auto', *_PROVIDERS]}, got {backend!r}")
    ep = _PROVIDERS[backend][0]
    if ep not in available:
        raise BackendUnavailableError(
            f"backend {backend!r} needs {ep}, which this onnxruntime build does not offer "
            f"(available: {sorted(available)}). {backend_install_hint(backend)}"
        )
    return backend, True


@dataclass
class OrtOptions:
    """Session options with defaults that measured best on small CPUs and on GPUs.

    intra_op_threads: 0 lets ORT use one thread per physical core.
    optimization: ORT graph optimisation level name; "all" enables the NCHWc layout
        transform, worth 20-40 % on CPU.
    allow_spinning: busy-wait between ops; off by default, it only helps on an idle machine.
    device_id: GPU index (CUDA, TensorRT EP, DirectML).
    device_buffers: outputs in device memory, chained by address (see the module docstring).
        None = on for the CUDA/TensorRT EPs when cuda-python is importable, off otherwise;
        True on the CPU provider runs the device path with CPU OrtValues; DirectML is host only.
    trt_cache_dir: TensorRT-EP engine and timing cache folder; None = ``$EZVTB_HOME/trt_ep``.
    trt_fp16: TensorRT-EP FP16 flag. Leave it off for ezvtb's fp16 graphs: without it, ORT
        builds a strongly typed network whose precisions follow the graph (grid math in fp32);
        with it, TensorRT may run any fp32 layer in fp16.
    trt_workspace_gb: TensorRT workspace limit (0 = TensorRT's default).
    Memory (CPU provider; measured by benchmarks/bench_memory.py, THA3 core steady RSS: ORT's
    defaults, an arena and a memory pattern per session, 1229 MB; these defaults 681 MB, same CPU
    time per frame; without any arena 328 MB but +24 % CPU time, from page faults every run):
    cpu_mem_arena: ORT's CPU arena (``enable_cpu_mem_arena``).
    shared_cpu_arena: CPU sessions allocate from one arena registered in ORT's environment
        (``session.use_env_allocators``) instead of one arena each: the sessions of a core run one
        after another, so they reuse the same memory instead of each keeping its own peak.
    mem_pattern: ORT's memory pattern (``enable_mem_pattern``): one planned block per session,
        kept. None = off on the CPU provider with the shared arena (the blocks would pile up in
        it), on otherwise.
    """

    intra_op_threads: int = 0
    optimization: str = "all"
    allow_spinning: bool = False
    device_id: int = 0
    device_buffers: bool | None = None
    trt_cache_dir: str | None = None
    trt_fp16: bool = False
    trt_workspace_gb: float = 0.0
    extra_provider_options: dict[str, Any] = field(default_factory=dict)
    cpu_mem_arena: bool = True
    shared_cpu_arena: bool = True
    mem_pattern: bool | None = None


_SHARED_ARENA_LOCK = threading.Lock()
_SHARED_ARENA: list[bool] = []


def _register_shared_cpu_arena(ort: Any) -> None:
    """Register one CPU arena in ORT's environment (once per process) for `shared_cpu_arena`.

    Extend strategy kSameAsRequested: the arena grows by what a run asks for, not to the next
    power of two."""
    with _SHARED_ARENA_LOCK:
        if _SHARED_ARENA:
            return
        mem = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(mem, ort.OrtArenaCfg(0, 1, -1, -1))
        _SHARED_ARENA.append(True)


_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class OrtSession(Session):
    """Runs one ONNX file through ONNX Runtime with IO binding.

    Output buffers are allocated once: numpy arrays on CPU, device OrtValues on GPU
    providers (then `to_host` copies to numpy). See `Session` for the ownership rules.
    """

    def __init__(self, model_path: str | os.PathLike, spec: GraphSpec, backend: str = "auto",
                 options: OrtOptions | None = None) -> None:
        super().__init__(spec)
        ort = _ort()
        self.options = options = options or OrtOptions()
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model_path: no ONNX file at {path!r}")
        self.backend, explicit = resolve_providers(backend)
        want_ep, providers = _PROVIDERS[self.backend]
        prepare_gpu_libraries(self.backend)

        so = ort.SessionOptions()
        if options.optimization not in _LEVELS:
            raise ValueError(f"optimization: expected one of {list(_LEVELS)}, got {options.optimization!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[options.optimization])
        so.intra_op_num_threads = int(options.intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
        so.enable_cpu_mem_arena = bool(options.cpu_mem_arena)
        shared = bool(options.shared_cpu_arena and options.cpu_mem_arena and self.backend == "cpu")
        so.enable_mem_pattern = (not shared) if options.mem_pattern is None else bool(options.mem_pattern)
        if shared:
            _register_shared_cpu_arena(ort)
            so.add_session_config_entry("session.use_env_allocators", "1")
        if self.backend == "directml":
            so.enable_mem_pattern = False  # required by the DirectML EP
        so.log_severity_level = 3

        provider_options: list[dict[str, Any]] = []
        for p in providers:
            po: dict[str, Any] = {}
            if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"):
                po["device_id"] = int(options.device_id)
            if p == "TensorrtExecutionProvider":
                po.update(_trt_ep_options(options))
            po.update(options.extra_provider_options.get(p, {}))
            provider_options.append(po)

        failed = ""
        try:
            self._sess = ort.InferenceSession(path, sess_options=so, providers=list(providers),
                                              provider_options=provider_options)
            active = self._sess.get_providers()
        except Exception as e:  # noqa: BLE001 - ORT's errors are not RuntimeErrors (Fail, EPFail, ...)
            if self.backend == "cpu":
                raise
            # A GPU provider that fails while creating the session (a TensorRT build, CUDA out of
            # memory, a missing library) did not load; a broken graph fails again on the CPU below.
            self._sess, active, failed = None, [], f"{type(e).__name__}: {e}"
        if want_ep not in active:
            msg = (f"{spec.name}: requested {want_ep} did not load, ONNX Runtime fell back to "
                   f"{active} (check the CUDA/cuDNN/TensorRT libraries and the driver)") if not failed else \
                  f"{spec.name}: creating the session on {want_ep} failed: {failed}"
            self._sess = None
            if explicit:
                raise BackendUnavailableError(msg)
            log.warning(msg)
            self.backend = "cpu"
            self._sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self._check_graph_matches_spec()

        self._ort_device, self.memory = self._choose_memory(options)
        self._binding = self._sess.io_binding()
        self._outputs: dict[str, Any] = {}
        for t in spec.outputs:
            if self.memory is None:
                buf = np.zeros(t.shape, dtype=t.np_dtype)
                self._binding.bind_ortvalue_output(t.name, ort.OrtValue.ortvalue_from_numpy(buf))
            else:
                buf = self._new_buffer(t.shape, t.np_dtype)
                self._binding.bind_ortvalue_output(t.name, buf.owner)
            self._outputs[t.name] = buf
        log.debug("%s: %s on %s, %s buffers", spec.name, path, self._sess.get_providers(),
                  "device" if self.memory is not None else "host")

    def _choose_memory(self, options: OrtOptions) -> tuple[str | None, Memory | None]:
        """(ORT device name, Memory) for device mode, or (None, None) for host mode."""
        want = options.device_buffers
        device = _DEVICE.get(self.backend)
        if want is False or (want is None and device not in ("cuda",)):
            return None, None
        if device is None:  # CPU provider: the device path over CPU OrtValues
            return "cpu", HOST_PTR
        if device != "cuda":
            if want:
                raise ValueError(f"device_buffers=True: not supported on the {self.backend} backend "
                                 "(host buffers only)")
            return None, None
        try:
            from ezvtb.engines.cuda import cuda_memory

            return "cuda", cuda_memory(int(options.device_id))
        except BackendUnavailableError as e:
            if want:
                raise
            log.warning("%s: device buffers need cuda-python (%s); outputs go through host memory, "
                        "which costs a host round trip per graph", self.spec.name, e)
            return None, None

    def _new_buffer(self, shape: tuple[int, ...], dtype: Any) -> DeviceBuffer:
        ov = self._OrtValue.ortvalue_from_shape_and_type(list(shape), np.dtype(dtype), self._ort_device,
                                                         int(self.options.device_id))
        return DeviceBuffer(ov.data_ptr(), tuple(shape), dtype, self.memory, ov)

    @property
    def _OrtValue(self):  # noqa: N802
        return _ort().OrtValue

    @property
    def providers(self) -> list[str]:
        return list(self._sess.get_providers())

    def _check_graph_matches_spec(self) -> None:
        got_in = [(i.name, tuple(i.shape)) for i in self._sess.get_inputs()]
        got_out = [(o.name, tuple(o.shape)) for o in self._sess.get_outputs()]
        want_in = [(t.name, t.shape) for t in self.spec.inputs]
        want_out = [(t.name, t.shape) for t in self.spec.outputs]
        if sorted(got_in) != sorted(want_in) or sorted(got_out) != sorted(want_out):
            raise ValueError(
                f"ONNX graph does not match the declared spec {self.spec.name!r}: graph inputs "
                f"{got_in}, outputs {got_out}; spec inputs {want_in}, outputs {want_out}. "
                "Re-export the model (`ezvtb export`)."
            )

    def run(self, feeds: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run on host arrays and/or this memory's `DeviceBuffer`s; returns the session's buffers."""
        if self._sess is None:
            raise RuntimeError(f"{self.spec.name}: the session is closed")
        self.check_feeds(feeds)
        b = self._binding
        for t in self.spec.inputs:
            v = feeds[t.name]
            if isinstance(v, np.ndarray):
                if not v.flags.c_contiguous:
                    v = np.ascontiguousarray(v)
                b.bind_cpu_input(t.name, v)
            elif isinstance(v, DeviceBuffer):
                if self.memory is None or v.memory.name != self.memory.name:
                    where = "host buffers" if self.memory is None else self.memory.name
                    raise ValueError(f"graph {self.spec.name!r} input {t.name!r}: a buffer in {v.memory.name} "
                                     f"cannot feed a session using {where}")
                b.bind_input(t.name, self._ort_device, int(self.options.device_id), v.dtype, list(v.shape), v.ptr)
            elif isinstance(v, self._OrtValue):
                b.bind_ortvalue_input(t.name, v)
            else:
                raise TypeError(f"graph {self.spec.name!r} input {t.name!r}: expected a numpy array or a "
                                f"DeviceBuffer, got {type(v).__name__}")
        self._sess.run_with_iobinding(b)
        if self._ort_device == "cuda" or (self.memory is None and _DEVICE.get(self.backend)):
            b.synchronize_outputs()
        return self._outputs

    def output(self, name: str) -> Any:
        return self._outputs[name]

    # -- buffers (see Session) ----------------------------------------------------------------
    @property
    def on_device(self) -> bool:
        return self.memory is not None

    def alloc(self, shape: tuple[int, ...], dtype: Any) -> Any:
        if self.memory is None:
            return super().alloc(shape, dtype)
        buf = self._new_buffer(tuple(shape), dtype)
        self.memory.copy_into(buf, np.zeros(shape, dtype))
        return buf

    def host_array(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return super().host_array(shape, dtype) if self.memory is None else self.memory.host_array(shape, dtype)

    def copy_into(self, dst: Any, src: Any) -> None:
        if isinstance(dst, np.ndarray):
            return super().copy_into(dst, src)
        self._mem("copy_into").copy_into(dst, src)

    def copy_buffer(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return value.copy()
        buf = self._new_buffer(value.shape, value.dtype)
        self._mem("copy_buffer").copy_into(buf, value)
        return buf

    def view(self, value: Any, index: int) -> Any:
        if isinstance(value, np.ndarray):
            return value[index]
        return self._mem("view").view(value, index)

    def crop_into(self, dst: Any, src: Any, top: int, left: int) -> None:
        if isinstance(dst, np.ndarray):
            return super().crop_into(dst, src, top, left)
        self._mem("crop_into").crop_into(dst, src, top, left)

    def to_host(self, value: Any, out: np.ndarray | None = None) -> np.ndarray:
        if isinstance(value, DeviceBuffer):
            return value.memory.to_host(value, out)
        if isinstance(value, self._OrtValue):  # an OrtValue fed by a caller
            host = value.numpy()
            if out is None:
                return host
            np.copyto(out, host)
            return out
        return super().to_host(value, out)

    def _mem(self, what: str) -> Memory:
        if self.memory is None:
            raise TypeError(f"{what}: this {self.backend} session uses host buffers")
        return self.memory

    def close(self) -> None:
        self._binding = None
        self._sess = None
        self._outputs = {}


def _trt_ep_options(options: OrtOptions) -> dict[str, Any]:
    """TensorRT-EP provider options: engine + timing cache under $EZVTB_HOME, FP16, workspace."""
    cache = options.trt_cache_dir
    if cache is None:
        from ezvtb import paths

        cache = str(paths.subdir("trt_ep"))
    os.makedirs(cache, exist_ok=True)
    po: dict[str, Any] = {
        "trt_fp16_enable": bool(options.trt_fp16),
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": cache,
    }
    if options.trt_workspace_gb > 0:
        po["trt_max_workspace_size"] = int(options.trt_workspace_gb * 1024**3)
    return po
