"""Stable, complete cache keys: blake2b digests, identical across processes and restarts.

    character = blake2b(KEY_FORMAT, variant, fidelity, image shape, image bytes)   (32 bytes)
    frame key = blake2b(character, pose as little-endian float32 with -0.0 -> 0.0)  (20 bytes)

* `variant` names the model (e.g. ``tha3/separable/fp16/eyebrow``): another model never serves
  a frame rendered by this one.
* `fidelity` is ``q<quality>`` for JPEG and ``lossless`` for quality 100: a hit returns what the
  configuration promises (a q100 cache never returns a q85 frame; a q50 frame never leaks into
  a q95 cache). The lossless codec (qoi, lz4, raw) is not in the key: all decode to the same
  pixels. The JPEG library (cv2 or PyTurboJPEG) is not either: both write standard JPEG.
* The pose is the one THA runs on, i.e. after `quantize_pose`.
Python's `hash()` is never used (it is salted per process).
"""
from __future__ import annotations

import hashlib

import numpy as np

from ezvtb.pose import POSE_SIZE, canonical_zeros

KEY_FORMAT = b"ezvtb.output-cache.key/1"
KEY_SIZE = 20


def fidelity(quality: int) -> str:
    """The key's fidelity tag for a `cacher_quality`."""
    return "lossless" if int(quality) >= 100 else f"q{int(quality)}"


def character_digest(image: np.ndarray, variant: str, quality: int) -> bytes:
    """32-byte digest of a character image (uint8 array, any shape), the model variant and fidelity."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image: expected a uint8 array, got {type(image).__name__} "
                         f"{getattr(image, 'dtype', '')}")
    h = hashlib.blake2b(digest_size=32)
    for part in (KEY_FORMAT, variant.encode(), fidelity(quality).encode(), repr(tuple(image.shape)).encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    h.update(np.ascontiguousarray(image).data)
    return h.digest()


class FrameKeys:
    """Frame keys for one character digest; `key(pose)` is cheap (~2 us) and allocation-light."""

    def __init__(self, character: bytes) -> None:
        if not isinstance(character, bytes) or len(character) != 32:
            raise ValueError("character: expected the 32-byte digest from character_digest")
        self.character = character
        self._base = hashlib.blake2b(character, digest_size=KEY_SIZE)
        self._buf = np.zeros(POSE_SIZE, "<f4")

    def key(self, pose: np.ndarray) -> bytes:
        """Key of a (45,) pose (any float dtype; compared as float32; -0.0 equals 0.0)."""
        p = np.asarray(pose)
        if p.shape != (POSE_SIZE,):
            raise ValueError(f"pose: expected shape (45,), got {p.shape}")
        canonical_zeros(p, out=self._buf)  # float32, -0.0 -> 0.0: the pose module's one rule
        h = self._base.copy()
        h.update(self._buf.data)
        return h.digest()
