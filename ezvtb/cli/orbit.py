"""`ezvtb orbit`: one image -> an SV3D orbit video (21 views around the object, the last one the input view)."""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from ezvtb.cli.core_options import seed_type
from ezvtb.engines.policy import RUNNER_BACKENDS

log = logging.getLogger("ezvtb.novel_view")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("orbit", help="SV3D: an orbit video around the object of one image",
                       description="SV3D (Stable Video 3D) renders views on an orbit around the object of one image; "
                                   "the last view is the input view. Needs the diffusion extra and an official "
                                   "sv3d_u / sv3d_p checkpoint (not on PyPI).")
    p.add_argument("image", help="input image (RGBA: the alpha marks the object; RGB: composited as is)")
    p.add_argument("--model", required=True, help="official sv3d_p.safetensors or sv3d_u.safetensors")
    p.add_argument("--elevation", type=float, default=10.0, help="camera elevation in degrees (SV3D_p)")
    p.add_argument("--frames", type=int, default=21, help="views on the orbit (the model was trained on 21)")
    p.add_argument("--steps", type=int, default=50, help="Euler EDM steps")
    p.add_argument("--decoding-t", type=int, default=None,
                   help="frames decoded at a time (lower = less memory; None = all at once)")
    p.add_argument("--seed", type=seed_type, default=23,
                   help="noise seed, 0..2**64-1 (the same seed gives the same video)")
    p.add_argument("--size", type=int, default=576, help="square frame size, a multiple of 64")
    p.add_argument("--backend", choices=RUNNER_BACKENDS, default="torch",
                   help="torch (eager) or an exported-graph backend; a session per stage")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of the output video")
    p.add_argument("--out", default="orbit.mp4", help="output .mp4 (H.264) or .webm (VP9, alpha kept)")
    p.set_defaults(func=run)


def check_common(args: argparse.Namespace) -> None:
    if args.size <= 0 or args.size % 64:
        raise ValueError(f"--size: expected a positive multiple of 64, got {args.size}")
    if args.frames < 2:
        raise ValueError(f"--frames: expected >= 2, got {args.frames}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected >= 1, got {args.steps}")
    if args.decoding_t is not None and args.decoding_t < 1:
        raise ValueError(f"--decoding-t: expected >= 1, got {args.decoding_t}")
    elev = getattr(args, "elevation", None)
    if elev is not None and not (math.isfinite(elev) and -90.0 <= elev <= 90.0):
        raise ValueError(f"--elevation: expected finite degrees in [-90, 90], got {elev}")


def check_sv3d(path: str, what: str = "--model") -> str:
    """The SV3D variant of the checkpoint at `path`; clear errors for a missing or wrong file."""
    from ezvtb.models.sgm_video.checkpoint import detect_variant, read_shapes

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint at {p} (download the official sv3d_p.safetensors)")
    try:
        variant = detect_variant(read_shapes(p))
    except ValueError as e:
        raise ValueError(f"{what}: {p} is not an SV3D checkpoint ({e})") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for non-safetensors files
        raise ValueError(f"{what}: {p} is not a readable .safetensors checkpoint ({type(e).__name__})") from None
    if not variant.startswith("sv3d"):
        raise ValueError(f"{what}: {p} is a {variant} checkpoint, not SV3D (sv3d_u / sv3d_p)")
    return variant


def load_sv3d(path: str, frames: int, steps: int, backend: str, what: str = "--model"):
    from ezvtb.novel_view import VideoModel

    variant = check_sv3d(path, what)
    return VideoModel.from_checkpoint(path, variant, num_frames=frames, num_steps=steps, backend=backend)


def read_image(path: str, size: int):
    from ezvtb.novel_view import load_image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IMAGE: no file at {p}")
    if p.stat().st_size == 0:
        raise ValueError(f"IMAGE: {p} is empty")
    try:
        return load_image(p, size, size)
    except OSError as e:
        raise ValueError(f"IMAGE: cannot read {p} as an image ({e})") from None


def run(args: argparse.Namespace) -> int:
    from ezvtb.extras import require
    from ezvtb.outputs import check_fps, check_outputs

    require("diffusion", "ezvtb orbit")

    check_common(args)
    check_fps(args.fps)
    check_outputs([("--out", args.out)], [("IMAGE", args.image), ("--model", args.model)],
                  suffixes={"--out": (".mp4", ".webm")})
    from ezvtb.novel_view import save_frames_mp4, sv3d_orbit

    image = read_image(args.image, args.size)
    model = load_sv3d(args.model, args.frames, args.steps, args.backend)
    frames = sv3d_orbit(model, image, elevation_deg=args.elevation, num_steps=args.steps, seed=args.seed,
                        decoding_t=args.decoding_t, progress=True)
    try:
        out = save_frames_mp4(args.out, frames, args.fps)
    except OSError as e:
        from ezvtb.atomic import OutputError
        from ezvtb.novel_view.video_io import tensor_to_uint8
        from ezvtb.outputs import rescue

        raise OutputError(rescue(tensor_to_uint8(frames), e, "--out", args.out)) from e
    log.info("wrote %s (%d views, %dx%d)", out, frames.shape[0], frames.shape[-1], frames.shape[-2])
    print(out)
    return 0
