"""Video in and out for `SDVideo`: GIF, PNG sequence, MP4/WebM writers and an image-sequence reader.

A video is what `SDVideo` returns: a tensor (1, 3, f, h, w) (or (3, f, h, w)) with values in
[0, 1]. Every file is written atomically (a temporary sibling, then a rename).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ezvtb.atomic import atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GIF_SECONDS = 2.0  # sd-video's save_gif spreads the frames over two seconds


def video_to_uint8(x: Any) -> np.ndarray:
    """(1, 3, f, h, w) or (3, f, h, w) tensor/array in [0, 1] -> uint8 (f, h, w, 3)."""
    a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    if a.ndim == 5:
        if a.shape[0] != 1:
            raise ValueError(f"video: expected batch size 1, got shape {list(a.shape)}")
        a = a[0]
    if a.ndim != 4 or a.shape[0] != 3:
        raise ValueError(f"video: expected shape (1, 3, frames, height, width) or (3, frames, h, w), "
                         f"got {list(a.shape)}")
    return (np.clip(a.transpose(1, 2, 3, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_gif(images: Any, path: str | os.PathLike, duration: float = GIF_SECONDS) -> Path:
    """Write video `images` as a looping GIF lasting `duration` seconds in total (atomic, checked)."""
    from ezvtb.video import write_gif

    frames = video_to_uint8(images)
    return write_gif(path, frames, duration / len(frames))


def save_pngs(x: Any, folder: str | os.PathLike, prefix: str = "frame_") -> list[Path]:
    """Write each frame as ``<folder>/<prefix>0000.png`` ...; returns the paths."""
    from PIL import Image

    folder = Path(folder)
    out = []
    for i, frame in enumerate(video_to_uint8(x)):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        p = folder / f"{prefix}{i:04d}.png"
        with atomic_write(p) as f:
            f.write(buf.getvalue())
        out.append(p)
    return out


def save_mp4(x: Any, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """Write video `x` as an H.264 MP4 (`ezvtb.video.write_video`: atomic, checked)."""
    from ezvtb.video import write_video

    return write_video(path, video_to_uint8(x), fps)


def save_video(x: Any, path: str | os.PathLike, fps: float = 8.0) -> Path:
    """By suffix: .gif, .mp4, .webm, or a folder of PNGs (no suffix)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return save_gif(x, path)
    if suffix == ".mp4":
        return save_mp4(x, path, fps)
    if suffix == "":
        save_pngs(x, path)
        return path
    if suffix == ".webm":
        return save_mp4(x, path, fps)
    raise ValueError(f"out: expected a .gif, .mp4 or .webm file or a folder, got {str(path)!r}")


def load_sequence(path: str | os.PathLike, frames: int = 16, offset: int = 0, stride: int = 1,
                  image_size: tuple[int, int] = (256, 256)) -> list:
    """`frames` RGB PIL images from a folder of images (sorted by name) or an animated GIF.

    Takes every `stride`-th image starting at `offset` and resizes each to `image_size` (w, h).
    Returns fewer than `frames` images when the sequence is shorter (at least one).
    """
    from PIL import Image, ImageSequence

    for name, v, lo in (("frames", frames, 1), ("offset", offset, 0), ("stride", stride, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    size = _check_size(image_size, "image_size")
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        picked = files[offset::stride][:frames]
        images = []
        for p in picked:
            with Image.open(p) as im:
                images.append(im.convert("RGB").resize(size, Image.BICUBIC))
    elif path.is_file():
        with Image.open(path) as im:
            all_frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
        images = [f.resize(size, Image.BICUBIC) for f in all_frames[offset::stride][:frames]]
    else:
        raise FileNotFoundError(f"load_sequence: {str(path)!r} is neither a folder of images nor a file")
    if not images:
        raise ValueError(f"load_sequence: no frames in {str(path)!r} from offset {offset} with stride {stride} "
                         f"(images: {', '.join(IMAGE_SUFFIXES)} or an animated GIF)")
    return images


def _check_size(size: Any, name: str) -> tuple[int, int]:
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"{name}: expected (width, height) as two positive ints, got {size!r}")
    return int(size[0]), int(size[1])
