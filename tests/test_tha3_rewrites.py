"""Export-time rewrites of the THA3 networks compute the same function as the plain modules.

Small random modules only (fast); the real networks' exported graphs are checked against torch
and upstream in test_export_tha3.py.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from ezvtb.models.tha3.blocks import (
    ConvNormAct,
    FusedHeads,
    PointwiseMatMul,
    TapSplitConv,
    ZeroInsertConvTranspose,
    blocked_upsample,
    concat_conv_block,
    grid_head,
    head,
)
from ezvtb.models.tha3.networks import build_tha3_network


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels,size", [(16, 5), (32, 8)])
def test_zero_insert_conv_transpose_equals_depthwise_conv_transpose(channels, size):
    t = nn.ConvTranspose2d(channels, channels, 4, 2, 1, groups=channels, bias=False)
    with torch.no_grad():
        t.weight.copy_(_rand(*t.weight.shape, seed=1))
    z = ZeroInsertConvTranspose(t)
    x = _rand(2, channels, size, size + 3, seed=2)
    with torch.no_grad():
        a, b = t(x), z(x)
    assert a.shape == b.shape == (2, channels, 2 * size, 2 * (size + 3))
    assert (a - b).abs().max().item() < 1e-5


def test_zero_insert_conv_transpose_refuses_other_layers():
    for bad in (nn.ConvTranspose2d(8, 8, 4, 2, 1, bias=False),  # dense
                nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=8, bias=True),
                nn.ConvTranspose2d(8, 8, 3, 1, 1, groups=8, bias=False)):
        with pytest.raises(ValueError, match="depthwise ConvTranspose2d"):
            ZeroInsertConvTranspose(bad)


def test_fused_heads_equal_the_separate_heads():
    heads = [head(8, 1, nn.Sigmoid()), grid_head(8), head(8, 4, nn.Tanh())]
    for i, h in enumerate(heads):
        for p in h.parameters():
            with torch.no_grad():
                p.copy_(_rand(*p.shape, seed=10 + i))
    fused = FusedHeads(heads)
    x = _rand(1, 8, 6, 7, seed=3)
    with torch.no_grad():
        got = fused(x)
        want = [h(x) for h in heads]
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-5 * max(1.0, w.abs().max().item())
    with pytest.raises(ValueError, match="differ"):
        FusedHeads([head(8, 1, nn.Sigmoid()), head(4, 1, nn.Sigmoid())])


@pytest.mark.parametrize("separable", [True, False])
def test_concat_conv_block_equals_the_block_on_the_concatenation(separable):
    block = ConvNormAct(12, 8, 3, separable).eval()
    for i, p in enumerate(block.parameters()):
        with torch.no_grad():
            p.copy_(_rand(*p.shape, seed=20 + i) * 0.5 + (1.0 if p.dim() == 1 and i % 2 == 0 else 0.0))
    a, b = _rand(1, 5, 9, 9, seed=4), _rand(1, 7, 9, 9, seed=5)
    with torch.no_grad():
        want = block(torch.cat([a, b], 1))
        got = concat_conv_block(block, [a, b])
    assert (got - want).abs().max().item() < 1e-5


def test_paste_by_concatenation_equals_slice_assignment():
    from ezvtb.models.tha3.poser import _paste
    from ezvtb.models.tha3.spec import EYEBROW_IN_FACE, FACE_BOX

    image, face = _rand(1, 4, 512, 512, seed=11), _rand(1, 4, 192, 192, seed=12)
    eyebrow = _rand(1, 4, 128, 128, seed=13)
    want = image.clone()
    want[(..., *FACE_BOX)] = face
    assert torch.equal(_paste(image, face, FACE_BOX), want)
    crop = image[(..., *FACE_BOX)]
    want = crop.clone()
    want[(..., *EYEBROW_IN_FACE)] = eyebrow
    assert torch.equal(_paste(crop, eyebrow, EYEBROW_IN_FACE), want)


def test_pointwise_matmul_equals_the_1x1_conv():
    conv = nn.Conv2d(6, 10, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(_rand(*conv.weight.shape, seed=40))
    x = _rand(1, 6, 5, 7, seed=41)
    with torch.no_grad():
        assert (PointwiseMatMul(conv)(x) - conv(x)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="1x1"):
        PointwiseMatMul(nn.Conv2d(6, 10, 3, bias=False))


def test_blocked_upsample_is_nearest_upsampling():
    x = _rand(1, 16, 5, 6, seed=8)
    assert torch.equal(blocked_upsample(x), F.interpolate(x, scale_factor=2.0, mode="nearest"))


@pytest.mark.parametrize("bias", [False, True])
def test_tap_split_conv_equals_the_conv(bias):
    conv = nn.Conv2d(8, 2, 3, 1, 1, bias=bias)
    for i, p in enumerate(conv.parameters()):
        with torch.no_grad():
            p.copy_(_rand(*p.shape, seed=30 + i))
    x = _rand(1, 8, 7, 9, seed=9)
    with torch.no_grad():
        assert (TapSplitConv(conv)(x) - conv(x)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="same"):
        TapSplitConv(nn.Conv2d(8, 2, 3, 1, 0))


@pytest.mark.slow  # runs the five rewritten networks (random weights) at full size
def test_optimize_for_export_rewrites_a_copy_and_keeps_the_function():
    from ezvtb.export.tha3 import REWRITES, optimize_for_export
    from ezvtb.models.tha3.poser import ThaPoser

    torch.manual_seed(0)
    nets = {s: build_tha3_network(s, "separable").eval() for s in ("decomposer", "combiner", "morpher", "rotator",
                                                                     "editor")}
    poser = ThaPoser("separable", nets)
    fast = optimize_for_export(poser)
    # the original is untouched
    assert poser.editor._modules.get("fused_heads") is None and not poser.editor.body.split_skip_concat
    assert isinstance(poser.morpher.body.upsample_blocks[0][0], nn.ConvTranspose2d)
    # the copy is rewritten
    assert isinstance(fast.editor.fused_heads, FusedHeads) and fast.editor.body.split_skip_concat
    assert isinstance(fast.combiner.body.upsample_blocks[2][0], ZeroInsertConvTranspose)
    assert fast.editor.body.blocked_upsample and isinstance(fast.rotator.grid_change_creator, TapSplitConv)
    assert fast.paste_by_concat and not poser.paste_by_concat
    assert isinstance(fast.rotator.encoder_decoder.downsample_blocks[0][1], PointwiseMatMul)
    assert isinstance(fast.morpher.body.downsample_blocks[3][1], PointwiseMatMul)
    g = torch.Generator().manual_seed(7)

    def img(size, channels=4):
        return torch.rand(1, channels, size, size, generator=g) * 2 - 1

    inputs = {"decomposer": (img(128),), "combiner": (img(128), img(128), torch.rand(1, 12, generator=g)),
              "morpher": (img(192), torch.rand(1, 27, generator=g)),
              "rotator": (img(256), torch.rand(1, 6, generator=g)),
              "editor": (img(512), img(512), img(512, 2) * 0.1, torch.rand(1, 6, generator=g))}
    with torch.no_grad():
        for stage, xs in inputs.items():
            for a, b in zip(getattr(poser, stage)(*xs), getattr(fast, stage)(*xs), strict=True):
                assert (a - b).abs().max().item() < 1e-3, stage
    assert optimize_for_export(poser, ()).editor._modules.get("fused_heads") is None
    with pytest.raises(ValueError, match="unknown"):
        optimize_for_export(poser, (*REWRITES, "nonsense"))
