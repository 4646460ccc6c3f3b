"""`run_jobs`: batch jobs (`ezvtb.cluster.jobs`) on a pool of Ray actors.

Each `JobWorker` actor keeps the state of its last job kind and options loaded (for
``tha-render``: one core) and reuses it for the next job with the same `Job.state_key`; the
scheduler hands a free worker the first pending job whose key matches what it holds, else the
first pending job. Every attempt gets its own token (`Job.attempt`), which names its temporary
files. A worker that dies (process killed, node lost) is restarted by Ray (``max_restarts``);
the attempt it was running is cleaned up (`JobKind.cleanup`: exactly that attempt's files) and
retried, up to `retries` more times, on whichever worker is free next. So is an attempt that
failed with an OSError (a file or the disk, outside the job). Any other error raised by the job
itself (a corrupt image, say) is not retried: it would fail again. When the driver stops (an
exception, SIGINT, SIGTERM) it kills the workers, waits for those on this node to exit and
cleans up the attempts they were running. Outputs are written atomically by the kinds, so a
failed or killed attempt never leaves a half-written file under the output name.

Outputs are written by the worker on its own node: on a multi-node cluster, job paths must be on
storage every node sees (NFS, a mounted bucket).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ezvtb.cluster._ray import ensure_ray, import_ray
from ezvtb.cluster.jobs import Job, resolve_kind

log = logging.getLogger("ezvtb.cluster")

ray = import_ray()


@ray.remote(max_restarts=-1, max_task_retries=0)
class JobWorker:
    """Runs jobs one at a time, keeping the last job's loaded state (a core) for the next one."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._state: Any = None
        self._kind_path: str | None = None
        self._jobs = 0

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "state_key": self._key,
                "jobs": self._jobs}

    def run(self, job: Job) -> dict[str, Any]:
        kind = resolve_kind(job.kind_path)
        reused = self._key == job.state_key and self._state is not None
        t0 = time.perf_counter()
        if not reused:
            self._drop_state()
            self._state = kind.load(job)
            self._key, self._kind_path = job.state_key, job.kind_path
        t1 = time.perf_counter()
        result = kind.run(self._state, job)
        self._jobs += 1
        return {**result, "pid": os.getpid(), "reused_state": reused, "load_s": t1 - t0,
                "run_s": time.perf_counter() - t1}

    def _drop_state(self) -> None:
        if self._state is not None and self._kind_path is not None:
            try:
                resolve_kind(self._kind_path).close_state(self._state)
            except Exception as e:  # noqa: BLE001 - a failing close must not block the next job
                log.warning("closing the previous job state failed: %s", e)
        self._state = self._key = self._kind_path = None


@dataclass
class JobResult:
    """What became of one job: ``ok`` with the kind's summary, or ``failed`` with the error."""

    job: Job
    status: str = "pending"
    attempts: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    workers: list[int] = field(default_factory=list)  # worker index per attempt


def run_jobs(jobs: list[Job], *, workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
             retries: int = 2, address: str | None = None,
             on_event: Callable[[str, dict[str, Any]], None] | None = None) -> list[JobResult]:
    """Run `jobs` on `workers` `JobWorker` actors; returns one `JobResult` per job, in job order.

    cpus_per_worker / gpus_per_worker: Ray resources of each worker (fractions allowed: 0.25 GPU
    = four workers share a GPU). retries: further attempts for a job whose worker died.
    on_event(kind, info): progress callback in the driver, kinds ``started`` (job index, worker
    index and pid, attempt), ``done``, ``failed``, ``retry`` (after a worker died).
    Connects to Ray (`ensure_ray(address)`) if this process is not connected yet.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected an int >= 0, got {retries!r}")
    for name, v in (("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{name}: expected a number >= 0, got {v!r}")
    ensure_ray(address)
    emit = on_event or (lambda kind, info: None)
    results = [JobResult(j) for j in jobs]
    if not jobs:
        return results
    n = min(workers, len(jobs))
    pool = [JobWorker.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker).remote() for _ in range(n)]
    pids: list[int | None] = [i["pid"] for i in ray.get([w.info.remote() for w in pool])]
    holds: list[str | None] = [None] * n  # state key each worker holds
    pending = collections.deque(range(len(jobs)))
    running: dict[Any, tuple[int, int, Job]] = {}  # ObjectRef -> (job index, worker index, attempt)
    idle = list(range(n))
    try:
        while pending or running:
            while idle and pending:
                w = idle.pop(0)
                i = next((k for k in pending if jobs[k].state_key == holds[w]), pending[0])
                pending.remove(i)
                r = results[i]
                r.attempts += 1
                r.workers.append(w)
                if pids[w] is None:  # restarted after a death: wait for the new process
                    pids[w] = _wait_alive(pool[w])["pid"]
                attempt = dataclasses.replace(jobs[i], attempt=f"j{i}a{r.attempts}-{secrets.token_hex(4)}")
                running[pool[w].run.remote(attempt)] = (i, w, attempt)
                emit("started", {"job": i, "worker": w, "pid": pids[w], "attempt": r.attempts})
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, w, attempt = running.pop(ref)
                r = results[i]
                try:
                    r.result = ray.get(ref)
                    r.status = "ok"
                    holds[w] = jobs[i].state_key
                    emit("done", {"job": i, "worker": w, "result": r.result})
                except ray.exceptions.RayActorError as e:
                    holds[w] = pids[w] = None  # restarted by Ray with nothing loaded
                    resolve_kind(jobs[i].kind_path).cleanup(attempt)
                    if r.attempts <= retries:
                        log.warning("%s: worker %d died (%s); retrying", jobs[i].label, w, _first_line(e))
                        pending.appendleft(i)
                        emit("retry", {"job": i, "worker": w, "attempt": r.attempts, "error": _first_line(e)})
                    else:
                        r.status, r.error = "failed", f"worker died {r.attempts} times: {_first_line(e)}"
                        emit("failed", {"job": i, "worker": w, "error": r.error})
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if getattr(e, "cause", None) is not None else e
                    holds[w] = None  # the state may be half-built after a failed load
                    resolve_kind(jobs[i].kind_path).cleanup(attempt)
                    if isinstance(cause, OSError) and r.attempts <= retries:  # a file or the disk: try again
                        log.warning("%s: %s: %s; retrying", jobs[i].label, type(cause).__name__, cause)
                        pending.appendleft(i)
                        emit("retry", {"job": i, "worker": w, "attempt": r.attempts,
                                       "error": f"{type(cause).__name__}: {cause}"})
                    else:
                        r.status, r.error = "failed", f"{type(cause).__name__}: {cause}"
                        emit("failed", {"job": i, "worker": w, "error": r.error})
                idle.append(w)
    finally:
        for a in pool:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        if running:  # stopped midway: the killed attempts' temporary files go too
            _wait_exited([pids[w] for _, w, _ in running.values()])
            for i, _, attempt in running.values():
                try:
                    resolve_kind(jobs[i].kind_path).cleanup(attempt)
                except Exception as e:  # noqa: BLE001 - clean up the others still
                    log.warning("%s: cleanup failed: %s", jobs[i].label, e)
    return results


def _wait_exited(pids: list[int | None], timeout: float = 10.0) -> None:
    """Wait until the worker processes `pids` (those on this machine) have exited, at most `timeout` s."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        if pid is None or pid == os.getpid():
            continue
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:  # gone (or not on this machine)
                break
            time.sleep(0.02)


def _wait_alive(worker: Any, timeout: float = 600.0) -> dict[str, Any]:
    """`info` of a worker Ray is restarting (calls fail with ActorUnavailableError until it is back)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            return ray.get(worker.info.remote())
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 1.0)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
