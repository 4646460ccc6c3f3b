"""Bad values and bad files a user hands in: each gets an error naming the argument or file and what is wrong,
before any expensive work, and never a silent default, a NaN video or a raw traceback from a library."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sgm_video_fixtures import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def sv3d(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("sv3d") / "sv3d_p.safetensors"
    save_file(tiny_checkpoint("sv3d_p", seed=6), str(path))
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    a = np.full((64, 64, 3), 255, np.uint8)
    a[20:44, 20:44] = (200, 40, 40)
    Image.fromarray(a).save(path)
    return path


# --- non-finite and out-of-range values: novel views -----------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(elevation_deg=math.nan), r"elevation_deg: expected finite degrees in \[-90, 90\], got nan"),
    (dict(elevation_deg=math.inf), r"elevation_deg: .* got inf"),
    (dict(elevation_deg=[10.0, math.nan, 10.0]), r"elevation_deg: .* got nan"),
    (dict(elevation_deg=91.0), r"elevation_deg: .* got 91.0"),
    (dict(azimuths_deg=[0.0, math.inf, 90.0]), r"azimuths_deg: expected finite degrees, got inf"),
])
def test_sv3d_orbit_rejects_non_finite_cameras(sv3d, tmp_path, kw, msg):
    from ezvtb.novel_view import load_image, load_model, sv3d_orbit

    model, _ = load_model("sv3d_p", "cpu", 3, 1, ckpt_path=sv3d)
    img = load_image(_png(tmp_path / "obj.png"), 64, 64)
    with pytest.raises(ValueError, match=msg):
        sv3d_orbit(model, img, progress=False, **kw)
    bad = img.clone()
    bad[0, 1, 3, 4] = math.nan
    with pytest.raises(ValueError, match="image: contains 1 NaN or inf values"):
        sv3d_orbit(model, bad, num_steps=1, progress=False)
    frames = sv3d_orbit(model, img, num_steps=1, progress=False)  # still usable
    assert torch.isfinite(frames).all()


def test_run_img2vid_rejects_non_finite_cameras(sv3d, tmp_path):
    from ezvtb.novel_view import load_image, load_model, run_img2vid

    model, _ = load_model("sv3d_p", "cpu", 3, 1, ckpt_path=sv3d)
    img = load_image(_png(tmp_path / "obj.png"), 64, 64)
    vd = {"H": 64, "W": 64, "T": 3, "options": {"num_steps": 1}}
    with pytest.raises(ValueError, match="polar_rad: expected finite radians, got nan"):
        run_img2vid(vd, model, img, polar_rad=[1.0, math.nan, 1.0], azim_rad=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="azim_rad: expected finite radians, got -inf"):
        run_img2vid(vd, model, img, polar_rad=[1.0] * 3, azim_rad=[0.0, -math.inf, 2.0])


@pytest.mark.parametrize("kw, msg", [
    (dict(num_frames=0), r"num_frames: expected an int >= 1 .* got 0"),
    (dict(num_frames=-2), r"num_frames: expected an int >= 1 .* got -2"),
    (dict(num_frames=2.5), r"num_frames: expected an int >= 1 .* got 2.5"),
    (dict(num_steps=0), r"num_steps: expected an int >= 1 .* got 0"),
    (dict(num_steps=-1), r"num_steps: expected an int >= 1 .* got -1"),
])
def test_load_model_never_replaces_an_explicit_bad_count_by_the_default(sv3d, kw, msg):
    from ezvtb.novel_view import load_model

    with pytest.raises(ValueError, match=msg):
        load_model("sv3d_p", "cpu", ckpt_path=sv3d, **kw)


def test_sampler_steps_zero_is_refused(sv3d, tmp_path):
    from ezvtb.novel_view import load_image, load_model, sv3d_orbit

    model, _ = load_model("sv3d_p", "cpu", 3, 1, ckpt_path=sv3d)
    assert model.num_frames == 3 and model.num_steps == 1
    img = load_image(_png(tmp_path / "obj.png"), 64, 64)
    with pytest.raises(ValueError, match="num_steps: expected an int >= 1 .* got 0"):
        sv3d_orbit(model, img, num_steps=0, progress=False)


def test_cli_orbit_elevation_nan_fails_before_loading(sv3d, tmp_path, caplog):
    from ezvtb.cli import main

    img = _png(tmp_path / "obj.png")
    for value in ("nan", "inf", "-inf", "120"):
        out = tmp_path / f"o_{value}.mp4"
        caplog.clear()
        rc = main(["orbit", str(img), "--model", str(sv3d), "--frames", "3", "--steps", "1", "--size", "64",
                   f"--elevation={value}", "--out", str(out)])
        assert rc == 2 and re.search(r"--elevation: expected finite degrees in \[-90, 90\]", caplog.text), caplog.text
        assert not out.exists()


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    from ezvtb.novel_view import load_image

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")  # Pillow keeps the 16 bits
    x = load_image(tmp_path / "g16.png", 64, 64)
    assert x.shape == (1, 3, 64, 64)
    expect = torch.from_numpy(ramp.astype(np.float32) / 65535.0 * 2 - 1)
    err = (x[0] - expect[None]).abs().max().item()
    assert err < 0.02, err  # was 99.6 % white: every value above 255 clipped
    Image.fromarray((ramp >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    assert (load_image(tmp_path / "g8.png", 64, 64) - x).abs().max() < 0.02  # the same picture at 8 bits
