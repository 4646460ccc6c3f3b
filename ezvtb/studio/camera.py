"""The browser's camera as a live source: the page sends camera frames (JPEG) over a WebSocket, the server runs
`ezvtb.live.facetrack.FaceTracker` on each and keeps the newest pose for the render loop."""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ezvtb.live.sources import PoseSample, PoseSource

MAX_FRAME_BYTES = 4 * 1024 * 1024
MAX_FRAME_SIDE = 1920


class BrowserCameraSource(PoseSource):
    """Poses from frames pushed by the page (`feed`); `latest()` is the newest tracked pose, or None before
    the first face. `mirror` swaps left and right as a selfie view does."""

    def __init__(self, mirror: bool = False, tracker: Any = None) -> None:
        if tracker is None:
            from ezvtb.live.facetrack import FaceTracker
            from ezvtb.live.mapping import MappingConfig

            tracker = FaceTracker(mapping=MappingConfig(mirror=bool(mirror)))
        self.tracker = tracker
        self.url = "browser camera" + (" (mirrored)" if mirror else "")
        self._lock = threading.Lock()
        self._latest: PoseSample | None = None
        self.frames = self.faces = 0
        self.closed = False

    def feed(self, data: bytes) -> bool:
        """Track one encoded frame (JPEG/PNG/WebP); True when a face was found. ValueError for bad data or
        after `close`."""
        import cv2

        if self.closed:
            raise ValueError("camera: the live source was stopped; start Live with the browser camera again")
        if not data or len(data) > MAX_FRAME_BYTES:
            raise ValueError(f"camera: expected an encoded frame of 1 byte to {MAX_FRAME_BYTES // 2**20} MB, "
                             f"got {len(data)} bytes")
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError("camera: a frame the server cannot decode (expected JPEG, PNG or WebP)")
        if max(frame.shape[:2]) > MAX_FRAME_SIDE:
            raise ValueError(f"camera: frames up to {MAX_FRAME_SIDE} pixels a side, got {frame.shape[1]}x"
                             f"{frame.shape[0]}")
        with self._lock:
            if self.closed:
                raise ValueError("camera: the live source was stopped")
            pose = self.tracker.track(frame)
            self.frames += 1
            if pose is None:
                return False
            self.faces += 1
            self._latest = PoseSample(pose, time.perf_counter(), self.faces)
            return True

    def latest(self) -> PoseSample | None:
        return self._latest

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "frames": self.frames, "faces": self.faces, **self.tracker.stats()}

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self.tracker.close()
