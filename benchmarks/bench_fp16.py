"""THA3 fp16 graphs against fp32 on the same backend: max grey-level difference and PSNR.

The fp16 graphs store weights and activations in float16 but keep grid construction and
GridSample in float32. This renders the same sample characters and poses through both and
compares the uint8 BGRA frames: per image the largest difference over all pixels and channels
(grey levels), the share of values within 1 grey level, and PSNR of colour (BGR) and alpha.
Poses: the neutral pose, a few extreme ones and frames of the realistic tracker trace.

    python benchmarks/bench_fp16.py [--backend cpu] [--images 4] [--poses 6] [--append]

`fidelity()` is reused by bench_gpu.py on GPU backends.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import append_results, table  # noqa: E402

IMAGES = ("crypko_00", "crypko_03", "crypko_05", "lambda_00", "crypko_07", "lambda_01")


def poses(n: int) -> np.ndarray:
    """n poses: neutral, two extremes, then frames spread over the realistic trace."""
    from ezvtb.pose import POSE_MAX, POSE_MIN
    from ezvtb.traces import realistic_trace

    fixed = [np.zeros(45, np.float32), POSE_MAX.astype(np.float32), POSE_MIN.astype(np.float32)]
    trace = realistic_trace(400)
    rest = [trace[i] for i in np.linspace(20, 399, max(n - len(fixed), 0)).astype(int)]
    return np.stack((fixed + rest)[:n]).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def stages(backend: str, variant: str, weights_dir: str | None, device_id: int = 0):
    """{precision: ThaStage} for fp32 and fp16 on `backend` (no model cache)."""
    from ezvtb.engines import create_session
    from ezvtb.export import tha3_graphs
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.stages.tha import ThaStage

    out = {}
    for precision in ("fp32", "fp16"):
        paths = tha3_graphs(variant, precision, weights_dir=weights_dir)
        opts = {"device_id": device_id}
        out[precision] = ThaStage({s: create_session(paths[s], graph_spec(s, precision), backend, **opts)
                                   for s in STAGES})
    return out


def fidelity(backend: str = "cpu", variant: str = "separable", n_images: int = 4, n_poses: int = 6,
             weights_dir: str | None = None, device_id: int = 0) -> tuple[list[list[object]], dict[str, float]]:
    """Rows (image, frames, max diff, within 1 level, PSNR BGR, PSNR alpha) and the worst values."""
    import cv2

    from ezvtb.weights.tha3 import sample_image

    st = stages(backend, variant, weights_dir, device_id)
    ps = poses(n_poses)
    rows, worst = [], {"max_diff": 0.0, "psnr_bgr": float("inf"), "psnr_alpha": float("inf"), "within1": 1.0}
    for name in IMAGES[:n_images]:
        img = cv2.imread(str(sample_image(name)), cv2.IMREAD_UNCHANGED)
        for s in st.values():
            s.set_image(img)
        a = np.stack([st["fp32"].run(p).copy() for p in ps])
        b = np.stack([st["fp16"].run(p).copy() for p in ps])
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        row = {"max_diff": float(d.max()), "within1": float((d <= 1).mean()),
               "psnr_bgr": psnr(a[..., :3], b[..., :3]), "psnr_alpha": psnr(a[..., 3], b[..., 3])}
        rows.append([name, len(ps), f"{row['max_diff']:.0f}", f"{100 * row['within1']:.3f} %",
                     f"{row['psnr_bgr']:.1f}", f"{row['psnr_alpha']:.1f}"])
        worst["max_diff"] = max(worst["max_diff"], row["max_diff"])
        worst["within1"] = min(worst["within1"], row["within1"])
        worst["psnr_bgr"] = min(worst["psnr_bgr"], row["psnr_bgr"])
        worst["psnr_alpha"] = min(worst["psnr_alpha"], row["psnr_alpha"])
    for s in st.values():
        s.close()
    return rows, worst


HEADERS = ["image", "frames", "max diff (grey levels)", "within 1 level", "PSNR BGR dB", "PSNR alpha dB"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cpu", help="cpu | cuda | tensorrt | trt (default: cpu)")
    ap.add_argument("--model", choices=("separable", "standard"), default="separable")
    ap.add_argument("--weights-dir")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--poses", type=int, default=6)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows, worst = fidelity(a.backend, a.model, a.images, a.poses, a.weights_dir)
    body = table(HEADERS, rows) + (
        f"\n\nTHA3 {a.model}, backend {a.backend}: fp16 graphs vs fp32 graphs, uint8 BGRA frames. Worst over "
        f"{a.images} images x {a.poses} poses: max {worst['max_diff']:.0f} grey levels, "
        f"{100 * worst['within1']:.3f} % of values within 1 level, PSNR BGR {worst['psnr_bgr']:.1f} dB, "
        f"alpha {worst['psnr_alpha']:.1f} dB ({time.perf_counter() - t0:.0f} s).")
    print(body)
    if a.append:
        append_results(f"THA3 fp16 vs fp32 ({a.backend})", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
