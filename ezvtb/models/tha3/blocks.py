"""Building blocks of the THA3 networks (PyTorch).

Module attribute names and ``nn.Sequential`` indices reproduce the official checkpoints' state
dict keys, so the official weights load with ``strict=True``. Every block exists in two flavours:
*separable* (depthwise kxk conv + 1x1 conv) and *standard* (one dense kxk conv).

A few blocks at the end are exact rewrites used only when exporting to ONNX (`FusedHeads`,
`ZeroInsertConvTranspose`, `concat_conv_block`, `BlockedUpsample`, `TapSplitConv`,
`PointwiseMatMul`): they compute the same function with operators
that ONNX Runtime's CPU provider runs faster. The models use them only when the exporter swaps
them in (`ezvtb.export.tha3.optimize_for_export`), so their default forward is unchanged.

Grid math (`warp`) always runs in float32, whatever the module dtype, with an identity grid built
from ``torch.arange`` (no ``F.affine_grid``: ONNX AffineGrid needs opset 20 and TensorRT lacks it).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def relu() -> nn.Module:
    return nn.ReLU()


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.1)


def conv_layers(cin: int, cout: int, k: int, separable: bool, stride: int = 1,
                transpose: bool = False) -> list[nn.Module]:
    """The convolution(s) of one block, bias-free: [depthwise, 1x1] or [dense].

    ``k=4, stride=2`` halves (``transpose=True``: doubles) the resolution; other kernels keep it.
    """
    pad = 1 if k == 4 else k // 2
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    if separable:
        return [conv(cin, cin, k, stride, pad, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False)]
    return [conv(cin, cout, k, stride, pad, bias=False)]


class ConvNormAct(nn.Sequential):
    """conv(s) -> InstanceNorm2d(affine) -> activation."""

    def __init__(self, cin: int, cout: int, k: int, separable: bool, act=relu, stride: int = 1,
                 transpose: bool = False):
        super().__init__(*conv_layers(cin, cout, k, separable, stride, transpose), nn.InstanceNorm2d(cout, affine=True),
                         act())


class ResidualBlock(nn.Module):
    """x + (conv3 -> IN -> act -> conv3 -> IN)(x); a separable conv3 is a nested [depthwise, 1x1] pair."""

    def __init__(self, channels: int, separable: bool, act=relu):
        super().__init__()

        def conv3() -> nn.Module:
            layers = conv_layers(channels, channels, 3, separable)
            return nn.Sequential(*layers) if separable else layers[0]

        self.resnet_path = nn.Sequential(
            conv3(), nn.InstanceNorm2d(channels, affine=True), act(), conv3(), nn.InstanceNorm2d(channels, affine=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.resnet_path(x)


def head(cin: int, cout: int, activation: nn.Module) -> nn.Sequential:
    """Dense 3x3 conv with bias followed by `activation` (alpha: Sigmoid, colour change: Tanh)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=True), activation)


def grid_head(cin: int) -> nn.Conv2d:
    """Dense 3x3 conv, no bias, to a 2-channel grid change."""
    return nn.Conv2d(cin, 2, 3, 1, 1, bias=False)


def tile_pose(pose: Tensor, size: int, like: Tensor) -> Tensor:
    """[N, P] pose -> [N, P, size, size] constant planes, in `like`'s dtype."""
    return pose.to(like.dtype)[:, :, None, None].expand(-1, -1, size, size)


# --- the encoder-decoder of the decomposer, combiner and morpher -------------------------------

def encoder_decoder_layers(
    image_size: int, in_channels: int, num_pose: int, bottleneck_size: int, separable: bool,
    start_channels: int = 64, max_channels: int = 512, num_bottleneck: int = 6,
) -> dict[str, nn.ModuleList]:
    """Layers of the U-less encoder-decoder: stride-2 downsampling to `bottleneck_size`, a conv
    block taking the pose planes, residual blocks, transposed-conv upsampling; ReLU throughout."""

    def channels(size: int) -> int:
        return min(start_channels * (image_size // size), max_channels)

    down = nn.ModuleList([ConvNormAct(in_channels, start_channels, 3, separable)])
    size = image_size
    while size > bottleneck_size:
        size //= 2
        down.append(ConvNormAct(channels(size * 2), channels(size), 4, separable, stride=2))
    c = channels(size)
    bottleneck = nn.ModuleList([ConvNormAct(c + num_pose, c, 3, separable)])
    bottleneck.extend(ResidualBlock(c, separable) for _ in range(num_bottleneck - 1))
    up = nn.ModuleList()
    while size < image_size:
        size *= 2
        up.append(ConvNormAct(channels(size // 2), channels(size), 4, separable, stride=2, transpose=True))
    return {"downsample_blocks": down, "bottleneck_blocks": bottleneck, "upsample_blocks": up}


def ed_encode(net: nn.Module, image: Tensor) -> Tensor:
    """Pose-independent half of an encoder-decoder holding the layers above: image -> bottleneck features."""
    x = image
    for block in net.downsample_blocks:
        x = block(x)
    return x


def ed_decode(net: nn.Module, features: Tensor, pose: Tensor | None) -> Tensor:
    """Second half: concatenate the pose planes, bottleneck, upsample -> [N, start_channels, H, W]."""
    x = features
    if pose is not None:
        x = torch.cat([x, tile_pose(pose, x.shape[-1], x)], dim=1)
    for block in net.bottleneck_blocks:
        x = block(x)
    for block in net.upsample_blocks:
        x = block(x)
    return x


class EncoderDecoder(nn.Module):
    """The ``body`` of the decomposer, combiner and separable morpher."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        for name, layers in encoder_decoder_layers(*args, **kwargs).items():
            setattr(self, name, layers)

    def forward(self, image: Tensor, pose: Tensor | None = None) -> Tensor:
        return ed_decode(self, ed_encode(self, image), pose)


# --- the resize-conv encoder-decoder (rotator) and U-Net (editor) ------------------------------

class ResizeConvEncoderDecoder(nn.Module):
    """Rotator body: 7x7 stem, stride-2 downsampling, residual blocks, nearest x2 + conv3 upsampling."""

    def __init__(self, image_size: int, in_channels: int, start_channels: int, bottleneck_size: int,
                 separable: bool, act=leaky_relu, max_channels: int = 512, num_bottleneck: int = 6):
        super().__init__()

        def channels(size: int) -> int:
            return min(start_channels * (image_size // size), max_channels)

        # Upstream builds the standard variant's downsampling blocks with default arguments, i.e. ReLU.
        down_act = act if separable else relu
        self.downsample_blocks = nn.ModuleList([ConvNormAct(in_channels, start_channels, 7, separable, act)])
        size = image_size
        while size > bottleneck_size:
            size //= 2
            self.downsample_blocks.append(ConvNormAct(channels(size * 2), channels(size), 4, separable, down_act,
                                                      stride=2))
        self.bottleneck_blocks = nn.ModuleList(ResidualBlock(channels(size), separable, act)
                                               for _ in range(num_bottleneck))
        self.upsample_blocks = nn.ModuleList()
        while size < image_size:
            size *= 2
            self.upsample_blocks.append(nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                ConvNormAct(channels(size // 2), channels(size), 3, separable, act)
            ))

    def forward(self, x: Tensor) -> Tensor:
        for block in (*self.downsample_blocks, *self.bottleneck_blocks, *self.upsample_blocks):
            x = block(x)
        return x


class ResizeConvUNet(nn.Module):
    """Editor body: like `ResizeConvEncoderDecoder` (3x3 stem) with skip connections concatenated
    after each nearest x2 upsampling."""

    def __init__(self, image_size: int, in_channels: int, start_channels: int, bottleneck_size: int,
                 separable: bool, act=leaky_relu, max_channels: int = 512, num_bottleneck: int = 6):
        super().__init__()
        down_act = act if separable else relu  # as in ResizeConvEncoderDecoder
        self.downsample_blocks = nn.ModuleList([ConvNormAct(in_channels, start_channels, 3, separable, act)])
        widths = [start_channels]
        size = image_size
        while size > bottleneck_size:
            size //= 2
            widths.append(min(max_channels, widths[-1] * 2))
            self.downsample_blocks.append(ConvNormAct(widths[-2], widths[-1], 4, separable, down_act, stride=2))
        self.bottleneck_blocks = nn.ModuleList(ResidualBlock(widths[-1], separable, act) for _ in range(num_bottleneck))
        self.upsample_blocks = nn.ModuleList(
            ConvNormAct(widths[i + 1] + widths[i], widths[i], 3, separable, act)
            for i in reversed(range(len(widths) - 1))
        )
        # Export-time rewrites: no concatenated tensor (`concat_conv_block`); `blocked_upsample`.
        self.split_skip_concat = False
        self.blocked_upsample = False

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.downsample_blocks:
            x = block(x)
            skips.append(x)
        for block in self.bottleneck_blocks:
            x = block(x)
        for block, skip in zip(self.upsample_blocks, reversed(skips[:-1])):
            x = blocked_upsample(x) if self.blocked_upsample else F.interpolate(x, scale_factor=2.0, mode="nearest")
            if self.split_skip_concat:
                x = concat_conv_block(block, [x, skip])
            else:
                x = block(torch.cat([x, skip], dim=1))
        return x


# --- image operations ---------------------------------------------------------------------------

def _grid_axis(n: int, device: torch.device | None) -> Tensor:
    """[n] float32 pixel-centre coordinates, equal bit for bit to ``F.affine_grid``'s (align_corners=False).

    affine_grid uses ``linspace(-1, 1, n) * (n - 1) / n``, whose CPU kernel computes
    ``+-1 +- step * k`` with a single rounding (fused multiply-add). The same value comes from
    float32 ops only by splitting ``step`` into a 12-bit head and a tail: both products and the
    first addition are exact, so only the last addition rounds.
    """
    if n == 1:
        return torch.zeros(1, dtype=torch.float32, device=device)
    step = float(np.float32(2.0) / np.float32(n - 1))
    mant, exp = math.frexp(step)
    head = math.ldexp(round(mant * 4096.0), exp - 12)
    tail = step - head  # exact, fits float32
    half = n // 2
    k = torch.arange(half, dtype=torch.float32, device=device)
    r = torch.arange(n - 1 - half, -1, -1, dtype=torch.float32, device=device)
    lin = torch.cat([(k * head - 1.0) + k * tail, (1.0 - r * head) - r * tail])
    return lin * float(n - 1) / float(n)


def identity_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """[1, H, W, 2] float32 sampling grid of the identity warp (align_corners=False, x first):
    pixel centres at ~(2i + 1) / size - 1, bit-identical to upstream's ``F.affine_grid`` grid.
    Built from ``arange`` (no affine_grid, no linspace) so exporters fold it to a constant."""
    xs = _grid_axis(width, device)
    ys = _grid_axis(height, device)
    return torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)[None]


def warp(image: Tensor, grid_change: Tensor) -> Tensor:
    """Resample `image` [N, C, H, W] at identity + `grid_change` [N, 2, H, W] (normalised offsets),
    bilinear, border padding, align_corners=False. Computed in float32, returned in image's dtype."""
    n, _, h, w = image.shape
    grid = identity_grid(h, w, image.device) + grid_change.float().permute(0, 2, 3, 1)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(image.dtype)


def blend(alpha: Tensor, color: Tensor, image: Tensor) -> Tensor:
    """color * alpha + image * (1 - alpha), all channels."""
    return color * alpha + image * (1 - alpha)


def blend_rgb(alpha: Tensor, color: Tensor, image: Tensor) -> Tensor:
    """`blend` on RGB; alpha channel taken from `image`."""
    return torch.cat([blend(alpha, color[:, :3], image[:, :3]), image[:, 3:4]], dim=1)


# --- export-time rewrites (same function, operators ONNX Runtime's CPU provider runs faster) ------

class FusedHeads(nn.Module):
    """Several heads reading the same features, computed as one convolution.

    Each head is a conv (`head`: conv + activation, or a bare conv like `grid_head`) with the same
    input, kernel and padding. ONNX Runtime's blocked (NCHWc) CPU convolution pads every conv's
    output channels to a multiple of 16, so separate 1-, 2- and 4-channel heads cost 4-16x their
    arithmetic; stacked into one conv they cost one padded conv. ``forward(x)`` returns the
    heads' outputs in the given order; heads without a bias get a zero bias (adding 0.0 is exact).
    """

    def __init__(self, heads: Sequence[nn.Module]):
        super().__init__()
        convs, acts = [], []
        for h in heads:
            conv, act = (h[0], h[1]) if isinstance(h, nn.Sequential) else (h, nn.Identity())
            if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
                raise ValueError(f"FusedHeads: expected dense Conv2d heads, got {conv}")
            convs.append(conv)
            acts.append(act)
        first = convs[0]
        for c in convs[1:]:
            if (c.in_channels, c.kernel_size, c.stride, c.padding, c.dilation) != (
                    first.in_channels, first.kernel_size, first.stride, first.padding, first.dilation):
                raise ValueError("FusedHeads: heads differ in input channels, kernel, stride, padding or dilation")
        self.splits = [c.out_channels for c in convs]
        self.conv = nn.Conv2d(first.in_channels, sum(self.splits), first.kernel_size, first.stride, first.padding,
                              first.dilation, bias=True).to(first.weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([c.weight for c in convs]))
            self.conv.bias.copy_(torch.cat([c.bias if c.bias is not None else torch.zeros_like(c.weight[:, 0, 0, 0])
                                            for c in convs]))
        self.acts = nn.ModuleList(acts)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [act(y) for act, y in zip(self.acts, torch.split(self.conv(x), self.splits, dim=1))]


class ZeroInsertConvTranspose(nn.Module):
    """A depthwise ``ConvTranspose2d(C, C, 4, stride=2, padding=1, groups=C, bias=False)`` (the
    encoder-decoders' upsampling) computed as a depthwise Conv2d with the spatially flipped
    kernel over the zero-inserted input: x at rows and columns 2, 4, ..., 2H of a (2H+3)^2 map
    of zeros. The same sums.

    The zero insertion is itself a transposed conv, but a trivial one: the input padded by 1,
    channels folded into the batch, a 1x1 all-ones ConvTranspose2d of stride 2. ONNX Runtime's
    CPU ConvTranspose runs a depthwise layer one small GEMM per channel; this form is faster,
    zeros included (measured in benchmarks/bench_tha_rewrites.py).
    """

    def __init__(self, convt: nn.ConvTranspose2d):
        super().__init__()
        c = convt.in_channels
        if not (isinstance(convt, nn.ConvTranspose2d) and convt.groups == c == convt.out_channels
                and convt.bias is None and convt.stride == (2, 2) and convt.kernel_size == (4, 4)
                and convt.padding == (1, 1) and convt.dilation == (1, 1) and convt.output_padding == (0, 0)):
            raise ValueError(f"ZeroInsertConvTranspose: expected a depthwise ConvTranspose2d(4, 2, 1), got {convt}")
        self.register_buffer("weight", torch.flip(convt.weight.detach(), [2, 3]).clone())

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        xp = F.pad(x, (1, 1, 1, 1)).reshape(n * c, 1, h + 2, w + 2)
        one = torch.ones(1, 1, 1, 1, dtype=x.dtype, device=x.device)
        y = F.conv_transpose2d(xp, one, stride=2).reshape(n, c, 2 * h + 3, 2 * w + 3)
        return F.conv2d(y, self.weight, groups=c)


def concat_conv_block(block: nn.Sequential, parts: Sequence[Tensor]) -> Tensor:
    """``block(torch.cat(parts, dim=1))`` for a `ConvNormAct` block, without the concatenation.

    A depthwise conv acts on each channel alone and a 1x1 (or dense) conv is a sum over input
    channels, so the block's convolutions split over the parts' channel ranges and their results
    add up. ONNX Runtime then skips a large Concat and its layout reorder (the editor's U-Net skips).
    """
    layers = list(block)
    n_conv = 2 if len(layers) == 4 else 1  # separable [dw, 1x1, norm, act] or standard [conv, norm, act]
    convs, rest = layers[:n_conv], layers[n_conv:]
    y, start = None, 0
    for part in parts:
        stop = start + part.shape[1]
        if n_conv == 2:
            dw, pw = convs
            t = F.conv2d(part, dw.weight[start:stop], None, dw.stride, dw.padding, dw.dilation, stop - start)
            t = F.conv2d(t, pw.weight[:, start:stop], None, pw.stride, pw.padding, pw.dilation)
        else:
            conv = convs[0]
            t = F.conv2d(part, conv.weight[:, start:stop], None, conv.stride, conv.padding, conv.dilation)
        y = t if y is None else y + t
        start = stop
    for layer in rest:
        y = layer(y)
    return y


def blocked_upsample(x: Tensor) -> Tensor:
    """Nearest x2 upsampling after an identity depthwise 1x1 conv (weights 1.0: exact).

    ONNX Runtime's NCHWc layout transform runs an upsample blocked only when its input already
    is blocked, which a conv's output is; otherwise it upsamples in NCHW and then reorders the 4x
    larger result for the next conv. With the identity conv in front it reorders the small input
    and upsamples in the blocked layout.
    """
    c = x.shape[1]
    identity = torch.ones(c, 1, 1, 1, dtype=x.dtype, device=x.device)
    return F.interpolate(F.conv2d(x, identity, groups=c), scale_factor=2.0, mode="nearest")


class BlockedUpsample(nn.Module):
    """`blocked_upsample` as a module (replaces ``nn.Upsample(scale_factor=2, mode="nearest")``)."""

    def forward(self, x: Tensor) -> Tensor:
        return blocked_upsample(x)


class TapSplitConv(nn.Module):
    """A dense k x k conv (stride 1, padding k // 2) with few output channels, computed as one
    1x1 conv to k*k*Cout channels (one group per kernel tap) plus the sum of the k*k shifted
    slices: the same sums.

    ONNX Runtime's blocked convolution pads the output channels to 16: a 2-channel 3x3 head costs
    16 * 9 * Cin multiply-adds per pixel, its 1x1 conv to 18 channels (padded to 32) 32 * Cin.
    Worth it for one narrow head (the rotator's grid change), not for the fused heads.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        co, ci, kh, kw = conv.weight.shape
        if not (isinstance(conv, nn.Conv2d) and conv.groups == 1 and kh == kw and kh % 2 == 1
                and conv.stride == (1, 1) and conv.padding == (kh // 2, kh // 2) and conv.dilation == (1, 1)):
            raise ValueError(f"TapSplitConv: expected a dense odd k x k conv with 'same' padding, got {conv}")
        self.k, self.out_channels = kh, co
        w = conv.weight.detach()
        self.register_buffer("weight", w.permute(2, 3, 0, 1).reshape(kh * kw * co, ci, 1, 1).clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone().view(1, co, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        k, co = self.k, self.out_channels
        taps = F.conv2d(x, self.weight, padding=k // 2)  # zero border: the conv's zero padding
        y = None
        for t in range(k * k):
            dy, dx = divmod(t, k)
            part = taps[:, t * co:(t + 1) * co, dy:dy + h, dx:dx + w]
            y = part if y is None else y + part
        return y if self.bias is None else y + self.bias


class PointwiseMatMul(nn.Module):
    """A bias-free 1x1 ``Conv2d`` as a MatMul of its [Cout, Cin] weight with the [Cin, H*W] input.

    ONNX Runtime runs a MatMul in the plain NCHW layout. In the encoders, where a block's 1x1 conv
    doubles the channels (or follows a stem conv that already runs in NCHW), this moves the
    layout reorder before the InstanceNorm onto the narrower input, or removes it.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is None):
            raise ValueError(f"PointwiseMatMul: expected a bias-free 1x1 Conv2d, got {conv}")
        self.register_buffer("weight", conv.weight.detach()[:, :, 0, 0].clone())

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return torch.matmul(self.weight, x.reshape(n, c, h * w)).reshape(n, -1, h, w)
