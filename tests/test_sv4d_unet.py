"""SV4D UNet (`ezvtb.models.sgm_video.sv4d_unet`): official key layout at full size, strict loading of tiny
re-randomised checkpoints, sensitivity to every conditioning input, exported graph vs torch, and (when the upstream
generative-models checkout is on EZVTB_SGM_PATH) against upstream's own `SpatialUNetModelWithTime`."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from ezvtb.models.sgm_video.sv4d_unet import (SV4DHyper, SV4DUNet, build_sv4d_unet, sgm_key_shapes,
                                              sv4d_unet_spec)

MANIFESTS = Path(__file__).resolve().parents[1] / "ezvtb" / "models" / "sgm_video" / "manifests"
PREFIX = "model.diffusion_model."
TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """The shared test machine is oversubscribed; one intra-op thread is several times faster here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter re-drawn (upstream zero-initialises output layers, which would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mix_factor"):
                p.copy_(torch.rand(p.shape, generator=g) * 4 - 2)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def tiny_hyper(sv4d2: bool = False) -> SV4DHyper:
    return SV4DHyper(in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                     attention_levels=(True, True), transformer_depth=(1, 1), transformer_depth_middle=1,
                     context_dim=32, adm_in_channels=128 if sv4d2 else 1280, motion_context_dim=4,
                     camera_embedding=sv4d2, separate_motion_mixer=sv4d2, use_3d_attention=sv4d2,
                     num_head_channels=16)


def tiny_checkpoint(sv4d2: bool = False, seed: int = 0) -> dict:
    """A tiny SV4D UNet state dict in the official layout, every parameter random."""
    with torch.device("meta"):
        model = SV4DUNet(tiny_hyper(sv4d2))
    model = model.to_empty(device="cpu")
    randomise_(model, seed)
    return {k: v.clone() for k, v in model.sgm_state_dict().items()}


def tiny_inputs(adm: int, B=2, T=3, V=4, hw=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = B * T * V
    return (torch.randn(n, 8, hw, hw, generator=g), torch.randn(n, generator=g),
            torch.randn(B, T, 32, generator=g), torch.randn(n, adm, generator=g),
            torch.randn(B * V, 4, hw, hw, generator=g))


@pytest.mark.parametrize("name", ["sv4d", "sv4d2"])
def test_full_size_key_layout_equals_the_official_manifest(name):
    """Hyperparameters read from the manifest's shapes rebuild, on the meta device, exactly its UNet keys/shapes."""
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    unet = {k[len(PREFIX):]: tuple(v) for k, v in manifest.items() if k.startswith(PREFIX)}
    hp = SV4DHyper.from_state_dict({k: torch.empty(v, device="meta") for k, v in unet.items()})
    assert hp.model_channels == 320 and hp.channel_mult == (1, 2, 4, 4) and hp.num_res_blocks == 2
    assert hp.attention_levels == (True, True, True, False) and hp.context_dim == 1024
    assert hp.adm_in_channels == 1280 and hp.motion_context_dim == 4 and hp.in_channels == 8
    assert hp.camera_embedding == hp.separate_motion_mixer == hp.use_3d_attention == (name == "sv4d2")
    ours = sgm_key_shapes(hp)
    assert set(ours) == set(unet), (sorted(set(ours) - set(unet))[:5], sorted(set(unet) - set(ours))[:5])
    bad = [k for k in unet if ours[k] != unet[k]]
    assert not bad, bad[:5]
    n_params = sum(math.prod(s) for s in ours.values())
    print(f"{name}: {len(ours)} UNet tensors equal the manifest; {n_params / 1e9:.3f} B parameters")


@pytest.mark.parametrize("sv4d2", [False, True])
def test_tiny_checkpoint_loads_strictly_and_every_input_matters(sv4d2):
    sd = tiny_checkpoint(sv4d2, seed=3)
    model = build_sv4d_unet(sd, num_head_channels=16)
    assert model.hp == tiny_hyper(sv4d2)
    back = model.sgm_state_dict()
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    x, ts, ctx, y, cv = tiny_inputs(model.hp.adm_in_channels)
    with torch.no_grad():
        base = model(x, ts, ctx, y, cv)
        assert base.shape == (24, 4, 8, 8) and torch.isfinite(base).all() and base.abs().max() > 0.1
        for i, name in enumerate(["x", "timesteps", "context", "y", "cond_view"]):
            args = [x, ts, ctx, y, cv]
            args[i] = args[i] + 0.5
            d = (model(*args) - base).abs().max().item()
            assert d > 1e-3, f"{name} does not change the output ({d})"


def test_strict_load_errors_name_the_keys():
    sd = tiny_checkpoint(seed=4)
    extra = dict(sd, **{"input_blocks.1.1.bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="bogus"):
        build_sv4d_unet(extra, num_head_channels=16)
    missing = {k: v for k, v in sd.items() if not k.startswith("output_blocks.0.1.motion_blocks.0.ff.")}
    with pytest.raises(ValueError, match="missing keys"):
        build_sv4d_unet(missing, num_head_channels=16)
    bad = dict(sd)
    bad["input_blocks.1.1.motion_blocks.0.attn2.to_k.weight"] = torch.zeros(32, 5)
    with pytest.raises(ValueError, match="shape"):
        build_sv4d_unet(bad, num_head_channels=16)
    no_motion = {k: v for k, v in sd.items() if ".motion_blocks." not in k}
    with pytest.raises(ValueError, match="motion_blocks"):
        build_sv4d_unet(no_motion, num_head_channels=16)
    model = build_sv4d_unet(sd, num_head_channels=16)
    x, ts, ctx, y, cv = tiny_inputs(1280)
    with pytest.raises(ValueError, match="rows"):
        model(x[:-1], ts[:-1], ctx, y[:-1], cv)


@pytest.mark.slow
@pytest.mark.parametrize("sv4d2", [False, True])
def test_exported_graph_matches_torch(sv4d2, tmp_path, monkeypatch):
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path))
    from ezvtb.engines.runner import GraphRunner

    model = build_sv4d_unet(tiny_checkpoint(sv4d2, seed=5), num_head_channels=16)
    runner = GraphRunner(model, lambda shapes: sv4d_unet_spec("sv4d_unet_tiny", shapes), name="sv4d-unet-tiny",
                         backend="cpu", progress=False)
    try:
        for step, sigma in enumerate((700.0, 3.0, 0.02)):  # three denoising steps' inputs through one session
            x, _, ctx, y, cv = tiny_inputs(model.hp.adm_in_channels, seed=10 + step)
            ts = torch.full((x.shape[0],), 0.25 * math.log(sigma))
            with torch.no_grad():
                ref = model(x, ts, ctx, y, cv)
            out = runner(x, ts, ctx, y, cv)
            err = (out - ref).abs().max().item()
            print(f"{'sv4d2' if sv4d2 else 'sv4d'} step {step}: ORT vs torch {err:.2e} "
                  f"(|out| max {ref.abs().max():.2f})")
            assert out.shape == ref.shape and err <= TOL
        assert len(runner._sessions) == 1
    finally:
        runner.close()


def _upstream_unet(sv4d2: bool):
    sys.path.insert(0, os.environ["EZVTB_SGM_PATH"])
    from sgm.modules.diffusionmodules.video_model import SpatialUNetModelWithTime

    extra = dict(use_camera_emb=True, use_3d_attention=True, separate_motion_merge_factor=True) if sv4d2 else {}
    return SpatialUNetModelWithTime(
        in_channels=8, model_channels=32, out_channels=4, num_res_blocks=1, attention_resolutions=[2, 1],
        channel_mult=[1, 2], num_head_channels=16, use_linear_in_transformer=True, transformer_depth=1,
        context_dim=32, motion_context_dim=4, adm_in_channels=128 if sv4d2 else 96, num_classes="sequential",
        spatial_transformer_attn_type="softmax", extra_ff_mix_layer=True, use_spatial_context=True,
        use_spatial_transformer=True, legacy=False, time_block_merge_strategy="learned_with_images",
        time_block_merge_factor=0.0, time_kernel_size=[3, 1, 1], time_mix_legacy=False,
        replicate_time_mix_bug=True, use_motion_attention=True, **extra)


@pytest.mark.skipif(not os.environ.get("EZVTB_SGM_PATH"),
                    reason="needs the upstream generative-models checkout on EZVTB_SGM_PATH (not on PyPI)")
@pytest.mark.parametrize("sv4d2", [False, True])
def test_matches_upstream_spatial_unet_with_time(sv4d2):
    """Upstream's SpatialUNetModelWithTime (random weights, its own state dict) vs ours loaded from it."""
    ref = randomise_(_upstream_unet(sv4d2), 11).eval()
    ours = build_sv4d_unet(ref.state_dict(), num_head_channels=16)
    x, ts, ctx, y, cv = tiny_inputs(ours.hp.adm_in_channels, seed=6)
    cond_motion = torch.randn(2 * 3, 4, 8, 8)
    with torch.no_grad():
        a = ref(x, ts, context=ctx, y=y, cond_view=cv, cond_motion=cond_motion, num_video_frames=12,
                image_only_indicator=torch.ones(2, 12))
        b = ours(x, ts, ctx, y, cv)
    err = (a - b).abs().max().item()
    print(f"{'sv4d2' if sv4d2 else 'sv4d'} UNet vs upstream sgm: {err:.2e} (|out| max {a.abs().max():.2f})")
    assert a.abs().max() > 0.1 and err <= TOL


@pytest.mark.skipif(not os.environ.get("EZVTB_SGM_PATH"),
                    reason="needs the upstream generative-models checkout on EZVTB_SGM_PATH (not on PyPI)")
@pytest.mark.parametrize("name", ["sv4d", "sv4d2"])
def test_manifest_equals_upstream_network_on_meta(name):
    """The manifest's UNet part equals upstream's SpatialUNetModelWithTime built from the YAML on the meta device."""
    import yaml

    sys.path.insert(0, os.environ["EZVTB_SGM_PATH"])
    from sgm.modules.diffusionmodules.video_model import SpatialUNetModelWithTime

    cfg = yaml.safe_load((Path(os.environ["EZVTB_SGM_PATH"]) / "scripts" / "sampling" / "configs" /
                          f"{name}.yaml").read_text())
    params = dict(cfg["model"]["params"]["network_config"]["params"], spatial_transformer_attn_type="softmax")
    with torch.device("meta"):
        net = SpatialUNetModelWithTime(**params)
    upstream = {PREFIX + k: list(v.shape) for k, v in net.state_dict().items()}
    manifest = json.loads((MANIFESTS / f"{name}.json").read_text())
    assert upstream == {k: v for k, v in manifest.items() if k.startswith(PREFIX)}
