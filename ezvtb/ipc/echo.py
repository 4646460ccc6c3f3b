"""`EchoCore`: the ``echo`` engine of ``ezvtb serve`` -- a frame source with the `Core` API and no model.

It exists so that an application can develop and test its IPC integration (frame handling,
pacing, error paths) on any machine in milliseconds, without weights, exports or a GPU:
``ezvtb serve --engine echo`` / ``Client.spawn(engine="echo")``.

What it renders: the character image translated by the head pose, ``dx = round(32 * head_y)``,
``dy = round(32 * head_x)`` pixels (uncovered pixels transparent). Like the RIFE stage it returns
`frames` frames per call: frame ``i`` of ``n`` uses the pose linearly interpolated from the
previous call's pose to this one at ``(i + 1) / n`` (the last frame is this pose exactly; after
`setImage` the previous pose is reset to this one). Validation, errors and buffer reuse are the
core's: same `validate_image` / `validate_pose`, the same RuntimeError before `setImage`, and the
returned arrays are owned by the engine and overwritten by the next `inference` call.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ezvtb.image import IMAGE_SHAPE, validate_image
from ezvtb.models.rife.spec import SCALES
from ezvtb.options import check_option_names, frames_per_pose, option_defaults
from ezvtb.pose import POSE_SIZE, index, validate_pose
from ezvtb.stages.timing import Timings

SHIFT_PIXELS = 32
HEAD_X, HEAD_Y = index("head_x"), index("head_y")


def echo_frames(options: Mapping[str, Any]) -> int:
    """Frames per inference the echo engine gives for get_core options (`frames_per_pose`).

    Option names are checked as the core checks them; of the values only `use_interpolation` and
    `interpolation_scale` (any of 2, 3, 4: no RIFE weights are involved) matter here.
    """
    check_option_names(options)
    defaults = option_defaults()
    use = options.get("use_interpolation", defaults["use_interpolation"])
    scale = options.get("interpolation_scale", defaults["interpolation_scale"])
    if not use:
        return 1
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) not in SCALES:
        raise ValueError(f"interpolation_scale: expected one of {list(SCALES)}, got {scale!r}")
    return frames_per_pose(use, scale)


def shift_image(img: np.ndarray, dx: int, dy: int, out: np.ndarray) -> np.ndarray:
    """`out` = `img` moved right by `dx` and down by `dy` pixels, transparent (zero) elsewhere."""
    h, w = img.shape[:2]
    out.fill(0)
    if abs(dx) < w and abs(dy) < h:
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0),
                                                                         max(-dx, 0):w - max(dx, 0)]
    return out


class EchoCore:
    """Core-compatible echo engine; `frames` outputs per `inference` (1..4). Thread-safe."""

    def __init__(self, frames: int = 1) -> None:
        if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= int(frames) <= 4:
            raise ValueError(f"frames: expected an int in 1..4, got {frames!r}")
        self.n = int(frames)
        self._image: np.ndarray | None = None
        self._out = [np.zeros(IMAGE_SHAPE, np.uint8) for _ in range(self.n)]
        self._pose = np.zeros(POSE_SIZE, np.float32)
        self._prev: np.ndarray | None = None
        self._lock = threading.Lock()
        self._frames = 0
        self.timings = Timings()

    @property
    def has_image(self) -> bool:
        return self._image is not None

    def setImage(self, img: np.ndarray) -> None:  # noqa: N802 - Core API
        """Set the character: uint8 (512, 512, 4) BGRA (copied)."""
        img = validate_image(img, "img")
        with self._lock:
            self._image = img.copy()
            self._prev = None

    def inference(self, pose: Any) -> list[np.ndarray]:
        """`frames` uint8 (512, 512, 4) frames for `pose` (owned here, reused by the next call)."""
        with self._lock:
            if self._image is None:
                raise RuntimeError("setImage must be called before inference")
            p = validate_pose(pose, "pose", out=self._pose)
            with self.timings.time("total"):
                prev = p.copy() if self._prev is None else self._prev
                for i, out in enumerate(self._out):
                    t = (i + 1) / self.n
                    hx = prev[HEAD_X] + (p[HEAD_X] - prev[HEAD_X]) * t
                    hy = prev[HEAD_Y] + (p[HEAD_Y] - prev[HEAD_Y]) * t
                    shift_image(self._image, int(round(SHIFT_PIXELS * float(hy))),
                                int(round(SHIFT_PIXELS * float(hx))), out)
                self._prev = p.copy()
            self._frames += 1
            return list(self._out)

    def stats(self) -> dict[str, Any]:
        return {"frames": self._frames, "latency": self.timings.summary(), "engine": "echo"}

    def close(self) -> None:
        pass

    def __enter__(self) -> "EchoCore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
