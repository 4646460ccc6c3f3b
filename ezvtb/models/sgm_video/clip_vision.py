"""The OpenCLIP ViT image tower of SVD / SV3D checkpoints on transformers' `CLIPVisionModelWithProjection`.

Checkpoint keys `conditioner.embedders.0.open_clip.model.visual.*` (OpenCLIP `VisionTransformer`: conv1, class and
positional embeddings, ln_pre, resblocks with a fused `in_proj`, ln_post, `proj`) are renamed and split into the
transformers layout. The embedder's pooled, projected vector (1024-d for ViT-H-14) is the UNet's cross-attention
context. Preprocessing as upstream: resize to 224 with anti-aliasing, map [-1, 1] -> [0, 1], CLIP mean/std.
"""
from __future__ import annotations

import torch
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def vision_config(visual: dict, head_width: int | None = None):
    """transformers `CLIPVisionConfig` from OpenCLIP visual tensor shapes (ViT-H-14 uses 80-wide heads)."""
    from transformers import CLIPVisionConfig

    for k in ("conv1.weight", "positional_embedding", "proj", "transformer.resblocks.0.mlp.c_fc.weight"):
        if k not in visual:
            raise ValueError(f"checkpoint: CLIP image tower key 'visual.{k}' is missing")
    width, _, patch, _ = visual["conv1.weight"].shape
    layers = 0
    while f"transformer.resblocks.{layers}.ln_1.weight" in visual:
        layers += 1
    grid = int(round((visual["positional_embedding"].shape[0] - 1) ** 0.5))
    head_width = head_width or (80 if width == 1280 else 64)
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        projection_dim=visual["proj"].shape[1], num_hidden_layers=layers, num_attention_heads=width // head_width,
        num_channels=3, image_size=grid * patch, patch_size=patch, hidden_act="gelu", layer_norm_eps=1e-5)


def convert_clip_visual(visual: dict, expected: dict) -> dict:
    """OpenCLIP visual state dict (keys after `visual.`) -> `CLIPVisionModelWithProjection` state dict (strict)."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
        "vision_model.embeddings.class_embedding": visual["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
        "vision_model.pre_layrnorm.weight": visual["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": visual["ln_pre.bias"],
        "vision_model.post_layernorm.weight": visual["ln_post.weight"],
        "vision_model.post_layernorm.bias": visual["ln_post.bias"],
        "visual_projection.weight": visual["proj"].t().contiguous(),
    }
    used = {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
            "ln_post.weight", "ln_post.bias", "proj"}
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in visual:
        src, dst = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        q, k, v = visual[src + "attn.in_proj_weight"].chunk(3, 0)
        qb, kb, vb = visual[src + "attn.in_proj_bias"].chunk(3, 0)
        for name, w, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
            out[dst + f"self_attn.{name}.weight"], out[dst + f"self_attn.{name}.bias"] = w, b
        for s, d in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[dst + d + ".weight"], out[dst + d + ".bias"] = visual[src + s + ".weight"], visual[src + s + ".bias"]
            used |= {src + s + ".weight", src + s + ".bias"}
        used |= {src + "attn.in_proj_weight", src + "attn.in_proj_bias"}
        i += 1
    extra = sorted(set(visual) - used)
    missing = sorted(k for k in expected if k not in out and "position_ids" not in k)
    if extra or missing:
        raise ValueError(f"checkpoint: CLIP image tower layout mismatch: unexpected {extra[:5]}, missing {missing[:5]}")
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"checkpoint: CLIP tensor {k}: shape {tuple(v.shape)}, "
                             f"expected {tuple(expected[k].shape)}")
    return out


def build_clip_vision(visual: dict, head_width: int | None = None, dtype: torch.dtype = torch.float32):
    from transformers import CLIPVisionModelWithProjection

    cfg = vision_config(visual, head_width)
    cfg._attn_implementation = "sdpa"
    model = CLIPVisionModelWithProjection(cfg)
    sd = convert_clip_visual(visual, model.state_dict())
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=False)
    return model.eval()


class ImageEmbedder(nn.Module):
    """images (N, 3, H, W) in [-1, 1] -> pooled CLIP image embeddings (N, projection_dim).

    `resize=True` resizes to the tower's input size with anti-aliasing (upstream: kornia bicubic, antialias);
    exported graphs take already-resized 224x224 input, the host does the resize once per image.
    """

    def __init__(self, tower, resize: bool = True) -> None:
        super().__init__()
        self.tower = tower
        self.size = tower.config.image_size
        self.resize = resize
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        if self.resize:
            images = resize_for_clip(images, self.size)
        x = ((images + 1.0) / 2.0 - self.mean) / self.std
        return self.tower(pixel_values=x).image_embeds


def resize_for_clip(images, size: int = 224):
    """Anti-aliased bicubic resize as the upstream embedder does (diffusers' kornia-equivalent helper)."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import _resize_with_antialiasing

    return _resize_with_antialiasing(images, (size, size))
