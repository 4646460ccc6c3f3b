"""The KL-f8 autoencoder of SVD / SV3D / SV4D checkpoints on diffusers' classes.

sgm keys (`encoder.*` / `decoder.*` of `sgm.modules.diffusionmodules.model` and
`sgm.modules.autoencoding.temporal_ae.VideoDecoder`) are renamed to diffusers' `AutoencoderKL` (SV3D, SV4D:
plain 2-D decoder, no post_quant_conv) or `AutoencoderKLTemporalDecoder` (SVD: the decoder mixes frames with 3-D
convolutions and learned AlphaBlenders). The cond-frame encoder lives in the conditioner
(`conditioner.embedders.N.encoder.{encoder,quant_conv}.*`, an `AutoencoderKLModeOnly`); its posterior mode is the
conditioning latent (scale 1.0), while samples are decoded after dividing by 0.18215.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_RES = (("nin_shortcut.", "conv_shortcut."), ("", ""))
_VIDEO_RES = (
    ("time_stack.in_layers.0.", "temporal_res_block.norm1."),
    ("time_stack.in_layers.2.", "temporal_res_block.conv1."),
    ("time_stack.out_layers.0.", "temporal_res_block.norm2."),
    ("time_stack.out_layers.3.", "temporal_res_block.conv2."),
    ("mix_factor", "time_mixer.mix_factor"),
    ("nin_shortcut.", "spatial_res_block.conv_shortcut."),
    ("", "spatial_res_block."),
)
_ATTN = (("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0."))


@dataclass(frozen=True)
class VAEHyper:
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    video_decoder: bool

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @classmethod
    def from_decoder(cls, dec: dict) -> "VAEHyper":
        """Sizes from a decoder state dict (keys without `decoder.`)."""
        if "conv_in.weight" not in dec or "up.0.block.0.conv1.weight" not in dec:
            raise ValueError("checkpoint: first-stage decoder keys missing (conv_in / up.0.block.0)")
        levels = 0
        while f"up.{levels}.block.0.conv1.weight" in dec:
            levels += 1
        ch = dec["conv_out.weight"].shape[1]
        mult = tuple(dec[f"up.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
        nrb = 0
        while f"up.0.block.{nrb}.conv1.weight" in dec:
            nrb += 1
        return cls(ch, mult, nrb - 1, dec["conv_in.weight"].shape[1], "conv_out.time_mix_conv.weight" in dec)


def _map(key: str, pairs, table) -> str | None:
    for sp, dp in pairs:
        if key.startswith(sp):
            rest = key[len(sp):]
            for old, new in table:
                if rest.startswith(old):
                    return dp + new + rest[len(old):]
            return None
    return None


def _encoder_pairs(hp: VAEHyper):
    pairs = [("conv_in.", "conv_in."), ("conv_out.", "conv_out."), ("norm_out.", "conv_norm_out."),
             ("mid.block_1.", "mid_block.resnets.0."), ("mid.block_2.", "mid_block.resnets.1."),
             ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(len(hp.ch_mult)):
        pairs.append((f"down.{i}.downsample.conv.", f"down_blocks.{i}.downsamplers.0.conv."))
        for j in range(hp.num_res_blocks):
            pairs.append((f"down.{i}.block.{j}.", f"down_blocks.{i}.resnets.{j}."))
    return pairs


def _decoder_pairs(hp: VAEHyper):
    pairs = [("conv_in.", "conv_in."), ("conv_out.time_mix_conv.", "time_conv_out."), ("conv_out.", "conv_out."),
             ("norm_out.", "conv_norm_out."), ("mid.block_1.", "mid_block.resnets.0."),
             ("mid.block_2.", "mid_block.resnets.1."), ("mid.attn_1.", "mid_block.attentions.0.")]
    n = len(hp.ch_mult)
    for i in range(n):
        pairs.append((f"up.{i}.upsample.conv.", f"up_blocks.{n - 1 - i}.upsamplers.0.conv."))
        for j in range(hp.num_res_blocks + 1):
            pairs.append((f"up.{i}.block.{j}.", f"up_blocks.{n - 1 - i}.resnets.{j}."))
    return pairs


def _convert_part(sd: dict, pairs, res_table, prefix: str) -> tuple[dict, list]:
    out, bad = {}, []
    for k, v in sd.items():
        if ".attn_1." in "." + k:
            dk = _map(k, pairs, _ATTN)
            if dk is not None and v.ndim == 4:  # 1x1 conv -> linear
                v = v[:, :, 0, 0]
        elif "conv_in." in k or "conv_out." in k or "norm_out." in k or "sample.conv." in k:
            dk = _map(k, pairs, (("", ""),))
        else:
            dk = _map(k, pairs, res_table)
        if dk is None:
            bad.append(prefix + k)
        else:
            out[prefix + dk] = v
    return out, bad


def convert_vae_state_dict(encoder: dict, quant_conv: dict, decoder: dict, hp: VAEHyper, expected: dict) -> dict:
    """sgm encoder / quant_conv / decoder tensors -> diffusers VAE state dict; strict on names and shapes."""
    enc, bad1 = _convert_part(encoder, _encoder_pairs(hp), _RES, "encoder.")
    dec, bad2 = _convert_part(decoder, _decoder_pairs(hp), _VIDEO_RES if hp.video_decoder else _RES, "decoder.")
    out = {**enc, **dec, **{"quant_conv." + k: v for k, v in quant_conv.items()}}
    missing = sorted(set(expected) - set(out))
    extra = bad1 + bad2 + sorted(set(out) - set(expected))
    if missing or extra:
        raise ValueError(f"checkpoint: VAE layout mismatch: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {extra[:5]} ({len(extra)})")
    for k, v in out.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"checkpoint: VAE tensor {k}: shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    return out


def build_vae(encoder: dict, quant_conv: dict, decoder: dict, dtype: torch.dtype = torch.float32):
    """diffusers `AutoencoderKL` (2-D decoder) or `AutoencoderKLTemporalDecoder` with the checkpoint's weights."""
    from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

    hp = VAEHyper.from_decoder(decoder)
    common = dict(in_channels=3, out_channels=3, block_out_channels=hp.block_out_channels,
                  layers_per_block=hp.num_res_blocks, latent_channels=hp.z_channels, scaling_factor=0.18215)
    if hp.video_decoder and hp.num_res_blocks != 2:
        raise ValueError(f"checkpoint: temporal VAE decoder with {hp.num_res_blocks} res blocks per level; "
                         "diffusers' AutoencoderKLTemporalDecoder (sgm's two-block mid) needs 2")
    with torch.device("meta"):
        if hp.video_decoder:
            vae = AutoencoderKLTemporalDecoder(
                down_block_types=("DownEncoderBlock2D",) * len(hp.ch_mult), **common)
        else:
            vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * len(hp.ch_mult),
                                up_block_types=("UpDecoderBlock2D",) * len(hp.ch_mult),
                                use_post_quant_conv=False, **common)
    sd = convert_vae_state_dict(encoder, quant_conv, decoder, hp, vae.state_dict())
    vae.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    return vae.eval()


class VAEEncodeMode(torch.nn.Module):
    """images (N, 3, H, W) in [-1, 1] -> posterior mode (N, z, H/8, W/8), unscaled (SVD/SV3D cond latents)."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images):
        moments = self.vae.quant_conv(self.vae.encoder(images))
        return moments[:, : moments.shape[1] // 2]


class VAEDecode(torch.nn.Module):
    """latents (N, z, h, w) already divided by the scale factor -> images (N, 3, 8h, 8w) in about [-1, 1].

    With a temporal decoder the N latents are one clip of N frames (the graph is built per frame count).
    """

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae
        self.temporal = hasattr(vae.decoder, "time_conv_out")

    def forward(self, latents):
        if self.temporal:
            return self.vae.decode(latents, num_frames=latents.shape[0]).sample
        return self.vae.decode(latents).sample
