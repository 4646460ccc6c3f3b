"""Audio2Coeff networks exported to ONNX and run on an ezvtb.engines session (ORT CPU) vs the torch modules."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from pipeline_contract import PipelineContract  # noqa: E402
from scipy.io import savemat  # noqa: E402

from ezvtb.models.sadtalker.spec import audio2exp_spec, audio2pose_spec  # noqa: E402


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_((0.5 + torch.rand(p.shape, generator=g)) if p.ndim == 1 and not name.endswith("bias")
                    else p + 0.05 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return module.eval()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path / "home"))
    return tmp_path


def test_graphs_match_torch(home):
    from ezvtb.engines.runner import GraphRunner
    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    exp, pose = _randomize(ExpressionNet(), 1), _randomize(PoseNet(), 2)
    with torch.no_grad():  # expression coefficients of order 1-10, as trained ones
        exp.mapping1.weight.mul_(0.05)
    g = torch.Generator().manual_seed(0)
    mels = 4 * torch.rand(10, 1, 80, 16, generator=g) - 4
    ref, blink = torch.randn(1, 10, 64, generator=g), torch.rand(1, 10, 1, generator=g)
    run = GraphRunner(exp, lambda s: audio2exp_spec(s[0][0]), name="test_audio2exp", backend="cpu", progress=False)
    with torch.no_grad():
        want = exp(mels, ref, blink)
    err = (run(mels, ref, blink) - want).abs().max().item()
    print(f"audio2exp ORT vs torch: max |diff| {err:.2e} (max |y| {want.abs().max():.1f})")
    assert err <= 1e-4
    run.close()
    pm = 4 * torch.rand(32, 1, 80, 16, generator=g) - 4
    z, ref6 = torch.randn(1, 64, generator=g), torch.randn(1, 6, generator=g)
    prun = GraphRunner(pose, lambda s: audio2pose_spec(), name="test_audio2pose", backend="cpu", progress=False)
    for style in (0, 45):
        cls = torch.tensor([style])
        with torch.no_grad():
            want = pose(pm, z, cls, ref6)
        err = (prun(pm, z, cls, ref6) - want).abs().max().item()
        print(f"audio2pose ORT vs torch (style {style}): max |diff| {err:.2e}")
        assert err <= 1e-4
    prun.close()


def tiny_bundle(home):
    """A random SadTalker V0.0.2-layout safetensors bundle, a 1.4 s wav and a first-frame .mat in `home`."""
    import soundfile
    from safetensors.torch import save_file

    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    exp, pose = _randomize(ExpressionNet(), 3), _randomize(PoseNet(), 4)
    with torch.no_grad():
        exp.mapping1.weight.mul_(0.05)
    bundle = {f"audio2exp.{k}": v for k, v in exp.state_dict().items()}
    bundle |= {f"audio2pose.{k}": v for k, v in pose.state_dict().items()}
    save_file(bundle, str(home / "bundle.safetensors"))
    rng = np.random.default_rng(0)
    soundfile.write(str(home / "s.wav"), (0.2 * rng.standard_normal(int(16000 * 1.4))).astype(np.float32), 16000)
    savemat(str(home / "face.mat"), {"coeff_3dmm": rng.normal(0, 0.3, (1, 73))})
    return {"use_safetensor": True, "checkpoint": str(home / "bundle.safetensors")}


def test_audio2coeff_ort_matches_torch(home):
    from ezvtb.audio2coeff import Audio2Coeff

    paths = tiny_bundle(home)
    eager = Audio2Coeff(paths, "cpu", backend="torch").from_wav(home / "s.wav", home / "face.mat", pose_style=3, seed=1)
    ort = Audio2Coeff(paths, "cpu", backend="cpu")
    got = ort.from_wav(home / "s.wav", home / "face.mat", pose_style=3, seed=1)
    ort.close()
    err = np.abs(got - eager).max()
    print(f"Audio2Coeff ORT vs torch, 35 frames: max |diff| {err:.2e}")
    assert got.shape == (35, 70) and err <= 1e-4


@pytest.mark.slow
def test_speak_sadtalker_head_motion(home):
    """`ezvtb speak --sadtalker`: Audio2Coeff's head pose (exported graphs) becomes head_x/head_y/neck_z."""
    import argparse

    import soundfile
    from safetensors.torch import save_file

    from ezvtb.cli.speak import sadtalker_head
    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    exp, pose = _randomize(ExpressionNet(), 5), _randomize(PoseNet(), 6)
    bundle = {f"audio2exp.{k}": v for k, v in exp.state_dict().items()}
    bundle |= {f"audio2pose.{k}": v for k, v in pose.state_dict().items()}
    save_file(bundle, str(home / "SadTalker_V0.0.2_256.safetensors"))
    rng = np.random.default_rng(1)
    soundfile.write(str(home / "s.wav"), (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000)
    args = argparse.Namespace(sadtalker=str(home / "SadTalker_V0.0.2_256.safetensors"), speech=str(home / "s.wav"),
                              pose_style=2, seed=0, fps=10.0)
    head = sadtalker_head(args, 10)
    assert head.shape == (10, 3) and np.isfinite(head).all() and np.abs(head).max() <= 1.0
    assert np.ptp(head, axis=0).max() > 0  # the head moves with the (random-weight) pose
    assert np.array_equal(head, sadtalker_head(args, 10))  # seeded


class TestAudio2CoeffContract(PipelineContract):
    """The pipeline contract on a random SadTalker bundle (real key layout): 35 frames of coefficients."""

    tolerance = 1e-4

    @pytest.fixture(scope="class")
    def pipelines(self, tmp_path_factory):
        from ezvtb.audio2coeff import Audio2Coeff

        home = tmp_path_factory.mktemp("a2c")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("EZVTB_HOME", str(home / "home"))
            paths = tiny_bundle(home)
            type(self).home = home
            eager, graph = Audio2Coeff(paths, "cpu", backend="torch"), Audio2Coeff(paths, "cpu", backend="cpu")
            yield eager, graph
            graph.close()

    def run(self, pipe, seed):
        return torch.from_numpy(pipe.from_wav(self.home / "s.wav", self.home / "face.mat", pose_style=3, seed=seed))

    def bad_calls(self, pipe):
        return [("pose_style", lambda: pipe.from_wav(self.home / "s.wav", self.home / "face.mat", pose_style=99)),
                ("audio_path", lambda: pipe.from_wav(self.home / "none.wav", self.home / "face.mat")),
                ("first_coeff_path", lambda: pipe.from_wav(self.home / "s.wav", self.home / "none.mat"))]
