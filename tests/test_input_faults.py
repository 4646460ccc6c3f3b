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


# --- checkpoint and data files ------------------------------------------------------------------------------
def _bad_safetensors(folder: Path, good: Path) -> dict[str, Path]:
    """Damaged copies of the safetensors file `good`: empty, truncated, header length 2^62, header a list."""
    import json
    import struct

    data = good.read_bytes()
    out = {}
    for kind, content in [("empty", b""), ("truncated", data[: len(data) // 2]), ("short", data[:5]),
                          ("huge", struct.pack("<Q", 1 << 62) + b"{}"),
                          ("list", struct.pack("<Q", 2) + b"[]"),
                          ("past_end", struct.pack("<Q", 1 << 20) + b"{}")]:
        out[kind] = folder / f"{kind}.safetensors"
        out[kind].write_bytes(content)
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}}).encode()
    out["shape"] = folder / "shape.safetensors"
    out["shape"].write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return out


BAD_SAFETENSORS = {"empty": "shorter than the 8-byte header length", "short": "shorter than the 8-byte header",
                   "truncated": "truncated", "huge": r"header claims 4611686018427387904 bytes",
                   "list": "header is a JSON list, not an object", "past_end": "truncated",
                   "shape": r"does not fit its 16 bytes"}


@pytest.mark.parametrize("kind", sorted(BAD_SAFETENSORS))
def test_damaged_safetensors_name_the_file_everywhere(sv3d, tmp_path, kind):
    from safetensors.torch import save_file

    from ezvtb.models.rife.loader import load_rife
    from ezvtb.novel_view import load_model
    from ezvtb.weights.wheel import CheckpointFileError, load_checkpoint

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(64, 64), "b": torch.ones(3)}, str(good))
    bad = _bad_safetensors(tmp_path, good)[kind]
    why = BAD_SAFETENSORS[kind]
    with pytest.raises(CheckpointFileError, match=rf"checkpoint: '{re.escape(str(bad))}' .*{why}"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match=rf"rife_model: '{re.escape(str(bad))}' .*{why}"):
        load_rife(bad)
    with pytest.raises(ValueError, match=rf"ckpt_path: '{re.escape(str(bad))}' .*{why}"):
        load_model("sv3d_p", "cpu", ckpt_path=bad)


def test_a_ckpt_holding_a_list_or_no_tensors_is_named(tmp_path):
    from ezvtb.novel_view import load_model

    listed = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ValueError, match=rf"ckpt_path: '{re.escape(str(listed))}' holds a list, not a checkpoint"):
        load_model("sv3d_p", "cpu", ckpt_path=listed)
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": [1, 2]}, nested)
    with pytest.raises(ValueError, match=rf"ckpt_path: '{re.escape(str(nested))}' holds no state dict of tensors"):
        load_model("sv3d_p", "cpu", ckpt_path=nested)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ckpt_path: .*empty.ckpt' is empty \(0 bytes\)"):
        load_model("sv3d_p", "cpu", ckpt_path=empty)


def test_npy_header_claiming_terabytes_is_refused_before_allocating(tmp_path, caplog):
    from ezvtb.cli import main
    from ezvtb.live.sources import load_poses

    p = tmp_path / "p.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 45), np.float32))
    header["shape"] = (1 << 40, 45)
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(45, np.float32).tobytes())
    with pytest.raises(ValueError, match=r"trace: .*p.npy' claims shape \(1099511627776, 45\) .* holds only 180 bytes"):
        load_poses(p)
    caplog.clear()
    assert main(["bench", "--trace", str(p), "--frames", "2"]) == 2
    assert "--trace: " in caplog.text and "claims shape" in caplog.text
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((3, 45), np.float32))
    assert load_poses(good).shape == (3, 45)


def _modelscope_copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("config, msg", [
    ([1, 2], r"configuration.json': the top level must be a JSON object, got list"),
    ({"model": {"model_args": "x"}}, r"configuration.json': model.model_args must be a JSON object, got str"),
    ({"model": {"model_args": {"max_frames": -5}}}, r"model.model_args.max_frames must be an integer >= 1, got -5"),
    ({"model": {"model_cfg": {"unet_head_dim": "64x"}}}, r"model.model_cfg.unet_head_dim must be an integer"),
    ({"model": {"model_args": {"ckpt_unet": "../../elsewhere.pth"}}},
     r"model.model_args.ckpt_unet: '../../elsewhere.pth' is not a plain file name"),
    ({"model": {"model_args": {"ckpt_unet": "VQGAN_autoencoder.pth"}}},
     r"VQGAN_autoencoder.pth': UNet: .*not a ModelScope UNetSD state dict \(an autoencoder"),
])
def test_modelscope_configuration_errors_name_the_file(tmp_path, tiny_modelscope_folder, config, msg):
    import json

    from ezvtb.sd_video import SDVideo

    folder = _modelscope_copy(tiny_modelscope_folder, tmp_path / "model")
    (folder / "configuration.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=msg):
        SDVideo(folder, backend="torch")


def test_diffusers_layout_damaged_safetensors_and_max_frames(tmp_path, tiny_diffusers_folder):
    import json
    import shutil

    from ezvtb.sd_video import SDVideo

    folder = tmp_path / "model"
    shutil.copytree(tiny_diffusers_folder, folder)
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.write_bytes(unet.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"model_path: '{re.escape(str(unet))}' is not a valid .safetensors file"):
        SDVideo(folder, backend="torch")
    shutil.copy(tiny_diffusers_folder / "unet" / unet.name, unet)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "max_frames": -5}))
    with pytest.raises(ValueError, match=r"model_index.json': max_frames must be an integer >= 1, got -5"):
        SDVideo(folder, backend="torch")


def test_a_model_folder_whose_path_is_not_utf8_loads(tmp_path, tiny_modelscope_folder):
    import os

    from ezvtb.sd_video import SDVideo

    name = os.fsdecode(b"mod\xffel")  # a Latin-1 name on a UTF-8 system: not encodable as UTF-8
    folder = _modelscope_copy(tiny_modelscope_folder, tmp_path / name)
    from ezvtb.sd_video.loader import load_components

    comps = load_components(folder)  # was a TypeError inside the tokenizers library
    assert comps.tokenizer("a cat")["input_ids"][:1] == [comps.tokenizer.bos_token_id]
    SDVideo(folder, backend="torch")
