"""Samplers and guidance: the configured diffusers schedulers proven step by step against the seeds'
formulas (CompVis ldm `make_ddim_timesteps` / `make_ddim_sampling_parameters` / `make_beta_schedule`,
the EDM discretisation and sgm's v-prediction scalings written out here), the guidance scales, the
batched vs two-call CFG and the seeded denoising loop.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from ezvtb.diffusion import schedulers  # noqa: E402
from ezvtb.diffusion.guidance import apply_guidance, guidance_scales, guided_model  # noqa: E402
from ezvtb.diffusion.sampling import denoise, initial_noise, make_generator  # noqa: E402

from compvis_ldm import ldm_util  # noqa: E402


# -- DDIM (ModelScope) ----------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 7, 20, 50])
def test_modelscope_ddim_is_the_ldm_ddim_step_by_step(steps):
    ldm = ldm_util()
    sched = schedulers.modelscope_ddim()
    sched.set_timesteps(steps)
    ddim_t = ldm.make_ddim_timesteps("uniform", steps, 1000, verbose=False)
    assert sched.timesteps.tolist() == ddim_t[::-1].tolist()
    # ModelScope's "linear_sd" betas = ldm "linear" (sqrt-spaced) 0.00085..0.012
    betas = ldm.make_beta_schedule("linear", 1000, 0.00085, 0.012)
    alphacums = np.cumprod(1 - betas)
    assert np.abs(sched.alphas_cumprod.double().numpy() - alphacums).max() < 1e-6
    eta = 0.5
    sigmas, alphas, alphas_prev = ldm.make_ddim_sampling_parameters(alphacums, ddim_t, eta, verbose=False)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 4, 3, 5, 5, generator=g, dtype=torch.float64)
    for i, t in enumerate(sched.timesteps):  # descending
        k = len(ddim_t) - 1 - i
        eps = torch.randn(x.shape, generator=g, dtype=torch.float64)
        noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
        a, ap, s = float(alphas[k]), float(alphas_prev[k]), float(sigmas[k])
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        want = math.sqrt(ap) * x0 + math.sqrt(1 - ap - s * s) * eps + s * noise  # DDIM eq. 12
        got = sched.step(eps.float(), t, x.float(), eta=eta, variance_noise=noise.float()).prev_sample
        err = float((got.double() - want).abs().max())
        assert err < 2e-5 * max(1.0, float(want.abs().max())), (i, int(t), err)
        x = want


def test_modelscope_ddim_config_and_errors():
    c = schedulers.modelscope_ddim().config
    assert (c.beta_schedule, c.prediction_type, c.timestep_spacing, c.steps_offset, c.set_alpha_to_one,
            c.clip_sample) == ("scaled_linear", "epsilon", "leading", 1, False, False)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        schedulers.modelscope_ddim(0)


# -- Euler EDM v-prediction (SV3D / SVD) ----------------------------------------------------------
def edm_reference(n, smin=0.002, smax=700.0, rho=7.0):
    """Karras et al. eq. 5, written out per index."""
    out = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)]
    return out + [0.0]


@pytest.mark.parametrize("steps", [2, 5, 25])
def test_edm_euler_is_the_v_scaled_edm_euler_step_by_step(steps):
    sched = schedulers.edm_euler()
    sched.set_timesteps(steps)
    ref = edm_reference(steps)
    assert np.allclose(sched.sigmas.double().numpy(), ref, rtol=1e-6, atol=0)
    assert np.allclose(schedulers.edm_sigmas(steps).numpy(), ref, rtol=1e-12, atol=0)
    assert sched.sigmas[0] == pytest.approx(700.0, rel=1e-6) and sched.sigmas[-2] == pytest.approx(0.002, rel=1e-5)
    # c_noise = 0.25 ln sigma; initial noise scale sqrt(1 + sigma_0^2)
    assert np.allclose(sched.timesteps.double().numpy(), [0.25 * math.log(s) for s in ref[:-1]], atol=1e-5)
    assert float(sched.init_noise_sigma) == pytest.approx(math.sqrt(1 + 700.0 ** 2), rel=1e-6)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(1, 4, 3, 4, 4, generator=g, dtype=torch.float64) * math.sqrt(1 + ref[0] ** 2)
    for i, t in enumerate(sched.timesteps):
        s, s_next = ref[i], ref[i + 1]
        c_skip, c_out, c_in, c_noise = (1 / (s * s + 1), -s / math.sqrt(s * s + 1), 1 / math.sqrt(s * s + 1),
                                        0.25 * math.log(s))
        assert [float(v) for v in schedulers.v_scalings(s)] == pytest.approx([c_skip, c_out, c_in, c_noise])
        assert float(t) == pytest.approx(c_noise, abs=1e-5)
        scaled = sched.scale_model_input(x.float(), t)
        assert float((scaled.double() - c_in * x).abs().max()) <= 1e-5 * float(x.abs().max())
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        denoised = c_skip * x + c_out * v
        want = x + (x - denoised) / s * (s_next - s)  # Euler step of dx/dsigma = (x - D) / sigma
        got = sched.step(v.float(), t, x.float()).prev_sample
        err = float((got.double() - want).abs().max())
        assert err <= 2e-6 * max(1.0, float(x.abs().max())), (i, err)
        x = want


def test_edm_euler_other_rho_and_errors():
    sched = schedulers.edm_euler(sigma_min=0.01, sigma_max=80.0, rho=3.0)
    sched.set_timesteps(6)
    assert np.allclose(sched.sigmas.double().numpy(), edm_reference(6, 0.01, 80.0, 3.0), rtol=1e-6)
    with pytest.raises(ValueError, match="sigma_min"):
        schedulers.edm_euler(sigma_min=800.0)
    with pytest.raises(ValueError, match="rho"):
        schedulers.edm_euler(rho=0)
    with pytest.raises(ValueError, match="num_steps"):
        schedulers.edm_sigmas(0)


# -- guidance ------------------------------------------------------------------------------------
def test_guidance_scales_closed_forms():
    assert guidance_scales("constant", 4, 9.0).tolist() == [9.0] * 4
    lin = guidance_scales("linear", 14, 2.5, 1.0)
    assert lin.shape == (14,) and lin.dtype == torch.float32
    assert np.allclose(lin.numpy(), [1.0 + 1.5 * i / 13 for i in range(14)], atol=1e-6)
    tri = guidance_scales("triangle", 21, 2.5, 1.0)
    want = [1.0 + 1.5 * (1 - abs(2 * i / 20 - 1)) for i in range(21)]  # 1 at both ends, 2.5 at frame 10
    assert np.allclose(tri.numpy(), want, atol=1e-6)
    assert tri[0] == tri[-1] == 1.0 and tri[10] == pytest.approx(2.5)
    tri_even = guidance_scales("triangle", 4, 3.0, 1.0)
    assert np.allclose(tri_even.numpy(), [1.0, 1 + 2 * 2 / 3, 1 + 2 * 2 / 3, 1.0], atol=1e-6)
    assert guidance_scales("linear", 1, 2.5).tolist() == [1.0]
    for bad, match in ((("wave", 4, 2.0), "kind"), (("linear", 0, 2.0), "num_frames"),
                       (("linear", 4, "2"), "scale")):
        with pytest.raises(ValueError, match=match):
            guidance_scales(*bad)


def test_apply_guidance_broadcasts_along_the_frame_axis():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 4, 5, 3, 3, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)
    s = guidance_scales("triangle", 5, 2.5)
    out = apply_guidance(u, c, s, frame_axis=2)
    for f in range(5):
        assert torch.allclose(out[:, :, f], u[:, :, f] + s[f] * (c[:, :, f] - u[:, :, f]), atol=1e-6)
    # flattened (b t) axis, batch-major
    uf, cf = u.permute(0, 2, 1, 3, 4).reshape(10, 4, 3, 3), c.permute(0, 2, 1, 3, 4).reshape(10, 4, 3, 3)
    outf = apply_guidance(uf, cf, s, frame_axis=0)
    assert torch.allclose(outf, out.permute(0, 2, 1, 3, 4).reshape(10, 4, 3, 3), atol=1e-6)
    assert torch.allclose(apply_guidance(u, c, 9.0, 2), u + 9.0 * (c - u))
    with pytest.raises(ValueError, match="scales"):
        apply_guidance(u, c, torch.ones(3), 2)
    with pytest.raises(ValueError, match="frame_axis"):
        apply_guidance(u, c, s, 7)
    with pytest.raises(ValueError, match="cond"):
        apply_guidance(u, c[:1], s, 2)


def test_guided_model_batched_equals_two_calls():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 4, 1)
    calls = []

    def model(x, t, ctx):
        calls.append(x.shape[0])
        return net(x) * (1 + t.reshape(-1, 1, 1, 1, 1)) + ctx.mean() * ctx.shape[0]

    x, t = torch.randn(1, 4, 5, 3, 3), torch.tensor([3.0])
    cond, uncond = torch.randn(1, 7, 8), torch.zeros(1, 7, 8)
    s = guidance_scales("linear", 5, 2.5)
    with torch.no_grad():
        one = guided_model(model, [cond], [uncond], s, 2)(x, t)
        two = guided_model(model, [cond], [uncond], s, 2, batched=False)(x, t)
        ref = apply_guidance(model(x, t, uncond), model(x, t, cond), s, 2)
    assert calls[:3] == [2, 1, 1]
    # ctx.shape[0] enters the toy model, so compare each against its own reference
    assert torch.allclose(two, ref, atol=1e-6)
    assert one.shape == x.shape and not torch.allclose(one, two)  # batched saw ctx batch 2
    with pytest.raises(ValueError, match="uncond"):
        guided_model(model, [cond], [uncond, uncond], s, 2)


# -- the loop ------------------------------------------------------------------------------------
def test_denoise_is_seeded_and_runs_both_schedulers():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(4, 4, 1)

    def fn(x, t):
        return net(x) * 0.1

    with torch.no_grad():
        for make, eta in ((schedulers.modelscope_ddim, {"eta": 0.3}), (schedulers.edm_euler, {})):
            runs = []
            for _ in range(2):
                lat = initial_noise((1, 4, 3, 4, 4), seed=5)
                runs.append(denoise(make(), fn, lat, 4, seed=11, **eta))
            assert torch.equal(runs[0], runs[1]) and torch.isfinite(runs[0]).all()
            other = denoise(make(), fn, initial_noise((1, 4, 3, 4, 4), seed=6), 4, seed=11, **eta)
            assert not torch.equal(other, runs[0])
    with pytest.raises(ValueError, match="seed"):
        make_generator(1, torch.Generator())
    with pytest.raises(ValueError, match="num_inference_steps"):
        denoise(schedulers.modelscope_ddim(), fn, torch.zeros(1), 0)


def test_denoise_partial_start_runs_the_tail():
    sched = schedulers.modelscope_ddim()
    sched.set_timesteps(10)
    tail = sched.timesteps[6:]
    seen = []
    with torch.no_grad():
        denoise(sched, lambda x, t: (seen.append(int(t)), torch.zeros_like(x))[1], torch.randn(1, 2, 2), 10,
                timesteps=tail, scale_noise=False, seed=0)
    assert seen == tail.tolist()


def test_modelscope_ddim_differs_from_plain_leading_only_where_modelscope_does():
    from diffusers import DDIMScheduler

    plain = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False)
    ours = schedulers.modelscope_ddim()
    for steps in (10, 20, 25, 50):  # divisors of 1000: diffusers' "leading"+1 is ModelScope's list
        plain.set_timesteps(steps)
        ours.set_timesteps(steps)
        assert ours.timesteps.tolist() == plain.timesteps.tolist()
    ours.set_timesteps(7)
    assert ours.timesteps.tolist() == [995, 853, 711, 569, 427, 285, 143, 1]  # 1 + arange(0, 1000, 142), reversed
    assert isinstance(ours, DDIMScheduler)
    ours.set_timesteps(1000)
    assert ours.timesteps[:2].tolist() == [999, 999] and ours.timesteps[-1] == 1  # 1000 clamped to T - 1
