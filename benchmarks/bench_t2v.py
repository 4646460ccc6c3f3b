"""ModelScope text-to-video: torch eager vs exported ONNX Runtime graphs, seconds per sampling step
and per video, peak RSS, for random-weight models of two sizes (no real weights needed).

Each timed video runs in its own child process (load the folder, one warm-up video, one timed video),
so a backend's peak RSS is its own; the children alternate between the backends (eager, ORT, ORT,
eager, ...), so both sides see the same machine state. The first ORT child exports the graphs in its
warm-up video (reported separately). A sampling step is two UNet calls (CFG 9.0); a video is text
encoding + steps + per-frame VAE decoding. The run refuses to start on a loaded machine (1-minute load
average over 1.5; ``--allow-loaded`` runs it anyway, marked LOADED) and reports the CPU other processes
used while it ran (the children count as this run's own).

    python benchmarks/bench_t2v.py [--append] [--videos 2] [--steps 4] [--configs tiny,mid] [--allow-loaded]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import LoadWatch, add_load_args, publish, table  # noqa: E402

# UNet (diffusers UNet3DConditionModel), VAE (AutoencoderKL), text tower (CLIPTextModel) sizes.
CONFIGS = {
    "tiny": dict(unet=dict(block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=16,
                           down=["CrossAttnDownBlock3D", "DownBlock3D"]),
                 vae=[32, 64, 128, 128], text=dict(hidden_size=1024, layers=2), size=(64, 64), frames=4),
    "mid": dict(unet=dict(block_out_channels=[128, 256, 256], layers_per_block=1, attention_head_dim=64,
                          down=["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"]),
                vae=[64, 128, 128, 128], text=dict(hidden_size=1024, layers=4), size=(128, 128), frames=8),
}
REAL = "released model: UNet 320 [1,2,4,4] x2 blocks (1.41 B params), VAE 128 [1,2,4,4], ViT-H text 23 blocks"


def unet3d_of(cfg: dict):
    """The random diffusers UNet3DConditionModel of a config (every zero-initialised layer re-drawn)."""
    import torch
    from diffusers import UNet3DConditionModel

    u = cfg["unet"]
    up = ["CrossAttnUpBlock3D" if d.startswith("CrossAttn") else "UpBlock3D" for d in reversed(u["down"])]
    unet = UNet3DConditionModel(in_channels=4, out_channels=4, down_block_types=u["down"], up_block_types=up,
                                block_out_channels=u["block_out_channels"], layers_per_block=u["layers_per_block"],
                                cross_attention_dim=cfg["text"]["hidden_size"],
                                attention_head_dim=u["attention_head_dim"])
    with torch.no_grad():  # diffusers zero-initialises output layers; make every layer do work
        for p in unet.parameters():
            if p.ndim > 1 and p.abs().max() == 0:
                p.normal_(0, 0.02)
    return unet


def write_random_folder(name: str, folder: Path) -> Path:
    """A diffusers-layout folder with random weights of config `name` (byte-level tokenizer)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ezvtb.sd_video.loader import T2VComponents, save_diffusers_folder
    from ezvtb.sd_video.tokenizer import END, START, bytes_to_unicode

    torch.manual_seed(0)
    cfg = CONFIGS[name]
    unet = unet3d_of(cfg)
    n = len(cfg["vae"])
    vae = AutoencoderKL(block_out_channels=cfg["vae"], down_block_types=["DownEncoderBlock2D"] * n,
                        up_block_types=["UpDecoderBlock2D"] * n, layers_per_block=1, latent_channels=4,
                        scaling_factor=0.18215)
    symbols = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(symbols + [s + "</w>" for s in symbols] + [START, END])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)
    t = cfg["text"]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=t["hidden_size"],
                                        intermediate_size=4 * t["hidden_size"], num_hidden_layers=t["layers"],
                                        num_attention_heads=t["hidden_size"] // 64, max_position_embeddings=77,
                                        hidden_act="gelu", bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1,
                                        pad_token_id=0))
    comps = T2VComponents(unet.eval(), vae.eval(), text.eval(), tok, max_frames=cfg["frames"])
    return save_diffusers_folder(comps, folder)


def child(name: str, backend: str, folder: str, steps: int, videos: int) -> dict:
    import torch

    from ezvtb.sd_video import SDVideo

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = CONFIGS[name]
    model = SDVideo(folder, backend=backend)
    params = sum(p.numel() for p in model.components.unet.parameters())
    kw = dict(timesteps=steps, image_size=cfg["size"], num_frames=cfg["frames"], seed=0)
    step_times: list[float] = []
    inner = model.denoise

    def timed_denoise(x, sched, ts, *a, **k):  # a sampling step: the whole DDIM loop / its steps
        t0 = time.perf_counter()
        out = inner(x, sched, ts, *a, **k)
        step_times.append((time.perf_counter() - t0) / max(1, len(ts)))
        return out

    model.denoise = timed_denoise
    t0 = time.perf_counter()
    model("a cat", **kw)
    first = time.perf_counter() - t0
    step_times.clear()
    video_times = []
    for _ in range(videos):
        t0 = time.perf_counter()
        model("a cat", **kw)
        video_times.append(time.perf_counter() - t0)
    return {"params": params, "first": first, "steps": step_times, "videos": video_times,
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def merge(runs: list[dict]) -> dict:
    """One backend's children in run order: medians over all their steps and videos, the first child's
    warm-up, the largest peak RSS."""
    return {"params": runs[0]["params"], "first": runs[0]["first"], "video0": runs[0]["videos"][0],
            "step": statistics.median(t for r in runs for t in r["steps"]),
            "video": statistics.median(t for r in runs for t in r["videos"]), "rss": max(r["rss"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--configs", default="tiny,mid")
    add_load_args(ap)
    ap.add_argument("--child", nargs=3, metavar=("CONFIG", "BACKEND", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args.steps, args.videos)))
        return
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"--configs: unknown {n!r}, expected some of {list(CONFIGS)}")
    if args.videos < 1:
        ap.error(f"--videos: expected an int >= 1, got {args.videos}")
    watch = LoadWatch(args.allow_loaded).check()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, watch:
        env = {**os.environ, "EZVTB_HOME": os.path.join(tmp, "home")}
        for n in names:
            folder = Path(tmp) / n
            write_random_folder(n, folder)
            runs: dict[str, list[dict]] = {"torch": [], "cpu": []}
            for i in range(args.videos):  # one timed video per child, the backends alternating
                for backend in (("torch", "cpu") if i % 2 == 0 else ("cpu", "torch")):
                    p = subprocess.run([sys.executable, __file__, "--child", n, backend, str(folder), "--steps",
                                        str(args.steps), "--videos", "1"], capture_output=True, text=True, env=env)
                    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                    if p.returncode or not line:
                        raise SystemExit(f"{n}/{backend} failed:\n{p.stderr[-3000:]}")
                    runs[backend].append(json.loads(line[0][7:]))
            cfg = CONFIGS[n]
            e, o = merge(runs["torch"]), merge(runs["cpu"])
            shape = f"{cfg['frames']}x{cfg['size'][0]}x{cfg['size'][1]}"
            rows.append([n, f"{e['params'] / 1e6:.1f} M", shape, f"{e['step']:.3f}", f"{o['step']:.3f}",
                         f"{e['step'] / o['step']:.2f}x", f"{e['video']:.2f}", f"{o['video']:.2f}",
                         f"{e['video'] / o['video']:.2f}x", f"{o['first'] - o['video0']:.1f}",
                         f"{e['rss']:.0f}", f"{o['rss']:.0f}"])
    text = table(["config", "UNet", "f x W x H", "step eager s", "step ORT s", "step ratio", "video eager s",
                  "video ORT s", "video ratio", "ORT export s", "peak RSS eager MB", "peak RSS ORT MB"], rows)
    note = (f"Random weights; {args.steps} DDIM steps (2 UNet calls each, CFG 9.0), medians of {args.videos} videos "
            f"per backend, each timed video in its own child after one warm-up video there, children alternating "
            f"between the backends; 'ORT export s' = the first ORT child's warm-up video minus its timed one (graph "
            f"export + session set-up, cached afterwards). Eager = diffusers/transformers modules in torch fp32; "
            f"ORT = the exported graphs on ONNX Runtime's CPU provider. OpenVINO: not run (it runs graphs, not the "
            f"whole pipeline; bench_diffusion.py compares it on the UNet step alone). {REAL}.")
    publish("ModelScope text-to-video: eager vs ONNX Runtime (bench_t2v.py)", text, note, args.append, load=watch)


if __name__ == "__main__":
    main()
