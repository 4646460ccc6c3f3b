"""Tiny random SVD / SV3D checkpoints in the official single-file key layout, from references independent of ours.

* VAE encoder / decoder (2-D): CompVis `ldm.modules.diffusionmodules.model.Encoder/Decoder` from
  stable-diffusion-sdkit, the layout sgm inherits; their state dicts are written as-is.
* UNet: diffusers' `UNetSpatioTemporalConditionModel` with all parameters re-randomised, written in sgm names
  (the key manifest test checks those names against upstream's at full size), or CompVis' 2-D `UNetModel`.
* CLIP tower: OpenCLIP-layout tensors (fused in_proj), checked against a torch `MultiheadAttention` reference.
Every parameter is re-randomised: upstream zero-initialises output convs, which would make comparisons trivial.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ezvtb.models.sgm_video.unet import UNetHyper, VideoUNet, diffusers_to_sgm_names

TINY_UNET = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(True, True),
                 transformer_depth=(1, 1), context_dim=32, in_channels=8, out_channels=4,
                 video_kernel_size=(3, 1, 1), num_head_channels=16)
ADM = {"sv3d_u": 256, "sv3d_p": 1280, "svd": 768}  # the real ADM widths (the variant is detected from them)


def randomise_(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Re-draw every parameter: weights ~ N(0, scale/fan_in), 1-D params ~ N(0, 0.2) (+1 for norm scales),
    AlphaBlender mix factors explicit values in [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mix_factor"):
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 2)
            elif p.ndim >= 2:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) * (scale / math.sqrt(fan_in)))
            elif "norm" in name and name.endswith("weight") or name.endswith(("ln_1.weight", "ln_2.weight")):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def tiny_unet(adm: int, seed: int = 0, num_frames: int = 5) -> tuple[dict, VideoUNet]:
    """(sgm-layout state dict, the diffusers-backed reference model it was written from)."""
    hp = UNetHyper(adm_in_channels=adm, **TINY_UNET)
    ref = randomise_(VideoUNet(hp, num_frames), seed).eval()
    names = diffusers_to_sgm_names(hp, ref.net.state_dict().keys())
    sd = {names[k]: v.clone() for k, v in ref.net.state_dict().items()}
    return sd, ref


def ldm_vae_parts(seed: int = 1, ch: int = 32, ch_mult=(1, 2, 4, 4), z: int = 4, num_res_blocks: int = 1):
    """CompVis Encoder / Decoder (re-randomised) and a quant_conv, as sgm stores them."""
    from ldm.modules.diffusionmodules.model import Decoder, Encoder

    dd = dict(double_z=True, z_channels=z, resolution=64, in_channels=3, out_ch=3, ch=ch, ch_mult=list(ch_mult),
              num_res_blocks=num_res_blocks, attn_resolutions=[], dropout=0.0, attn_type="vanilla")
    enc = randomise_(Encoder(**dd), seed).eval()
    dec = randomise_(Decoder(**dd), seed + 1).eval()
    quant = randomise_(nn.Conv2d(2 * z, 2 * z, 1), seed + 2).eval()
    return enc, quant, dec


def clip_visual_tensors(seed: int = 2, width: int = 64, layers: int = 2, patch: int = 32, image: int = 224,
                        embed: int = 32) -> dict:
    """OpenCLIP VisionTransformer tensors (keys after `visual.`)."""
    g = torch.Generator().manual_seed(seed)
    def r(*s, sc=None):
        return torch.randn(*s, generator=g) * (sc if sc is not None else 1 / math.sqrt(s[-1]))

    grid = image // patch
    t = {"conv1.weight": r(width, 3, patch, patch, sc=1 / math.sqrt(3 * patch * patch)),
         "class_embedding": r(width, sc=0.5), "positional_embedding": r(grid * grid + 1, width, sc=0.5),
         "ln_pre.weight": 1 + 0.1 * r(width, sc=1), "ln_pre.bias": r(width, sc=0.1),
         "ln_post.weight": 1 + 0.1 * r(width, sc=1), "ln_post.bias": r(width, sc=0.1), "proj": r(width, embed)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        t.update({p + "ln_1.weight": 1 + 0.1 * r(width, sc=1), p + "ln_1.bias": r(width, sc=0.1),
                  p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width, sc=0.1),
                  p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width, sc=0.1),
                  p + "ln_2.weight": 1 + 0.1 * r(width, sc=1), p + "ln_2.bias": r(width, sc=0.1),
                  p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width, sc=0.1),
                  p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width, sc=0.1)})
    return t


def openclip_reference(visual: dict, images: torch.Tensor, heads: int) -> torch.Tensor:
    """OpenCLIP's ViT forward written with torch primitives (nn.MultiheadAttention consumes the fused in_proj)."""
    import torch.nn.functional as F

    w = visual["conv1.weight"]
    width, patch = w.shape[0], w.shape[2]
    x = F.conv2d(images, w, stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([visual["class_embedding"].expand(x.shape[0], 1, -1), x], 1) + visual["positional_embedding"]
    x = F.layer_norm(x, (width,), visual["ln_pre.weight"], visual["ln_pre.bias"])
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in visual:
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(width, heads, batch_first=True)
        mha.load_state_dict({"in_proj_weight": visual[p + "attn.in_proj_weight"],
                             "in_proj_bias": visual[p + "attn.in_proj_bias"],
                             "out_proj.weight": visual[p + "attn.out_proj.weight"],
                             "out_proj.bias": visual[p + "attn.out_proj.bias"]})
        h = F.layer_norm(x, (width,), visual[p + "ln_1.weight"], visual[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (width,), visual[p + "ln_2.weight"], visual[p + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, visual[p + "mlp.c_fc.weight"], visual[p + "mlp.c_fc.bias"])),
                     visual[p + "mlp.c_proj.weight"], visual[p + "mlp.c_proj.bias"])
        x = x + h
        i += 1
    x = F.layer_norm(x[:, 0], (width,), visual["ln_post.weight"], visual["ln_post.bias"])
    return x @ visual["proj"]


def tiny_checkpoint(variant: str = "sv3d_p", seed: int = 0, video_decoder_sd: dict | None = None) -> dict:
    """A full tiny checkpoint dict in the official layout (all prefixes)."""
    unet_sd, _ = tiny_unet(ADM[variant], seed)
    enc, quant, dec = ldm_vae_parts(seed + 10)
    enc_i = {"sv3d_u": 1, "sv3d_p": 1, "svd": 3}[variant]
    sd = {"model.diffusion_model." + k: v for k, v in unet_sd.items()}
    sd.update({f"conditioner.embedders.{enc_i}.encoder.encoder." + k: v for k, v in enc.state_dict().items()})
    sd.update({f"conditioner.embedders.{enc_i}.encoder.quant_conv." + k: v for k, v in quant.state_dict().items()})
    dec_sd = video_decoder_sd if video_decoder_sd is not None else dec.state_dict()
    sd.update({"first_stage_model.decoder." + k: v for k, v in dec_sd.items()})
    sd.update({"conditioner.embedders.0.open_clip.model.visual." + k: v
               for k, v in clip_visual_tensors(seed + 20).items()})
    sd["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.tensor(4.6)
    return {k: v.contiguous() for k, v in sd.items()}
