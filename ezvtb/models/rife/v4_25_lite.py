"""Practical-RIFE v4.25.lite IFNet: a feature Head and 5 IFBlocks (c = 192/128/96/64/24), any t.

State-dict layout (after stripping ``module.``; 158 tensors, 5,622,700 parameters):

    encode.cnn{0,1,2}.weight/bias     Conv 3->16 s2, 16->16, 16->16 (LeakyReLU 0.2 between)
    encode.cnn3.weight/bias           ConvT 16->4 k4 s2 -> 4 feature channels at full resolution
    block{i}.conv0.{0,1}.0.weight/bias            Conv 3x3 s2 (cin -> c/2 -> c) + LeakyReLU 0.2
    block{i}.convblock.{0..7}.conv.weight/bias, .beta   ResConv: lrelu(conv(x) * beta + x)
    block{i}.lastconv.0.weight/bias   ConvT c -> 52 k4 s2, then PixelShuffle(2) -> 13 channels
                                      (flow 4, mask 1, features 8)

Block 0 sees img0, img1, f0, f1 and the timestep plane (15 channels); blocks 1-4 see the warped
images and features, the timestep, the mask, the features and the flow (28 channels). Block i runs
at 1/32, 1/16, 1/8, 1/4 and 1/1 of the input size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ezvtb.models.rife.blocks import rescale, warp

V4_25_LITE_CHANNELS = (192, 128, 96, 64, 24)
V4_25_LITE_SCALES = (32, 16, 8, 4, 1)
HEAD_CHANNELS = 4
BLOCK_OUT = 13  # flow 4 + mask 1 + features 8


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.LeakyReLU(0.2))


class Head(nn.Module):
    """Per-frame feature encoder: RGB [N, 3, H, W] in [0, 1] -> [N, 4, H, W]."""

    def __init__(self, channels: int = HEAD_CHANNELS):
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 16, 3, 2, 1)
        self.cnn1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(16, channels, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.cnn0(x.clamp(0.0, 1.0)))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class ResConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, c, 1, 1)))
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class IFBlock(nn.Module):
    def __init__(self, cin: int, c: int, res_blocks: int = 8, out: int = BLOCK_OUT):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(cin, c // 2), _conv(c // 2, c))
        self.convblock = nn.Sequential(*[ResConv(c) for _ in range(res_blocks)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * out, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: Tensor, flow: Tensor | None, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """x at full size (+ flow) -> (flow, mask logits, features) at full size."""
        x = rescale(x, 1.0 / scale)
        if flow is not None:
            x = torch.cat((x, rescale(flow, 1.0 / scale) * (1.0 / scale)), 1)
        tmp = rescale(self.lastconv(self.convblock(self.conv0(x))), scale)
        return tmp[:, :4] * scale, tmp[:, 4:5], tmp[:, 5:]


class IFNetV4Lite(nn.Module):
    """IFNet of Practical-RIFE v4.25.lite: ``net(img0, img1, t)`` -> the frame at time t.

    img0, img1: [N, C, H, W] float in [0, 1], C >= 3 (RGB first; extra channels such as alpha are
    warped with the final flows and blended with the final mask). t: a float in [0, 1] or a
    [N, 1, H, W] timestep plane. f0 / f1: `encode` of the RGB inputs, when already computed (they
    depend on one frame only, so several timesteps can share them). H, W: multiples of 128.
    flow_scale (attribute, default 1): flow estimated at that resolution, as in `IFNetHDv3`.
    """

    version = "v4.25.lite"
    flow_scale = 1.0

    def __init__(self, channels: tuple[int, ...] = V4_25_LITE_CHANNELS, head_channels: int = HEAD_CHANNELS,
                 res_blocks: int = 8, scales: tuple[int, ...] = V4_25_LITE_SCALES):
        super().__init__()
        if len(channels) != len(scales):
            raise ValueError(f"channels: expected {len(scales)} blocks, got {channels}")
        self.channels = tuple(channels)
        self.scales = tuple(scales)
        feat = BLOCK_OUT - 5
        first_in = 3 + 3 + 2 * head_channels + 1
        later_in = 3 + 3 + 2 * head_channels + 1 + 1 + feat + 4
        for i, c in enumerate(channels):
            self.add_module(f"block{i}", IFBlock(first_in if i == 0 else later_in, c, res_blocks))
        self.encode = Head(head_channels)

    def forward(self, img0: Tensor, img1: Tensor, timestep: float | Tensor,
                f0: Tensor | None = None, f1: Tensor | None = None) -> Tensor:
        rgb0, rgb1 = img0[:, :3].clamp(0.0, 1.0), img1[:, :3].clamp(0.0, 1.0)
        if f0 is None:
            f0 = self.encode(rgb0)
        if f1 is None:
            f1 = self.encode(rgb1)
        if isinstance(timestep, Tensor):
            t = timestep.to(rgb0.dtype).expand(rgb0.shape[0], 1, *rgb0.shape[2:])
        else:
            # Built from the input (not a constant) so graph export stores no [1, 1, H, W] plane.
            t = rgb0[:, :1] * 0.0 + float(timestep)
        w0, w1, wf0, wf1 = rgb0, rgb1, f0, f1
        flow = mask = feat = None
        last = len(self.channels) - 1
        for i, s in enumerate(self.scales):
            s = s / self.flow_scale
            block = getattr(self, f"block{i}")
            if flow is None:
                flow, mask, feat = block(torch.cat((rgb0, rgb1, f0, f1, t), 1), None, s)
            else:
                fd, mask, feat = block(torch.cat((w0, w1, wf0, wf1, t, mask, feat), 1), flow, s)
                flow = flow + fd
            if i < last:
                # Image and features share a flow: one GridSample each side instead of two.
                a = warp(torch.cat((rgb0, f0), 1), flow[:, :2])
                b = warp(torch.cat((rgb1, f1), 1), flow[:, 2:4])
                w0, wf0 = a[:, :3], a[:, 3:]
                w1, wf1 = b[:, :3], b[:, 3:]
        m = torch.sigmoid(mask)
        full0 = torch.cat((rgb0, img0[:, 3:]), 1)
        full1 = torch.cat((rgb1, img1[:, 3:]), 1)
        return warp(full0, flow[:, :2]) * m + warp(full1, flow[:, 2:4]) * (1 - m)
