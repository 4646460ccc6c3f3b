"""`Core`: the chained pipeline THA -> output cache -> RIFE -> super-resolution.

The public, seed-compatible names are `Core.setImage` and `Core.inference`; `get_core` in
`ezvtb.factory` builds a core from the seed's options.

Buffer ownership: the arrays returned by `inference` are owned by the core and are reused by
the next `inference` call (as in the seed interface). Consume or copy them before calling again.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import numpy as np

from ezvtb.image import validate_image
from ezvtb.pose import POSE_SIZE, validate_pose
from ezvtb.stages.tha import ThaStage
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.core")


class FrameCache(Protocol):
    """What the core needs from an output cache (see `ezvtb.cache`)."""

    def set_character(self, image: np.ndarray, variant: str) -> None: ...
    def get(self, pose: np.ndarray) -> np.ndarray | None: ...
    def put(self, pose: np.ndarray, frame: np.ndarray) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class FrameStage(Protocol):
    """A stage after THA (interpolation, super-resolution): frames in, frames out."""

    def reset(self) -> None: ...
    def run(self, frames: list[np.ndarray]) -> list[np.ndarray]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Core:
    """One character, one pipeline. Thread-safe: calls are serialised by a lock.

    `inference(pose)` accepts a pose of shape (45,) or (1, 45) (float32 preferred); values
    outside each parameter's range are clipped (table in `ezvtb.pose`). Returns a list of
    uint8 (H, W, 4) BGRA frames: 1 frame, or `interpolation_scale` frames with RIFE.
    Every error (bad image, bad pose) is raised before any state changes, so the core stays
    usable.
    """

    def __init__(self, tha: ThaStage, cache: FrameCache | None = None,
                 after: list[FrameStage] | None = None, pose_quantization: float | None = None,
                 variant: str = "") -> None:
        if pose_quantization is not None and not (0.0 < float(pose_quantization) <= 1.0):
            raise ValueError(f"pose_quantization: expected None or a step in (0, 1], got {pose_quantization!r}")
        self.tha = tha
        self.cache = cache
        self.after = list(after or [])
        self.pose_quantization = None if pose_quantization is None else float(pose_quantization)
        self.variant = variant
        self.timings = Timings()
        self._pose = np.zeros(POSE_SIZE, np.float32)
        self._lock = threading.Lock()
        self._frames = 0

    # seed-compatible API -------------------------------------------------------------------
    def setImage(self, img: np.ndarray) -> None:  # noqa: N802 - seed name
        """Set the character: uint8 (512, 512, 4) BGRA, straight alpha, transparent background."""
        img = validate_image(img, "img")
        with self._lock:
            self.tha.set_image(img)
            if self.cache is not None:
                self.cache.set_character(img, self.variant)
            for st in self.after:
                st.reset()

    def inference(self, pose: Any) -> list[np.ndarray]:
        """Render the next frame(s) for `pose`; see the class docstring for the contract."""
        with self._lock:
            if not self.tha.has_image:
                raise RuntimeError("setImage must be called before inference")
            p = validate_pose(pose, "pose", out=self._pose, step=self.pose_quantization)  # zeros: +0.0
            with self.timings.time("total"):
                frame = None
                if self.cache is not None:
                    with self.timings.time("cache_get"):
                        frame = self.cache.get(p)
                if frame is None:
                    with self.timings.time("tha"):
                        frame = self.tha.run(p)
                    if self.cache is not None:
                        self.cache.put(p, frame)
                frames = [frame]
                for st in self.after:
                    with self.timings.time(type(st).__name__):
                        frames = st.run(frames)
            self._frames += 1
            return frames

    # extras ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters and latencies of every stage (plain dict, JSON-serialisable)."""
        s: dict[str, Any] = {"frames": self._frames, "latency": self.timings.summary(), "tha": self.tha.stats()}
        if self.cache is not None:
            s["cache"] = self.cache.stats()
        for st in self.after:
            s[type(st).__name__] = st.stats()
        return s

    def close(self) -> None:
        with self._lock:
            if self.cache is not None:
                self.cache.close()
            for st in self.after:
                st.close()
            self.tha.close()

    def __enter__(self) -> "Core":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
