"""Layers shared by the RIFE versions: the float32 backward warp and bilinear rescaling.

The warp builds its sampling grid in the graph from two ``arange`` vectors (H and W floats), so an
exported graph carries no precomputed [1, 2, H, W] grid that constant folding could duplicate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp `image` [N, C, H, W] by `flow` [N, 2, H, W] (x, y offsets in pixels).

    out[y, x] = image sampled at (x + flow_x, y + flow_y): bilinear, border padding, corner-aligned
    (``align_corners=True``), as upstream RIFE. Grid and sampling are computed in float32 whatever
    the input dtype; the result is cast back to `image`'s dtype.
    """
    _, _, h, w = image.shape
    f = flow.float()
    xs = torch.arange(w, dtype=torch.float32, device=flow.device).view(1, 1, w)
    ys = torch.arange(h, dtype=torch.float32, device=flow.device).view(1, h, 1)
    gx = (f[:, 0] + xs) * (2.0 / (w - 1)) - 1.0
    gy = (f[:, 1] + ys) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack((gx, gy), dim=3)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)


def rescale(x: Tensor, factor: float) -> Tensor:
    """Bilinear resize by `factor` (``align_corners=False``, no antialias); identity for 1."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def swap_flow(flow: Tensor) -> Tensor:
    """[N, 4, H, W] (flow t->0, flow t->1) -> (flow t->1, flow t->0)."""
    return torch.cat((flow[:, 2:4], flow[:, :2]), dim=1)
