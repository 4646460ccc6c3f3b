"""`ezvtb speak speech.wav --image char.png --out talk.mp4`: a talking video from a voice recording.

The mouth follows the speech (`ezvtb.live.lipsync`: vowel shapes and openness, no downloaded weights; a voice
profile from `VowelEstimator.save_profile` with --profile); the rest of the pose is neutral, with optional
breathing; with ``--sadtalker SadTalker_V0.0.2_*.safetensors`` Audio2Coeff's speech-driven head pose also moves the
head (head_x, head_y, neck_z; approximate axis mapping), and with ``--bfm BFM_model_front.mat`` too its expression
coefficients drive the mouth instead of the vowel estimator (`ezvtb.audio2coeff.mouth`). The video is rendered by
the same core as `ezvtb run`; the video is H.264 with the speech muxed in as an AAC track, both encoded in one pass by
the ffmpeg that imageio-ffmpeg ships (`ezvtb.video`; without any ffmpeg the mp4 is silent mp4v and a warning says so).
The output appears atomically.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ezvtb.cli.core_options import add_core_arguments, core_input_files, seed_type
from ezvtb.options import CoreOptions

log = logging.getLogger("ezvtb.speak")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("speak", help="talking video: speech wav -> mouth shapes -> core -> mp4 (with the audio)",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("speech", help="speech recording (wav/flac/ogg; any rate, mono or stereo)")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate (default: %(default)s)")
    p.add_argument("--profile", help="voice profile JSON (VowelEstimator.save_profile)")
    p.add_argument("--breathing", type=float, default=4.0, metavar="S", help="breathing period in s (0 = off)")
    p.add_argument("--background", default="#FFFFFF", help="background colour (default: %(default)s)")
    p.add_argument("--sadtalker", metavar="CHECKPOINT",
                   help="SadTalker_V0.0.2_*.safetensors: Audio2Coeff's speech-driven head motion also moves the head "
                        "(head_x, head_y, neck_z; approximate axis mapping)")
    p.add_argument("--bfm", metavar="BFM_model_front.mat",
                   help="with --sadtalker: the BFM face of SadTalker's checkpoint download (checkpoints/BFM_Fitting/);"
                        " Audio2Coeff's expression coefficients then drive the mouth instead of the vowel estimator")
    p.add_argument("--exp-profile", metavar="JSON",
                   help="with --bfm: mouth ranges (ExpressionMouth.save_profile) for this voice")
    p.add_argument("--pose-style", type=int, default=0, help="SadTalker pose style 0..45 (default: %(default)s)")
    p.add_argument("--seed", type=seed_type, default=0, help="SadTalker pose draws (default: %(default)s)")
    add_core_arguments(p)
    p.set_defaults(func=run)


def sadtalker_coefficients(args: argparse.Namespace):
    """Audio2Coeff's (T, 70) 25 fps coefficients of `args.speech` (first-frame coefficients all zero)."""
    import tempfile

    import numpy as np
    from scipy.io import savemat

    from ezvtb.audio2coeff import Audio2Coeff

    a2c = Audio2Coeff({"use_safetensor": True, "checkpoint": args.sadtalker}, "cpu", backend="auto")
    try:
        with tempfile.TemporaryDirectory() as d:
            first = Path(d) / "neutral.mat"
            savemat(str(first), {"coeff_3dmm": np.zeros((1, 73), np.float32)})
            coeffs = a2c.from_wav(args.speech, first, pose_style=args.pose_style, seed=args.seed)
    finally:
        a2c.close()
    return coeffs


def _hold_last(track, frames: int):
    import numpy as np

    if len(track) < frames:
        track = np.concatenate([track, np.repeat(track[-1:], frames - len(track), axis=0)])
    return track[:frames]


def sadtalker_head(args: argparse.Namespace, frames: int, coeffs=None):
    """(frames, 3) head_x, head_y, neck_z from Audio2Coeff's pose (first-frame coefficients all zero)."""
    from ezvtb.audio2coeff.pipeline import head_pose_track

    if coeffs is None:
        coeffs = sadtalker_coefficients(args)
    return _hold_last(head_pose_track(coeffs, args.fps), frames)


def expression_mouth(args: argparse.Namespace):
    """The `ExpressionMouth` of --bfm (and --exp-profile); clear errors before any network runs."""
    from ezvtb.audio2coeff.mouth import BfmLandmarks, ExpressionMouth

    if not args.sadtalker:
        raise ValueError("--bfm: needs --sadtalker CHECKPOINT (the expression coefficients come from Audio2Coeff)")
    bfm = BfmLandmarks.load(args.bfm, "--bfm")
    return ExpressionMouth.load_profile(bfm, args.exp_profile) if args.exp_profile else ExpressionMouth(bfm)


def sadtalker_mouth(mouth, coeffs, fps: float, frames: int):
    """(frames, 5) a/i/u/e/o weights from Audio2Coeff's expression coefficients."""
    return _hold_last(mouth.track(coeffs, fps), frames)


def run(args: argparse.Namespace) -> int:
    from ezvtb.extras import require

    require("audio", "ezvtb speak")
    import numpy as np
    from tqdm import tqdm

    from ezvtb.audio2coeff.frontend import load_wav
    from ezvtb.factory import build_core
    from ezvtb.live.lipsync import MOUTH, RATE, VOWELS, VowelEstimator, mouth_track
    from ezvtb.live.mapping import breathing_value
    from ezvtb.outputs import check_fps, check_outputs
    from ezvtb.pose import index
    from ezvtb.video import VideoWriter, parse_color
    from ezvtb.weights.tha3 import load_character

    check_fps(args.fps)
    opts = CoreOptions.from_args(args)
    out = Path(args.out)
    check_outputs([("--out", out)], [("SPEECH", args.speech), ("--profile", args.profile),
                                     ("--sadtalker", args.sadtalker), ("--bfm", args.bfm),
                                     ("--exp-profile", args.exp_profile), *core_input_files(args)],
                  suffixes={"--out": (".mp4", ".webm")})
    if args.exp_profile and not args.bfm:
        raise ValueError("--exp-profile: needs --bfm (and --sadtalker)")
    mouth = expression_mouth(args) if args.bfm else None
    samples = load_wav(args.speech, RATE, "speech")
    est = VowelEstimator.load_profile(args.profile) if args.profile else VowelEstimator()
    poses = mouth_track(samples, args.fps, est)
    breathing = index("breathing")
    for i in range(len(poses)):
        poses[i, breathing] = breathing_value(i / args.fps, args.breathing)
    if args.sadtalker:
        coeffs = sadtalker_coefficients(args)
        head = sadtalker_head(args, len(poses), coeffs)
        if mouth is not None:
            weights = sadtalker_mouth(mouth, coeffs, args.fps, len(poses))
            for k, v in enumerate(VOWELS):
                poses[:, MOUTH[v]] = weights[:, k]
            log.info("mouth from Audio2Coeff's expression coefficients (BFM %s)", args.bfm)
        for k, name in enumerate(("head_x", "head_y", "neck_z")):
            poses[:, index(name)] = head[:, k]
    image = load_character(args.image)
    core = build_core(opts)
    writer = None
    try:
        core.setImage(image)
        for pose in tqdm(poses, desc="speak", unit="frame"):
            for frame in core.inference(np.ascontiguousarray(pose)):
                if writer is None:
                    writer = VideoWriter(out, args.fps * opts.frames_per_pose, (frame.shape[1], frame.shape[0]),
                                         parse_color(args.background), audio=args.speech)
                writer.write(frame)
        if writer is None:
            raise RuntimeError("the core returned no frames")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        core.close()
    if writer.has_audio:
        log.info("wrote %s (%d frames, speech muxed in)", out, writer.frames)
    print(f"{out}: {writer.frames} frames at {args.fps:g} fps, {len(samples) / RATE:.2f} s of speech")
    return 0
