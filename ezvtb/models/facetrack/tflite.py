"""Reader for TensorFlow Lite flatbuffers (``.tflite``) -> numpy arrays and an op list (torch-free).

A ``.tflite`` file is one FlatBuffers message of the ``tflite`` schema (tensorflow/lite/schema/
schema.fbs). FlatBuffers layout, as read here: the file starts with a little-endian u32 offset to the
root table; a table starts with an i32 ``soffset``, its vtable is at ``table - soffset`` and holds
u16 ``vtable_bytes``, u16 ``table_bytes`` and one u16 offset per field (0 = absent, default value).
Strings, vectors and sub-tables are stored as u32 offsets relative to where the offset is written;
vectors and strings start with a u32 length. A union takes two field slots (type byte, table).

Fields read (slot = field index):

* Model: 1 operator_codes, 2 subgraphs, 4 buffers.
* OperatorCode: 0 deprecated_builtin_code (i8), 1 custom_code, 3 builtin_code (i32; the larger of
  the two codes is the operator, as TFLite does).
* SubGraph: 0 tensors, 1 inputs, 2 outputs, 3 operators, 4 name.
* Tensor: 0 shape, 1 type, 2 buffer, 3 name, 4 quantization (only to reject quantized tensors).
* Buffer: 0 data, 1 offset, 2 size (data stored after the flatbuffer, for large models).
* Operator: 0 opcode_index, 1 inputs, 2 outputs, 4 builtin_options (table), 5 custom_options.
* Custom operators: ``custom_code``; their options (FlexBuffers maps) are decoded by
  `parse_flexbuffer_map`.
* Options: Conv2D (padding, stride_w, stride_h, activation, dilation_w, dilation_h),
  DepthwiseConv2D (padding, stride_w, stride_h, depth_multiplier, activation, dilation_w,
  dilation_h), Pool2D (padding, stride_w, stride_h, filter_w, filter_h, activation), Add/Mul/Sub
  (activation), Concatenation (axis, activation), Reshape (new_shape).

Constant tensors are returned as numpy arrays in their stored dtype (``float16`` weights stay
float16; the graph builder dequantizes them where the model's DEQUANTIZE ops do). Integer-quantized
tensors (with scales) are rejected: MediaPipe's face models are float32/float16.

Errors (`TfliteFormatError`, a ValueError) name the file and what was wrong.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# BuiltinOperator codes of the operators this reader gives names to (schema.fbs).
BUILTIN_OPS = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
    9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL", 19: "RELU", 21: "RELU6", 22: "RESHAPE",
    23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH", 32: "CUSTOM", 34: "PAD", 39: "TRANSPOSE", 40: "MEAN",
    41: "SUB", 42: "DIV", 43: "SQUEEZE", 45: "STRIDED_SLICE", 54: "PRELU", 60: "PADV2", 65: "SLICE",
    97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU", 117: "HARD_SWISH",
}
# TensorType -> numpy dtype.
TENSOR_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
                9: np.int8, 10: np.float64}
ACTIVATIONS = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}
PADDINGS = {0: "same", 1: "valid"}


class TfliteFormatError(ValueError):
    """A .tflite file is malformed or uses something this reader does not support."""


@dataclass
class TfliteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None  # constant tensors: the stored values (shape `shape`); None for activations


@dataclass
class TfliteOp:
    index: int
    type: str                     # BUILTIN_OPS name, or "CUSTOM:<name>"
    inputs: tuple[int, ...]       # tensor indices (-1 = optional input absent)
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TfliteGraph:
    """The first subgraph of a model: tensors, operators in execution order, graph inputs/outputs."""

    name: str
    tensors: list[TfliteTensor]
    ops: list[TfliteOp]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    path: str = ""

    def tensor(self, i: int) -> TfliteTensor:
        return self.tensors[i]

    def op_types(self) -> dict[str, int]:
        """Operator type -> count."""
        out: dict[str, int] = {}
        for op in self.ops:
            out[op.type] = out.get(op.type, 0) + 1
        return out


class _Buf:
    """Bounds-checked little-endian FlatBuffers access over a bytes object."""

    def __init__(self, data: bytes, what: str) -> None:
        self.b = data
        self.what = what

    def _need(self, pos: int, n: int) -> None:
        if pos < 0 or pos + n > len(self.b):
            raise TfliteFormatError(f"{self.what}: truncated or corrupt flatbuffer (read of {n} bytes at {pos}, "
                                    f"file has {len(self.b)})")

    def u8(self, p: int) -> int:
        self._need(p, 1)
        return self.b[p]

    def i8(self, p: int) -> int:
        self._need(p, 1)
        return struct.unpack_from("<b", self.b, p)[0]

    def u16(self, p: int) -> int:
        self._need(p, 2)
        return struct.unpack_from("<H", self.b, p)[0]

    def i32(self, p: int) -> int:
        self._need(p, 4)
        return struct.unpack_from("<i", self.b, p)[0]

    def u32(self, p: int) -> int:
        self._need(p, 4)
        return struct.unpack_from("<I", self.b, p)[0]

    def u64(self, p: int) -> int:
        self._need(p, 8)
        return struct.unpack_from("<Q", self.b, p)[0]

    # tables ----------------------------------------------------------------------------------
    def field(self, table: int, slot: int) -> int:
        """Absolute position of field `slot` of the table at `table`, or 0 when absent."""
        vt = table - self.i32(table)
        vt_len = self.u16(vt)
        if vt_len < 4 or vt_len % 2:
            raise TfliteFormatError(f"{self.what}: corrupt vtable at {vt}")
        o = 4 + 2 * slot
        if o >= vt_len:
            return 0
        off = self.u16(vt + o)
        return table + off if off else 0

    def scalar(self, table: int, slot: int, kind: str, default: int = 0) -> int:
        p = self.field(table, slot)
        if not p:
            return default
        return {"u8": self.u8, "i8": self.i8, "i32": self.i32, "u32": self.u32, "u64": self.u64}[kind](p)

    def ref(self, table: int, slot: int) -> int:
        """Target of an offset field (table, vector or string), or 0 when absent."""
        p = self.field(table, slot)
        return p + self.u32(p) if p else 0

    def vector(self, table: int, slot: int) -> tuple[int, int]:
        """(start of elements, length) of a vector field; (0, 0) when absent."""
        v = self.ref(table, slot)
        if not v:
            return 0, 0
        n = self.u32(v)
        return v + 4, n

    def tables(self, table: int, slot: int) -> list[int]:
        start, n = self.vector(table, slot)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(n)]

    def ints(self, table: int, slot: int) -> tuple[int, ...]:
        start, n = self.vector(table, slot)
        if not n:
            return ()
        self._need(start, 4 * n)
        return tuple(int(x) for x in np.frombuffer(self.b, "<i4", n, start))

    def bytes_(self, table: int, slot: int) -> memoryview:
        start, n = self.vector(table, slot)
        self._need(start, n)
        return memoryview(self.b)[start:start + n]

    def string(self, table: int, slot: int) -> str:
        return bytes(self.bytes_(table, slot)).decode("utf-8", "replace")


def _options(buf: _Buf, op_type: str, t: int) -> dict[str, Any]:
    """Decode the builtin options table `t` (0 = absent) of an operator of `op_type`."""
    s = buf.scalar
    act = lambda slot: ACTIVATIONS.get(s(t, slot, "i8"), "unsupported")  # noqa: E731
    pad = lambda: PADDINGS.get(s(t, 0, "i8"), "unsupported")  # noqa: E731
    if op_type == "CONV_2D":
        return {"padding": pad(), "stride": (s(t, 2, "i32"), s(t, 1, "i32")), "activation": act(3),
                "dilation": (s(t, 5, "i32", 1), s(t, 4, "i32", 1))}
    if op_type == "DEPTHWISE_CONV_2D":
        return {"padding": pad(), "stride": (s(t, 2, "i32"), s(t, 1, "i32")), "depth_multiplier": s(t, 3, "i32"),
                "activation": act(4), "dilation": (s(t, 6, "i32", 1), s(t, 5, "i32", 1))}
    if op_type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        return {"padding": pad(), "stride": (s(t, 2, "i32"), s(t, 1, "i32")),
                "kernel": (s(t, 4, "i32"), s(t, 3, "i32")), "activation": act(5)}
    if op_type in ("ADD", "MUL", "SUB", "DIV"):
        return {"activation": act(0)}
    if op_type == "CONCATENATION":
        return {"axis": s(t, 0, "i32"), "activation": act(1)}
    if op_type == "RESHAPE":
        return {"new_shape": buf.ints(t, 0) if t else None}
    return {}


# FlexBuffers value types (flatbuffers/flexbuffers.h) read by `parse_flexbuffer_map`.
_FBT_INT, _FBT_UINT, _FBT_FLOAT, _FBT_MAP = 1, 2, 3, 9
_FBT_VECTOR, _FBT_VECTOR_INT, _FBT_VECTOR_UINT, _FBT_VECTOR_FLOAT = 10, 11, 12, 13


def parse_flexbuffer_map(data: bytes, what: str = "custom options") -> dict[str, Any]:
    """A FlexBuffers map of numbers and number vectors (a custom operator's options) -> dict.

    Layout: the last byte is the root's byte width, the one before its packed type (type << 2 | log2 of
    the bit width); the root is an offset back to the map. A map of n entries at p has (offset to its keys
    vector, keys byte width, n) in the three slots before p, n values of the map's byte width from p,
    then n packed-type bytes; keys are offsets to NUL-terminated strings, in a vector with its length in
    the slot before it. Scalars are stored inline; vectors behind an offset, length in the slot before.
    """
    b = bytes(data)

    def fail(msg: str) -> TfliteFormatError:
        return TfliteFormatError(f"{what}: {msg}")

    def uint(p: int, w: int) -> int:
        if p < 0 or p + w > len(b) or w not in (1, 2, 4, 8):
            raise fail(f"read of {w} bytes at {p} outside {len(b)} bytes")
        return int.from_bytes(b[p:p + w], "little")

    def sint(p: int, w: int) -> int:
        v = uint(p, w)
        return v - (1 << (8 * w)) if v >> (8 * w - 1) else v

    def flt(p: int, w: int) -> float:
        if w not in (4, 8):
            raise fail(f"float of {w} bytes")
        return struct.unpack_from("<f" if w == 4 else "<d", b, p)[0]

    def value(p: int, parent_w: int, packed: int) -> Any:
        t, w = packed >> 2, 1 << (packed & 3)
        if t == _FBT_INT:
            return sint(p, parent_w)
        if t == _FBT_UINT:
            return uint(p, parent_w)
        if t == _FBT_FLOAT:
            return flt(p, parent_w)
        if t in (_FBT_VECTOR_INT, _FBT_VECTOR_UINT, _FBT_VECTOR_FLOAT, _FBT_VECTOR):
            q = p - uint(p, parent_w)
            n = uint(q - w, w)
            if t == _FBT_VECTOR:
                types = q + n * w
                return [value(q + i * w, w, uint(types + i, 1)) for i in range(n)]
            read = {_FBT_VECTOR_INT: sint, _FBT_VECTOR_UINT: uint, _FBT_VECTOR_FLOAT: flt}[t]
            return [read(q + i * w, w) for i in range(n)]
        raise fail(f"unsupported FlexBuffers value type {t}")

    if len(b) < 3:
        raise fail("too short for a FlexBuffers root")
    root_w, root_t = b[-1], b[-2]
    root = len(b) - 2 - root_w
    if root_t >> 2 != _FBT_MAP:
        raise fail(f"expected a FlexBuffers map at the root, got type {root_t >> 2}")
    m = root - uint(root, root_w)
    w = 1 << (root_t & 3)
    keys = m - 3 * w - uint(m - 3 * w, w)
    keys_w = uint(m - 2 * w, w)
    n = uint(m - w, w)
    out: dict[str, Any] = {}
    for i in range(n):
        kp = keys + i * keys_w
        start = kp - uint(kp, keys_w)
        end = b.find(b"\0", start)
        if start < 0 or end < 0:
            raise fail("malformed key")
        out[b[start:end].decode("utf-8", "replace")] = value(m + i * w, w, uint(m + n * w + i, 1))
    return out


def parse_tflite(data: bytes, path: str = "<tflite>") -> TfliteGraph:
    """Parse the bytes of a .tflite model; return its first subgraph with constant tensors as arrays."""
    buf = _Buf(bytes(data), path)
    if len(buf.b) < 8 or buf.b[4:8] != b"TFL3":
        raise TfliteFormatError(f"{path}: not a TensorFlow Lite model (expected the file identifier 'TFL3' at "
                                f"byte 4, got {buf.b[4:8]!r})")
    root = buf.u32(0)
    codes = []
    for oc in buf.tables(root, 1):
        code = max(buf.scalar(oc, 0, "i8"), buf.scalar(oc, 3, "i32"))
        if code == 32:
            codes.append("CUSTOM:" + buf.string(oc, 1))
        else:
            codes.append(BUILTIN_OPS.get(code, f"BUILTIN_{code}"))
    buffers = []
    for b in buf.tables(root, 4):
        off, size = buf.scalar(b, 1, "u64"), buf.scalar(b, 2, "u64")
        if off > 1:
            buf._need(off, size)
            buffers.append(memoryview(buf.b)[off:off + size])
        else:
            buffers.append(buf.bytes_(b, 0))
    subgraphs = buf.tables(root, 2)
    if not subgraphs:
        raise TfliteFormatError(f"{path}: the model has no subgraph")
    sg = subgraphs[0]
    tensors = []
    for i, t in enumerate(buf.tables(sg, 0)):
        name = buf.string(t, 3)
        shape = buf.ints(t, 0)
        ttype = buf.scalar(t, 1, "i8")
        if ttype not in TENSOR_TYPES:
            raise TfliteFormatError(f"{path}: tensor {i} {name!r} has unsupported type {ttype}")
        dtype = np.dtype(TENSOR_TYPES[ttype])
        q = buf.ref(t, 4)
        if q and buf.vector(q, 2)[1]:
            raise TfliteFormatError(f"{path}: tensor {i} {name!r} is integer-quantized (scales present); only "
                                    "float32/float16 models are supported")
        bi = buf.scalar(t, 2, "u32")
        if bi >= len(buffers):
            raise TfliteFormatError(f"{path}: tensor {i} {name!r} points at buffer {bi} of {len(buffers)}")
        raw = buffers[bi]
        arr = None
        if len(raw):
            n = int(np.prod(shape)) if shape else 1
            if len(raw) != n * dtype.itemsize:
                raise TfliteFormatError(f"{path}: tensor {i} {name!r}: buffer of {len(raw)} bytes for shape "
                                        f"{list(shape)} {dtype}")
            arr = np.frombuffer(raw, dtype.newbyteorder("<"), n).reshape(shape).astype(dtype)
        tensors.append(TfliteTensor(i, name, tuple(shape), dtype, arr))
    ops = []
    for k, o in enumerate(buf.tables(sg, 3)):
        ci = buf.scalar(o, 0, "u32")
        if ci >= len(codes):
            raise TfliteFormatError(f"{path}: operator {k} uses opcode {ci} of {len(codes)}")
        op_type = codes[ci]
        ins, outs = buf.ints(o, 1), buf.ints(o, 2)
        for j in ins + outs:
            if j >= len(tensors) or j < -1:
                raise TfliteFormatError(f"{path}: operator {k} ({op_type}) refers to tensor {j} of {len(tensors)}")
        opts = _options(buf, op_type, buf.ref(o, 4))
        if op_type.startswith("CUSTOM:"):
            raw_opts = bytes(buf.bytes_(o, 5))
            opts["custom_options"] = raw_opts
            opts["custom"] = parse_flexbuffer_map(raw_opts, f"{path}: operator {k} ({op_type}) options") \
                if raw_opts else {}
        elif op_type == "STRIDED_SLICE":
            t = buf.ref(o, 4)
            opts.update({n: buf.scalar(t, i, "i32") for i, n in enumerate(
                ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask"))} if t else {})
        ops.append(TfliteOp(k, op_type, ins, outs, opts))
    return TfliteGraph(buf.string(sg, 4), tensors, ops, buf.ints(sg, 1), buf.ints(sg, 2), path)


def load_tflite(path: str | os.PathLike) -> TfliteGraph:
    """Read and parse a .tflite file (`parse_tflite`)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"tflite model: no file at {str(p)!r}")
    return parse_tflite(p.read_bytes(), str(p))
