"""`PipelinedCore`: frame N+1 renders while the caller consumes frame N (``get_core(pipelined=True)``).

`inference(pose)` validates the pose, hands it to a worker thread, and returns the frames of the
*previous* call's pose; the first call after `setImage` renders synchronously, and the second
returns that first frame again (nothing newer exists yet). So the output sequence for poses
p1, p2, p3, ... is f(p1), f(p1), f(p2), f(p3), ...: **one frame of extra latency** for up to a
full frame of overlap: everything the caller does between two calls (encoding, IPC, display)
runs while the GPU (or the CPU's ONNX Runtime threads, which release the GIL) renders the next
frame, including its download to host. Use it when throughput matters more than one frame of
delay (a 30 fps stream gains up to one render time per frame; a 33 ms extra delay).

Errors: a bad pose raises at once, before anything changes. An error inside the render (the
worker) is raised by the next call; that pose's frame is lost and the call after it returns
the last good frame again. `setImage` waits for the frame in flight and discards it.
`flush()` returns the frame still in flight (for offline rendering: the last pose's frame).

Buffers: the returned arrays belong to the pipelined core and are overwritten by the next call
(as with `Core`); they are copies of the stage buffers, taken when the worker's frame is
collected, so the worker can render the next frame into the stages' own buffers meanwhile.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ezvtb.core import Core
from ezvtb.pose import POSE_SIZE, validate_pose
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.pipeline")


class PipelinedCore:
    """Same API as `Core` (setImage, inference, stats, close); see the module docstring."""

    def __init__(self, core: Core) -> None:
        if not isinstance(core, Core):
            raise TypeError(f"core: expected a Core, got {type(core).__name__}")
        self.core = core
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ezvtb-pipeline")
        self._lock = threading.Lock()
        self._pending: Future | None = None
        self._have_frame = False
        self._out: list[np.ndarray] = []
        self.timings = Timings()
        self.repeats = 0
        self.worker_errors = 0

    # seed-compatible API -----------------------------------------------------------------------
    def setImage(self, img: np.ndarray) -> None:  # noqa: N802 - seed name
        """Set the character (see `Core.setImage`); the frame in flight is discarded."""
        with self._lock:
            self._drain()
            self.core.setImage(img)
            self._have_frame = False

    def inference(self, pose: Any) -> list[np.ndarray]:
        """Start `pose`'s frame; return the previous call's frames (see the module docstring)."""
        with self._lock:
            if not self.core.tha.has_image:
                raise RuntimeError("setImage must be called before inference")
            p = validate_pose(pose, "pose", out=np.empty(POSE_SIZE, np.float32))  # the worker's own copy
            if not self._have_frame:
                self._keep(self.core.inference(p))
                self._have_frame = True
                return list(self._out)
            if self._pending is not None:
                fut, self._pending = self._pending, None
                with self.timings.time("wait"):
                    try:
                        frames = fut.result()
                    except BaseException:
                        self.worker_errors += 1
                        raise
                self._keep(frames)
            else:
                self.repeats += 1  # second call after setImage, or the call after a worker error
            self._pending = self._pool.submit(self.core.inference, p)
            return list(self._out)

    def flush(self) -> list[np.ndarray] | None:
        """The frames of the pose still in flight (waits for them), or None if there is none."""
        with self._lock:
            if self._pending is None:
                return None
            fut, self._pending = self._pending, None
            self._keep(fut.result())
            return list(self._out)

    # helpers -------------------------------------------------------------------------------------
    def _keep(self, frames: list[np.ndarray]) -> None:
        """Copy the stages' frames into the pipelined core's own buffers (reused call to call)."""
        if len(self._out) != len(frames) or any(o.shape != f.shape or o.dtype != f.dtype
                                                 for o, f in zip(self._out, frames)):
            self._out = [np.empty_like(f) for f in frames]
        for o, f in zip(self._out, frames):
            np.copyto(o, f)

    def _drain(self) -> None:
        if self._pending is not None:
            fut, self._pending = self._pending, None
            try:
                fut.result()
            except Exception as e:  # noqa: BLE001 - a discarded frame's error is only logged
                log.debug("discarded in-flight frame failed: %s", e)

    # extras --------------------------------------------------------------------------------------
    @property
    def tha(self):
        return self.core.tha

    @property
    def after(self):
        return self.core.after

    @property
    def cache(self):
        return self.core.cache

    @property
    def variant(self) -> str:
        return self.core.variant

    def stats(self) -> dict[str, Any]:
        s = self.core.stats()
        s["pipelined"] = {"wait": self.timings.summary().get("wait", {}), "repeats": self.repeats,
                          "worker_errors": self.worker_errors, "in_flight": self._pending is not None}
        return s

    def close(self) -> None:
        with self._lock:
            self._drain()
            self._pool.shutdown(wait=True)
            self.core.close()

    def __enter__(self) -> "PipelinedCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
