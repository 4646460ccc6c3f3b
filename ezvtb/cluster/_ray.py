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


LOOPBACK = "127.0.0.1"
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's switch: "0" = one machine, loopback only


def _existing_cluster(ray: Any) -> str | None:
    """The address Ray would join for ``ray.init()`` without one (``RAY_ADDRESS``, else the latest cluster
    started on this machine with ``ray start``), or None when it would start a new local instance."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray layout: only the documented variable is known
        return os.environ.get("RAY_ADDRESS") or None
    try:
        return canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - a stale address file: ray.init reports it
        return os.environ.get("RAY_ADDRESS") or "auto"


def loopback_init_kwargs(ray: Any) -> dict[str, Any]:
    """`ray.init` keyword arguments that make a new local instance listen on loopback only (to be used while
    `single_machine()` is in effect): node IP 127.0.0.1 (GCS, raylet, workers and agents bind it instead of
    every interface) and no dashboard."""
    return {"_node_ip_address": LOOPBACK, "include_dashboard": False}


class single_machine:  # noqa: N801 - a context manager used like a function
    """Ray's single-machine mode for the `ray.init` inside: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in the
    environment (Ray's processes started meanwhile inherit it) and in the imported Ray's constant, so that
    127.0.0.1 stays the node IP instead of being replaced by the machine's LAN address. Restored afterwards:
    a later connection to a real cluster is unaffected."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray

    def __enter__(self) -> "single_machine":
        from ray._private import ray_constants

        self._constants = ray_constants
        self._env = os.environ.get(_SINGLE_MACHINE_ENV)
        self._flag = ray_constants.ENABLE_RAY_CLUSTER
        os.environ[_SINGLE_MACHINE_ENV] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._constants.ENABLE_RAY_CLUSTER = self._flag
        if self._env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = self._env


def init_local_ray(ray: Any, **kwargs: Any) -> Any:
    """``ray.init(address="local", **kwargs)`` listening on loopback only (`loopback_init_kwargs`): how ezvtb,
    its tests and its benchmarks start a Ray instance of their own."""
    with single_machine(ray):
        return ray.init(address="local", **{**loopback_init_kwargs(ray), **kwargs})


def _lan_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing decides the source address, nothing is sent
            return s.getsockname()[0]
    except OSError:
        return None


def _loopback_only(address: str) -> bool:
    """Whether `address` (HOST:PORT) is a Ray instance listening on loopback only (one that ezvtb started):
    a loopback host whose port is not reachable on the machine's own address. Such an instance must be
    joined in single-machine mode too, or Ray would replace 127.0.0.1 by the machine's address."""
    import ipaddress
    import socket

    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        port_n = int(port)
    except ValueError:
        return False
    if not loopback:
        return False
    lan = _lan_ip()
    if lan is None or ipaddress.ip_address(lan).is_loopback:
        return True
    try:
        socket.create_connection((lan, port_n), timeout=1.0).close()
        return False  # a normal instance (every interface): Ray's own rules apply
    except OSError:
        return True


def ensure_ray(address: str | None = None, *, num_cpus: float | None = None) -> Any:
    """Connect this process to Ray unless it already is; returns the `ray` module.

    address: None = Ray's default (``RAY_ADDRESS``, else a cluster started on this machine with
    ``ray start``, else a new local instance); ``"auto"`` = the running cluster; ``HOST:PORT`` or
    ``ray://HOST:10001``. Usage statistics stay off unless the environment turned them on. A new local
    instance (started here because there is no cluster to join) listens on loopback only and has no
    dashboard (`init_local_ray`); such an instance (a loopback address not reachable on the machine's own
    address) is joined in the same single-machine mode. Joining a cluster is Ray's own behaviour, unchanged.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "ignore_reinit_error": True}
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target is not None and "://" not in target and target != "auto" and _loopback_only(target):
        log.info("connecting to the loopback-only Ray instance at %s", target)
        with single_machine(ray):
            ray.init(address=target, **kwargs)
        return ray
    if address or _existing_cluster(ray) is not None:
        log.info("connecting to Ray (%s)", address or "RAY_ADDRESS / the cluster started on this machine")
        ray.init(**kwargs, **({"address": address} if address else {}))
        return ray
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    log.info("starting a local Ray instance (loopback only)")
    init_local_ray(ray, **kwargs)
    return ray
