"""SV4D sampling flow (`ezvtb.novel_view.sv4d`) on tiny random models: checkpoint split, guidance scales against
upstream's formula, conditioning (uncond zeroes), the whole video -> SV3D orbit -> anchor -> dense flow (shapes,
input view kept, determinism per seed), and the exported sessions against torch per step and end to end."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_contract import PipelineContract  # noqa: E402
from sgm_video_fixtures import clip_visual_tensors, ldm_vae_parts  # noqa: E402
from sgm_video_fixtures import tiny_checkpoint as tiny_sv3d_checkpoint  # noqa: E402
from test_sv4d_unet import tiny_checkpoint as tiny_unet_checkpoint  # noqa: E402

KW = dict(num_steps=2, num_head_channels=16, clip_head_width=32, frames_per_sample=3, views_per_sample=2)
SUB = (0, 1, 3)  # V+1 = 3 of a 4-view tiny orbit


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # module scope: in force before the class-scoped contract fixtures run the model
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_sv4d_checkpoint(sv4d2: bool = False, seed: int = 0, distinct_view_encoder: bool = False) -> dict:
    sd = {"model.diffusion_model." + k: v for k, v in tiny_unet_checkpoint(sv4d2, seed).items()}
    enc, quant, dec = ldm_vae_parts(seed + 10)
    enc2, quant2, _ = ldm_vae_parts(seed + 30) if distinct_view_encoder else (enc, quant, None)
    for i, (e, q) in {1: (enc, quant), 4: (enc2, quant2), 5: (enc, quant)}.items():
        sd.update({f"conditioner.embedders.{i}.encoder.encoder." + k: v.clone() for k, v in e.state_dict().items()})
        sd.update({f"conditioner.embedders.{i}.encoder.quant_conv." + k: v.clone() for k, v in q.state_dict().items()})
    sd.update({"first_stage_model.decoder." + k: v for k, v in dec.state_dict().items()})
    sd.update({"conditioner.embedders.0.open_clip.model.visual." + k: v
               for k, v in clip_visual_tensors(seed + 20).items()})
    sd["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.tensor(4.6)
    return {k: v.contiguous() for k, v in sd.items()}


@pytest.fixture(scope="module")
def parts():
    from ezvtb.models.sgm_video.checkpoint import split_sv4d_state_dict

    return split_sv4d_state_dict(tiny_sv4d_checkpoint(seed=2))


@pytest.fixture(scope="module")
def eager(parts):
    from ezvtb.novel_view.sv4d import SV4DModel

    return SV4DModel(parts, "sv4d", backend="torch", **KW)


@pytest.fixture(scope="module")
def ort(parts, tmp_path_factory):
    from ezvtb.novel_view.sv4d import SV4DModel

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(tmp_path_factory.mktemp("ezvtb_home")))
        model = SV4DModel(parts, "sv4d", backend="cpu", **KW)
        yield model
        model.close()


def video(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def spatiotemporal_scales(num_frames, num_views, max_scale, min_scale=1.0):
    from ezvtb.diffusion.guidance import grid_guidance_scales

    return grid_guidance_scales("spatiotemporal", num_frames, num_views, max_scale, min_scale)


def euler_step(unet, x, sigmas, i, cond, uncond, scales):
    """Step i (sigmas[i] -> sigmas[i + 1] of an `len(sigmas) - 1`-step EDM schedule) of the shared loop."""
    from ezvtb.diffusion.sampling import denoise
    from ezvtb.diffusion.schedulers import edm_euler
    from ezvtb.novel_view.sv4d import sv4d_denoiser

    sched = edm_euler()
    sched.set_timesteps(len(sigmas) - 1)
    assert abs(float(sched.sigmas[i]) / float(sigmas[i]) - 1) < 1e-5
    return denoise(sched, sv4d_denoiser(unet, cond, uncond, scales), x, len(sigmas) - 1,
                   timesteps=[sched.timesteps[i]], scale_noise=False)


def test_spatiotemporal_scales_match_upstream_formula():
    got = spatiotemporal_scales(2, 3, 2.0, 1.0)
    assert torch.allclose(got, torch.tensor([1.0, 1.5, 1.0, 1.5, 2.0, 1.5]), atol=1e-6)
    full = spatiotemporal_scales(5, 8, 2.0, 1.0)
    assert full.shape == (40,) and full.min() == 1.0 and abs(full.max().item() - 1.9285714) < 1e-5
    with pytest.raises(ValueError, match="num_views"):
        spatiotemporal_scales(5, 0, 2.0)


def test_split_checkpoint(parts):
    from ezvtb.models.sgm_video.checkpoint import split_sv4d_state_dict
    from ezvtb.novel_view.sv4d import SV4DModel

    assert set(parts.encoders) == {1, 4, 5} and parts.variant == "sv4d"
    sd = tiny_sv4d_checkpoint(seed=2)
    with pytest.raises(ValueError, match="no SV4D part"):
        split_sv4d_state_dict(dict(sd, **{"conditioner.embedders.7.foo": torch.zeros(1)}))
    with pytest.raises(ValueError, match="cond_view VAE encoder"):
        split_sv4d_state_dict({k: v for k, v in sd.items() if not k.startswith("conditioner.embedders.4.")})
    with pytest.raises(ValueError, match="motion_blocks"):
        split_sv4d_state_dict({k: v for k, v in sd.items() if ".motion_blocks." not in k})
    shared = SV4DModel(parts, "sv4d", **KW)
    assert shared.conditioner["view_encoder"].vae is shared.conditioner["cond_encoder"].vae
    distinct = SV4DModel(split_sv4d_state_dict(tiny_sv4d_checkpoint(seed=2, distinct_view_encoder=True)),
                         "sv4d", **KW)
    assert distinct.conditioner["view_encoder"].vae is not distinct.conditioner["cond_encoder"].vae


def test_checkpoint_file_detects_sv4d2(tmp_path):
    from safetensors.torch import save_file

    from ezvtb.novel_view.sv4d import SV4DModel

    p = tmp_path / "tiny_sv4d2.safetensors"
    save_file(tiny_sv4d_checkpoint(sv4d2=True, seed=3), str(p))
    m = SV4DModel.from_checkpoint(p, **KW)
    assert m.variant.name == "sv4d2" and m.model.hp.use_3d_attention and m.model.hp.camera_embedding
    with pytest.raises(ValueError, match="num_frames"):
        SV4DModel.from_checkpoint(p, **dict(KW, num_frames=40))
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        SV4DModel.from_checkpoint(tmp_path / "missing.safetensors")
    sv3d = tmp_path / "sv3d.safetensors"
    save_file(tiny_sv3d_checkpoint("sv3d_u", seed=1), str(sv3d))
    with pytest.raises(ValueError, match="not an SV4D checkpoint"):
        SV4DModel.from_checkpoint(sv3d)


def test_conditioning_zeroes_the_unconditional_branch(eager):
    from ezvtb.novel_view.sv4d import sv4d_conditioning

    v = video(5)
    cond, uncond = sv4d_conditioning(eager, v[:3], v[3:5], [1.4] * 6, [0.3, 2.0] * 3)
    assert cond.concat.shape == (6, 4, 8, 8) and cond.context.shape == (1, 3, 32)
    assert cond.cond_view.shape == (2, 4, 8, 8)
    assert torch.equal(cond.concat[0], cond.concat[1]) and not torch.equal(cond.concat[0], cond.concat[2])
    assert uncond.concat.abs().max() == 0 and uncond.context.abs().max() == 0 and uncond.cond_view.abs().max() == 0
    # ADM = 256 noise level (sigma 0; zeroed in uncond as upstream's force-zero of the cond-frames embedder)
    # + 512 polar + 512 azimuth (kept)
    assert cond.vector.shape == (6, 1280) and uncond.vector[:, :256].abs().max() == 0
    assert cond.vector[:, :256].abs().max() == 1 and torch.equal(cond.vector[:, 256:], uncond.vector[:, 256:])
    mv_off, _ = sv4d_conditioning(eager, v[:3], v[3:5], [1.4] * 6, [0.3, 2.0] * 3, cond_mv=False)
    assert mv_off.cond_view.abs().max() == 0
    with pytest.raises(ValueError, match="polar_rad"):
        sv4d_conditioning(eager, v[:3], v[3:5], [1.4] * 5, [0.3] * 6)
    with pytest.raises(ValueError, match="cond_view"):
        sv4d_conditioning(eager, v[:3], v[3:5, :, :32], [1.4] * 6, [0.3] * 6)


def orbit(n=4, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def run_flow(model, seed=23, **kw):
    from ezvtb.novel_view.sv4d import sv4d_novel_views

    kw.setdefault("views_t0", orbit())
    return sv4d_novel_views(model, video(7), subsampled_views=SUB, seed=seed, decoding_t=2, progress=False, **kw)


def test_flow_shapes_input_view_and_determinism(eager):
    out = run_flow(eager)
    assert out.shape == (7, 3, 3, 64, 64) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], torch.clamp((video(7) + 1) / 2, 0, 1))  # view 0 is the input video
    novel = out[:, 1:]
    assert novel.std() > 0.01 and (novel[1:] - novel[:-1]).abs().max() > 0.01
    assert torch.equal(run_flow(eager), out)  # same seed, same video
    assert (run_flow(eager, seed=24) - out).abs().max() > 1e-3
    assert (run_flow(eager, views_t0=orbit(seed=6)) - out)[:, 1:].abs().max() > 1e-3  # the orbit conditions it
    with pytest.raises(ValueError, match="frames"):
        from ezvtb.novel_view.sv4d import sv4d_novel_views

        sv4d_novel_views(eager, video(5), views_t0=orbit(), subsampled_views=SUB, progress=False)
    with pytest.raises(ValueError, match="subsampled_views"):
        run_flow(eager, views_t0=orbit(3))
    with pytest.raises(ValueError, match="sv3d"):
        run_flow(eager, views_t0=None)


def test_flow_from_the_sv3d_orbit_and_videos(eager, tmp_path):
    from ezvtb.models.sgm_video.checkpoint import split_state_dict
    from ezvtb.novel_view.model import VideoModel
    from ezvtb.novel_view.sv4d import write_novel_view_videos
    from ezvtb.novel_view.video_io import read_frames

    sv3d = VideoModel(split_state_dict(tiny_sv3d_checkpoint("sv3d_u", seed=7), "sv3d_u"), "sv3d_u",
                      num_frames=4, num_steps=2, num_head_channels=16, clip_head_width=32)
    out, t0 = run_flow(eager, sv3d=sv3d, views_t0=None, return_t0_views=True)
    assert out.shape == (7, 3, 3, 64, 64) and t0.shape == (3, 3, 64, 64)
    assert torch.equal(t0[0], out[0, 0])  # view 0 of the orbit is the input frame (rolled first)
    assert torch.equal(run_flow(eager, sv3d=sv3d, views_t0=None), out)
    paths = write_novel_view_videos(tmp_path, out, base_count=3, t0_views=t0)
    assert [p.name for p in paths] == ["000003_t000.mp4", "000003_v001.mp4", "000003_v002.mp4", "000003_diag.mp4"]
    assert len(read_frames(str(paths[1]))) == 7


@pytest.mark.slow
def test_exported_sessions_match_torch(eager, ort):
    from ezvtb.novel_view.sv4d import sv4d_conditioning

    v = video(5)
    cond, uncond = sv4d_conditioning(eager, v[:3], v[3:5], [1.4] * 6, [0.3, 2.0] * 3)
    cond_o, uncond_o = sv4d_conditioning(ort, v[:3], v[3:5], [1.4] * 6, [0.3, 2.0] * 3)
    for name in ("concat", "context", "vector", "cond_view"):
        err = (getattr(cond, name) - getattr(cond_o, name)).abs().max().item()
        print(f"conditioning {name}: ORT vs torch {err:.2e}")
        assert err <= 1e-4
    from ezvtb.diffusion.schedulers import edm_sigmas, v_scalings

    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    scales = spatiotemporal_scales(3, 2, 2.0)
    sigmas = [float(s) for s in edm_sigmas(3)]  # 700, 3.7, 0.002, 0
    with eager.stage("unet") as u_t, ort.stage("unet") as u_o:
        for i in (0, 1):  # the UNet call of two Euler steps, then the steps
            sigma, nxt = sigmas[i], sigmas[i + 1]
            _, _, c_in, c_noise = (float(c) for c in v_scalings(sigma))
            args = (torch.cat([torch.cat([x, x]) * sigma * c_in, torch.cat([uncond.concat, cond.concat])], 1),
                    torch.full((12,), c_noise), torch.cat([uncond.context, cond.context]),
                    torch.cat([uncond.vector, cond.vector]), torch.cat([uncond.cond_view, cond.cond_view]))
            err = (u_t(*args) - u_o(*args)).abs().max().item()
            a = euler_step(u_t, x * sigma, sigmas, i, cond, uncond, scales)
            b = euler_step(u_o, x * sigma, sigmas, i, cond, uncond, scales)
            rel = ((a - b).abs().max() / a.abs().max()).item()
            print(f"sigma {sigma}: UNet ORT vs torch {err:.2e}; Euler step to {nxt}: relative {rel:.2e}")
            assert err <= 1e-4 and rel <= 1e-5
    a, b = run_flow(eager), run_flow(ort)
    err = (a - b).abs().max().item()
    print(f"whole SV4D flow (anchor + 3 dense windows, 2 steps): ORT vs torch {err:.2e}")
    assert err <= 1e-3


def test_run_img2vid_semantics(eager):
    """Upstream's run_img2vid for SV4D: one T x V grid; cond_mv=False drops the views; options override."""
    from ezvtb.novel_view.sv4d import settings_from_options, sv4d_run_img2vid

    v = video(5)
    vd = {"T": 6, "options": {"cfg": 2.0, "guider": 5, "num_steps": 2}}
    a = sv4d_run_img2vid(vd, eager, None, 23, [1.4] * 6, [0.3, 2.0] * 3, v[:3], v[3:5], progress=False)
    assert a.shape == (6, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(sv4d_run_img2vid(vd, eager, None, 23, [1.4] * 6, [0.3, 2.0] * 3, v[:3], v[3:5],
                                        progress=False), a)
    b = sv4d_run_img2vid(vd, eager, None, 23, [1.4] * 6, [0.3, 2.0] * 3, v[:3], v[3:5], cond_mv=False,
                         progress=False)
    assert (a - b).abs().max() > 1e-3
    s = settings_from_options(eager, {"guider": 2, "cfg": 2.0, "min_cfg": 2.0, "sigma_max": 500.0})
    assert s.guider == "linear" and s.min_scale == 1.0 and s.sigma_max == 500.0
    with pytest.raises(ValueError, match="guider"):
        settings_from_options(eager, {"guider": 3})
    with pytest.raises(ValueError, match="version_dict"):
        sv4d_run_img2vid({"T": 40}, eager, None, 23, [1.4] * 6, [0.3] * 6, v[:3], v[3:5], progress=False)
    with pytest.raises(ValueError, match="cond_motion"):
        sv4d_run_img2vid(vd, eager, v[:1], 23, [1.4] * 6, [0.3] * 6)


@pytest.mark.skipif(not __import__("os").environ.get("EZVTB_SGM_PATH"),
                    reason="needs the upstream generative-models checkout on EZVTB_SGM_PATH (not on PyPI)")
def test_euler_step_matches_upstream_denoiser_guider_and_discretization():
    """One guided Euler step: ours vs upstream's Denoiser(VScalingWithEDMcNoise) around OpenAIWrapper(upstream
    SpatialUNetModelWithTime), SpatiotemporalPredictionGuider (prepare_inputs + mixing), EDMDiscretization and
    to_d, composed as EulerEDMSampler.sampler_step (s_churn 0) does; the same random weights on both sides."""
    import os

    sys.path.insert(0, os.environ["EZVTB_SGM_PATH"])
    from sgm.modules.diffusionmodules.denoiser import Denoiser
    from sgm.modules.diffusionmodules.discretizer import EDMDiscretization
    from sgm.modules.diffusionmodules.guiders import SpatiotemporalPredictionGuider
    from sgm.modules.diffusionmodules.sampling_utils import to_d
    from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
    from test_sv4d_unet import _upstream_unet, randomise_

    from ezvtb.diffusion.schedulers import edm_sigmas
    from ezvtb.models.sgm_video.sv4d_unet import build_sv4d_unet
    from ezvtb.novel_view.sv4d import SV4DConditioning

    ref_unet = randomise_(_upstream_unet(False), 12).eval()
    ours = build_sv4d_unet(ref_unet.state_dict(), num_head_channels=16)
    T, V = 3, 4
    sig_up = EDMDiscretization(sigma_min=0.002, sigma_max=700.0, rho=7.0)(4)
    sigmas = edm_sigmas(4, 0.002, 700.0, 7.0)
    assert torch.allclose(sig_up.double(), sigmas, rtol=1e-5, atol=1e-9), (sig_up, sigmas)
    g = torch.Generator().manual_seed(8)
    cond = SV4DConditioning(torch.randn(T * V, 4, 8, 8, generator=g), torch.randn(1, T, 32, generator=g),
                            torch.randn(T * V, 96, generator=g), torch.randn(V, 4, 8, 8, generator=g))
    uncond = SV4DConditioning(torch.zeros_like(cond.concat), torch.zeros_like(cond.context),
                              torch.randn(T * V, 96, generator=g), torch.zeros_like(cond.cond_view))
    guider = SpatiotemporalPredictionGuider(max_scale=2.0, num_frames=T * V, num_views=V, min_scale=1.0,
                                            additional_cond_keys=["cond_view", "cond_motion"])
    assert torch.allclose(guider.scale[0], spatiotemporal_scales(T, V, 2.0, 1.0), atol=1e-6)
    denoiser = Denoiser({"target": "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"})
    wrapped = OpenAIWrapper(ref_unet)
    as_dict = lambda c: {"concat": c.concat, "crossattn": c.context, "vector": c.vector,  # noqa: E731
                         "cond_view": c.cond_view, "cond_motion": torch.zeros(T, 4, 8, 8)}
    x = torch.randn(T * V, 4, 8, 8, generator=g) * float(sigmas[1])
    for i in (1, 2):
        s, s_next = float(sig_up[i]), float(sig_up[i + 1])
        with torch.no_grad():
            xin, sin, c_in = guider.prepare_inputs(x, torch.full((T * V,), s), as_dict(cond), as_dict(uncond))
            denoised = guider(denoiser(wrapped, xin, sin, c_in, num_video_frames=T * V,
                                       image_only_indicator=torch.ones(2, T * V)), sin)
            ref = x + to_d(x, torch.full((T * V,), s)[:, None, None, None], denoised) * (s_next - s)
            got = euler_step(ours, x, sigmas, i, cond, uncond, spatiotemporal_scales(T, V, 2.0))
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        print(f"Euler step {s:.3f} -> {s_next:.3f}: ours vs upstream sgm, relative {err:.2e}")
        assert err <= 1e-5
        x = ref


@pytest.mark.slow
def test_sv4d2_flow():
    """SV4D 2.0's window schedule on a small 2.0-layout model (its camera embedding reads the 4 x 320 = 1280-wide
    UNet embedding, so the ADM width 1280 forces 320 channels: one level)."""
    from test_sv4d_unet import randomise_

    from ezvtb.models.sgm_video.checkpoint import split_sv4d_state_dict
    from ezvtb.models.sgm_video.sv4d_unet import SV4DHyper, SV4DUNet
    from ezvtb.novel_view.sv4d import SV4DModel, sv4d2_novel_views, sv4d_novel_views

    hp = SV4DHyper(in_channels=8, out_channels=4, model_channels=320, channel_mult=(1,), num_res_blocks=1,
                   attention_levels=(True,), transformer_depth=(1,), transformer_depth_middle=1, context_dim=32,
                   adm_in_channels=1280, motion_context_dim=4, camera_embedding=True, separate_motion_mixer=True,
                   use_3d_attention=True, num_head_channels=64)
    with torch.device("meta"):
        unet = SV4DUNet(hp)
    unet = randomise_(unet.to_empty(device="cpu"), 9)
    sd = {k: v for k, v in tiny_sv4d_checkpoint(seed=4).items() if not k.startswith("model.diffusion_model.")}
    sd.update({"model.diffusion_model." + k: v.clone() for k, v in unet.sgm_state_dict().items()})
    model = SV4DModel(split_sv4d_state_dict(sd), num_steps=2, clip_head_width=32, frames_per_sample=3,
                      views_per_sample=4)
    assert model.variant.name == "sv4d2" and model.settings.guider == "linear"
    v = video(5)
    out = sv4d2_novel_views(model, v, seed=3, decoding_t=4, progress=False)  # windows [0, 1, 2] and [2, 3, 4]
    assert out.shape == (5, 5, 3, 64, 64) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[:, 0], torch.clamp((v + 1) / 2, 0, 1)) and out[:, 1:].std() > 0.01
    assert torch.equal(sv4d2_novel_views(model, v, seed=3, decoding_t=4, progress=False), out)
    assert (sv4d2_novel_views(model, v, seed=4, decoding_t=4, progress=False) - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="own"):
        sv4d_novel_views(model, video(7), views_t0=orbit(), subsampled_views=(0, 1, 2, 3, 3), progress=False)
    with pytest.raises(ValueError, match="at least"):
        sv4d2_novel_views(model, v[:2], progress=False)


class TestSV4DContract(PipelineContract):
    """The pipeline contract on a tiny SV4D checkpoint (official key layout): one T=3 x V=2 grid, 2 Euler steps."""

    tolerance = 1e-3

    @pytest.fixture(scope="class")
    def pipelines(self, eager, ort):
        return eager, ort

    def run(self, pipe, seed):
        from ezvtb.novel_view.sv4d import sv4d_run_img2vid

        v = video(5)
        return sv4d_run_img2vid({"options": {"num_steps": 2}}, pipe, None, seed, [1.4] * 6, [0.3, 2.0] * 3,
                                v[:3], v[3:5], progress=False)

    def bad_calls(self, pipe):
        from ezvtb.novel_view.sv4d import sv4d_run_img2vid

        v = video(5)
        return [("polar_rad", lambda: sv4d_run_img2vid({}, pipe, None, 1, [1.4] * 5, [0.3] * 6, v[:3], v[3:5])),
                ("cond_motion", lambda: sv4d_run_img2vid({}, pipe, v[:1], 1, [1.4] * 6, [0.3] * 6)),
                ("version_dict", lambda: sv4d_run_img2vid({"T": 40}, pipe, None, 1, [1.4] * 6, [0.3] * 6, v[:3],
                                                          v[3:5]))]
