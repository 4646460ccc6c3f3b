"""UNet step latency: torch eager vs the exported graph on ONNX Runtime, same process, same inputs.

A random diffusers UNet3DConditionModel (the ModelScope text-to-video layout) at a mid size: base
channels 64 (x1, x2, x4), 2 res blocks per level, 8 frames, 32x32 latent, cond + uncond batched
(batch 2), 77-token 1024-d context. The graph is exported with `ezvtb.export.generic` (cached, so a
second run skips the export) and run through `GraphRunner` on the CPU provider. Eager and ORT calls
alternate; the table reports p50/min per step and the eager/ORT ratio (target: ORT >= 1.5x eager).

    python benchmarks/bench_diffusion.py [--rounds 5] [--channels 64] [--frames 8] [--size 32] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import pct, publish, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per side (alternating)")
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=32, help="latent height and width")
    ap.add_argument("--batch", type=int, default=2, help="2 = cond and uncond in one call")
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (0: torch's and ORT's default)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()

    import torch

    from ezvtb.diffusion.unet3d import UNet3DStep, parameter_count, unet3d, unet3d_step_spec
    from ezvtb.engines.runner import GraphRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    net = UNet3DStep(unet3d(args.channels, levels=args.levels, layers_per_block=args.layers,
                            cross_attention_dim=1024, attention_head_dim=8, seed=0)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=g)
    t = torch.full((args.batch,), 500.0)
    ctx = torch.randn(args.batch, 77, 1024, generator=g)
    runner = GraphRunner(net, unet3d_step_spec, name=f"bench_unet3d_c{args.channels}", backend="cpu",
                         intra_op_threads=args.threads)
    t0 = time.perf_counter()
    with torch.no_grad():
        got = runner(x, t, ctx)  # export (or cache hit) + session + first run
    setup_s = time.perf_counter() - t0
    with torch.no_grad():
        ref = net(x, t, ctx)
    err = float((got - ref).abs().max())
    times: dict[str, list[float]] = {"torch eager": [], "ORT CPU": []}
    with torch.no_grad():
        for r in range(args.rounds):
            order = (("torch eager", net), ("ORT CPU", runner))
            for name, fn in (order if r % 2 == 0 else order[::-1]):
                s = time.perf_counter()
                fn(x, t, ctx)
                times[name].append((time.perf_counter() - s) * 1e3)
    runner.close()
    eager_p50 = pct(times["torch eager"], 50)
    rows = []
    for name, ts in times.items():
        p50 = pct(ts, 50)
        rows.append([name, len(ts), f"{p50:.0f}", f"{min(ts):.0f}", f"{eager_p50 / p50:.2f}x"])
    text = table(["UNet step", "calls", "p50 ms", "min ms", "vs eager (p50)"], rows)
    chans = ", ".join(str(args.channels * 2 ** i) for i in range(args.levels))
    note = (f"diffusers UNet3DConditionModel ({chans}) channels, {args.layers} res blocks per level, "
            f"{parameter_count(net) / 1e6:.1f} M parameters, random weights; input {args.batch}x4x{args.frames}x"
            f"{args.size}x{args.size}, context {args.batch}x77x1024, fp32. ORT vs eager max abs {err:.1e}. "
            f"Threads: {args.threads or 'library defaults'}; calls alternate between the two sides. First ORT call "
            f"(export or cache hit + session) {setup_s:.0f} s. Target: ORT >= 1.5x eager.")
    publish("UNet3D step: torch eager vs ORT (CPU)", text, note, args.append)


if __name__ == "__main__":
    main()
