"""`OrtSession`: one exported graph on ONNX Runtime, outputs written into preallocated buffers.

ORT silently falls back to the CPU provider when a GPU provider fails to load (missing CUDA
libraries, no driver). We compare `get_providers()` with the request after creating the
session: an explicitly requested backend that did not load is an error, under ``auto`` it is a
warning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ezvtb.engines.base import GraphSpec, Session
from ezvtb.engines.errors import BackendUnavailableError

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


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendUnavailableError(
            "onnxruntime is not installed: install exactly one of the extras "
            "ezvtb[cpu], ezvtb[cuda], ezvtb[tensorrt] or ezvtb[directml]"
        ) from e
    return onnxruntime


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
            f"(available: {sorted(available)}). Install the matching ezvtb extra."
        )
    return backend, True


@dataclass
class OrtOptions:
    """Session options with defaults that measured best on small CPUs and on GPUs.

    intra_op_threads: 0 lets ORT use one thread per physical core.
    optimization: ORT graph optimisation level name; "all" enables the NCHWc layout
        transform, worth 20-40 % on CPU.
    allow_spinning: busy-wait between ops; off by default, it only helps on an idle machine.
    trt_cache_dir / trt_fp16: TensorRT-EP engine cache folder and FP16 flag.
    """

    intra_op_threads: int = 0
    optimization: str = "all"
    allow_spinning: bool = False
    device_id: int = 0
    trt_cache_dir: str | None = None
    trt_fp16: bool = False
    extra_provider_options: dict[str, Any] = field(default_factory=dict)


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

        so = ort.SessionOptions()
        if options.optimization not in _LEVELS:
            raise ValueError(f"optimization: expected one of {list(_LEVELS)}, got {options.optimization!r}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[options.optimization])
        so.intra_op_num_threads = int(options.intra_op_threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
        if self.backend == "directml":
            so.enable_mem_pattern = False  # required by the DirectML EP
        so.log_severity_level = 3

        provider_options: list[dict[str, Any]] = []
        for p in providers:
            po: dict[str, Any] = {}
            if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider"):
                po["device_id"] = int(options.device_id)
            if p == "TensorrtExecutionProvider":
                po["trt_fp16_enable"] = bool(options.trt_fp16)
                if options.trt_cache_dir:
                    os.makedirs(options.trt_cache_dir, exist_ok=True)
                    po["trt_engine_cache_enable"] = True
                    po["trt_engine_cache_path"] = options.trt_cache_dir
            po.update(options.extra_provider_options.get(p, {}))
            provider_options.append(po)

        self._sess = ort.InferenceSession(path, sess_options=so, providers=list(providers),
                                          provider_options=provider_options)
        active = self._sess.get_providers()
        if want_ep not in active:
            msg = (f"{spec.name}: requested {want_ep} did not load, ONNX Runtime fell back to "
                   f"{active} (check the CUDA/cuDNN/TensorRT libraries and the driver)")
            self._sess = None
            if explicit:
                raise BackendUnavailableError(msg)
            log.warning(msg)
            self.backend = "cpu"
            self._sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        self._check_graph_matches_spec()

        self._device = _DEVICE.get(self.backend)
        self._binding = self._sess.io_binding()
        self._outputs: dict[str, Any] = {}
        for t in spec.outputs:
            if self._device is None:
                buf = np.empty(t.shape, dtype=t.np_dtype)
                self._binding.bind_ortvalue_output(t.name, ort.OrtValue.ortvalue_from_numpy(buf))
            else:
                buf = ort.OrtValue.ortvalue_from_shape_and_type(list(t.shape), t.np_dtype, self._device,
                                                                int(options.device_id))
                self._binding.bind_ortvalue_output(t.name, buf)
            self._outputs[t.name] = buf
        self._OrtValue = ort.OrtValue
        log.debug("%s: %s on %s", spec.name, path, self._sess.get_providers())

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
        self.check_feeds(feeds)
        b = self._binding
        for t in self.spec.inputs:
            v = feeds[t.name]
            if isinstance(v, np.ndarray):
                if not v.flags.c_contiguous:
                    v = np.ascontiguousarray(v)
                b.bind_cpu_input(t.name, v)
            else:
                b.bind_ortvalue_input(t.name, v)
        self._sess.run_with_iobinding(b)
        if self._device is not None:
            b.synchronize_outputs()
        return self._outputs

    def output(self, name: str) -> Any:
        return self._outputs[name]

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        return value.numpy()

    def close(self) -> None:
        self._binding = None
        self._sess = None
