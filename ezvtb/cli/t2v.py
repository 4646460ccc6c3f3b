"""`ezvtb t2v`: text-to-video (and video-to-video with --init) with a ModelScope model folder."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ezvtb.cli.core_options import seed_type
from ezvtb.engines.policy import RUNNER_BACKENDS

log = logging.getLogger("ezvtb.cli.t2v")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 256x256, got {text!r}") from None
    return w, h


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("t2v", help="text-to-video / video-to-video with a ModelScope text-to-video model",
                       description="Sample a video from a prompt with a ModelScope text-to-video model folder "
                                   "(ModelScope or diffusers layout). Weights: ModelScope T2V v1.0.4 (Apache-2.0) at "
                                   "huggingface.co/damo-vilab/modelscope-damo-text-to-video-synthesis @6961f66; later "
                                   "releases and ali-vilab/text-to-video-ms-1.7b are CC-BY-NC (non-commercial).")
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--model", required=True, help="model folder (configuration.json + checkpoints, or diffusers)")
    p.add_argument("--negative", default="", help="negative prompt (default: empty)")
    p.add_argument("--frames", type=int, default=None, help="frames to generate (default: the model's max_frames)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=9.0, help="classifier-free guidance scale (default 9.0)")
    p.add_argument("--size", type=_size, default=(256, 256), help="WIDTHxHEIGHT, multiples of 8 (default 256x256)")
    p.add_argument("--seed", type=seed_type, default=None, help="noise seed, 0..2**64-1 (default: random)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--init", default=None, help="video-to-video: a folder of frames or a GIF")
    p.add_argument("--strength", type=float, default=0.7, help="with --init: share of the steps re-run (0..1)")
    p.add_argument("--out", default="out.mp4", help="output .mp4, .webm, .gif or a folder for PNGs (default out.mp4)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of an .mp4 (default 8)")
    p.add_argument("--backend", choices=RUNNER_BACKENDS, default="auto", help="exported-graph backend or torch")
    p.add_argument("--device", default="cpu", help="torch device for --backend torch (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ezvtb.extras import require
    from ezvtb.outputs import check_fps, check_outputs

    require("diffusion", "ezvtb t2v")
    from ezvtb.sd_video.loader import detect_layout

    check_fps(args.fps)
    folder = Path(args.out).suffix == ""
    check_outputs([("--out", args.out)], [("--model", args.model), ("--init", args.init)],
                  suffixes={"--out": (".mp4", ".webm", ".gif", "")}, folders=("--out",) if folder else ())
    model_dir = Path(args.model)
    detect_layout(model_dir)  # clear error (which files, where to get weights) before importing torch
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength: expected a number in [0, 1], got {args.strength}")
    from ezvtb.sd_video import SDVideo, load_sequence
    from ezvtb.sd_video.media import save_video

    device = args.device if args.backend == "torch" else ("cuda" if args.backend in ("cuda", "tensorrt", "trt")
                                                          else "cpu")
    model = SDVideo(model_dir, device, backend=args.backend)
    kw = dict(text_neg=args.negative, guidance_scale=args.guidance, timesteps=args.steps, image_size=args.size,
              eta=args.eta, bar=True, seed=args.seed)
    if args.init:
        frames = load_sequence(args.init, frames=args.frames or model.max_frames, image_size=args.size)
        kw.update(initial_frames=frames, t_start=round(args.steps * args.strength))
    else:
        kw.update(num_frames=args.frames)
    video = model(args.prompt, **kw)
    try:
        out = save_video(video, args.out, fps=args.fps)
    except OSError as e:
        from ezvtb.atomic import OutputError
        from ezvtb.outputs import rescue
        from ezvtb.sd_video.media import video_to_uint8

        model.close()
        raise OutputError(rescue(video_to_uint8(video), e, "--out", args.out)) from e
    log.info("wrote %s (%d frames, %dx%d)", out, video.shape[2], video.shape[4], video.shape[3])
    model.close()
    return 0
