"""What each export-time rewrite of the generative networks gives on ONNX Runtime's CPU provider, next to
torch eager and OpenVINO, per UNet step; and where the time of the fully rewritten graph goes.

Networks (random weights, fp32): the UNet3D of bench_diffusion.py (diffusers UNet3DConditionModel,
64/128/256 channels, 8 frames, 32x32 latent, cond + uncond batched) and the SVD/SV3D VideoUNet of
bench_novel_view.py's "mid" config (64/128/256/256 channels, 8 frames, 16x16 latent, CFG batch 16).
For each network: the graph exported without rewrites, with each rewrite of
`ezvtb.export.network_rewrites.REWRITES` alone ("+ X"), with all of them (what the ``cpu`` backend
runs), and with all but one ("all - X", with ``--leave-one-out``); torch eager (the module, as the
``torch`` backend runs it); OpenVINO's CPU plugin on the graph without rewrites, on the portable one
(standard ONNX) and on the all-rewrites graph (OpenVINO 2026 reads com.microsoft.MultiHeadAttention).
Every side is timed in turn in one process, the order reversed every other round, after a short settle
pause. Per row: p50 and min ms, speed-up over the unrewritten graph, ratio to eager and to the best OpenVINO
row (p50), max abs output difference to the torch module.

Then one profiled run of the all-rewrites graph: ORT's per-node times summed by kind (attention,
convolution, linear layers, normalisation, element-wise, data movement); the share of work that is the same
at every denoising step (by data flow from the graph inputs: it reads neither the sample nor the timestep);
the convolutions' and linear layers' multiply-adds against this machine's large-GEMM rate on ORT (the least
time they can take); GroupNorm + SiLU as exported against ONNX's GroupNormalization-21; and what the step
time would have to be to reach the targets (2x eager, 1.2x OpenVINO).

    python benchmarks/bench_diffusion_rewrites.py [--rounds 4] [--threads 2] [--networks unet3d,videounet]
        [--leave-one-out] [--allow-loaded] [--append]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    LoadWatch,
    add_load_args,
    alternating_ms,
    openvino_runner,
    pct,
    publish,
    table,
    timed_ms,
)

TARGET_EAGER, TARGET_OPENVINO = 2.0, 1.2
NETWORKS = ("unet3d", "t2v-mid", "videounet")
KINDS = ("attention", "convolution", "linear", "normalisation", "element-wise", "data movement", "other")


def build(network: str):
    """(module, spec, example inputs as torch tensors, a few words describing it)."""
    import torch

    from ezvtb.diffusion.unet3d import UNet3DStep, parameter_count, unet3d, unet3d_step_spec

    g = torch.Generator().manual_seed(0)
    if network == "unet3d":
        net = UNet3DStep(unet3d(64, levels=3, layers_per_block=2, cross_attention_dim=1024, attention_head_dim=8,
                                seed=0)).eval()
        xs = (torch.randn(2, 4, 8, 32, 32, generator=g), torch.full((2,), 500.0), torch.randn(2, 77, 1024, generator=g))
        spec = unet3d_step_spec(tuple(tuple(x.shape) for x in xs))
        about = (f"UNet3D (64/128/256 ch, 2 res blocks per level, 8 heads), {parameter_count(net) / 1e6:.1f} M "
                 "params; sample 2x4x8x32x32, context 2x77x1024")
        return net, spec, xs, about
    if network == "t2v-mid":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_t2v import CONFIGS, unet3d_of

        cfg = CONFIGS["mid"]
        torch.manual_seed(0)
        net = UNet3DStep(unet3d_of(cfg).eval())
        s = cfg["size"][0] // 8
        xs = (torch.randn(1, 4, cfg["frames"], s, s, generator=g), torch.full((1,), 500.0),
              torch.randn(1, 77, cfg["text"]["hidden_size"], generator=g))
        spec = unet3d_step_spec(tuple(tuple(x.shape) for x in xs))
        u = cfg["unet"]
        about = (f"bench_t2v's mid UNet3D ({'/'.join(map(str, u['block_out_channels']))} ch, "
                 f"{u['attention_head_dim']} heads), {parameter_count(net) / 1e6:.1f} M params; one CFG half: "
                 f"sample 1x4x{cfg['frames']}x{s}x{s}, context 1x77x{cfg['text']['hidden_size']}")
        return net, spec, xs, about
    if network == "videounet":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from sgm_video_fixtures import randomise_

        from ezvtb.models.sgm_video import spec as specs
        from ezvtb.models.sgm_video.unet import UNetHyper, VideoUNet

        hp = UNetHyper(in_channels=8, out_channels=4, context_dim=1024, adm_in_channels=1280,
                       video_kernel_size=(3, 1, 1), model_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                       attention_levels=(True, True, True, False), transformer_depth=(1, 1, 1, 1),
                       num_head_channels=32)
        frames, s = 8, 16
        net = randomise_(VideoUNet(hp, frames), 0).eval()
        xs = (torch.randn(2 * frames, 8, s, s, generator=g), torch.randn(2 * frames, generator=g),
              torch.randn(2 * frames, 1, 1024, generator=g), torch.randn(2 * frames, 1280, generator=g),
              torch.zeros(2, frames))
        spec = specs.unet_spec("bench-videounet", tuple(tuple(x.shape) for x in xs))
        about = (f"SVD/SV3D VideoUNet (64/128/256/256 ch, head dim 32), {parameter_count(net) / 1e6:.1f} M params; "
                 f"CFG batch {2 * frames} frames of 8x{s}x{s}, context 1x1024 per frame")
        return net, spec, xs, about
    raise SystemExit(f"--networks: unknown {network!r}, expected some of {NETWORKS}")


def ort_session(data: bytes, threads: int, profile_prefix: str | None = None, optimised_path: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if optimised_path:
        so.optimized_model_filepath = optimised_path
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def kind_of(op: str, node: str) -> str:
    """The kind of work an ORT node does (for the time shares)."""
    in_attention = "/attn" in node and not any(p in node for p in ("/to_q", "/to_k", "/to_v", "/to_out"))
    if op in ("MultiHeadAttention", "Attention", "Softmax") or (op in ("MatMul", "FusedMatMul") and in_attention):
        return "attention"
    if op in ("Conv", "FusedConv", "NhwcConv", "ReorderInput", "ReorderOutput", "ConvTranspose"):
        return "convolution"
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm"):
        return "linear"
    if op in ("InstanceNormalization", "LayerNormalization", "SkipLayerNormalization", "GroupNorm",
              "GroupNormalization", "SkipSimplifiedLayerNormalization"):
        return "normalisation"
    if op in ("Add", "Sub", "Mul", "Div", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Sigmoid", "Erf", "Sin", "Cos",
              "Exp", "Sqrt", "Pow", "Where", "Neg"):
        return "element-wise"
    if op in ("Transpose", "Reshape", "Concat", "Split", "Slice", "Tile", "Resize", "Expand", "Gather", "Unsqueeze",
              "Squeeze", "Flatten", "Cast", "Upsample", "Identity"):
        return "data movement"
    return "other"


STEP_INPUTS = 2  # the first inputs of every network here (sample, timestep) change at each denoising step


def step_dependence(model_path: str, step_inputs: Sequence[str]) -> dict[str, str]:
    """{node name: "per video" | "timestep only" | "per step"} for the nodes of an ONNX graph (the one ORT
    optimised, so the names match its profile), by data flow from the graph inputs `step_inputs` (the sample's
    name, then the timestep's): "per video" nodes read neither of them nor anything computed from them (the
    same values at every denoising step: the context's projections, the conditioning vectors' embeddings),
    "timestep only" ones read the timestep but not the sample (computable for every step of a schedule up
    front)."""
    import onnx

    graph = onnx.load(model_path, load_external_data=False).graph
    sample, timestep = step_inputs
    depends: dict[str, frozenset[str]] = {i.name: frozenset({i.name}) for i in graph.input}
    out: dict[str, str] = {}
    for node in graph.node:  # ONNX graphs are stored in topological order
        deps = frozenset().union(*(depends.get(i, frozenset()) for i in node.input if i))
        for o in node.output:
            depends[o] = deps
        out[node.name] = ("per step" if sample in deps else "timestep only" if timestep in deps else "per video")
    return out


def node_flops(op: str, inputs: list[list[int]], outputs: list[list[int]]) -> float:
    """Multiply-adds x 2 of a convolution or linear node from the shapes ORT's profile records (0 for
    other nodes). Constant weights a kernel pre-packed are not listed; the output and the activation's
    last axis give a linear layer's work, the (out, in/groups, *kernel) weight a convolution's."""
    if not outputs:
        return 0.0
    out = float(np.prod(outputs[0]))
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm") and inputs:
        return 2.0 * out * inputs[0][-1]
    if op in ("Conv", "FusedConv") and len(inputs) > 1 and len(inputs[1]) >= 3:
        return 2.0 * out * float(np.prod(inputs[1][1:]))
    return 0.0


def profile_shares(data: bytes, feeds: dict, threads: int, runs: int = 2,
                   step_inputs: tuple[str, str] | None = None) -> dict:
    """One profiled look at a graph: {"kinds": {kind: ms per run}, "total": ms, "gemm_flops": FLOP per run of
    the convolution and linear nodes, "gemm_ms": their ms per run}, over `runs` profiled runs after one
    unprofiled warm-up; with `step_inputs` (the sample's and the timestep's input names) also "per video" and
    "timestep only": ms of the nodes `step_dependence` finds so (also counted in their kind)."""
    with tempfile.TemporaryDirectory(prefix="ezvtb-profile.") as tmp:
        optimised = os.path.join(tmp, "optimised.onnx")
        sess = ort_session(data, threads, profile_prefix=os.path.join(tmp, "p"),
                           optimised_path=optimised if step_inputs else None)
        sess.run(None, feeds)
        for _ in range(runs):
            sess.run(None, feeds)
        path = sess.end_profiling()
        events = json.loads(Path(path).read_text())
        dependence = step_dependence(optimised, step_inputs) if step_inputs else {}
    # every node's events in run order: the last `runs` of each are the profiled runs after the warm-up
    per_node: dict[str, list[float]] = collections.defaultdict(list)
    args: dict[str, dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            per_node[name].append(e["dur"] / 1e3)
            args[name] = e["args"]
    kinds = dict.fromkeys(KINDS, 0.0)
    flops = gemm_ms = 0.0
    shapes = lambda a, key: [list(d.values())[0] for d in a.get(key, [])]  # noqa: E731
    for name, durs in per_node.items():
        op = args[name].get("op_name", "")
        ms = sum(durs[-runs:]) / runs
        kind = kind_of(op, name)
        kinds[kind] += ms
        if kind in ("linear", "convolution"):
            f = node_flops(op, shapes(args[name], "input_type_shape"), shapes(args[name], "output_type_shape"))
            if f:
                flops += f
                gemm_ms += ms
    found = {k: sum(sum(d[-runs:]) / runs for n, d in per_node.items() if dependence.get(n) == k)
             for k in ("per video", "timestep only")}
    return {"kinds": kinds, "total": sum(kinds.values()), "gemm_flops": flops, "gemm_ms": gemm_ms, **found}


def gemm_rate(threads: int, n: int = 2048, calls: int = 8) -> float:
    """This machine's large-GEMM rate on ONNX Runtime (GFLOP/s): the best of `calls` n x n x n MatMuls with a
    constant (pre-packed) weight, the kernel every linear layer and convolution of the UNets runs on."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
                              [numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_session(model.SerializeToString(), threads)
    x = {"x": rng.standard_normal((n, n), dtype=np.float32)}
    sess.run(None, x)
    best = min(timed_ms(lambda: sess.run(None, x)) for _ in range(calls))
    return 2.0 * n ** 3 / (best / 1e3) / 1e9


def group_norm_forms(net, xs, threads: int, rounds: int) -> str:
    """GroupNorm + SiLU at the largest GroupNorm input of `net`: the form the exporter writes (Reshape,
    InstanceNormalization, Reshape, Mul, Add; ORT fuses x * sigmoid(x) into QuickGelu) against the one
    standard operator for it (ONNX GroupNormalization-21, then SiLU), alternating on ORT; a sentence."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from ezvtb.engines.base import GraphSpec, TensorSpec
    from ezvtb.export.exporter import export_bytes

    seen: list[tuple[tuple[int, ...], int, int, float]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((tuple(a[0].shape), m.num_groups, m.num_channels,
                                                                   m.eps)))
             for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    try:
        with torch.no_grad():
            net(*xs)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        return ""
    shape, groups, channels, eps = max(seen, key=lambda s: np.prod(s[0]))
    g = torch.Generator().manual_seed(0)
    block = torch.nn.Sequential(torch.nn.GroupNorm(groups, channels, eps=eps), torch.nn.SiLU()).eval()
    with torch.no_grad():
        block[0].weight.copy_(1 + 0.1 * torch.randn(channels, generator=g))
        block[0].bias.copy_(0.1 * torch.randn(channels, generator=g))
    x = torch.randn(shape, generator=g)
    spec = GraphSpec("group_norm_silu", (TensorSpec("x", shape, "float32"),), (TensorSpec("y", shape, "float32"),))
    exported = export_bytes(block, spec, (x,))
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape))  # noqa: E731
    standard = helper.make_model(helper.make_graph(
        [helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["n"], num_groups=groups, epsilon=eps),
         helper.make_node("Sigmoid", ["n"], ["s"]), helper.make_node("Mul", ["n", "s"], ["y"])],
        "group_norm_silu", [vi("x")], [vi("y")],
        [numpy_helper.from_array(block[0].weight.detach().numpy(), "scale"),
         numpy_helper.from_array(block[0].bias.detach().numpy(), "bias")]),
        opset_imports=[helper.make_opsetid("", 21)])
    feeds = {"x": x.numpy()}
    with torch.no_grad():
        ref = block(x).numpy()
    sides, errs = {}, {}
    for label, data in (("exported", exported), ("standard", standard.SerializeToString())):
        sess = ort_session(data, threads)
        errs[label] = float(np.abs(sess.run(None, feeds)[0] - ref).max())
        sides[label] = (lambda s=sess: s.run(None, feeds))
    times = alternating_ms(sides, max(rounds, 10))
    ops = sorted({n.op_type for n in onnx.load_from_string(exported).graph.node})
    a, b = pct(times["exported"], 50), pct(times["standard"], 50)
    verdict = ("faster: a GroupNorm rewrite would pay here" if b < 0.95 * a else
               "no faster on ORT's CPU provider, which has no kernel fusing the norm with the activation; so the "
               "exporter's form is kept")
    return (f"GroupNorm + SiLU at its largest input here ({'x'.join(map(str, shape))}, {groups} groups): as exported "
            f"({', '.join(ops)}) {a:.2f} ms p50, max abs {errs['exported']:.1e}; as ONNX GroupNormalization-21 + "
            f"SiLU {b:.2f} ms, max abs {errs['standard']:.1e}: the standard operator runs at {a / b:.2f}x the "
            f"exported form's speed, {verdict}. ")


def measure(network: str, args) -> tuple[list[list[object]], str, LoadWatch]:
    import torch

    from ezvtb.export.exporter import export_bytes
    from ezvtb.export.network_rewrites import PORTABLE_REWRITES, REWRITES, rewritten

    net, spec, xs, about = build(network)
    feeds = {t.name: x.numpy() for t, x in zip(spec.inputs, xs)}
    with torch.no_grad():
        ref = net(*xs)
    ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()

    variants: dict[str, tuple[str, ...]] = {"no rewrites": ()}
    variants.update({f"+ {r}": (r,) for r in REWRITES})
    variants["all rewrites (cpu backend)"] = REWRITES
    if args.leave_one_out:
        variants.update({f"all - {r}": tuple(x for x in REWRITES if x != r) for r in REWRITES})
    graphs: dict[str, bytes] = {}
    export_s = {}
    for label, rw in variants.items():
        t0 = time.perf_counter()
        with rewritten(net, rw):
            graphs[label] = export_bytes(net, spec, xs)
        export_s[label] = time.perf_counter() - t0
    sides = {}
    outputs = {}
    for label, data in graphs.items():
        sess = ort_session(data, args.threads)
        sides[f"ORT: {label}"] = (lambda s=sess: s.run(None, feeds))
        outputs[f"ORT: {label}"] = sides[f"ORT: {label}"]()[0]
    with tempfile.TemporaryDirectory(prefix="ezvtb-ov.") as tmp:
        ov_graphs = {"OpenVINO: no rewrites": graphs["no rewrites"]}
        with rewritten(net, PORTABLE_REWRITES):
            ov_graphs["OpenVINO: portable rewrites"] = export_bytes(net, spec, xs)
        ov_graphs["OpenVINO: all rewrites (the cpu backend's graph)"] = graphs["all rewrites (cpu backend)"]
        ov_reasons = []
        for label, data in ov_graphs.items():
            path = Path(tmp) / f"{len(sides)}.onnx"
            path.write_bytes(data)
            run, reason = openvino_runner(path, args.threads)
            if run is None:
                ov_reasons.append(f"{label}: {reason}")
                continue
            sides[label] = (lambda r=run: r(feeds))
            outputs[label] = sides[label]()[0]

    def eager():
        with torch.no_grad():
            return net(*xs)

    sides["torch eager"] = eager
    outputs["torch eager"] = ref
    eager()
    with LoadWatch(args.allow_loaded).settle() as watch:  # the exports above raised the load average
        rates = [gemm_rate(args.threads)]
        times = alternating_ms(sides, args.rounds)
        rates.append(gemm_rate(args.threads))
    base = pct(times["ORT: no rewrites"], 50)
    eager50 = pct(times["torch eager"], 50)
    ov_labels = [k for k in times if k.startswith("OpenVINO")]
    ov_best = min((pct(times[k], 50) for k in ov_labels), default=float("nan"))
    rows = []
    for k, ts in times.items():
        p50 = pct(ts, 50)
        err = float(np.abs(np.asarray(outputs[k], np.float64) - ref).max())
        rows.append([f"{network}: {k}", f"{p50:.0f}", f"{min(ts):.0f}", f"{base / p50:.2f}x", f"{eager50 / p50:.2f}x",
                     f"{ov_best / p50:.2f}x" if ov_labels else "-", f"{err:.1e}"])
    full = "ORT: all rewrites (cpu backend)"
    prof = profile_shares(graphs["all rewrites (cpu backend)"], feeds, args.threads,
                          step_inputs=tuple(t.name for t in spec.inputs[:STEP_INPUTS]))
    shares, total = prof["kinds"], prof["total"]
    peak = max(rates)  # the machine's speed drifts: the faster reading bounds what its kernels can reach
    best = pct(times[full], 50)
    target_ms = min(eager50 / TARGET_EAGER, ov_best / TARGET_OPENVINO if ov_labels else float("inf"))
    need = best / target_ms
    share_text = ", ".join(f"{k} {100 * v / total:.0f}% ({v:.0f} ms)" for k, v in
                           sorted(shares.items(), key=lambda kv: -kv[1]) if v >= 0.005 * total)
    video, stamp = prof["per video"], prof["timestep only"]
    share_text += (f"; of it, by data flow from the inputs, work that reads neither the sample nor the timestep "
                   f"(the same at every step: the context's projections, the conditioning vectors' embeddings) "
                   f"{100 * video / total:.1f}% "
                   f"({video:.0f} ms), and work that reads the timestep but not the sample (the timestep "
                   f"embedding and its projections) {100 * stamp / total:.1f}% ({stamp:.0f} ms)")
    attention = shares["attention"]
    att_need = attention - (best - best / need) if need > 1 else attention
    note = (f"{network}: {about}. Export per graph {np.median(list(export_s.values())):.0f} s (TorchScript). "
            f"Where the all-rewrites graph's time goes (ORT profile, {total:.0f} ms of node time per run): "
            f"{share_text}. ")
    rate = prof["gemm_flops"] / (prof["gemm_ms"] / 1e3) / 1e9 if prof["gemm_ms"] else float("nan")
    floor = prof["gemm_flops"] / (peak * 1e9) * 1e3
    note += (f"Its convolutions and linear layers do {prof['gemm_flops'] / 1e9:.1f} GFLOP per step in "
             f"{prof['gemm_ms']:.0f} ms: {rate:.0f} GFLOP/s, {100 * rate / peak:.0f}% of this machine's large-GEMM "
             f"rate on ORT ({peak:.0f} GFLOP/s: a 2048^3 MatMul, the best of 8 calls before and 8 after the timing, "
             f"which gave {rates[0]:.0f} and {rates[1]:.0f}); at that rate they alone "
             f"take {floor:.0f} ms, so the step cannot go below {floor:.0f} ms without doing less arithmetic" +
             (f", and everything else ({total - prof['gemm_ms']:.0f} ms now) would have to fit in "
              f"{target_ms - floor:.0f} ms for the targets. " if target_ms > floor else
              f": more than the {target_ms:.0f} ms the targets allow, which this graph's arithmetic cannot reach "
              "on this machine. "))
    note += group_norm_forms(net, xs, args.threads, args.rounds)
    if ov_reasons:
        note += f"OpenVINO rows left out: {'; '.join(ov_reasons)}. "
    if need > 1:
        note += (f"Targets ({TARGET_EAGER}x eager = {eager50 / TARGET_EAGER:.0f} ms, {TARGET_OPENVINO}x OpenVINO = "
                 f"{ov_best / TARGET_OPENVINO:.0f} ms p50): not reached; the step would have to be {need:.2f}x "
                 f"faster, e.g. attention at {max(att_need, 0):.0f} ms instead of {attention:.0f} ms with all else "
                 "unchanged" + (" (more than all of it: no attention kernel alone can close the gap)"
                                if att_need <= 0 else "") + ". ")
    else:
        note += f"Targets ({TARGET_EAGER}x eager, {TARGET_OPENVINO}x OpenVINO): reached. "
    return rows, note + watch.note(), watch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="timed calls per side (alternating)")
    ap.add_argument("--threads", type=int, default=2, help="threads for every side")
    ap.add_argument("--networks", default=",".join(NETWORKS), help=f"some of {', '.join(NETWORKS)}")
    ap.add_argument("--leave-one-out", action="store_true", help="also time all rewrites but one")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    add_load_args(ap)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        ap.error("--rounds and --threads: expected >= 1")
    LoadWatch(args.allow_loaded).check()  # before minutes of export
    import torch

    torch.set_num_threads(args.threads)
    rows, notes, watches = [], [], []
    for network in [n for n in args.networks.split(",") if n]:
        r, n, w = measure(network, args)
        rows += r
        notes.append(n)
        watches.append(w)
    text = table(["UNet step: graph / runtime (CPU)", "p50 ms", "min ms", "vs no rewrites", "vs eager",
                  "vs best OpenVINO", "max abs vs torch"], rows)
    note = (f"{args.rounds} alternating rounds per side after one warm-up call, {args.threads} threads everywhere "
            "(ORT intra-op, torch, OpenVINO inference threads), fp32. '+ X' = only rewrite X; 'all rewrites' = the "
            "graph the cpu backend exports; 'vs best OpenVINO' compares with the fastest OpenVINO row. "
            + " ".join(notes))
    title = "Generative network rewrites: ORT CPU per rewrite vs torch eager and OpenVINO (bench_diffusion_rewrites)"
    flagged = next((w for w in watches if w.loaded), watches[0])  # any loaded network marks the whole table
    publish(flagged.heading(title), text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
