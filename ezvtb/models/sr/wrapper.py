"""`Upscaler`: the exported SR graph's module (uint8 BGRA in, uint8 BGRA k x larger out).

Inside the module (hence inside the graph): uint8 HWC BGRA -> float32 /255 -> RGB NCHW -> (UpConv7:
replicate padding of `net.pad` px per side) -> network in its dtype -> float32; alpha goes its own
way (``alpha="model"``, the default: alpha replicated to three channels, run through the
network as a second batch item, channels averaged; ``alpha="bicubic"``: bicubic k x resize in
float32, a = -0.75, half-pixel centres, like ``cv2.INTER_CUBIC``); clamp to [0, 1], x255, round
half-to-even -> uint8 HWC BGRA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ezvtb.models.sr.spec import ALPHA_MODES


class Upscaler(nn.Module):
    """``Upscaler(net)(frame)``: frame uint8 [H, W, 4] BGRA -> uint8 [kH, kW, 4] BGRA.

    With ``quantize=False`` the output is float32 [kH, kW, 4] BGRA in [0, 1] (clamped, not rounded),
    used to measure the exported graph's accuracy.
    """

    def __init__(self, net: nn.Module, alpha: str = "model", quantize: bool = True) -> None:
        super().__init__()
        if alpha not in ALPHA_MODES:
            raise ValueError(f"alpha: expected one of {list(ALPHA_MODES)}, got {alpha!r}")
        self.net = net
        self.scale = int(net.scale)
        self.pad = int(getattr(net, "pad", 0))
        self.alpha = alpha
        self.quantize = bool(quantize)
        self.register_buffer("_bgr_to_rgb", torch.tensor([2, 1, 0]), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _run(self, x: Tensor) -> Tensor:
        """float32 [N, C, H, W] -> float32 [N, C, kH, kW] through the network (padding included)."""
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return self.net(x.to(self.dtype)).to(torch.float32)

    def forward(self, frame: Tensor) -> Tensor:
        x = frame.to(torch.float32).permute(2, 0, 1).unsqueeze(0) * (1.0 / 255.0)  # [1, 4, H, W] BGRA
        rgb = x[:, :3].index_select(1, self._bgr_to_rgb)
        a = x[:, 3:4]
        if self.alpha == "model":
            both = self._run(torch.cat([rgb, a.expand(-1, 3, -1, -1)], dim=0))
            rgb_up, a_up = both[0:1], both[1:2].mean(dim=1, keepdim=True)
        else:
            rgb_up = self._run(rgb)
            a_up = F.interpolate(a, scale_factor=float(self.scale), mode="bicubic", align_corners=False)
        out = torch.cat([rgb_up.index_select(1, self._bgr_to_rgb), a_up], dim=1).clamp(0.0, 1.0)
        out = out[0].permute(1, 2, 0)
        if not self.quantize:
            return out
        return (out * 255.0).round().to(torch.uint8)
