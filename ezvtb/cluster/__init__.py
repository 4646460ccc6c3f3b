"""ezvtb on a Ray cluster: live cores for many characters, and batch jobs on a worker pool.

    from ezvtb.cluster import Client            # instead of: from ezvtb.ipc import Client
    core = Client.spawn(backend="cpu", use_interpolation=False)   # or Client.connect("auto")
    core.setImage(img)
    frames = core.inference(pose)               # numpy frames read from Ray's object store

* `ezvtb.cluster.live`: `CoreService` (a named actor placing characters on `CoreReplica` actors,
  each holding one or more cores) and `Client`, the `ezvtb.ipc.Client` API over it;
  ``ezvtb serve --ray [ADDRESS]`` starts a service.
* `ezvtb.cluster.jobs`: the job kind registry (``tha-render`` built in); `ezvtb.cluster.batch`:
  `run_jobs` on a pool of `JobWorker` actors, one loaded model per worker reused across jobs;
  ``ezvtb render-batch JOBS.json``.

Ray is an optional dependency (extra ``cluster``); it is imported by the submodules, not here.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Client", "CoreService", "ReplicaLost", "run_jobs", "load_jobs", "register_job_kind", "job_kinds"]

_WHERE = {"Client": "live", "CoreService": "live", "ReplicaLost": "live", "run_jobs": "batch",
          "load_jobs": "jobs", "register_job_kind": "jobs", "job_kinds": "jobs"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"ezvtb.cluster.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ezvtb.cluster' has no attribute {name!r}")
