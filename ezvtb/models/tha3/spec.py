"""Tensor names, shapes and dtypes of the five exported THA3 stage graphs (torch-free).

Every stage graph has the image conversion and the crop/paste glue inside, so the runtime
only moves buffers:

    decomposer: image u8[512,512,4] BGRA
                -> image_prepared [1,4,512,512], eyebrow_background_layer [1,4,128,128],
                   eyebrow_layer [1,4,128,128]
    combiner:   image_prepared, eyebrow_background_layer, eyebrow_layer, eyebrow_pose f32[1,12]
                -> face_crop [1,4,192,192] (eyebrows composited), face_features [1,512,24,24]
                   (the face morpher's pose-independent encoder, run here once per eyebrow pose)
    morpher:    image_prepared, face_crop, face_features, face_pose f32[1,27]
                -> face_morphed_full [1,4,512,512], face_morphed_half [1,4,256,256]
    rotator:    face_morphed_half, rotation_pose f32[1,6]
                -> warped_image [1,4,512,512], grid_change [1,2,512,512] (upsampled to 512)
    editor:     face_morphed_full, warped_image, grid_change, rotation_pose f32[1,6]
                -> image u8[512,512,4] BGRA

Float tensors are float32 in fp32 graphs and float16 in fp16 graphs, except the ``*_pose``
inputs which are always float32. Image tensors are in model space: RGBA, linear RGB, [-1, 1].
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.engines.policy import check_precision

STAGES = ("decomposer", "combiner", "morpher", "rotator", "editor")
VARIANTS = ("separable", "standard")

# Upstream weight file name of each stage.
WEIGHT_FILES = {
    "decomposer": "eyebrow_decomposer.pt",
    "combiner": "eyebrow_morphing_combiner.pt",
    "morpher": "face_morpher.pt",
    "rotator": "two_algo_face_body_rotator.pt",
    "editor": "editor.pt",
}

# Crop geometry (rows, cols) in the 512x512 image.
EYEBROW_BOX = (slice(64, 192), slice(192, 320))  # 128x128 head box, decomposer/combiner
FACE_BOX = (slice(32, 224), slice(160, 352))  # 192x192 face box, morpher
EYEBROW_IN_FACE = (slice(32, 160), slice(32, 160))  # the eyebrow box inside the face crop

F = "float32"


def _t(name: str, *shape: int, dtype: str = F) -> TensorSpec:
    return TensorSpec(name, tuple(shape), dtype)


IMAGE_IN = _t("image", 512, 512, 4, dtype="uint8")
IMAGE_PREPARED = _t("image_prepared", 1, 4, 512, 512)
EYEBROW_BACKGROUND = _t("eyebrow_background_layer", 1, 4, 128, 128)
EYEBROW_LAYER = _t("eyebrow_layer", 1, 4, 128, 128)
EYEBROW_POSE = _t("eyebrow_pose", 1, 12)
FACE_CROP = _t("face_crop", 1, 4, 192, 192)
FACE_FEATURES = _t("face_features", 1, 512, 24, 24)
FACE_POSE = _t("face_pose", 1, 27)
FACE_MORPHED_FULL = _t("face_morphed_full", 1, 4, 512, 512)
FACE_MORPHED_HALF = _t("face_morphed_half", 1, 4, 256, 256)
ROTATION_POSE = _t("rotation_pose", 1, 6)
WARPED_IMAGE = _t("warped_image", 1, 4, 512, 512)
GRID_CHANGE = _t("grid_change", 1, 2, 512, 512)
IMAGE_OUT = _t("image", 512, 512, 4, dtype="uint8")

_FP32: dict[str, GraphSpec] = {
    "decomposer": GraphSpec("decomposer", (IMAGE_IN,), (IMAGE_PREPARED, EYEBROW_BACKGROUND, EYEBROW_LAYER)),
    "combiner": GraphSpec(
        "combiner", (IMAGE_PREPARED, EYEBROW_BACKGROUND, EYEBROW_LAYER, EYEBROW_POSE), (FACE_CROP, FACE_FEATURES)
    ),
    "morpher": GraphSpec(
        "morpher", (IMAGE_PREPARED, FACE_CROP, FACE_FEATURES, FACE_POSE), (FACE_MORPHED_FULL, FACE_MORPHED_HALF)
    ),
    "rotator": GraphSpec("rotator", (FACE_MORPHED_HALF, ROTATION_POSE), (WARPED_IMAGE, GRID_CHANGE)),
    "editor": GraphSpec("editor", (FACE_MORPHED_FULL, WARPED_IMAGE, GRID_CHANGE, ROTATION_POSE), (IMAGE_OUT,)),
}


def graph_spec(stage: str, precision: str = "fp32") -> GraphSpec:
    """The declared I/O of one THA3 stage graph (`precision` 'fp32' or 'fp16')."""
    if stage not in _FP32:
        raise ValueError(f"stage: expected one of {list(STAGES)}, got {stage!r}")
    check_precision(precision)
    spec = _FP32[stage]
    return spec if precision == "fp32" else spec.as_float16()


def onnx_file_name(stage: str, variant: str, precision: str) -> str:
    return f"tha3_{variant}_{precision}_{stage}.onnx"
