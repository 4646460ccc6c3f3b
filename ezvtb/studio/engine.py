"""The studio's render loop: one core, one background thread, never waiting for a browser.

`RenderLoop` owns the core. Everything that touches the core runs on its thread, in this order of
precedence: queued commands (set the character, rebuild the core, start/stop live, switch outputs),
a running job (one frame per turn, e.g. a talking video), the live source (paced at its fps: every
frame goes to every output sink), and the poser (latest value wins: a slider that moves while a
frame renders replaces the pending pose, so no stale render is ever queued).

Every rendered frame is published to a `FrameBus`, which keeps only the newest one. Pages read it at
their own speed; a slow or closed tab misses preview frames and never delays the loop or an output.
"""
from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from ezvtb.pose import POSE_SIZE, validate_pose

log = logging.getLogger("ezvtb.studio")


class FrameBus:
    """The newest rendered frame and what it shows; publishers never wait, readers take the newest.

    `publish` copies the BGRA frame (the core reuses its buffers). `wait(after, fmt)` blocks until a frame
    newer than sequence number `after` exists and returns (seq, data, meta): ``fmt="png"`` a PNG with alpha,
    ``fmt="rgba"`` the raw RGBA bytes (no compression: for pages on this machine, where encoding and decoding a
    PNG would cost more than copying a megabyte). Each frame is encoded at most once per format, by the first
    reader that asks for it, never on the render thread.
    """

    FORMATS = ("png", "rgba")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._encode_lock = threading.Lock()
        self.seq = 0
        self._frame: np.ndarray | None = None
        self._meta: dict[str, Any] = {}
        self._encoded: dict[str, tuple[int, bytes]] = {}
        self._listeners: set[Callable[[], None]] = set()

    def publish(self, frame: np.ndarray, meta: dict[str, Any]) -> int:
        copy = np.array(frame, np.uint8, copy=True)
        with self._cond:
            self.seq += 1
            self._frame, self._meta = copy, {**meta, "seq": self.seq, "t": time.time(),
                                             "width": copy.shape[1], "height": copy.shape[0]}
            self._cond.notify_all()
            listeners = list(self._listeners)
        for notify in listeners:  # must not block (e.g. an event loop's call_soon_threadsafe)
            try:
                notify()
            except RuntimeError:  # its event loop has closed
                self._listeners.discard(notify)
        return self.seq

    def listen(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call `notify()` (from the render thread, so it must not block) after each publish; returns the
        function that stops it."""
        with self._cond:
            self._listeners.add(notify)
        return lambda: self._listeners.discard(notify)

    def take(self, after: int, fmt: str) -> tuple[int, bytes, dict[str, Any]] | None:
        """The newest frame if it is newer than `after` (encoded as `wait` does), else None; never blocks."""
        return self.wait(after, 0.0, fmt)

    def latest(self) -> tuple[int, np.ndarray | None, dict[str, Any]]:
        with self._cond:
            return self.seq, self._frame, dict(self._meta)

    def wait(self, after: int, timeout: float, fmt: str = "png") -> tuple[int, bytes, dict[str, Any]] | None:
        if fmt not in self.FORMATS:
            raise ValueError(f"format: expected one of {self.FORMATS}, got {fmt!r}")
        with self._cond:
            if not self._cond.wait_for(lambda: self.seq > after and self._frame is not None, timeout):
                return None
            seq, frame, meta = self.seq, self._frame, dict(self._meta)
        return seq, self.encoded(seq, frame, fmt), {**meta, "format": fmt}

    def encoded(self, seq: int, frame: np.ndarray, fmt: str) -> bytes:
        with self._encode_lock:
            cached = self._encoded.get(fmt)
            if cached is None or cached[0] != seq:
                import cv2

                data = encode_png(frame) if fmt == "png" else cv2.cvtColor(frame, cv2.COLOR_BGRA2RGBA).tobytes()
                cached = self._encoded[fmt] = (seq, data)
            return cached[1]


def encode_png(frame: np.ndarray, level: int = 1) -> bytes:
    """A BGRA frame as PNG bytes with its alpha (fast compression: previews, not archives)."""
    import cv2

    ok, buf = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise RuntimeError("could not encode the frame as PNG")
    return buf.tobytes()


class Job:
    """A long render that uses the core one frame at a time (`step` returns False when done).

    Subclasses set `total` and implement `step(core)`; `finish` runs once after the last step,
    `abort` when the job fails or is cancelled. `progress`, `message`, `result` and `error` are read by
    the page.
    """

    kind = "job"

    def __init__(self) -> None:
        self.total = 1
        self.done = 0
        self.state = "queued"
        self.message = ""
        self.error: str | None = None
        self.result: dict[str, Any] | None = None
        self.cancelled = threading.Event()

    def step(self, core: Any) -> tuple[bool, np.ndarray | None]:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "done": self.done, "total": self.total,
                "message": self.message, "error": self.error, "result": self.result}


class LiveSession:
    """A running live source, its pacing and its output sinks (owned by the render thread)."""

    def __init__(self, source: Any, fps: float, describe: str) -> None:
        self.source = source
        self.fps = float(fps)
        self.describe = describe
        self.sinks: dict[str, Any] = {}
        self.next_t = time.perf_counter()
        self.ticks = 0
        self.frames_out = 0
        self.dropped_ticks = 0
        self.started = time.perf_counter()

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            close_sink(name, sink)
        self.sinks.clear()
        try:
            self.source.close()
        except Exception as e:  # noqa: BLE001 - closing must not stop the loop
            log.warning("closing the live source: %s", e)


def close_sink(name: str, sink: Any) -> None:
    try:
        sink.close()
    except Exception as e:  # noqa: BLE001 - a sink that fails to close is reported, the loop goes on
        log.warning("closing output %s: %s", name, e)


class RenderLoop:
    """One core rendering on one background thread (module docstring).

    `build_core()` makes the core (called on the render thread at start and by `rebuild`).
    Methods that change the core's state (`set_image`, `rebuild`, `start_live`, ...) queue a command and
    return a Future with its result or its exception; `set_pose` never waits.
    """

    def __init__(self, build_core: Callable[[], Any], image: np.ndarray | None = None) -> None:
        self._build_core = build_core
        self.bus = FrameBus()
        self.core: Any = None
        self.core_error: str | None = None
        self.image = image
        self._pose = np.zeros(POSE_SIZE, np.float32)
        self._pose_version = 0
        self._rendered_version = -1
        self._pose_lock = threading.Lock()
        self._commands: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.live: LiveSession | None = None
        self.job: Job | None = None
        self.last_job: Job | None = None
        self.rendered = 0
        self.render_ms: deque[float] = deque(maxlen=64)
        self._render_times: deque[float] = deque(maxlen=64)
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ezvtb-studio-render", daemon=True)

    # --- called from any thread --------------------------------------------------------------
    def start(self) -> "RenderLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def set_pose(self, pose: Any) -> int:
        """Replace the pose the poser shows (validated, clipped); returns its version. Never waits.
        The same pose again keeps its version (a slider release after its last move renders nothing new)."""
        p = validate_pose(pose, "pose")
        with self._pose_lock:
            if self._pose_version and np.array_equal(p, self._pose):
                return self._pose_version
            self._pose[:] = p
            self._pose_version += 1
            v = self._pose_version
        self._wake.set()
        return v

    def pose(self) -> tuple[np.ndarray, int]:
        with self._pose_lock:
            return self._pose.copy(), self._pose_version

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the render thread between two frames; the Future holds its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.append((fn, fut))
        self._wake.set()
        return fut

    def call(self, fn: Callable[[], Any], timeout: float = 600.0) -> Any:
        """`submit` and wait for the result (re-raises the command's exception)."""
        return self.submit(fn).result(timeout)

    def stats(self) -> dict[str, Any]:
        now = time.perf_counter()
        render_ms = list(self.render_ms)  # one copy (the render thread appends meanwhile)
        times = list(self._render_times)[-16:]  # the last renders, while they are recent
        recent = bool(times) and now - times[-1] < 2.0 * (times[-1] - times[0]) / max(1, len(times) - 1) + 1.0
        fps = (len(times) - 1) / (times[-1] - times[0]) if recent and len(times) > 1 and times[-1] > times[0] else 0.0
        out: dict[str, Any] = {
            "ready": self.ready.is_set() and self.core is not None, "core_error": self.core_error,
            "rendered": self.rendered, "preview_seq": self.bus.seq, "fps": round(fps, 2),
            "render_ms_p50": float(np.median(render_ms)) if render_ms else None,
            "mode": "job" if self.job else ("live" if self.live else "poser"),
            "pose_version": self._pose_version, "preview": {k: v for k, v in self.bus.latest()[2].items() if k != "t"},
        }
        live = self.live
        if live is not None:
            elapsed = max(1e-9, now - live.started)
            src = live.source.stats() if hasattr(live.source, "stats") else {}
            out["live"] = {"source": live.describe, "target_fps": live.fps, "ticks": live.ticks,
                           "frames_out": live.frames_out, "dropped_ticks": live.dropped_ticks,
                           "fps": round(live.ticks / elapsed, 2), "outputs": sorted(live.sinks),
                           "source_stats": _plain(src)}
        job = self.job or self.last_job
        if job is not None:
            out["job"] = job.status()
        core = self.core
        if core is not None:
            try:
                out["core"] = _plain(core.stats())
            except Exception as e:  # noqa: BLE001 - stats must never break the page
                out["core"] = {"error": str(e)}
        return out

    # --- render thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.core = self._build_core()
            if self.image is not None:
                self.core.setImage(self.image)
        except Exception as e:  # noqa: BLE001 - shown in the page; commands may rebuild it
            self.core_error = f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e)
            log.error("the core could not be built: %s", self.core_error)
        self.ready.set()
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception as e:  # noqa: BLE001 - the loop survives any single failure
                log.exception("render loop: %s", e)
                time.sleep(0.2)
        if self.live is not None:
            self.live.close()
            self.live = None
        if self.job is not None:
            self.job.abort()
        if self.core is not None:
            self.core.close()

    def _turn(self) -> None:
        while self._commands:
            fn, fut = self._commands.popleft()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)
        if self.job is not None:
            self._job_turn(self.job)
            return
        if self.core is None or self.image is None:
            self._idle(1.0)
            return
        if self.live is not None:
            self._live_turn(self.live)
            return
        pose, version = self.pose()
        if version == self._rendered_version:
            self._idle(1.0)
            return
        frames = self._render(pose)
        self._rendered_version = version
        self.bus.publish(frames[-1], {"source": "poser", "pose_version": version,
                                      "render_ms": self.render_ms[-1]})

    def _idle(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def _render(self, pose: np.ndarray) -> list[np.ndarray]:
        t0 = time.perf_counter()
        frames = self.core.inference(pose)
        t1 = time.perf_counter()
        self.render_ms.append((t1 - t0) * 1e3)
        self._render_times.append(t1)
        self.rendered += 1
        return frames

    def _live_turn(self, live: LiveSession) -> None:
        now = time.perf_counter()
        if now < live.next_t:
            self._idle(live.next_t - now)
            return
        sample = live.source.latest()
        pose = np.zeros(POSE_SIZE, np.float32) if sample is None else sample.pose
        frames = self._render(pose)
        for f in frames:  # outputs get every frame, synchronously; the preview only the newest
            for name, sink in list(live.sinks.items()):
                try:
                    sink.write(f)
                except Exception as e:  # noqa: BLE001 - a failing output is switched off, live goes on
                    log.error("output %s failed and was switched off: %s", name, e)
                    live.sinks.pop(name, None)
                    close_sink(name, sink)
            live.frames_out += 1
        live.ticks += 1
        self.bus.publish(frames[-1], {"source": "live", "tick": live.ticks, "render_ms": self.render_ms[-1]})
        period = 1.0 / live.fps
        live.next_t += period
        done = time.perf_counter()
        if done > live.next_t:  # late: skip missed ticks instead of running them back to back
            missed = int((done - live.next_t) // period) + 1
            live.dropped_ticks += missed
            live.next_t += missed * period
        if getattr(live.source, "finished", False):
            log.info("live source finished")
            live.close()
            self.live = None

    def _job_turn(self, job: Job) -> None:
        if job.cancelled.is_set():
            job.state, job.message = "cancelled", "cancelled"
            job.abort()
            self._end_job(job)
            return
        try:
            job.state = "running"
            more, frame = job.step(self.core)
            if frame is not None:
                self._render_times.append(time.perf_counter())
                self.rendered += 1
                self.bus.publish(frame, {"source": job.kind, "done": job.done, "total": job.total})
            if not more:
                job.finish()
                job.state = "done"
                self._end_job(job)
        except Exception as e:  # noqa: BLE001 - reported in the page; the loop goes on
            job.state = "failed"
            job.error = str(e) if isinstance(e, (ValueError, OSError, RuntimeError)) else f"{type(e).__name__}: {e}"
            log.error("%s failed: %s", job.kind, job.error)
            job.abort()
            self._end_job(job)

    def _end_job(self, job: Job) -> None:
        self.last_job, self.job = job, None
        self._rendered_version = -1  # show the poser's pose again

    # --- commands (run on the render thread through `call`) ------------------------------------
    def cmd_set_image(self, image: np.ndarray) -> None:
        self._need_core()
        self.core.setImage(image)
        self.image = image
        self._rendered_version = -1

    def cmd_rebuild(self) -> None:
        """Replace the core by a new one from `build_core` (the old one stays when building fails)."""
        if self.live is not None or self.job is not None:
            raise ValueError("core options: stop Live and wait for the running job before changing options")
        core = self._build_core()
        try:
            if self.image is not None:
                core.setImage(self.image)
        except Exception:
            core.close()
            raise
        old, self.core, self.core_error = self.core, core, None
        if old is not None:
            old.close()
        self._rendered_version = -1

    def cmd_start_live(self, session: LiveSession) -> None:
        self._need_core()
        if self.job is not None:
            session.close()
            raise ValueError("live: a job is rendering; wait for it or cancel it first")
        if self.live is not None:
            self.live.close()
        session.next_t = time.perf_counter()
        session.started = session.next_t
        self.live = session

    def cmd_stop_live(self) -> bool:
        if self.live is None:
            return False
        self.live.close()
        self.live = None
        self._rendered_version = -1
        return True

    def cmd_set_output(self, name: str, sink: Any | None) -> None:
        if self.live is None:
            if sink is not None:
                sink.abort()
            raise ValueError("outputs: start a live source first")
        old = self.live.sinks.pop(name, None)
        if old is not None:
            close_sink(name, old)
        if sink is not None:
            self.live.sinks[name] = sink

    def cmd_start_job(self, job: Job) -> None:
        self._need_core()
        if self.live is not None:
            raise ValueError(f"{job.kind}: stop Live first (one core renders one thing at a time)")
        if self.job is not None:
            raise ValueError(f"{job.kind}: a {self.job.kind} job is already rendering")
        self.job = job

    def _need_core(self) -> None:
        if self.core is None:
            raise RuntimeError(f"the core is not available: {self.core_error or 'still loading'}")


def _plain(obj: Any) -> Any:
    """`obj` with numpy scalars turned into Python numbers and NaN/inf into None (JSON-safe)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)
