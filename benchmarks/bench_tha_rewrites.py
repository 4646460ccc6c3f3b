"""What each export-time rewrite and ONNX Runtime session option gives, per THA3 stage graph (CPU).

Exports the five fp32 stage graphs without rewrites, with each rewrite of
`ezvtb.export.tha3.REWRITES` alone and with all of them, and times them in ONNX Runtime on
real stage inputs (crypko_00, one mocap-like pose), every variant's graph run in turn so that
machine noise hits all alike. With all rewrites it also tries session options: intra-op
threads 1, busy-wait spinning on, ORT_ENABLE_EXTENDED (no NCHWc layout transform),
denormals flushed to zero and (2 threads) the intra-op worker thread pinned to the second CPU. Reports p50 ms per graph, the eyebrow-changed frame as the sum of
the combiner..editor p50s, and that sum's speed-up over the unrewritten export. Each variant's
outputs are compared with the unrewritten graphs' (max abs difference, uint8 levels for the editor).

    python benchmarks/bench_tha_rewrites.py [--rounds 7] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import append_results, pct, table  # noqa: E402

STAGES = ("decomposer", "combiner", "morpher", "rotator", "editor")
FRAME = STAGES[1:]  # eyebrow changed: combiner + morpher + rotator + editor
# Where each rewrite changes the graph (elsewhere the graph equals the unrewritten one).
APPLIES = {
    "fused_heads": {"decomposer", "combiner", "morpher", "editor"},
    "split_skip_concat": {"editor"},
    "zero_insert_convtranspose": {"decomposer", "combiner", "morpher"},
    "blocked_upsample": {"rotator", "editor"},
    "tap_split_grid_head": {"rotator"},
    "concat_paste": {"combiner", "morpher"},
    "matmul_encoder_pointwise": {"decomposer", "combiner", "rotator", "editor"},
}


def session(data: bytes, threads: int, level: str = "ORT_ENABLE_ALL", spinning: bool = False,
            denormal_zero: bool = False, affinity: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if denormal_zero:
        so.add_session_config_entry("session.set_denormal_as_zero", "1")
    if affinity is not None:
        so.add_session_config_entry("session.intra_op_thread_affinities", affinity)
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from ezvtb.export.tha3 import REWRITES, export_stage
    from ezvtb.models.tha3.poser import ThaPoser
    from ezvtb.models.tha3.spec import graph_spec
    from ezvtb.weights.tha3 import sample_image, tha3_weights

    torch.set_num_threads(args.threads)
    poser = ThaPoser("separable", tha3_weights())
    variants: dict[str, dict[str, bytes]] = {"no rewrites": {}, **{f"+ {r} only": {} for r in REWRITES},
                                             "all rewrites": {}}
    for s in STAGES:
        base = variants["no rewrites"][s] = export_stage(poser, s, "fp32", rewrites=())
        for r in REWRITES:
            variants[f"+ {r} only"][s] = export_stage(poser, s, "fp32", rewrites=(r,)) if s in APPLIES[r] else base
        variants["all rewrites"][s] = export_stage(poser, s, "fp32")
    configs = {name: {s: session(g[s], args.threads) for s in STAGES} for name, g in variants.items()}
    opts = {
        "all rewrites, 1 intra-op thread": dict(threads=1),
        "all rewrites, spinning on": dict(threads=args.threads, spinning=True),
        "all rewrites, ORT_ENABLE_EXTENDED": dict(threads=args.threads, level="ORT_ENABLE_EXTENDED"),
        "all rewrites, denormals as zero": dict(threads=args.threads, denormal_zero=True),
    }
    if args.threads == 2 and (os.cpu_count() or 0) >= 2:
        opts["all rewrites, worker thread pinned to CPU 2"] = dict(threads=2, affinity="2")
    for name, kw in opts.items():
        configs[name] = {s: session(variants["all rewrites"][s], **kw) for s in STAGES}

    # Real stage inputs: one pass of the unrewritten graphs on a sample image and a pose.
    img = cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)
    pose = np.random.default_rng(7).uniform(0.0, 1.0, 45).astype(np.float32)
    pose[37:45] = pose[37:45] * 2.0 - 1.0
    pose[44] = abs(pose[44])
    ref = configs["no rewrites"]
    feeds: dict[str, dict[str, np.ndarray]] = {}
    env: dict[str, np.ndarray] = {"image": img, "eyebrow_pose": pose[None, 0:12], "face_pose": pose[None, 12:39],
                                  "rotation_pose": pose[None, 39:45]}
    for s in STAGES:
        spec = graph_spec(s)
        feeds[s] = {n: env[n] for n in spec.input_names}
        outs = ref[s].run(None, feeds[s])
        env.update(dict(zip(spec.output_names, outs)))

    diffs = {}
    for name, sess in configs.items():
        worst = []
        for s in STAGES:
            a = ref[s].run(None, feeds[s])
            b = sess[s].run(None, feeds[s])
            worst.append(max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()) for x, y in zip(a, b)))
        diffs[name] = worst

    samples = {name: {s: [] for s in STAGES} for name in configs}
    cpu = {name: {s: [] for s in STAGES} for name in configs}
    for r in range(args.warmup + args.rounds):
        for s in STAGES:
            for name, sess in configs.items():
                c0, t0 = time.process_time(), time.perf_counter()
                sess[s].run(None, feeds[s])
                t1, c1 = time.perf_counter(), time.process_time()
                if r >= args.warmup:
                    samples[name][s].append((t1 - t0) * 1e3)
                    cpu[name][s].append((c1 - c0) * 1e3)

    def frame(name, q):
        return sum(pct(samples[name][s], q) for s in FRAME)

    base50, base0 = frame("no rewrites", 50), frame("no rewrites", 0)
    rows = []
    for name in configs:
        d = diffs[name]
        cpu50 = sum(pct(cpu[name][s], 50) for s in FRAME)
        rows.append([name, *[pct(samples[name][s], 50) for s in STAGES], frame(name, 50), frame(name, 0),
                     f"{base50 / frame(name, 50):.2f}x", f"{base0 / frame(name, 0):.2f}x", cpu50,
                     f"{max(d[:4]):.1e} / {d[4]:.0f}"])
    t = table(["graphs / options (fp32, ORT CPU), p50 ms", *STAGES, "eyebrow frame p50", "min",
               "speed-up p50", "min", "frame CPU ms p50", "max diff: float / editor uint8"], rows)
    note = (f"{args.rounds} rounds after {args.warmup} warm-up, intra-op threads {args.threads} unless noted, "
            "ORT_ENABLE_ALL unless noted, inputs from crypko_00 and one random pose. Eyebrow frame = sum over "
            "combiner, morpher, rotator, editor of each graph's p50 (or min) run time (graph runs only, no "
            "copies); speed-up against the unrewritten graphs; frame CPU ms = process CPU time (all ORT threads) "
            "of the same runs, summed likewise. Max diff against the unrewritten graphs: float "
            "outputs of the first four graphs / editor uint8 BGRA levels.")
    print(t)
    print(note)
    if args.append:
        append_results("THA3 export rewrites and ORT session options (CPU)", t + "\n\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
