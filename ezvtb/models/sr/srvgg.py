"""SRVGGNetCompact (Real-ESRGAN's compact VGG-style SR network, e.g. realesr-animevideov3).

``body``: conv(in -> nf) + act, `num_conv` x (conv(nf -> nf) + act), conv(nf -> out * k^2); then
PixelShuffle(k) and the nearest-neighbour k x upscaled input added as a residual. Parameter names
follow xinntao/Real-ESRGAN (``body.N.*``; activations hold parameters only for PReLU), so a real
``realesr-animevideov3.pth`` loads into the same module.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class SRVGGNetCompact(nn.Module):
    """``SRVGGNetCompact(...)(x)``: x float [N, in, H, W] in [0, 1] -> [N, out, kH, kW], not clamped."""

    pad = 0

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4) -> None:
        super().__init__()
        self.num_in_ch, self.num_out_ch, self.num_feat = num_in_ch, num_out_ch, num_feat
        self.num_conv, self.scale = num_conv, upscale
        body: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            body += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(body)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.body:
            y = layer(y)
        return self.upsampler(y) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
