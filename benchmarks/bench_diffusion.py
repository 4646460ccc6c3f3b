"""UNet step latency: torch eager vs the exported graph on ONNX Runtime, same process, same inputs.

A random diffusers UNet3DConditionModel (the ModelScope text-to-video layout) at a mid size: base
channels 64 (x1, x2, x4), 2 res blocks per level, 8 frames, 32x32 latent, cond + uncond batched
(batch 2), 77-token 1024-d context. The graph is exported with `ezvtb.export.exporter` (cached, so a
second run skips the export) and run the way the pipelines run it: a `NetworkSet` network on the
"torch" backend (eager) and on the CPU backend (ORT). OpenVINO's CPU plugin (what a CPU user would pick
instead) runs the portable export of the same module (standard ONNX operators only) when openvino is
installed. Calls alternate between the sides, each after a short settle pause; the table reports p50/min
per step and the ratios to eager and to OpenVINO (targets: ORT >= 2x eager and >= 1.2x OpenVINO).
``--split-cfg`` adds cond and uncond as two calls of batch 1 on both sides (classifier-free guidance's
other shape; which is faster decides `SDVideo.cfg_batch`).

The run refuses to start on a loaded machine (1-minute load average over 1.5; ``--allow-loaded`` runs it
anyway, marked LOADED) and reports the CPU other processes used while it was timed.

``--baseline DIR``: also time the runner of another checkout of ezvtb (DIR is its repository root,
e.g. a ``git worktree`` of an older commit) on the same module and inputs, calling it as that code
called it (eager: the module itself; ORT: its GraphRunner), alternating with the current code, so a
change to the runtime path is measured before/after in one process on one machine state.

    python benchmarks/bench_diffusion.py [--rounds 5] [--channels 64] [--frames 8] [--size 32] \
        [--split-cfg] [--baseline DIR] [--allow-loaded] [--append]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    SETTLE_S,
    LoadWatch,
    add_load_args,
    alternating_ms,
    openvino_runner,
    pct,
    portable_onnx,
    publish,
    table,
)


OV = "OpenVINO CPU (portable graph)"
EAGER_SPLIT, ORT_SPLIT = "torch eager, 2 calls of batch 1", "ORT CPU, 2 calls of batch 1"


def baseline_runner_class(root: str):
    """`GraphRunner` from the checkout at `root`, loaded under its own module name (the rest of ezvtb is shared)."""
    for rel in ("ezvtb/engines/runner.py", "ezvtb/export/generic.py"):
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("baseline_runner", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules["baseline_runner"] = mod
            spec.loader.exec_module(mod)
            return mod.GraphRunner
    raise SystemExit(f"--baseline: no ezvtb/engines/runner.py or ezvtb/export/generic.py under {root}")


def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


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
    ap.add_argument("--baseline", help="repository root of another ezvtb checkout to time alongside")
    ap.add_argument("--baseline-label", default="before", help="how the baseline rows are labelled")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--split-cfg", action="store_true",
                    help="with --batch 2, also time cond and uncond as two calls of batch 1 (eager and ORT)")
    add_load_args(ap)
    args = ap.parse_args()
    watch = LoadWatch(args.allow_loaded).check()  # before the model is built: set-up raises the load too

    import torch

    from ezvtb.diffusion.networks import NetworkSet
    from ezvtb.diffusion.unet3d import UNet3DStep, parameter_count, unet3d, unet3d_step_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    net = UNet3DStep(unet3d(args.channels, levels=args.levels, layers_per_block=args.layers,
                            cross_attention_dim=1024, attention_head_dim=8, seed=0)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 4, args.frames, args.size, args.size, generator=g)
    t = torch.full((args.batch,), 500.0)
    ctx = torch.randn(args.batch, 77, 1024, generator=g)
    name = f"bench_unet3d_c{args.channels}"
    opts = {"intra_op_threads": args.threads} if args.threads else {}

    def pipeline(backend: str) -> NetworkSet:
        nets = NetworkSet()
        nets.init_networks(backend=backend, device="cpu", **opts)
        nets.add_network("unet", net, unet3d_step_spec, graph_name=name)
        return nets

    eager_set, ort_set = pipeline("torch"), pipeline("cpu")
    sides = {"torch eager": eager_set.network("unet"), "ORT CPU": ort_set.network("unet")}
    if args.batch == 2 and args.split_cfg:
        # classifier-free guidance as two calls of batch 1 (cond, uncond) instead of one call of batch 2: the
        # choice `guided_model(batched=...)` makes; its own graph (batch 1) on the ORT side
        def two_calls(f):
            def call(x, t, ctx):
                return torch.cat([f(x[:1], t[:1], ctx[:1]), f(x[1:], t[1:], ctx[1:])])
            return call

        sides[EAGER_SPLIT] = two_calls(sides["torch eager"])
        sides[ORT_SPLIT] = two_calls(sides["ORT CPU"])
    if args.baseline:
        old_runner = baseline_runner_class(os.path.abspath(args.baseline))
        sides[f"torch eager ({args.baseline_label})"] = net
        sides[f"ORT CPU ({args.baseline_label})"] = old_runner(net, unet3d_step_spec, name=name, backend="cpu",
                                                                **opts)
    t0 = time.perf_counter()
    with torch.no_grad():
        got = sides["ORT CPU"](x, t, ctx)  # export (or cache hit) + session + first run
        if ORT_SPLIT in sides:
            sides[ORT_SPLIT](x, t, ctx)  # the batch-1 graph: export or cache hit
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = unet3d_step_spec((tuple(x.shape), tuple(t.shape), tuple(ctx.shape)))
    ov_path, ov_graph = portable_onnx(net, spec, name)
    ov_run, ov_reason = openvino_runner(ov_path, args.threads)
    ov_setup_s = time.perf_counter() - t0
    if ov_run is not None:
        def openvino_step(*inputs, _run=ov_run):
            out = _run({n: v.numpy() for n, v in zip(spec.input_names, inputs)})
            return torch.from_numpy(out[0])

        sides[OV] = openvino_step
    with torch.no_grad():
        ref = net(x, t, ctx)
        errs = {k: float((f(x, t, ctx) - ref).abs().max()) for k, f in sides.items() if k != "ORT CPU"}
    errs["ORT CPU"] = float((got - ref).abs().max())
    with torch.no_grad(), watch:
        times = alternating_ms({k: (lambda f=f: f(x, t, ctx)) for k, f in sides.items()}, args.rounds)
    eager_set.close()
    ort_set.close()
    if args.baseline:
        sides[f"ORT CPU ({args.baseline_label})"].close()
    eager_p50 = pct(times["torch eager"], 50)
    ov_p50 = pct(times[OV], 50) if OV in times else None
    rows = []
    for k, ts in times.items():
        p50 = pct(ts, 50)
        rows.append([k, len(ts), f"{p50:.0f}", f"{min(ts):.0f}", f"{eager_p50 / p50:.2f}x"]
                    + ([f"{ov_p50 / p50:.2f}x"] if ov_p50 else []) + [f"{errs[k]:.1e}"])
    ov_col = ["vs OpenVINO (p50)"] if ov_p50 else []
    text = table(["UNet step", "calls", "p50 ms", "min ms", "vs eager (p50)"] + ov_col + ["max abs vs module"], rows)
    chans = ", ".join(str(args.channels * 2 ** i) for i in range(args.levels))
    base = (f" Rows marked ({args.baseline_label}) run the code of {args.baseline} (eager: the module called directly;"
            " ORT: its GraphRunner) on the same module, inputs and cached graph." if args.baseline else "")
    ov_note = (f" OpenVINO {openvino_version()} CPU plugin (f32, latency hint) reads the {ov_graph} of the same "
               f"module; its set-up (export or cache hit + compile) {ov_setup_s:.0f} s; 'vs OpenVINO' = OpenVINO p50 "
               "/ row p50." if ov_run is not None else f" OpenVINO: not run ({ov_reason}).")
    note = (f"diffusers UNet3DConditionModel ({chans}) channels, {args.layers} res blocks per level, "
            f"{parameter_count(net) / 1e6:.1f} M parameters, random weights; input {args.batch}x4x{args.frames}x"
            f"{args.size}x{args.size}, context {args.batch}x77x1024, fp32. Eager and ORT run as the pipelines run "
            f"them (a NetworkSet network on the torch and cpu backends).{base} Threads: "
            f"{args.threads or 'library defaults'}; calls alternate between the sides, each after a "
            f"{SETTLE_S * 1e3:.0f} ms settle pause. First ORT call (export or cache hit + session) {setup_s:.0f} s."
            f"{ov_note} Targets: ORT >= 2x eager and >= 1.2x OpenVINO.")
    publish("UNet3D step: torch eager vs ORT (CPU) vs OpenVINO", text, note, args.append, load=watch)


if __name__ == "__main__":
    main()
