"""ezvtb.diffusion.util (the seed-002 names) against closed forms and independent implementations:
CompVis latent-diffusion's originals (stable-diffusion-sdkit's ``ldm.modules.diffusionmodules.util``,
loaded by file path), diffusers (`get_timestep_embedding`, `DDIMScheduler`, `AlphaBlender`,
`betas_for_alpha_bar`).
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ezvtb.diffusion import util  # noqa: E402

from compvis_ldm import ldm_util  # noqa: E402

SEED_NAMES = ["AlphaBlender", "make_beta_schedule", "make_ddim_timesteps", "make_ddim_sampling_parameters",
              "betas_for_alpha_bar", "extract_into_tensor", "checkpoint", "CheckpointFunction",
              "timestep_embedding", "zero_module", "scale_module", "mean_flat", "avg_pool_nd", "HybridConditioner",
              "noise_like"]


def test_all_fifteen_seed_names_with_their_signatures():
    assert len(SEED_NAMES) == 15
    for n in SEED_NAMES:
        assert hasattr(util, n), n
    sig = {n: inspect.signature(getattr(util, n)) for n in SEED_NAMES if n != "CheckpointFunction"}
    defaults = lambda n: {k: p.default for k, p in sig[n].parameters.items()}  # noqa: E731
    assert defaults("make_beta_schedule") == {"schedule": inspect._empty, "n_timestep": inspect._empty,
                                              "linear_start": 1e-4, "linear_end": 2e-2, "cosine_s": 8e-3}
    assert defaults("make_ddim_timesteps")["verbose"] is True
    assert defaults("make_ddim_sampling_parameters")["verbose"] is True
    assert defaults("betas_for_alpha_bar")["max_beta"] == 0.999
    assert defaults("timestep_embedding") == {"timesteps": inspect._empty, "dim": inspect._empty,
                                              "max_period": 10000, "repeat_only": False}
    assert list(sig["checkpoint"].parameters) == ["func", "inputs", "params", "flag"]
    assert list(sig["extract_into_tensor"].parameters) == ["a", "t", "x_shape"]
    assert defaults("noise_like")["repeat"] is False
    assert defaults("AlphaBlender") == {"alpha": inspect._empty, "merge_strategy": "learned_with_images",
                                        "rearrange_pattern": "b t -> (b t) 1 1"}
    assert list(sig["HybridConditioner"].parameters) == ["c_concat_config", "c_crossattn_config"]
    assert issubclass(util.CheckpointFunction, torch.autograd.Function)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sqrt_linear", "sqrt"])
def test_beta_schedules_equal_compvis(schedule):
    ldm = ldm_util()
    ours = util.make_beta_schedule(schedule, 1000, 0.00085, 0.012)
    theirs = ldm.make_beta_schedule(schedule, 1000, 0.00085, 0.012)
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    assert np.abs(ours - theirs).max() <= 1e-12


def test_beta_schedules_closed_forms_and_diffusers():
    from diffusers import DDPMScheduler

    lin = util.make_beta_schedule("linear", 5, 1e-4, 4e-4)
    assert np.allclose(lin, np.linspace(0.01, 0.02, 5) ** 2)
    assert np.allclose(util.make_beta_schedule("sqrt", 3, 0.04, 0.16), [0.2, math.sqrt(0.1), 0.4])  # sqrt(linspace)
    cos = util.make_beta_schedule("squaredcos_cap_v2", 1000)
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.double().numpy()
    assert np.abs(cos - ref).max() <= 1e-6  # diffusers computes in float32
    ab = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert np.allclose(cos, [min(1 - ab((i + 1) / 1000) / ab(i / 1000), 0.999) for i in range(1000)])
    assert cos.max() == 0.999  # capped at the end
    with pytest.raises(ValueError, match="schedule"):
        util.make_beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="n_timestep"):
        util.make_beta_schedule("linear", 0)


@pytest.mark.parametrize("method,steps", [("uniform", 10), ("uniform", 7), ("uniform", 50), ("quad", 10),
                                          ("quad", 33)])
def test_ddim_timesteps_equal_compvis(method, steps):
    ldm = ldm_util()
    ours = util.make_ddim_timesteps(method, steps, 1000, verbose=False)
    assert ours.tolist() == ldm.make_ddim_timesteps(method, steps, 1000, verbose=False).tolist()


def test_ddim_timesteps_seed_example_diffusers_and_errors(caplog):
    import logging

    from diffusers import DDIMScheduler

    with caplog.at_level(logging.INFO, logger="ezvtb.diffusion"):
        out = util.make_ddim_timesteps("uniform", 10, 100)
    assert out.tolist() == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91]  # the seed's example
    assert "Selected timesteps for ddim sampler" in caplog.text
    sched = DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    for s in (10, 25, 50):
        sched.set_timesteps(s)
        assert sched.timesteps.tolist() == util.make_ddim_timesteps("uniform", s, 1000, False)[::-1].tolist()
    with pytest.raises(NotImplementedError, match="ddim_discr_method"):
        util.make_ddim_timesteps("cosine", 10, 1000)
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        util.make_ddim_timesteps("uniform", 2000, 1000)


def test_ddim_sampling_parameters_equal_compvis_and_formula():
    ldm = ldm_util()
    alphacums = np.cumprod(1 - util.make_beta_schedule("linear", 1000, 0.00085, 0.012))
    ts = util.make_ddim_timesteps("uniform", 20, 1000, verbose=False)
    for eta in (0.0, 0.5, 1.0):
        ours = util.make_ddim_sampling_parameters(alphacums, ts, eta, verbose=False)
        theirs = ldm.make_ddim_sampling_parameters(alphacums, ts, eta, verbose=False)
        for a, b in zip(ours, theirs):
            assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-12
    s, a, ap = util.make_ddim_sampling_parameters(torch.tensor(alphacums), ts, 1.0, verbose=False)
    assert ap[0] == alphacums[0] and np.array_equal(ap[1:], alphacums[ts[:-1]])
    assert np.allclose(s, np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)))
    with pytest.raises(ValueError, match="ddim_timesteps"):
        util.make_ddim_sampling_parameters(alphacums, [5000], 0.0)
    with pytest.raises(ValueError, match="eta"):
        util.make_ddim_sampling_parameters(alphacums, ts, -1.0)


def test_betas_for_alpha_bar_matches_diffusers():
    from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar as hf

    ours = util.betas_for_alpha_bar(50, lambda t: math.exp(t * -12.0))
    theirs = hf(50, alpha_transform_type="exp").double().numpy()
    assert np.abs(ours - theirs).max() <= 1e-6
    assert np.allclose(util.betas_for_alpha_bar(3, lambda t: 1 - t, max_beta=0.5), [1 / 3, 0.5, 0.5], atol=1e-15)
    with pytest.raises(ValueError, match="alpha_bar"):
        util.betas_for_alpha_bar(3, 0.5)


def test_timestep_embedding_equals_diffusers_and_compvis():
    from diffusers.models.embeddings import get_timestep_embedding

    ldm = ldm_util()
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    for dim in (8, 320, 33):
        ours = util.timestep_embedding(t, dim)
        hf = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert ours.shape == (4, dim)
        assert float((ours - hf).abs().max()) <= 1e-5
        assert float((ours - ldm.timestep_embedding(t, dim)).abs().max()) == 0.0
    assert util.timestep_embedding(torch.tensor([0.0]), 4).tolist() == [[1.0, 1.0, 0.0, 0.0]]
    assert util.timestep_embedding(torch.tensor([3.0, 4.0]), 3, repeat_only=True).tolist() == [[3.0] * 3, [4.0] * 3]
    with pytest.raises(ValueError, match="timesteps"):
        util.timestep_embedding(torch.zeros(2, 2), 4)


def test_extract_into_tensor_and_small_helpers():
    a = torch.arange(10.0)
    out = util.extract_into_tensor(a, torch.tensor([3, 7]), (2, 4, 5, 5))
    assert out.shape == (2, 1, 1, 1) and out.flatten().tolist() == [3.0, 7.0]
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert util.mean_flat(x).tolist() == [5.5, 17.5]
    lin = torch.nn.Linear(3, 3)
    w = lin.weight.detach().clone()
    assert util.scale_module(lin, 2.0) is lin and torch.allclose(lin.weight, 2 * w)
    assert util.zero_module(lin) is lin and all(float(p.detach().abs().sum()) == 0 for p in lin.parameters())
    for d, cls in ((1, torch.nn.AvgPool1d), (2, torch.nn.AvgPool2d), (3, torch.nn.AvgPool3d)):
        assert isinstance(util.avg_pool_nd(d, kernel_size=2), cls)
    with pytest.raises(ValueError, match="dims"):
        util.avg_pool_nd(4, 2)
    g = torch.Generator().manual_seed(0)
    n = util.noise_like((3, 2, 5), "cpu", repeat=True, generator=g)
    assert torch.equal(n[0], n[2]) and not torch.equal(n[0], util.noise_like((3, 2, 5), "cpu")[0])
    assert util.noise_like((4, 2), "cpu").shape == (4, 2)


def test_checkpoint_function_recomputes_and_gives_equal_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    forwards = []

    def run(x, y):
        forwards.append(1)
        return net(x) * y, (x * y).sum(-1)

    x = torch.randn(4, 8, requires_grad=True)
    y = torch.randn(4, 8, requires_grad=True)
    plain = run(x, y)
    loss_plain = plain[0].pow(2).sum() + plain[1].sum()
    g_plain = torch.autograd.grad(loss_plain, [x, y, *net.parameters()])
    forwards.clear()
    ck = util.checkpoint(run, (x, y), tuple(net.parameters()), True)
    assert len(forwards) == 1
    assert ck[0].grad_fn is not None and type(ck[0].grad_fn).__name__.startswith("CheckpointFunction")
    assert torch.equal(ck[0], plain[0]) and torch.equal(ck[1], plain[1])
    loss_ck = ck[0].pow(2).sum() + ck[1].sum()
    g_ck = torch.autograd.grad(loss_ck, [x, y, *net.parameters()])
    assert len(forwards) == 2, "backward must recompute the forward"
    err = max(float((a - b).abs().max()) for a, b in zip(g_plain, g_ck))
    print(f"checkpoint vs plain gradient max abs {err:.2e}")
    assert err <= 1e-6
    # flag False: the plain call, no custom function
    out = util.checkpoint(run, (x, y), tuple(net.parameters()), False)
    assert type(out[0].grad_fn).__name__ != "CheckpointFunctionBackward"


def test_alpha_blender_strategies_and_diffusers():
    from diffusers.models.resnet import AlphaBlender as HfAlphaBlender

    xs, xt = torch.randn(6, 5, 8), torch.randn(6, 5, 8)  # (b t) l c with b = 2, t = 3
    fixed = util.AlphaBlender(0.3, "fixed")
    assert "mix_factor" in dict(fixed.named_buffers()) and not list(fixed.parameters())
    assert torch.allclose(fixed(xs, xt), 0.3 * xs + 0.7 * xt)
    learned = util.AlphaBlender(0.7, "learned")
    assert isinstance(learned.mix_factor, torch.nn.Parameter)
    a = torch.sigmoid(torch.tensor(0.7))
    assert torch.allclose(learned(xs, xt), a * xs + (1 - a) * xt)
    ind = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    ours = util.AlphaBlender(-0.4)
    theirs = HfAlphaBlender(-0.4, "learned_with_images")
    with torch.no_grad():
        got, want = ours(xs, xt, ind), theirs(xs, xt, ind)
    assert float((got - want).abs().max()) <= 1e-7
    alpha = ours.get_alpha(ind)
    assert alpha.shape == (6, 1, 1) and alpha[1].item() == 1.0 and alpha[3].item() == 1.0
    assert set(ours.state_dict()) == {"mix_factor"}  # sgm's `time_mixer.mix_factor` key
    with pytest.raises(ValueError, match="merge_strategy"):
        util.AlphaBlender(0.5, "average")
    with pytest.raises(ValueError, match="image_only_indicator"):
        ours(xs, xt)


def test_hybrid_conditioner_builds_from_configs():
    cond = util.HybridConditioner({"target": "torch.nn.Identity"},
                                  {"target": "torch.nn.Linear", "params": {"in_features": 4, "out_features": 2}})
    c, x = torch.randn(1, 3, 2, 2), torch.randn(1, 7, 4)
    out = cond(c, x)
    assert set(out) == {"c_concat", "c_crossattn"}
    assert torch.equal(out["c_concat"][0], c) and out["c_crossattn"][0].shape == (1, 7, 2)
    assert isinstance(cond.crossattn_conditioner, torch.nn.Linear)
    with pytest.raises(ValueError, match="config"):
        util.HybridConditioner({"params": {}}, torch.nn.Identity())
