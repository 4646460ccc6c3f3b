"""A DDIM sampling loop with classifier-free guidance on a tiny random diffusers UNet3DConditionModel
(32/64 channels, every parameter re-drawn): each UNet step on ONNX Runtime against torch (<= 1e-4),
and the whole loop on ORT against the same loop in torch with the same seed (<= 1e-3 on the final
latent). The UNet runs through `GraphRunner` (exported once, then a cache hit). Batched vs two-call
CFG are compared in test_diffusion_schedulers (a second graph export here would double the time).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")

from ezvtb.diffusion import schedulers  # noqa: E402
from ezvtb.diffusion.guidance import guidance_scales, guided_model  # noqa: E402
from ezvtb.diffusion.sampling import denoise, initial_noise  # noqa: E402
from ezvtb.diffusion.unet3d import UNet3DStep, parameter_count, unet3d, unet3d_step_spec  # noqa: E402
from ezvtb.engines.runner import GraphRunner  # noqa: E402

FRAMES, H, W, L, D = 4, 8, 8, 7, 32
# one UNet3D export: ~20 s on an idle 2-core CPU (the TorchScript exporter traces ~2000 nodes)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(tmp_path_factory.mktemp("unet3d_home")))
        net = UNet3DStep(unet3d(32, seed=3)).eval()
        zero_params = [n for n, p in net.named_parameters() if float(p.detach().abs().max()) == 0.0]
        assert not zero_params, f"parameters left at zero: {zero_params[:5]}"
        runner = GraphRunner(net, unet3d_step_spec, name="tiny_unet3d", backend="cpu", progress=False)
        yield net, runner
        runner.close()


def test_unet_step_on_ort_matches_torch(setup):
    net, runner = setup
    print(f"tiny UNet3D: {parameter_count(net) / 1e6:.2f} M parameters")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, FRAMES, H, W, generator=g)
    ctx = torch.randn(2, L, D, generator=g)
    worst = 0.0
    for t in (999.0, 500.0, 1.0):
        ts = torch.full((2,), t)
        with torch.no_grad():
            ref = net(x, ts, ctx)
        got = runner(x, ts, ctx)
        err = float((got - ref).abs().max())
        worst = max(worst, err)
        assert float(ref.abs().max()) > 0.1, "the random UNet must produce a non-trivial output"
    print(f"UNet step ORT vs torch max abs {worst:.2e}")
    assert worst <= 1e-4
    assert len(runner._sessions) == 1


def test_ddim_cfg_loop_on_ort_matches_torch(setup):
    net, runner = setup
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, L, D, generator=g)
    uncond = torch.zeros(1, L, D)
    scales = guidance_scales("constant", FRAMES, 9.0)

    def model(backend_fn):
        def call(x, t, ctx):
            return backend_fn(x, t.float().reshape(-1).expand(x.shape[0]).contiguous(), ctx)
        return guided_model(call, [cond], [uncond], scales, frame_axis=2, batched=True)

    results = {}
    with torch.no_grad():
        for name, fn in (("torch", net), ("ort", runner)):
            lat = initial_noise((1, 4, FRAMES, H, W), seed=42)
            results[name] = denoise(schedulers.modelscope_ddim(), model(fn), lat, 5, seed=7, eta=0.0)
    err = float((results["ort"] - results["torch"]).abs().max())
    print(f"5-step DDIM CFG 9 loop, final latent ORT vs torch max abs {err:.2e} "
          f"(|latent| max {float(results['torch'].abs().max()):.2f})")
    assert err <= 1e-3
    assert torch.isfinite(results["torch"]).all()
    assert len(runner._sessions) == 1  # batch-2 graph reused by every step
