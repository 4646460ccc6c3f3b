"""Export the five THA3 stage graphs (declared in `ezvtb.models.tha3.spec`) to ONNX.

The stage wrappers put the image conversion inside the first and last graphs (uint8 BGRA HWC
in and out, sRGB<->linear, RGBA zeroed where alpha is 0, [-1, 1]); the crop/paste glue comes from
`ezvtb.models.tha3.poser.ThaPoser`. Classic exporter, opset 17, static shapes, one file per graph.
fp16 graphs: networks in half, pose inputs float32 (cast inside), grid math float32 (the models).
"""
from __future__ import annotations

import io
import logging

import torch
from torch import Tensor, nn

from ezvtb.models.tha3.poser import ThaPoser
from ezvtb.models.tha3.spec import graph_spec

log = logging.getLogger("ezvtb.export")
OPSET = 17


def _srgb_to_linear(c: Tensor) -> Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: Tensor) -> Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.003130804953560372, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


class _Stage(nn.Module):
    def __init__(self, poser: ThaPoser, stage: str) -> None:
        super().__init__()
        self.poser, self.stage = poser, stage
        self.dtype = poser.dtype

    def forward(self, *xs: Tensor):
        p, d = self.poser, self.dtype
        if self.stage == "decomposer":
            img = xs[0].to(torch.float32) / 255.0
            rgba = torch.stack([img[..., 2], img[..., 1], img[..., 0], img[..., 3]], dim=0)
            rgba = rgba * (xs[0][..., 3] > 0).to(torch.float32)
            rgba = torch.cat([_srgb_to_linear(rgba[:3]), rgba[3:]], dim=0) * 2.0 - 1.0
            image = rgba.unsqueeze(0).to(d)
            background, eyebrow = p.decompose(image)
            return image, background, eyebrow
        if self.stage == "combiner":
            image, bg, eb, pose = xs
            return p.combine(image, bg, eb, pose.to(d))
        if self.stage == "morpher":
            image, crop, feat, pose = xs
            return p.morph(image, crop, feat, pose.to(d))
        if self.stage == "rotator":
            half, pose = xs
            return p.rotate(half, pose.to(d))
        full, warped, grid, pose = xs
        y = p.edit(full, warped, grid, pose.to(d)).to(torch.float32)[0]
        y = (y + 1.0) * 0.5
        bgra = torch.stack([_linear_to_srgb(y[2]), _linear_to_srgb(y[1]), _linear_to_srgb(y[0]),
                            y[3].clamp(0.0, 1.0)], dim=-1)
        return torch.round(bgra * 255.0).clamp(0, 255).to(torch.uint8)


def stage_module(poser: ThaPoser, stage: str) -> nn.Module:
    """The torch module whose export is the `stage` graph (I/O as in the spec)."""
    return _Stage(poser, stage).eval()


def example_inputs(stage: str, precision: str) -> tuple[Tensor, ...]:
    spec = graph_spec(stage, precision)
    out = []
    for t in spec.inputs:
        dt = {"uint8": torch.uint8, "float32": torch.float32, "float16": torch.float16}[t.dtype]
        out.append(torch.zeros(t.shape, dtype=dt) if dt == torch.uint8 else torch.rand(t.shape).to(dt) * 0.2)
    return tuple(out)


def export_stage(poser: ThaPoser, stage: str, precision: str) -> bytes:
    """Export one stage graph; returns the serialised ONNX model."""
    spec = graph_spec(stage, precision)
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(stage_module(poser, stage), example_inputs(stage, precision), buf,
                          opset_version=OPSET, input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamo=False, do_constant_folding=True)
    return buf.getvalue()
