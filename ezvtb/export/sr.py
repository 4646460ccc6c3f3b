"""Export super-resolution graphs to ONNX and keep them in the export cache.

`sr_graph(model, noise, precision, alpha)` returns the ONNX file of one SR graph (I/O in
`ezvtb.models.sr.spec`), exporting it on first use. Cache layout::

    $EZVTB_HOME/onnx/sr/<weights .bin sha256[:16]>/<export tag>/sr_<variant>_<precision>_a<alpha>.onnx

The weights digest identifies the model file (each noise level has its own); the export tag
names this module's graph format, the opset and the torch version, so a change of any of them
exports again. Files are written atomically.

Export: classic TorchScript exporter (``dynamo=False``), opset 17, static shapes, constant
folding, a single file (weights are ~1-2.5 MB). After export the graph is run once through ONNX
Runtime (CPU) on a synthetic frame and compared with the PyTorch module (`verify_export`); a
mismatch raises `ExportError`.
"""
from __future__ import annotations

import importlib.metadata
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ezvtb import paths
from ezvtb.atomic import atomic_write
from ezvtb.engines.base import GraphSpec
from ezvtb.export.quiet import quiet_export
from ezvtb.models.sr.spec import (
    ALPHA_MODE,
    INPUT_NAME,
    INPUT_SIZES,
    OUTPUT_NAME,
    check_alpha,
    check_model,
    check_noise,
    check_precision,
    graph_spec,
    onnx_file_name,
)
from ezvtb.weights.sr import sr_files

log = logging.getLogger("ezvtb.export")

EXPORT_FORMAT = 1  # bump when the exported graph changes
OPSET = 17
# Acceptance of `verify_export`, in uint8 grey levels: fp32 graphs vs the fp32 module (max; 1 =
# rounding boundaries), fp16 graphs vs the fp32 module (mean).
FP32_MAX_LEVELS = 1
FP16_MEAN_LEVELS = 1.0


class ExportError(RuntimeError):
    """An exported graph does not reproduce its PyTorch module."""


@dataclass(frozen=True)
class SrGraph:
    """One exported SR graph: its file and declared I/O."""

    path: Path
    model: str
    noise: int
    precision: str
    alpha: str
    spec: GraphSpec


def export_tag() -> str:
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return f"f{EXPORT_FORMAT}-opset{OPSET}-torch{torch_version.replace('+', '_')}"


def synthetic_frame(size: int, seed: int = 0) -> np.ndarray:
    """A uint8 [size, size, 4] BGRA test frame: antialiased shapes, lines, noise and soft alpha edges."""
    import cv2

    rng = np.random.default_rng(seed)
    s = size / 512
    img = np.zeros((size, size, 4), np.uint8)
    cv2.circle(img, (int(250 * s), int(200 * s)), int(150 * s), (60, 120, 230, 255), -1, cv2.LINE_AA)
    cv2.rectangle(img, (int(120 * s), int(330 * s)), (int(420 * s), int(511 * s)), (200, 170, 90, 255), -1,
                  cv2.LINE_AA)
    for i in range(12):
        c = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.line(img, p0, p1, c, max(1, int(3 * s)), cv2.LINE_AA)
    img[..., :3] = np.clip(img[..., :3].astype(np.int16) + rng.integers(-12, 13, (size, size, 3)), 0, 255)
    img[..., 3] = cv2.GaussianBlur(img[..., 3], (0, 0), 1.0 * s + 0.3)
    return img


def build_upscaler(model: str, noise: int = 0, precision: str = "fp32", alpha: str = ALPHA_MODE,
                   quantize: bool = True):
    """The PyTorch module exported for (model, noise, precision, alpha): `Upscaler` over the network."""
    import torch

    from ezvtb.models.sr.loader import load_sr
    from ezvtb.models.sr.wrapper import Upscaler

    param, binf, _ = sr_files(check_model(model), noise)
    net, _ = load_sr((param, binf), torch.float16 if check_precision(precision) == "fp16" else torch.float32)
    return Upscaler(net, alpha=check_alpha(alpha, "alpha"), quantize=quantize).eval()


def export_onnx(module, size: int) -> bytes:
    """Export an `Upscaler` (either quantize mode) for a uint8 [size, size, 4] input; ONNX bytes.

    The exporter leaves the output's spatial dims unnamed (replicate padding defeats its shape
    inference), so the static output shape is written into the graph and checked with ONNX's
    shape inference.
    """
    import onnx
    import torch

    frame = torch.from_numpy(synthetic_frame(size))
    buf = io.BytesIO()
    with quiet_export("SR"), torch.no_grad():
        torch.onnx.export(module, (frame,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buf.getvalue())
    k = module.scale
    dims = model.graph.output[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (k * size, k * size, 4)):
        d.Clear()
        d.dim_value = v
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return model.SerializeToString()


def verify_export(onnx_bytes: bytes, model: str, noise: int, precision: str, alpha: str, size: int,
                  reference=None) -> dict[str, float]:
    """Run the uint8 graph in ONNX Runtime (CPU) and the fp32 PyTorch module on `synthetic_frame`.

    fp32: max |ORT - torch| <= `FP32_MAX_LEVELS`; fp16: mean <= `FP16_MEAN_LEVELS` grey levels.
    Returns {max, mean}; raises `ExportError` when out of bounds. `reference` may pass the fp32
    module to avoid building it again.
    """
    import onnxruntime as ort
    import torch

    frame = synthetic_frame(size, seed=1)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: frame})[0]
    ref_module = reference if reference is not None else build_upscaler(model, noise, "fp32", alpha)
    with torch.no_grad():
        ref = ref_module(torch.from_numpy(frame)).numpy()
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    res = {"max": float(diff.max()), "mean": float(diff.mean())}
    ok = res["max"] <= FP32_MAX_LEVELS if precision == "fp32" else res["mean"] <= FP16_MEAN_LEVELS
    log.debug("SR %s noise %d %s export check vs torch: max %d, mean %.4f grey levels", model, noise, precision,
             res["max"], res["mean"])
    if not ok:
        raise ExportError(f"exported SR {model} {precision} graph differs from its PyTorch module: "
                          f"max {res['max']:.0f}, mean {res['mean']:.4f} grey levels")
    return res


def sr_graph(model: str, noise: int = 1, precision: str = "fp32", alpha: str = ALPHA_MODE, *,
             size: int | None = None, verify: bool = True, force: bool = False) -> SrGraph:
    """The ONNX graph for (model, noise, precision, alpha), exported and cached on first use.

    model: ``upconv7`` (2x; `noise` -1 = plain scale2x, 0..3 = denoise level) or ``animevideov3``
    (4x; `noise` is ignored). size: input side (default 512 / 256). Raises ValueError for bad
    arguments and `ExportError` when the exported graph fails `verify_export`.
    """
    check_model(model)
    check_precision(precision)
    check_alpha(alpha, "alpha")
    noise = check_noise(noise, "noise") if model == "upconv7" else 0
    size = INPUT_SIZES[model] if size is None else size
    spec = graph_spec(model, precision, size)  # validates size
    _, _, digest = sr_files(model, noise)
    folder = paths.subdir("onnx", "sr", digest[:16], export_tag())
    path = folder / onnx_file_name(model, noise, precision, alpha, size)
    if path.is_file() and not force:
        return SrGraph(path, model, noise, precision, alpha, spec)

    from tqdm import tqdm

    with tqdm(total=3 if verify else 2, desc=f"export SR {spec.name} {precision}", unit="step", leave=False) as bar:
        module = build_upscaler(model, noise, precision, alpha)
        bar.update()
        data = export_onnx(module, size)
        bar.update()
        if verify:
            verify_export(data, model, noise, precision, alpha, size,
                          reference=module if precision == "fp32" else None)
            bar.update()
    with atomic_write(path) as f:
        f.write(data)
    log.info("exported %s (%.1f MB)", path, len(data) / 1e6)
    return SrGraph(path, model, noise, precision, alpha, spec)
