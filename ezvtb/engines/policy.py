"""Backend and precision policy: which backends exist, which one a request means, which precision runs there,
and how a list of candidates is opened with fallback.

Used alike by the realtime stages (THA, RIFE, SR), the core assembly and the generative pipelines.
Imports no runtime at module level: ONNX Runtime and TensorRT are probed inside the functions that ask them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ezvtb.engines.errors import BackendUnavailableError
from ezvtb.engines.install import backend_install_hint

log = logging.getLogger("ezvtb.engines.policy")

# Session backends: ``auto | cpu | cuda | tensorrt | directml`` run on ONNX Runtime; ``trt`` is native TensorRT.
BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "directml", "trt")
# The backends a session really runs on (``auto`` resolves to one of them).
CONCRETE_BACKENDS = tuple(b for b in BACKENDS if b != "auto")
# Backends of a network runner: ``torch`` runs the module itself (eagerly), the others an exported graph.
RUNNER_BACKENDS = ("torch", *BACKENDS)
# Graph precisions.
PRECISIONS = ("fp32", "fp16")
# Backends that run fp16 graphs natively (tensor cores / DirectX half); the CPU provider emulates
# most fp16 kernels by casting, so fp16 graphs are slower there (README, "get_core options").
HALF_BACKENDS = ("cuda", "tensorrt", "trt", "directml")
# Backends whose generative graphs are exported with `ezvtb.export.network_rewrites.REWRITES`: those the
# rewrites were measured on (ONNX Runtime's CPU provider; benchmarks/bench_diffusion_rewrites.py). The others
# get the graph as the module is written (TensorRT fuses attention and normalisation itself).
REWRITE_BACKENDS = ("cpu",)
# Measured on a 2-core CPU: fp16 vs fp32 graphs on ONNX Runtime's CPU provider.
CPU_HALF_COST = "THA frame 758 vs 513 ms, RIFE x2 1294 vs 775 ms (fp16 vs fp32), UpConv7 2x 5270 ms in fp16"

# What makes `open_first` try the next backend of a chain: a provider or library that does not load
# (BackendUnavailableError), TensorRT's parser or builder failing (RuntimeError), a CUDA call failing
# while setting up device memory or a stream (CudaError, a RuntimeError).
FALLBACK_ERRORS = (BackendUnavailableError, RuntimeError)


def check_backend(backend: Any, choices: Sequence[str] = BACKENDS) -> str:
    """`backend` if it is one of `choices`; ValueError naming the argument otherwise."""
    if backend not in choices:
        raise ValueError(f"backend: expected one of {list(choices)}, got {backend!r}")
    return backend


def check_precision(precision: Any) -> str:
    """`precision` if it is one of `PRECISIONS`; ValueError naming the argument otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def backend_chain(backend: str, use_tensorrt: bool) -> list[tuple[str, str]]:
    """The backends to try in order, each with why it is on the list: [(name, reason), ...].

    An explicit `backend` is the only candidate. Under ``auto`` with `use_tensorrt=True`: native
    TensorRT when tensorrt imports and a CUDA device answers, then ONNX Runtime's TensorRT EP and
    CUDA EP when this onnxruntime build offers them, then ``auto`` (DirectML, else CPU). Without
    `use_tensorrt`: ``auto`` (CUDA EP, DirectML, CPU). `get_core` opens the THA graphs on each in
    turn until one really loads (ORT can fall back silently; that is detected), logging why.
    """
    check_backend(backend)
    if backend != "auto":
        return [(backend, "requested")]
    if not use_tensorrt:
        return [("auto", "use_tensorrt=False")]
    chain: list[tuple[str, str]] = []
    skipped: dict[str, str] = {}  # what is missing (short) -> why (long: errors, install hints)
    from ezvtb.engines.trt import available  # probes tensorrt and CUDA, both optional

    ok, why = available()
    if ok:
        chain.append(("trt", "use_tensorrt=True: native TensorRT"))
    else:
        skipped["native TensorRT"] = why
    try:
        from ezvtb.engines.ort import resolve_providers  # onnxruntime is optional (the cpu/gpu extras)

        for b, what in (("tensorrt", "ONNX Runtime's TensorRT EP"), ("cuda", "ONNX Runtime's CUDA EP")):
            try:
                resolve_providers(b)
                chain.append((b, f"use_tensorrt=True: {what}" + (" (native TensorRT skipped)" if skipped else "")))
            except BackendUnavailableError as e:
                skipped[what] = str(e)
    except BackendUnavailableError as e:  # onnxruntime missing: the error surfaces when opening
        skipped["onnxruntime"] = str(e)
    # One short line (get_core logs it as a warning); the details are logged at debug level and
    # `ezvtb doctor` shows them per backend.
    chain.append(("auto", "use_tensorrt=True, but no TensorRT or CUDA backend is available here (missing: "
                          + ", ".join(skipped) + ")" if skipped else "use_tensorrt=True: the last resort"))
    for what, why in skipped.items():
        log.debug("use_tensorrt=True: %s skipped: %s", what, why)
    return chain


def require_backend(backend: str) -> None:
    """BackendUnavailableError, naming what to install, when `backend` cannot run here; cheap (no graph, no
    session), so callers check before exporting anything. ``auto`` and ``torch`` always pass."""
    if backend == "trt":
        from ezvtb.engines.trt import available  # probes tensorrt and CUDA, both optional

        ok, why = available()
        if not ok:
            raise BackendUnavailableError(f"backend 'trt': {why}. {backend_install_hint('trt')}")
    elif backend in BACKENDS:  # ONNX Runtime: the provider must be in this build (auto: onnxruntime installed)
        from ezvtb.engines.ort import resolve_providers

        resolve_providers(backend)


def select_backend(backend: str, use_tensorrt: bool) -> str:
    """The first backend of `backend_chain` (what get_core tries first)."""
    return backend_chain(backend, use_tensorrt)[0][0]


def concrete_backend(backend: str) -> str:
    """The backend a session opened with `backend` would use: ``auto`` resolved by this
    onnxruntime build's providers (CUDA EP, DirectML, else CPU); other names unchanged."""
    if backend != "auto":
        return backend
    try:
        from ezvtb.engines.ort import resolve_providers  # onnxruntime is optional

        return resolve_providers("auto")[0]
    except BackendUnavailableError:
        return "cpu"


def resolve_precision(half: bool | None, backend: str) -> str:
    """``fp16`` or ``fp32`` for a stage's `half` option (`model_half`, `interpolation_half`,
    `sr_half`) on a concrete `backend`: None (auto) = fp16 on `HALF_BACKENDS` (cuda, tensorrt,
    trt, directml), fp32 on ``cpu``; an explicit bool is honoured on every backend."""
    if backend not in CONCRETE_BACKENDS:
        raise ValueError(f"backend: expected a concrete backend {list(CONCRETE_BACKENDS)}, got {backend!r}")
    if half is None:
        return "fp16" if backend in HALF_BACKENDS else "fp32"
    return "fp16" if half else "fp32"


def log_fallback(backend: str, reason: str, error: BaseException, next_backend: str) -> None:
    """The warning logged when `backend` did not load and `next_backend` is tried."""
    log.warning("backend %r (%s) did not load: %s: %s; trying %r", backend, reason, type(error).__name__, error,
                next_backend)


def open_first(chain: Sequence[tuple[str, str]], open_backend: Callable[[str], Any], *,
               probe: Callable[[str], None] | None = None) -> tuple[Any, str, str]:
    """``(open_backend(name), name, reason)`` for the first (name, reason) of `chain` that opens.

    Each candidate is first checked by ``probe`` (default `require_backend`: cheap, so a backend whose provider
    is missing fails before `open_backend` exports anything). A `FALLBACK_ERRORS` error moves on to the next
    candidate with a warning; the last candidate's error is raised; other errors are raised at once.
    """
    probe = require_backend if probe is None else probe
    for i, (backend, reason) in enumerate(chain):
        try:
            probe(backend)
            return open_backend(backend), backend, reason
        except FALLBACK_ERRORS as e:
            if i == len(chain) - 1:
                raise
            log_fallback(backend, reason, e, chain[i + 1][0])
    raise ValueError("chain: expected at least one backend")


def session_options(backend: str, device_id: int, threads: int) -> dict[str, Any]:
    """Session options for `backend`: the device, and CPU threads where the backend takes them (not ``trt``)."""
    return {"device_id": device_id} if backend == "trt" else {"device_id": device_id, "intra_op_threads": threads}


def open_stage(chain: Sequence[tuple[str, str]], backend: str, open_on: Callable[[str, dict[str, Any]], Any],
               device_id: int, threads: int) -> Any:
    """A frame stage (RIFE, SR) opened by ``open_on(name, session_options)`` on THA's `backend`; under
    ``auto`` a `FALLBACK_ERRORS` failure there (e.g. TensorRT rejecting that graph) moves on down the rest
    of `chain` (`open_first`); frames then cross between memories through the host."""
    names = [b for b, _ in chain]
    rest = list(chain[names.index(backend):]) if backend in names else [(backend, "THA's backend")]
    return open_first(rest, lambda name: open_on(name, session_options(name, device_id, threads)))[0]


__all__ = ["BACKENDS", "CONCRETE_BACKENDS", "CPU_HALF_COST", "FALLBACK_ERRORS", "HALF_BACKENDS", "PRECISIONS",
           "REWRITE_BACKENDS", "RUNNER_BACKENDS", "backend_chain", "check_backend", "check_precision",
           "concrete_backend", "log_fallback", "open_first", "open_stage", "require_backend", "resolve_precision",
           "select_backend", "session_options"]
