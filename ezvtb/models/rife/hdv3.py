"""RIFE HDv3 (ECCV2022-RIFE ``train_log/IFNet_HDv3.py``, v3.x): fixed t = 0.5, PReLU, 3 IFBlocks.

State-dict layout (after stripping ``module.``), per block ``block{i}`` (i = 0..2, c = 90):

    conv0.{0,1}.0.weight/bias, conv0.{0,1}.1.weight     Conv 3x3 s2 + PReLU (cin -> c/2 -> c)
    convblock{0..3}.{0,1}.0.weight/bias, .1.weight        2 x (Conv 3x3 + PReLU), residual
    conv1.0.weight/bias, conv1.1.weight, conv1.2.*        ConvT c -> c/2, PReLU, ConvT c/2 -> 4 (flow)
    conv2.0.weight/bias, conv2.1.weight, conv2.2.*        ConvT c -> c/2, PReLU, ConvT c/2 -> 1 (mask)

cin = 11: warped img0, warped img1 (3 + 3), mask (1), flow (4). The checkpoint also holds
``block_tea``, the training-time teacher block (cin = 14: it also sees the ground-truth middle
frame); inference never runs it, so the loader ignores it (see `ezvtb.models.rife.loader`).
Each block runs twice (frames in both orders) and the two estimates are averaged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ezvtb.models.rife.blocks import rescale, swap_flow, warp

HDV3_SCALES = (4, 2, 1)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def _deconv_head(c: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.PReLU(c // 2),
                         nn.ConvTranspose2d(c // 2, cout, 4, 2, 1))


class HDv3Block(nn.Module):
    """One coarse-to-fine step: (images, mask, flow) at 1/scale -> flow and mask residuals."""

    def __init__(self, cin: int, c: int, res_blocks: int = 4):
        super().__init__()
        self.conv0 = nn.Sequential(_conv(cin, c // 2, 2), _conv(c // 2, c, 2))
        for j in range(res_blocks):
            self.add_module(f"convblock{j}", nn.Sequential(_conv(c, c), _conv(c, c)))
        self.res_blocks = res_blocks
        self.conv1 = _deconv_head(c, 4)
        self.conv2 = _deconv_head(c, 1)

    def forward(self, x: Tensor, flow: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
        """x [N, 7, H, W] (img0, img1, mask) and flow [N, 4, H, W], or x [N, 6, H, W] and flow None
        (the first block, where mask and flow are zero: their input channels are dropped from the
        first convolution instead of feeding zeros). Returns (flow, mask) residuals at H x W."""
        x = rescale(x, 1.0 / scale)
        first = self.conv0[0]
        if flow is None:
            conv = first[0]
            feat = first[1](F.conv2d(x, conv.weight[:, : x.shape[1]], conv.bias, conv.stride, conv.padding))
        else:
            x = torch.cat((x, rescale(flow, 1.0 / scale) * (1.0 / scale)), 1)
            feat = first(x)
        feat = self.conv0[1](feat)
        for j in range(self.res_blocks):
            feat = getattr(self, f"convblock{j}")(feat) + feat
        flow, mask = self.heads(feat)
        return rescale(flow, scale) * scale, rescale(mask, scale)

    def heads(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """Flow [N, 4, 4h, 4w] and mask [N, 1, 4h, 4w] residuals from the features [N, c, h, w]."""
        return self.conv1(feat), self.conv2(feat)


class IFNetHDv3(nn.Module):
    """IFNet of RIFE HDv3: ``net(img0, img1)`` -> the frame at t = 0.5.

    img0, img1: [N, C, H, W] float in [0, 1], C >= 3; the first 3 channels are RGB and drive the
    flow estimation; all C channels (RGB + alpha) are warped with the final flows and blended with
    the final mask. H and W must be multiples of 32. Returns [N, C, H, W].

    flow_scale (attribute, default 1): the resolution at which flow is estimated, as the ``scale``
    of RIFE's reference inference: every block sees its inputs at 1/(block scale / flow_scale)
    and its flow and mask are upsampled back; the warps and the final blend stay at full size.
    0.5 estimates flow on a 4x smaller grid. H x flow_scale and W x flow_scale must be multiples of 32.

    Export-time options (attributes, `ezvtb.export.rife.optimize_for_export`):
    batch_orders: each block's two passes (frames in both orders) run as one batch of 2: the same
        computation, in half the operator calls.
    carry_at_block_resolution: not exact. Flow and mask stay at the resolution of the block that
        produced them, upsampled x2 to the next block's; the frames are downscaled to each block's
        resolution and warped there, and only the final flow is brought to full size for the
        final warp. The reference warps at full size after every block and downscales the warped
        frames again (same sampling, most of the full-size work removed).
    """

    version = "hdv3"
    flow_scale = 1.0
    batch_orders = False
    carry_at_block_resolution = False

    def __init__(self, channels: tuple[int, ...] = (90, 90, 90), in_channels: int = 11, res_blocks: int = 4):
        super().__init__()
        if len(channels) != len(HDV3_SCALES):
            raise ValueError(f"channels: expected {len(HDV3_SCALES)} blocks, got {channels}")
        self.channels = tuple(channels)
        for i, c in enumerate(channels):
            self.add_module(f"block{i}", HDv3Block(in_channels, c, res_blocks))

    def _both_orders(self, block: HDv3Block, w0: Tensor, w1: Tensor, mask: Tensor | None, flow: Tensor | None,
                     scale: float) -> tuple[Tensor, Tensor]:
        """The block on (w0, w1) and on (w1, w0); the averaged (flow, mask) residuals."""
        x0 = torch.cat((w0, w1), 1) if mask is None else torch.cat((w0, w1, mask), 1)
        x1 = torch.cat((w1, w0), 1) if mask is None else torch.cat((w1, w0, -mask), 1)
        rev = None if flow is None else swap_flow(flow)
        if self.batch_orders:
            n = x0.shape[0]
            f, m = block(torch.cat((x0, x1), 0), None if flow is None else torch.cat((flow, rev), 0), scale)
            f0, f1, m0, m1 = f[:n], f[n:], m[:n], m[n:]
        else:
            f0, m0 = block(x0, flow, scale)
            f1, m1 = block(x1, rev, scale)
        return (f0 + swap_flow(f1)) * 0.5, (m0 - m1) * 0.5

    def forward(self, img0: Tensor, img1: Tensor) -> Tensor:
        rgb0, rgb1 = img0[:, :3], img1[:, :3]
        w0, w1 = rgb0, rgb1
        flow = mask = None
        scales = [s / self.flow_scale for s in HDV3_SCALES]
        last = len(scales) - 1
        low = self.carry_at_block_resolution
        for i, s in enumerate(scales):
            block = getattr(self, f"block{i}")
            if low:  # frames at this block's resolution; flow and mask from the previous block's
                w0, w1 = rescale(rgb0, 1.0 / s), rescale(rgb1, 1.0 / s)
                if flow is not None:
                    up = scales[i - 1] / s
                    flow, mask = rescale(flow, up) * up, rescale(mask, up)
                    w0, w1 = warp(w0, flow[:, :2]), warp(w1, flow[:, 2:4])
            df, dm = self._both_orders(block, w0, w1, mask, flow, 1.0 if low else s)
            flow, mask = (df, dm) if flow is None else (flow + df, mask + dm)
            if not low and i < last:
                w0 = warp(rgb0, flow[:, :2])
                w1 = warp(rgb1, flow[:, 2:4])
        if low:
            flow, mask = rescale(flow, scales[-1]) * scales[-1], rescale(mask, scales[-1])
        m = torch.sigmoid(mask)
        return warp(img0, flow[:, :2]) * m + warp(img1, flow[:, 2:4]) * (1 - m)
