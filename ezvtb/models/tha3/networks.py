"""The five THA3 sub-networks (separable and standard), built, detected and loaded from checkpoints.

Each module's ``forward`` takes the inputs of the upstream module and returns the same list of
outputs in the same order (tensors NCHW, images RGBA in [-1, 1], linear RGB):

    decomposer(image [N,4,128,128]) -> 6: eyebrow_layer, eyebrow_layer_alpha, eyebrow_layer_color_change,
        background_layer, background_layer_alpha, background_layer_color_change
    combiner(background_layer, eyebrow_layer [N,4,128,128], pose [N,12]) -> 8: eyebrow_image, combine_alpha,
        eyebrow_image_no_combine_alpha, morphed_eyebrow_layer, morphed_eyebrow_layer_alpha,
        morphed_eyebrow_layer_color_change, warped_eyebrow_layer, morphed_eyebrow_layer_grid_change
    morpher(image [N,4,192,192], pose [N,27]) -> 7: output_image, eye_alpha, eye_color_change,
        iris_mouth_image_1, iris_mouth_alpha, iris_mouth_color_change, iris_mouth_image_0
    rotator(image [N,4,256,256], pose [N,6]) -> 3: direct_image, warped_image, grid_change
    editor(original, warped [N,4,512,512], grid_change [N,2,512,512], pose [N,6]) -> 5: output_image,
        color_change_alpha, color_change, warped_image, grid_change

Poses may be float32 while the module is half: they are cast inside. Grid sampling runs in float32.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ezvtb.models.tha3.blocks import (
    EncoderDecoder,
    FusedHeads,
    ResizeConvEncoderDecoder,
    ResizeConvUNet,
    blend,
    blend_rgb,
    ed_decode,
    ed_encode,
    encoder_decoder_layers,
    grid_head,
    head,
    tile_pose,
    warp,
)
from ezvtb.models.tha3.spec import STAGES, VARIANTS
from ezvtb.weights.wheel import WeightsError, load_checkpoint


class CheckpointMismatchError(WeightsError, ValueError):
    """A checkpoint is not the THA3 network (stage/variant) it was loaded as."""


class _Heads:
    """The output heads of a network (attribute names in `HEADS`), all reading the same features.

    `fuse_heads` (an export-time rewrite) computes them as one convolution (`FusedHeads`);
    by default each head module runs on its own, exactly as upstream.
    """

    HEADS: tuple[str, ...] = ()

    def heads(self, x: Tensor) -> list[Tensor]:
        fused = self._modules.get("fused_heads")
        if fused is not None:
            return fused(x)
        return [getattr(self, name)(x) for name in self.HEADS]

    def fuse_heads(self) -> None:
        self.fused_heads = FusedHeads([getattr(self, name) for name in self.HEADS])


def _separable(variant: str) -> bool:
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {list(VARIANTS)}, got {variant!r}")
    return variant == "separable"


class EyebrowDecomposer(_Heads, nn.Module):
    """Splits the 128x128 head crop into an eyebrow layer and a background layer."""

    HEADS = ("background_layer_alpha", "background_layer_color_change", "eyebrow_layer_alpha",
             "eyebrow_layer_color_change")

    def __init__(self, variant: str = "separable"):
        super().__init__()
        self.variant = variant
        self.body = EncoderDecoder(128, 4, 0, 16, _separable(variant))
        self.background_layer_alpha = head(64, 1, nn.Sigmoid())
        self.background_layer_color_change = head(64, 4, nn.Tanh())
        self.eyebrow_layer_alpha = head(64, 1, nn.Sigmoid())
        self.eyebrow_layer_color_change = head(64, 4, nn.Tanh())

    def forward(self, image: Tensor) -> list[Tensor]:
        bg_alpha, bg_change, eb_alpha, eb_change = self.heads(self.body(image))
        return [
            blend(eb_alpha, image, eb_change), eb_alpha, eb_change,
            blend(bg_alpha, bg_change, image), bg_alpha, bg_change,
        ]


class EyebrowMorphingCombiner(_Heads, nn.Module):
    """Warps and recolours the eyebrow layer for the 12 eyebrow parameters and composites it."""

    HEADS = ("morphed_eyebrow_layer_grid_change", "morphed_eyebrow_layer_alpha",
             "morphed_eyebrow_layer_color_change", "combine_alpha")

    def __init__(self, variant: str = "separable"):
        super().__init__()
        self.variant = variant
        self.body = EncoderDecoder(128, 8, 12, 16, _separable(variant))
        self.morphed_eyebrow_layer_grid_change = grid_head(64)
        self.morphed_eyebrow_layer_alpha = head(64, 1, nn.Sigmoid())
        self.morphed_eyebrow_layer_color_change = head(64, 4, nn.Tanh())
        self.combine_alpha = head(64, 1, nn.Sigmoid())

    def forward(self, background_layer: Tensor, eyebrow_layer: Tensor, pose: Tensor) -> list[Tensor]:
        x = self.body(torch.cat([background_layer, eyebrow_layer], dim=1), pose)
        grid_change, alpha, change, combine_alpha = self.heads(x)
        warped = warp(eyebrow_layer, grid_change)
        morphed = blend(alpha, change, warped)
        return [
            blend_rgb(combine_alpha, morphed, background_layer),
            combine_alpha,
            blend_rgb((morphed[:, 3:4] + 1.0) / 2.0, morphed, background_layer),
            morphed, alpha, change, warped, grid_change,
        ]


class FaceMorpher(_Heads, nn.Module):
    """Eye, iris and mouth expressions on the 192x192 face crop (27 parameters).

    `encode` is the pose-independent encoder ([N,512,24,24]); ``forward(image, pose)`` equals
    ``decode(image, encode(image), pose)``. The standard variant (upstream FaceMorpher08) keeps
    its encoder-decoder layers at the top level (no ``body.`` key prefix).
    """

    HEADS = ("iris_mouth_grid_change", "iris_mouth_color_change", "iris_mouth_alpha", "eye_color_change",
             "eye_alpha")

    def __init__(self, variant: str = "separable"):
        super().__init__()
        self.variant = variant
        if _separable(variant):
            self.body = EncoderDecoder(192, 4, 27, 24, True)
        else:
            for name, layers in encoder_decoder_layers(192, 4, 27, 24, False).items():
                setattr(self, name, layers)
        self.iris_mouth_grid_change = grid_head(64)
        self.iris_mouth_color_change = head(64, 4, nn.Tanh())
        self.iris_mouth_alpha = head(64, 1, nn.Sigmoid())
        self.eye_color_change = head(64, 4, nn.Tanh())
        self.eye_alpha = head(64, 1, nn.Sigmoid())

    def _net(self) -> nn.Module:
        return self.body if self.variant == "separable" else self

    def encode(self, image: Tensor) -> Tensor:
        """[N,4,192,192] face crop -> [N,512,24,24] features (independent of the pose)."""
        return ed_encode(self._net(), image)

    def decode(self, image: Tensor, features: Tensor, pose: Tensor) -> list[Tensor]:
        """The 7 outputs of `forward` from the crop, its `encode` features and the [N,27] pose."""
        grid_change, im_change, im_alpha, eye_change, eye_alpha = self.heads(ed_decode(self._net(), features, pose))
        image_0 = warp(image, grid_change)
        image_1 = blend(im_alpha, im_change, image_0)
        return [blend(eye_alpha, eye_change, image_1), eye_alpha, eye_change, image_1, im_alpha, im_change, image_0]

    def forward(self, image: Tensor, pose: Tensor) -> list[Tensor]:
        return self.decode(image, self.encode(image), pose)


class FaceBodyRotator(nn.Module):
    """Head, neck and body rotation + breathing (6 parameters) at 256x256, by warping (upstream
    TwoAlgoFaceBodyRotator05); the directly generated image (output 0) is unused by the poser."""

    def __init__(self, variant: str = "separable"):
        super().__init__()
        self.variant = variant
        self.encoder_decoder = ResizeConvEncoderDecoder(256, 4 + 6, 64, 32, _separable(variant))
        self.direct_creator = head(64, 4, nn.Tanh())
        self.grid_change_creator = grid_head(64)

    def forward(self, image: Tensor, pose: Tensor) -> list[Tensor]:
        x = self.encoder_decoder(torch.cat([image, tile_pose(pose, image.shape[-1], image)], dim=1))
        grid_change = self.grid_change_creator(x)
        return [self.direct_creator(x), warp(image, grid_change), grid_change]


class Editor(_Heads, nn.Module):
    """Refines the rotation at 512x512: warps the full-resolution image with a corrected grid and
    applies a colour fix (upstream Editor07)."""

    HEADS = ("grid_change_creator", "color_change_creator", "alpha_creator")

    def __init__(self, variant: str = "separable"):
        super().__init__()
        self.variant = variant
        self.body = ResizeConvUNet(512, 4 + 4 + 2 + 6, 32, 64, _separable(variant))
        self.color_change_creator = head(32, 4, nn.Tanh())
        self.alpha_creator = head(32, 4, nn.Sigmoid())
        self.grid_change_creator = grid_head(32)

    def forward(self, original: Tensor, warped: Tensor, grid_change: Tensor, pose: Tensor) -> list[Tensor]:
        x = self.body(torch.cat([original, warped, grid_change, tile_pose(pose, original.shape[-1], original)], dim=1))
        delta, change, alpha = self.heads(x)
        grid = grid_change + delta
        warped_out = warp(original, grid)
        return [blend(alpha, change, warped_out), alpha, change, warped_out, grid]


NETWORKS: dict[str, type[nn.Module]] = {
    "decomposer": EyebrowDecomposer,
    "combiner": EyebrowMorphingCombiner,
    "morpher": FaceMorpher,
    "rotator": FaceBodyRotator,
    "editor": Editor,
}


def build_tha3_network(stage: str, variant: str) -> nn.Module:
    """The architecture of one THA3 sub-network with random initialisation (train mode, float32)."""
    if stage not in NETWORKS:
        raise ValueError(f"stage: expected one of {list(STAGES)}, got {stage!r}")
    _separable(variant)
    return NETWORKS[stage](variant)


# Head tensors that identify each network's checkpoint.
_SIGNATURES = (
    ("rotator", "grid_change_creator.weight", "encoder_decoder."),
    ("editor", "alpha_creator.0.weight", "body."),
    ("morpher", "iris_mouth_grid_change.weight", "body."),
    ("morpher", "iris_mouth_grid_change.weight", ""),  # standard FaceMorpher08: no body. prefix
    ("combiner", "combine_alpha.0.weight", "body."),
    ("decomposer", "background_layer_alpha.0.weight", "body."),
)


def detect_tha3_network(state_dict: Mapping[str, Tensor]) -> tuple[str, str]:
    """(stage, variant) of a THA3 state dict, from its keys and tensor shapes (never a file name).

    A separable network's first block is [depthwise conv, 1x1 conv, norm, act], a standard one's
    [conv, norm, act]: the rank of ``<prefix>downsample_blocks.0.1.weight`` (4-D conv vs 1-D norm)
    tells them apart. Raises ValueError for anything else.
    """
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict: expected a mapping of tensor names to tensors, got {type(state_dict).__name__}")
    for stage, head_key, prefix in _SIGNATURES:
        probe = state_dict.get(f"{prefix}downsample_blocks.0.1.weight")
        if head_key in state_dict and probe is not None and hasattr(probe, "dim"):
            return stage, "separable" if probe.dim() == 4 else "standard"
    sample = sorted(state_dict)[:4]
    raise ValueError(f"state_dict: not a THA3 network checkpoint ({len(state_dict)} tensors, first keys {sample})")


def _mismatch_summary(module: nn.Module, state_dict: Mapping[str, Tensor]) -> str:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            parts.append(f"{len(items)} {label} (e.g. {items[:3]})")
    return "; ".join(parts) or "load_state_dict refused it"


def load_tha3_network(
    stage: str | None,
    variant: str | None,
    source: str | os.PathLike | Mapping[str, Tensor],
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build one THA3 network and load `source` (a checkpoint path or a state dict) with strict=True.

    `stage`/`variant` None: detected from the state dict; given: checked against it. Paths are
    read with `ezvtb.weights.load_checkpoint` (``weights_only=True``). Returns the module in eval
    mode, without gradients, cast to `dtype`. Raises `CheckpointMismatchError` (a WeightsError
    and a ValueError) naming the file when the checkpoint does not fit.
    """
    if isinstance(source, (str, os.PathLike)):
        what = repr(os.fspath(source))
        state_dict = load_checkpoint(source)
    elif isinstance(source, Mapping):
        what, state_dict = "state dict", source
    else:
        raise ValueError(f"source: expected a checkpoint path or a state dict, got {type(source).__name__}")
    if stage is not None and stage not in NETWORKS:
        raise ValueError(f"stage: expected one of {list(STAGES)} or None, got {stage!r}")
    if variant is not None:
        _separable(variant)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    try:
        found = detect_tha3_network(state_dict)
    except ValueError as e:
        raise CheckpointMismatchError(f"{what}: {e}") from None
    if (stage or found[0], variant or found[1]) != found:
        raise CheckpointMismatchError(
            f"{what}: expected a THA3 {variant or found[1]} {stage or found[0]} checkpoint, "
            f"but it holds a {found[1]} {found[0]}"
        )
    module = build_tha3_network(*found)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError:
        raise CheckpointMismatchError(
            f"{what}: does not fit the THA3 {found[1]} {found[0]}: {_mismatch_summary(module, state_dict)}"
        ) from None
    return module.to(dtype).eval().requires_grad_(False)
