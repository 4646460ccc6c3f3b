"""Audio2Coeff against SadTalker's original code (sadtalker-z): mel front end, expression and pose with random
weights saved in both checkpoint layouts, loading rules, bad inputs."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy.io import loadmat, savemat  # noqa: E402

from ezvtb.audio2coeff import frontend as fe  # noqa: E402
from tests.sadtalker_original import UPSTREAM_EXP_YAML, UPSTREAM_POSE_YAML, original  # noqa: E402

TOL = 1e-4


def _speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, formant-ish test signal with pauses (deterministic)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    y = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t)) ** 2
    y += 0.01 * rng.standard_normal(len(t))
    y[(t > seconds * 0.45) & (t < seconds * 0.55)] = 0.0
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    import soundfile

    soundfile.write(str(path), samples, rate, subtype="PCM_16")
    return path


def _randomize(module: "torch.nn.Module", seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:  # BatchNorm scale
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Random upstream networks saved in the old .pth layout and the bundled safetensors layout."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("a2c_ckpt")
    pose_yaml, exp_yaml = d / "auido2pose.yaml", d / "auido2exp.yaml"
    pose_yaml.write_text(UPSTREAM_POSE_YAML)
    exp_yaml.write_text(UPSTREAM_EXP_YAML)
    tac = original("test_audio2coeff")
    from yacs.config import CfgNode as CN

    with open(pose_yaml) as f:
        cfg = CN.load_cfg(f)
    torch.manual_seed(0)
    pose = original("audio2pose_models.audio2pose").Audio2Pose(cfg, None, device="cpu")
    exp = original("audio2exp_models.networks").SimpleWrapperV2()
    _randomize(pose, 1)
    _randomize(exp, 2)
    with torch.no_grad():  # expression coefficients of order 1, as trained ones are (the encoder output is ~10-50)
        exp.mapping1.weight.mul_(0.05)
    torch.save({"model": exp.state_dict(), "optimizer": {}, "epoch": 300}, d / "auido2exp_00300-model.pth")
    torch.save({"model": pose.state_dict(), "optimizer": {}, "epoch": 140}, d / "auido2pose_00140-model.pth")
    bundle = {f"audio2exp.{k}": v.contiguous() for k, v in exp.state_dict().items()}
    bundle |= {f"audio2pose.{k}": v.contiguous() for k, v in pose.state_dict().items()}
    bundle |= {"kp_extractor.conv.weight": torch.zeros(2, 3), "generator.first.bias": torch.ones(4)}
    save_file(bundle, str(d / "SadTalker_V0.0.2_256.safetensors"))
    common = {"audio2pose_yaml_path": str(pose_yaml), "audio2exp_yaml_path": str(exp_yaml)}
    return {
        "old": {**common, "use_safetensor": False, "checkpoint": None,
                "audio2exp_checkpoint": str(d / "auido2exp_00300-model.pth"),
                "audio2pose_checkpoint": str(d / "auido2pose_00140-model.pth")},
        "safetensors": {**common, "use_safetensor": True, "checkpoint": str(d / "SadTalker_V0.0.2_256.safetensors"),
                        "audio2exp_checkpoint": None, "audio2pose_checkpoint": None},
        "dir": d, "tac": tac,
    }


@pytest.fixture(scope="module")
def ours(ckpts):
    from ezvtb.audio2coeff import Audio2Coeff

    return Audio2Coeff(ckpts["old"], "cpu", backend="torch")


@pytest.fixture(scope="module")
def first_coeff(tmp_path_factory):
    p = tmp_path_factory.mktemp("a2c_in") / "face.mat"
    rng = np.random.default_rng(3)
    savemat(str(p), {"coeff_3dmm": rng.normal(0, 0.3, (1, 73)).astype(np.float32)})
    return p


def _batch_copy(b: dict) -> dict:
    return {k: (v.clone() if hasattr(v, "clone") else v) for k, v in b.items()}


# --- mel front end -------------------------------------------------------------------------------
def test_mel_matches_original_audio_py():
    pytest.importorskip("librosa", reason="SadTalker's audio.py needs librosa (not installed)")
    audio = original("utils.audio")
    wav = _speechlike(2.0)
    ref = audio.melspectrogram(wav)
    ours = fe.melspectrogram(wav)
    err = np.abs(ref - ours).max()
    print(f"mel vs original audio.py: shape {ours.shape}, max |diff| {err:.2e}")
    assert ours.shape == ref.shape == (80, 161)
    assert err <= TOL


def test_mel_matches_independent_implementation():
    """transformers.audio_utils (an independent slaney filterbank and STFT) on the same pre-emphasised samples."""
    au = pytest.importorskip("transformers.audio_utils")
    from scipy.signal import lfilter

    wav = _speechlike(1.5, seed=1)
    fb = au.mel_filter_bank(num_frequency_bins=401, num_mel_filters=80, min_frequency=55.0, max_frequency=7600.0,
                            sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert np.abs(fb.T - fe.mel_filterbank()).max() <= 1e-6
    for pad_mode in ("constant", "reflect"):
        y = lfilter([1, -0.97], [1], wav.astype(np.float64))
        mag = au.spectrogram(y, au.window_function(800, "hann", periodic=True), frame_length=800, hop_length=200,
                             power=1.0, center=True, pad_mode=pad_mode, mel_filters=fb, mel_floor=1e-5)
        db = 20 * np.log10(np.maximum(1e-5, mag)) - 20.0
        ref = np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0)
        err = np.abs(ref - fe.melspectrogram(wav, pad_mode)).max()
        print(f"mel vs transformers.audio_utils ({pad_mode}): max |diff| {err:.2e}")
        assert err <= TOL


def test_batch_matches_original_get_data(tmp_path, first_coeff, ours):
    pytest.importorskip("librosa", reason="SadTalker's get_data needs librosa (not installed)")
    gb = original("generate_batch")
    wav = _write_wav(tmp_path / "speech.wav", _speechlike(2.0))
    ref = gb.get_data(str(first_coeff), str(wav), "cpu", None)
    mine = ours.make_batch(wav, first_coeff, seed=0)
    assert mine["num_frames"] == ref["num_frames"] == 50
    err = (mine["indiv_mels"] - ref["indiv_mels"]).abs().max().item()
    print(f"indiv_mels vs original get_data: max |diff| {err:.2e}")
    assert mine["indiv_mels"].shape == ref["indiv_mels"].shape and err <= TOL
    assert torch.equal(mine["ref"], ref["ref"])


# --- networks vs the original -----------------------------------------------------------------------
@pytest.mark.parametrize("layout,seconds", [("old", 1.4), ("safetensors", 0.8)])
def test_coefficients_match_original(ckpts, tmp_path, first_coeff, layout, seconds):
    """1.4 s = 35 frames: one full 32-frame pose chunk + a remainder of 2; 0.8 s = 20 frames: one padded chunk."""
    from ezvtb.audio2coeff import Audio2Coeff

    wav = _write_wav(tmp_path / "speech.wav", _speechlike(seconds, seed=5))
    up = ckpts["tac"].Audio2Coeff(ckpts[layout], "cpu")
    mine = Audio2Coeff(ckpts[layout], "cpu", backend="torch")
    batch = mine.make_batch(wav, first_coeff, seed=1)
    torch.manual_seed(7)
    ref_path = up.generate(_batch_copy(batch), str(tmp_path), 5)
    ref = loadmat(ref_path)["coeff_3dmm"]
    torch.manual_seed(7)
    path = mine.generate(_batch_copy(batch), tmp_path / "ours", 5)
    got = loadmat(path)["coeff_3dmm"]
    assert Path(path).name == Path(ref_path).name and got.shape == ref.shape == (batch["num_frames"], 70)
    e_exp, e_pose = np.abs(got[:, :64] - ref[:, :64]).max(), np.abs(got[:, 64:] - ref[:, 64:]).max()
    print(f"{layout} T={got.shape[0]}: exp max |diff| {e_exp:.2e} (max |exp| {np.abs(ref[:, :64]).max():.2f}), "
          f"pose {e_pose:.2e}")
    assert e_exp <= TOL and e_pose <= TOL
    assert np.abs(ref[:, 64:] - ref[:1, 64:]).max() > 1e-3  # the pose really moves (test is not trivial)


def test_plain_entry_seed_matches_original(ckpts, ours, tmp_path, first_coeff):
    """from_wav(seed=s) draws the same z as torch.manual_seed(s) + upstream's per-chunk randn."""
    wav = _write_wav(tmp_path / "speech.wav", _speechlike(0.8, seed=8))
    up = ckpts["tac"].Audio2Coeff(ckpts["old"], "cpu")
    plain = ours.from_wav(wav, first_coeff, pose_style=9, seed=7)
    torch.manual_seed(7)
    ref = loadmat(up.generate(_batch_copy(ours.make_batch(wav, first_coeff, seed=7)), str(tmp_path), 9))["coeff_3dmm"]
    assert np.abs(plain - ref).max() <= TOL


def test_injected_z_matches_original(ckpts, ours, tmp_path, first_coeff):
    wav = _write_wav(tmp_path / "speech.wav", _speechlike(1.4, seed=6))
    batch = ours.make_batch(wav, first_coeff, seed=2)
    up = ckpts["tac"].Audio2Coeff(ckpts["old"], "cpu")
    torch.manual_seed(11)
    z = torch.randn(ours.pose_chunks(batch["num_frames"]), 64).numpy()  # what upstream draws chunk by chunk
    torch.manual_seed(11)
    ref = loadmat(up.generate(_batch_copy(batch), str(tmp_path), 0))["coeff_3dmm"]
    torch.manual_seed(999)  # the global RNG must not matter when z is given
    got = ours.coefficients(_batch_copy(batch), 0, z=z)
    assert np.abs(got - ref).max() <= TOL
    got2 = ours.coefficients(_batch_copy(batch), 0, z=z + 1.0)
    assert np.abs(got2[:, 64:] - ref[:, 64:]).max() > 1e-4  # z matters


def test_using_refpose_matches_original(ckpts, ours, tmp_path):
    rng = np.random.default_rng(4)
    refpose = tmp_path / "ref_video.mat"
    savemat(str(refpose), {"coeff_3dmm": rng.normal(size=(7, 73)).astype(np.float32)})
    coeffs = rng.normal(size=(17, 70)).astype(np.float32)
    up = ckpts["tac"].Audio2Coeff.using_refpose(None, coeffs.copy(), str(refpose))
    assert np.abs(ours.using_refpose(coeffs.copy(), refpose) - up).max() <= 1e-6


# --- loading -----------------------------------------------------------------------------------------
def test_load_cpk_returns_epoch_and_loads_strictly(ckpts):
    from ezvtb.audio2coeff import load_cpk
    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    exp, pose = ExpressionNet(), PoseNet()
    assert load_cpk(ckpts["old"]["audio2exp_checkpoint"], model=exp) == 300
    assert load_cpk(ckpts["old"]["audio2pose_checkpoint"], model=pose) == 140
    sd = torch.load(ckpts["old"]["audio2exp_checkpoint"], weights_only=True)["model"]
    assert torch.equal(exp.mapping1.weight, sd["mapping1.weight"])
    with pytest.raises(ValueError, match="checkpoint_path: weights do not fit PoseNet"):
        load_cpk(ckpts["old"]["audio2exp_checkpoint"], model=PoseNet())


def test_load_cpk_refuses_code_running_pickle(tmp_path):
    from ezvtb.audio2coeff import load_cpk

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pth"
    torch.save({"model": {}, "epoch": Payload()}, bad)
    with pytest.raises(ValueError, match="refused"):
        load_cpk(bad)
    assert not marker.exists()
    with open(bad, "rb") as f:  # control: the file really carries the payload
        import zipfile
        with zipfile.ZipFile(f) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))

    class Plain(pickle.Unpickler):
        def persistent_load(self, pid):
            return None

    import io
    Plain(io.BytesIO(data)).load()
    assert marker.exists()


def test_strict_layouts_and_sizes_from_shapes(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    from ezvtb.audio2coeff import Audio2Coeff
    from ezvtb.models.sadtalker.networks import PoseConfig, PoseNet

    sd = load_file(ckpts["safetensors"]["checkpoint"])
    extra = dict(sd) | {"audio2exp.surprise.weight": torch.zeros(1)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="audio2exp weights"):
        Audio2Coeff({**ckpts["safetensors"], "checkpoint": str(tmp_path / "extra.safetensors")}, "cpu", backend="torch")
    missing = {k: v for k, v in sd.items() if k != "audio2pose.netG.decoder.pose_linear.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="audio2pose weights"):
        Audio2Coeff({**ckpts["safetensors"], "checkpoint": str(tmp_path / "missing.safetensors")}, "cpu",
                    backend="torch")
    save_file({"generator.x": torch.zeros(1)}, str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match=r"no audio2exp\.\* tensors .*networks present: \['generator'\]"):
        Audio2Coeff({**ckpts["safetensors"], "checkpoint": str(tmp_path / "none.safetensors")}, "cpu", backend="torch")
    # sizes come from shapes: a 16-frame, 10-style decoder round-trips
    cfg = PoseConfig(seq_len=16, latent_size=8, decoder_layers=(40, 96), num_classes=10, unet_filters=(8, 16, 16, 32))
    net = PoseNet.from_state_dict(PoseNet(cfg).state_dict())
    assert net.cfg == cfg
    # the YAML must agree with the weights
    bad_yaml = tmp_path / "pose.yaml"
    bad_yaml.write_text(UPSTREAM_POSE_YAML.replace("NUM_CLASSES: 46", "NUM_CLASSES: 1"))
    with pytest.raises(ValueError, match="NUM_CLASSES: yaml 1 vs weights 46"):
        Audio2Coeff({**ckpts["old"], "audio2pose_yaml_path": str(bad_yaml)}, "cpu", backend="torch")


# --- bad inputs --------------------------------------------------------------------------------------
def test_bad_inputs(ours, tmp_path, first_coeff):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 20)
    with pytest.raises(ValueError, match="audio_path: .* not a readable audio file"):
        ours.from_wav(text, first_coeff)
    short = _write_wav(tmp_path / "short.wav", _speechlike(0.03))
    with pytest.raises(ValueError, match="shorter than one 25 fps video frame"):
        ours.from_wav(short, first_coeff)
    wav = _write_wav(tmp_path / "ok.wav", _speechlike(0.6))
    for style in (46, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"pose_style: expected an integer in \[0, 46\)"):
            ours.from_wav(wav, first_coeff, pose_style=style)
    no_coeff = tmp_path / "other.mat"
    savemat(str(no_coeff), {"something": np.zeros((1, 70))})
    with pytest.raises(ValueError, match="first_coeff_path: .* has no 'coeff_3dmm'"):
        ours.from_wav(wav, no_coeff)
    with pytest.raises(ValueError, match="ref_pose_coeff_path: .* has no 'coeff_3dmm'"):
        ours.from_wav(wav, first_coeff, ref_pose_coeff_path=no_coeff)
    narrow = tmp_path / "narrow.mat"
    savemat(str(narrow), {"coeff_3dmm": np.zeros((1, 20))})
    with pytest.raises(ValueError, match=r"first_coeff_path: 'coeff_3dmm' .* must be \(N >= 1, >= 70\)"):
        ours.from_wav(wav, narrow)
    with pytest.raises(ValueError, match="batch: missing 'ratio_gt'"):
        ours.generate({"indiv_mels": torch.zeros(1, 3, 1, 80, 16), "ref": torch.zeros(1, 3, 70)}, tmp_path, 0)
    # still usable afterwards
    assert ours.from_wav(wav, first_coeff).shape == (15, 70)


def test_silence_and_stereo_48k(ours, tmp_path, first_coeff):
    silent = _write_wav(tmp_path / "silence.wav", np.zeros(9600, np.float32))
    c = ours.from_wav(silent, first_coeff, seed=0)
    assert c.shape == (15, 70) and np.isfinite(c).all()
    same_blink = np.flatnonzero(ours.make_batch(silent, first_coeff, seed=0)["ratio_gt"][0, :, 0].numpy() == 0)
    assert np.abs(c[same_blink, :64] - c[same_blink[:1], :64]).max() < 1e-5  # silence: one expression
    mono = _speechlike(0.6, rate=48000)
    stereo = _write_wav(tmp_path / "stereo48k.wav", np.stack([mono, mono], axis=1), rate=48000)
    monofile = _write_wav(tmp_path / "mono16k.wav", fe.resample(mono, 48000))
    a = ours.from_wav(stereo, first_coeff, seed=3)
    b = ours.from_wav(monofile, first_coeff, seed=3)
    assert a.shape == (15, 70)
    assert np.abs(a - b).max() < 0.05  # same speech (16-bit requantisation apart)


def test_generate_writes_atomically(ours, tmp_path, first_coeff):
    wav = _write_wav(tmp_path / "speech.wav", _speechlike(0.6))
    out = ours.from_wav(wav, first_coeff, coeff_save_dir=tmp_path / "coeffs", seed=0)
    assert Path(out).name == "face##speech.mat" and loadmat(out)["coeff_3dmm"].shape == (15, 70)
    assert not [p for p in (tmp_path / "coeffs").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="coeff_save_dir"):
        ours.from_wav(wav, first_coeff, coeff_save_dir=tmp_path / "afile")


def test_names_from_the_batch_never_leave_coeff_save_dir(ours, tmp_path, first_coeff):
    """pic_name / audio_name come from data: a separator, '..' or an absolute path is refused before the
    networks run, nothing is written outside (or inside) the folder, and the object stays usable."""
    wav = _write_wav(tmp_path / "speech.wav", _speechlike(0.6))
    out = tmp_path / "a" / "b" / "coeffs"
    out.mkdir(parents=True)
    for key, bad in [("pic_name", "../../../escaped"), ("pic_name", "/tmp/abs"), ("audio_name", ".."),
                     ("audio_name", "x/../../y"), ("pic_name", ""), ("pic_name", 3)]:
        batch = ours.make_batch(wav, first_coeff, seed=0)
        batch[key] = bad
        with pytest.raises(ValueError, match=rf"batch\['{key}'\]: .*(plain file name|expected a file name)"):
            ours.generate(batch, out, 0)
    with pytest.raises(ValueError, match="stem: .* not a plain file name"):
        ours.save(np.zeros((2, 70), np.float32), out, "../x")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) \
        == ["speech.wav"]
    assert Path(ours.generate(ours.make_batch(wav, first_coeff, seed=0), out, 0)).parent == out


def test_head_pose_track_maps_and_resamples():
    from ezvtb.audio2coeff.pipeline import head_pose_track

    c = np.zeros((50, 70), np.float32)  # 2 s at 25 fps
    c[:, 64] = np.radians(np.linspace(0, 30, 50))  # pitch 0 -> 30 degrees
    c[:, 65] = np.radians(-7.5)  # yaw
    c[:, 66] = np.radians(3.0)  # roll
    h = head_pose_track(c, 10.0)
    assert h.shape == (20, 3)
    assert np.allclose(h[:, 1], 0.5) and np.allclose(h[:, 2], 0.2)  # -(-7.5)/15, 3/15
    assert h[0, 0] == 0 and h[-1, 0] == -1.0  # -pitch/15, clipped at -1 past 15 degrees
    assert np.all(np.diff(h[:, 0]) <= 0)
    with pytest.raises(ValueError, match="coeffs: expected"):
        head_pose_track(np.zeros((5, 6)), 10.0)
    with pytest.raises(ValueError, match="fps"):
        head_pose_track(c, 0.0)


# --- bounded memory ----------------------------------------------------------------------------------------------
def _whole_file_coefficients(a2c, wav_path, first_coeff, pose_style, seed):
    """from_wav as it was: the whole file read, resampled, turned into mel windows and run as one batch."""
    import soundfile

    data, rate = soundfile.read(str(wav_path), dtype="float32")
    wav = fe.resample(fe.to_mono(data), rate)
    feats = fe.audio_features(wav)
    first = loadmat(str(first_coeff))["coeff_3dmm"][:1, :70]
    t = feats.num_frames
    blink = fe.blink_schedule(t, np.random.default_rng(seed))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(max(1, a2c.pose_chunks(t)), a2c.pose_config.latent_size, generator=g).numpy()
    batch = {"indiv_mels": torch.from_numpy(feats.mels[None, :, None]),
             "ref": torch.from_numpy(np.repeat(first, t, axis=0)[None]), "num_frames": t,
             "ratio_gt": torch.from_numpy(blink[None])}
    return a2c.coefficients(batch, pose_style, z)


@pytest.mark.parametrize("seconds, rate, channels", [(0.5, 16000, 1), (1.9, 48000, 2), (17.3, 44100, 2)])
def test_streamed_from_wav_equals_the_whole_file_computation(ours, tmp_path, first_coeff, seconds, rate, channels):
    """Chunk boundaries (320 frames), pose remainders and short clips (< 32 frames) all give the whole-file result."""
    mono = _speechlike(seconds, rate=rate, seed=5)
    wav = _write_wav(tmp_path / "s.wav", np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono, rate)
    ref = _whole_file_coefficients(ours, wav, first_coeff, 3, 11)
    got = ours.from_wav(wav, first_coeff, pose_style=3, seed=11)
    assert got.shape == ref.shape == (int(seconds * 25), 70)
    err = float(np.abs(got - ref).max())
    assert err == 0.0, err  # the same samples, windows and network batches


MEMORY_CHILD = """
import json, resource, sys
import numpy as np, soundfile
sys.path.insert(0, sys.argv[4])
from tests.test_audio2coeff import _speechlike
from ezvtb.audio2coeff import Audio2Coeff
seconds = float(sys.argv[1])
a2c = Audio2Coeff(json.loads(sys.argv[2]), "cpu", backend="torch")
path = sys.argv[3]
with soundfile.SoundFile(path, "w", 96000, 2, subtype="PCM_16") as f:  # written in blocks: no big array here
    for i in range(int(seconds)):
        x = _speechlike(1.0, rate=96000, seed=i)
        f.write(np.stack([x, x], axis=1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a2c.from_wav(path, sys.argv[5], seed=0)
print(json.dumps({"grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base}))
"""


@pytest.mark.slow
def test_from_wav_peak_memory_does_not_grow_with_length(ckpts, tmp_path, first_coeff):
    """Peak RSS growth of from_wav on 96 kHz stereo: 14 s and 34 s (both past one 12.8 s chunk, where the
    working set stops growing) differ by less than 12 MB (the result is ~8 KB/s; the whole-file path grew
    1.85 MB per second of such audio: 23 MB for 20 s, 208 MB for 120 s)."""
    import json
    import subprocess
    import sys

    root = str(Path(__file__).parent.parent)
    grew = {}
    for seconds in (14, 34):
        p = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(seconds), json.dumps(ckpts["old"]),
                            str(tmp_path / f"{seconds}.wav"), root, str(first_coeff)],
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        grew[seconds] = json.loads(p.stdout.strip().splitlines()[-1])["grew_kb"] / 1024
    assert grew[34] - grew[14] < 12, grew
