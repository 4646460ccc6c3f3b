"""Live cores on Ray: `CoreService` places characters on `CoreReplica` actors; `Client` drives one.

    from ezvtb.cluster import Client
    with Client.spawn(backend="cpu", use_interpolation=False, replicas=2) as core:   # private service
        core.setImage(img)
        frames = core.inference(pose)
    core = Client.connect("auto")          # the service of a running ``ezvtb serve --ray``

Placement. A `CoreService` (a named actor, ``ezvtb`` in namespace ``ezvtb`` by default) starts
`replicas` `CoreReplica` actors, each holding `cores_per_replica` cores built with
``get_core(**options)`` and asking Ray for `cpus_per_replica` CPUs and `gpus_per_replica` GPUs
(a fraction: 0.25 lets four replicas share a GPU; Ray sets the replica's CUDA_VISIBLE_DEVICES,
so ``device_id=0`` is the GPU Ray assigned). `Client.setImage` asks the service once where
the character (keyed by its image digest) lives: the replica with the fewest characters that has
a free core; from then on every call goes straight to that replica's actor, so a character's
frames are always rendered by the core holding its image (and its RIFE history). Clients that
set the same image share its core, as two callers of one local core would.

Frames come back as numpy arrays through Ray's object store (pickle protocol 5 out-of-band
buffers): on the replica's node they are read zero-copy from shared memory, so `inference`
returns read-only arrays that stay valid as long as they are referenced (never overwritten by
the next call, unlike a local core's buffers).

Faults. Replicas are restarted by Ray when their process dies (``max_restarts``, default
unlimited; the restart rebuilds the cores). The call in flight when a replica dies raises
`ReplicaLost` (a ConnectionError saying so), as does a call sent while Ray is still restarting
it; the client then re-sends its image with the next call, which waits for the restarted
replica and renders normally. A replica that finished restarting between two calls answers
`CharacterNotLoaded`, and the client re-sends the image and repeats the pose itself: no error
reaches the caller. A replica Ray gave up on (``max_restarts`` spent) is replaced by the service.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from typing import Any

import numpy as np

from ezvtb.cluster._ray import NAMESPACE, ensure_ray, import_ray
from ezvtb.image import validate_image
from ezvtb.ipc.engine import ENGINES, build_engine, expected_output
from ezvtb.options import check_option_names
from ezvtb.pose import POSE_SIZE, validate_pose
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.cluster")

ray = import_ray()

# ezvtb.ipc.Client.spawn keywords about its server process, meaningless on Ray (accepted, ignored)
IPC_ONLY_KEYWORDS = frozenset({"slots", "message_timeout", "log_level", "python", "stderr", "env"})
DEFAULT_NAME = "ezvtb"


class CharacterNotLoaded(LookupError):
    """The replica does not hold this character (it restarted, or the character was released)."""


class ReplicaLost(ConnectionError):
    """The replica rendering this call died; Ray restarts it and the next call re-sends the image."""


def image_digest(img: np.ndarray) -> str:
    """Hex digest of a character image (shape, dtype and pixels): the key a character is placed by."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((img.shape, img.dtype.str)).encode())
    h.update(np.ascontiguousarray(img).data)
    return h.hexdigest()


class _Slot:
    def __init__(self, core: Any) -> None:
        self.core = core
        self.digest: str | None = None
        self.lock = threading.Lock()


@ray.remote(max_task_retries=0)
class CoreReplica:
    """One process holding `cores` cores; each serves one character at a time (by digest).

    A threaded actor: characters on different cores render concurrently, a character's calls are
    serialised by its core's lock, and `info` answers while frames render.
    """

    def __init__(self, engine: str, options: dict[str, Any], cores: int) -> None:
        self._slots = [_Slot(build_engine(engine, options)) for _ in range(cores)]
        self._by_digest: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._in_flight = 0
        self._started = time.time()
        probe = self._slots[0].core
        self._shape, self._frames = expected_output(engine, options, probe)

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(), "cores": len(self._slots),
                    "characters": sorted(self._by_digest), "in_flight": self._in_flight,
                    "frames_per_inference": self._frames, "frame_shape": self._shape,
                    "up_s": time.time() - self._started,
                    "resources": ray.get_runtime_context().get_assigned_resources(),
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def set_image(self, digest: str, image: np.ndarray) -> None:
        with self._lock:
            slot = self._by_digest.get(digest)
            if slot is None:
                free = [s for s in self._slots if s.digest is None]
                if not free:
                    raise RuntimeError(f"replica pid {os.getpid()}: all {len(self._slots)} cores hold characters")
                slot = free[0]
                slot.digest = digest
                self._by_digest[digest] = slot
        with slot.lock:
            slot.core.setImage(image)

    def inference(self, digest: str, pose: np.ndarray) -> list[np.ndarray]:
        slot = self._by_digest.get(digest)
        if slot is None:
            raise CharacterNotLoaded(f"replica pid {os.getpid()} does not hold character {digest}")
        with self._lock:
            self._in_flight += 1
        try:
            with slot.lock:
                # copies: the core reuses its buffers, and Ray serialises the result after return
                return [np.array(f, copy=True) for f in slot.core.inference(pose)]
        finally:
            with self._lock:
                self._in_flight -= 1

    def stats(self, digest: str) -> dict[str, Any]:
        slot = self._by_digest.get(digest)
        if slot is None:
            raise CharacterNotLoaded(f"replica pid {os.getpid()} does not hold character {digest}")
        with slot.lock:
            return slot.core.stats()

    def release(self, digest: str) -> None:
        with self._lock:
            slot = self._by_digest.pop(digest, None)
            if slot is not None:
                slot.digest = None


@ray.remote(num_cpus=0, max_restarts=-1)
class CoreService:
    """Starts the replicas and places characters on them (module docstring). State: who is where."""

    def __init__(self, engine: str, options: dict[str, Any], replicas: int, cores_per_replica: int,
                 cpus_per_replica: float, gpus_per_replica: float, max_restarts: int) -> None:
        self._engine, self._options = engine, dict(options)
        self._cores = cores_per_replica
        self._replica_options = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica,
                                 "max_restarts": max_restarts, "max_concurrency": cores_per_replica + 4}
        self._replicas = [self._new_replica() for _ in range(replicas)]
        self._where: dict[str, int] = {}
        self._users: dict[str, int] = {}

    def _new_replica(self) -> Any:
        return CoreReplica.options(**self._replica_options).remote(self._engine, self._options, self._cores)

    def ready(self) -> list[dict[str, Any]]:
        """Waits until every replica has built its cores; their `info`."""
        return ray.get([r.info.remote() for r in self._replicas])

    def place(self, digest: str, repair: bool = False) -> tuple[int, Any]:
        """(replica index, replica handle) for a character; places it on first use.

        repair=True: a client whose replica could not be reached asks again; the character keeps
        its place (no new user counted) and a replica Ray gave up on is replaced first.
        """
        if repair and digest in self._where:
            i = self._where[digest]
            return i, self.replace_if_dead(i)
        if digest not in self._where:
            load = [0] * len(self._replicas)
            for idx in self._where.values():
                load[idx] += 1
            free = [i for i in range(len(self._replicas)) if load[i] < self._cores]
            if not free:
                raise RuntimeError(f"no free core: {len(self._replicas)} replicas x {self._cores} cores all hold "
                                   "characters; start the service with more replicas or cores")
            self._where[digest] = min(free, key=lambda i: load[i])
            self._users[digest] = 0
        self._users[digest] += 1
        i = self._where[digest]
        return i, self._replicas[i]

    def release(self, digest: str) -> None:
        """One user of a character is gone; the last one frees its core."""
        if digest not in self._where:
            return
        self._users[digest] -= 1
        if self._users[digest] <= 0:
            i = self._where.pop(digest)
            del self._users[digest]
            self._replicas[i].release.remote(digest)

    def replace_if_dead(self, index: int) -> Any:
        """The replica at `index`, replaced by a new one if Ray reports it dead for good."""
        try:
            ray.get(self._replicas[index].info.remote())
        except ray.exceptions.ActorUnavailableError:
            pass  # restarting: Ray brings it back
        except ray.exceptions.ActorDiedError:
            log.warning("replica %d is dead for good; starting a new one", index)
            self._replicas[index] = self._new_replica()
        return self._replicas[index]

    def info(self) -> dict[str, Any]:
        return {"engine": self._engine, "options": self._options, "replicas": len(self._replicas),
                "cores_per_replica": self._cores, "characters": dict(self._where),
                "replica_options": self._replica_options}

    def shutdown(self) -> None:
        for r in self._replicas:
            ray.kill(r, no_restart=True)
        self._replicas = []


def start_service(options: dict[str, Any] | None = None, *, engine: str = "core", replicas: int = 1,
                  cores_per_replica: int = 1, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
                  max_restarts: int = -1, name: str | None = None, address: str | None = None,
                  startup_timeout: float | None = 900.0) -> Any:
    """Start a `CoreService` (named `name` in namespace ``ezvtb`` when given) and wait for its replicas.

    Options are checked by building nothing here: a bad get_core option fails in the replicas and
    is raised from this call. Returns the service's actor handle.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    for key, v in (("replicas", replicas), ("cores_per_replica", cores_per_replica)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key}: expected an int >= 1, got {v!r}")
    for key, v in (("cpus_per_replica", cpus_per_replica), ("gpus_per_replica", gpus_per_replica)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{key}: expected a number >= 0, got {v!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < -1:
        raise ValueError(f"max_restarts: expected an int >= -1 (-1 = unlimited), got {max_restarts!r}")
    if engine == "core":  # argument names, before any replica starts
        check_option_names(options or {})
    ensure_ray(address)
    opts = {"namespace": NAMESPACE}
    if name:
        opts["name"] = name
    svc = CoreService.options(**opts).remote(engine, dict(options or {}), replicas, cores_per_replica,
                                             float(cpus_per_replica), float(gpus_per_replica), max_restarts)
    try:
        infos = ray.get(svc.ready.remote(), timeout=startup_timeout)
    except ray.exceptions.RayTaskError as e:
        _kill_service(svc)
        cause = e.cause if getattr(e, "cause", None) is not None else e
        raise type(cause)(str(cause)) if isinstance(cause, (ValueError, RuntimeError)) else cause from None
    except BaseException:
        _kill_service(svc)
        raise
    log.info("ezvtb cores on Ray: %d replicas x %d cores (pids %s)", replicas, cores_per_replica,
             ", ".join(str(i["pid"]) for i in infos))
    return svc


def _kill_service(svc: Any) -> None:
    try:
        ray.get(svc.shutdown.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - best effort on the way out
        pass
    ray.kill(svc, no_restart=True)


class Client:
    """One character on a `CoreService`; mirrors `ezvtb.ipc.Client` / `ezvtb.Core` (module docstring).

    Attributes after `setImage`: `frames_per_inference`, `frame_shape` (H, W, 4), `replica_index`,
    `replica_pid`.
    `timeout`: seconds to wait for each frame (None = no limit); a timed-out call raises
    TimeoutError. Thread-safe: calls are serialised by a lock.
    """

    def __init__(self, service: Any, *, owns_service: bool = False, timeout: float | None = None,
                 recovery_timeout: float | None = 900.0) -> None:
        self._service = service
        self._owns = owns_service
        self.timeout = timeout
        self.recovery_timeout = recovery_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._image: np.ndarray | None = None
        self._digest: str | None = None
        self._replica: Any = None
        self.replica_index: int | None = None
        self.replica_pid: int | None = None
        self.frames_per_inference: int | None = None
        self.frame_shape = (512, 512, 4)
        self._lost = False
        self._recovering = False
        self._pose = np.zeros(POSE_SIZE, np.float32)
        self.timings = Timings()
        self._counts = {"requests": 0, "frames": 0, "replica_lost": 0, "images_resent": 0, "errors": 0}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def spawn(cls, transport: str | None = None, *, address: str | None = None, engine: str = "core",
              replicas: int = 1, cores_per_replica: int = 1, cpus_per_replica: float = 1.0,
              gpus_per_replica: float = 0.0, max_restarts: int = -1, timeout: float | None = None,
              startup_timeout: float | None = 900.0, **options: Any) -> "Client":
        """Start a private `CoreService` (closed with this client) and connect to it.

        address: the Ray cluster (see `ensure_ray`); engine: ``core`` or ``echo``; options:
        `get_core` keywords. The other arguments are `start_service`'s. So that a call written for
        `ezvtb.ipc.Client.spawn` works unchanged, its `transport` (``shm`` / ``stdio``) and its
        process-only keywords (`IPC_ONLY_KEYWORDS`) are accepted and ignored: frames travel
        through Ray's object store.
        """
        if transport not in (None, "shm", "stdio"):
            raise ValueError(f"transport: expected None, 'shm' or 'stdio' (ignored on Ray), got {transport!r}")
        ignored = sorted(k for k in options if k in IPC_ONLY_KEYWORDS)
        if ignored:
            log.info("ezvtb.cluster.Client.spawn: ignoring ezvtb.ipc-only arguments %s", ignored)
            options = {k: v for k, v in options.items() if k not in IPC_ONLY_KEYWORDS}
        svc = start_service(options, engine=engine, replicas=replicas, cores_per_replica=cores_per_replica,
                            cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica,
                            max_restarts=max_restarts, address=address, startup_timeout=startup_timeout)
        return cls(svc, owns_service=True, timeout=timeout, recovery_timeout=startup_timeout)

    @classmethod
    def connect(cls, address: str | None = "auto", *, name: str = DEFAULT_NAME, timeout: float | None = None,
                recovery_timeout: float | None = 900.0) -> "Client":
        """Connect to the service an ``ezvtb serve --ray`` started (actor `name`, namespace ``ezvtb``)."""
        ensure_ray(address)
        try:
            svc = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            raise ConnectionError(f"name: no ezvtb service {name!r} in namespace {NAMESPACE!r} on this Ray cluster; "
                                  "start one with `ezvtb serve --ray`") from None
        return cls(svc, timeout=timeout, recovery_timeout=recovery_timeout)

    # -- the Core API -----------------------------------------------------------------------------
    def setImage(self, img: np.ndarray) -> None:  # noqa: N802 - Core API
        """Set the character: uint8 (512, 512, 4) BGRA (validated here with the core's rules)."""
        img = validate_image(img, "img")
        with self._lock:
            self._check()
            digest = image_digest(img)
            if digest != self._digest:
                index, replica = ray.get(self._service.place.remote(digest))
                if self._digest is not None:
                    self._service.release.remote(self._digest)
                self._digest, self._replica, self.replica_index = digest, replica, index
            self._image = np.array(img, copy=True)
            self._send_image(self.timeout)

    def inference(self, pose: Any) -> list[np.ndarray]:
        """The frame(s) for `pose`: read-only uint8 (H, W, 4) arrays (module docstring).

        Raises `ReplicaLost` when the replica died during this call (the next call recovers),
        TimeoutError after `timeout`, and the core's ValueError / RuntimeError otherwise.
        """
        with self._lock:
            self._check()
            p = validate_pose(pose, "pose", out=self._pose)
            if self._image is None:
                raise RuntimeError("setImage must be called before inference")
            if self._lost:
                self._recover()
            t0 = time.perf_counter()
            try:
                frames = self._get(self._replica.inference.remote(self._digest, p), self.timeout)
            except CharacterNotLoaded:  # the replica restarted between calls: nothing was in flight
                self._recover()
                frames = self._get(self._replica.inference.remote(self._digest, p), self.timeout)
            self.timings.add("round_trip", (time.perf_counter() - t0) * 1e3)
            self._counts["frames"] += len(frames)
            self.frames_per_inference = len(frames)
            return frames

    def stats(self) -> dict[str, Any]:
        """The core's stats dict plus ``"cluster": {"replica": info, "client": counters}``."""
        with self._lock:
            self._check()
            if self._replica is None:
                raise RuntimeError("setImage must be called before stats")
            if self._lost:
                self._recover()
            try:
                core = self._get(self._replica.stats.remote(self._digest), self.timeout)
            except CharacterNotLoaded:
                self._recover()
                core = self._get(self._replica.stats.remote(self._digest), self.timeout)
            info = self._get(self._replica.info.remote(), self.timeout)
            self.replica_pid = info["pid"]
            out = dict(core)
            out["cluster"] = {"replica": dict(info, index=self.replica_index),
                              "client": dict(self._counts, latency=self.timings.summary())}
            return out

    def close(self) -> None:
        """Free this character's core (and stop the service if `spawn` started it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._digest is not None and not self._owns:
                    ray.get(self._service.release.remote(self._digest), timeout=30)
                if self._owns:
                    _kill_service(self._service)
            except Exception as e:  # noqa: BLE001 - closing must not raise for a gone cluster
                log.debug("close: %s", e)
            self._replica = self._image = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def replica(self) -> Any:
        """The Ray actor handle of the replica holding this character (None before `setImage`)."""
        return self._replica

    # -- plumbing ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this ezvtb.cluster.Client is closed")

    def _get(self, ref: Any, timeout: float | None) -> Any:
        self._counts["requests"] += 1
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayActorError as e:
            self._lost = True
            if not self._recovering:
                self._counts["replica_lost"] += 1
            raise ReplicaLost(f"the replica holding this character (index {self.replica_index}) died during this "
                              "call; Ray is restarting it and the next call re-sends the image "
                              f"({_short(e)})") from None
        except ray.exceptions.GetTimeoutError:
            try:
                ray.cancel(ref)
            except Exception as e:  # noqa: BLE001 - a running actor call may not be cancellable
                log.debug("cancel: %s", e)
            raise TimeoutError(f"no frame from the replica within {timeout} s") from None
        except ray.exceptions.RayTaskError as e:
            self._counts["errors"] += 1
            cause = getattr(e, "cause", None)
            if isinstance(cause, CharacterNotLoaded):
                raise CharacterNotLoaded(str(cause)) from None
            if isinstance(cause, (ValueError, RuntimeError, NotImplementedError, FileNotFoundError)):
                raise type(cause)(str(cause)) from None
            raise

    def _send_image(self, timeout: float | None) -> None:
        self._get(self._replica.set_image.remote(self._digest, self._image), timeout)
        info = self._get(self._replica.info.remote(), timeout)
        self.replica_pid = info["pid"]
        self.frames_per_inference = info["frames_per_inference"]
        self.frame_shape = tuple(info["frame_shape"])
        self._lost = False

    def _recover(self) -> None:
        """Re-send the image to the replica once Ray has restarted it (replaced if Ray gave up on it)."""
        self._counts["images_resent"] += 1
        self._recovering = True
        try:
            self._resend_until_back()
        finally:
            self._recovering = False
        log.info("character %s re-sent to replica %s (pid %s)", self._digest, self.replica_index, self.replica_pid)

    def _resend_until_back(self) -> None:
        deadline = None if self.recovery_timeout is None else time.monotonic() + self.recovery_timeout
        delay = 0.05
        while True:
            try:
                self._send_image(self.recovery_timeout)
                break
            except ReplicaLost as e:
                if deadline is not None and time.monotonic() > deadline:
                    raise ReplicaLost(f"the replica holding this character did not come back within "
                                      f"{self.recovery_timeout} s ({e})") from None
                # restarting (calls fail until its cores are built again) or dead for good (replaced)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                self.replica_index, self._replica = ray.get(self._service.place.remote(self._digest, True))


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def serve_forever(address: str | None, options: dict[str, Any], *, engine: str = "core", name: str = DEFAULT_NAME,
                  replicas: int = 1, cores_per_replica: int = 1, cpus_per_replica: float = 1.0,
                  gpus_per_replica: float = 0.0, announce: Any = print) -> int:
    """``ezvtb serve --ray``: start the named service, announce it, hold it until SIGINT/SIGTERM."""
    ensure_ray(address)  # first: ray.init installs its own SIGTERM handler, ours must come after it
    stop = threading.Event()
    old = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    svc = None
    try:
        svc = start_service(options, engine=engine, replicas=replicas, cores_per_replica=cores_per_replica,
                            cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica, name=name,
                            address=address)
        announce(f"ezvtb cores on Ray: service {name!r} (namespace {NAMESPACE!r}), {replicas} replicas x "
                 f"{cores_per_replica} cores; connect with ezvtb.cluster.Client.connect(address, name={name!r})")
        while not stop.wait(1.0):
            pass
        log.info("stopping the service")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if svc is not None:
            _kill_service(svc)
    return 0
