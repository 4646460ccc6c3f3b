"""`TfliteNet`: a parsed TFLite graph (`ezvtb.models.facetrack.tflite`) as a PyTorch module.

Every operator becomes one step; `forward` runs the steps in the file's order, so tracing it for
ONNX export unrolls the graph. Activations are kept NCHW (torch's layout) and converted at the
edges: the input is NHWC like TFLite's, outputs come back in TFLite's shapes and layout.

Operators: CONV_2D, DEPTHWISE_CONV_2D (weights ``[O, kh, kw, I]`` / ``[1, kh, kw, C*m]`` ->
torch ``[O, I, kh, kw]`` / ``[C*m, 1, kh, kw]``), MAX_POOL_2D, AVERAGE_POOL_2D, PAD (constant
zero padding, any axis), ADD, MUL, RELU, RELU6, PRELU (per-channel slopes), LOGISTIC, RESHAPE,
CONCATENATION, STRIDED_SLICE (identity only), DEQUANTIZE (float16 constants -> float32, done once at build
time), and MediaPipe's custom Landmarks2TransformMatrix, TransformTensorBilinear and TransformLandmarks
(version 2, the face mesh with attention: crops of the feature map around lips and eyes). ``same``
padding follows TFLite: total ``max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``, the smaller
half before (convolutions: a symmetric padding and a crop, see `_symmetric`; pooling pads with -inf). Fused
activations (none, relu, relu6, relu_n1_to_1, tanh) are applied after the op. Any other operator
raises `TfliteFormatError` naming it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ezvtb.models.facetrack.tflite import TfliteFormatError, TfliteGraph

# NHWC axis -> NCHW axis for 4-D activations.
_NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_pad(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(n / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _activation(x: Tensor, act: str | None, what: str) -> Tensor:
    if act is None:
        return x
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return x.clamp(0.0, 6.0)
    if act == "relu_n1_to_1":
        return x.clamp(-1.0, 1.0)
    if act == "tanh":
        return torch.tanh(x)
    raise TfliteFormatError(f"{what}: unsupported fused activation {act!r}")


class _Step(nn.Module):
    """One operator: reads `inputs` from the value table, writes `outputs`."""

    def __init__(self, kind: str, inputs: list[int], outputs: list[int]) -> None:
        super().__init__()
        self.kind = kind
        self.ins = inputs
        self.outs = outputs


class _Conv(_Step):
    def __init__(self, op, w: np.ndarray, b: np.ndarray | None, in_shape, what: str) -> None:
        super().__init__(op.type, [op.inputs[0]], list(op.outputs))
        o = op.options
        depthwise = op.type == "DEPTHWISE_CONV_2D"
        (sh, sw), (dh, dw) = o["stride"], o["dilation"]
        if depthwise:
            c = in_shape[3]
            kh, kw = w.shape[1], w.shape[2]
            if w.shape[0] != 1 or w.shape[3] != c * o["depth_multiplier"]:
                raise TfliteFormatError(f"{what}: depthwise weights {w.shape} for {c} channels")
            weight = np.transpose(w, (3, 0, 1, 2))  # [C*m, 1, kh, kw]
            groups, cout = c, w.shape[3]
        else:
            cout, kh, kw = w.shape[0], w.shape[1], w.shape[2]
            if w.shape[3] != in_shape[3]:
                raise TfliteFormatError(f"{what}: weights {w.shape} for {in_shape[3]} input channels")
            weight = np.transpose(w, (0, 3, 1, 2))
            groups = 1
        self.conv = nn.Conv2d(in_shape[3], cout, (kh, kw), (sh, sw), 0, (dh, dw), groups, bias=b is not None)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight, np.float32)))
            if b is not None:
                self.conv.bias.copy_(torch.from_numpy(np.asarray(b, np.float32)))
        if o["padding"] == "same":
            ph = _same_pad(in_shape[1], kh, sh, dh)
            pw = _same_pad(in_shape[2], kw, sw, dw)
        elif o["padding"] == "valid":
            ph = pw = (0, 0)
        else:
            raise TfliteFormatError(f"{what}: unsupported padding {o['padding']!r}")
        # TFLite's asymmetric "same" padding as the convolution's own symmetric padding P (the smallest
        # P >= both sides with (P - before) a multiple of the stride) and a crop of the first
        # (P - before) / stride outputs: no separate Pad node, which ORT runs outside its blocked layout.
        (self.conv.padding, self.crop) = zip(*(_symmetric(b0, b1, st) for (b0, b1), st in ((ph, sh), (pw, sw))))
        self.out_hw = (_out_size(in_shape[1], kh, sh, dh, o["padding"]),
                       _out_size(in_shape[2], kw, sw, dw, o["padding"]))
        self.act = o["activation"]
        self.what = what

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if any(self.crop) or tuple(y.shape[2:]) != self.out_hw:
            (top, left), (h, w) = self.crop, self.out_hw
            y = y[:, :, top:top + h, left:left + w]
        return _activation(y, self.act, self.what)


def _out_size(n: int, k: int, s: int, d: int, padding: str) -> int:
    return math.ceil(n / s) if padding == "same" else (n - (k - 1) * d - 1) // s + 1


def _symmetric(before: int, after: int, stride: int) -> tuple[int, int]:
    """(symmetric padding, outputs to drop at the start) equivalent to padding (before, after)."""
    p = max(before, after)
    while (p - before) % stride:
        p += 1
    return p, (p - before) // stride


class _Pool(_Step):
    def __init__(self, op, in_shape, what: str) -> None:
        super().__init__(op.type, [op.inputs[0]], list(op.outputs))
        o = op.options
        self.kernel, self.stride = tuple(o["kernel"]), tuple(o["stride"])
        if o["padding"] == "same":
            ph = _same_pad(in_shape[1], self.kernel[0], self.stride[0], 1)
            pw = _same_pad(in_shape[2], self.kernel[1], self.stride[1], 1)
        else:
            ph = pw = (0, 0)
        self.pad = (pw[0], pw[1], ph[0], ph[1])
        self.max = op.type == "MAX_POOL_2D"
        if not self.max and any(self.pad):
            raise TfliteFormatError(f"{what}: AVERAGE_POOL_2D with 'same' padding that pads is not supported")
        self.act = o["activation"]
        self.what = what

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, value=-math.inf)
        y = F.max_pool2d(x, self.kernel, self.stride) if self.max else F.avg_pool2d(x, self.kernel, self.stride)
        return _activation(y, self.act, self.what)


# --- MediaPipe's custom operators (mediapipe/util/tflite/operations, version 2) -------------------
def landmarks_to_transform_matrix(lm: Tensor, idx: tuple[int, int], subset: list[int], out_hw: tuple[int, int],
                                  scale: tuple[float, float]) -> Tensor:
    """``Landmarks2TransformMatrix`` v2: lm [1, N, 3] -> [1, 4, 4], the matrix taking the pixel grid of an
    out_hw crop to the landmarks' coordinates. The crop is turned by r = -angle(left -> right landmark),
    centred on the box of the `subset` landmarks in that turned frame, its size = box * `scale`:
    ``shift(centre) @ rot(-r) @ diag(scale * box / out) @ shift(-out / 2)``."""
    p = lm[0, :, :2]
    d = p[idx[1]] - p[idx[0]]
    n = torch.sqrt((d * d).sum())
    cos, sin = d[0] / n, -d[1] / n  # of r = -atan2(dy, dx)
    q = p[subset]
    rx, ry = q[:, 0] * cos - q[:, 1] * sin, q[:, 0] * sin + q[:, 1] * cos  # rot(r) q
    lo_x, hi_x, lo_y, hi_y = rx.min(), rx.max(), ry.min(), ry.max()
    mx, my = (lo_x + hi_x) / 2, (lo_y + hi_y) / 2
    cx, cy = mx * cos + my * sin, -mx * sin + my * cos  # rot(-r) mid
    sx = scale[0] * (hi_x - lo_x) / out_hw[1]
    sy = scale[1] * (hi_y - lo_y) / out_hw[0]
    # rot(-r) = [[cos, sin], [-sin, cos]]; the 2x2 block times diag(sx, sy), then the shifts
    a, b, c, e = cos * sx, sin * sy, -sin * sx, cos * sy
    tx = cx - a * (out_hw[1] / 2) - b * (out_hw[0] / 2)
    ty = cy - c * (out_hw[1] / 2) - e * (out_hw[0] / 2)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = [torch.stack([a, b, zero, tx]), torch.stack([c, e, zero, ty]),
            torch.stack([zero, zero, one, zero]), torch.stack([zero, zero, zero, one])]
    return torch.stack(rows).unsqueeze(0)


def transform_tensor_bilinear(x: Tensor, m: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """``TransformTensorBilinear`` v2: x NCHW [1, C, H, W], m [1, 4, 4] -> [1, C, oh, ow]. Output pixel (u, v)
    samples x at ``m @ (u + 0.5, v + 0.5, 0, 1) - 0.5`` bilinearly (zeros past the edges); a sample point
    outside [0, W - 1] x [0, H - 1] gives 0."""
    _, _, h, w = x.shape
    oh, ow = out_hw
    v, u = torch.meshgrid(torch.arange(oh, dtype=x.dtype) + 0.5, torch.arange(ow, dtype=x.dtype) + 0.5,
                          indexing="ij")
    tx = m[0, 0, 0] * u + m[0, 0, 1] * v + m[0, 0, 3] - 0.5
    ty = m[0, 1, 0] * u + m[0, 1, 1] * v + m[0, 1, 3] - 0.5
    inside = ((tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)).to(x.dtype)
    grid = torch.stack([tx / (w - 1) * 2 - 1, ty / (h - 1) * 2 - 1], dim=-1).unsqueeze(0)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return y * inside


def transform_landmarks(p: Tensor, m: Tensor) -> Tensor:
    """``TransformLandmarks`` v2: p [1, N, 2] -> ``m[:2] @ (x, y, 0, 1)`` per point."""
    x, y = p[..., 0], p[..., 1]
    return torch.stack([m[0, 0, 0] * x + m[0, 0, 1] * y + m[0, 0, 3],
                        m[0, 1, 0] * x + m[0, 1, 1] * y + m[0, 1, 3]], dim=-1)


class TfliteNet(nn.Module):
    """``TfliteNet(graph)(x)``: x float32 NHWC (the TFLite input's shape) -> tuple of the graph's outputs
    (TFLite shapes and layout, float32)."""

    def __init__(self, graph: TfliteGraph) -> None:
        super().__init__()
        if len(graph.inputs) != 1:
            raise TfliteFormatError(f"{graph.path}: expected one graph input, got {len(graph.inputs)}")
        self.graph_name = graph.name
        self.input_index = graph.inputs[0]
        self.output_indices = list(graph.outputs)
        self.input_shape = graph.tensors[self.input_index].shape
        self.output_shapes = [graph.tensors[i].shape for i in graph.outputs]
        const: dict[int, np.ndarray] = {t.index: t.data for t in graph.tensors if t.data is not None}
        steps: list[_Step] = []
        for op in graph.ops:
            what = f"{graph.path}: operator {op.index} ({op.type})"
            shapes = [graph.tensors[i].shape if i >= 0 else None for i in op.inputs]
            if op.type == "DEQUANTIZE":
                src = const.get(op.inputs[0])
                if src is None:
                    raise TfliteFormatError(f"{what}: only constant inputs can be dequantized")
                const[op.outputs[0]] = src.astype(np.float32)
            elif op.type in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                w = const.get(op.inputs[1])
                b = const.get(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
                if w is None or op.inputs[0] in const:
                    raise TfliteFormatError(f"{what}: expected an activation input and constant weights")
                steps.append(_Conv(op, w.astype(np.float32), b, shapes[0], what))
            elif op.type in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                steps.append(_Pool(op, shapes[0], what))
            else:
                step = self._simple(op, const, shapes, what)
                step.out_shape = tuple(graph.tensors[op.outputs[0]].shape)
                steps.append(step)
        self.steps = nn.ModuleList(steps)

    def _simple(self, op, const: dict[int, np.ndarray], shapes, what: str) -> _Step:
        """Steps without sub-modules; constants they need become buffers."""
        t = op.type
        act = op.options.get("activation")
        if act not in (None, "relu", "relu6", "relu_n1_to_1", "tanh"):
            raise TfliteFormatError(f"{what}: unsupported fused activation {act!r}")
        step = _Step(t, list(op.inputs), list(op.outputs))
        step.act, step.what = act, what
        if t in ("RELU", "RELU6", "LOGISTIC", "RESHAPE"):
            step.ins = [op.inputs[0]]
        elif t == "PRELU":
            a = const.get(op.inputs[1])
            if a is None or a.size != shapes[0][-1]:
                raise TfliteFormatError(f"{what}: expected per-channel constant slopes, got {shapes[1]}")
            step.register_buffer("alpha", torch.from_numpy(a.astype(np.float32).reshape(-1)))
            step.ins = [op.inputs[0]]
        elif t == "PAD":
            p = const.get(op.inputs[1])
            if p is None or p.shape != (len(shapes[0]), 2) or (len(op.inputs) > 2 and op.inputs[2] >= 0):
                raise TfliteFormatError(f"{what}: expected constant [rank, 2] paddings and zero fill")
            p = [tuple(int(v) for v in row) for row in p]
            if len(p) == 4:  # NHWC paddings -> F.pad order for NCHW (last dim first)
                step.pad = (*p[2], *p[1], *p[3], *p[0])
            else:
                step.pad = tuple(v for row in reversed(p) for v in row)
            step.ins = [op.inputs[0]]
        elif t in ("ADD", "MUL"):
            for k, i in enumerate(op.inputs):
                if i in const:
                    c = const[i].astype(np.float32)
                    other = shapes[1 - k] if len(shapes) == 2 else None
                    if c.ndim == 4:
                        c = np.transpose(c, (0, 3, 1, 2))
                    elif c.size > 1 and other is not None and len(other) == 4:
                        raise TfliteFormatError(f"{what}: constant of shape {c.shape} with a 4-D operand")
                    step.register_buffer(f"const{k}", torch.from_numpy(np.ascontiguousarray(c)))
        elif t == "CONCATENATION":
            pass
        elif t == "STRIDED_SLICE":  # only the identity slice MediaPipe's models use as an output copy
            begin, end, strides = (const.get(i) for i in op.inputs[1:4])
            full = begin is not None and end is not None and strides is not None and not any(
                op.options.get(m, 0) for m in ("ellipsis_mask", "new_axis_mask", "shrink_axis_mask")) and \
                (begin == 0).all() and (strides == 1).all() and (end >= np.array(shapes[0])).all()
            if not full:
                raise TfliteFormatError(f"{what}: only an identity STRIDED_SLICE is supported")
            step.ins = [op.inputs[0]]
        elif t == "CUSTOM:Landmarks2TransformMatrix":
            c = op.options.get("custom", {})
            try:
                step.idx = (int(c["left_rotation_idx"]), int(c["right_rotation_idx"]))
                step.subset = sorted({int(i) for i in c["subset_idxs"]})
                step.out_hw = (int(c["output_height"]), int(c["output_width"]))
                step.scale = (float(c["scale_x"]), float(c["scale_y"]))
                step.target = float(c.get("target_rotation_radians", 0.0))
            except (KeyError, TypeError, ValueError) as e:
                raise TfliteFormatError(f"{what}: malformed options ({e})") from None
            if step.target != 0.0:
                raise TfliteFormatError(f"{what}: target_rotation_radians {step.target} is not supported")
            step.ins = [op.inputs[0]]
        elif t in ("CUSTOM:TransformTensorBilinear", "CUSTOM:TransformLandmarks"):
            pass
        else:
            raise TfliteFormatError(f"{what}: operator {t} is not supported by ezvtb's TFLite reader")
        step.axis = op.options.get("axis", 0)
        return step

    def _run_simple(self, s: _Step, vals: dict[int, Tensor]) -> Tensor:
        t = s.kind
        if t == "RELU":
            return F.relu(vals[s.ins[0]])
        if t == "RELU6":
            return vals[s.ins[0]].clamp(0.0, 6.0)
        if t == "LOGISTIC":
            return torch.sigmoid(vals[s.ins[0]])
        if t == "PRELU":  # relu(x) - a relu(-x): the same values; ORT keeps it in its blocked layout (PRelu: 2x slower)
            x = vals[s.ins[0]]
            a = s.alpha.view(1, -1, 1, 1) if x.ndim == 4 else s.alpha
            return F.relu(x) - a * F.relu(-x)
        if t == "PAD":
            return F.pad(vals[s.ins[0]], s.pad)
        if t in ("ADD", "MUL"):
            a, b = (getattr(s, f"const{k}") if hasattr(s, f"const{k}") else vals[i] for k, i in enumerate(s.ins))
            return _activation(a + b if t == "ADD" else a * b, s.act, s.what)
        if t == "RESHAPE":
            x = vals[s.ins[0]]
            if x.ndim == 4:
                x = x.permute(0, 2, 3, 1)  # back to NHWC element order
            y = x.reshape(s.out_shape)
            return y.permute(0, 3, 1, 2) if y.ndim == 4 else y
        if t == "STRIDED_SLICE":
            return vals[s.ins[0]]
        if t == "CUSTOM:Landmarks2TransformMatrix":
            return landmarks_to_transform_matrix(vals[s.ins[0]], s.idx, s.subset, s.out_hw, s.scale)
        if t == "CUSTOM:TransformTensorBilinear":
            return transform_tensor_bilinear(vals[s.ins[0]], vals[s.ins[1]], s.out_shape[1:3])
        if t == "CUSTOM:TransformLandmarks":
            return transform_landmarks(vals[s.ins[0]], vals[s.ins[1]])
        if t == "CONCATENATION":
            xs = [vals[i] for i in s.ins]
            axis = s.axis % xs[0].ndim
            if xs[0].ndim == 4:
                axis = _NHWC_TO_NCHW[axis]
            return _activation(torch.cat(xs, dim=axis), s.act, s.what)
        raise TfliteFormatError(f"{s.what}: operator {t} is not supported")  # pragma: no cover

    def values(self, x: Tensor) -> dict[int, Tensor]:
        """Every tensor the graph computes for `x`, by TFLite tensor index (4-D ones NCHW)."""
        vals: dict[int, Tensor] = {self.input_index: x.permute(0, 3, 1, 2)}
        for s in self.steps:
            if isinstance(s, (_Conv, _Pool)):
                y = s(vals[s.ins[0]])
            else:
                y = self._run_simple(s, vals)
            vals[s.outs[0]] = y
        return vals

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        vals = self.values(x)
        outs = []
        for i in self.output_indices:
            y = vals[i]
            outs.append(y.permute(0, 2, 3, 1) if y.ndim == 4 else y)
        return tuple(outs)


class ImageGraph(nn.Module):
    """The exported module: uint8 [S, S, 3] RGB -> float in `value_range` -> `TfliteNet` -> spec outputs.

    kind ``detector``: (boxes [N, 16], scores [N] = sigmoid of the logits clipped to +-`score_clip`);
    kind ``landmarks``: (landmarks [K, 3], presence [1] = sigmoid); kind ``attention`` (the mesh with
    attention, outputs mesh, lips, eyes x2, irises x2, face flag): (landmarks [K, 3], irises [10, 2], presence).
    """

    def __init__(self, net: TfliteNet, kind: str, value_range: tuple[float, float], score_clip: float = 100.0) -> None:
        super().__init__()
        if kind not in ("detector", "landmarks", "attention"):
            raise ValueError(f"kind: expected 'detector', 'landmarks' or 'attention', got {kind!r}")
        self.net, self.kind = net, kind
        lo, hi = value_range
        self.scale, self.offset = (hi - lo) / 255.0, lo
        self.score_clip = float(score_clip)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        x = image.to(torch.float32).unsqueeze(0) * self.scale + self.offset
        if self.kind == "attention":
            mesh, _lips, _eye_a, _eye_b, iris_a, iris_b, flag = self.net(x)
            irises = torch.cat([iris_a.reshape(-1, 2), iris_b.reshape(-1, 2)])
            return mesh.reshape(-1, 3), irises, torch.sigmoid(flag.reshape(1))
        a, b = self.net(x)
        if self.kind == "detector":
            return a[0], torch.sigmoid(b.reshape(-1).clamp(-self.score_clip, self.score_clip))
        return a.reshape(-1, 3), torch.sigmoid(b.reshape(1))
