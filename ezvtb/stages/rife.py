"""`RifeStage`: RIFE frame interpolation between consecutive THA frames.

Each call takes the new THA frame and returns `scale` frames: the scale-1 in-betweens from the
previous THA frame to this one (t = 1/n .. (n-1)/n), then this frame. This adds **one frame of
latency**: the in-betweens leading to frame k can only be computed once frame k exists, so a
player that spreads the returned frames evenly over the next frame period shows frame k one THA
period later than it would without interpolation. The first call after `reset` (a new character
via ``setImage``) has no previous frame and returns the current frame `scale` times.

Runtime only: one `Session` (no torch). `create_rife_stage` finds or exports the graph.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ezvtb.engines import create_session
from ezvtb.engines.base import Session
from ezvtb.engines.policy import concrete_backend, require_backend, resolve_precision
from ezvtb.export.rife import rife_graph  # torch is imported only when the graph must be exported
from ezvtb.models.rife.spec import INPUT_NAMES, OUTPUT_NAME, SCALES, VERSIONS, check_flow_scale, check_scale
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.rife")

# Flow resolution under interpolation_flow_scale=None (auto), per backend kind. CPU: measured by
# benchmarks/bench_rife.py on real THA3 frame pairs (README, "Frame interpolation"). GPU: full
# resolution, RIFE's own default; the GPU trade-off is not measured yet.
CPU_FLOW_SCALE = 0.5
GPU_FLOW_SCALE = 1.0


def resolve_flow_scale(flow_scale: Any, backend: str) -> float:
    """`interpolation_flow_scale` on a concrete backend: None = `CPU_FLOW_SCALE` on ``cpu``,
    `GPU_FLOW_SCALE` elsewhere; a value is validated (one of `FLOW_SCALES`) and kept."""
    if flow_scale is None:
        return CPU_FLOW_SCALE if backend == "cpu" else GPU_FLOW_SCALE
    return check_flow_scale(flow_scale)


class RifeStage:
    """Interpolates THA frames with one RIFE graph (spec `ezvtb.models.rife.spec.graph_spec`).

    ``run([frame])``: frame is uint8 (H, W, 4) BGRA (H = W = the graph's size, 512). Returns a list
    of exactly `scale` uint8 (H, W, 4) BGRA arrays, the last equal to `frame`. The arrays are views
    of one buffer owned by the stage, allocated once and overwritten by the next `run`: copy what
    must outlive it. The stage keeps its own copy of the previous frame, so the caller may reuse
    `frame`'s buffer (THA's editor output) right away.

    On a device session `frame` may also be a device buffer of the same memory (THA's editor
    output): the previous frame is kept in device memory and the result is downloaded once. With
    ``device_output=True`` (set when SR follows on the same device) the returned frames are
    device views of the session's output buffer instead, valid until the next `run`.
    """

    device_output = False

    def __init__(self, session: Session, version: str = "hdv3", precision: str = "fp32",
                 flow_scale: float = 1.0) -> None:
        spec = session.spec
        out = spec.outputs[0] if len(spec.outputs) == 1 else None
        if (spec.input_names != INPUT_NAMES or out is None or out.name != OUTPUT_NAME
                or len(out.shape) != 4 or out.shape[0] not in SCALES or out.shape[1:] != spec.inputs[0].shape):
            raise ValueError(f"session: expected a RIFE graph (inputs {list(INPUT_NAMES)}, output "
                             f"{OUTPUT_NAME!r} [n, H, W, 4]), got {spec}")
        if version not in VERSIONS:
            raise ValueError(f"version: expected one of {list(VERSIONS)}, got {version!r}")
        self.session = session
        self.scale = check_scale(version, int(out.shape[0]))
        self.version = version
        self.precision = precision
        self.flow_scale = float(flow_scale)
        self.frame_spec = spec.inputs[1]
        self._prev = session.alloc(self.frame_spec.shape, np.uint8)
        self._out = session.host_array(out.shape, np.uint8)
        self._views = [self._out[i] for i in range(self.scale)]
        self._has_prev = False
        self.timings = Timings()
        self.runs = 0
        self.repeats = 0

    def reset(self) -> None:
        """Forget the previous frame (new character): the next `run` repeats its frame."""
        self._has_prev = False

    def _frame(self, frames: Any) -> np.ndarray:
        if not isinstance(frames, (list, tuple)) or len(frames) != 1:
            got = (f"{type(frames).__name__} of {len(frames)}" if isinstance(frames, (list, tuple))
                   else type(frames).__name__)
            raise ValueError(f"frames: expected a list holding one THA frame, got {got}")
        frame = frames[0]
        if not isinstance(frame, np.ndarray) and not (self.session.on_device and hasattr(frame, "memory")):
            raise ValueError(f"frames[0]: expected a uint8 {list(self.frame_spec.shape)} BGRA array, got "
                             f"{type(frame).__name__}")
        if tuple(frame.shape) != self.frame_spec.shape or np.dtype(frame.dtype) != np.uint8:
            raise ValueError(f"frames[0]: expected uint8{list(self.frame_spec.shape)}, got "
                             f"{np.dtype(frame.dtype)}{list(frame.shape)}")
        return frame

    def run(self, frames: list[Any]) -> list[Any]:
        """[THA frame] -> `scale` frames (views of the stage's buffer; see the class docstring)."""
        frame = self._frame(frames)
        s = self.session
        with self.timings.time("rife"):
            if not self._has_prev:
                if self.device_output:
                    result = [frame] * self.scale
                else:
                    s.to_host(frame, self._out[-1])
                    self._out[:-1] = self._out[-1]
                    result = list(self._views)
                self.repeats += 1
            else:
                res = s.run({INPUT_NAMES[0]: self._prev, INPUT_NAMES[1]: frame})[OUTPUT_NAME]
                if self.device_output:
                    result = [s.view(res, i) for i in range(self.scale)]
                else:
                    s.to_host(res, self._out)
                    result = list(self._views)
                self.runs += 1
            s.copy_into(self._prev, frame)
            self._has_prev = True
        return result

    def stats(self) -> dict[str, Any]:
        return {"version": self.version, "scale": self.scale, "precision": self.precision,
                "flow_scale": self.flow_scale,
                "device": bool(self.session.on_device), "device_output": bool(self.device_output),
                "runs": self.runs, "repeats": self.repeats, "latency": self.timings.summary()}

    def close(self) -> None:
        self.session.close()


def check_interpolation_options(interpolation_scale: Any, rife_model: Any) -> int:
    """Validate get_core's RIFE options before any work; returns the scale.

    ValueError naming `interpolation_scale` unless it is 2, 3 or 4; x3 without `rife_model` (the
    default HDv3 weights cannot do x3) raises `UnsupportedScaleError` (a ValueError).
    """
    if isinstance(interpolation_scale, bool) or not isinstance(interpolation_scale, (int, np.integer)) \
            or int(interpolation_scale) not in SCALES:
        raise ValueError(f"interpolation_scale: expected one of {list(SCALES)}, got {interpolation_scale!r}")
    scale = int(interpolation_scale)
    if rife_model is None:
        check_scale("hdv3", scale)
    elif not isinstance(rife_model, (str, os.PathLike)):
        raise ValueError(f"rife_model: expected None or the path of a RIFE v4.x flownet.pkl, got "
                         f"{type(rife_model).__name__}")
    elif not os.path.isfile(os.path.expanduser(os.fspath(rife_model))):
        raise FileNotFoundError(f"rife_model: no file at {os.fspath(rife_model)!r}")
    return scale


def create_rife_stage(interpolation_scale: int, half: bool | None = None, rife_model: str | os.PathLike | None = None,
                      backend: str = "auto", *, flow_scale: float | None = None,
                      **session_options: Any) -> RifeStage:
    """Find (or export, which needs torch) the RIFE graph and open it on `backend`.

    half: None = auto (fp16 on GPU backends, fp32 on the CPU; `ezvtb.engines.policy.resolve_precision`).
    flow_scale: resolution of the flow estimate (`FLOW_SCALES`); None = auto (`resolve_flow_scale`).
    """

    scale = check_interpolation_options(interpolation_scale, rife_model)
    if flow_scale is not None:
        check_flow_scale(flow_scale)
    require_backend(backend)  # before the export below
    kind = concrete_backend(backend)
    precision = resolve_precision(None if half is None else bool(half), kind)
    flow_scale = resolve_flow_scale(flow_scale, kind)
    graph = rife_graph(scale, precision, rife_model, flow_scale=flow_scale)
    session = create_session(graph.path, graph.spec, backend, **session_options)
    log.info("RIFE %s x%d %s, flow at %g of the frame size, on %s", graph.version, scale, precision, flow_scale,
             getattr(session, "backend", backend))
    return RifeStage(session, graph.version, precision, flow_scale)
