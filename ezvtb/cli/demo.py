"""`ezvtb demo`: animate a sample character along the built-in pose script into an mp4/gif."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ezvtb.cli.core_options import add_core_arguments
from ezvtb.options import CoreOptions

log = logging.getLogger("ezvtb.demo")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="animate a character along the built-in pose script into an mp4",
                       description="Fetches the THA3 weights (first run), exports the graphs (first run), "
                                   "renders the built-in pose script and prints fps and per-stage latency.")
    p.add_argument("--out", default="ezvtb_demo.mp4",
                   help="output .mp4 (H.264, alpha over --background) or .webm (VP9, alpha kept) "
                        "(default: %(default)s)")
    p.add_argument("--gif", nargs="?", const="", default=None, metavar="PATH",
                   help="also write a gif (default path: the mp4 path with .gif)")
    p.add_argument("--frames", type=int, default=150, help="number of frames (default: %(default)s = 5 s at 30 fps)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the pose script and the video")
    p.add_argument("--background", default="#FFFFFF", help="video background colour (default: %(default)s)")
    add_core_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ezvtb.cli.core_options import core_input_files
    from ezvtb.demo_script import demo_poses
    from ezvtb.factory import build_core
    from ezvtb.outputs import check_fps, check_outputs
    from ezvtb.video import VIDEO_SUFFIXES, VideoWriter, parse_color
    from ezvtb.weights.tha3 import load_character

    if args.frames < 1:
        raise ValueError(f"--frames: expected >= 1, got {args.frames}")
    check_fps(args.fps)
    opts = CoreOptions.from_args(args)
    background = parse_color(args.background)
    out = Path(args.out)
    gif = None if args.gif is None else (Path(args.gif) if args.gif else out.with_suffix(".gif"))
    check_outputs([("--out", out), ("--gif", gif)], core_input_files(args),
                  suffixes={"--out": VIDEO_SUFFIXES, "--gif": (".gif",)})
    image = load_character(args.image)

    t0 = time.perf_counter()
    core = build_core(opts)
    log.info("core ready in %.1f s", time.perf_counter() - t0)
    poses = demo_poses(args.frames, args.fps)
    try:
        with VideoWriter(out, args.fps * opts.frames_per_pose, opts.output_shape[1::-1], background=background,
                         gif=gif) as writer:
            core.setImage(image)
            t1 = time.perf_counter()
            for pose in tqdm(poses, desc="rendering", unit="frame"):
                for frame in core.inference(pose):
                    writer.write(frame)
            elapsed = time.perf_counter() - t1
        stats = core.stats()
    finally:
        core.close()
    print(f"\nrendered {writer.frames} frames in {elapsed:.1f} s: {writer.frames / elapsed:.2f} fps "
          f"-> {out}" + (f" and {gif}" if gif else ""))
    print(format_latency_table(stats))
    return 0


def format_latency_table(stats: dict) -> str:
    """A readable per-stage latency table from `Core.stats()`."""
    rows = []
    for name, s in stats["tha"]["latency"].items():
        rows.append((f"tha.{name}", s))
    for name, s in stats["latency"].items():
        rows.append((name, s))
    lines = [f"{'stage':<22}{'runs':>7}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}", "-" * 59]
    if stats["tha"].get("precision"):
        lines.insert(0, f"THA graphs: {stats['tha']['precision']}")
    for name, s in rows:
        lines.append(f"{name:<22}{s['count']:>7}{s['mean_ms']:>10.1f}{s['p50_ms']:>10.1f}{s['p95_ms']:>10.1f}")
    return "\n".join(lines)
