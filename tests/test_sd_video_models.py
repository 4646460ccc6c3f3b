"""ModelScope text-to-video converters against the original code (modelscope's unet_sd.py,
autoencoder.py, diffusion.py loaded by file path) and an independent OpenCLIP text tower."""
from __future__ import annotations

import pytest
import torch

from sd_video_tiny import (TINY_UNET, open_clip_text_reference, tiny_open_clip_state_dict,
                           tiny_upstream_unet, tiny_upstream_vae, tiny_vocab, upstream)

TOL = 1e-4


def _report(name: str, ref: torch.Tensor, ours: torch.Tensor) -> float:
    err = (ref - ours).abs().max().item()
    print(f"{name}: max |diff| {err:.3g} (reference max |x| {ref.abs().max().item():.3g})")
    assert ref.abs().max().item() > 1e-2, f"{name}: reference output is ~0, the comparison would prove nothing"
    return err


@pytest.fixture(scope="module")
def unets():
    from diffusers import UNet3DConditionModel

    from ezvtb.models.modelscope_t2v.convert import convert_unet

    up = tiny_upstream_unet(seed=0)
    config, sd = convert_unet(up.state_dict(), head_dim=TINY_UNET["head_dim"])
    ours = UNet3DConditionModel(**config).eval()
    ours.load_state_dict(sd, strict=True)
    return up, ours, config


def test_unet_matches_original_unetsd(unets):
    up, ours, config = unets
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert config["down_block_types"] == ["CrossAttnDownBlock3D", "DownBlock3D"]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 3, 16, 16, generator=g)
    t = torch.tensor([981.0, 21.0])
    ctx = torch.randn(2, 5, 1024, generator=g)
    with torch.no_grad():
        ref = up(x, t, ctx)
        out = ours(x, t, encoder_hidden_states=ctx).sample
    assert _report("UNet (b2 f3 16x16)", ref, out) <= TOL


def test_unet_head_dim_is_derived_from_the_first_temporal_transformer(unets):
    from ezvtb.models.modelscope_t2v.convert import unet_config

    up, _, config = unets
    assert unet_config(up.state_dict())["attention_head_dim"] == TINY_UNET["head_dim"] == config["attention_head_dim"]


def test_unet_converter_accepts_both_spellings_and_rejects_stray_or_missing_keys(unets):
    from ezvtb.models.modelscope_t2v.convert import ConversionError, convert_unet

    sd = dict(unets[0].state_dict())
    assert any("temopral_conv" in k for k in sd)
    fixed = {k.replace("temopral_conv", "temporal_conv"): v for k, v in sd.items()}
    _, a = convert_unet(sd, head_dim=16)
    _, b = convert_unet(fixed, head_dim=16)
    assert a.keys() == b.keys()
    with pytest.raises(ConversionError, match="no place"):
        convert_unet({**sd, "label_embedding.weight": torch.zeros(1)}, head_dim=16)
    with pytest.raises(ConversionError, match="unknown ResBlock key 'input_blocks.1.0.extra.weight'"):
        convert_unet({**sd, "input_blocks.1.0.extra.weight": torch.zeros(1)}, head_dim=16)
    missing = {k: v for k, v in sd.items() if not k.startswith("middle_block.2.")}
    with pytest.raises(ConversionError, match="middle_block"):
        convert_unet(missing, head_dim=16)
    with pytest.raises(ConversionError, match="8 heads"):
        convert_unet(sd, head_dim=32)


def test_vae_matches_original_autoencoder():
    from diffusers import AutoencoderKL

    from ezvtb.models.modelscope_t2v.convert import convert_vae, vae_state_dict_from_ldm_checkpoint

    up = tiny_upstream_vae(seed=1)
    ckpt = {"state_dict": {"first_stage_model." + k: v for k, v in up.state_dict().items()}}
    ckpt["state_dict"]["model.diffusion_model.ignored"] = torch.zeros(1)  # what upstream's loader skips
    config, sd = convert_vae(vae_state_dict_from_ldm_checkpoint(ckpt))
    assert config["block_out_channels"] == [32, 64, 128, 128] and config["scaling_factor"] == 0.18215
    ours = AutoencoderKL(**config).eval()
    ours.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(4)
    img = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    z = torch.randn(2, 4, 4, 4, generator=g)
    with torch.no_grad():
        enc_err = _report("VAE encoder mean", up.encode(img).mean, ours.encode(img).latent_dist.mean)
        dec_err = _report("VAE decoder", up.decode(z), ours.decode(z).sample)
    assert enc_err <= TOL and dec_err <= TOL


def test_text_tower_matches_an_independent_open_clip_computation():
    from transformers import CLIPTextConfig, CLIPTextModel

    from ezvtb.models.modelscope_t2v.convert import convert_text_encoder, match_text_prefix

    vocab = len(tiny_vocab())
    src = tiny_open_clip_state_dict(vocab, seed=5)
    config, sd = convert_text_encoder(src)
    assert config["num_hidden_layers"] == 2 and config["hidden_size"] == 1024  # 3 blocks, penultimate output
    model = CLIPTextModel(CLIPTextConfig(**config)).eval()
    model.load_state_dict(match_text_prefix(sd, set(model.state_dict())), strict=True)
    g = torch.Generator().manual_seed(6)
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, 0] = vocab - 2
    ids[0, 1:6] = torch.randint(0, vocab - 2, (5,), generator=g)
    ids[0, 6] = vocab - 1
    ids[1, 1] = vocab - 1
    with torch.no_grad():
        ours = model(input_ids=ids).last_hidden_state
    ref = open_clip_text_reference(src, ids, skip_last=1)
    assert _report("text tower (penultimate + ln_final)", ref, ours) <= TOL
    # control: the last block really is skipped (using it changes the result)
    assert (open_clip_text_reference(src, ids, skip_last=0) - ours).abs().max().item() > 1e-2


def test_sampler_matches_original_ddim_loop(tmp_path, tiny_modelscope_folder):
    """Our DDIM + two-call CFG on the converted UNet == modelscope's GaussianDiffusion.ddim_sample_loop."""
    from ezvtb.sd_video import SDVideo
    from ezvtb.diffusion.schedulers import modelscope_ddim

    diffusion = upstream("diffusion")
    ms = SDVideo(tiny_modelscope_folder, backend="torch")
    up = upstream("unet_sd").UNetSD(**TINY_UNET).eval()
    up.load_state_dict(torch.load(tiny_modelscope_folder / "text2video_pytorch_model.pth", weights_only=True))
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, 2, 4, 4, generator=g)
    cond, uncond = torch.randn(1, 77, 1024, generator=g), torch.randn(1, 77, 1024, generator=g)
    steps = 3
    gd = diffusion.GaussianDiffusion(betas=diffusion.beta_schedule("linear_sd", 1000, init_beta=0.00085,
                                                                   last_beta=0.0120),
                                     mean_type="eps", var_type="fixed_small", loss_type="mse", rescale_timesteps=False)
    with torch.no_grad():
        ref = gd.ddim_sample_loop(noise=noise.clone(), model=up, model_kwargs=[{"y": cond}, {"y": uncond}],
                                  guide_scale=9.0, ddim_timesteps=steps, eta=0.0)
    sched = modelscope_ddim()
    sched.set_timesteps(steps)
    ts = [int(t) for t in sched.timesteps]
    assert ts == [999, 667, 334, 1]  # ModelScope: 1 + arange(0, 1000, 333), clamped to 999
    ours = ms.denoise(noise.clone(), sched, ts, cond, uncond, 9.0)
    assert _report("DDIM x CFG 9.0, 3 steps", ref, ours) <= 1e-3 * max(1.0, ref.abs().max().item())


def test_open_clip_bpe_file_gives_the_same_tokens_as_the_tokenizer_folder(tmp_path):
    import gzip

    from sd_video_tiny import tiny_merges, write_tiny_tokenizer

    from ezvtb.sd_video.tokenizer import OPEN_CLIP_BPE, find_tokenizer, load_tokenizer_folder, tokenize

    n = write_tiny_tokenizer(tmp_path / "folder" / "tokenizer")
    with gzip.open(tmp_path / OPEN_CLIP_BPE, "wt", encoding="utf-8") as f:
        f.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tiny_merges()))
    from_gz = find_tokenizer(tmp_path)  # no tokenizer/ here: the open_clip file is used
    from_folder = load_tokenizer_folder(tmp_path / "folder" / "tokenizer")
    texts = ["A cat eating a giant burger!", "very wrinkly and old man", ""]
    a, b = tokenize(from_gz, texts), tokenize(from_folder, texts)
    assert a.shape == (3, 77) and torch.equal(a, b)
    assert a[0, 0].item() == n - 2 and (a[2, 1].item(), a[2, 2].item()) == (n - 1, 0)  # start, end, pad id 0
    with pytest.raises(FileNotFoundError, match="open_clip"):
        find_tokenizer(tmp_path / "folder" / "tokenizer")
