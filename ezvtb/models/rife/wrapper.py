"""`Interpolator`: the exported graph's module (uint8 BGRA frames in, n uint8 BGRA frames out).

Wraps a loaded IFNet for one interpolation scale n. Inside the module (hence inside the graph):
uint8 HWC BGRA -> float RGBA NCHW in [0, 1] -> the n-1 intermediate frames -> float32, x255,
rounded half-to-even, clipped -> uint8 HWC BGRA, stacked with the current frame. Versions:

* ``v4.25.lite``: each frame's Head features are computed once and shared by all timesteps
  t = i/n, fed as in-graph timestep planes.
* ``hdv3``: t = 0.5 only. x2 is one call; x4 is recursion: m = f(a, b), then f(a, m) and f(m, b)
  (t = 0.25, 0.75), on the float (unrounded) midpoint. x3 raises `UnsupportedScaleError`.

In float16 models the warp grid and GridSample stay float32 (see `blocks.warp`); the uint8
conversion runs in float32.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ezvtb.models.rife.spec import check_scale, timesteps


class Interpolator(nn.Module):
    """``Interpolator(net, scale)(prev_frame, frame)`` -> frames, as declared in `spec.graph_spec`.

    prev_frame, frame: uint8 [H, W, 4] BGRA. Returns uint8 [scale, H, W, 4] BGRA (intermediates,
    then `frame`), or with ``quantize=False`` float32 [scale, H, W, 4] BGRA in [0, 1] without
    rounding (used to measure exported-graph accuracy).
    """

    def __init__(self, net: nn.Module, scale: int, quantize: bool = True):
        super().__init__()
        self.version = net.version
        self.scale = check_scale(self.version, scale)
        self.net = net
        self.quantize = bool(quantize)
        self.register_buffer("_bgra_to_rgba", torch.tensor([2, 1, 0, 3]), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _to_model(self, bgra: Tensor) -> Tensor:
        x = bgra.to(torch.float32).permute(2, 0, 1).index_select(0, self._bgra_to_rgba) * (1.0 / 255.0)
        return x.unsqueeze(0).to(self.dtype)

    def _to_frame(self, rgba: Tensor) -> Tensor:
        x = rgba[0].to(torch.float32).index_select(0, self._bgra_to_rgba).permute(1, 2, 0)
        if not self.quantize:
            return x
        return (x * 255.0).round().clamp(0.0, 255.0).to(torch.uint8)

    def intermediates(self, img0: Tensor, img1: Tensor) -> list[Tensor]:
        """Float RGBA [1, 4, H, W] frames at t = 1/n .. (n-1)/n."""
        if self.version == "hdv3":
            mid = self.net(img0, img1)
            if self.scale == 2:
                return [mid]
            return [self.net(img0, mid), mid, self.net(mid, img1)]
        f0 = self.net.encode(img0[:, :3].clamp(0.0, 1.0))
        f1 = self.net.encode(img1[:, :3].clamp(0.0, 1.0))
        return [self.net(img0, img1, t, f0, f1) for t in timesteps(self.scale)]

    def forward(self, prev_frame: Tensor, frame: Tensor) -> Tensor:
        img0, img1 = self._to_model(prev_frame), self._to_model(frame)
        outs = [self._to_frame(x) for x in self.intermediates(img0, img1)]
        last = frame if self.quantize else frame.to(torch.float32) * (1.0 / 255.0)
        return torch.stack([*outs, last], dim=0)
