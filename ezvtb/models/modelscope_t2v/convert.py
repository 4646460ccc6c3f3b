"""Converters from the original ModelScope text-to-video checkpoints to library classes.

* `convert_unet`: ``text2video_pytorch_model.pth`` (ModelScope ``UNetSD``; the ResBlocks' temporal
  convolution is spelled ``temopral_conv``) -> diffusers ``UNet3DConditionModel``.
* `convert_vae`: the ``first_stage_model.`` part of ``VQGAN_autoencoder.pth["state_dict"]``
  (latent-diffusion's KL-f8 ``AutoencoderKL``) -> diffusers ``AutoencoderKL``.
* `convert_text_encoder`: ``open_clip_pytorch_model.bin`` (OpenCLIP ViT-H-14) -> transformers
  ``CLIPTextModel`` holding the text tower up to its *penultimate* block, whose
  ``last_hidden_state`` (after ``final_layer_norm``) is ModelScope's conditioning.

Every converter derives the sizes from tensor shapes, uses every key of its source (the few that
the original pipeline ignores are named and dropped explicitly) and returns ``(config,
state_dict)`` for a strict ``load_state_dict``. Layout problems raise `ConversionError` naming
the key.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

log = logging.getLogger(__name__)

GROUPS = 32  # GroupNorm groups, fixed by all three originals
VAE_SCALING_FACTOR = 0.18215
TEMPORAL_IN_HEADS = 8  # heads of the first temporal transformer (diffusers fixes it at 8)
OPEN_CLIP_HEAD_WIDTH = 64  # OpenCLIP text towers use 64-wide heads


class ConversionError(ValueError):
    """A checkpoint does not have the expected key layout."""


def _sub(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _need(sd: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in sd:
        raise ConversionError(f"{what}: key {key!r} is missing")
    return sd[key]


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------
_RES_RENAMES = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
_TEMPORAL_CONV_SPELLINGS = ("temopral_conv.", "temporal_conv.")


def _element_kind(sd: Mapping[str, Any], prefix: str) -> str:
    """What the ModuleList element at `prefix` is: res, spatial, temporal, down or up."""
    if prefix + "in_layers.0.weight" in sd:
        return "res"
    w = sd.get(prefix + "proj_in.weight")
    if w is not None:
        return "spatial" if w.ndim == 2 else "temporal"
    if prefix + "op.weight" in sd:
        return "down"
    if prefix + "conv.weight" in sd:
        return "up"
    raise ConversionError(f"UNet: cannot tell what {prefix.rstrip('.')!r} is (no known key under it)")


def _indices(sd: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd for m in [rx.match(k)] if m})


def _unet_plan(sd: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Structure of an original UNetSD state dict: (sizes, [(src prefix, dst prefix, kind)])."""
    plan: list[tuple[str, str, str]] = [
        ("time_embed.0.", "time_embedding.linear_1.", "plain"),
        ("time_embed.2.", "time_embedding.linear_2.", "plain"),
        ("input_blocks.0.0.", "conv_in.", "plain"),
        ("out.0.", "conv_norm_out.", "plain"),
        ("out.2.", "conv_out.", "plain"),
    ]
    if "input_blocks.0.0.weight" not in sd:
        heads = sorted({str(k).split(".", 1)[0] for k in sd})
        inner = sd.get("state_dict") if isinstance(sd.get("state_dict"), Mapping) else sd
        looks = " (an autoencoder: its keys are a VAE's)" if {"encoder", "decoder", "first_stage_model"} \
            & {str(k).split(".", 1)[0] for k in inner} else ""
        raise ConversionError(f"UNet: no 'input_blocks.0.0.weight': not a ModelScope UNetSD state dict{looks}; "
                              f"its top-level keys: {heads[:6]}")
    if "input_blocks.0.1.proj_in.weight" not in sd:
        raise ConversionError(
            "UNet: key 'input_blocks.0.1.proj_in.weight' is missing (a UNetSD without temporal attention "
            "is not supported)"
        )
    plan.append(("input_blocks.0.1.", "transformer_in.", "temporal"))

    # encoder: walk the input blocks, one level per downsample
    levels: list[dict[str, Any]] = [{"channels": None, "attention": False, "blocks": 0}]
    for k in _indices(sd, r"input_blocks\.(\d+)\."):
        if k == 0:
            continue
        if f"input_blocks.{k}.op.weight" in sd:
            plan.append((f"input_blocks.{k}.op.", f"down_blocks.{len(levels) - 1}.downsamplers.0.conv.", "plain"))
            levels.append({"channels": None, "attention": False, "blocks": 0})
            continue
        lv, i = levels[-1], len(levels) - 1
        j = lv["blocks"]
        for m in _indices(sd, rf"input_blocks\.{k}\.(\d+)\."):
            src = f"input_blocks.{k}.{m}."
            kind = _element_kind(sd, src)
            if kind == "res":
                plan.append((src, f"down_blocks.{i}.resnets.{j}.", "res"))
                plan.append((src, f"down_blocks.{i}.temp_convs.{j}.", "temporal_conv"))
                lv["channels"] = int(sd[src + "in_layers.2.weight"].shape[0])
            elif kind == "spatial":
                plan.append((src, f"down_blocks.{i}.attentions.{j}.", "plain"))
                lv["attention"] = True
            elif kind == "temporal":
                plan.append((src, f"down_blocks.{i}.temp_attentions.{j}.", "temporal"))
            else:
                raise ConversionError(f"UNet: unexpected {kind}sample inside {src.rstrip('.')!r}")
        lv["blocks"] += 1
    blocks = {lv["blocks"] for lv in levels}
    if len(blocks) != 1 or 0 in blocks:
        raise ConversionError(f"UNet: levels have different numbers of residual blocks: {sorted(blocks)}")
    num_res_blocks = blocks.pop()

    # middle: ResBlock, SpatialTransformer, TemporalTransformer, ResBlock
    mid_kinds = [_element_kind(sd, f"middle_block.{m}.") for m in _indices(sd, r"middle_block\.(\d+)\.")]
    if mid_kinds != ["res", "spatial", "temporal", "res"]:
        raise ConversionError(f"UNet: middle_block has elements {mid_kinds}, expected res, spatial, temporal, res")
    plan += [
        ("middle_block.0.", "mid_block.resnets.0.", "res"),
        ("middle_block.0.", "mid_block.temp_convs.0.", "temporal_conv"),
        ("middle_block.1.", "mid_block.attentions.0.", "plain"),
        ("middle_block.2.", "mid_block.temp_attentions.0.", "temporal"),
        ("middle_block.3.", "mid_block.resnets.1.", "res"),
        ("middle_block.3.", "mid_block.temp_convs.1.", "temporal_conv"),
    ]

    # decoder: num_res_blocks + 1 blocks per level, deepest level first
    per_level = num_res_blocks + 1
    out_idx = _indices(sd, r"output_blocks\.(\d+)\.")
    if out_idx != list(range(per_level * len(levels))):
        raise ConversionError(
            f"UNet: expected output_blocks 0..{per_level * len(levels) - 1} for {len(levels)} levels of "
            f"{num_res_blocks} blocks, found {out_idx[:1]}..{out_idx[-1:]}"
        )
    for k in out_idx:
        i, j = divmod(k, per_level)
        for m in _indices(sd, rf"output_blocks\.{k}\.(\d+)\."):
            src = f"output_blocks.{k}.{m}."
            kind = _element_kind(sd, src)
            if kind == "res":
                plan.append((src, f"up_blocks.{i}.resnets.{j}.", "res"))
                plan.append((src, f"up_blocks.{i}.temp_convs.{j}.", "temporal_conv"))
            elif kind == "spatial":
                plan.append((src, f"up_blocks.{i}.attentions.{j}.", "plain"))
                if not levels[len(levels) - 1 - i]["attention"]:
                    raise ConversionError(f"UNet: {src.rstrip('.')!r} has attention but encoder level does not")
            elif kind == "temporal":
                plan.append((src, f"up_blocks.{i}.temp_attentions.{j}.", "temporal"))
            elif kind == "up":
                plan.append((src + "conv.", f"up_blocks.{i}.upsamplers.0.conv.", "plain"))
            else:
                raise ConversionError(f"UNet: unexpected downsample inside {src.rstrip('.')!r}")

    sizes = {
        "in_channels": int(_need(sd, "input_blocks.0.0.weight", "UNet").shape[1]),
        "out_channels": int(_need(sd, "out.2.weight", "UNet").shape[0]),
        "block_out_channels": [int(lv["channels"]) for lv in levels],
        "attention": [bool(lv["attention"]) for lv in levels],
        "layers_per_block": num_res_blocks,
        "cross_attention_dim": int(
            _need(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", "UNet").shape[1]),
        "temporal_in_inner": int(sd["input_blocks.0.1.proj_in.weight"].shape[0]),
        "dim": int(_need(sd, "time_embed.0.weight", "UNet").shape[1]),
    }
    if sizes["block_out_channels"][0] != sizes["dim"]:
        raise ConversionError(
            f"UNet: first level has {sizes['block_out_channels'][0]} channels, time embedding expects {sizes['dim']}"
        )
    return sizes, plan


def unet_config(sd: Mapping[str, Any], head_dim: int | None = None) -> dict[str, Any]:
    """diffusers ``UNet3DConditionModel`` config for an original UNetSD state dict.

    head_dim: the attention head width (``unet_head_dim`` of ``configuration.json``, 64 in the
    released model); None derives it from the first temporal transformer (8 heads).
    """
    sizes, _ = _unet_plan(sd)
    return _unet_config_from_sizes(sizes, head_dim)


def _unet_config_from_sizes(sizes: dict[str, Any], head_dim: int | None) -> dict[str, Any]:
    inner = sizes["temporal_in_inner"]
    if head_dim is None:
        if inner % TEMPORAL_IN_HEADS:
            raise ConversionError(f"UNet: first temporal transformer width {inner} is not 8 heads wide")
        head_dim = inner // TEMPORAL_IN_HEADS
    if inner != TEMPORAL_IN_HEADS * head_dim:
        raise ConversionError(
            f"UNet: the first temporal transformer is {inner} wide, expected {TEMPORAL_IN_HEADS} heads x {head_dim} "
            f"(diffusers' UNet3DConditionModel supports only 8 heads there)"
        )
    for c in sizes["block_out_channels"]:
        if c % head_dim or c % GROUPS:
            raise ConversionError(f"UNet: {c} channels is not a multiple of head_dim {head_dim} and of {GROUPS}")
    att = sizes["attention"]
    return {
        "sample_size": 32,
        "in_channels": sizes["in_channels"],
        "out_channels": sizes["out_channels"],
        "down_block_types": ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in att],
        "up_block_types": ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(att)],
        "block_out_channels": sizes["block_out_channels"],
        "layers_per_block": sizes["layers_per_block"],
        "norm_num_groups": GROUPS,
        "norm_eps": 1e-5,
        "cross_attention_dim": sizes["cross_attention_dim"],
        "attention_head_dim": head_dim,
    }


def convert_unet(sd: Mapping[str, Any], head_dim: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers config, diffusers state dict) of an original ``text2video_pytorch_model.pth``."""
    sizes, plan = _unet_plan(sd)
    config = _unet_config_from_sizes(sizes, head_dim)
    out: dict[str, Any] = {}
    used: set[str] = set()

    def put(dst: str, src: str, value: Any) -> None:
        if dst in out:
            raise ConversionError(f"UNet: two keys map to {dst!r}")
        out[dst] = value
        used.add(src)

    for src, dst, kind in plan:
        sub = _sub(sd, src)
        if kind == "res":
            for k, v in sub.items():
                if k.startswith(_TEMPORAL_CONV_SPELLINGS):
                    continue
                for a, b in _RES_RENAMES.items():
                    if k.startswith(a):
                        put(dst + b + k[len(a):], src + k, v)
                        break
                else:
                    raise ConversionError(f"UNet: unknown ResBlock key {src + k!r}")
        elif kind == "temporal_conv":
            spelled = [p for p in _TEMPORAL_CONV_SPELLINGS if any(k.startswith(p) for k in sub)]
            if not spelled:
                raise ConversionError(f"UNet: ResBlock {src.rstrip('.')!r} has no temopral_conv keys")
            for k, v in _sub(sd, src + spelled[0]).items():
                put(dst + k, src + spelled[0] + k, v)
        elif kind == "temporal":
            for k, v in sub.items():
                if k in ("proj_in.weight", "proj_out.weight"):
                    v = v.squeeze(-1)  # Conv1d(k=1) -> Linear
                put(dst + k, src + k, v)
        else:
            for k, v in sub.items():
                put(dst + k, src + k, v)
    unused = sorted(set(sd) - used)
    if unused:
        raise ConversionError(f"UNet: {len(unused)} keys have no place in the model, e.g. {unused[:3]}")
    return config, out


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------
_VAE_RES = {"norm1.": "norm1.", "conv1.": "conv1.", "norm2.": "norm2.", "conv2.": "conv2.",
            "nin_shortcut.": "conv_shortcut."}
_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def vae_state_dict_from_ldm_checkpoint(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``first_stage_model.`` weights of a latent-diffusion checkpoint, prefix stripped.

    Accepts the whole checkpoint (``{"state_dict": {...}}``) or the state dict itself. The other
    keys (the diffusion model, EMA, loss) are what the original loader ignores too.
    """
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
        raise ConversionError("VAE: checkpoint holds no state dict")
    marker = "first_stage_model."
    vae = {k.split(marker)[-1]: v for k, v in sd.items() if marker in k}
    if not vae:
        raise ConversionError("VAE: no 'first_stage_model.' keys in the checkpoint's state_dict")
    dropped = len(sd) - len(vae)
    if dropped:
        log.info("VAE checkpoint: %d keys outside first_stage_model ignored (as upstream does)", dropped)
    return vae


def convert_vae(sd: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(diffusers AutoencoderKL config, state dict) of a latent-diffusion KL autoencoder."""
    n = len(_indices(sd, r"encoder\.down\.(\d+)\."))
    if n == 0:
        raise ConversionError("VAE: no 'encoder.down.*' keys")
    if any(".attn." in k for k in sd if k.startswith(("encoder.down.", "decoder.up."))):
        raise ConversionError("VAE: attention inside the down/up levels is not supported (attn_resolutions must be [])")
    blocks = len(_indices(sd, r"encoder\.down\.0\.block\.(\d+)\."))
    channels = [int(_need(sd, f"encoder.down.{i}.block.0.conv1.weight", "VAE").shape[0]) for i in range(n)]
    config = {
        "in_channels": int(_need(sd, "encoder.conv_in.weight", "VAE").shape[1]),
        "out_channels": int(_need(sd, "decoder.conv_out.weight", "VAE").shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": channels,
        "layers_per_block": blocks,
        "latent_channels": int(_need(sd, "post_quant_conv.weight", "VAE").shape[1]),
        "norm_num_groups": GROUPS,
        "sample_size": 256,
        "scaling_factor": VAE_SCALING_FACTOR,
    }
    out: dict[str, Any] = {}

    def block(prefix: str, src_keys: dict[str, Any], renames: dict[str, str], squeeze: bool = False) -> None:
        for k, v in src_keys.items():
            for a, b in renames.items():
                if k.startswith(a):
                    if squeeze and k.endswith("weight") and v.ndim == 4:
                        v = v[:, :, 0, 0]
                    out[prefix + b + k[len(a):]] = v
                    break
            else:
                raise ConversionError(f"VAE: unknown key {k!r} under {prefix!r}")

    for part in ("encoder", "decoder"):
        for name in ("conv_in.", "conv_out."):
            for k, v in _sub(sd, f"{part}.{name}").items():
                out[f"{part}.{name}{k}"] = v
        for k, v in _sub(sd, f"{part}.norm_out.").items():
            out[f"{part}.conv_norm_out.{k}"] = v
        block(f"{part}.mid_block.resnets.0.", _sub(sd, f"{part}.mid.block_1."), _VAE_RES)
        block(f"{part}.mid_block.resnets.1.", _sub(sd, f"{part}.mid.block_2."), _VAE_RES)
        block(f"{part}.mid_block.attentions.0.", _sub(sd, f"{part}.mid.attn_1."), _VAE_ATTN, squeeze=True)
    for i in range(n):
        for j in _indices(sd, rf"encoder\.down\.{i}\.block\.(\d+)\."):
            block(f"encoder.down_blocks.{i}.resnets.{j}.", _sub(sd, f"encoder.down.{i}.block.{j}."), _VAE_RES)
        for k, v in _sub(sd, f"encoder.down.{i}.downsample.conv.").items():
            out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{k}"] = v
        d = n - 1 - i  # decoder.up is indexed by resolution level, diffusers' up_blocks deepest first
        for j in _indices(sd, rf"decoder\.up\.{i}\.block\.(\d+)\."):
            block(f"decoder.up_blocks.{d}.resnets.{j}.", _sub(sd, f"decoder.up.{i}.block.{j}."), _VAE_RES)
        for k, v in _sub(sd, f"decoder.up.{i}.upsample.conv.").items():
            out[f"decoder.up_blocks.{d}.upsamplers.0.conv.{k}"] = v
    for name in ("quant_conv.", "post_quant_conv."):
        for k, v in _sub(sd, name).items():
            out[name + k] = v
    if len(out) != len(sd):
        known = {k for k in sd if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
        raise ConversionError(f"VAE: {len(sd) - len(out)} keys not converted, e.g. {sorted(set(sd) - known)[:3]}")
    return config, out


# --------------------------------------------------------------------------------------------
# OpenCLIP text tower
# --------------------------------------------------------------------------------------------
# keys of open_clip_pytorch_model.bin that ModelScope's text conditioning never reads
_OPEN_CLIP_UNUSED = ("visual.", "text_projection", "logit_scale", "attn_mask")


def convert_text_encoder(sd: Mapping[str, Any], *, layers_skipped: int = 1,
                         head_width: int = OPEN_CLIP_HEAD_WIDTH) -> tuple[dict[str, Any], dict[str, Any]]:
    """(transformers CLIPTextConfig kwargs, CLIPTextModel state dict) of an OpenCLIP checkpoint.

    The model keeps the first ``blocks - layers_skipped`` transformer blocks (ModelScope uses the
    penultimate block's output), so the dropped blocks' weights are discarded explicitly.
    Keys are returned without the ``text_model.`` prefix (see `match_text_prefix`).
    """
    width = int(_need(sd, "token_embedding.weight", "text encoder").shape[1])
    blocks = _indices(sd, r"transformer\.resblocks\.(\d+)\.")
    if not blocks or blocks != list(range(len(blocks))):
        raise ConversionError("text encoder: no 'transformer.resblocks.<i>.' keys")
    keep = len(blocks) - layers_skipped
    if keep < 1:
        raise ConversionError(f"text encoder: {len(blocks)} blocks, cannot skip {layers_skipped}")
    if width % head_width:
        raise ConversionError(f"text encoder: width {width} is not a multiple of the head width {head_width}")
    config = {
        "vocab_size": int(sd["token_embedding.weight"].shape[0]),
        "hidden_size": width,
        "intermediate_size": int(_need(sd, "transformer.resblocks.0.mlp.c_fc.weight", "text encoder").shape[0]),
        "num_hidden_layers": keep,
        "num_attention_heads": width // head_width,
        "max_position_embeddings": int(_need(sd, "positional_embedding", "text encoder").shape[0]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": width,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
    }
    out = {
        "embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "embeddings.position_embedding.weight": sd["positional_embedding"],
        "final_layer_norm.weight": _need(sd, "ln_final.weight", "text encoder"),
        "final_layer_norm.bias": _need(sd, "ln_final.bias", "text encoder"),
    }
    used = {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"}
    names = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2.",
             "attn.out_proj.": "self_attn.out_proj."}
    for i in blocks:
        src = f"transformer.resblocks.{i}."
        sub = _sub(sd, src)
        used.update(src + k for k in sub)
        if i >= keep:
            continue  # beyond the penultimate block: never evaluated by ModelScope
        dst = f"encoder.layers.{i}."
        for k, v in sub.items():
            if k in ("attn.in_proj_weight", "attn.in_proj_bias"):
                q, kk, vv = v.chunk(3, dim=0)
                suffix = k.rsplit("_", 1)[1]
                for name, part in (("q_proj", q), ("k_proj", kk), ("v_proj", vv)):
                    out[f"{dst}self_attn.{name}.{suffix}"] = part
                continue
            for a, b in names.items():
                if k.startswith(a):
                    out[dst + b + k[len(a):]] = v
                    break
            else:
                raise ConversionError(f"text encoder: unknown key {src + k!r}")
    unused = sorted(k for k in set(sd) - used if not k.startswith(_OPEN_CLIP_UNUSED))
    if unused:
        raise ConversionError(f"text encoder: {len(unused)} keys have no place in the model, e.g. {unused[:3]}")
    return config, out


def match_text_prefix(sd: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Add or strip the ``text_model.`` prefix so `sd` matches `model_keys` (transformers versions differ)."""
    p = "text_model."
    has_prefix = any(k.startswith(p) for k in model_keys)
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue  # a buffer older transformers saved; recomputed
        bare = k[len(p):] if k.startswith(p) else k
        out[p + bare if has_prefix else bare] = v
    return out
