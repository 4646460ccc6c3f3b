"""Steady resident memory (RSS) of the CPU core, per configuration and ORT memory option.

Each row runs in a fresh Python process: build the core with `get_core` (backend cpu, fp32,
2 threads), set the sample image, render `--frames` poses of the realistic trace, then read
VmRSS / VmHWM from /proc/self/status. Rows:

* THA alone: model cache on at its default budget (1 GB) but emptied before the reading (its
  entries are data the user asked to keep, not overhead; their bytes are shown separately);
* THA + output cache + RIFE x2: the same plus the output cache (default 2 GB budget, as filled
  by the run) and RIFE HDv3 x2 (flow at its CPU default).

ORT memory options per row (`OrtOptions.cpu_mem_arena`, `OrtOptions.mem_pattern`) are set by
wrapping `create_session` in the child process; the ms column is the median THA frame over the
run (same process), so a saving that costs speed shows up next to it. Linux only (/proc).

    python benchmarks/bench_memory.py [--frames 12] [--append]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, table  # noqa: E402

MB = 1024**2


def status_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def child(config: str, arena: bool | None, pattern: bool | None, shared: bool | None, frames: int) -> dict:
    """Build one core, render `frames` poses, return the memory figures (runs in its own process)."""
    import numpy as np

    import ezvtb.engines as engines
    import ezvtb.factory as factory
    import ezvtb.stages.rife as rife_stage
    from ezvtb import get_core, prepare_image
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.tha3 import sample_image

    base = status_mb("VmRSS")
    extra = {k: v for k, v in (("cpu_mem_arena", arena), ("mem_pattern", pattern), ("shared_cpu_arena", shared))
             if v is not None}
    if extra:  # override the session defaults for this row
        opened = engines.create_session

        def create_session(*a, **kw):
            return opened(*a, **{**kw, **extra})

        factory.create_session = engines.create_session = rife_stage.create_session = create_session
    rife = config == "tha+cache+rife"
    core = get_core(use_tensorrt=False, backend="cpu", threads=2, use_interpolation=rife, interpolation_scale=2,
                    use_cacher=rife)
    core.setImage(prepare_image(sample_image("crypko_00")))
    poses = realistic_trace(max(frames, 2), fps=20.0)
    ms = []
    for p in poses:
        t0 = time.perf_counter()
        core.inference(p)
        ms.append((time.perf_counter() - t0) * 1e3)
    st = core.stats()["tha"]
    cache_bytes = sum(st.get(k, {}).get("bytes", 0) for k in ("combiner_cache", "morpher_cache"))
    full = status_mb("VmRSS")
    for lru in (core.tha._combiner_lru, core.tha._morpher_lru):
        if lru is not None:
            lru.clear()
    import gc

    gc.collect()
    return {"rss_mb": status_mb("VmRSS"), "rss_with_entries_mb": full, "hwm_mb": status_mb("VmHWM"),
            "model_cache_mb": cache_bytes / MB, "imports_mb": base, "frame_ms": float(np.median(ms[1:]))}


def run_child(config: str, arena: bool | None, pattern: bool | None, shared: bool | None, frames: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--frames", str(frames),
           "--arena", str(arena), "--pattern", str(pattern), "--shared", str(shared)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"{config}: child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _opt(text: str) -> bool | None:
    return {"None": None, "True": True, "False": False}[text]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=12, help="poses rendered before the reading")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--arena", default="None", help=argparse.SUPPRESS)
    ap.add_argument("--pattern", default="None", help=argparse.SUPPRESS)
    ap.add_argument("--shared", default="None", help=argparse.SUPPRESS)
    ap.add_argument("--configs", default="tha,tha+cache+rife")
    ap.add_argument("--variants", default="before,arena-off,pattern-off,both-off,shared-arena,default",
                    help="ORT memory options to compare (default = OrtOptions' defaults)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, _opt(args.arena), _opt(args.pattern), _opt(args.shared), args.frames)))
        return 0
    # (cpu_mem_arena, mem_pattern, shared_cpu_arena); None = OrtOptions' default at this commit.
    # "before" = ORT's own defaults, as before the shared arena: an arena and a memory pattern per session.
    variants = {"default": (None, None, None), "before": (True, True, False), "arena-off": (False, True, False),
                "pattern-off": (True, False, False), "both-off": (False, False, False),
                "shared-arena": (True, True, True), "shared-arena+pattern-off": (True, False, True)}
    rows = []
    for config in args.configs.split(","):
        for v in args.variants.split(","):
            r = run_child(config, *variants[v], args.frames)
            print(config, v, r, file=sys.stderr)
            rows.append([{"tha": "THA alone (model cache 1 GB budget, emptied)",
                          "tha+cache+rife": "THA + output cache + RIFE x2"}[config], v, r["rss_mb"],
                         r["model_cache_mb"], r["hwm_mb"], r["imports_mb"], r["frame_ms"]])
    t = table(["core (CPU, fp32, 2 threads)", "ORT memory options", "steady RSS MB", "model cache entries MB "
               "(released before the reading)", "peak RSS MB", "RSS after imports MB", "THA call p50 ms"], rows)
    note = (f"One fresh process per row: get_core(backend='cpu', threads=2), sample crypko_00, {args.frames} poses of "
            "the realistic trace, then /proc/self/status. 'default' = OrtOptions' defaults at this commit; "
            "arena = enable_cpu_mem_arena, pattern = enable_mem_pattern, shared arena = one CPU arena in ORT's "
            "environment for all sessions (session.use_env_allocators). THA call p50 is over the same run "
            "(indicative: one run per row on a shared machine).")
    publish("Steady memory of the CPU core (RSS)", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
