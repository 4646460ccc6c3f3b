"""`ezvtb render-batch JOBS.json`: render recorded performances (and later generative jobs) on Ray.

    ezvtb render-batch jobs.json --workers 4 --gpus-per-worker 0.25
    ezvtb render-batch jobs.json --address 10.0.0.5:6379

Job file format: `ezvtb.cluster.jobs`. Each worker keeps one core loaded and reuses it for every
job with the same options; a job whose worker dies, or that fails on a file or the disk, is retried
(--retries); outputs are written atomically, and a stopped batch leaves no temporary file. Exit code 0
when every job succeeded, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("ezvtb.render_batch")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render-batch", help="render a JSON list of jobs (image + pose trace -> video) on Ray",
                       description="Runs the jobs of JOBS.json on a pool of Ray actors (ezvtb.cluster.batch); the "
                                   "outputs are byte-identical to `ezvtb run --input file://POSES?step=1&loop=0 "
                                   "--output mp4:OUT` with the same options. Job format: ezvtb.cluster.jobs.")
    p.add_argument("jobs", metavar="JOBS.json",
                   help="job file: a list of jobs or {\"defaults\": {...}, \"jobs\": [...]}")
    p.add_argument("--address", help="Ray cluster address (HOST:PORT of `ray start --head`, or auto); default: "
                                     "RAY_ADDRESS, a cluster started on this machine, else a new local instance")
    p.add_argument("--workers", type=int, default=1, help="worker actors, one core each (default: %(default)s)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per worker (default: %(default)s)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="Ray GPUs per worker; fractions share a GPU, e.g. 0.25 (default: %(default)s)")
    p.add_argument("--retries", type=int, default=2,
                   help="retries of a job whose worker died or that failed on a file or the disk "
                        "(default: %(default)s)")
    p.add_argument("--summary", metavar="PATH", help="write the per-job results as JSON (atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ezvtb.atomic import atomic_write
    from ezvtb.cluster.batch import run_jobs
    from ezvtb.cluster.jobs import load_jobs

    from ezvtb.outputs import check_outputs

    jobs = load_jobs(args.jobs)
    check_outputs([("--summary", args.summary)],
                  [("JOBS.json", args.jobs),
                   *((f"job {j.index}'s file", p) for j in jobs for p in j.inputs + j.outputs)],
                  suffixes={"--summary": (".json",)})
    bar = tqdm(total=len(jobs), desc="jobs", unit="job")

    def on_event(kind: str, info: dict) -> None:
        if kind in ("done", "failed"):
            bar.update(1)
        if kind in ("failed", "retry"):
            log.warning("job %d %s: %s", info["job"], kind, info.get("error", ""))

    try:
        results = run_jobs(jobs, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                           gpus_per_worker=args.gpus_per_worker, retries=args.retries, address=args.address,
                           on_event=on_event)
    finally:
        bar.close()
    rows = [{"job": r.job.index, "kind": r.job.kind, "status": r.status, "attempts": r.attempts,
             "outputs": r.job.outputs, "result": r.result, "error": r.error} for r in results]
    if args.summary:
        with atomic_write(args.summary, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        log.error("%s failed after %d attempt(s): %s", r.job.label, r.attempts, r.error)
    frames = sum(int(r.result.get("frames", 0)) for r in results)
    print(f"{len(results) - len(failed)}/{len(results)} jobs done, {frames} frames")
    return 1 if failed else 0
