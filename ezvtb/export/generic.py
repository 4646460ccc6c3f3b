"""Export any torch network to ONNX with a declared `GraphSpec` (run by `ezvtb.engines.runner.GraphRunner`).

Used by the generative pipelines (UNet steps, VAE encoder/decoder, text/image encoders, small nets):
they run on the same session runtime as the realtime stages. This module imports torch only
inside functions that need it; the realtime core never imports it.

Cache layout (files written atomically; the ``.onnx`` is written last, so its presence means the
export is complete)::

    $EZVTB_HOME/onnx/<name>/<key>/<name>.onnx
    $EZVTB_HOME/onnx/<name>/<key>/<name>.<key>.weights      (only for graphs with external data)

``key`` = blake2b(weights digest | module structure | spec | precision | opset | exporter version |
torch version). The external-data file name carries the key, so two graphs that differ only in
their weights have different ``.onnx`` bytes too (native TensorRT keys its engine cache by the
``.onnx`` file's sha256).

Export uses the TorchScript exporter (``dynamo=False``, static shapes, constant folding): on the
diffusion UNets it is several times faster than the dynamo exporter and gives the same graphs to
ORT (facts sheet §3). Graphs over `EXTERNAL_DATA_BYTES` are saved with ONNX external data in one
file next to the ``.onnx``; backends open them from that folder (ORT and TensorRT's parser both
resolve the location relative to the ``.onnx``).
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
from pathlib import Path
from typing import Any

import numpy as np

from ezvtb import paths
from ezvtb.atomic import atomic_write
from ezvtb.engines.base import GraphSpec
from ezvtb.engines.policy import check_precision

log = logging.getLogger("ezvtb.export.generic")

GENERIC_EXPORTER_VERSION = "generic-1"
# Graphs whose initializers exceed this are saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_BYTES = int(1.8e9)
# Offsets of tensors in the external-data file are aligned to this (page size; lets runtimes map them).
EXTERNAL_DATA_ALIGN = 4096
MIN_OPSET, MAX_OPSET = 14, 20  # SDPA / LayerNormalization need >= 14 (17 for LayerNormalization op)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TORCH_DTYPES = {
    "float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64",
    "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
}


class ExportError(RuntimeError):
    """The exporter failed or produced a graph that does not match the declared spec."""


# -- keys ------------------------------------------------------------------------------------------
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


def export_key(module: Any, spec: GraphSpec, precision: str = "fp32", opset: int = 17,
               digest: str | None = None) -> str:
    """The cache key of (module weights and structure, spec, precision, opset, exporter and torch versions)."""
    import torch

    digest = weights_digest(module) if digest is None else digest
    structure = hashlib.blake2b(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}".encode(),
                                digest_size=8).hexdigest()
    text = "|".join([digest, structure, repr(spec), precision, str(opset), GENERIC_EXPORTER_VERSION,
                     torch.__version__])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# -- validation ------------------------------------------------------------------------------------
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
def graph_path(name: str, key: str, out_dir: str | os.PathLike | None = None) -> Path:
    """Where `export_module` keeps the ``.onnx`` of (name, key)."""
    folder = Path(out_dir) if out_dir is not None else paths.subdir("onnx", name, key)
    return folder / f"{name}.onnx"


def external_data_name(name: str, key: str) -> str:
    """File name of the external-data file of (name, key), next to the ``.onnx``."""
    return f"{name}.{key}.weights"


def _is_complete(path: Path) -> bool:
    """True when `path` exists and every external-data file it references exists too."""
    if not path.is_file():
        return False
    marker = path.with_suffix(".external")
    if marker.is_file():  # written before the .onnx when the graph has external data
        return (path.parent / marker.read_text().strip()).is_file()
    return True


def export_module(module: Any, spec: GraphSpec, *, name: str, precision: str = "fp32",
                  out_dir: str | os.PathLike | None = None, external_data: bool | None = None,
                  opset: int = 17, progress: bool = True, example_inputs: Sequence[Any] | None = None,
                  digest: str | None = None) -> Path:
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
    Raises ValueError for bad arguments or a module whose outputs do not match the spec, and
    `ExportError` when the exporter fails.
    """
    spec = _check_spec(spec)
    name = check_name(name)
    precision = check_precision(precision)
    opset = _check_opset(opset)
    if external_data not in (None, True, False):
        raise ValueError(f"external_data: expected None, True or False, got {external_data!r}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("export_module needs torch: install ezvtb[diffusion]") from e
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")

    args = _example_inputs(spec, example_inputs) if example_inputs is not None else None
    key = export_key(module, spec, precision, opset, digest)
    path = graph_path(name, key, out_dir)
    if _is_complete(path):
        log.debug("%s: cached graph %s", name, path)
        return path

    from tqdm import tqdm

    if args is None:
        args = _example_inputs(spec, None)
    was_training = module.training
    module.eval()
    with tqdm(total=3, desc=f"export {name} {precision}", unit="step", leave=False, disable=not progress) as bar:
        wrapper = _SpecModule(module, spec, precision)
        try:
            _check_outputs(wrapper, args, spec)
            bar.update()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=path.parent))
            try:
                raw = tmp / "graph.onnx"
                weights: dict[str, Any] = {}
                _run_exporter(wrapper, args, raw, spec, opset, name, weights)
                bar.update()
                del wrapper  # `weights` keeps what the graph needs (the fp16 copy, folded constants)
                if weights:
                    _finalise_captured(raw, path, spec, key, name, external_data, weights)
                else:
                    _finalise(raw, path, spec, key, name, external_data)
                weights.clear()
                bar.update()
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            module.train(was_training)
    log.info("exported %s %s -> %s", name, precision, path)
    return path


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


def _check_outputs(wrapper: Any, args: tuple, spec: GraphSpec) -> None:
    """Run once in torch and compare output shapes with the spec (clear error before a long export)."""
    import torch

    with torch.no_grad():
        ys = wrapper(*args)
    for t, y in zip(spec.outputs, ys):
        if tuple(y.shape) != t.shape:
            raise ValueError(f"module: output {t.name!r} of spec {spec.name!r} has shape {list(y.shape)}, "
                             f"the spec declares {list(t.shape)}")


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


def _run_exporter(wrapper: Any, args: tuple, raw: Path, spec: GraphSpec, opset: int, name: str,
                  weights: dict[str, Any]) -> None:
    import warnings

    import torch

    with _EXPORT_LOCK, warnings.catch_warnings(record=True) as caught, torch.no_grad(), _no_function_reparse(), \
            _capture_initializers(weights):
        warnings.simplefilter("always")
        try:
            torch.onnx.export(wrapper, args, str(raw), input_names=list(spec.input_names),
                              output_names=list(spec.output_names), opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except ValueError:
            raise
        except Exception as e:  # the exporter's errors are of many types
            raise ExportError(f"{name}: torch.onnx.export failed: {type(e).__name__}: {e}") from e
    seen = set()
    for w in caught:
        msg = str(w.message).splitlines()[0][:200]
        if msg not in seen:
            seen.add(msg)
            logging.getLogger("ezvtb.export.warnings").debug("%s: %s: %s", name, w.category.__name__, msg)


_ONNX_DTYPES = {"float32": 1, "uint8": 2, "int8": 3, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
                "float16": 10, "float64": 11, "bfloat16": 16}


def _tensor_bytes(t: Any) -> tuple[int, memoryview]:
    """(ONNX data type, the tensor's little-endian bytes without a copy when it is a contiguous CPU tensor)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in _ONNX_DTYPES:
        raise ExportError(f"initializer of dtype {t.dtype} is not supported")
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return _ONNX_DTYPES[dtype], memoryview(t.numpy()).cast("B")


def _finalise_captured(raw: Path, path: Path, spec: GraphSpec, key: str, name: str, external_data: bool | None,
                       weights: dict[str, Any]) -> None:
    """Write the graph (exported without its weights, which are graph inputs) with the captured
    tensors as initializers, streamed from the tensors' memory: one external file, or inline."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(raw), load_external_data=False)  # small: no weights inside
    _set_static_io(model, spec, name)
    order = [i.name for i in model.graph.input if i.name in weights]
    kept = [i for i in model.graph.input if i.name not in weights]
    if [i.name for i in kept] != list(spec.input_names):
        raise ExportError(f"{name}: exported graph inputs {[i.name for i in kept]} do not match the spec "
                          f"{list(spec.input_names)}")
    del model.graph.input[:]
    model.graph.input.extend(kept)
    size = sum(_tensor_bytes(weights[n])[1].nbytes for n in order)
    if external_data is None:
        external_data = size > EXTERNAL_DATA_BYTES
    marker = path.with_suffix(".external")
    headers = []
    for n in order:
        t = weights[n]
        h = TensorProto(name=n, dims=list(t.shape), data_type=_tensor_bytes(t)[0])
        headers.append(h)
    if external_data:
        data_name = external_data_name(name, key)
        offset = 0
        with atomic_write(path.parent / data_name) as data:
            for n, h in zip(order, headers):
                blob = _tensor_bytes(weights[n])[1]
                if blob.nbytes < 1024:
                    h.raw_data = blob.tobytes()
                else:
                    pad = (-offset) % EXTERNAL_DATA_ALIGN
                    if pad:
                        data.write(b"\0" * pad)
                        offset += pad
                    data.write(blob)
                    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(blob.nbytes))):
                        e = h.external_data.add()
                        e.key, e.value = k, v
                    h.data_location = TensorProto.EXTERNAL
                    offset += blob.nbytes
        model.graph.initializer.extend(headers)
        with atomic_write(marker, "w") as m:
            m.write(data_name + "\n")
        with atomic_write(path) as out:
            out.write(model.SerializeToString())
        log.debug("%s: %.1f MB of weights in %s", name, size / 1e6, data_name)
        return
    if size > 2**31 - 2**24:
        raise ValueError(f"external_data=False: graph {name!r} holds {size / 2**30:.2f} GiB of weights, over "
                         "protobuf's 2 GiB limit; use external_data=None or True")
    if marker.exists():
        marker.unlink()
    # inline: stream the ModelProto; each initializer = its header fields + raw_data (field 9) from memory
    graph = model.graph
    model.ClearField("graph")
    graph_bytes = graph.SerializeToString()
    raw_key = _encode_varint(9 << 3 | 2)
    parts = []
    for n, h in zip(order, headers):
        nbytes = _tensor_bytes(weights[n])[1].nbytes
        head = h.SerializeToString() + raw_key + _encode_varint(nbytes)
        parts.append((n, head, len(head) + nbytes))
    graph_len = len(graph_bytes) + sum(len(_encode_varint(_GRAPH_INITIALIZER << 3 | 2)) + len(_encode_varint(m)) + m
                                       for _, _, m in parts)
    with atomic_write(path) as out:
        out.write(model.SerializeToString())
        out.write(_encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(graph_len))
        out.write(graph_bytes)
        for n, head, m in parts:
            out.write(_encode_varint(_GRAPH_INITIALIZER << 3 | 2) + _encode_varint(m) + head)
            out.write(_tensor_bytes(weights[n])[1])
    log.debug("%s: %.1f MB graph with inline weights (streamed)", name, size / 1e6)


def _finalise(raw: Path, path: Path, spec: GraphSpec, key: str, name: str, external_data: bool | None) -> None:
    """Turn the exporter's file into the cached graph without holding a second copy of the weights.

    The exporter's file is read through a memory map and rewritten at the protobuf wire level
    (`_rewrite_model`): only one initializer at a time is decoded. External data: every initializer
    of 1 KiB or more goes to one aligned file; the remaining graph is small and gets the spec's
    static output shapes. Inline: the file is moved into place as it is when its outputs already
    carry the spec's shapes (the usual case); otherwise it is parsed, fixed and written again.
    """
    import mmap

    import onnx

    extra = [p for p in raw.parent.iterdir() if p != raw]  # the exporter's own external files (> 2 GiB)
    size = raw.stat().st_size + sum(p.stat().st_size for p in extra)
    if external_data is None:
        external_data = bool(extra) or size > EXTERNAL_DATA_BYTES
    if not external_data and extra:
        raise ValueError(f"external_data=False: graph {name!r} holds {size / 2**30:.2f} GiB of weights, over "
                         "protobuf's 2 GiB limit; use external_data=None or True")
    marker = path.with_suffix(".external")
    with open(raw, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if external_data:
            data_name = external_data_name(name, key)
            with atomic_write(path.parent / data_name) as data:
                graph_bytes = _rewrite_model(mm, data, data_name, raw.parent)
            model = onnx.load_model_from_string(graph_bytes)
            del graph_bytes
            _set_static_io(model, spec, name)
            with atomic_write(marker, "w") as m:
                m.write(data_name + "\n")
            with atomic_write(path) as out:
                out.write(model.SerializeToString())
            log.debug("%s: %.1f MB of weights in %s", name, size / 1e6, data_name)
            return
        outputs = _graph_outputs(mm)
    if marker.exists():
        marker.unlink()
    if _outputs_match(outputs, spec):
        with open(raw, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(raw, path)
    else:  # symbolic or missing output dims: parse, fix, rewrite (holds the weights once more)
        log.debug("%s: fixing the exported output shapes (full parse)", name)
        model = onnx.load(str(raw), load_external_data=False)
        _set_static_io(model, spec, name)
        data = model.SerializeToString()
        del model
        with atomic_write(path) as out:
            out.write(data)
    log.debug("%s: %.1f MB graph with inline weights", name, size / 1e6)


# -- protobuf wire format (ONNX ModelProto field 7 = graph; GraphProto 5 = initializer, 12 = output)
_MODEL_GRAPH, _GRAPH_INITIALIZER, _GRAPH_OUTPUT = 7, 5, 12


def _varint(buf: Any, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: Any, start: int, end: int):
    """(field number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        key, p = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, q = _varint(buf, p)
        elif wire == 1:
            q = p + 8
        elif wire == 2:
            n, p = _varint(buf, p)
            q = p + n
        elif wire == 5:
            q = p + 4
        else:
            raise ExportError(f"unexpected protobuf wire type {wire} in the exported graph")
        yield field, wire, pos, p, q
        pos = q


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | 2) + _encode_varint(len(payload)) + payload


def _graph_span(mm: Any) -> tuple[int, int]:
    for field, wire, _, vs, ve in _fields(mm, 0, len(mm)):
        if field == _MODEL_GRAPH and wire == 2:
            return vs, ve
    raise ExportError("the exported ONNX file has no graph")


def _graph_outputs(mm: Any) -> list[Any]:
    from onnx import ValueInfoProto

    vs, ve = _graph_span(mm)
    return [ValueInfoProto.FromString(mm[a:b]) for f, w, _, a, b in _fields(mm, vs, ve)
            if f == _GRAPH_OUTPUT and w == 2]


def _outputs_match(outputs: list[Any], spec: GraphSpec) -> bool:
    got = {}
    for o in outputs:
        dims = o.type.tensor_type.shape.dim
        got[o.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return got == {t.name: t.shape for t in spec.outputs}


def _rewrite_model(mm: Any, data: Any, data_name: str, raw_dir: Path) -> bytes:
    """The model with every initializer of >= 1 KiB moved to `data` (aligned), one tensor in memory at a time."""
    from onnx import TensorProto
    from onnx.external_data_helper import uses_external_data

    offset = 0
    gs, ge = _graph_span(mm)
    graph = bytearray()
    for field, wire, fs, vs, ve in _fields(mm, gs, ge):
        if field != _GRAPH_INITIALIZER or wire != 2:
            graph += mm[fs:ve]
            continue
        t = TensorProto.FromString(mm[vs:ve])
        if uses_external_data(t):
            blob = (raw_dir / _external_location(t)).read_bytes()
            t.ClearField("external_data")
            t.data_location = TensorProto.DEFAULT
        elif t.HasField("raw_data"):
            blob = t.raw_data
        else:
            blob = b""  # typed-field constants (small, exporter-made) stay inline
        if len(blob) >= 1024:
            pad = (-offset) % EXTERNAL_DATA_ALIGN
            if pad:
                data.write(b"\0" * pad)
                offset += pad
            data.write(blob)
            t.ClearField("raw_data")
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(blob)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            t.data_location = TensorProto.EXTERNAL
            offset += len(blob)
        elif blob and not t.HasField("raw_data"):
            t.raw_data = blob
        del blob
        graph += _length_delimited(_GRAPH_INITIALIZER, t.SerializeToString())
    out = bytearray()
    for field, wire, fs, vs, ve in _fields(mm, 0, len(mm)):
        out += _length_delimited(_MODEL_GRAPH, bytes(graph)) if field == _MODEL_GRAPH and wire == 2 else mm[fs:ve]
    return bytes(out)


def _external_location(t: Any) -> str:
    for e in t.external_data:
        if e.key == "location":
            return e.value
    raise ExportError(f"initializer {t.name!r}: external data without a location")


def _set_static_io(model: Any, spec: GraphSpec, name: str) -> None:
    """Write the spec's static shapes into the graph's outputs (the exporter may leave them symbolic)."""
    outputs = {o.name: o for o in model.graph.output}
    for t in spec.outputs:
        o = outputs.get(t.name)
        if o is None:
            raise ExportError(f"{name}: exported graph has no output {t.name!r} (outputs: {list(outputs)})")
        dims = o.type.tensor_type.shape.dim
        if len(dims) != len(t.shape):
            raise ExportError(f"{name}: output {t.name!r} has rank {len(dims)}, the spec declares {list(t.shape)}")
        for d, v in zip(dims, t.shape):
            if d.HasField("dim_value") and d.dim_value != v:
                raise ExportError(f"{name}: output {t.name!r} has shape dim {d.dim_value}, the spec declares "
                                  f"{list(t.shape)}")
            d.Clear()
            d.dim_value = v


__all__ = ["EXTERNAL_DATA_BYTES", "ExportError", "GENERIC_EXPORTER_VERSION", "export_key",
           "export_module", "external_data_name", "graph_path", "weights_digest"]
