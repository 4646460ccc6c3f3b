"""Audio2Coeff expression coefficients -> BFM landmarks -> THA3 mouth (ezvtb.audio2coeff.mouth, `ezvtb speak --bfm`).

A synthetic BFM_model_front.mat in the real key layout (meanshape (1, 3N), exBase (3N, 64), keypoints (1, 68)
1-based, plus the other keys of the real file): a random small face whose 68 landmark vertices sit in an iBUG-68
layout, a random expression basis, and two constructed directions: coefficient 0 lowers the lower lip (opens the
mouth), coefficient 1 moves the lip corners apart (widens it).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy.io import savemat

from ezvtb.audio2coeff.mouth import BfmLandmarks, ExpressionMouth, mouth_measures

N_VERTS = 300
OPEN, WIDEN = 0, 1
LOWER_LIP = (56, 57, 58, 65, 66, 67)
LEFT_CORNER, RIGHT_CORNER = (48, 60), (54, 64)


def _landmark_layout(rng) -> np.ndarray:
    """(68, 3) iBUG-68-like positions (face about 2 wide, eye corners at +-0.45, inner lips 0.02 apart)."""
    lm = rng.normal(0, 0.3, (68, 3))
    lm[36], lm[45] = (-0.45, 0.3, 0.1), (0.45, 0.3, 0.1)
    xs = np.linspace(-0.25, 0.25, 7)
    lm[48:55] = np.stack([xs, -0.5 + 0.02 * np.cos(xs * 6), np.full(7, 0.2)], 1)  # outer upper lip 48..54
    lm[55:60] = np.stack([xs[5:0:-1], np.full(5, -0.58), np.full(5, 0.2)], 1)  # outer lower lip 55..59
    lm[60:65] = np.stack([np.linspace(-0.2, 0.2, 5), np.full(5, -0.51), np.full(5, 0.21)], 1)  # inner upper
    lm[65:68] = np.stack([np.linspace(0.1, -0.1, 3), np.full(3, -0.53), np.full(3, 0.21)], 1)  # inner lower
    return lm


def write_bfm(path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    verts = rng.normal(0, 0.5, (N_VERTS, 3))
    kp0 = rng.choice(N_VERTS, 68, replace=False)  # 0-based
    verts[kp0] = _landmark_layout(rng)
    ex = rng.normal(0, 0.002, (N_VERTS, 3, 64))
    ex[kp0, :, OPEN] = ex[kp0, :, WIDEN] = 0.0  # the constructed directions move only their own landmarks
    ex[kp0[list(LOWER_LIP)], 1, OPEN] = -0.05  # lower lip down by 0.05 per unit
    ex[kp0[list(LEFT_CORNER)], 0, WIDEN] = -0.02
    ex[kp0[list(RIGHT_CORNER)], 0, WIDEN] = 0.02
    mat = {"meanshape": verts.reshape(1, -1), "exBase": ex.reshape(-1, 64), "keypoints": (kp0 + 1.0)[None],
           "idBase": rng.normal(0, 0.01, (3 * N_VERTS, 80)), "meantex": rng.uniform(0, 255, (1, 3 * N_VERTS)),
           "texBase": rng.normal(0, 1, (3 * N_VERTS, 80)), "tri": rng.integers(1, N_VERTS + 1, (50, 3)).astype(float),
           "point_buf": rng.integers(1, 51, (N_VERTS, 8)).astype(float)}
    savemat(str(path), mat)
    return mat


@pytest.fixture(scope="module")
def bfm_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("bfm") / "BFM_model_front.mat"
    return p, write_bfm(p)


def _independent_landmarks(mat: dict, exp: np.ndarray) -> np.ndarray:
    kp = mat["keypoints"].ravel().astype(int) - 1
    out = []
    for e in exp:
        shape = mat["meanshape"].ravel() + mat["exBase"] @ e  # (3N,), xyz interleaved
        out.append(shape.reshape(-1, 3)[kp])
    return np.array(out)


def test_landmarks_match_independent_numpy(bfm_file):
    path, mat = bfm_file
    bfm = BfmLandmarks.load(path)
    exp = np.random.default_rng(1).normal(0, 1.0, (7, 70))  # Audio2Coeff rows: the first 64 are the expression
    got = bfm.landmarks(exp)
    ref = _independent_landmarks(mat, exp[:, :64])
    err = np.abs(got - ref).max()
    print(f"BFM landmarks vs independent numpy: max |diff| {err:.2e}")
    assert got.shape == (7, 68, 3) and err <= 1e-12
    # measures against a hand computation on the reference landmarks
    kp = mat["keypoints"].ravel().astype(int) - 1
    neutral = mat["meanshape"].reshape(-1, 3)[kp]
    size = np.sqrt(((neutral[36] - neutral[45]) ** 2).sum())
    opening = np.mean([np.sqrt(((ref[:, a] - ref[:, b]) ** 2).sum(-1)) for a, b in ((61, 67), (62, 66), (63, 65))], 0)
    width = np.sqrt(((ref[:, 48] - ref[:, 54]) ** 2).sum(-1))
    m = bfm.measures(exp)
    assert np.abs(m - np.stack([opening, width], 1) / size).max() <= 1e-12
    assert np.allclose(mouth_measures(ref, size), m)


def test_openness_monotone_and_mouth_follows(bfm_file):
    bfm = BfmLandmarks.load(bfm_file[0])
    mouth = ExpressionMouth(bfm)
    c = np.linspace(0.0, 4.0, 21)
    exp = np.zeros((len(c), 64))
    exp[:, OPEN] = c
    m = bfm.measures(exp)
    assert np.all(np.diff(m[:, 0]) > 0)  # opening grows with the constructed coefficient
    assert np.ptp(m[:, 1]) < 1e-9  # the width does not change
    w = mouth.weights(exp)
    assert w.shape == (21, 5) and np.all((w >= 0) & (w <= 1))
    assert w[0].max() == 0.0  # neutral face: closed mouth
    assert np.all(np.diff(w[:, 0]) >= 0) and w[-1, 0] == 1.0  # mouth_aaa follows, saturates
    assert np.abs(w[:, 1:]).max() == 0.0  # no width change: no i/u/e/o
    # widening with a barely open mouth -> mouth_iii; narrowing -> mouth_uuu; open + narrow -> mouth_ooo
    wide = np.zeros((3, 64))
    wide[0, WIDEN] = 5.0
    wide[1, WIDEN] = -5.0
    wide[2, WIDEN], wide[2, OPEN] = -5.0, 4.0
    ww = mouth.weights(wide)
    assert ww[0].argmax() == 1 and ww[0, 1] > 0.9  # i
    assert ww[1].argmax() == 2 and ww[1, 2] > 0.9  # u
    assert ww[2].argmax() == 4 and ww[2, 4] > 0.9  # o
    wide[0, OPEN] = 4.0
    assert mouth.weights(wide[:1])[0].argmax() == 3  # open + wide -> e


def test_calibration_profile_and_errors(bfm_file, tmp_path):
    bfm = BfmLandmarks.load(bfm_file[0])
    mouth = ExpressionMouth(bfm)
    rng = np.random.default_rng(2)
    exp = np.zeros((200, 64))
    exp[:, OPEN] = rng.uniform(0, 1.0, 200)  # a quiet voice: opens at most 1 unit (0.05 / 0.9 eye distances)
    exp[:, WIDEN] = rng.uniform(-1, 1, 200)
    w = mouth.weights(exp)
    before = w[:, 0] + w[:, 3] + w[:, 4]  # openness = a + e + o (the blend splits it by width)
    mouth.calibrate(exp)
    after = mouth.weights(exp)
    opened = after[:, 0] + after[:, 3] + after[:, 4]
    assert opened.max() == 1.0 > before.max()  # the calibrated range reaches full openness
    assert (opened > 0.99).mean() >= 0.03  # the top 5 % saturate
    assert np.abs(after[:, 1:]).max() > 0.9  # and the widening/narrowing reach i/u/e/o
    mouth.save_profile(tmp_path / "voice.json")
    again = ExpressionMouth.load_profile(bfm, tmp_path / "voice.json")
    assert again.profile() == mouth.profile() and np.array_equal(again.weights(exp), after)
    track = mouth.track(np.concatenate([exp[:50], np.zeros((50, 6))], 1), fps=10.0)
    assert track.shape == (20, 5)  # 50 frames at 25 fps = 2 s -> 20 frames at 10 fps
    assert np.allclose(track[0], after[0]) and np.allclose(track[4], after[10])  # 0.4 s = frame 10
    with pytest.raises(ValueError, match="open_full"):
        ExpressionMouth(bfm, open_closed=0.2, open_full=0.1)
    with pytest.raises(ValueError, match="wide"):
        ExpressionMouth(bfm, wide=0)
    with pytest.raises(ValueError, match="exp"):
        bfm.landmarks(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="fps"):
        mouth.track(np.zeros((3, 70)), fps=0)
    (tmp_path / "bad.json").write_text(json.dumps({"open_full": "x"}))
    with pytest.raises(ValueError, match="profile"):
        ExpressionMouth.load_profile(bfm, tmp_path / "bad.json")


def test_bad_bfm_files(tmp_path, bfm_file):
    with pytest.raises(FileNotFoundError, match=r"--bfm.*BFM_Fitting"):
        BfmLandmarks.load(tmp_path / "nope.mat", "--bfm")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="bfm"):
        BfmLandmarks.load(tmp_path / "junk.mat")
    savemat(str(tmp_path / "nokeys.mat"), {"coeff_3dmm": np.zeros((1, 70))})
    with pytest.raises(ValueError, match="lacks"):
        BfmLandmarks.load(tmp_path / "nokeys.mat")
    mat = bfm_file[1]
    with pytest.raises(ValueError, match="exBase"):
        BfmLandmarks.from_arrays(mat["meanshape"], mat["exBase"][:, :10], mat["keypoints"])
    with pytest.raises(ValueError, match="keypoints"):
        BfmLandmarks.from_arrays(mat["meanshape"], mat["exBase"], mat["keypoints"][:, :60])
    with pytest.raises(ValueError, match="1-based"):
        BfmLandmarks.from_arrays(mat["meanshape"], mat["exBase"], mat["keypoints"] - mat["keypoints"].min())


def test_live_source_option_errors(tmp_path, bfm_file):
    import soundfile

    from ezvtb.live import open_source

    soundfile.write(str(tmp_path / "s.wav"), np.zeros(1600, np.float32), 16000)
    with pytest.raises(ValueError, match="need a file"):
        open_source(f"audio://mic?sadtalker=x.safetensors&bfm={bfm_file[0]}")
    with pytest.raises(ValueError, match="both sadtalker"):
        open_source(f"audio://{tmp_path / 's.wav'}?bfm={bfm_file[0]}")
    with pytest.raises(FileNotFoundError, match="BFM_Fitting"):
        open_source(f"audio://{tmp_path / 's.wav'}?sadtalker=x.safetensors&bfm={tmp_path / 'none.mat'}")


def test_speak_cli_errors_before_running_networks(tmp_path, bfm_file, caplog):
    from ezvtb.cli import main

    wav = tmp_path / "s.wav"
    import soundfile

    soundfile.write(str(wav), np.zeros(1600, np.float32), 16000)
    out = str(tmp_path / "o.mp4")
    assert main(["speak", str(wav), "--out", out, "--bfm", str(bfm_file[0])]) == 2  # --bfm without --sadtalker
    assert main(["speak", str(wav), "--out", out, "--sadtalker", str(tmp_path / "x.safetensors"),
                 "--bfm", str(tmp_path / "missing.mat")]) == 2  # missing BFM: error names --bfm, before loading
    assert "--bfm: BFM_model_front.mat not found" in caplog.text and "BFM_Fitting" in caplog.text
    assert main(["speak", str(wav), "--out", out, "--exp-profile", "p.json"]) == 2
    assert not (tmp_path / "o.mp4").exists()


def _random_sadtalker(path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    bundle = {}
    g = torch.Generator().manual_seed(7)
    for prefix, net in (("audio2exp", ExpressionNet()), ("audio2pose", PoseNet())):
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.ndim > 1 or name.endswith("bias"):
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        bundle |= {f"{prefix}.{k}": v for k, v in net.state_dict().items()}
    save_file(bundle, str(path))


@pytest.fixture(scope="module")
def sadtalker(tmp_path_factory):
    """Random Audio2Coeff weights in the bundled safetensors layout, with a module-wide graph cache."""
    d = tmp_path_factory.mktemp("sadtalker")
    ckpt = d / "SadTalker_V0.0.2_256.safetensors"
    _random_sadtalker(ckpt)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EZVTB_HOME", str(d / "home"))
        yield ckpt


@pytest.mark.slow
def test_speak_sadtalker_expression_mouth(tmp_path, bfm_file, sadtalker):
    """The CLI path's pieces on random Audio2Coeff weights: coefficients -> BFM mouth -> poses' mouth columns."""
    import soundfile

    from ezvtb.cli.speak import expression_mouth, sadtalker_coefficients, sadtalker_head, sadtalker_mouth

    ckpt = sadtalker
    rng = np.random.default_rng(3)
    soundfile.write(str(tmp_path / "s.wav"), (0.2 * rng.standard_normal(16000)).astype(np.float32), 16000)
    args = argparse.Namespace(sadtalker=str(ckpt), speech=str(tmp_path / "s.wav"), pose_style=1, seed=0, fps=10.0,
                              bfm=str(bfm_file[0]), exp_profile=None)
    mouth = expression_mouth(args)
    coeffs = sadtalker_coefficients(args)
    assert coeffs.shape == (25, 70)
    # a calibrated mapping makes the random network's coefficients move the mouth
    mouth.calibrate(coeffs)
    w = sadtalker_mouth(mouth, coeffs, args.fps, 12)
    assert w.shape == (12, 5) and np.all((w >= 0) & (w <= 1)) and np.ptp(w.sum(1)) > 0.1
    assert np.array_equal(w[10], w[11])  # held past the end
    assert np.allclose(w[:10], mouth.track(coeffs, 10.0))
    assert sadtalker_head(args, 12, coeffs).shape == (12, 3)


@pytest.mark.slow
def test_live_audio_source_expression_mouth(tmp_path, bfm_file, sadtalker):
    """``audio://speech.wav?step=1&fps=25&sadtalker=CKPT&bfm=PATH``: each tick's mouth is that 25 fps frame's
    expression-mouth weights (Audio2Coeff run on the file when the source opens)."""
    import soundfile

    from ezvtb.audio2coeff.mouth import ExpressionMouth
    from ezvtb.cli.speak import sadtalker_coefficients
    from ezvtb.live import open_source
    from ezvtb.pose import index

    rng = np.random.default_rng(5)
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), (0.2 * rng.standard_normal(12800)).astype(np.float32), 16000)  # 0.8 s, 20 frames
    args = argparse.Namespace(sadtalker=str(sadtalker), speech=str(wav), pose_style=2, seed=1)
    coeffs = sadtalker_coefficients(args)
    mouth = ExpressionMouth(BfmLandmarks.load(bfm_file[0]))
    mouth.calibrate(coeffs)  # this (random) voice's ranges
    prof = tmp_path / "p.json"
    mouth.save_profile(prof)
    want = mouth.weights(coeffs)
    src = open_source(f"audio://{wav}?step=1&fps=25&sadtalker={sadtalker}&bfm={bfm_file[0]}&exp_profile={prof}"
                      f"&pose_style=2&seed=1")
    try:
        got = np.array([src.latest().pose[[index(f"mouth_{v * 3}") for v in "aiueo"]] for _ in range(19)])
    finally:
        src.close()
    err = np.abs(got - want[1:20]).max()  # tick k has consumed k frames of audio: frame k's weights
    assert err <= 1e-6, err
    assert np.ptp(got, axis=0).max() > 0.3  # the mouth moves


@pytest.mark.slow
def test_speak_cli_renders_with_bfm_mouth(tmp_path, bfm_file, sadtalker, monkeypatch):
    """`ezvtb speak --sadtalker CKPT --bfm PATH` end to end on the real THA3 core (skipped without it)."""
    pytest.importorskip("ezvtb.export.tha3", reason="the THA3 export is not in the tree")
    import soundfile

    from ezvtb.cli import main
    from ezvtb.cli import speak as speak_cli

    ckpt = sadtalker
    rng = np.random.default_rng(4)
    soundfile.write(str(tmp_path / "s.wav"), (0.2 * rng.standard_normal(8000)).astype(np.float32), 16000)
    seen = {}
    real = speak_cli.sadtalker_mouth

    def spy(mouth, coeffs, fps, frames):
        seen["w"] = real(mouth, coeffs, fps, frames)
        return seen["w"]

    monkeypatch.setattr(speak_cli, "sadtalker_mouth", spy)
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"open_closed": -1.0, "open_full": 1.0, "wide": 0.01, "narrow": 0.01}))
    out = tmp_path / "talk.mp4"
    rc = main(["speak", str(tmp_path / "s.wav"), "--out", str(out), "--fps", "4", "--breathing", "0",
               "--sadtalker", str(ckpt), "--bfm", str(bfm_file[0]), "--exp-profile", str(prof),
               "--backend", "cpu", "--no-model-cache", "--threads", "2"])
    assert rc == 0 and out.is_file() and out.stat().st_size > 0
    assert seen["w"].shape == (2, 5) and seen["w"].sum(1).min() > 0.4  # open_closed -1: the mouth is open
