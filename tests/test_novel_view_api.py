"""Seed 000 API and the `ezvtb orbit` / `ezvtb novel-view` commands on tiny random checkpoints in the official
layout: the whole orbit runs, the last view is the input view, and bad input gets a clear error."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sgm_video_fixtures import tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for v in ("sv3d_p", "svd"):
        paths[v] = d / f"{v}.safetensors"
        save_file(tiny_checkpoint(v, seed=6), str(paths[v]))
    paths["sv4d"] = d / "sv4d.safetensors"  # only what detection reads: the ADM width and motion blocks
    save_file({"model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 1280),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 8, 3, 3),
               "model.diffusion_model.input_blocks.1.1.motion_blocks.0.norm1.weight": torch.zeros(4)},
              str(paths["sv4d"]))
    return paths


def _png(path: Path, size=(80, 64), alpha=True) -> Path:
    from PIL import Image

    a = np.full((size[1], size[0], 4), 255, np.uint8)
    a[..., 3] = 0
    a[20:44, 30:50] = (200, 40, 40, 255)
    Image.fromarray(a if alpha else a[..., :3].copy()).save(path)
    return path


def test_load_model_sv3d_orbit_and_seed_helpers(ckpts, tmp_path):
    from ezvtb.novel_view import (initial_model_load, load_image, load_model, load_module_gpu, orbit_cameras,
                                  run_img2vid, sv3d_orbit, unload_module_gpu)

    model, filt = load_model("sv3d_p", "cpu", 3, 2, ckpt_path=ckpts["sv3d_p"])
    assert filt is None and model.num_frames == 3 and model.variant.name == "sv3d_p"
    polars, az = orbit_cameras(21)
    assert az[-1] == 0.0 and len(az) == 21 and abs(polars[0] - np.deg2rad(80)) < 1e-12
    img = load_image(_png(tmp_path / "obj.png"), 64, 64)
    frames = sv3d_orbit(model, img, num_steps=2, seed=1, decoding_t=1, progress=False)
    assert frames.shape == (3, 3, 64, 64) and 0 <= frames.min() and frames.max() <= 1
    assert torch.allclose(frames[-1], (img[0] + 1) / 2)  # the last view is the input view
    assert frames[:-1].std() > 0.01
    again = sv3d_orbit(model, img, num_steps=2, seed=1, decoding_t=3, progress=False)
    assert (again - frames).abs().max() < 1e-4  # decoding_t changes memory, not the result (2-D decoder)
    vd = {"H": 64, "W": 64, "T": 3, "C": 4, "f": 8, "options": {"num_steps": 1}}
    vid = run_img2vid(vd, model, img, seed=2, polar_rad=[1.4] * 3, azim_rad=[2.0, 4.0, 0.0])
    assert vid.shape == (3, 3, 64, 64)
    with pytest.raises(ValueError, match="cond_motion, cond_view: SV4D conditioning"):
        run_img2vid(vd, model, img, cond_motion=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 64"):
        sv3d_orbit(model, load_image(tmp_path / "obj.png", 80, 64), num_steps=1, progress=False)
    load_module_gpu(model.model)
    unload_module_gpu(model.model)
    assert initial_model_load(model).model.net.conv_in.weight.dtype == torch.float16
    with pytest.raises(ValueError, match="is a sv3d_p checkpoint, not svd"):
        load_model("svd", "cpu", 3, 1, ckpt_path=ckpts["sv3d_p"])
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        load_model("sv3d_p", "cpu", 3, 1, ckpt_path=tmp_path / "nope.safetensors")


def test_preprocess_video_crops_centres_and_checks_frames(tmp_path):
    from ezvtb.novel_view import preprocess_video
    from ezvtb.novel_view.video_io import read_frames

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"{i:03d}.png")
    out = preprocess_video(str(folder), n_frames=4, W=64, H=64, output_folder=tmp_path, base_count=3)
    assert out.endswith("000003_process_input.mp4")
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].size == (64, 64)
    a = np.asarray(frames[0].convert("RGB")).astype(int)
    assert a[0, 0].min() > 230  # white background
    red = (a[..., 0] > 120) & (a[..., 1] < 110)
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() - 31.5) < 3 and abs(ys.mean() - 31.5) < 3  # object centred
    assert 0.8 * 64 < (ys.max() - ys.min() + 1) <= 64  # the long (vertical) side fills ~0.917 of the frame
    with pytest.raises(ValueError, match="fewer than n_frames=5"):
        preprocess_video(str(folder), n_frames=5, W=64, H=64, output_folder=tmp_path)
    with pytest.raises(RuntimeError, match="rembg"):
        _png(tmp_path / "rgb.png", alpha=False)
        preprocess_video(str(tmp_path / "rgb.png"), remove_bg=True, n_frames=1, W=64, H=64, output_folder=tmp_path)


def test_cli_orbit_runs_and_reports_clear_errors(ckpts, tmp_path, caplog):
    from ezvtb.cli import main

    img = _png(tmp_path / "obj.png")
    out = tmp_path / "orbit.mp4"
    rc = main(["-q", "orbit", str(img), "--model", str(ckpts["sv3d_p"]), "--frames", "3", "--steps", "1",
               "--size", "64", "--decoding-t", "2", "--out", str(out)])
    assert rc == 0 and out.stat().st_size > 0
    cases = [
        (["orbit", str(img), "--model", str(tmp_path / "none.safetensors")], "--model: no checkpoint"),
        (["orbit", str(img), "--model", str(ckpts["svd"])], "is a svd checkpoint, not SV3D"),
        (["orbit", str(img), "--model", str(ckpts["sv3d_p"]), "--size", "100"],
         "--size: expected a positive multiple of 64"),
    ]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases.append((["orbit", str(empty), "--model", str(ckpts["sv3d_p"])], "IMAGE: "))
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(3):
        _png(folder / f"{i}.png")
    cases.append((["novel-view", str(folder), "--sv3d", str(ckpts["sv3d_p"]), "--sv4d", str(ckpts["sv4d"]),
                   "--frames", "5", "--size", "64"], "has 3 frames, fewer than --frames 5"))
    cases.append((["novel-view", str(folder), "--sv3d", str(ckpts["sv3d_p"]), "--sv4d", str(ckpts["svd"])],
                  "--sv4d: .* is a svd checkpoint, not SV4D"))
    cases.append((["novel-view", str(folder), "--sv4d", str(ckpts["sv4d"]), "--frames", "3", "--size", "64"],
                  "--sv3d: SV4D needs an SV3D checkpoint"))
    import re
    for argv, msg in cases:
        caplog.clear()
        rc = main(argv)
        err = caplog.text
        assert rc == 2 and re.search(msg, err), (argv, err)


def test_load_model_from_an_upstream_yaml(ckpts, tmp_path):
    from ezvtb.novel_view import load_model

    cfg = tmp_path / "my_config.yaml"
    cfg.write_text(f"""model:
  target: sgm.models.diffusion.DiffusionEngine
  params:
    ckpt_path: {ckpts['sv3d_p']}
    network_config:
      target: sgm.modules.diffusionmodules.video_model.VideoUNet
      params:
        adm_in_channels: 1280
""")
    model, _ = load_model(str(cfg), "cpu", 3, 1)
    assert model.variant.name == "sv3d_p" and model.num_steps == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {params: {}}\n")
    with pytest.raises(ValueError, match="not an sgm sampling YAML"):
        load_model(str(bad), "cpu", 3, 1)
    with pytest.raises(ValueError, match="config: expected a model name"):
        load_model("sv5", "cpu", 3, 1)
