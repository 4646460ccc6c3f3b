"""Writing exported ONNX files: external data, static output shapes, completeness.

The exporter (`ezvtb.export.exporter`) hands over the TorchScript exporter's file, or a weightless graph plus
the captured weights; these functions write the final ``.onnx`` (and, for graphs over `EXTERNAL_DATA_BYTES`,
one aligned external-data file next to it) without holding a second copy of the weights, working at the
protobuf wire level where the graph is large. Every file is written atomically; the ``.onnx`` is written
last, so its presence (with its external-data file, `is_complete`) means the graph is complete.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ezvtb.atomic import atomic_write
from ezvtb.engines.base import GraphSpec
from ezvtb.export.errors import ExportError

log = logging.getLogger("ezvtb.export")

# Graphs whose initializers exceed this are saved with external data (protobuf's hard limit is 2 GiB).
EXTERNAL_DATA_BYTES = int(1.8e9)
# Offsets of tensors in the external-data file are aligned to this (page size; lets runtimes map them).
EXTERNAL_DATA_ALIGN = 4096


def external_data_name(name: str, key: str) -> str:
    """File name of the external-data file of (name, key), next to the ``.onnx``."""
    return f"{name}.{key}.weights"


def is_complete(path: Path) -> bool:
    """True when `path` exists and every external-data file it references exists too."""
    if not path.is_file():
        return False
    marker = path.with_suffix(".external")
    if marker.is_file():  # written before the .onnx when the graph has external data
        return (path.parent / marker.read_text().strip()).is_file()
    return True


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


def finalise_captured(raw: Path, path: Path, spec: GraphSpec, key: str, name: str, external_data: bool | None,
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
        _write_with_external_data(model, path, data_name, name, size)
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


def finalise(raw: Path, path: Path, spec: GraphSpec, key: str, name: str, external_data: bool | None) -> None:
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
            _write_with_external_data(model, path, data_name, name, size)
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


def _write_with_external_data(model: Any, path: Path, data_name: str, name: str, size: int) -> None:
    """The marker naming the (already written) external-data file, then the graph itself, last."""
    with atomic_write(path.with_suffix(".external"), "w") as m:
        m.write(data_name + "\n")
    with atomic_write(path) as out:
        out.write(model.SerializeToString())
    log.debug("%s: %.1f MB of weights in %s", name, size / 1e6, data_name)


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


__all__ = ["EXTERNAL_DATA_ALIGN", "EXTERNAL_DATA_BYTES", "external_data_name", "finalise", "finalise_captured",
           "is_complete"]
