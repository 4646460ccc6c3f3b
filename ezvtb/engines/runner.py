"""`GraphRunner`: one network run eagerly or as exported graphs on `ezvtb.engines` sessions.

The generative pipelines run their UNets, VAEs, encoders and small nets through it, on the same
session runtime as the realtime stages. Each input shape gets its own graph, exported on first use
by `ezvtb.export.exporter.export_module` (cached by weights digest). torch is imported only where a
tensor is converted or a module exported; the realtime core never imports this module.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ezvtb.engines import create_session
from ezvtb.engines.base import GraphSpec
from ezvtb.engines.policy import RUNNER_BACKENDS, check_backend, check_precision, require_backend
from ezvtb.export.exporter import check_name, export_module, weights_digest
from ezvtb.export.network_rewrites import check_rewrites, rewrites_for


class GraphRunner:
    """One network, run eagerly (``backend="torch"``) or as exported graphs on `ezvtb.engines` sessions.

    ``backend="torch"`` is the one eager path of the generative pipelines: `open` moves the module to
    `device` (None: leave it where it is), each call moves floating inputs to the module's device and
    dtype, runs under `autocast` (a torch dtype, on CUDA only) and without autograd unless `grad`, and
    returns floating outputs on the first input's device in the first floating input's dtype
    (float32 without one), as a graph's outputs come back; `close` moves a module that `open` moved
    back to the CPU. With no device, no autocast and same-dtype inputs a call is ``module(*inputs)``
    itself (gradients flow: training uses it).
    Other backends ("auto" | "cpu" | "cuda" | "tensorrt" | "directml" | "trt") hold one session per
    input-shape key: on first use of a shape, ``spec_for(shapes)`` gives the `GraphSpec` for those
    input shapes, `export_module` exports (or finds in the cache) the graph, and
    `ezvtb.engines.create_session` opens it with ``session_options``. Inputs are converted to the
    spec's dtypes; outputs are fresh torch tensors on the first input's device (copied out of the
    session-owned buffers). The weights are hashed once, at the first export: do not change them
    afterwards (build a new runner). `rewrites` (names of `ezvtb.export.network_rewrites.REWRITES`;
    None: ``rewrites_for(backend, precision)``, the ones measured faster there) are applied for the export only.
    """

    def __init__(self, module: Any, spec_for: Callable[[tuple[tuple[int, ...], ...]], GraphSpec], *, name: str,
                 backend: str = "auto", precision: str = "fp32", progress: bool = True,
                 external_data: bool | None = None, device: Any = None, autocast: Any = None, grad: bool = True,
                 rewrites: Any = None, **session_options: Any) -> None:
        check_backend(backend, RUNNER_BACKENDS)
        require_backend(backend)  # before any export: a missing provider is named now, not after minutes
        if not callable(spec_for):
            raise ValueError(f"spec_for: expected a callable shapes -> GraphSpec, got {type(spec_for).__name__}")
        self.module = module
        self.spec_for = spec_for
        self.name = check_name(name)
        self.backend = backend
        self.precision = check_precision(precision)
        self.progress = progress
        self.external_data = external_data
        self.device = device
        self.autocast = autocast
        self.grad = bool(grad)
        self.rewrites = None if rewrites is None else check_rewrites(rewrites)
        self.session_options = session_options
        self._sessions: dict[tuple, Any] = {}
        self._digest: str | None = None
        self._moved = False
        self.paths: dict[tuple, Path] = {}

    def __repr__(self) -> str:
        return (f"GraphRunner({self.name!r}, backend={self.backend!r}, precision={self.precision!r}, "
                f"{len(self._sessions)} sessions)")

    @property
    def open_sessions(self) -> int:
        """Live sessions (graph backends) or 1 while `open` holds the eager module on its device."""
        return len(self._sessions) + int(self._moved)

    def open(self) -> "GraphRunner":
        """Eager: move the module to `device` (sessions of graph backends open on first use)."""
        if self.backend == "torch" and self.device is not None and not self._moved:
            import torch

            dev = torch.device(self.device)
            if dev.type != "cpu" or _module_device(self.module).type != "cpu":
                self.module.to(dev)
                self._moved = dev.type != "cpu"
        return self

    def session_for(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        """The session for these input shapes (exported and opened on first use)."""
        sess = self._sessions.get(shapes)
        if sess is not None:
            return sess
        spec = self.spec_for(shapes)
        if not isinstance(spec, GraphSpec):
            raise ValueError(f"spec_for: must return a GraphSpec, got {type(spec).__name__}")
        declared = tuple(t.shape for t in spec.inputs)
        if declared != shapes:
            raise ValueError(f"{self.name}: spec_for({list(map(list, shapes))}) returned a spec with input shapes "
                             f"{list(map(list, declared))}")
        if self._digest is None:
            self._digest = weights_digest(self.module)
        if self.rewrites is None:
            self.rewrites = rewrites_for(self.backend, self.precision)
        path = export_module(self.module, spec, name=self.name, precision=self.precision,
                             external_data=self.external_data, progress=self.progress, digest=self._digest,
                             rewrites=self.rewrites)
        sess = create_session(path, spec, self.backend, **self.session_options)
        self._sessions[shapes] = sess
        self.paths[shapes] = path
        return sess

    def __call__(self, *inputs: Any) -> Any:
        """Same as ``module(*inputs)``: one tensor, or a tuple in the spec's output order."""
        if self.backend == "torch":
            return self._call_eager(inputs)
        import torch  # the caller's tensors are torch; imported here so creating a runner needs no torch

        if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
            raise ValueError(f"{self.name}: inputs must be torch tensors, got {[type(x).__name__ for x in inputs]}")
        shapes = tuple(tuple(x.shape) for x in inputs)
        sess = self.session_for(shapes)
        spec = sess.spec
        if len(inputs) != len(spec.inputs):
            raise ValueError(f"{self.name}: expected {len(spec.inputs)} inputs ({list(spec.input_names)}), "
                             f"got {len(inputs)}")
        feeds = {}
        for t, x in zip(spec.inputs, inputs):
            a = x.detach().cpu()
            if a.dtype == torch.bfloat16:
                a = a.float()
            feeds[t.name] = np.ascontiguousarray(a.numpy(), dtype=t.np_dtype)
        out = sess.run(feeds)
        device = inputs[0].device
        ys = tuple(torch.from_numpy(np.array(sess.to_host(out[t.name]), copy=True)).to(device)
                   for t in spec.outputs)
        return ys[0] if len(ys) == 1 else ys

    def _call_eager(self, inputs: tuple) -> Any:
        import contextlib

        import torch

        self.open()
        p = next(iter(self.module.parameters()), None)
        dev, dtype = (p.device, p.dtype) if p is not None else (None, None)
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        xs = tuple(x.to(dev, dtype if x.is_floating_point() else x.dtype)
                   if isinstance(x, torch.Tensor) and dev is not None else x for x in inputs)
        grad = contextlib.nullcontext() if self.grad else torch.no_grad()
        cast = (torch.autocast(dev.type, dtype=self.autocast)
                if self.autocast is not None and dev is not None and dev.type == "cuda" else contextlib.nullcontext())
        with grad, cast:
            ys = self.module(*xs)
        if not tensors:
            return ys
        out_dev = tensors[0].device
        out_dtype = next((x.dtype for x in tensors if x.is_floating_point()), torch.float32)

        def back(y: Any) -> Any:
            if isinstance(y, torch.Tensor) and y.is_floating_point():
                return y.to(out_dev, out_dtype)
            return y

        return tuple(back(y) for y in ys) if isinstance(ys, tuple) else back(ys)

    def close(self) -> None:
        """Release every session (the exported files stay in the cache); an eager module that `open`
        moved goes back to the CPU and the CUDA cache is emptied."""
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()
        if self._moved:
            release_module(self.module)
            self._moved = False

    def __enter__(self) -> "GraphRunner":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _module_device(module: Any) -> Any:
    import torch

    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def release_module(module: Any) -> None:
    """Move `module` back to the CPU and empty the CUDA cache (a no-op for a module already there)."""
    import torch

    if any(p.device.type != "cpu" for p in module.parameters()):
        module.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


__all__ = ["GraphRunner", "release_module"]
