"""Face-tracking weights: MediaPipe's face detector and face mesh, from the ``mediapipe==0.10.14`` wheel.

The legacy MediaPipe solutions ship their TFLite models inside the PyPI wheel (Apache-2.0; newer
releases ship none). The cp311 manylinux wheel is fetched with ``pip download --no-deps`` for that
platform on every OS (so its sha256 below holds everywhere), never installed; only the listed
models and the wheel's licence are extracted, each hash-checked, into
``$EZVTB_HOME/weights/mediapipe/``. The files are read by `ezvtb.models.facetrack.tflite`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ezvtb import paths
from ezvtb.weights.wheel import ChecksumError, extract_checked, fetch_wheel, sha256_file

log = logging.getLogger("ezvtb.weights")

MEDIAPIPE_WHEEL = ("mediapipe", "0.10.14")
MEDIAPIPE_PLATFORM = ("manylinux_2_17_x86_64", "311")
MEDIAPIPE_WHEEL_SHA256 = "a807328339e7356fda0bb14df12fedbf1d33bdf81649c5f8666b0026b1cc30b4"

# model name -> (member in the wheel, sha256)
MODELS: dict[str, tuple[str, str]] = {
    "face_detection_short_range": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_landmark": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "face_landmark_with_attention": (
        "mediapipe/modules/face_landmark/face_landmark_with_attention.tflite",
        "e06a804e0144f9929eda782122916b35d60c697c3c9344013ca2bbe76a6ce2b4"),
}
LICENSE_MEMBER = "mediapipe-0.10.14.dist-info/LICENSE"
LICENSE_SHA256 = "8707eef0533987efc5b155d64761eeb6e20793f50b9bd1a68dad1cf4719d0ed8"


def weights_home() -> Path:
    """``$EZVTB_HOME/weights/mediapipe`` (created on demand)."""
    return paths.subdir("weights", "mediapipe")


def mediapipe_wheel() -> Path:
    """Path of the hash-checked mediapipe wheel (downloaded on first use, never installed)."""
    wheel = fetch_wheel(*MEDIAPIPE_WHEEL, platform=MEDIAPIPE_PLATFORM)
    digest = sha256_file(wheel)
    if digest != MEDIAPIPE_WHEEL_SHA256:
        raise ChecksumError(f"{str(wheel)!r}: sha256 {digest} is not the one of {MEDIAPIPE_WHEEL[0]}=="
                            f"{MEDIAPIPE_WHEEL[1]} ({MEDIAPIPE_WHEEL_SHA256}); delete the file so it is "
                            "downloaded again")
    return wheel


def model_file(name: str) -> tuple[Path, str]:
    """(path, sha256) of one MediaPipe face model (`MODELS`), extracted hash-checked on first use."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {list(MODELS)}, got {name!r}")
    member, digest = MODELS[name]
    dest = weights_home()
    members = {member: digest, LICENSE_MEMBER: LICENSE_SHA256}
    ok = all((dest / Path(m).name).is_file() and sha256_file(dest / Path(m).name) == h for m, h in members.items())
    if not ok:
        log.info("extracting %s from %s==%s into %s", Path(member).name, *MEDIAPIPE_WHEEL, dest)
        extract_checked(mediapipe_wheel(), members, dest)
    return dest / Path(member).name, digest
