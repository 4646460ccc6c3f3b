"""ezvtb.cluster: per-frame overhead of the Ray path against a local core, and batch throughput.

1. Live overhead. The same core options run in this process (`get_core`) and in one
   `CoreReplica` (`ezvtb.cluster.Client`, one replica holding one core, Ray giving it the same
   CPU budget: `threads` ORT threads, `threads` Ray CPUs). Calls alternate local / cluster on the
   same poses so machine noise hits both alike; the overhead per frame is the difference of the
   medians. Rows with the ``echo`` engine (no model: `ezvtb.ipc.echo.EchoCore`) isolate the
   transport: task submission, 1 MiB frame through the object store, read back zero-copy.
2. Batch throughput. `run_jobs` renders the same ``tha-render`` jobs (mp4 outputs) with 1 and
   with 2 workers (one core each, 1 Ray CPU and 1 ORT thread per worker); frames per second over
   the whole batch, worker start-up and core loading included.

    python benchmarks/bench_cluster.py [--frames 8] [--jobs 4] [--poses 4] [--append]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import pct, publish, table  # noqa: E402


def core_options(threads: int) -> dict:
    return dict(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False, backend="cpu",
                threads=threads)


def live_rows(engine: str, calls: int, threads: int, image: np.ndarray, poses: np.ndarray) -> list[list[object]]:
    from ezvtb.cluster import Client
    from ezvtb.cluster.live import build_engine

    opts = core_options(threads) if engine == "core" else {"use_interpolation": False}
    local = build_engine(engine, opts)
    local.setImage(image)
    remote = Client.spawn(engine=engine, cpus_per_replica=threads if engine == "core" else 0, timeout=600, **opts)
    remote.setImage(image)
    loc, clu = [], []
    try:
        for p in poses[:2]:  # warm-up, not counted
            local.inference(p)
            remote.inference(p)
        for k in range(calls):
            p = poses[k % len(poses)]
            order = (0, 1) if k % 2 == 0 else (1, 0)
            for which in order:
                t0 = time.perf_counter()
                if which == 0:
                    local.inference(p)
                    loc.append((time.perf_counter() - t0) * 1e3)
                else:
                    remote.inference(p)
                    clu.append((time.perf_counter() - t0) * 1e3)
    finally:
        remote.close()
        local.close()
    lp, cp = pct(loc, 50), pct(clu, 50)
    return [[engine, calls, lp, cp, cp - lp, f"{cp / lp:.3f}x", pct(clu, 90) - pct(loc, 90)]]


def batch_rows(workers_list: list[int], jobs: int, poses_per_job: int, sample_paths: list[Path],
               tmp: Path) -> list[list[object]]:
    from ezvtb.cluster.batch import run_jobs
    from ezvtb.cluster.jobs import parse_jobs
    from ezvtb.traces import realistic_trace

    rows = []
    base = None
    for workers in workers_list:
        specs = []
        for j in range(jobs):
            trace = tmp / f"trace{j}.npy"
            np.save(trace, realistic_trace(poses_per_job, 20.0, seed=j))
            specs.append({"image": str(sample_paths[j % len(sample_paths)]), "poses": str(trace),
                          "output": str(tmp / f"w{workers}" / f"job{j}.mp4"), "fps": 20,
                          "options": {"backend": "cpu", "threads": 1}})
        parsed = parse_jobs(specs)
        t0 = time.perf_counter()
        results = run_jobs(parsed, workers=workers, cpus_per_worker=1.0)
        wall = time.perf_counter() - t0
        bad = [r.error for r in results if r.status != "ok"]
        if bad:
            raise RuntimeError(f"batch with {workers} workers failed: {bad}")
        frames = sum(r.result["frames"] for r in results)
        loads = sum(r.result["load_s"] for r in results)
        fps = frames / wall
        base = base or fps
        rows.append([workers, jobs, frames, wall, f"{fps:.3f}", f"{fps / base:.2f}x", loads])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="timed calls per live row (default: %(default)s)")
    ap.add_argument("--echo-calls", type=int, default=200, help="timed calls for the echo rows")
    ap.add_argument("--threads", type=int, default=1, help="ORT threads = Ray CPUs of the replica (live)")
    ap.add_argument("--jobs", type=int, default=4, help="batch jobs (default: %(default)s)")
    ap.add_argument("--poses", type=int, default=4, help="poses per batch job (default: %(default)s)")
    ap.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from ezvtb import get_core, prepare_image
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.tha3 import sample_images

    samples = sorted(sample_images())
    image = prepare_image(samples[0])
    get_core(**core_options(args.threads)).close()  # exports the graphs once, before any worker starts
    from ezvtb.cluster._ray import init_local_ray

    init_local_ray(ray, num_cpus=2, namespace="ezvtb", log_to_driver=False)  # loopback only, no dashboard
    try:
        poses = realistic_trace(max(args.frames, 8) + 2, 20.0)
        live = live_rows("echo", args.echo_calls, args.threads, image, poses)
        live += live_rows("core", args.frames, args.threads, image, poses)
        with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
            batch = batch_rows([1, 2], args.jobs, args.poses, samples, Path(tmp))
    finally:
        ray.shutdown()
    text = ("Live: local core vs ezvtb.cluster.Client (1 replica, same threads and CPU budget), per call\n\n"
            + table(["engine", "calls", "local p50 ms", "cluster p50 ms", "overhead p50 ms", "ratio",
                     "overhead p90 ms"], live)
            + "\n\nBatch: run_jobs, tha-render jobs to mp4, one core per worker (1 CPU, 1 ORT thread each)\n\n"
            + table(["workers", "jobs", "frames", "wall s", "frames/s", "vs 1 worker", "core load s (sum)"], batch))
    note = (f"Ray {ray.__version__}, local instance with 2 CPUs; frames 512x512 BGRA (1 MiB) come back through the "
            f"object store. Live: {args.frames} core calls / {args.echo_calls} echo calls per side, alternating; "
            f"batch: {args.jobs} jobs x {args.poses} poses, worker start-up and core loading included. "
            "Measured on a shared 2-core machine: the throughput ratio is bounded by what the other processes "
            "leave free.")
    publish("ezvtb.cluster: live overhead and batch throughput", text, note, args.append)
    print(json.dumps({"live": live, "batch": batch}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
