"""Reader for ncnn models (``.param`` text + ``.bin`` weights) -> PyTorch-style state dicts (torch-free).

Format (Tencent/ncnn docs "param and model file structure", "operation param weight table"):

* ``.param``: magic ``7767517``; ``layer_count blob_count``; then one line per layer:
  ``Type name n_in n_out in_blobs... out_blobs... k=v ...``. Keys 0..31 are scalars (a float
  is written with ``.`` or ``e``); arrays use key ``-23300-id`` with value ``count,v1,v2,...``
  (``-23310=1,0.1`` is id 10 = [0.1]).
* ``.bin``: the weight buffers of the layers, in layer order, each padded to 4 bytes. Weights
  loaded with "type 0" (convolution/deconvolution kernels) start with a uint32 tag:
  ``0`` fp32, ``0x01306B47`` fp16, ``0x01348B83`` bf16, ``0x000D4B38`` int8 (dequantised with
  the layer's per-output ``weight_data_int8_scales``: w = q / scale), ``0x0002C056`` fp32 "with
  extra scaling"; any other non-zero tag is a 256-entry fp32 table followed by uint8 indices.
  "Type 1" buffers (biases, PReLU slopes, int8 scales) are raw fp32 without a tag.

Supported weighted layers: Convolution, Deconvolution, PReLU; weightless layers in
`WEIGHTLESS`. Anything else, a truncated/oversized ``.bin`` or a malformed ``.param`` raises
`NcnnFormatError` (a ValueError) naming the file and the layer or line.

`state_dict_from_ncnn` turns a parsed model into the key layout of the real ``.pth`` files:
waifu2x UpConv7 in nunif's ``net.N.*`` style, Real-ESRGAN SRVGGNetCompact in ``body.N.*`` style,
as float32 numpy arrays (``ezvtb.models.sr.loader`` converts them to tensors). Deconvolution
kernels are stored ``[out][in][kh][kw]`` by ncnn and transposed to torch's ``[in][out][kh][kw]``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_BF16 = 0x01348B83
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056

# Layer types without weights in the .bin that may appear in the graphs we read.
WEIGHTLESS = frozenset({
    "Input", "Split", "PixelShuffle", "Interp", "BinaryOp", "ReLU", "Sigmoid", "TanH", "Clip",
    "Eltwise", "Concat", "Slice", "Crop", "Padding", "Noop", "Flatten", "Reshape", "Permute",
    "Pooling", "Softmax", "Dropout", "UnaryOp",
})
WEIGHTED = frozenset({"Convolution", "Deconvolution", "PReLU"})

ParamValue = Union[int, float, list]


class NcnnFormatError(ValueError):
    """An ncnn .param/.bin file is malformed or uses a layer this reader does not support."""


@dataclass
class NcnnLayer:
    """One layer of a .param file; `weights` is filled by `read_bin` (name -> float32 array)."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, ParamValue]
    line: int = 0
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: int, default: ParamValue) -> ParamValue:
        return self.params.get(key, default)

    def int_param(self, key: int, default: int) -> int:
        v = self.params.get(key, default)
        if isinstance(v, list) or (isinstance(v, float) and not v.is_integer()):
            raise NcnnFormatError(f"layer {self.name!r} ({self.type}): param {key} must be an integer, got {v!r}")
        return int(v)


@dataclass
class NcnnModel:
    """A parsed ncnn model: layers in file order, with their weights once `read_bin` ran."""

    layers: list[NcnnLayer]
    blob_count: int
    param_path: str = ""
    bin_path: str = ""

    def weighted_layers(self) -> list[NcnnLayer]:
        return [ly for ly in self.layers if ly.type in WEIGHTED]


def _number(text: str, where: str) -> int | float:
    try:
        if any(c in text for c in ".eE"):
            return float(text)
        return int(text)
    except ValueError:
        raise NcnnFormatError(f"{where}: {text!r} is not a number") from None


def parse_param_text(text: str, path: str = "<param>") -> tuple[list[NcnnLayer], int]:
    """Parse the text of a .param file; return (layers, blob_count). Errors name `path` and the line."""
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]
    lines = [(n, ln) for n, ln in lines if ln]
    if not lines or lines[0][1] != str(MAGIC):
        got = lines[0][1][:40] if lines else "an empty file"
        raise NcnnFormatError(f"{path}: not an ncnn .param file (expected magic {MAGIC} on the first line, "
                              f"got {got!r})")
    if len(lines) < 2:
        raise NcnnFormatError(f"{path}: missing the 'layer_count blob_count' line")
    head = lines[1][1].split()
    if len(head) != 2 or not all(h.isdigit() for h in head):
        raise NcnnFormatError(f"{path}: line {lines[1][0]}: expected 'layer_count blob_count', got {lines[1][1]!r}")
    layer_count, blob_count = int(head[0]), int(head[1])
    body = lines[2:]
    if len(body) != layer_count:
        raise NcnnFormatError(f"{path}: header declares {layer_count} layers, the file has {len(body)} layer lines")
    layers: list[NcnnLayer] = []
    produced: set[str] = set()
    names: set[str] = set()
    for n, ln in body:
        where = f"{path}: line {n}"
        tok = ln.split()
        if len(tok) < 4 or not tok[2].isdigit() or not tok[3].isdigit():
            raise NcnnFormatError(f"{where}: expected 'Type name n_in n_out blobs... k=v...', got {ln[:80]!r}")
        typ, name, n_in, n_out = tok[0], tok[1], int(tok[2]), int(tok[3])
        if len(tok) < 4 + n_in + n_out:
            raise NcnnFormatError(f"{where}: layer {name!r} declares {n_in} inputs and {n_out} outputs but lists "
                                  f"{len(tok) - 4} names")
        bottoms, tops = tok[4:4 + n_in], tok[4 + n_in:4 + n_in + n_out]
        if any("=" in b for b in bottoms + tops):
            raise NcnnFormatError(f"{where}: layer {name!r}: blob list is shorter than declared")
        for b in bottoms:
            if b not in produced:
                raise NcnnFormatError(f"{where}: layer {name!r} reads blob {b!r} that no earlier layer produces")
        if name in names:
            raise NcnnFormatError(f"{where}: duplicate layer name {name!r}")
        names.add(name)
        params: dict[int, ParamValue] = {}
        for kv in tok[4 + n_in + n_out:]:
            key, sep, value = kv.partition("=")
            if not sep or not key.lstrip("-").isdigit() or not value:
                raise NcnnFormatError(f"{where}: layer {name!r}: bad parameter {kv!r} (expected k=v)")
            k = int(key)
            if k <= -23300:
                pid = -k - 23300
                items = value.split(",")
                count = _number(items[0], f"{where}: array {kv!r} count")
                vals = [_number(v, f"{where}: array {kv!r}") for v in items[1:]]
                if not isinstance(count, int) or count != len(vals):
                    raise NcnnFormatError(f"{where}: layer {name!r}: array {kv!r} declares {items[0]} values, "
                                          f"has {len(vals)}")
                params[pid] = vals
            elif 0 <= k < 32:
                params[k] = _number(value, f"{where}: parameter {kv!r}")
            else:
                raise NcnnFormatError(f"{where}: layer {name!r}: parameter id {k} out of range")
        layers.append(NcnnLayer(typ, name, bottoms, tops, params, n))
        produced.update(tops)
    if len(produced) != blob_count:
        raise NcnnFormatError(f"{path}: header declares {blob_count} blobs, the layers produce {len(produced)}")
    return layers, blob_count


class _BinReader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnFormatError(f"{self.path}: truncated: {what} needs {n} bytes at offset {self.pos}, "
                                  f"the file has {len(self.data)} bytes")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def raw_fp32(self, n: int, what: str) -> np.ndarray:
        """A "type 1" buffer: n float32 without a tag."""
        return np.frombuffer(self.take(4 * n, what), "<f4").astype(np.float32)

    def tagged(self, n: int, what: str) -> tuple[np.ndarray, bool]:
        """A "type 0" buffer of n values; returns (values, is_int8). int8 values are not yet scaled."""
        tag = int(np.frombuffer(self.take(4, f"{what} tag"), "<u4")[0])
        pad4 = lambda k: (k + 3) & ~3  # noqa: E731
        if tag == TAG_FP16:
            return np.frombuffer(self.take(pad4(2 * n), f"{what} (fp16)")[:2 * n], "<f2").astype(np.float32), False
        if tag == TAG_BF16:
            u = np.frombuffer(self.take(pad4(2 * n), f"{what} (bf16)")[:2 * n], "<u2").astype(np.uint32) << 16
            return u.view(np.float32).copy(), False
        if tag == TAG_INT8:
            return np.frombuffer(self.take(pad4(n), f"{what} (int8)")[:n], np.int8).astype(np.float32), True
        if tag in (TAG_FP32, TAG_FP32_SCALED):
            return self.raw_fp32(n, f"{what} (fp32)"), False
        # Any other non-zero tag: a quantisation table (as ncnn's ModelBin reads it).
        table = np.frombuffer(self.take(256 * 4, f"{what} (quantisation table)"), "<f4").astype(np.float32)
        idx = np.frombuffer(self.take(pad4(n), f"{what} (quantised indices)")[:n], np.uint8)
        return table[idx], False


def _conv_like(ly: NcnnLayer, rd: _BinReader) -> None:
    out = ly.int_param(0, 0)
    size = ly.int_param(6, 0)
    bias = ly.int_param(5, 0)
    what = f"layer {ly.name!r} ({ly.type})"
    if out <= 0 or size <= 0:
        raise NcnnFormatError(f"{rd.path}: {what}: needs num_output (0) and weight_data_size (6) > 0, "
                              f"got {out} and {size}")
    w, is_int8 = rd.tagged(size, f"{what} weight")
    if bias:
        ly.weights["bias"] = rd.raw_fp32(out, f"{what} bias")
    int8_term = ly.int_param(8, 0)
    if int8_term:
        scales = rd.raw_fp32(out, f"{what} weight int8 scales")
        rd.raw_fp32(1, f"{what} input int8 scale")
        if int8_term > 100:
            rd.raw_fp32(1, f"{what} output int8 scale")
        if is_int8:
            if np.any(scales == 0):
                raise NcnnFormatError(f"{rd.path}: {what}: zero int8 weight scale")
            w = (w.reshape(out, -1) / scales[:, None]).reshape(-1)
    elif is_int8:
        raise NcnnFormatError(f"{rd.path}: {what}: int8 weights without int8_scale_term (8) cannot be dequantised")
    ly.weights["weight"] = w.astype(np.float32)


def read_bin(layers: list[NcnnLayer], path: str | os.PathLike) -> None:
    """Read the .bin at `path` into each layer's `weights`; the file must be consumed exactly."""
    p = os.fspath(path)
    try:
        data = Path(p).read_bytes()
    except OSError as e:
        raise NcnnFormatError(f"{p}: cannot read ncnn .bin: {e.strerror}") from e
    rd = _BinReader(data, p)
    for ly in layers:
        ly.weights = {}
        if ly.type in ("Convolution", "Deconvolution"):
            _conv_like(ly, rd)
        elif ly.type == "PReLU":
            n = ly.int_param(0, 0)
            if n <= 0:
                raise NcnnFormatError(f"{p}: layer {ly.name!r} (PReLU): num_slope (0) must be > 0, got {n}")
            ly.weights["weight"] = rd.raw_fp32(n, f"layer {ly.name!r} (PReLU) slopes")
        elif ly.type not in WEIGHTLESS:
            raise NcnnFormatError(f"{p}: layer {ly.name!r} has type {ly.type!r}, which this reader does not "
                                  f"support (supported: {sorted(WEIGHTED | WEIGHTLESS)})")
    if rd.pos != len(data):
        raise NcnnFormatError(f"{p}: {len(data) - rd.pos} trailing bytes after the last weight buffer "
                              f"(read {rd.pos} of {len(data)}): the .bin does not belong to this .param")
    for ly in layers:
        for k, v in ly.weights.items():
            if not np.all(np.isfinite(v)):
                raise NcnnFormatError(f"{p}: layer {ly.name!r} {k} holds non-finite values")


def load_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike) -> NcnnModel:
    """Parse `param_path` and read `bin_path`; errors raise `NcnnFormatError` naming the file."""
    pp = os.fspath(param_path)
    try:
        raw = Path(pp).read_bytes()
    except OSError as e:
        raise NcnnFormatError(f"{pp}: cannot read ncnn .param: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NcnnFormatError(f"{pp}: not a text ncnn .param file (binary .param.bin is not supported)") from None
    layers, blobs = parse_param_text(text, pp)
    read_bin(layers, bin_path)
    return NcnnModel(layers, blobs, pp, os.fspath(bin_path))


# --- ncnn graph -> state dict ------------------------------------------------------------------

def _conv_weight(ly: NcnnLayer, path: str, deconv: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(torch-layout kernel, (kernel, stride, pad, dilation)) of a square Convolution/Deconvolution."""
    out = ly.int_param(0, 0)
    k = ly.int_param(1, 0)
    kh = ly.int_param(11, k)
    s, sh = ly.int_param(3, 1), ly.int_param(13, ly.int_param(3, 1))
    d, dh = ly.int_param(2, 1), ly.int_param(12, ly.int_param(2, 1))
    pad = ly.int_param(4, 0)
    pads = {pad, ly.int_param(14, pad), ly.int_param(15, pad), ly.int_param(16, pad)}
    what = f"{path}: layer {ly.name!r} ({ly.type})"
    if kh != k or sh != s or dh != d or len(pads) != 1 or pad < 0:
        raise NcnnFormatError(f"{what}: only square kernels/strides/dilations and symmetric padding are supported")
    if ly.type == "Convolution" and ly.int_param(7, 1) != 1:
        raise NcnnFormatError(f"{what}: grouped convolution is not supported")
    w = ly.weights["weight"]
    if w.size % (out * k * k):
        raise NcnnFormatError(f"{what}: weight_data_size {w.size} is not a multiple of num_output*k*k = {out * k * k}")
    cin = w.size // (out * k * k)
    w = w.reshape(out, cin, k, k)
    if deconv:
        if any(ly.int_param(i, 0) for i in (18, 19, 20, 21)):
            raise NcnnFormatError(f"{what}: output_pad/output_size are not supported")
        w = np.ascontiguousarray(w.transpose(1, 0, 2, 3))  # ncnn [out][in] -> torch ConvTranspose [in][out]
    return w, (k, s, pad, d)


def _activation(ly: NcnnLayer) -> tuple[int, list]:
    act = ly.int_param(9, 0)
    params = ly.get(10, [])
    return act, params if isinstance(params, list) else [params]


def _upconv7_state_dict(m: NcnnModel) -> dict[str, np.ndarray]:
    wl = m.weighted_layers()
    path = m.param_path
    sd: dict[str, np.ndarray] = {}
    for i, ly in enumerate(wl):
        last = i == len(wl) - 1
        w, (k, s, pad, d) = _conv_weight(ly, path, deconv=last)
        act, ap = _activation(ly)
        leaky01 = act == 2 and len(ap) == 1 and abs(ap[0] - 0.1) < 1e-6
        if not last and ((k, s, pad, d) != (3, 1, 0, 1) or not leaky01):
            raise NcnnFormatError(f"{path}: layer {ly.name!r}: UpConv7 expects 3x3 valid convolutions with a fused "
                                  f"leaky ReLU 0.1, got k={k} s={s} pad={pad} activation={act} {ap}")
        if last and ((k, s, pad, d) != (4, 2, 3, 1) or act != 0):
            raise NcnnFormatError(f"{path}: layer {ly.name!r}: UpConv7 expects a final 4x4 stride-2 pad-3 "
                                  f"deconvolution without activation, got k={k} s={s} pad={pad} activation={act}")
        if "bias" not in ly.weights:
            raise NcnnFormatError(f"{path}: layer {ly.name!r}: UpConv7 layers have biases (bias_term 5=1)")
        sd[f"net.{2 * i}.weight"] = w
        sd[f"net.{2 * i}.bias"] = ly.weights["bias"]
    return sd


def _srvgg_state_dict(m: NcnnModel) -> dict[str, np.ndarray]:
    path = m.param_path
    sd: dict[str, np.ndarray] = {}
    wl = m.weighted_layers()
    for i, ly in enumerate(wl):
        if ly.type == "Convolution":
            w, (k, s, pad, d) = _conv_weight(ly, path, deconv=False)
            if (k, s, pad, d) != (3, 1, 1, 1) or _activation(ly)[0] != 0 or "bias" not in ly.weights:
                raise NcnnFormatError(f"{path}: layer {ly.name!r}: SRVGGNetCompact expects 3x3 'same' convolutions "
                                      f"with bias and no fused activation")
            sd[f"body.{i}.weight"] = w
            sd[f"body.{i}.bias"] = ly.weights["bias"]
        else:
            sd[f"body.{i}.weight"] = ly.weights["weight"]
    by_type = {ly.type: ly for ly in m.layers if ly.type in ("PixelShuffle", "Interp", "BinaryOp")}
    up = by_type["PixelShuffle"].int_param(0, 1)
    interp = by_type["Interp"]
    scales = (float(interp.get(1, 1.0)), float(interp.get(2, 1.0)))
    if by_type["PixelShuffle"].int_param(1, 0) != 0:
        raise NcnnFormatError(f"{path}: PixelShuffle mode must be 0 (torch order)")
    if interp.int_param(0, 0) != 1 or scales != (float(up), float(up)):
        raise NcnnFormatError(f"{path}: SRVGGNetCompact expects a nearest x{up} Interp of the input, got "
                              f"resize_type={interp.get(0, 0)} scales={scales}")
    if by_type["BinaryOp"].int_param(0, 0) != 0:
        raise NcnnFormatError(f"{path}: SRVGGNetCompact expects BinaryOp add (0)")
    return sd


def architecture_of(m: NcnnModel) -> str:
    """``upconv7`` or ``srvgg`` from the layer sequence; NcnnFormatError otherwise."""
    kinds = [ly.type for ly in m.layers if ly.type not in ("Input", "Split")]
    if kinds and kinds[-1] == "Deconvolution" and kinds[:-1] and all(t == "Convolution" for t in kinds[:-1]):
        return "upconv7"
    if len(kinds) >= 6 and kinds[-4:] == ["Convolution", "PixelShuffle", "Interp", "BinaryOp"]:
        pairs = kinds[:-4]
        if len(pairs) % 2 == 0 and all(pairs[j] == ("Convolution", "PReLU")[j % 2] for j in range(len(pairs))):
            return "srvgg"
    raise NcnnFormatError(f"{m.param_path}: neither a waifu2x UpConv7 nor an SRVGGNetCompact graph "
                          f"(layer types: {kinds[:12]}{'...' if len(kinds) > 12 else ''})")


def state_dict_from_ncnn(m: NcnnModel) -> tuple[str, dict[str, np.ndarray]]:
    """(architecture, state dict of float32 numpy arrays) in the key layout of the real ``.pth`` files."""
    arch = architecture_of(m)
    return arch, (_upconv7_state_dict(m) if arch == "upconv7" else _srvgg_state_dict(m))
