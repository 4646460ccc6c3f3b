"""waifu2x UpConv7: six valid 3x3 convolutions and a 4x4 stride-2 transposed convolution (2x).

Layer layout and parameter names follow nagadomi/nunif's ``waifu2x.upconv_7`` (``net.0`` ...
``net.12``), so its ``.pth`` state dicts load directly; the ncnn files are converted to the same
keys by `ezvtb.models.sr.ncnn`.
"""
from __future__ import annotations

from torch import Tensor, nn

CHANNELS = (16, 32, 64, 128, 128, 256)
LEAKY_SLOPE = 0.1
# The six valid 3x3 convolutions trim 6 px per side; the transposed convolution (k4, s2, p3) maps
# n -> 2n - 4. With 7 px per side: H + 14 -> H + 2 -> 2H.
PAD = 7


class UpConv7(nn.Module):
    """``UpConv7()(x)``: x float [N, in_channels, H + 14, W + 14] (pre-padded by `PAD` per side), values
    in [0, 1] -> [N, out_channels, 2H, 2W], not clamped.
    """

    scale = 2
    pad = PAD

    def __init__(self, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        layers: list[nn.Module] = []
        c = in_channels
        for n in CHANNELS:
            layers += [nn.Conv2d(c, n, 3, 1, 0), nn.LeakyReLU(LEAKY_SLOPE, inplace=True)]
            c = n
        layers.append(nn.ConvTranspose2d(c, out_channels, 4, 2, 3))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
