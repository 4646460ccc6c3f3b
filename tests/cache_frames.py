"""Synthetic characters, frames and poses shared by the output-cache tests and the child processes they start
(which import this module by path: `CHILD_HEADER`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# Prepended to the code a child process runs with ``python -c``: makes this module importable there.
CHILD_HEADER = f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\nimport numpy as np\n"


def character():
    y, x = np.mgrid[0:512, 0:512]
    img = np.zeros((512, 512, 4), np.uint8)
    inside = (x - 256) ** 2 / 150 ** 2 + (y - 280) ** 2 / 220 ** 2 < 1
    img[..., 0] = (x // 2) % 256
    img[..., 1] = (y // 2) % 256
    img[..., 2] = 128 + 100 * np.sin(x / 40.0)
    img[..., 3] = np.where(inside, 255, 0)
    return img


def render(i):
    f = character()
    f[..., 2] = np.roll(f[..., 2], 37 * i % 300, axis=1)
    f[40 * i: 40 * i + 30, 100:400, :3] = (53 * i) % 256
    return f


def frame(i):
    f = character()
    f[..., 2] = np.roll(f[..., 2], i % 300, axis=1)
    f[i % 500: i % 500 + 12, 100:400, :3] = (37 * i) % 256
    return f


def pose(i):
    """A pose with every parameter in [0, 1)."""
    return np.random.default_rng(i).random(45).astype(np.float32)


def signed_pose(i):
    """A pose with the rotation parameters (37:44) in [-1, 1)."""
    p = np.random.default_rng(i).random(45).astype(np.float32)
    p[37:44] = p[37:44] * 2 - 1
    return p


class ReplayTha:
    """The THA stage's interface (set_image, run, has_image, stats, close) over recorded frames."""

    def __init__(self, poses, frames):
        self.poses, self.frames, self.runs, self.has_image = poses, frames, 0, False
        self._out = np.empty_like(frames[0])

    def set_image(self, image):
        self.has_image = True

    def run(self, pose):
        i = next(i for i in range(len(self.poses)) if np.array_equal(self.poses[i], pose))
        self.runs += 1
        np.copyto(self._out, self.frames[i])
        return self._out

    def stats(self):
        return {"runs": self.runs}

    def close(self):
        pass


def psnr(a, b):
    import cv2

    return min(float(cv2.PSNR(a, b)), 99.0)  # over all four channels; 99 = identical
