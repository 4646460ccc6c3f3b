"""The safety filter (upstream `DeepFloydDataFiltering`) on a tiny random OpenAI-layout CLIP tower and random
heads: scores against an independent ViT forward (torch primitives, QuickGELU) + numpy logistic heads, the blur
against scipy's Gaussian filter, flagged frames blurred and the others untouched; load_model / do_sample wiring."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from sgm_video_fixtures import clip_visual_tensors, tiny_checkpoint  # noqa: E402

WIDTH, HEADS, PATCH, IMAGE, EMBED = 128, 2, 8, 32, 24
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def reference_features(visual: dict, frames: torch.Tensor) -> np.ndarray:
    """OpenAI CLIP `encode_image` written with torch primitives (QuickGELU MLP, fused in_proj attention)."""
    h, w = frames.shape[-2:]
    s = min(h, w)
    x = frames[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = F.interpolate(x, size=(IMAGE, IMAGE), mode="bicubic", align_corners=False, antialias=True)
    x = (x - MEAN) / STD
    x = F.conv2d(x, visual["conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([visual["class_embedding"].expand(x.shape[0], 1, -1), x], 1) + visual["positional_embedding"]
    x = F.layer_norm(x, (WIDTH,), visual["ln_pre.weight"], visual["ln_pre.bias"])
    n, L, _ = x.shape
    hd = WIDTH // HEADS
    for i in range(2):
        p = f"transformer.resblocks.{i}."
        y = F.layer_norm(x, (WIDTH,), visual[p + "ln_1.weight"], visual[p + "ln_1.bias"])
        q, k, v = F.linear(y, visual[p + "attn.in_proj_weight"], visual[p + "attn.in_proj_bias"]).chunk(3, -1)
        q, k, v = (t.reshape(n, L, HEADS, hd).transpose(1, 2) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(n, L, WIDTH), visual[p + "attn.out_proj.weight"],
                         visual[p + "attn.out_proj.bias"])
        y = F.layer_norm(x, (WIDTH,), visual[p + "ln_2.weight"], visual[p + "ln_2.bias"])
        y = F.linear(y, visual[p + "mlp.c_fc.weight"], visual[p + "mlp.c_fc.bias"])
        y = y * torch.sigmoid(1.702 * y)
        x = x + F.linear(y, visual[p + "mlp.c_proj.weight"], visual[p + "mlp.c_proj.bias"])
    x = F.layer_norm(x[:, 0], (WIDTH,), visual["ln_post.weight"], visual["ln_post.bias"])
    return (x @ visual["proj"]).numpy()


def scipy_blur(frames: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(f.astype(np.float64), sigma=100.0, radius=49, mode="mirror", axes=(1, 2))
                     for f in frames])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("filter")
    visual = clip_visual_tensors(seed=3, width=WIDTH, layers=2, patch=PATCH, image=IMAGE, embed=EMBED)
    sd = {"visual." + k: v for k, v in visual.items()}
    sd.update({"token_embedding.weight": torch.randn(10, 8), "logit_scale": torch.tensor(4.6),
               "text_projection": torch.randn(8, EMBED)})  # text-tower leftovers of a full CLIP state dict
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "ViT-L-14.safetensors"))
    frames = torch.rand(6, 3, 64, 80, generator=torch.Generator().manual_seed(4))
    frames[3:] = frames[3:] ** 3  # darker frames: scores spread out
    feats = reference_features(visual, frames).astype(np.float16).astype(np.float64)
    rng = np.random.default_rng(5)
    heads = {}
    for name, n_flag in (("p_head", 3), ("w_head", 2)):
        w = rng.standard_normal(EMBED).astype(np.float32)
        logits = np.sort(feats @ w)
        bias = -(logits[-n_flag] + logits[-n_flag - 1]) / 2  # exactly n_flag frames over 0.5
        np.savez(d / f"{name}_v1.npz", weights=w[None], biases=np.array([bias], np.float32))
        heads[name] = (w.astype(np.float64), float(np.float32(bias)))
    return d, visual, frames, feats, heads


def _expected(frames, feats, heads):
    p = 1 / (1 + np.exp(-(feats @ heads["p_head"][0] + heads["p_head"][1])))
    w = 1 / (1 + np.exp(-(feats @ heads["w_head"][0] + heads["w_head"][1])))
    out = frames.double().numpy().copy()
    for score in (p, w):
        hit = score > 0.5
        out[hit] = scipy_blur(out[hit])
    return p, w, out


def test_scores_and_blur_match_independent_computation(setup):
    from ezvtb.novel_view.safety_filter import load_safety_filter

    d, _, frames, feats, heads = setup
    filt = load_safety_filter(d)
    p_ref, w_ref, out_ref = _expected(frames, feats, heads)
    p, w = filt.scores(frames)
    err_s = max(np.abs(p - p_ref).max(), np.abs(w - w_ref).max())
    print(f"scores p {np.round(p, 3)} w {np.round(w, 3)}: max |diff| vs reference {err_s:.2e}")
    assert err_s <= 1e-3
    assert (p > 0.5).sum() == 3 and (w > 0.5).sum() == 2 and ((p > 0.5) == (p_ref > 0.5)).all()
    out = filt(frames)
    flagged = (p > 0.5) | (w > 0.5)
    err_b = np.abs(out.double().numpy() - out_ref).max()
    print(f"blurred frames {np.nonzero(flagged)[0].tolist()}: max |diff| vs scipy {err_b:.2e}")
    assert err_b <= 1e-5
    assert torch.equal(out[~torch.from_numpy(flagged)], frames[~torch.from_numpy(flagged)])  # untouched
    assert all((out[i] - frames[i]).abs().max() > 0.05 for i in np.nonzero(flagged)[0])  # really blurred
    assert frames.shape == out.shape and not torch.equal(out, frames)


def test_transformers_folder_gives_the_same_scores(setup, tmp_path):
    import shutil

    from ezvtb.novel_view.safety_filter import load_safety_filter

    d, _, frames, _, _ = setup
    a = load_safety_filter(d)
    a.tower.save_pretrained(tmp_path)  # config.json + model.safetensors
    for f in ("p_head_v1.npz", "w_head_v1.npz"):
        shutil.copy(d / f, tmp_path / f)
    b = load_safety_filter({"clip": tmp_path, "p_head": d / "p_head_v1.npz", "w_head": d / "w_head_v1.npz"})
    c = load_safety_filter(tmp_path)
    for other in (b, c):
        err = max(np.abs(x - y).max() for x, y in zip(a.scores(frames), other.scores(frames)))
        assert err <= 1e-6, err


def test_bad_weights_and_frames_raise_clear_errors(setup, tmp_path):
    from safetensors.torch import save_file

    from ezvtb.novel_view.safety_filter import load_head, load_safety_filter

    d, visual, frames, _, _ = setup
    np.savez(tmp_path / "obj.npz", weights=np.array([{"a": 1}], dtype=object), biases=np.zeros(1))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_head(tmp_path / "obj.npz")
    np.savez(tmp_path / "bad.npz", w=np.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        load_head(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", weights=np.zeros(5, np.float32), biases=np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="p_head: weights of 5 features"):
        load_safety_filter({"clip": d / "ViT-L-14.safetensors", "p_head": tmp_path / "short.npz",
                            "w_head": d / "w_head_v1.npz"})
    save_file({"visual." + k: v.contiguous() for k, v in visual.items()} | {"mystery": torch.zeros(1)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="mystery"):
        load_safety_filter({"clip": tmp_path / "x.safetensors", "p_head": d / "p_head_v1.npz",
                            "w_head": d / "w_head_v1.npz"})
    with pytest.raises(ValueError, match="filter_weights"):
        load_safety_filter(tmp_path / "nope")
    filt = load_safety_filter(d)
    with pytest.raises(ValueError, match="images"):
        filt(frames[0])
    with pytest.raises(ValueError, match="larger than 49 px"):
        filt(torch.rand(1, 3, 40, 40))
    assert filt(frames).shape == frames.shape  # still usable


@pytest.mark.slow  # builds the tiny SV3D model twice and samples (~30 s on 2 loaded cores)
def test_load_model_returns_the_filter_and_do_sample_applies_it(setup, tmp_path):
    from safetensors.torch import save_file

    from ezvtb.novel_view import do_sample, load_model
    from ezvtb.novel_view.safety_filter import SafetyFilter

    d = setup[0]
    ckpt = tmp_path / "sv3d_u.safetensors"
    save_file(tiny_checkpoint("sv3d_u", seed=1), str(ckpt))
    kw = dict(num_head_channels=16, clip_head_width=32)
    model, none = load_model("sv3d_u", "cpu", 3, 2, ckpt_path=ckpt, **kw)
    assert none is None
    model, filt = load_model("sv3d_u", "cpu", 3, 2, ckpt_path=ckpt, filter_weights=d, **kw)
    assert isinstance(filt, SafetyFilter)
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    vd = dict(cond_frames_without_noise=img, cond_frames=img, cond_aug=1e-5)
    args = (model, None, vd, 1, 64, 64, 4, 8)
    plain = do_sample(*args, T=3, seed=3, progress=False)
    filt.p_head = (filt.p_head[0], np.float32(50.0))  # every frame over the threshold
    filtered = do_sample(*args, T=3, seed=3, progress=False, filter=filt)
    err = (filtered - filt(plain)).abs().max().item()
    print(f"do_sample(filter=...) vs filter(do_sample(...)): {err:.2e}; blur changed frames by "
          f"{(filtered - plain).abs().max():.3f}")
    assert err <= 1e-6 and (filtered - plain).abs().max() > 0.01
