"""Frames in and out: mp4 / gif / image folders / globs read as RGBA PIL images; mp4 written atomically
(`ezvtb.video`)."""
from __future__ import annotations

import glob as _glob
import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def read_frames(input_path: str | os.PathLike, n_frames: int | None = None) -> list:
    """The first `n_frames` frames (all when None) of an mp4, a gif, a folder of images or a glob, as PIL."""
    from PIL import Image, ImageSequence

    p = str(input_path)
    path = Path(p)
    frames = []
    if path.is_file() and path.suffix.lower() == ".gif":
        with Image.open(path) as im:
            for fr in ImageSequence.Iterator(im):
                frames.append(fr.convert("RGBA"))
                if n_frames and len(frames) == n_frames:
                    break
    elif path.is_file() and path.suffix.lower() in (".mp4", ".mov", ".avi", ".webm", ".mkv"):
        import cv2

        cap = cv2.VideoCapture(p)
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                if n_frames and len(frames) == n_frames:
                    break
        finally:
            cap.release()
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        frames = [Image.open(path).copy()]
    elif path.is_dir() or "*" in p:
        files = (sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir()
                 else sorted(Path(f) for f in _glob.glob(p)))
        for f in files[: n_frames or None]:
            with Image.open(f) as im:
                frames.append(im.copy())
    else:
        raise ValueError(f"input_path: {p!r} is not an mp4, a gif, an image, a folder of images or a glob")
    return frames


def write_mp4(path: str | os.PathLike, frames, fps: float = 10.0) -> Path:
    """Write uint8 (T, H, W, 3) RGB frames as an H.264 mp4 (`ezvtb.video.write_video`: atomic, checked)."""
    from ezvtb.video import write_video

    return write_video(path, [np.ascontiguousarray(f) for f in frames], fps)


def tensor_to_uint8(frames) -> np.ndarray:
    """(T, 3, H, W) float in [0, 1] -> (T, H, W, 3) uint8."""
    return (frames.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
