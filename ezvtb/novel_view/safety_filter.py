"""The sampling scripts' safety filter (upstream generative-models `DeepFloydDataFiltering`), on transformers.

Per frame: centre-crop to a square, anti-aliased bicubic resize to the tower's input size (224), CLIP mean/std,
OpenAI CLIP ViT-L/14 projected image features (`encode_image`, 768-d, not L2-normalised, rounded to float16 as
upstream), then two logistic heads: ``p = sigmoid(features @ weights.T + biases)`` from `p_head_v1.npz` and
`w_head_v1.npz` (arrays ``weights`` (D,) or (1, D) and ``biases``). A frame whose p score is over `p_threshold`
(0.5) is Gaussian-blurred (kernel 99, sigma 100, reflect padding); then one whose w score is over `w_threshold`
(0.5) is blurred (again). Frames are (N, 3, H, W) in [0, 1], as `do_sample` returns them.

Weights (none are bundled): the CLIP ViT-L/14 image tower as a transformers folder (``openai/clip-vit-large-patch14``
layout, safetensors) or OpenAI clip's state dict (``visual.*`` keys; `.safetensors`, or a `.pt`/`.pth` state dict
loaded weights-only; a TorchScript archive must first be saved as its ``state_dict()``), and the two `.npz` heads.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ezvtb.models.sgm_video.clip_vision import CLIP_MEAN, CLIP_STD, convert_clip_visual, vision_config

log = logging.getLogger("ezvtb.novel_view.safety_filter")

BLUR_KERNEL, BLUR_SIGMA = 99, 100.0
HEAD_FILES = {"p_head": "p_head_v1.npz", "w_head": "w_head_v1.npz"}
# OpenAI CLIP's text tower and shared scalars: present in a full CLIP state dict, not needed by the filter.
_TEXT_KEYS = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
              "logit_scale")


def load_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(weights (D,), bias ()) of one logistic head from an `.npz` with arrays `weights` and `biases`."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"filter head: no file at {p} (upstream's p_head_v1.npz / w_head_v1.npz)")
    with np.load(p, allow_pickle=False) as z:
        if "weights" not in z.files or "biases" not in z.files:
            raise ValueError(f"filter head: {p} needs arrays 'weights' and 'biases', has {z.files}")
        w, b = np.asarray(z["weights"], np.float32), np.asarray(z["biases"], np.float32)
    if w.ndim == 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 1 or b.size != 1:
        raise ValueError(f"filter head: {p}: expected weights (D,) or (1, D) and one bias, got weights "
                         f"{w.shape}, biases {b.shape}")
    return w, b.reshape(())


def load_clip_vision_tower(path: str | os.PathLike):
    """transformers `CLIPVisionModelWithProjection` from a transformers folder (safetensors) or an OpenAI clip
    state dict file (`visual.*` keys, strict; OpenAI's towers use QuickGELU)."""
    from transformers import CLIPVisionModelWithProjection

    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"filter clip: {p} is a folder without config.json (expected a transformers CLIP "
                             "folder such as openai/clip-vit-large-patch14)")
        return CLIPVisionModelWithProjection.from_pretrained(p, use_safetensors=True).eval()
    if not p.is_file():
        raise FileNotFoundError(f"filter clip: no file or folder at {p}")
    from ezvtb.weights.wheel import CheckpointFileError, load_checkpoint

    try:
        sd = load_checkpoint(p, argument="filter clip")
    except CheckpointFileError as e:
        if p.suffix == ".safetensors":
            raise
        raise ValueError(f"{e} (OpenAI's ViT-L-14.pt is a TorchScript archive: save "
                         "torch.jit.load(...).state_dict() as .safetensors first)") from None
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"filter clip: {p} does not hold a state dict")
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    other = sorted(k for k in sd if not k.startswith("visual.") and not k.startswith(_TEXT_KEYS))
    if not visual or other:
        raise ValueError(f"filter clip: {p} is not an OpenAI CLIP state dict (visual.* keys: {len(visual)}, "
                         f"unexpected keys {other[:5]})")
    return build_openai_clip_vision(visual)


def build_openai_clip_vision(visual: dict):
    """`CLIPVisionModelWithProjection` from OpenAI clip visual tensors (keys after `visual.`), loaded strictly."""
    from transformers import CLIPVisionModelWithProjection

    cfg = vision_config(visual, head_width=64)
    cfg.hidden_act = "quick_gelu"
    cfg._attn_implementation = "sdpa"
    model = CLIPVisionModelWithProjection(cfg)
    sd = convert_clip_visual(visual, model.state_dict())  # raises on a missing / unexpected key or a bad shape
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)  # only position_ids left out
    return model.eval()


def gaussian_blur(images: torch.Tensor, kernel_size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding (torchvision's GaussianBlur semantics)."""
    r = kernel_size // 2
    if min(images.shape[-2:]) <= r:
        raise ValueError(f"images: the blur (kernel {kernel_size}) needs frames larger than {r} px, got "
                         f"{tuple(images.shape[-2:])}")
    x = torch.linspace(-r, r, kernel_size, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(images.dtype)
    n, c, h, w = images.shape
    y = torch.nn.functional.pad(images.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


class SafetyFilter:
    """Callable frames -> frames (see module docstring); `scores(frames)` gives the (p, w) probabilities."""

    def __init__(self, tower, p_head: tuple[np.ndarray, np.ndarray], w_head: tuple[np.ndarray, np.ndarray],
                 p_threshold: float = 0.5, w_threshold: float = 0.5, verbose: bool = False) -> None:
        dim = tower.config.projection_dim
        for name, (w, _) in (("p_head", p_head), ("w_head", w_head)):
            if w.shape != (dim,):
                raise ValueError(f"{name}: weights of {w.shape[0]} features, the CLIP tower gives {dim}")
        self.tower = tower.eval()
        self.p_head, self.w_head = p_head, w_head
        self.p_threshold, self.w_threshold = float(p_threshold), float(w_threshold)
        self.verbose = verbose
        self.size = tower.config.image_size

    @classmethod
    def from_files(cls, clip, p_head, w_head, **kw: Any) -> "SafetyFilter":
        return cls(load_clip_vision_tower(clip), load_head(p_head), load_head(w_head), **kw)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        s = min(h, w)
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        x = images[..., top:top + s, left:left + s].float()
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False,
                                            antialias=True)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, D) projected CLIP image features, rounded to float16 as upstream."""
        x = self.preprocess(images.detach().cpu())
        dev = next(self.tower.parameters()).device
        f = self.tower(pixel_values=x.to(dev)).image_embeds.float().cpu().numpy()
        return f.astype(np.float16).astype(np.float32)

    @staticmethod
    def _proba(feats: np.ndarray, head: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        logits = (feats @ head[0] + head[1]).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logits))

    def scores(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feats = self.features(images)
        return self._proba(feats, self.p_head), self._proba(feats, self.w_head)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected (N, 3, H, W) frames in [0, 1], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        p, w = self.scores(images)
        if self.verbose:
            log.info("safety filter: p %s, w %s", np.round(p, 3), np.round(w, 3))
        out = images.clone()
        for name, score, thr in (("p", p, self.p_threshold), ("w", w, self.w_threshold)):
            hit = torch.from_numpy(score > thr)
            if hit.any():
                log.warning("safety filter: %s score over %.2f on frames %s: blurred", name, thr,
                            hit.nonzero().flatten().tolist())
                out[hit] = gaussian_blur(out[hit])
        return out


def load_safety_filter(weights, **kw: Any) -> SafetyFilter:
    """`weights`: a dict {"clip": ..., "p_head": ..., "w_head": ...} of paths, or a folder holding
    `p_head_v1.npz`, `w_head_v1.npz` and the CLIP tower (the folder itself as a transformers folder, or one
    `*.safetensors` / `*.pt` OpenAI clip state dict in it)."""
    if isinstance(weights, dict):
        missing = [k for k in ("clip", "p_head", "w_head") if k not in weights]
        if missing:
            raise ValueError(f"filter_weights: missing {missing} (expected keys clip, p_head, w_head)")
        return SafetyFilter.from_files(weights["clip"], weights["p_head"], weights["w_head"], **kw)
    folder = Path(weights)
    if not folder.is_dir():
        raise ValueError(f"filter_weights: expected a folder or a dict of paths (clip, p_head, w_head), got "
                         f"{weights!r}")
    heads = {k: folder / f for k, f in HEAD_FILES.items()}
    if (folder / "config.json").is_file():
        clip = folder
    else:
        cands = sorted(q for q in folder.iterdir() if q.suffix in (".safetensors", ".pt", ".pth"))
        if len(cands) != 1:
            raise ValueError(f"filter_weights: {folder} needs one CLIP ViT-L/14 weights file (*.safetensors / *.pt) "
                             f"or a transformers config.json, found {[q.name for q in cands]}")
        clip = cands[0]
    return SafetyFilter.from_files(clip, heads["p_head"], heads["w_head"], **kw)
