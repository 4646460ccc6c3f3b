"""Character image checks and preparation (BGRA uint8, 512x512, straight alpha)."""
from __future__ import annotations

import os

import numpy as np

IMAGE_SIZE = 512
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 4)


def validate_image(img: object, argument: str = "img") -> np.ndarray:
    """Return `img` as a C-contiguous uint8 (512, 512, 4) BGRA array or raise ValueError.

    The error names `argument`, the expected and the received shape/dtype. A non-contiguous
    array of the right shape and dtype is copied into a contiguous one.
    """
    if not isinstance(img, np.ndarray):
        raise ValueError(
            f"{argument}: expected a numpy.ndarray uint8 of shape (512, 512, 4) BGRA, got {type(img).__name__}"
            + (" (cv2.imread returns None when the file is missing or unreadable)" if img is None else "")
        )
    if img.dtype != np.uint8 or img.shape != IMAGE_SHAPE:
        hint = ""
        if img.ndim == 3 and img.shape[2] == 3:
            hint = " (no alpha channel: read with cv2.IMREAD_UNCHANGED, or use ezvtb.prepare_image)"
        elif img.shape[:2] != IMAGE_SHAPE[:2]:
            hint = " (use ezvtb.prepare_image to fit and pad an image to 512x512)"
        raise ValueError(
            f"{argument}: expected uint8 (512, 512, 4) BGRA, got {img.dtype} {tuple(img.shape)}{hint}"
        )
    return np.ascontiguousarray(img)


def prepare_image(image: str | os.PathLike | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Turn an RGBA character image into a valid ezvtb input.

    `image` is a path to an image file with an alpha channel (PNG, WebP, ...) or a uint8/uint16
    array already in BGRA channel order (as cv2.imread(..., IMREAD_UNCHANGED) returns it).
    The image is scaled to fit `size` x `size` keeping its aspect ratio (area filter when
    shrinking, cubic when enlarging), centred horizontally and aligned to the top (THA3 expects
    the head in the top-centre 128x128 box), and padded with fully transparent pixels.
    Colour under alpha = 0 is zeroed. Returns a new C-contiguous uint8 (size, size, 4) array.
    Raises ValueError for images without an alpha channel, FileNotFoundError for a bad path.
    """
    import cv2

    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image: no file at {path!r}")
        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"image: {path!r} is not an image OpenCV can read")
        what = repr(path)
    elif isinstance(image, np.ndarray):
        arr = image
        what = "array"
    else:
        raise ValueError(f"image: expected a path or a numpy array, got {type(image).__name__}")
    if arr.ndim != 3 or arr.shape[2] != 4:
        got = arr.shape[2] if arr.ndim == 3 else 1
        raise ValueError(
            f"image: {what} has {got} channel(s) and no alpha; ezvtb needs a 4-channel image with a "
            "transparent background (RGBA/BGRA), shape (H, W, 4)"
        )
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8 or uint16, got {arr.dtype}")
    h, w = arr.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image: {what} is empty, shape {arr.shape}")
    scale = min(size / h, size / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        # Resize premultiplied colour so transparent pixels do not bleed into the edges.
        a = arr[:, :, 3:4].astype(np.float32) / 255.0
        pre = np.concatenate([arr[:, :, :3].astype(np.float32) * a, a * 255.0], axis=2)
        pre = cv2.resize(pre, (nw, nh), interpolation=interp)
        alpha = np.clip(pre[:, :, 3:4], 0, 255)
        safe = np.where(alpha > 0, alpha / 255.0, 1.0)
        rgb = np.clip(pre[:, :, :3] / safe, 0, 255)
        arr = np.concatenate([rgb, alpha], axis=2).round().astype(np.uint8)
    out = np.zeros((size, size, 4), np.uint8)
    x0 = (size - nw) // 2
    out[:nh, x0:x0 + nw] = arr
    out[out[:, :, 3] == 0] = 0
    return out
