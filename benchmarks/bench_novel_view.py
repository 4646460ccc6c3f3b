"""SV3D / SVD networks on random weights: one denoising step (CFG batch 2T) torch eager vs the exported ONNX
graph on ONNX Runtime (CPU) vs OpenVINO's CPU plugin on the portable export, for a tiny and a mid-size
VideoUNet; and the VAE decoder's peak memory with `decoding_t` 1 vs all frames (SVD's temporal decoder, torch
eager).

Step times: one child process per config opens every side and times them alternating (each call after a short
settle pause), so the sides share one machine state; the ratio column is the side's p50 / eager p50. Memory:
one fresh child per (config, side) opens that side alone and runs one step, so its peak RSS (ru_maxrss) is its
own; "peak - base" is the growth over the process with the model already built. The run refuses to start on a
loaded machine (1-minute load average over 1.5; ``--allow-loaded`` runs it anyway, marked LOADED) and reports
the CPU other processes used while it ran (the children count as this run's own).

    python benchmarks/bench_novel_view.py [--steps 4] [--threads 2] [--allow-loaded] [--append]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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

CONFIGS = {
    "tiny": dict(unet=dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True),
                           transformer_depth=(1, 1), num_head_channels=16), frames=5, size=64),
    "mid": dict(unet=dict(model_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                          attention_levels=(True, True, True, False), transformer_depth=(1, 1, 1, 1),
                          num_head_channels=32), frames=8, size=128),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


SIDES = {"torch": "eager", "ort": "ORT CPU", "openvino": "OpenVINO CPU (portable graph)"}


def child_unet(cfg_name: str, sides: list[str], steps: int, threads: int) -> dict:
    """Open each of `sides` (keys of SIDES) on one config's UNet, time its first call, then `steps` calls of
    every side alternating (none with 0). Per side: first call ms, step p50 ms, max abs vs eager; and the
    process's base and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from sgm_video_fixtures import randomise_

    from ezvtb.engines.runner import GraphRunner
    from ezvtb.models.sgm_video import spec as specs
    from ezvtb.models.sgm_video.unet import UNetHyper, VideoUNet

    cfg = CONFIGS[cfg_name]
    hp = UNetHyper(in_channels=8, out_channels=4, context_dim=1024, adm_in_channels=1280, video_kernel_size=(3, 1, 1),
                   **cfg["unet"])
    T, s = cfg["frames"], cfg["size"] // 8
    unet = randomise_(VideoUNet(hp, T), 0).eval()
    params = sum(p.numel() for p in unet.parameters())
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2 * T, 8, s, s, generator=g), torch.randn(2 * T, generator=g),
            torch.randn(2 * T, 1, 1024, generator=g), torch.randn(2 * T, 1280, generator=g), torch.zeros(2, T))
    name = f"bench-{cfg_name}-unet"
    base = _rss_mb()
    runs, first, outs, res = {}, {}, {}, dict(params=params, base=base, sides={}, skipped={})
    for side in sides:
        t_open = time.perf_counter()
        if side == "torch":
            runs[side] = lambda: unet(*args)
        elif side == "ort":
            runner = GraphRunner(unet, lambda sh: specs.unet_spec(name, sh), name=name, backend="cpu",
                                 progress=False, intra_op_threads=threads)
            runs[side] = lambda _runner=runner: _runner(*args)
        else:
            spec = specs.unet_spec(name, tuple(tuple(a.shape) for a in args))
            path, res["ov_graph"] = portable_onnx(unet, spec, name)
            ov_run, reason = openvino_runner(path, threads)
            if ov_run is None:
                res["skipped"][side] = reason
                continue
            runs[side] = lambda _run=ov_run, _names=spec.input_names: torch.from_numpy(
                _run({n: a.numpy() for n, a in zip(_names, args)})[0])
        with torch.no_grad():
            outs[side] = runs[side]()
        first[side] = (time.perf_counter() - t_open) * 1e3
    times: dict[str, list[float]] = {}
    if steps:
        with torch.no_grad():
            times = alternating_ms(runs, steps)
    for side in runs:
        err = float((outs[side] - outs["torch"]).abs().max()) if "torch" in outs else float("nan")
        res["sides"][side] = dict(first=first[side], p50=pct(times[side], 50) if times else float("nan"), err=err)
    res["peak"] = _rss_mb()
    return res


def child_decode(decoding_t: int, frames: int, size: int, threads: int) -> dict:
    import torch
    from diffusers import AutoencoderKLTemporalDecoder

    torch.set_num_threads(threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from sgm_video_fixtures import randomise_

    from ezvtb.models.sgm_video.vae import VAEDecode

    vae = AutoencoderKLTemporalDecoder(block_out_channels=(64, 128, 256, 256), layers_per_block=2)
    dec = VAEDecode(randomise_(vae, 0).eval())
    z = torch.randn(frames, 4, size // 8, size // 8)
    base = _rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, frames, decoding_t):
            dec(z[i:i + decoding_t])
    return dict(ms=(time.perf_counter() - t0) * 1e3, base=base, peak=_rss_mb())


def _spawn(kind: str, *a) -> dict:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, f.name, *map(str, a)], check=True)
        return json.loads(open(f.name).read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per config (after one warm-up / export)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=14, help="frames for the decoder memory rows")
    ap.add_argument("--decode-size", type=int, default=256)
    ap.add_argument("--configs", default="tiny,mid")
    ap.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    add_load_args(ap)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, out, *rest = args.child
        res = child_unet(rest[0], rest[1].split(","), int(rest[2]), int(rest[3])) if kind == "unet" else \
            child_decode(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        with open(out, "w") as f:
            json.dump(res, f)
        return 0

    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"--configs: unknown {n!r}, expected some of {list(CONFIGS)}")
    watch = LoadWatch(args.allow_loaded).check()
    os.environ.setdefault("EZVTB_HOME", tempfile.mkdtemp(prefix="ezvtb_bench_nv_"))
    rows, skipped, ov_graph = [], {}, ""
    with watch:
        for name in names:
            c = CONFIGS[name]
            r = _spawn("unet", name, ",".join(SIDES), args.steps, args.threads)  # exports, then times alternating
            skipped.update(r["skipped"])
            ov_graph = r.get("ov_graph", ov_graph)
            eager = r["sides"]["torch"]["p50"]
            for side, x in r["sides"].items():
                mem = _spawn("unet", name, side, 0, args.threads)
                rows.append([f"{name} ({r['params'] / 1e6:.1f} M, T={c['frames']}, {c['size']} px)", SIDES[side],
                             x["p50"], x["first"], mem["peak"], mem["peak"] - mem["base"],
                             f"{x['p50'] / eager:.2f}" if side != "torch" else "", f"{x['err']:.1e}"])
        drows = []
        for dt in (1, args.frames):
            x = _spawn("decode", dt, args.frames, args.decode_size, args.threads)
            drows.append([f"temporal decoder, {args.frames} frames {args.decode_size} px", dt, x["ms"], x["peak"],
                          x["peak"] - x["base"]])
    t1 = table(["config", "backend", "step p50 ms", "first call ms (export+session)", "peak RSS MB",
                "peak - base MB", "p50 / eager p50", "max abs vs eager"], rows)
    t2 = table(["decoder", "decoding_t", "decode ms", "peak RSS MB", "peak - base MB"], drows)
    ov = (f"OpenVINO: not run ({'; '.join(sorted(set(skipped.values())))})." if skipped else
          f"OpenVINO CPU plugin (f32, latency hint) reads the {ov_graph} of the same UNet.")
    note = (f"Random weights (all parameters re-drawn), CFG batch 2T per step, ADM 1280, context 1024; {args.threads} "
            f"threads per side. Step p50: {args.steps} calls per side alternating in one child per config, each "
            f"after a {SETTLE_S * 1e3:.0f} ms settle pause; 'first call' (in that child) includes the ONNX export "
            "(cached on later runs) and session creation or compilation. Peak RSS: a fresh child per row, that side "
            f"alone, one step. {ov} Decoder: SVD's temporal VAE decoder (ch 64, mult 1-2-4-4) in torch eager; "
            "decoding_t frames per call.")
    publish("Novel view (SV3D/SVD networks): UNet step eager vs ORT vs OpenVINO, decoder memory vs decoding_t",
            t1 + "\n\n" + t2, note, args.append, load=watch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
