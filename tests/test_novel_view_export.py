"""Every SV3D / SVD network exported to ONNX and run on ONNX Runtime sessions: ORT vs torch per stage and per
sampling step (tiny random configs, all parameters re-randomised), one session per stage, released after it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_contract import PipelineContract  # noqa: E402
from sgm_video_fixtures import tiny_checkpoint  # noqa: E402

TOL = 1e-4
pytestmark = pytest.mark.slow  # ONNX export of four networks (~1-2 min on 2 loaded cores)


@pytest.fixture(scope="module")
def models(tmp_path_factory, monkeypatch_module):
    from ezvtb.models.sgm_video.checkpoint import split_state_dict
    from ezvtb.novel_view.model import VideoModel

    monkeypatch_module.setenv("EZVTB_HOME", str(tmp_path_factory.mktemp("ezvtb_home")))
    parts = split_state_dict(tiny_checkpoint("sv3d_p", seed=4), "sv3d_p")
    kw = dict(num_frames=3, num_steps=2, num_head_channels=16, clip_head_width=32)
    eager = VideoModel(parts, "sv3d_p", backend="torch", **kw)
    ort = VideoModel(parts, "sv3d_p", backend="cpu", **kw)
    return eager, ort


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_each_stage_ort_matches_torch_and_sessions_are_released(models, monkeypatch_module):
    from ezvtb.engines.runner import GraphRunner

    eager, ort = models
    closed = []
    real_close = GraphRunner.close

    def spy_close(self):
        if self.backend != "torch":
            closed.append((self.name, len(self._sessions)))
        real_close(self)
    monkeypatch_module.setattr(GraphRunner, "close", spy_close)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(3, 4, 8, 8, generator=g)
    results = {}
    results["clip"] = (eager.embed_image(img), ort.embed_image(img))
    results["encoder"] = (eager.encode_cond(img), ort.encode_cond(img))
    results["decoder"] = (eager.decode(z, 2), ort.decode(z, 2))
    args = (torch.randn(6, 8, 8, 8, generator=g), torch.randn(6, generator=g), torch.randn(6, 1, 32, generator=g),
            torch.randn(6, 1280, generator=g), torch.zeros(2, 3))
    with eager.stage("unet") as a, ort.stage("unet") as b:
        results["unet"] = (a(*args), b(*args))
    for name, (a, b) in results.items():
        err = (a - b).abs().max().item()
        print(f"{name}: ORT vs torch max |diff| {err:.2e} (|out| max {a.abs().max():.2f})")
        assert a.abs().max() > 0.05 and err <= TOL, name
    # one runner per stage, closed when the stage ended; the decoder made 2 chunk shapes (2 and 1 frames)
    assert [n for n, _ in closed] == ["sv3d_p-clip", "sv3d_p-encoder", "sv3d_p-decoder", "sv3d_p-unet"]
    assert dict(closed)["sv3d_p-decoder"] == 2 and dict(closed)["sv3d_p-unet"] == 1


def test_sampling_steps_ort_match_torch(models):
    """Each denoising step's UNet call (CFG batch, the torch run's latents at that step) on ORT vs torch, and the
    final latents of a whole ORT run vs the torch run (the first step's x ~ 700 * noise sets float32's floor)."""
    from ezvtb.novel_view.sampling import build_conditioning, default_sampler, sample_latents

    eager, ort = models
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    vd = dict(cond_frames_without_noise=img, cond_frames=img, cond_aug=1e-5, polars_rad=[1.4, 1.4, 1.4],
              azimuths_rad=[2.0, 4.0, 0.0])
    c, uc = build_conditioning(eager, vd, 3, ("cond_frames", "cond_frames_without_noise"))
    sampler = default_sampler(eager)
    xs = []
    final = sample_latents(eager, sampler, c, uc, 3, 64, 64, seed=5, progress=False,
                           callback=lambda i, t, x: xs.append(x.clone()))
    sched = sampler.scheduler()
    sched.set_timesteps(sampler.num_steps)
    inputs = [torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * sched.init_noise_sigma] + xs[:-1]
    with eager.stage("unet") as a, ort.stage("unet") as b:
        for i, (t, x) in enumerate(zip(sched.timesteps, inputs)):
            xin = sched.scale_model_input(x, t)
            sched._step_index = None
            args = (torch.cat([torch.cat([xin, xin]), torch.cat([uc.concat, c.concat])], 1),
                    torch.full((6,), float(t)), torch.cat([uc.context, c.context]), torch.cat([uc.vector, c.vector]),
                    torch.zeros(2, 3))
            va, vb = a(*args), b(*args)
            err = (va - vb).abs().max().item()
            print(f"step {i} (t={float(t):.3f}): UNet ORT vs torch max |diff| {err:.2e} (|v| max {va.abs().max():.2f})")
            assert va.abs().max() > 0.05 and err <= TOL
    c2, uc2 = build_conditioning(ort, vd, 3, ("cond_frames", "cond_frames_without_noise"))
    final_ort = sample_latents(ort, default_sampler(ort), c2, uc2, 3, 64, 64, seed=5, progress=False)
    err = (final - final_ort).abs().max().item()
    print(f"final latents after {sampler.num_steps} steps: ORT vs torch {err:.2e} (|z| max {final.abs().max():.2f})")
    assert err <= 1e-3


class TestSV3DContract(PipelineContract):
    """The pipeline contract on a tiny SV3D_p checkpoint (official key layout): a 3-view orbit, 2 Euler steps."""

    tolerance = 1e-3

    @pytest.fixture(scope="class")
    def pipelines(self, models):
        return models

    def run(self, pipe, seed):
        from ezvtb.novel_view import sv3d_orbit

        img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        return sv3d_orbit(pipe, img, num_steps=2, seed=seed, decoding_t=2, progress=False)

    def bad_calls(self, pipe):
        from ezvtb.novel_view import sv3d_orbit

        return [("image", lambda: sv3d_orbit(pipe, torch.zeros(3, 64, 64))),
                ("H, W", lambda: sv3d_orbit(pipe, torch.zeros(1, 3, 60, 64))),
                ("decoding_t", lambda: pipe.decode(torch.zeros(3, 4, 8, 8), 0))]
