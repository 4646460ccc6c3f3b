"""The exported ModelScope T2V graphs (UNet, text encoder, VAE decoder and encoder) on ONNX
Runtime against the same torch modules, and a whole sampled video ORT vs eager."""
from __future__ import annotations

import pytest
import torch
from pipeline_contract import PipelineContract


@pytest.fixture(scope="module")
def models(tiny_modelscope_folder, tmp_path_factory):
    import os

    from ezvtb.sd_video import SDVideo

    old = os.environ.get("EZVTB_HOME")
    os.environ["EZVTB_HOME"] = str(tmp_path_factory.mktemp("ezvtb_home"))
    try:
        yield SDVideo(tiny_modelscope_folder, backend="cpu"), SDVideo(tiny_modelscope_folder, backend="torch")
    finally:
        if old is None:
            os.environ.pop("EZVTB_HOME", None)
        else:
            os.environ["EZVTB_HOME"] = old


def _cmp(name, ref, out, tol):
    err = (ref - out).abs().max().item()
    print(f"{name}: ORT vs torch max |diff| {err:.3g} (max |x| {ref.abs().max().item():.3g})")
    assert ref.abs().max().item() > 1e-2
    assert err <= tol, name
    return err


@pytest.mark.slow  # exports the tiny graphs (tens of seconds on 2 cores)
def test_each_graph_matches_torch(models):
    ort, eager = models
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[547, 320, 513, 548] + [0] * 73])
    with torch.no_grad():
        _cmp("text encoder", eager.text_encoder(ids), ort.text_encoder(ids), 1e-4)
        x = torch.randn(1, 4, 3, 4, 6, generator=g)
        t = torch.tensor([501.0])
        ctx = torch.randn(1, 77, 1024, generator=g)
        _cmp("unet f3 4x6", eager.unet(x, t, ctx), ort.unet(x, t, ctx), 1e-4)
        z = torch.randn(2, 4, 4, 4, generator=g)
        _cmp("vae decoder", eager.vae_decoder(z), ort.vae_decoder(z), 1e-4)
        img = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
        _cmp("vae encoder", eager.vae_encoder(img), ort.vae_encoder(img), 1e-4)
    assert {type(r).__name__ for r in (ort.unet, ort.text_encoder)} == {"GraphRunner"}
    assert ort.unet.backend == "cpu" and len(ort.unet.paths) == 1
    assert all(p.suffix == ".onnx" and p.is_file() for p in ort.unet.paths.values())


@pytest.mark.slow  # exports the tiny graphs (tens of seconds on 2 cores)
def test_sampled_video_matches_eager(models):
    ort, eager = models
    kw = dict(timesteps=2, image_size=(32, 32), num_frames=2, seed=5)
    a, b = eager("a cat", **kw), ort("a cat", **kw)
    _cmp("t2v video (2 steps, CFG 9)", a, b, 1e-3)


@pytest.mark.slow  # exports the tiny graphs (tens of seconds on 2 cores)
class TestSDVideoContract(PipelineContract):
    """The pipeline contract on a tiny ModelScope folder (real layout): 2 DDIM steps, CFG 9, 2 frames of 32x32."""

    tolerance = 1e-3

    @pytest.fixture(scope="class")
    def pipelines(self, models):
        ort, eager = models
        return eager, ort

    def run(self, pipe, seed):
        return pipe("a cat", timesteps=2, image_size=(32, 32), num_frames=2, seed=seed)

    def bad_calls(self, pipe):
        return [("guidance_scale", lambda: pipe("a cat", guidance_scale="9")),
                ("image_size", lambda: pipe("a cat", image_size=(30, 32))),
                ("num_frames", lambda: pipe("a cat", num_frames=0)),
                ("t_start", lambda: pipe("a cat", t_start=2))]
