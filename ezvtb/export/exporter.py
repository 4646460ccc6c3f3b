"""The one exporter: any torch module with a declared `GraphSpec` -> a cached, verified ONNX graph.

Every exported graph is described by a `Recipe` (its module, spec, example inputs and acceptance check) and
made by `export_graph`, which owns what all of them share: the cache key (`graph_key`) and layout, the
TorchScript export itself, external data for large graphs (`ezvtb.export.onnx_file`), verification against
the PyTorch module before the graph is published, atomic writes, and the one `ExportError`. THA3, RIFE, SR
and the face tracker (`ezvtb.export.tha3_graphs`, `rife`, `sr`, `facetrack`) are recipes; `export_module`
exports any module (the generative pipelines' networks, through `ezvtb.engines.runner.GraphRunner`).

Cache layout (the ``.onnx`` is written last, so its presence means the export is complete)::

    $EZVTB_HOME/onnx/<family>/<key>/<name>.onnx
    $EZVTB_HOME/onnx/<family>/<key>/<name>.<key>.weights      (only for graphs with external data)

``key`` = blake2b(`EXPORTER_VERSION` | opset | the recipe's identity (weights digest and every
option the graph depends on) | spec). `EXPORTER_VERSION` is the one tag to bump when any exported graph
changes; graphs of an older layout or version are never found under a new key, so they are exported again,
never misread. The key needs neither torch nor the weights loaded, so a cache hit starts torch-free. The
external-data file name carries the key, so two graphs that differ only in their weights have different
``.onnx`` bytes too (native TensorRT keys its engine cache by the ``.onnx`` file's sha256).

Export uses the TorchScript exporter (``dynamo=False``, static shapes, constant folding): on the diffusion
UNets it is several times faster than the dynamo exporter and gives the same graphs to ONNX Runtime.
torch and onnx are imported only inside the functions that export; the realtime core never imports them.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ezvtb import paths
from ezvtb.engines.base import GraphSpec
from ezvtb.engines.policy import check_precision
from ezvtb.export.errors import ExportError
from ezvtb.export.onnx_file import external_data_name, finalise, finalise_captured, is_complete
from ezvtb.export.quiet import quiet_export

log = logging.getLogger("ezvtb.export")

# The one version tag of every exported graph: bump it when any recipe's graph changes.
EXPORTER_VERSION = "ezvtb-export-1"
OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 20  # SDPA / LayerNormalization need >= 14 (17 for LayerNormalization op)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TORCH_DTYPES = {
    "float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64",
    "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}


@dataclass(frozen=True)
class Recipe:
    """One graph to export: what `export_graph` needs to make, check and cache it.

    family: the cache folder (``tha3``, ``rife``, ``sr``, ``facetrack``, or a module's name).
    name: the graph's file stem (a file name).
    spec: the declared I/O; the module's outputs must match it.
    identity: everything the graph depends on besides the spec (weights digest, variant, precision,
        rewrites...): part of the cache key, so it must change whenever the graph would.
    module: builds the torch module to export (called only on a cache miss).
    example_inputs: builds the inputs to trace with (default: seeded random floats, zero integers).
    verify: ``verify(path, module)`` runs the exported graph against the module and raises `ExportError`
        outside the recipe's acceptance levels (the graph is then not cached); returns a short summary.
    external_data: None = automatic (over `EXTERNAL_DATA_BYTES` of initializers); True/False forces it.
    check_outputs: run the module once before exporting and compare its outputs with the spec (a clear error
        before a long export, for modules declared elsewhere; the recipes' own modules skip this forward).
    """

    family: str
    name: str
    spec: GraphSpec
    identity: str
    module: Callable[[], Any]
    example_inputs: Callable[[], Sequence[Any]] | None = None
    verify: Callable[[Path, Any], str] | None = None
    external_data: bool | None = None
    opset: int = OPSET
    check_outputs: bool = False

    @property
    def key(self) -> str:
        return graph_key(self.identity, self.spec, self.opset)


def graph_key(identity: str, spec: GraphSpec, opset: int = OPSET) -> str:
    """The cache key of a graph (module docstring; the family is the folder above it): 16 hex digits."""
    text = "|".join([EXPORTER_VERSION, str(opset), identity, repr(spec)])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def graph_path(recipe: Recipe, out_dir: str | os.PathLike | None = None) -> Path:
    """Where `recipe`'s graph is (or will be): in the cache, or in `out_dir`."""
    folder = Path(out_dir) if out_dir is not None else paths.subdir("onnx", recipe.family, recipe.key)
    return folder / f"{recipe.name}.onnx"


def export_graph(recipe: Recipe, *, out_dir: str | os.PathLike | None = None, force: bool = False,
                 verify: bool = True, progress: bool = True) -> Path:
    """The ``.onnx`` of `recipe`, exported (and verified) on first use, then found in the cache.

    The graph is exported into a private folder next to its place, verified there (`Recipe.verify`), and
    only then moved into place (external data first, the ``.onnx`` last): an export that fails, or is
    interrupted, leaves nothing a later call could take for a complete graph.
    """
    _check_spec(recipe.spec)
    check_name(recipe.name)
    _check_opset(recipe.opset)
    if recipe.external_data not in (None, True, False):
        raise ValueError(f"external_data: expected None, True or False, got {recipe.external_data!r}")
    key = recipe.key
    path = graph_path(recipe, out_dir)
    if not force and is_complete(path):
        log.debug("%s: cached graph %s", recipe.name, path)
        return path
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"exporting {recipe.name} needs torch (ezvtb[export] or ezvtb[diffusion])") from e
    from tqdm import tqdm

    steps = 4 if verify and recipe.verify else 3
    with tqdm(total=steps, desc=f"export {recipe.name}", unit="step", leave=False, disable=not progress) as bar:
        module = recipe.module()
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        args = _example_inputs(recipe.spec, recipe.example_inputs() if recipe.example_inputs else None)
        if recipe.check_outputs:
            _check_outputs(module, args, recipe.spec)
        bar.update()
        path.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.", dir=path.parent))
        try:
            staged = stage / path.name
            _export_file(module, args, recipe.spec, recipe.opset, recipe.name, key, recipe.external_data, staged)
            bar.update(2)
            summary = ""
            if verify and recipe.verify:
                summary = recipe.verify(staged, module)
                bar.update()
            del module
            if not (stage / path.name).with_suffix(".external").exists():  # inline now: no stale marker
                path.with_suffix(".external").unlink(missing_ok=True)
            for f in sorted(stage.iterdir(), key=lambda p: p.suffix == ".onnx"):  # the .onnx last
                os.replace(f, path.parent / f.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    log.info("exported %s%s -> %s", recipe.name, f" ({summary})" if summary else "", path)
    return path


def export_bytes(module: Any, spec: GraphSpec, example_inputs: Sequence[Any] | None = None,
                 opset: int = OPSET) -> bytes:
    """`module` exported the way `export_graph` exports it, as ``.onnx`` bytes with inline weights (nothing is
    cached or verified; for comparisons and benchmarks)."""
    args = _example_inputs(_check_spec(spec), example_inputs)
    with tempfile.TemporaryDirectory(prefix=".ezvtb-export.") as tmp:
        out = Path(tmp) / "graph.onnx"
        _export_file(module, args, spec, _check_opset(opset), spec.name, "inline", False, out)
        return out.read_bytes()


def _export_file(module: Any, args: tuple, spec: GraphSpec, opset: int, name: str, key: str,
                 external_data: bool | None, path: Path) -> None:
    """Export `module` into `path` (and its external-data file next to it), through a scratch folder."""
    raw_dir = Path(tempfile.mkdtemp(prefix=f".{name}.raw.", dir=path.parent))
    try:
        raw = raw_dir / "graph.onnx"
        weights: dict[str, Any] = {}
        _run_exporter(module, args, raw, spec, opset, name, weights)
        if weights:
            finalise_captured(raw, path, spec, key, name, external_data, weights)
        else:
            finalise(raw, path, spec, key, name, external_data)
        weights.clear()
    finally:
        shutil.rmtree(raw_dir, ignore_errors=True)


# -- any module ------------------------------------------------------------------------------------
def weights_digest(module: Any) -> str:
    """blake2b hex digest of every parameter and buffer of `module` (names, dtypes, shapes, bytes).

    Hashes each tensor's memory in place (no copy of contiguous CPU tensors).
    """
    import torch

    h = hashlib.blake2b(b"ezvtb-module-weights-v1\n", digest_size=16)
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        if t.numel() == 0:
            continue
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        elif t.dtype == torch.bool:
            t = t.view(torch.uint8)
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def export_key(module: Any, spec: GraphSpec, precision: str = "fp32", opset: int = OPSET,
               digest: str | None = None, rewrites: Sequence[str] = ()) -> str:
    """The cache key `export_module` uses for (module weights and structure, spec, precision, the rewrites that
    apply to the module, opset)."""
    from ezvtb.export.network_rewrites import applicable

    return graph_key(_module_identity(module, precision, digest, applicable(module, rewrites)), spec, opset)


def _module_identity(module: Any, precision: str, digest: str | None, rewrites: tuple[str, ...]) -> str:
    digest = weights_digest(module) if digest is None else digest
    structure = hashlib.blake2b(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}".encode(),
                                digest_size=8).hexdigest()
    return f"{digest}|{structure}|{precision}" + (f"|rewrites={','.join(rewrites)}" if rewrites else "")


def export_module(module: Any, spec: GraphSpec, *, name: str, precision: str = "fp32",
                  out_dir: str | os.PathLike | None = None, external_data: bool | None = None,
                  opset: int = OPSET, progress: bool = True, example_inputs: Sequence[Any] | None = None,
                  digest: str | None = None, rewrites: Sequence[str] = ()) -> Path:
    """Export `module` to ONNX with the static shapes/dtypes of `spec` and return the .onnx path.

    module: called as ``module(*inputs)`` with tensors in ``spec.inputs`` order (dtypes from the spec);
        returns one tensor or a tuple in ``spec.outputs`` order. It is put in eval mode for the export
        (and restored); turn gradient checkpointing off and use SDPA attention (xformers does not export).
    name: the graph's cache name (a file name); it should identify the module's code and configuration.
    Cached under ``paths.subdir("onnx", name, key)`` (see `export_key`); a second call with the same
        weights/spec returns the cached path without running the exporter.
    out_dir: write into this folder instead of the cache (the key still names the external-data file).
    external_data: None = automatic (over `EXTERNAL_DATA_BYTES` of initializers); True forces it.
    precision: "fp16" runs the module's floating tensors in half inside the graph (a half copy of the
        module is made for the export); inputs and outputs keep the spec's dtypes (cast in the graph).
    example_inputs: values to trace with (default: seeded random floats, zero integers, in spec shapes);
        give real values when the module's control flow depends on them.
    digest: a precomputed `weights_digest(module)` (saves hashing the weights again).
    rewrites: names from `ezvtb.export.network_rewrites.REWRITES` applied to the module for the export
        (part of the cache key; `network_rewrites.rewrites_for(backend)` says which a backend gets).
    Raises ValueError for bad arguments or a module whose outputs do not match the spec, and
    `ExportError` when the exporter fails.
    """
    spec = _check_spec(spec)
    name = check_name(name)
    precision = check_precision(precision)
    opset = _check_opset(opset)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("export_module needs torch: install ezvtb[diffusion]") from e
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if example_inputs is not None:
        _example_inputs(spec, example_inputs)  # a bad one is refused before the cache is looked at
    from ezvtb.export.network_rewrites import applicable, rewritten

    rewrites = applicable(module, rewrites)  # validated; only those that change this module's graph
    recipe = Recipe(family=name, name=name, spec=spec, identity=_module_identity(module, precision, digest, rewrites),
                    module=lambda: _SpecModule(module, spec, precision),
                    example_inputs=(lambda: example_inputs) if example_inputs is not None else None,
                    external_data=external_data, opset=opset, check_outputs=True)
    was_training = module.training
    module.eval()
    try:
        with rewritten(module, rewrites):  # in place, parameters shared; undone on exit
            return export_graph(recipe, out_dir=out_dir, progress=progress)
    finally:
        module.train(was_training)


# -- validation ----------------------------------------------------------------------------------------
def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name: expected 1-100 characters of letters, digits, '_', '.', '-' (a file name), "
                         f"got {name!r}")
    return name


def _check_spec(spec: Any) -> GraphSpec:
    if not isinstance(spec, GraphSpec):
        raise ValueError(f"spec: expected an ezvtb.engines.base.GraphSpec, got {type(spec).__name__}")
    if not spec.inputs or not spec.outputs:
        raise ValueError(f"spec {spec.name!r}: needs at least one input and one output")
    names = spec.input_names + spec.output_names
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"spec {spec.name!r}: tensor names must be unique, repeated: {dup}")
    for t in spec.inputs + spec.outputs:
        if t.dtype not in _TORCH_DTYPES:
            raise ValueError(f"spec {spec.name!r} tensor {t.name!r}: dtype {t.dtype!r} is not one of "
                             f"{sorted(_TORCH_DTYPES)}")
        if any((not isinstance(d, int)) or d < 0 for d in t.shape):
            raise ValueError(f"spec {spec.name!r} tensor {t.name!r}: shape must be static non-negative ints, "
                             f"got {t.shape}")
    return spec


def _check_opset(opset: Any) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset: expected an int in [{MIN_OPSET}, {MAX_OPSET}], got {opset!r}")
    return opset


# -- export ----------------------------------------------------------------------------------------
def _example_inputs(spec: GraphSpec, example_inputs: Sequence[Any] | None) -> tuple:
    import torch

    if example_inputs is not None:
        if len(example_inputs) != len(spec.inputs):
            raise ValueError(f"example_inputs: expected {len(spec.inputs)} tensors ({list(spec.input_names)}), "
                             f"got {len(example_inputs)}")
        out = []
        for t, v in zip(spec.inputs, example_inputs):
            v = torch.as_tensor(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"example_inputs[{t.name!r}]: expected shape {list(t.shape)}, got {list(v.shape)}")
            out.append(v.detach().to("cpu", getattr(torch, t.dtype)).contiguous())
        return tuple(out)
    g = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        dt = getattr(torch, t.dtype)
        if dt.is_floating_point:
            out.append(torch.randn(t.shape, generator=g, dtype=torch.float32).to(dt))
        else:
            out.append(torch.zeros(t.shape, dtype=dt))
    return tuple(out)


def _SpecModule(module: Any, spec: GraphSpec, precision: str):  # noqa: N802 - builds a torch module
    """`module` with spec-typed I/O: float inputs cast to the compute dtype, outputs to the spec dtypes."""
    import copy

    import torch

    inner = module
    compute = None
    if precision == "fp16":
        # deepcopy with every floating parameter/buffer pre-mapped to its half version: the copy
        # never holds a second fp32 set (peak = the module + half of it)
        memo: dict[int, Any] = {}
        for p in module.parameters():
            if p.is_floating_point():
                memo[id(p)] = torch.nn.Parameter(p.detach().to(torch.float16), requires_grad=False)
        for b in module.buffers():
            if b.is_floating_point():
                memo[id(b)] = b.detach().to(torch.float16)
        inner = copy.deepcopy(module, memo).to(torch.float16).eval()
        compute = torch.float16
    out_dtypes = [getattr(torch, t.dtype) for t in spec.outputs]

    class SpecModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            if compute is not None:
                xs = tuple(x.to(compute) if x.is_floating_point() else x for x in xs)
            ys = self.inner(*xs)
            if isinstance(ys, torch.Tensor):
                ys = (ys,)
            if not isinstance(ys, (tuple, list)) or not all(isinstance(y, torch.Tensor) for y in ys):
                raise ValueError(f"module: must return a tensor or a tuple of tensors for spec {spec.name!r}, "
                                 f"got {type(ys).__name__}")
            if len(ys) != len(out_dtypes):
                raise ValueError(f"module: returned {len(ys)} outputs, spec {spec.name!r} declares "
                                 f"{len(out_dtypes)} ({list(spec.output_names)})")
            return tuple(y.to(d) for y, d in zip(ys, out_dtypes))

    return SpecModule().eval()


def _check_outputs(module: Any, args: tuple, spec: GraphSpec) -> None:
    """Run once in torch and compare the outputs with the spec (a clear error before a long export)."""
    import torch

    with torch.no_grad():
        ys = module(*args)
    ys = (ys,) if isinstance(ys, torch.Tensor) else tuple(ys)
    if len(ys) != len(spec.outputs):
        raise ValueError(f"module: returned {len(ys)} outputs, spec {spec.name!r} declares {len(spec.outputs)} "
                         f"({list(spec.output_names)})")
    for t, y in zip(spec.outputs, ys):
        if tuple(y.shape) != t.shape or str(y.dtype).removeprefix("torch.") != t.dtype:
            raise ValueError(f"module: output {t.name!r} of spec {spec.name!r} is {str(y.dtype)} {list(y.shape)}, "
                             f"the spec declares {t.dtype} {list(t.shape)}")


# The two exporter hooks below are process-wide attributes: one export at a time.
_EXPORT_LOCK = threading.Lock()


@contextlib.contextmanager
def _no_function_reparse() -> Iterator[None]:
    """Skip the TorchScript exporter's search for custom onnxscript functions.

    After serialising, the exporter parses its whole output again to look for onnxscript functions
    of custom opsets (we register none): a second copy of every weight during the export. The pass
    is replaced by the identity for the duration of the export.
    """
    try:
        from torch.onnx._internal.torchscript_exporter import onnx_proto_utils as utils
    except ImportError:  # pragma: no cover - other torch layouts: keep the exporter as it is
        yield
        return
    original = getattr(utils, "_add_onnxscript_fn", None)
    if original is None:  # pragma: no cover
        yield
        return
    utils._add_onnxscript_fn = lambda model_bytes, custom_opsets: model_bytes
    try:
        yield
    finally:
        utils._add_onnxscript_fn = original


@contextlib.contextmanager
def _capture_initializers(store: dict[str, Any]) -> Iterator[None]:
    """Keep the weights out of the TorchScript exporter's in-memory ModelProto.

    The exporter builds the whole ModelProto with a copy of every weight, serialises it (a second
    copy) and hands Python the bytes (a third): 3x the weights on top of the module. Its last pass
    over the initializers (``_jit_pass_onnx_deduplicate_initializers``, which returns the final
    name -> tensor map after constant folding) is wrapped: the map goes to `store` and the
    exporter receives an empty one, so the weights stay graph inputs of a small graph and
    `_finalise` writes them from the tensors themselves (no copy). If the hook point is missing
    (another torch), the exporter runs as it is and `_finalise` takes its weights from the file.
    """
    from torch import _C

    original = getattr(_C, "_jit_pass_onnx_deduplicate_initializers", None)
    if original is None:  # pragma: no cover - other torch versions
        yield
        return

    def capture(graph: Any, params_dict: Any, is_train: Any) -> Any:
        store.update(original(graph, params_dict, is_train))
        return {}

    _C._jit_pass_onnx_deduplicate_initializers = capture
    try:
        yield
    finally:
        _C._jit_pass_onnx_deduplicate_initializers = original


def _run_exporter(module: Any, args: tuple, raw: Path, spec: GraphSpec, opset: int, name: str,
                  weights: dict[str, Any]) -> None:
    import torch

    with _EXPORT_LOCK, quiet_export(name), torch.inference_mode(False), torch.no_grad(), _no_function_reparse(), \
            _capture_initializers(weights):
        try:
            torch.onnx.export(module, args, str(raw), input_names=list(spec.input_names),
                              output_names=list(spec.output_names), opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except ValueError:
            raise
        except Exception as e:  # the exporter's errors are of many types
            raise ExportError(f"{name}: torch.onnx.export failed: {type(e).__name__}: {e}") from e


__all__ = ["EXPORTER_VERSION", "ExportError", "OPSET", "Recipe", "check_name", "export_bytes", "export_graph",
           "export_key",
           "export_module", "external_data_name", "graph_key", "graph_path", "weights_digest"]
