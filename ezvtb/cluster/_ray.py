"""Connecting to Ray: one place that imports it, with a clear error when the extra is missing."""
from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("ezvtb.cluster")

NAMESPACE = "ezvtb"


def import_ray() -> Any:
    """The `ray` module, or ImportError naming the extra to install."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"ezvtb.cluster needs Ray: pip install 'ezvtb[cluster]' ({e})") from None
    return ray


def ensure_ray(address: str | None = None, *, num_cpus: float | None = None) -> Any:
    """Connect this process to Ray unless it already is; returns the `ray` module.

    address: None = Ray's default (``RAY_ADDRESS``, else a cluster started on this machine with
    ``ray start``, else a new local instance); ``"auto"`` = the running cluster; ``HOST:PORT`` or
    ``ray://HOST:10001``. Usage statistics stay off unless the environment turned them on, and no
    dashboard is started for a new local instance.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    log.info("connecting to Ray (%s)", address or "default: RAY_ADDRESS, a local cluster, or a new instance")
    ray.init(**kwargs)
    return ray
