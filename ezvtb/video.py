"""Writing BGRA frames to mp4 / gif (alpha composited on a background colour)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def composite(frame: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Alpha-composite a uint8 BGRA frame over a BGR background colour -> uint8 BGR (new array)."""
    a = frame[:, :, 3:4].astype(np.float32) * (1.0 / 255.0)
    bg = np.asarray(background, np.float32)
    out = frame[:, :, :3].astype(np.float32) * a + bg * (1.0 - a)
    return (out + 0.5).astype(np.uint8)


def parse_color(text: str) -> tuple[int, int, int]:
    """'#RRGGBB' or 'R,G,B' -> a BGR tuple (ValueError naming the argument otherwise)."""
    s = text.strip()
    try:
        if s.startswith("#") and len(s) == 7:
            r, g, b = (int(s[i:i + 2], 16) for i in (1, 3, 5))
        else:
            r, g, b = (int(v) for v in s.split(","))
    except ValueError:
        raise ValueError(f"background: expected '#RRGGBB' or 'R,G,B', got {text!r}") from None
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"background: channel values must be 0..255, got {text!r}")
    return (b, g, r)


class VideoWriter:
    """Writes BGRA frames to an mp4 (cv2, mp4v) and optionally a gif (Pillow).

    The file appears at `path` only when `close()` succeeds (written to a temporary name
    first), so an interrupted run never leaves a truncated video under the final name.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int],
                 background: tuple[int, int, int] = (255, 255, 255), gif: str | os.PathLike | None = None) -> None:
        import cv2

        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"out: expected a path ending in .mp4, got {str(path)!r}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp.mp4")
        self._w = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
        if not self._w.isOpened():
            raise OSError(f"out: cannot open an mp4 writer at {str(self._tmp)!r}")
        self.fps = fps
        self.background = background
        self.gif = Path(gif) if gif else None
        self._gif_frames: list[np.ndarray] = []
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        bgr = composite(frame, self.background)
        self._w.write(bgr)
        if self.gif is not None:
            self._gif_frames.append(bgr[:, :, ::-1].copy())
        self.frames += 1

    def close(self) -> None:
        self._w.release()
        os.replace(self._tmp, self.path)
        if self.gif is not None and self._gif_frames:
            from PIL import Image

            imgs = [Image.fromarray(f) for f in self._gif_frames]
            tmp = self.gif.with_name(f".{self.gif.stem}.{os.getpid()}.tmp.gif")
            imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(round(1000 / self.fps)), loop=0)
            os.replace(tmp, self.gif)

    def abort(self) -> None:
        self._w.release()
        if self._tmp.exists():
            self._tmp.unlink()
