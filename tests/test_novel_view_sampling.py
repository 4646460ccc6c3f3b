"""SVD / SV3D sampling: EDM Euler with per-frame guidance step by step against the closed forms, and the whole
SVD image-to-video run against diffusers' StableVideoDiffusionPipeline on a tiny random model."""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from ezvtb.novel_view.sampling import Conditioning, EulerEDMSampler, sample_latents  # noqa: E402


class _FormulaNet:
    """A smooth deterministic stand-in for the UNet (the loop, not the network, is under test)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(4, 8, generator=g) * 0.3

    def __call__(self, x, timesteps, context, y, ioi):
        h = torch.einsum("oc,nchw->nohw", self.w.to(x.dtype), x)
        return torch.tanh(h + timesteps.view(-1, 1, 1, 1) + context.mean((1, 2)).view(-1, 1, 1, 1)
                          + 0.1 * y.mean(1).view(-1, 1, 1, 1))


class _FakeModel:
    def __init__(self, net) -> None:
        self.net = net
        self.calls = 0

    @contextlib.contextmanager
    def stage(self, which):
        assert which == "unet"

        def run(*xs):
            self.calls += 1
            return self.net(*xs)
        yield run

    def step_callback(self, stage, total):
        return lambda i, t, x: None


def _closed_form(net, noise, cond, uncond, steps, scales):
    """sgm EulerEDMSampler (s_churn 0) + VScalingWithEDMcNoise + per-frame CFG, in float64, from the formulas."""
    n = steps
    i = torch.arange(n, dtype=torch.float64)
    lo, hi = 0.002 ** (1 / 7), 700.0 ** (1 / 7)
    sigmas = torch.cat([(hi + i / (n - 1) * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)])
    x = noise.double() * math.sqrt(1 + sigmas[0] ** 2)
    s = scales.double().view(-1, 1, 1, 1)
    xs = []
    for k in range(n):
        sg, nxt = sigmas[k], sigmas[k + 1]
        c_skip, c_out = 1 / (sg ** 2 + 1), -sg / math.sqrt(sg ** 2 + 1)
        c_in, c_noise = 1 / math.sqrt(sg ** 2 + 1), 0.25 * math.log(sg)
        t = torch.full((x.shape[0],), c_noise, dtype=torch.float64)
        outs = []
        for c in (uncond, cond):
            v = net(torch.cat([x * c_in, c.concat.double()], 1), t, c.context.double(), c.vector.double(), None)
            outs.append(c_skip * x + c_out * v)  # denoised
        d_u, d_c = outs
        denoised = d_u + s * (d_c - d_u)
        x = x + (x - denoised) / sg * (nxt - sg)
        xs.append(x)
    return xs


@pytest.mark.parametrize("guider,lo,hi", [("triangle", 1.0, 2.5), ("linear", 1.5, 3.0)])
def test_edm_euler_with_guidance_matches_the_formulas(guider, lo, hi):
    T, steps = 7, 6
    g = torch.Generator().manual_seed(1)
    cond = Conditioning(torch.randn(T, 4, 8, 8, generator=g), torch.randn(T, 1, 16, generator=g),
                        torch.randn(T, 32, generator=g))
    uncond = Conditioning(torch.zeros_like(cond.concat), torch.zeros_like(cond.context), cond.vector.clone())
    noise = torch.randn(T, 4, 8, 8, generator=g)
    sampler = EulerEDMSampler(steps, guider, hi, lo)
    scales = sampler.scales(T)
    frac = torch.linspace(0, 1, T, dtype=torch.float64)
    w = (1 - (2 * frac - 1).abs()) if guider == "triangle" else frac  # triangle: 0 at both ends, 1 mid-orbit
    assert torch.allclose(scales.double(), lo + (hi - lo) * w, atol=1e-6)
    net = _FormulaNet()
    fake = _FakeModel(net)
    seen = []
    ours = sample_latents(fake, sampler, cond, uncond, T, 64, 64, noise=noise, progress=False,
                          callback=lambda i, t, x: seen.append(x.clone()))
    ref = _closed_form(net, noise, cond, uncond, steps, scales)
    assert fake.calls == steps and len(seen) == steps  # one batched (uncond, cond) call per step
    assert torch.equal(seen[-1], ours)
    for k, (a, b) in enumerate(zip(seen, ref)):  # x_1 is ~700 * noise: float32 resolution is ~1e-4 relative there
        err = (a.double() - b).abs().max().item()
        print(f"{guider} step {k}: Euler EDM vs closed form max |diff| {err:.2e} (|x| max {b.abs().max():.2f})")
        assert err <= 1e-4 * max(1.0, float(b.abs().max()))


@pytest.mark.slow  # two full tiny SVD runs (~30 s idle, ~100 s at load avg 15)
def test_svd_image_to_video_matches_diffusers_pipeline():
    """Our SVD flow (CLIP and VAE conditioning, ADM vector, Euler EDM loop, linear guidance, chunked decoding)
    vs diffusers' StableVideoDiffusionPipeline run on the same tiny random networks, image, noise and settings.
    (The tiny checkpoint has a 2-D decoder; the temporal decoder is compared with upstream's elsewhere.)"""
    import numpy as np
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor

    from ezvtb.models.sgm_video.checkpoint import split_state_dict
    from ezvtb.novel_view import do_sample
    from ezvtb.novel_view.model import VideoModel
    from ezvtb.novel_view.sampling import EulerEDMSampler
    from sgm_video_fixtures import tiny_checkpoint

    T, steps, H, W = 4, 3, 64, 64
    model = VideoModel(split_state_dict(tiny_checkpoint("svd", seed=2), "svd"), "svd", num_frames=T,
                       num_steps=steps, num_head_channels=16, clip_head_width=32)
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    noise = torch.randn(T, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(3))
    value_dict = dict(cond_frames_without_noise=image, cond_frames=image, fps_id=6, motion_bucket_id=127,
                      cond_aug=0.0)
    sampler = EulerEDMSampler(steps, "linear", 2.5, 1.0)
    ours = do_sample(model, sampler, value_dict, 1, H, W, 4, 8, T=T, decoding_t=3, noise=noise,
                     force_uc_zero_embeddings=["cond_frames", "cond_frames_without_noise"], progress=False)

    sched = EulerDiscreteScheduler(  # the hub's SVD scheduler_config.json
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
        steps_offset=1, timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    vae = model.first_stage_model.vae
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=model.conditioner["image_embedder"].tower,
                                        unet=model.model.net, scheduler=sched,
                                        feature_extractor=CLIPImageProcessor(do_resize=False))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(Image.fromarray(rgb), height=H, width=W, num_frames=T, num_inference_steps=steps,
                   min_guidance_scale=1.0, max_guidance_scale=2.5, fps=7, motion_bucket_id=127,
                   noise_aug_strength=0.0, decode_chunk_size=3, latents=noise[None], output_type="pt").frames[0]
    err = (ours - ref).abs().max().item()
    print(f"SVD {T} frames x {steps} steps vs StableVideoDiffusionPipeline: frames max |diff| {err:.2e}")
    assert ours.shape == ref.shape == (T, 3, H, W) and ref.std() > 0.01
    assert err <= 1e-3
