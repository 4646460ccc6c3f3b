"""Webcam and video-file pose sources: OpenCV frames -> `ezvtb.live.facetrack.FaceTracker` -> the latest pose.

URLs (`open_camera_source`, registered in `ezvtb.live.sources`): ``cam://0`` (camera index),
``cam://PATH.mp4`` or ``video://PATH`` (a video file) with options ``width``, ``height``, ``fps`` (capture
settings; for files ``fps`` overrides the file's rate), ``loop`` (files, default 0), ``step=1`` (files: one
frame per `latest` call, for tests and offline use), ``iris=0`` (the plain mesh: a little faster, no gaze),
``profile=PATH`` (calibration JSON), ``record=PATH.npy``
(write the poses produced, an ``(N, 45)`` array playable with ``file://``), plus every live option
(filter, ``mirror``, ``invert``, mapping numbers).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from ezvtb.live.facetrack import FaceTracker
from ezvtb.live.mapping import breathing_value
from ezvtb.live.source_base import (
    TRACKER_KEYS,
    PoseSample,
    PoseSource,
    filter_params,
    inverted_axes,
    mapping_config,
    query_bool,
    query_number,
)
from ezvtb.pose import POSE_SIZE, index

log = logging.getLogger("ezvtb.live.camera")

BREATHING = index("breathing")

CAMERA_KEYS = {"width", "height", "fps", "loop", "step", "profile", "record", "backend", "threads", "iris"}


class CameraSource(PoseSource):
    """Frames from OpenCV (a camera index or a video file) -> `FaceTracker` -> the latest pose.

    Cameras and real-time file playback run on a daemon thread and keep only the latest pose; with
    ``step`` (files only) each `latest` call reads and tracks the next frame. Files are timed by their
    own frame rate (or `fps`): the filter sees video time, so a file gives the same poses at any speed.
    Frames without a face keep the previous pose. `record` writes every pose produced to an ``.npy``
    file at `close` (atomically). `tracker` may be a factory, called once the capture has opened (a
    missing camera or file fails before the networks load).
    """

    def __init__(self, url: str, target: int | str, tracker: FaceTracker | Callable[[], FaceTracker], *,
                 width: int | None = None,
                 height: int | None = None, fps: float | None = None, loop: bool = False, step: bool = False,
                 record: str | os.PathLike | None = None) -> None:
        self.url = url
        self.is_file = isinstance(target, str)
        if step and not self.is_file:
            raise ValueError(f"input {url}: step=1 needs a video file, not a camera")
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            what = f"video file {target!r}" if self.is_file else f"camera {target}"
            raise OSError(f"input {url}: OpenCV cannot open the {what}")
        if width:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, int(width))
        if height:
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, int(height))
        if fps and not self.is_file:
            self.cap.set(cv2.CAP_PROP_FPS, float(fps))
        file_fps = self.cap.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
        self.fps = float(fps) if fps else (file_fps if file_fps and file_fps > 0 else 30.0)
        if not isinstance(tracker, FaceTracker):  # a factory: built once the capture is known to work
            try:
                tracker = tracker()
            except BaseException:
                self.cap.release()
                raise
        self.tracker = tracker
        self.loop, self.step = bool(loop), bool(step)
        self.record_path = Path(record) if record else None
        self.recorded: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._sample: PoseSample | None = None
        self._seq = 0
        self._frame_index = 0
        self._time_base = 0.0
        self._ended = False
        self._ahead: tuple[np.ndarray, float] | None = None
        self.frames_read = self.faces = self.read_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "CameraSource":
        if self._thread is None and not self.step:
            self._thread = threading.Thread(target=self._loop, name="ezvtb-source-camera", daemon=True)
            self._thread.start()
            log.info("%s: tracking at %.1f fps", self.url, self.fps)
        return self

    def _next_frame(self) -> tuple[np.ndarray, float] | None:
        """(frame, time in s) or None at the end of a non-looping file; files: video time, cameras: wall clock."""
        ok, frame = self.cap.read()
        if not ok and self.is_file and self.loop and self.frames_read:
            self._time_base += self._frame_index / self.fps
            self._frame_index = 0
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        if not ok:
            if self.is_file:
                self._ended = True
            else:
                self.read_errors += 1
            return None
        t = self._time_base + self._frame_index / self.fps if self.is_file else time.perf_counter()
        self._frame_index += 1
        self.frames_read += 1
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        return frame, t

    def _track(self, frame: np.ndarray, t: float) -> None:
        pose = self.tracker.track(frame, t)
        if pose is None:
            return
        self.faces += 1
        if self.record_path is not None:
            self.recorded.append(pose.copy())
        with self._lock:
            self._seq += 1
            self._sample = PoseSample(pose, time.perf_counter(), self._seq)

    def _loop(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            got = self._next_frame()
            if got is None:
                if self._ended:
                    break
                self._stop.wait(0.01)
                continue
            frame, t = got
            if self.is_file:  # real-time playback: wait for the frame's time
                wait = t0 + t - time.perf_counter()
                if wait > 0 and self._stop.wait(wait):
                    break
            try:
                self._track(frame, t)
            except Exception:  # noqa: BLE001 - one bad frame must not kill the source
                log.exception("%s: tracking failed on a frame", self.url)

    def latest(self) -> PoseSample | None:
        if self.step and not self._ended:
            got = self._ahead if self._ahead is not None else self._next_frame()
            if got is not None:
                self._track(*got)
                self._ahead = self._next_frame()  # read one ahead, so `finished` is set with the last frame
        with self._lock:
            s = self._sample
        if s is None:
            return None
        pose = s.pose.copy()
        pose[BREATHING] = breathing_value(time.perf_counter(), self.tracker.mapper.config.breathing_period)
        return PoseSample(pose, s.t, s.seq)

    @property
    def finished(self) -> bool:
        """True at the end of a non-looping video file."""
        return self._ended

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "packets": self.frames_read, "malformed": 0, "poses": self._seq,
                "frames_with_face": self.faces, "read_errors": self.read_errors, **self.tracker.stats()}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.cap.release()
        self.tracker.close()
        if self.record_path is not None:
            from ezvtb.atomic import atomic_write

            arr = np.stack(self.recorded) if self.recorded else np.zeros((0, POSE_SIZE), np.float32)
            with atomic_write(self.record_path) as f:
                np.save(f, arr.astype(np.float32))
            log.info("%s: %d poses recorded to %s", self.url, len(arr), self.record_path)
            self.record_path = None


def open_camera_source(url: str, scheme: str, rest: str, q: Mapping[str, str]) -> CameraSource:
    """`CameraSource` for ``cam://INDEX``, ``cam://PATH`` or ``video://PATH`` with query `q` (module docstring)."""
    import urllib.parse

    unknown = sorted(set(q) - (TRACKER_KEYS | CAMERA_KEYS))
    if unknown:
        raise ValueError(f"input: unknown option(s) {unknown} for {scheme}:// (allowed: "
                         f"{sorted(TRACKER_KEYS | CAMERA_KEYS)})")
    rest = urllib.parse.unquote(rest)
    if not rest:
        raise ValueError(f"input: {scheme}:// needs a camera index (cam://0) or a video file path, got {url!r}")
    target: int | str
    if scheme == "cam" and rest.isdigit():
        target = int(rest)
    else:
        if not Path(rest).is_file():
            raise ValueError(f"input: no video file {rest!r} in {url!r} (a camera is cam://INDEX, e.g. cam://0)")
        target = rest
    size = {}
    for k in ("width", "height"):
        if k in q:
            v = query_number(k, q[k])
            if v < 1 or v != int(v):
                raise ValueError(f"input: {k} expects a positive integer (pixels), got {q[k]!r}")
            size[k] = int(v)
    fps = query_number("fps", q["fps"]) if "fps" in q else None
    if fps is not None and fps <= 0:
        raise ValueError(f"input: fps expects a number > 0, got {q['fps']!r}")
    invert = inverted_axes(q)
    profile = q.get("profile") or None
    if profile is not None and not Path(profile).is_file():
        raise ValueError(f"input: profile={profile!r}: no such file (write one with FaceTracker.calibrate)")
    record = q.get("record") or None
    if record is not None and not Path(record).parent.resolve().is_dir():
        raise ValueError(f"input: record={record!r}: its folder does not exist")
    kw: dict[str, Any] = {"backend": q.get("backend", "cpu"),
                          "threads": int(query_number("threads", q.get("threads", "1"))),
                          "profile": profile, "mapping": mapping_config(q), "filter_params": filter_params(q),
                          "invert": invert, "iris": query_bool("iris", q.get("iris", "1"))}
    loop, step = query_bool("loop", q.get("loop", "0")), query_bool("step", q.get("step", "0"))
    src = CameraSource(url, target, lambda: FaceTracker(**kw), fps=fps, loop=loop, step=step, record=record, **size)
    return src.start()
