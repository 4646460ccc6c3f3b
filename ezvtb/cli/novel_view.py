"""`ezvtb novel-view`: a video of an object -> one video per view (SV4D flow, SV3D orbit of the first frame).

The inputs are checked first (weights present and of the named models, the video long enough, sizes); then the
video is preprocessed (object cropped, centred on white), SV3D makes the orbit of its first frame, and SV4D
(`ezvtb.novel_view.sv4d.sv4d_novel_views`: anchor frames, then dense frames) writes one video per view plus the
frame-0 views and a diagonal video, as upstream.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ezvtb.cli.core_options import seed_type
from ezvtb.cli.orbit import check_common, check_sv3d, load_sv3d
from ezvtb.engines.policy import RUNNER_BACKENDS

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ezvtb.novel_view")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("novel-view", help="SV4D: a video of an object -> one video per camera view",
                       description="SV4D (or SV4D 2.0) turns a short video of one object into one video per camera "
                                   "view; SV4D also needs SV3D for the orbit of the first frame. Needs the diffusion "
                                   "extra and the official checkpoints (not on PyPI).")
    p.add_argument("video", help="input mp4 / gif / folder of images / glob")
    p.add_argument("--sv3d", help="official sv3d_u.safetensors (or sv3d_p); needed by SV4D, not by SV4D 2.0")
    p.add_argument("--sv4d", required=True, help="official sv4d.safetensors or sv4d2.safetensors (SV4D 2.0)")
    p.add_argument("--frames", type=int, default=21, help="video frames to use")
    p.add_argument("--steps", type=int, default=20, help="Euler EDM sampling steps")
    p.add_argument("--decoding-t", type=int, default=4, help="frames decoded at a time (lower = less memory)")
    p.add_argument("--seed", type=seed_type, default=23,
                   help="noise seed, 0..2**64-1 (the same seed gives the same videos)")
    p.add_argument("--size", type=int, default=576, help="square frame size, a multiple of 64")
    p.add_argument("--elevation", type=float, default=None, help="degrees (default: 10 for SV4D, 0 for SV4D 2.0)")
    p.add_argument("--remove-bg", action="store_true", help="remove the background with rembg")
    p.add_argument("--backend", choices=RUNNER_BACKENDS, default="torch",
                   help="torch (eager) or an exported-graph backend; a session per stage")
    p.add_argument("--out-dir", default="novel_view_out", help="folder for the preprocessed input and the videos")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ezvtb.extras import require

    require("diffusion", "ezvtb novel-view")
    import torch

    from ezvtb.models.sgm_video.checkpoint import detect_variant, read_shapes
    from ezvtb.novel_view import preprocess_video
    from ezvtb.novel_view.video_io import read_frames

    from ezvtb.outputs import check_folder

    check_common(args)
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise ValueError(f"--out-dir: {args.out_dir!r} is a file; expected a folder")
    check_folder(Path(args.out_dir) / "x.mp4", "--out-dir")
    sv4d = Path(args.sv4d)
    if not sv4d.is_file():
        raise FileNotFoundError(f"--sv4d: no checkpoint at {sv4d} (download the official sv4d.safetensors)")
    try:
        v4 = detect_variant(read_shapes(sv4d))
    except Exception as e:  # noqa: BLE001 - safetensors' own errors for non-safetensors files
        raise ValueError(f"--sv4d: {sv4d} is not a readable SV4D checkpoint ({e})") from None
    if v4 != "sv4d":
        raise ValueError(f"--sv4d: {sv4d} is a {v4} checkpoint, not SV4D")
    v4 = "sv4d2" if any("time_mixer_motion" in k for k in read_shapes(sv4d)) else "sv4d"
    if v4 == "sv4d":
        if args.sv3d is None:
            raise ValueError("--sv3d: SV4D needs an SV3D checkpoint for the frame-0 orbit (sv3d_u.safetensors)")
        check_sv3d(args.sv3d, "--sv3d")
    if not Path(args.video).exists() and "*" not in args.video:
        raise FileNotFoundError(f"VIDEO: no file or folder at {args.video}")
    n = len(read_frames(args.video, args.frames))
    if n < args.frames:
        raise ValueError(f"VIDEO: {args.video} has {n} frames, fewer than --frames {args.frames}")
    out_dir = Path(args.out_dir)
    processed = preprocess_video(args.video, remove_bg=args.remove_bg, n_frames=args.frames, W=args.size,
                                 H=args.size, output_folder=out_dir)
    from ezvtb.novel_view import load_model
    from ezvtb.novel_view.sv4d import sv4d2_novel_views, sv4d_novel_views, write_novel_view_videos

    model, _ = load_model(v4, "cpu", None, args.steps, ckpt_path=str(sv4d), backend=args.backend)
    frames = torch.cat([load_image_array(f, args.size) for f in read_frames(processed, args.frames)])
    if v4 == "sv4d2":  # SV4D 2.0: no SV3D stage, windows conditioned on the previous window's views
        views = sv4d2_novel_views(model, frames, elevation_deg=0.0 if args.elevation is None else args.elevation,
                                  seed=args.seed, decoding_t=args.decoding_t)
        t0 = None
    else:
        sv3d = load_sv3d(args.sv3d, 21, args.steps, args.backend, what="--sv3d")
        views, t0 = sv4d_novel_views(model, frames, sv3d=sv3d, seed=args.seed, decoding_t=args.decoding_t,
                                     elevation_deg=10.0 if args.elevation is None else args.elevation,
                                     return_t0_views=True)
    try:
        paths = write_novel_view_videos(out_dir, views, t0_views=t0)
    except OSError as e:
        from ezvtb.atomic import OutputError
        from ezvtb.outputs import rescue

        frames = (views.clamp(0, 1).permute(0, 1, 3, 4, 2).cpu().numpy() * 255.0 + 0.5).astype("uint8")
        raise OutputError(rescue(frames, e, "--out-dir", Path(out_dir) / "views.mp4")) from e
    for p in paths:
        print(p)
    log.info("wrote %d videos to %s", len(paths), out_dir)
    return 0


def load_image_array(image, size: int) -> "torch.Tensor":
    """A PIL frame -> (1, 3, size, size) in [-1, 1]."""
    import numpy as np
    import torch

    a = np.asarray(image.convert("RGB").resize((size, size))).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1)[None]
