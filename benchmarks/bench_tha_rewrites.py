"""What each export-time rewrite and ONNX Runtime session option gives, per THA3 stage graph (CPU).

For each fp32 stage graph: exported without rewrites, with each rewrite of
`ezvtb.export.tha3.REWRITES` that changes that graph alone ("+ X"), with all of them, and with all
but one ("all - X"); with all rewrites also under other session options: intra-op threads 1,
busy-wait spinning on, ORT_ENABLE_EXTENDED (no NCHWc layout transform), denormals flushed to zero,
and (2 threads) the intra-op worker pinned to the second CPU. One stage at a time, its variants run
in turn on the same real inputs (crypko_00, one random pose), so that machine noise spreads over
them within a short window. Per variant: p50 and min ms, speed-up over the unrewritten graph
(p50 and min), process CPU ms p50 (all ORT threads), max abs output difference to the unrewritten
graph (uint8 levels for the editor). Last rows: the eyebrow-changed frame (combiner + morpher +
rotator + editor, sums of the per-graph figures).

    python benchmarks/bench_tha_rewrites.py [--rounds 15] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, pct, table  # noqa: E402

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
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
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
    opts = {
        "all, 1 intra-op thread": dict(threads=1),
        "all, spinning on": dict(threads=args.threads, spinning=True),
        "all, ORT_ENABLE_EXTENDED": dict(threads=args.threads, level="ORT_ENABLE_EXTENDED"),
        "all, denormals as zero": dict(threads=args.threads, denormal_zero=True),
    }
    if args.threads == 2 and (os.cpu_count() or 0) >= 2:
        opts["all, worker thread pinned to CPU 2"] = dict(threads=2, affinity="2")

    img = cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)
    pose = np.random.default_rng(7).uniform(0.0, 1.0, 45).astype(np.float32)
    pose[37:45] = pose[37:45] * 2.0 - 1.0
    pose[44] = abs(pose[44])
    env: dict[str, np.ndarray] = {"image": img, "eyebrow_pose": pose[None, 0:12], "face_pose": pose[None, 12:39],
                                  "rotation_pose": pose[None, 39:45]}

    rows, per_stage = [], {}
    for s in STAGES:
        spec = graph_spec(s)
        feeds = {n: env[n] for n in spec.input_names}
        applies = [r for r in REWRITES if s in APPLIES[r]]
        graphs = {"no rewrites": export_stage(poser, s, "fp32", rewrites=())}
        graphs.update({f"+ {r}": export_stage(poser, s, "fp32", rewrites=(r,)) for r in applies})
        graphs["all rewrites"] = export_stage(poser, s, "fp32")
        if len(applies) > 1:
            graphs.update({f"all - {r}": export_stage(poser, s, "fp32", rewrites=[x for x in REWRITES if x != r])
                           for r in applies})
        sessions = {name: session(g, args.threads) for name, g in graphs.items()}
        sessions.update({name: session(graphs["all rewrites"], **kw) for name, kw in opts.items()})
        base_out = sessions["no rewrites"].run(None, feeds)
        env.update(dict(zip(spec.output_names, base_out)))  # the next stage's inputs
        diffs = {}
        for name, sess in sessions.items():
            out = sess.run(None, feeds)
            diffs[name] = max(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
                              for a, b in zip(base_out, out))
        wall = {name: [] for name in sessions}
        cpu = {name: [] for name in sessions}
        for r in range(args.warmup + args.rounds):
            for name, sess in sessions.items():
                c0, t0 = time.process_time(), time.perf_counter()
                sess.run(None, feeds)
                t1, c1 = time.perf_counter(), time.process_time()
                if r >= args.warmup:
                    wall[name].append((t1 - t0) * 1e3)
                    cpu[name].append((c1 - c0) * 1e3)
        per_stage[s] = {name: (pct(wall[name], 50), pct(wall[name], 0), pct(cpu[name], 50)) for name in sessions}
        b50, b0, _ = per_stage[s]["no rewrites"]
        for name in sessions:
            p50, p0, c50 = per_stage[s][name]
            d = f"{diffs[name]:.0f} levels" if s == "editor" else f"{diffs[name]:.1e}"
            rows.append([f"{s}: {name}", p50, p0, f"{b50 / p50:.2f}x", f"{b0 / p0:.2f}x", c50, d])
        del sessions

    names = ["no rewrites", "all rewrites", *opts]
    frame = {n: [sum(per_stage[s][n][i] for s in FRAME) for i in range(3)] for n in names}
    b50, b0, _ = frame["no rewrites"]
    for n in names:
        p50, p0, c50 = frame[n]
        rows.append([f"eyebrow frame: {n}", p50, p0, f"{b50 / p50:.2f}x", f"{b0 / p0:.2f}x", c50, ""])
    t = table(["THA3 fp32 graph: variant (ORT CPU)", "p50 ms", "min ms", "speed-up p50", "speed-up min",
               "CPU ms p50", "max diff vs no rewrites"], rows)
    note = (f"{args.rounds} rounds after {args.warmup} warm-up per stage, intra-op threads {args.threads} "
            "unless noted, ORT_ENABLE_ALL unless noted; '+ X' = only rewrite X, 'all - X' = all rewrites but X; "
            "inputs: crypko_00 and one random pose, each stage fed the unrewritten previous stage's outputs. "
            "Eyebrow frame rows: sums over combiner, morpher, rotator, editor of the per-graph figures (graph "
            "runs only, no copies). CPU ms = process CPU time of the run (all ORT threads).")
    publish("THA3 export rewrites and ORT session options, per graph (CPU)", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
