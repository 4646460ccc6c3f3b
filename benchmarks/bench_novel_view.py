"""SV3D / SVD networks on random weights: one denoising step (CFG batch 2T) torch eager vs the exported ONNX
graph on ONNX Runtime (CPU), for a tiny and a mid-size VideoUNet; and the VAE decoder's peak memory with
`decoding_t` 1 vs all frames (SVD's temporal decoder, torch eager).

Every measurement runs in a fresh child process, so its peak RSS (ru_maxrss) is its own; "peak - base" is the
growth over the process with the model already built. Step rounds alternate within a child; the ratio column
is ORT / eager p50 of the same config.

    python benchmarks/bench_novel_view.py [--steps 4] [--threads 2] [--append]
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
from _common import pct, publish, table  # noqa: E402

CONFIGS = {
    "tiny": dict(unet=dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True),
                           transformer_depth=(1, 1), num_head_channels=16), frames=5, size=64),
    "mid": dict(unet=dict(model_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=1,
                          attention_levels=(True, True, True, False), transformer_depth=(1, 1, 1, 1),
                          num_head_channels=32), frames=8, size=128),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_unet(cfg_name: str, backend: str, steps: int, threads: int) -> dict:
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
    base = _rss_mb()
    t_open = time.perf_counter()
    if backend == "torch":
        run = unet
    else:
        run = GraphRunner(unet, lambda sh: specs.unet_spec(f"bench-{cfg_name}-unet", sh), name=f"bench-{cfg_name}-unet",
                          backend="cpu", progress=False, intra_op_threads=threads)
    times = []
    with torch.no_grad():
        for i in range(steps + 1):
            t0 = time.perf_counter()
            run(*args)
            times.append((time.perf_counter() - t0) * 1e3)
    first = (time.perf_counter() - t_open) * 1e3 - sum(times[1:])
    return dict(params=params, p50=pct(times[1:], 50), first=first, base=base, peak=_rss_mb())


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
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, out, *rest = args.child
        res = child_unet(rest[0], rest[1], int(rest[2]), int(rest[3])) if kind == "unet" else \
            child_decode(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        with open(out, "w") as f:
            json.dump(res, f)
        return 0

    os.environ.setdefault("EZVTB_HOME", tempfile.mkdtemp(prefix="ezvtb_bench_nv_"))
    rows = []
    for name in args.configs.split(","):
        c = CONFIGS[name]
        r = {b: _spawn("unet", name, b, args.steps, args.threads) for b in ("torch", "ort")}
        for b in ("torch", "ort"):
            x = r[b]
            rows.append([f"{name} ({x['params'] / 1e6:.1f} M, T={c['frames']}, {c['size']} px)",
                         "eager" if b == "torch" else "ORT CPU", x["p50"], x["first"], x["peak"],
                         x["peak"] - x["base"],
                         f"{r['ort']['p50'] / r['torch']['p50']:.2f}" if b == "ort" else ""])
    t1 = table(["config", "backend", "step p50 ms", "first call ms (export+session)", "peak RSS MB",
                "peak - base MB", "ORT / eager"], rows)
    drows = []
    for dt in (1, args.frames):
        x = _spawn("decode", dt, args.frames, args.decode_size, args.threads)
        drows.append([f"temporal decoder, {args.frames} frames {args.decode_size} px", dt, x["ms"], x["peak"],
                      x["peak"] - x["base"]])
    t2 = table(["decoder", "decoding_t", "decode ms", "peak RSS MB", "peak - base MB"], drows)
    note = ("Random weights (all parameters re-drawn), CFG batch 2T per step, ADM 1280, context 1024. Each row is a "
            "fresh child process; 'first call' includes ONNX export (cached on later runs) and session creation. "
            "Decoder: SVD's temporal VAE decoder (ch 64, mult 1-2-4-4) in torch eager; decoding_t frames per call.")
    publish("Novel view (SV3D/SVD networks): UNet step eager vs ORT, decoder memory vs decoding_t", t1 + "\n\n" + t2,
            note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
