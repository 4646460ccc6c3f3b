"""Pure-PyTorch THA3 reference pipeline: the five networks plus upstream's poser glue.

This is the reference the exported stage graphs are checked against. Its stage methods mirror
the stage graphs of `ezvtb.models.tha3.spec` (minus the uint8 conversion, done by
`image_to_tensor` / `tensor_to_image`):

    decompose(image)                                  -> eyebrow_background_layer, eyebrow_layer
    combine(image, background, eyebrow, eyebrow_pose) -> face_crop [1,4,192,192], face_features [1,512,24,24]
    morph(image, face_crop, face_features, face_pose) -> face_morphed_full [1,4,512,512], face_morphed_half
    rotate(face_morphed_half, rotation_pose)          -> warped_image, grid_change (upsampled to 512)
    edit(face_morphed_full, warped, grid, rotation_pose) -> image [1,4,512,512]

Images are RGBA float tensors in [-1, 1] with linear RGB (upstream's model space).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ezvtb.models.tha3.networks import NETWORKS, load_tha3_network
from ezvtb.models.tha3.spec import EYEBROW_BOX, EYEBROW_IN_FACE, FACE_BOX, STAGES

EYEBROW_SLICE = slice(0, 12)
FACE_SLICE = slice(12, 39)
ROTATION_SLICE = slice(39, 45)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.003130804953560372, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055)


def image_to_tensor(bgra: np.ndarray) -> Tensor:
    """uint8 [H, W, 4] BGRA (cv2) -> float32 [1, 4, H, W] RGBA in [-1, 1], RGB sRGB-decoded to linear.

    As upstream's ``tha3.util``: pixels with alpha = 0 become RGBA 0 first (so -1 everywhere),
    the conversion runs in float64, the result is cast to float32. The returned tensor owns a new
    buffer laid out HWC (channels-last strides), the layout upstream's conversion produces: some
    CPU kernels (bilinear resize) round differently per layout, and the warps downstream amplify
    1e-7 input differences to ~1e-4, so identical layouts are what makes results bit-identical.
    """
    if not isinstance(bgra, np.ndarray) or bgra.dtype != np.uint8 or bgra.ndim != 3 or bgra.shape[2] != 4:
        got = f"{bgra.dtype} {bgra.shape}" if isinstance(bgra, np.ndarray) else type(bgra).__name__
        raise ValueError(f"bgra: expected a uint8 (H, W, 4) BGRA array, got {got}")
    rgba = bgra[:, :, [2, 1, 0, 3]].astype(np.float64) / 255.0
    rgba[bgra[:, :, 3] == 0] = 0.0
    rgba[:, :, :3] = _srgb_to_linear(rgba[:, :, :3])
    hwc = np.ascontiguousarray((rgba * 2.0 - 1.0).astype(np.float32))
    return torch.from_numpy(hwc).permute(2, 0, 1)[None]


def tensor_to_image(image: Tensor) -> np.ndarray:
    """[1, 4, H, W] or [4, H, W] RGBA in [-1, 1] (linear RGB) -> new uint8 [H, W, 4] BGRA array.

    (x + 1) / 2, RGB linear -> sRGB with clipping, alpha clipped to [0, 1], x 255 rounded to
    nearest (upstream's manual poser does the same).
    """
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or image.shape[-3] != 4 or (
        image.dim() == 4 and image.shape[0] != 1
    ):
        got = f"{tuple(image.shape)}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image: expected a [1, 4, H, W] or [4, H, W] tensor, got {got}")
    x = (image.detach().reshape(4, *image.shape[-2:]).float().cpu().numpy().astype(np.float64) + 1.0) / 2.0
    rgba = np.concatenate([_linear_to_srgb(x[:3]), np.clip(x[3:], 0.0, 1.0)], axis=0)
    bgra = rgba[[2, 1, 0, 3]].transpose(1, 2, 0)
    return np.ascontiguousarray(np.rint(bgra * 255.0).astype(np.uint8))


def _resize(x: Tensor, size: int) -> Tensor:
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _paste(image: Tensor, patch: Tensor, box: tuple[slice, slice]) -> Tensor:
    """A new tensor: `image` with `patch` at `box` (rows, cols), built by concatenation.

    The same values as clone + slice assignment; exported, it is a few Concats instead of a
    ScatterND over the whole image (used by the exporter, see `ThaPoser.paste_by_concat`).
    """
    rows, cols = box
    middle = torch.cat([image[..., rows, :cols.start], patch, image[..., rows, cols.stop:]], dim=-1)
    return torch.cat([image[..., :rows.start, :], middle, image[..., rows.stop:, :]], dim=-2)


class ThaPoser(nn.Module):
    """The full THA3 pose pipeline with upstream's glue (crops, pastes, 512 <-> 256 resizes).

    `weights` maps each stage name to a checkpoint path, a state dict or an already built network
    (e.g. ``ezvtb.weights.tha3.tha3_weights()``; a network passed in is used, and cast, in place).
    ``poser(image, pose)`` returns the final image [1, 4, 512, 512] in [-1, 1]. `dtype` float16
    casts the networks (grid sampling stays float32). Given the same input tensor (see
    `image_to_tensor`), the float32 result is bit-identical to upstream's poser on CPU.
    """

    def __init__(self, variant: str, weights: Mapping[str, str | os.PathLike | Mapping | nn.Module],
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        missing = [s for s in STAGES if s not in weights]
        if missing:
            raise ValueError(f"weights: expected an entry for each of {list(STAGES)}, missing {missing}")
        self.variant = variant
        for stage in STAGES:
            src = weights[stage]
            if isinstance(src, nn.Module):
                if getattr(src, "variant", variant) != variant or not isinstance(src, NETWORKS[stage]):
                    raise ValueError(f"weights[{stage!r}]: expected a {variant} {NETWORKS[stage].__name__}, "
                                     f"got {getattr(src, 'variant', '?')} {type(src).__name__}")
                net = src.to(dtype)
            else:
                net = load_tha3_network(stage, variant, src, dtype)
            self.add_module(stage, net)
        # Export-time rewrite (ezvtb.export.tha3): paste crops by concatenation. Off here: in
        # eager PyTorch the clone keeps upstream's memory layout, which its results depend on.
        self.paste_by_concat = False
        self.eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # --- stages, mirroring the exported stage graphs --------------------------------------------

    def decompose(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """512 image -> (eyebrow_background_layer, eyebrow_layer), each [1,4,128,128]."""
        out = self.decomposer(image[(..., *EYEBROW_BOX)])
        return out[3], out[0]

    def combine(self, image: Tensor, background: Tensor, eyebrow: Tensor,
                eyebrow_pose: Tensor) -> tuple[Tensor, Tensor]:
        """-> (face_crop [1,4,192,192] with the morphed eyebrows pasted in, face_features [1,512,24,24])."""
        eyebrow_image = self.combiner(background, eyebrow, eyebrow_pose)[2]
        if self.paste_by_concat:
            crop = _paste(image[(..., *FACE_BOX)], eyebrow_image, EYEBROW_IN_FACE)
        else:
            crop = image[(..., *FACE_BOX)].clone()
            crop[(..., *EYEBROW_IN_FACE)] = eyebrow_image
        return crop, self.morpher.encode(crop)

    def morph(self, image: Tensor, face_crop: Tensor, face_features: Tensor,
              face_pose: Tensor) -> tuple[Tensor, Tensor]:
        """-> (face_morphed_full [1,4,512,512], face_morphed_half [1,4,256,256])."""
        face = self.morpher.decode(face_crop, face_features, face_pose)[0]
        if self.paste_by_concat:
            full = _paste(image, face, FACE_BOX)
        else:
            full = image.clone()
            full[(..., *FACE_BOX)] = face
        return full, _resize(full, 256)

    def rotate(self, face_morphed_half: Tensor, rotation_pose: Tensor) -> tuple[Tensor, Tensor]:
        """-> (warped_image [1,4,512,512], grid_change [1,2,512,512]), upsampled from 256."""
        out = self.rotator(face_morphed_half, rotation_pose)
        return _resize(out[1], 512), _resize(out[2], 512)

    def edit(self, face_morphed_full: Tensor, warped: Tensor, grid_change: Tensor, rotation_pose: Tensor) -> Tensor:
        """-> final image [1,4,512,512] in [-1, 1]."""
        return self.editor(face_morphed_full, warped, grid_change, rotation_pose)[0]

    def forward(self, image: Tensor, pose: Tensor) -> Tensor:
        """image [1,4,512,512] in [-1,1], pose [1,45] or [45] -> posed image [1,4,512,512]."""
        if image.dim() != 4 or tuple(image.shape[1:]) != (4, 512, 512):
            raise ValueError(f"image: expected a [N, 4, 512, 512] tensor, got {tuple(image.shape)}")
        pose = pose.reshape(-1, 45) if pose.numel() % 45 == 0 and pose.numel() > 0 else pose
        if pose.dim() != 2 or pose.shape[1] != 45:
            raise ValueError(f"pose: expected 45 floats, shape [45] or [N, 45], got {tuple(pose.shape)}")
        image = image.to(self.dtype)
        background, eyebrow = self.decompose(image)
        crop, features = self.combine(image, background, eyebrow, pose[:, EYEBROW_SLICE])
        full, half = self.morph(image, crop, features, pose[:, FACE_SLICE])
        warped, grid = self.rotate(half, pose[:, ROTATION_SLICE])
        return self.edit(full, warped, grid, pose[:, ROTATION_SLICE])
