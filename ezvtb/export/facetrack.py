"""Export the face-tracking graphs (MediaPipe face detector and face mesh) to ONNX, cached.

`facetrack_graph(which)` returns the ONNX file and declared I/O (`ezvtb.models.facetrack.spec`)
of ``detector``, ``landmarks`` or ``attention`` (the mesh with irises), exporting it on first use (needs
torch), in ``$EZVTB_HOME/onnx/facetrack/<key>/<spec name>.onnx`` (the key covers the TFLite file's digest).

The folder is found without importing torch, so a tracker whose graphs exist starts torch-free.
Export goes through the one exporter (`ezvtb.export.exporter.export_graph`: TorchScript exporter,
opset 17, static shapes, written atomically). The exported graph is run once through ONNX Runtime on
a fixed test image and compared with the PyTorch module (`verify_export`, the recipe's acceptance
check); a mismatch over `MAX_ABS_ERROR` raises `ExportError` and caches nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ezvtb.engines.base import GraphSpec
from ezvtb.export.errors import ExportError
from ezvtb.export.exporter import Recipe, export_graph
from ezvtb.models.facetrack.spec import (
    ATTENTION,
    DETECTOR,
    DETECTOR_RANGE,
    LANDMARK_RANGE,
    LANDMARKS,
    SCORE_CLIP,
    attention_spec,
    detector_spec,
    landmark_spec,
)
from ezvtb.weights.mediapipe import model_file

log = logging.getLogger("ezvtb.export")

WHICH = ("detector", "landmarks", "attention")
# ORT vs torch on the same uint8 image: box/landmark coordinates are in input pixels (0..192),
# probabilities in 0..1; measured ~1e-4 (tests/test_facetrack_models.py prints it).
MAX_ABS_ERROR = 2e-3


@dataclass(frozen=True)
class FacetrackGraph:
    path: Path
    which: str
    spec: GraphSpec


def _model(which: str) -> tuple[str, GraphSpec, tuple[float, float]]:
    if which == "detector":
        return DETECTOR, detector_spec(), DETECTOR_RANGE
    if which == "landmarks":
        return LANDMARKS, landmark_spec(), LANDMARK_RANGE
    if which == "attention":
        return ATTENTION, attention_spec(), LANDMARK_RANGE
    raise ValueError(f"which: expected one of {list(WHICH)}, got {which!r}")


def build_module(which: str):
    """The PyTorch module exported for `which` (`ImageGraph` over the TFLite network), eval mode."""
    from ezvtb.models.facetrack.net import ImageGraph, TfliteNet
    from ezvtb.models.facetrack.tflite import load_tflite

    name, _, value_range = _model(which)
    path, _ = model_file(name)
    return ImageGraph(TfliteNet(load_tflite(path)), which, value_range, SCORE_CLIP).eval()


def check_image(size: int, seed: int = 0) -> np.ndarray:
    """A uint8 [size, size, 3] image with smooth shapes and noise (export checks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + 1), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def verify_export(path: Path, module, spec: GraphSpec) -> float:
    """Max |ORT - torch| over every output on `check_image`; `ExportError` over `MAX_ABS_ERROR`."""
    import onnxruntime as ort
    import torch

    img = check_image(spec.inputs[0].shape[0])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {spec.inputs[0].name: img})
    with torch.no_grad():
        ref = [t.numpy() for t in module(torch.from_numpy(img))]
    err = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    if not err <= MAX_ABS_ERROR:
        raise ExportError(f"exported {spec.name} differs from its PyTorch module: max abs error {err:.3g} "
                          f"> {MAX_ABS_ERROR}")
    return err


def facetrack_graph(which: str, *, force: bool = False, verify: bool = True) -> FacetrackGraph:
    """The ONNX graph of ``detector``, ``landmarks`` or ``attention``, exported (and verified) on first use."""
    name, spec, _ = _model(which)
    _, digest = model_file(name)

    def check(path: Path, module: object) -> str:
        return f"max abs error {verify_export(path, module, spec):.3g} from torch"

    recipe = Recipe("facetrack", spec.name, spec, f"facetrack|{digest}|{which}", lambda: build_module(which),
                    lambda: (check_image(spec.inputs[0].shape[0]),), check)
    return FacetrackGraph(export_graph(recipe, force=force, verify=verify, progress=False), which, spec)
