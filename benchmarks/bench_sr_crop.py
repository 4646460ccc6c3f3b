"""What super-resolution costs per frame on the CPU, next to a THA frame, per crop size.

For each SR graph (fp32, ORT CPU): waifu2x UpConv7 2x of the whole 512x512 frame, and Real-ESRGAN
animevideov3 4x of a square crop of side 256 (the stage's region), 192 and 128 (graphs exported at
that input size), alpha through the network and bicubic. Each graph runs on the matching crop of
a real THA3 frame (head and shoulders, top 0, centred), interleaved with THA frames (separable
fp32, no caches) timed in the same loop, so the "of a THA frame" column holds under any load.

    python benchmarks/bench_sr_crop.py [--rounds 4] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pct, publish, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds: expected >= 1, got {args.rounds}")

    from ezvtb import get_core, prepare_image
    from ezvtb.engines import create_session
    from ezvtb.export.sr import sr_graph
    from ezvtb.models.sr.spec import INPUT_NAME
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.tha3 import sample_image

    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=False,
                    use_cacher=False, backend="cpu", threads=args.threads)
    core.setImage(prepare_image(sample_image("crypko_00")))
    trace = realistic_trace(200)
    core.inference(trace[0])
    cases = [("UpConv7 noise1 2x, whole frame", "upconv7", 1, 512)]
    cases += [(f"animevideov3 4x, {s}x{s} crop", "animevideov3", 0, s) for s in (256, 192, 128)]
    sessions = {}
    for label, model, noise, size in cases:
        for alpha in ("model", "bicubic"):
            g = sr_graph(model, noise, "fp32", alpha, size=size)
            sessions[(label, alpha, size)] = create_session(g.path, g.spec, "cpu", intra_op_threads=args.threads)
    tha_ms: list[float] = []
    ms: dict = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(args.rounds + 1):  # round 0 warms every session up
        frame = core.inference(trace[1 + r])[0].copy()
        t0 = time.perf_counter()
        core.inference(trace[100 + r])
        if r:
            tha_ms.append((time.perf_counter() - t0) * 1e3)
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            size = k[2]
            left = (512 - size) // 2
            crop = frame[0:size, left:left + size].copy()
            t0 = time.perf_counter()
            sessions[k].run({INPUT_NAME: crop})
            if r:
                ms[k].append((time.perf_counter() - t0) * 1e3)
    for s in sessions.values():
        s.close()
    core.close()
    tha50 = pct(tha_ms, 50)
    rows = []
    for (label, alpha, size), v in ms.items():
        m = pct(v, 50)
        out = 2 * size if size == 512 else 4 * size
        rows.append([label, f"{out}x{out}", alpha, m, f"{100 * m / tha50:.0f} %", f"{1e3 / (m + tha50):.2f}"])
    t = table(["SR graph (fp32, ORT CPU)", "output", "alpha", "ms per frame (p50)", "of a THA frame",
               "THA + SR frames/s"], rows)
    note = (f"{args.rounds} rounds after one warm-up, {args.threads} threads, crops of a real THA3 frame (crypko_00, "
            f"rows from 0, centred). THA frame p50 {tha50:.0f} ms (separable fp32, no caches) in the same loop. "
            "Graph run only (SrStage adds a region copy and the output copy).")
    publish("Super-resolution cost per frame by crop size (CPU)", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
