"""The super-resolution recipe: exported SR graphs, cached by the one exporter (`ezvtb.export.exporter`).

`sr_graph(model, noise, precision, alpha)` returns the ONNX file of one SR graph (I/O in
`ezvtb.models.sr.spec`), exporting it on first use, in
``$EZVTB_HOME/onnx/sr/<key>/sr_<variant>_<precision>_a<alpha>[_<size>].onnx``; the key covers the
weights file's digest (each noise level has its own) and every option of the graph.

The exporter's defaults apply (TorchScript, opset 17, static shapes, constant folding, one file of
~1-2.5 MB; the replicate padding leaves the output dims unnamed, so the spec's static shape is written
into the graph). After export the graph is run once through ONNX Runtime (CPU) on a synthetic frame and
compared with the PyTorch module (`verify_export`, the recipe's acceptance check); a mismatch raises
`ExportError` and caches nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ezvtb.engines.base import GraphSpec
from ezvtb.engines.policy import check_precision
from ezvtb.export.errors import ExportError
from ezvtb.export.exporter import Recipe, export_bytes, export_graph
from ezvtb.models.sr.spec import (
    ALPHA_MODE,
    INPUT_NAME,
    INPUT_SIZES,
    check_alpha,
    check_model,
    check_noise,
    graph_spec,
    onnx_file_name,
)
from ezvtb.weights.sr import sr_files

log = logging.getLogger("ezvtb.export")

# Acceptance of `verify_export`, in uint8 grey levels: fp32 graphs vs the fp32 module (max; 1 =
# rounding boundaries), fp16 graphs vs the fp32 module (mean).
FP32_MAX_LEVELS = 1
FP16_MEAN_LEVELS = 1.0


@dataclass(frozen=True)
class SrGraph:
    """One exported SR graph: its file and declared I/O."""

    path: Path
    model: str
    noise: int
    precision: str
    alpha: str
    spec: GraphSpec


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
    """An `Upscaler` (either quantize mode) exported as `sr_graph` exports it, for a uint8 [size, size, 4]
    input; ONNX bytes (nothing cached)."""
    model = "upconv7" if module.scale == 2 else "animevideov3"
    return export_bytes(module, graph_spec(model, "fp32", size), (synthetic_frame(size),))


def verify_export(graph: bytes | Path, model: str, noise: int, precision: str, alpha: str, size: int,
                  reference=None) -> dict[str, float]:
    """Run the uint8 graph in ONNX Runtime (CPU) and the fp32 PyTorch module on `synthetic_frame`.

    fp32: max |ORT - torch| <= `FP32_MAX_LEVELS`; fp16: mean <= `FP16_MEAN_LEVELS` grey levels.
    Returns {max, mean}; raises `ExportError` when out of bounds. `reference` may pass the fp32
    module to avoid building it again.
    """
    import onnxruntime as ort
    import torch

    frame = synthetic_frame(size, seed=1)
    sess = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), providers=["CPUExecutionProvider"])
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

    def check(path: Path, module: object) -> str:
        res = verify_export(path, model, noise, precision, alpha, size,
                            reference=module if precision == "fp32" else None)
        return f"max {res['max']:.0f} grey levels from torch"

    recipe = Recipe("sr", onnx_file_name(model, noise, precision, alpha, size).removesuffix(".onnx"), spec,
                    f"sr|{digest}|{model}|noise{noise}|{precision}|{alpha}|{size}",
                    lambda: build_upscaler(model, noise, precision, alpha), lambda: (synthetic_frame(size),), check)
    path = export_graph(recipe, force=force, verify=verify)
    return SrGraph(path, model, noise, precision, alpha, spec)
