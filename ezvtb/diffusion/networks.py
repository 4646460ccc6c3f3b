"""`NetworkSet`: the base of every generative pipeline (text-to-video, SV3D/SVD, SV4D, Audio2Coeff).

A pipeline is a few named networks plus host code (conditioning, a sampling loop, decoding). This base owns
what they share:

* **named networks**: ``add_network(name, module, spec_for)`` registers a torch module and how to build its
  `GraphSpec` for given input shapes (the graph is exported per shape, cached by weights digest);
* **backend and device**: chosen once, in `runtime_for`, from the engines' backend policy
  (``concrete_backend`` / ``resolve_precision``); ``backend="torch"`` runs the modules eagerly, through
  the runner's eager path (device moves, autocast and no-autograd in one place);
* **session lifetime**: ``"persistent"`` (each network's runner opens once and lives until `close`) or
  ``"stage"`` (a runner opens when a stage starts and closes when it ends, so at most one network's memory is
  live at a time: SV3D's discipline on one GPU);
* ``close()`` / ``with pipeline:``; `open_sessions` counts what is still held;
* progress: a tqdm bar when `progress` is on, and ``progress_callback(stage, done, total)`` when set;
* loading: ``Pipeline.load(path, **options)`` checks that `path` is the file or folder the pipeline reads
  (`source_kind`), naming it in the error before any weight is read, then builds the pipeline
  (`from_source`).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ezvtb.engines.policy import RUNNER_BACKENDS, check_backend, concrete_backend, require_backend, resolve_precision
from ezvtb.engines.runner import GraphRunner

LIFETIMES = ("persistent", "stage")
EAGER = RUNNER_BACKENDS[0]  # "torch": the runner runs the module itself


def runtime_for(backend: str, device: Any = "cpu", half: bool | None = False) -> tuple[str, str]:
    """(runner backend, graph precision) for a pipeline's `backend`, `device` and `half` option.

    ``"torch"``: eager modules (precision is their dtype; "fp32" is returned). Otherwise the engines' policy:
    ``auto`` with a CPU `device` is the CPU backend, other ``auto`` resolves to this machine's first provider;
    `half` None = fp16 where the backend runs half precision (GPU backends), fp32 on the CPU; a bool forces it.
    """
    check_backend(backend, RUNNER_BACKENDS)
    dev = _device(device)
    if backend == EAGER:
        return EAGER, "fp32"
    if backend == "auto" and dev.type == "cpu":
        backend = "cpu"
    concrete = concrete_backend(backend)
    return concrete, resolve_precision(half, concrete)


def _device(device: Any) -> Any:
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from e


@dataclass
class Network:
    """A registered network: its module, how to build its graph spec, its graph cache name, eager autocast."""

    module: Any
    spec_for: Callable[[tuple[tuple[int, ...], ...]], Any]
    graph_name: str
    autocast: Any = None


class NetworkSet:
    """Named networks with one backend, one device and one session-lifetime policy (see the module docstring).

    Subclasses call `init_networks` first, then `add_network` for each network, and run networks with
    ``with self.stage(name) as run:`` (either lifetime) or ``self.network(name)`` (persistent only).
    """

    source_kind: str = "file"  # what `load` expects: "file" | "folder" | "any"
    backend: str = EAGER
    precision: str = "fp32"
    lifetime: str = "persistent"
    progress: bool = True
    progress_callback: Callable[[str, int, int], None] | None = None

    def init_networks(self, *, backend: str = "auto", device: Any = "cpu", half: bool | None = False,
                      lifetime: str = "persistent", progress: bool = True, **session_options: Any) -> None:
        """Choose the runtime (`runtime_for`) and the lifetime ("persistent" | "stage") before any network."""
        if lifetime not in LIFETIMES:
            raise ValueError(f"lifetime: expected one of {list(LIFETIMES)}, got {lifetime!r}")
        dev = _device(device)
        self.backend, self.precision = runtime_for(backend, dev, half)
        require_backend(self.backend)  # a missing provider is named before any weight is read
        if self.backend == EAGER and dev.type == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"device: {str(device)!r} with backend='torch' needs CUDA, which this torch "
                                 "build/machine lacks; use device='cpu' or an exported backend (backend='auto')")
        self.device = dev
        self.lifetime = lifetime
        self.progress = bool(progress)
        self.progress_callback = None
        self.session_options = dict(session_options)
        self._networks: dict[str, Network] = {}
        self._runners: dict[str, Any] = {}  # persistent runners by network name
        self._staged: list[Any] = []  # the runners of the stages running now

    @classmethod
    def load(cls, path: str | os.PathLike, **options: Any) -> "NetworkSet":
        """The pipeline of the weights at `path` (a `source_kind` file or folder), built with `options`."""
        return cls.from_source(check_source(path, "path", cls.source_kind), **options)

    @classmethod
    def from_source(cls, path: Path, **options: Any) -> "NetworkSet":  # pragma: no cover - each pipeline's own
        raise NotImplementedError(f"{cls.__name__} does not load from a path")

    # -- networks ----------------------------------------------------------------------------------------------
    def add_network(self, name: str, module: Any, spec_for: Callable, *, graph_name: str | None = None,
                    autocast: Any = None) -> None:
        """Register `module` as network `name` (eval mode); its graph is cached as `graph_name` (default `name`).

        `autocast`: a torch dtype the eager module runs under on CUDA (mixed precision), None for none.
        Persistent networks open now (an eager module moves to the device; graph sessions open on first use).
        """
        module.eval()
        self._networks[name] = Network(module, spec_for, graph_name or name, autocast)
        self._runners.pop(name, None)
        if self.lifetime == "persistent":
            self._runners[name] = self._runner(name).open()

    @property
    def network_names(self) -> tuple[str, ...]:
        return tuple(self._networks)

    def _spec(self, name: str) -> Network:
        net = self._networks.get(name)
        if net is None:
            raise ValueError(f"network: expected one of {list(self._networks)}, got {name!r}")
        return net

    def _runner(self, name: str) -> GraphRunner:
        net = self._spec(name)
        opts = {} if self.backend == EAGER else self.session_options
        return GraphRunner(net.module, net.spec_for, name=net.graph_name, backend=self.backend,
                           precision=self.precision, progress=self.progress, device=self.device,
                           autocast=net.autocast, grad=False, **opts)

    def network(self, name: str) -> Any:
        """The open runner of a persistent network (reopened after `close`)."""
        if self.lifetime != "persistent":
            raise ValueError(f"network: {name!r} has per-stage sessions; run it inside `with self.stage({name!r})`")
        runner = self._runners.get(name)
        if runner is None:
            runner = self._runners[name] = self._runner(name).open()
        return runner

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Any]:
        """The runner of network `name` for the block, without autograd; a per-stage runner is closed after it."""
        import torch

        if self.lifetime == "persistent":
            with torch.no_grad():
                yield self.network(name)
            return
        runner = self._runner(name).open()
        self._staged.append(runner)
        try:
            with torch.no_grad():
                yield runner
        finally:
            self._staged.remove(runner)
            runner.close()

    @property
    def open_sessions(self) -> int:
        """Sessions (and eager modules moved to a device) held now; 0 after `close`."""
        return sum(r.open_sessions for r in [*self._runners.values(), *self._staged])

    def close(self) -> None:
        """Release every session and move eager modules back to the CPU; the pipeline reopens them on next use."""
        for r in [*self._runners.values(), *self._staged]:
            r.close()
        self._runners.clear()

    def __enter__(self) -> "NetworkSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- progress ----------------------------------------------------------------------------------------------
    def report(self, stage: str, done: int, total: int) -> None:
        """Tell `progress_callback` (if set) that `done` of `total` units of `stage` are finished."""
        if self.progress_callback is not None:
            self.progress_callback(stage, done, total)

    def steps(self, items: Iterable[Any], stage: str, total: int | None = None, *,
              progress: bool | None = None) -> Iterator[Any]:
        """Iterate `items` with a tqdm bar (when `progress`, default the pipeline's) and `report` after each."""
        from tqdm import tqdm

        items = list(items) if total is None and not hasattr(items, "__len__") else items
        n = len(items) if total is None else total  # type: ignore[arg-type]
        show = self.progress if progress is None else progress
        for i, item in enumerate(tqdm(items, desc=stage, total=n, disable=not show, leave=False)):
            yield item
            self.report(stage, i + 1, n)

    def step_callback(self, stage: str, total: int) -> Callable[[int, Any, Any], None]:
        """A `ezvtb.diffusion.sampling.denoise` callback that reports each finished step of `stage`."""
        return lambda i, t, x: self.report(stage, i + 1, total)


def check_source(path: Any, argument: str, kind: str = "file") -> Path:
    """`path` as a Path that exists as a `kind` ("file" | "folder" | "any"); ValueError naming `argument`."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{argument}: expected a path to a {kind}, got {type(path).__name__}")
    p = Path(path)
    ok = {"file": p.is_file(), "folder": p.is_dir(), "any": p.exists()}[kind]
    if not ok:
        raise ValueError(f"{argument}: no {kind if kind != 'any' else 'file or folder'} at {str(p)!r}")
    return p


__all__ = ["EAGER", "LIFETIMES", "Network", "NetworkSet", "check_source", "runtime_for"]
