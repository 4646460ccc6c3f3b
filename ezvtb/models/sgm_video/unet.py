"""The sgm `VideoUNet` (SVD, SV3D_u, SV3D_p) computed by diffusers' `UNetSpatioTemporalConditionModel`.

diffusers' class has the same blocks as sgm's VideoUNet (VideoResBlock = spatial ResBlock + 3-D `time_stack`
ResBlock mixed by an AlphaBlender; SpatialVideoTransformer = spatial transformer + temporal transformer over
the frames at each pixel with a sinusoidal frame embedding). What differs is only the top-level call: diffusers
embeds one "added time ids" vector per video, while SV3D_p conditions every frame on its own camera pose. So
`VideoUNet` keeps diffusers' sub-modules and calls them with sgm's inputs: one ADM vector per frame (`y`, already
sinusoidally embedded by the conditioner, width 256 / 768 / 1280), per-frame cross-attention context and an
explicit `image_only_indicator`.

`unet_key_map(hp)` pairs every sgm checkpoint key (without `model.diffusion_model.`) with its diffusers key,
generated from the hyperparameters that `UNetHyper.from_state_dict` derives from the tensor shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# sgm sub-module -> diffusers sub-module, per block kind
_RES_RENAMES = (
    ("time_stack.in_layers.0.", "temporal_res_block.norm1."),
    ("time_stack.in_layers.2.", "temporal_res_block.conv1."),
    ("time_stack.emb_layers.1.", "temporal_res_block.time_emb_proj."),
    ("time_stack.out_layers.0.", "temporal_res_block.norm2."),
    ("time_stack.out_layers.3.", "temporal_res_block.conv2."),
    ("time_mixer.", "time_mixer."),
    ("in_layers.0.", "spatial_res_block.norm1."),
    ("in_layers.2.", "spatial_res_block.conv1."),
    ("emb_layers.1.", "spatial_res_block.time_emb_proj."),
    ("out_layers.0.", "spatial_res_block.norm2."),
    ("out_layers.3.", "spatial_res_block.conv2."),
    ("skip_connection.", "spatial_res_block.conv_shortcut."),
)
_TRANSFORMER_RENAMES = (
    ("time_stack.", "temporal_transformer_blocks."),
    ("time_pos_embed.0.", "time_pos_embed.linear_1."),
    ("time_pos_embed.2.", "time_pos_embed.linear_2."),
    ("", ""),  # norm, proj_in, proj_out, transformer_blocks.*, time_mixer keep their names
)


@dataclass(frozen=True)
class UNetHyper:
    """VideoUNet hyperparameters; all but the head width are read from tensor shapes."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    transformer_depth: tuple[int, ...]
    context_dim: int
    adm_in_channels: int
    video_kernel_size: tuple[int, int, int]
    num_head_channels: int = 64

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def num_attention_heads(self) -> tuple[int, ...]:
        return tuple(max(1, c // self.num_head_channels) for c in self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads(self, ch: int) -> int:
        return max(1, ch // self.num_head_channels)

    @classmethod
    def from_state_dict(cls, sd: dict, num_head_channels: int = 64) -> "UNetHyper":
        """Derive the hyperparameters from an sgm VideoUNet state dict (keys without the UNet prefix)."""
        levels = read_unet_levels(sd, "VideoUNet", "time_stack")
        ctx_key = next((k for k in sd if k.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
        if ctx_key is None:
            raise ValueError("checkpoint: VideoUNet has no cross-attention (not an SVD/SV3D UNet)")
        return cls(**levels, context_dim=tuple(sd[ctx_key].shape)[1], num_head_channels=num_head_channels)


def read_unet_levels(sd: dict, kind: str, temporal: str) -> dict:
    """The fields every sgm video UNet shares, read from its tensor shapes (keys without the UNet prefix):
    in/out channels, model_channels, channel_mult, num_res_blocks, attention_levels, transformer_depth,
    adm_in_channels and the temporal res blocks' kernel (`temporal`: the sub-module holding them, "time_stack" in
    the VideoUNet, "time_mix_blocks" in SV4D's). `kind` names the network in errors."""

    def shape(k):
        if k not in sd:
            raise ValueError(f"checkpoint: {kind} key {k!r} is missing (not an sgm {kind}?)")
        return tuple(sd[k].shape)

    conv_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    mults, attn, depth, nrb_per_level = [], [], [], []
    i, level_blocks = 1, 0
    while f"input_blocks.{i}.0.op.weight" in sd or f"input_blocks.{i}.0.in_layers.2.weight" in sd:
        if f"input_blocks.{i}.0.op.weight" in sd:  # downsample closes a level
            nrb_per_level.append(level_blocks)
            level_blocks = 0
        else:
            if level_blocks == 0:
                ch = shape(f"input_blocks.{i}.0.in_layers.2.weight")[0]
                if ch % model_channels:
                    raise ValueError(f"checkpoint: level width {ch} is not a multiple of {model_channels}")
                mults.append(ch // model_channels)
                attn.append(f"input_blocks.{i}.1.proj_in.weight" in sd)
                n = 0
                while f"input_blocks.{i}.1.transformer_blocks.{n}.attn1.to_q.weight" in sd:
                    n += 1
                depth.append(max(n, 1))
            level_blocks += 1
        i += 1
    nrb_per_level.append(level_blocks)
    if not mults or len(set(nrb_per_level)) != 1:
        raise ValueError(f"checkpoint: irregular {kind} levels (res blocks per level {nrb_per_level})")
    return dict(in_channels=in_channels, out_channels=shape("out.2.weight")[0], model_channels=model_channels,
                channel_mult=tuple(mults), num_res_blocks=nrb_per_level[0], attention_levels=tuple(attn),
                transformer_depth=tuple(depth), adm_in_channels=shape("label_emb.0.0.weight")[1],
                video_kernel_size=shape(f"input_blocks.1.0.{temporal}.in_layers.2.weight")[2:])


def _prefix_pairs(hp: UNetHyper) -> list[tuple[str, str, str]]:
    """(sgm prefix, diffusers prefix, kind) for every sub-module; kind: plain | res | tf."""
    pairs = [
        ("time_embed.0.", "time_embedding.linear_1.", "plain"),
        ("time_embed.2.", "time_embedding.linear_2.", "plain"),
        ("label_emb.0.0.", "add_embedding.linear_1.", "plain"),
        ("label_emb.0.2.", "add_embedding.linear_2.", "plain"),
        ("input_blocks.0.0.", "conv_in.", "plain"),
        ("out.0.", "conv_norm_out.", "plain"),
        ("out.2.", "conv_out.", "plain"),
        ("middle_block.0.", "mid_block.resnets.0.", "res"),
        ("middle_block.1.", "mid_block.attentions.0.", "tf"),
        ("middle_block.2.", "mid_block.resnets.1.", "res"),
    ]
    levels, nrb = len(hp.channel_mult), hp.num_res_blocks
    i = 1
    for lv in range(levels):
        for r in range(nrb):
            pairs.append((f"input_blocks.{i}.0.", f"down_blocks.{lv}.resnets.{r}.", "res"))
            if hp.attention_levels[lv]:
                pairs.append((f"input_blocks.{i}.1.", f"down_blocks.{lv}.attentions.{r}.", "tf"))
            i += 1
        if lv < levels - 1:
            pairs.append((f"input_blocks.{i}.0.op.", f"down_blocks.{lv}.downsamplers.0.conv.", "plain"))
            i += 1
    i = 0
    for u in range(levels):
        lv = levels - 1 - u
        for r in range(nrb + 1):
            pairs.append((f"output_blocks.{i}.0.", f"up_blocks.{u}.resnets.{r}.", "res"))
            j = 1
            if hp.attention_levels[lv]:
                pairs.append((f"output_blocks.{i}.1.", f"up_blocks.{u}.attentions.{r}.", "tf"))
                j = 2
            if lv > 0 and r == nrb:
                pairs.append((f"output_blocks.{i}.{j}.conv.", f"up_blocks.{u}.upsamplers.0.conv.", "plain"))
            i += 1
    return pairs


def _rename(rest: str, kind: str) -> str | None:
    if kind == "plain":
        return rest
    table = _RES_RENAMES if kind == "res" else _TRANSFORMER_RENAMES
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def sgm_to_diffusers_key(key: str, pairs: list[tuple[str, str, str]]) -> str | None:
    """The diffusers key of one sgm VideoUNet key, or None when no block claims it."""
    best = None
    for sp, dp, kind in pairs:
        if key.startswith(sp) and (best is None or len(sp) > len(best[0])):
            best = (sp, dp, kind)
    if best is None:
        return None
    rest = _rename(key[len(best[0]):], best[2])
    return None if rest is None else best[1] + rest


def diffusers_config(hp: UNetHyper, num_frames: int = 14) -> dict:
    """Keyword arguments for `UNetSpatioTemporalConditionModel` equal to the sgm hyperparameters."""
    down = tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in hp.attention_levels)
    up = tuple("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
               for a in reversed(hp.attention_levels))
    return dict(
        in_channels=hp.in_channels,
        out_channels=hp.out_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=hp.block_out_channels,
        addition_time_embed_dim=256,  # unused: the conditioner embeds the ADM scalars (see VideoUNet)
        projection_class_embeddings_input_dim=hp.adm_in_channels,
        layers_per_block=hp.num_res_blocks,
        cross_attention_dim=hp.context_dim,
        transformer_layers_per_block=hp.transformer_depth,
        num_attention_heads=hp.num_attention_heads,
        num_frames=num_frames,
    )


def convert_unet_state_dict(sgm_sd: dict, hp: UNetHyper, expected: dict) -> dict:
    """sgm VideoUNet state dict -> diffusers state dict; strict: every key on both sides, shapes equal.

    `expected` is the diffusers model's own state dict (names and shapes to meet).
    """
    pairs = _prefix_pairs(hp)
    out, unclaimed = {}, []
    for k, v in sgm_sd.items():
        dk = sgm_to_diffusers_key(k, pairs)
        if dk is None or dk not in expected:
            unclaimed.append(k)
            continue
        if tuple(v.shape) != tuple(expected[dk].shape):
            raise ValueError(
                f"checkpoint: {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[dk].shape)} for {dk}"
            )
        out[dk] = v
    missing = sorted(set(expected) - set(out))
    if unclaimed or missing:
        raise ValueError(
            f"checkpoint: VideoUNet layout mismatch: {len(unclaimed)} unexpected keys {unclaimed[:5]}, "
            f"{len(missing)} missing diffusers keys {missing[:5]}"
        )
    return out


def diffusers_to_sgm_names(hp: UNetHyper, diffusers_keys) -> dict[str, str]:
    """Inverse map (diffusers key -> sgm key) of the same table, for writing checkpoints in the sgm layout."""
    pairs = _prefix_pairs(hp)
    inv = {}
    for sp, dp, kind in pairs:
        for dk in diffusers_keys:
            if not dk.startswith(dp):
                continue
            rest = dk[len(dp):]
            if kind == "plain":
                inv[dk] = sp + rest
                continue
            table = _RES_RENAMES if kind == "res" else _TRANSFORMER_RENAMES
            for old, new in table:
                if rest.startswith(new) and (new or old == ""):
                    inv[dk] = sp + old + rest[len(new):]
                    break
    return inv


class VideoUNet(nn.Module):
    """sgm's VideoUNet call on diffusers' modules.

    forward(x, timesteps, context, y, image_only_indicator) -> (B*T, out, H, W)
      x: (B*T, in_channels, H, W), noisy latent already concatenated with the conditioning latent
      timesteps: (B*T,) continuous c_noise values (EDM: 0.25 * ln sigma)
      context: (B*T, L, context_dim) cross-attention tokens (the CLIP image embedding, L = 1)
      y: (B*T, adm_in_channels) the per-frame ADM vector (concatenated sinusoidal embeddings)
      image_only_indicator: (B, T), 1 where a frame is a still image (AlphaBlender uses the spatial path)
    """

    def __init__(self, hp: UNetHyper, num_frames: int = 14) -> None:
        super().__init__()
        from diffusers import UNetSpatioTemporalConditionModel

        self.hp = hp
        self.net = UNetSpatioTemporalConditionModel(**diffusers_config(hp, num_frames))
        # sgm normalises every ResBlock with GroupNorm(32, eps=1e-5); diffusers builds the resnets of its
        # cross-attention down/up blocks with eps=1e-6. Use sgm's value so the same weights compute the same.
        for name, mod in self.net.named_modules():
            if isinstance(mod, nn.GroupNorm) and "res_block." in name + ".":
                mod.eps = 1e-5

    def forward(self, x, timesteps, context, y, image_only_indicator):
        net = self.net
        t_emb = net.time_proj(timesteps.reshape(-1)).to(x.dtype)
        emb = net.time_embedding(t_emb) + net.add_embedding(y.to(x.dtype))
        h = net.conv_in(x)
        ioi = image_only_indicator.to(x.dtype)
        skips = (h,)
        for block in net.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=ioi)
            else:
                h, res = block(hidden_states=h, temb=emb, image_only_indicator=ioi)
            skips += res
        h = net.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=ioi)
        for block in net.up_blocks:
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                          image_only_indicator=ioi)
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, image_only_indicator=ioi)
        return net.conv_out(net.conv_act(net.conv_norm_out(h)))


def build_video_unet(sgm_sd: dict, num_head_channels: int = 64, num_frames: int = 14,
                     dtype: torch.dtype = torch.float32) -> VideoUNet:
    """A `VideoUNet` holding the weights of an sgm VideoUNet state dict (strict)."""
    hp = UNetHyper.from_state_dict(sgm_sd, num_head_channels)
    with torch.device("meta"):
        model = VideoUNet(hp, num_frames)
    converted = convert_unet_state_dict(sgm_sd, hp, model.net.state_dict())
    model.net.load_state_dict({k: v.to(dtype) for k, v in converted.items()}, strict=True, assign=True)
    return model.eval()
