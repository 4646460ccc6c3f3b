"""Tiny ModelScope text-to-video fixtures for the sd_video tests (not a test module).

* `upstream(name)`: the original ModelScope ``unet_sd.py`` / ``autoencoder.py`` loaded by file path
  from the installed ``modelscope`` wheel (no ``import modelscope``; they need only torch + einops).
* `tiny_upstream_unet` / `tiny_upstream_vae` / `tiny_open_clip_state_dict`: random weights in the
  original key layouts, every parameter re-randomised (upstream zero-initialises output layers).
* `write_tiny_tokenizer`: a small CLIP BPE vocabulary + merges written by the test (no hub).
* `write_modelscope_folder` / `write_diffusers_folder`: a complete model folder in each layout.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

TEXT_WIDTH = 1024  # context_dim 1024 is hard-coded in upstream's decoder cross-attention
TEXT_LAYERS = 3
TEXT_HEADS = TEXT_WIDTH // 64
TEXT_CTX = 77


def upstream(name: str):
    """The installed modelscope file ``video_synthesis/<name>.py`` as a module, or skip."""
    key = f"_upstream_modelscope_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.find_spec("modelscope")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("modelscope (the independent reference) is not installed: pip install --no-deps modelscope")
    path = Path(spec.submodule_search_locations[0]) / "models" / "multi_modal" / "video_synthesis" / f"{name}.py"
    if not path.is_file():
        pytest.skip(f"modelscope has no {path}")
    mspec = importlib.util.spec_from_file_location(key, path)
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[key] = mod
    mspec.loader.exec_module(mod)
    return mod


def rerandomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter redrawn (norm weights around 1), so no zero-initialised layer hides a bug."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_" in name or name.endswith(("in_layers.0.weight",
                                                                                   "out_layers.0.weight"))):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel()) if p.ndim > 1 else 16
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    return module.eval()


TINY_UNET = dict(in_dim=4, dim=32, y_dim=32, context_dim=TEXT_WIDTH, out_dim=4, dim_mult=[1, 2], num_heads=8,
                 head_dim=16, num_res_blocks=1, attn_scales=[1.0], dropout=0.1, temporal_attention=True)
TINY_VAE = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 4, 4],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)


def tiny_upstream_unet(seed: int = 0):
    return rerandomise(upstream("unet_sd").UNetSD(**TINY_UNET), seed)


def tiny_upstream_vae(seed: int = 1):
    return rerandomise(upstream("autoencoder").AutoencoderKL(TINY_VAE, 4), seed)


def tiny_open_clip_state_dict(vocab_size: int, seed: int = 2, width: int = TEXT_WIDTH,
                              layers: int = TEXT_LAYERS) -> dict[str, torch.Tensor]:
    """Random OpenCLIP checkpoint keys (text tower + a token visual part and projection)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        return torch.randn(shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    sd = {"token_embedding.weight": r(vocab_size, width, scale=0.5),
          "positional_embedding": r(TEXT_CTX, width, scale=0.1)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": 1 + r(width, scale=0.1), p + "ln_1.bias": r(width, scale=0.1),
            p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width, scale=0.1),
            p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width, scale=0.1),
            p + "ln_2.weight": 1 + r(width, scale=0.1), p + "ln_2.bias": r(width, scale=0.1),
            p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width, scale=0.1),
            p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width, scale=0.1),
        })
    sd.update({"ln_final.weight": 1 + r(width, scale=0.1), "ln_final.bias": r(width, scale=0.1),
               "text_projection": r(width, width), "logit_scale": torch.tensor(4.6),
               "visual.proj": r(8, 8), "visual.conv1.weight": r(8, 3, 2, 2)})
    return sd


def open_clip_text_reference(sd: dict, tokens: torch.Tensor, skip_last: int = 1) -> torch.Tensor:
    """Independent computation of OpenCLIP's text tower (LND layout, nn.MultiheadAttention, causal mask)."""
    width = sd["token_embedding.weight"].shape[1]
    n = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    L = tokens.shape[1]
    mask = torch.full((L, L), float("-inf")).triu_(1)
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    x = x.permute(1, 0, 2)
    for i in range(n - skip_last):
        p = f"transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(width, width // 64)
        mha.load_state_dict({"in_proj_weight": sd[p + "attn.in_proj_weight"],
                             "in_proj_bias": sd[p + "attn.in_proj_bias"],
                             "out_proj.weight": sd[p + "attn.out_proj.weight"],
                             "out_proj.bias": sd[p + "attn.out_proj.bias"]})
        h = torch.nn.functional.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = torch.nn.functional.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = torch.nn.functional.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = torch.nn.functional.gelu(h)
        x = x + torch.nn.functional.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    x = x.permute(1, 0, 2)
    return torch.nn.functional.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"])


# A small byte-level BPE: all 256 byte symbols (+ their word-final forms), a few merges.
WORDS = ("a", "cat", "dog", "eating", "old", "very", "wrinkly", "and", "giant", "burger", "man", "the")


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_merges() -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    seen = set()
    for w in WORDS:  # merge left to right into the word-final token
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
    return merges


def tiny_vocab() -> dict[str, int]:
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in tiny_merges()]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def write_tiny_tokenizer(folder: Path) -> int:
    """vocab.json + merges.txt + tokenizer_config.json (SD2-style, pad "!" = id 0); returns vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tiny_merges()))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": TEXT_CTX, "pad_token": "!", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return len(vocab)


def write_modelscope_folder(folder: Path, max_frames: int = 4, seed: int = 0) -> Path:
    """The four files of the original release (+ tokenizer/), random tiny weights in their layouts."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tiny_tokenizer(folder / "tokenizer")
    cfg = {"framework": "pytorch", "task": "text-to-video-synthesis",
           "model": {"type": "latent-text-to-video-synthesis",
                     "model_args": {"ckpt_clip": "open_clip_pytorch_model.bin",
                                    "ckpt_unet": "text2video_pytorch_model.pth",
                                    "ckpt_autoencoder": "VQGAN_autoencoder.pth",
                                    "max_frames": max_frames, "tiny_gpu": 1},
                     "model_cfg": {"unet_in_dim": 4, "unet_dim": 32, "unet_y_dim": 32, "unet_context_dim": TEXT_WIDTH,
                                   "unet_out_dim": 4, "unet_dim_mult": [1, 2], "unet_num_heads": 8,
                                   "unet_head_dim": 16, "unet_res_blocks": 1, "unet_attn_scales": [1.0],
                                   "unet_dropout": 0.1, "temporal_attention": "True", "num_timesteps": 1000,
                                   "mean_type": "eps", "var_type": "fixed_small", "loss_type": "mse"}},
           "pipeline": {"type": "latent-text-to-video-synthesis"}}
    (folder / "configuration.json").write_text(json.dumps(cfg, indent=1))
    torch.save(tiny_upstream_unet(seed).state_dict(), folder / "text2video_pytorch_model.pth")
    vae = tiny_upstream_vae(seed + 1).state_dict()
    torch.save({"state_dict": {"first_stage_model." + k: v for k, v in vae.items()}},
               folder / "VQGAN_autoencoder.pth")
    torch.save(tiny_open_clip_state_dict(vocab, seed + 2), folder / "open_clip_pytorch_model.bin")
    return folder


def write_diffusers_folder(folder: Path, seed: int = 0, max_frames: int = 4) -> Path:
    """The same tiny model in the diffusers layout, converted from the original files."""
    from ezvtb.sd_video.loader import load_components, save_diffusers_folder

    src = write_modelscope_folder(folder.parent / (folder.name + "_modelscope_src"), max_frames, seed)
    save_diffusers_folder(load_components(src), folder)
    return folder
