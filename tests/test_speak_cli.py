"""`ezvtb speak` (speech wav -> talking mp4 with the audio muxed) and `ezvtb run --audio` with the real core."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

CPU = ["--backend", "cpu", "--no-model-cache", "--threads", "2"]


def _have_core() -> bool:
    try:
        import ezvtb.export.tha3  # noqa: F401
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    p = tmp_path_factory.mktemp("speak") / "speech.wav"
    subprocess.run([exe, "-v", "ja", "-s", "160", "-w", str(p), "[[a:o]]"], check=True, capture_output=True)
    return p


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
def test_speak_renders_talking_video_with_audio(speech, tmp_path, capsys):
    import cv2

    from ezvtb.audio2coeff.frontend import load_wav
    from ezvtb.cli import main

    out = tmp_path / "talk.mp4"
    rc = main(["speak", str(speech), "--out", str(out), "--fps", "10", "--breathing", "0", *CPU])
    assert rc == 0 and out.is_file()
    n_expected = int(np.ceil(len(load_wav(speech)) / 16000 * 10))
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    assert len(frames) == n_expected
    diffs = [np.abs(f.astype(int) - frames[0].astype(int)).max() for f in frames]
    assert max(diffs) > 30  # the mouth moves
    if shutil.which("ffprobe"):
        r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "csv=p=0", str(out)],
                           capture_output=True, text=True)
        assert "audio" in r.stdout.split()
    assert f"{n_expected} frames at 10 fps" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temporaries removed


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
def test_run_with_audio_overlay(speech, tmp_path):
    from ezvtb.cli import main

    out = tmp_path / "f.bgra"
    rc = main(["run", "--input", "trace://?step=1", "--audio", f"audio://{speech}?step=1&fps=10",
               "--output", f"raw:{out}", "--fps", "10", "--frames", "4", *CPU])
    assert rc == 0
    assert np.frombuffer(out.read_bytes(), np.uint8).reshape(-1, 512, 512, 4).shape[0] == 4
    with pytest.raises(SystemExit):
        main(["speak"])
    assert main(["speak", str(speech), "--out", str(tmp_path / "x.avi")]) == 2  # bad --out: clear error, exit 2
