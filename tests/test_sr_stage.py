"""SrStage with real ONNX Runtime sessions (small graphs for the semantics, the 512/256 product graphs
through `create_sr_stage`), get_core's SR option checks and an end-to-end core with SR."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ezvtb.engines import create_session
from ezvtb.export.sr import sr_graph
from ezvtb.stages.sr import SrStage, check_sr_options, create_sr_stage

UP = 32          # UpConv7 test graph: 32 -> 64
X4, FRAME = 32, 64  # animevideov3 test graph: a 32x32 region of a 64x64 frame -> 128


def _frames(sample_bgra, size, n=4):
    names = ["crypko_00", "crypko_03", "crypko_05", "lambda_00"]
    return [cv2.resize(sample_bgra(names[i]), (size, size), interpolation=cv2.INTER_AREA) for i in range(n)]


@pytest.fixture(scope="module")
def up():
    g = sr_graph("upconv7", 1, "fp32", size=UP)
    return g, create_session(g.path, g.spec, "cpu"), create_session(g.path, g.spec, "cpu")


@pytest.fixture(scope="module")
def x4():
    g = sr_graph("animevideov3", 0, "fp32", size=X4)
    return g, create_session(g.path, g.spec, "cpu"), create_session(g.path, g.spec, "cpu")


def test_per_frame_buffers_are_reused(up, sample_bgra):
    g, sess, ref = up
    stage = SrStage(sess, "upconv7")
    frames = _frames(sample_bgra, UP)
    before = [f.copy() for f in frames]
    out = stage.run(frames)
    assert len(out) == 4 and len({id(o) for o in out}) == 4
    for f, o in zip(frames, out):
        assert o.shape == (2 * UP, 2 * UP, 4) and o.dtype == np.uint8
        assert np.array_equal(o, ref.run({"frame": f})["upscaled"])
    assert all(np.array_equal(a, b) for a, b in zip(frames, before))  # inputs only read
    assert len({o.tobytes() for o in out}) == 4
    first = out[0].copy()
    out2 = stage.run(frames[2:])  # two frames: the first two buffers, overwritten
    assert len(out2) == 2 and out2[0] is out[0] and out2[1] is out[1]
    assert np.array_equal(out2[0], ref.run({"frame": frames[2]})["upscaled"])
    assert not np.array_equal(out2[0], first)
    # a non-contiguous view is accepted too
    view = frames[1][:, ::-1]
    assert np.array_equal(stage.run([view])[0], ref.run({"frame": np.ascontiguousarray(view)})["upscaled"])
    s = stage.stats()
    assert (s["model"], s["runs"], s["region"], s["output_shape"]) == ("upconv7", 7, None, [64, 64, 4])
    assert s["latency"]["sr"]["count"] == 3
    stage.reset()  # no temporal state: same output after a reset
    assert np.array_equal(stage.run(frames[:1])[0], first)


def test_x4_upscales_the_region(x4, sample_bgra):
    g, sess, ref = x4
    frames = _frames(sample_bgra, FRAME, 2)
    stage = SrStage(sess, "animevideov3", region=(8, 24), frame_size=FRAME)
    out = stage.run(frames)
    assert stage.region == (8, 24) and out[0].shape == (4 * X4, 4 * X4, 4)
    for f, o in zip(frames, out):
        crop = np.ascontiguousarray(f[8:8 + X4, 24:24 + X4])
        assert np.array_equal(o, ref.run({"frame": crop})["upscaled"])
    with pytest.raises(ValueError, match=r"sr_region: expected \(top, left\) ints with 0 <= top, left <= 32"):
        SrStage(sess, "animevideov3", region=(0, 128), frame_size=FRAME)


def test_bad_input_keeps_the_stage_usable(up, sample_bgra):
    g, sess, ref = up
    stage = SrStage(sess, "upconv7", max_frames=2)
    f = _frames(sample_bgra, UP, 1)[0]
    cases = [
        (f, r"frames: expected a list of 1\.\.2 frames, got ndarray"),
        ([], r"frames: expected a list of 1\.\.2 frames, got list of 0"),
        ([f, f, f], r"frames: expected a list of 1\.\.2 frames, got list of 3"),
        ([f, f[..., :3]], r"frames\[1\]: expected a uint8 \[32, 32, 4\] BGRA array, got uint8\[32, 32, 3\]"),
        ([f.astype(np.float32)], r"frames\[0\]: expected a uint8 \[32, 32, 4\] BGRA array, got float32"),
        ([np.zeros((64, 64, 4), np.uint8)], r"frames\[0\]: expected a uint8 \[32, 32, 4\] BGRA array"),
        (["img"], r"frames\[0\]: expected a uint8 \[32, 32, 4\] BGRA array, got str"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            stage.run(bad)
    assert stage.runs == 0
    assert np.array_equal(stage.run([f])[0], ref.run({"frame": f})["upscaled"])


def test_stage_checks_its_arguments(up, x4, tmp_path):
    g, sess, _ = up
    with pytest.raises(ValueError, match="region: only the x4 model upscales a region"):
        SrStage(sess, "upconv7", region=(0, 0))
    with pytest.raises(ValueError, match="model: expected one of"):
        SrStage(sess, "cunet")
    with pytest.raises(ValueError, match="max_frames: expected an int in 1..16"):
        SrStage(sess, "upconv7", max_frames=0)
    # a real session of another graph (float identity) is refused
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "id.onnx")
    from ezvtb.engines.base import GraphSpec, TensorSpec

    spec = GraphSpec("id", (TensorSpec("x", (4, 4), "float32"),), (TensorSpec("y", (4, 4), "float32"),))
    with pytest.raises(ValueError, match="session: expected an SR graph"):
        SrStage(create_session(tmp_path / "id.onnx", spec, "cpu"), "upconv7")


def test_check_sr_options():
    assert check_sr_options(True, True, 1) == {"model": "animevideov3", "precision": "fp16", "noise": 0,
                                               "region": (0, 128), "alpha": "model", "size": None}
    assert check_sr_options(False, False, -1, None, "bicubic") == {
        "model": "upconv7", "precision": "fp32", "noise": -1, "region": None, "alpha": "bicubic", "size": None}
    assert check_sr_options(True, 0, 3, (256, 0))["region"] == (256, 0)
    for kwargs, msg in [
        ({"sr_noise": 4}, r"sr_noise: expected -1 \(no denoising\) or a noise level 0, 1, 2, 3, got 4"),
        ({"sr_noise": None}, "sr_noise: expected -1"),
        ({"sr_x4": True, "sr_noise": 9}, "sr_noise: expected -1"),  # validated even though x4 ignores it
        ({"sr_x4": "yes"}, "sr_x4: expected a bool, got 'yes'"),
        ({"sr_half": 2}, "sr_half: expected a bool, got 2"),
        ({"sr_x4": False, "sr_region": (0, 0)}, "sr_region: only used with sr_x4=True"),
        ({"sr_x4": True, "sr_region": (0, 300)}, r"sr_region: expected \(top, left\)"),
        ({"sr_alpha": "lanczos"}, "sr_alpha: expected one of"),
        ({"sr_x4": True, "sr_region_size": 100}, "sr_region_size: expected a multiple of 32 from 64 to 512, got 100"),
        ({"sr_x4": True, "sr_region_size": True}, "sr_region_size: expected a multiple of 32"),
        ({"sr_x4": True, "sr_region_size": 128, "sr_region": (0, 400)}, r"sr_region: expected .* <= 384 \(a 128x128"),
        ({"sr_x4": False, "sr_region_size": 128}, "sr_region_size: only used with sr_x4=True"),
    ]:
        args = {"sr_x4": False, "sr_half": True, "sr_noise": 1, **kwargs}
        with pytest.raises(ValueError, match=msg):
            check_sr_options(**args)


def _psnr(a, b):
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_create_sr_stage_x4_product_graph(sample_bgra):
    """animevideov3 256 -> 1024 on the default head-and-shoulders region of a real character."""
    stage = create_sr_stage(sr_x4=True, sr_half=False, sr_noise=1, backend="cpu", max_frames=1)
    img = sample_bgra("crypko_02")
    out = stage.run([img])[0]
    assert out.shape == (1024, 1024, 4) and stage.region == (0, 128)
    assert stage.session.spec.inputs[0].shape == (256, 256, 4)
    bic = cv2.resize(img[0:256, 128:384], (1024, 1024), interpolation=cv2.INTER_CUBIC)
    p = _psnr(out, bic)
    print(f"x4 region output vs bicubic of the same region: {p:.1f} dB")
    assert p > 25  # the same picture, upscaled (not a wrong region / channel order)
    stage.close()


def test_sr_region_size_picks_a_smaller_region(sample_bgra):
    """sr_region_size=128: the same network exported for a 128x128 input, the default region centred
    on the face (THA3's head box), output 512x512; equal to the 256 graph's upscale of that region
    away from the crop borders (the network is convolutional; near a border its context differs)."""
    from ezvtb.models.sr.spec import DEFAULT_REGION, default_region

    o = check_sr_options(True, False, 1, None, "bicubic", 128)
    assert (o["size"], o["region"]) == (128, (64, 192))
    assert default_region(256) == DEFAULT_REGION == (0, 128) and default_region(192) == (32, 160)
    assert default_region(512) == (0, 0) and default_region(384) == (0, 64)
    assert check_sr_options(True, False, 1, None, "bicubic", 256)["size"] is None  # the default graph
    small = create_sr_stage(sr_x4=True, sr_half=False, backend="cpu", sr_alpha="bicubic", sr_region_size=128,
                            max_frames=1)
    big = create_sr_stage(sr_x4=True, sr_half=False, backend="cpu", sr_alpha="bicubic", sr_region=(0, 128),
                          max_frames=1)
    img = sample_bgra("crypko_02")
    out = small.run([img])[0].copy()
    ref = big.run([img])[0]
    assert out.shape == (512, 512, 4) and small.region == (64, 192)
    assert small.session.spec.inputs[0].shape == (128, 128, 4) and small.stats()["output_shape"] == [512, 512, 4]
    # the 128 region (rows 64:192, cols 192:320) is rows 64:192, cols 64:192 of the 256 one: x4 from 256
    inner = np.abs(out[64:448, 64:448].astype(np.int16) - ref[320:704, 320:704]).max()
    print(f"128 region vs the same pixels of the 256 region's upscale, 16 px from the borders: max {inner} levels")
    assert inner <= 1
    small.close()
    big.close()


def test_create_sr_stage_upconv7_product_graph(sample_bgra):
    """UpConv7 512 -> 1024 (the whole frame), exported with the 7 px replicate padding inside."""
    stage = create_sr_stage(sr_x4=False, sr_half=False, sr_noise=1, backend="cpu", max_frames=1)
    img = sample_bgra("crypko_04")
    out = stage.run([img])[0]
    assert out.shape == (1024, 1024, 4) and stage.session.spec.inputs[0].shape == (512, 512, 4)
    bic = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    p = _psnr(out, bic)
    print(f"UpConv7 output vs bicubic: {p:.1f} dB")
    assert p > 30
    stage.close()


def test_get_core_sr_options_are_checked_first():
    from ezvtb.factory import get_core

    for kwargs, msg in [
        ({"sr_noise": 7}, "sr_noise: expected -1"),
        ({"sr_x4": False, "sr_region": (0, 0)}, "sr_region: only used with sr_x4=True"),
        ({"sr_region": (10, 400)}, "sr_region: expected"),
        ({"sr_alpha": "box"}, "sr_alpha: expected one of"),
        ({"sr_half": "no"}, "sr_half: expected a bool"),
        ({"use_sr": "yes"}, "use_sr: expected a bool"),
        ({"sr_region_size": 48}, "sr_region_size: expected a multiple of 32"),
        ({"sr_x4": False, "sr_region_size": 128}, "sr_region_size: only used with sr_x4=True"),
    ]:
        with pytest.raises(ValueError, match=msg):
            get_core(use_interpolation=False, use_cacher=False, **{"use_sr": True, **kwargs})


def test_get_core_with_sr_end_to_end(sample_bgra):
    """get_core -> Core(THA, RIFE x2, SR x4): 2 frames of 1024x1024 per inference."""
    import ezvtb.export

    if not hasattr(ezvtb.export, "tha3_graphs"):
        pytest.skip("the THA3 export (ezvtb.export.tha3_graphs) is not in the tree yet")
    from ezvtb.factory import get_core

    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=True,
                    interpolation_scale=2, interpolation_half=False, use_cacher=False, use_sr=True, sr_x4=True,
                    sr_half=False, backend="cpu")
    try:
        assert [type(s).__name__ for s in core.after] == ["RifeStage", "SrStage"]
        assert core.after[1].max_frames == 2
        core.setImage(sample_bgra("crypko_02"))
        out = core.inference(np.zeros(45, np.float32))
        assert len(out) == 2 and all(o.shape == (1024, 1024, 4) and o.dtype == np.uint8 for o in out)
        assert core.stats()["SrStage"]["runs"] == 2
    finally:
        core.close()



def test_after_rife_stage(sample_bgra):
    """RIFE x4 -> SR: the SR stage takes RIFE's 4 frames (views of RIFE's buffer) per call."""
    from ezvtb.export.rife import rife_graph
    from ezvtb.stages.rife import RifeStage

    rg = rife_graph(4, "fp32", size=128)
    rife = RifeStage(create_session(rg.path, rg.spec, "cpu"), rg.version, "fp32")
    g = sr_graph("upconv7", 0, "fp32", size=128)
    sr = SrStage(create_session(g.path, g.spec, "cpu"), "upconv7", max_frames=4)
    ref = create_session(g.path, g.spec, "cpu")
    a, b = _frames(sample_bgra, 128, 2)
    sr.run(rife.run([a]))
    mid = rife.run([b])
    want = [ref.run({"frame": f})["upscaled"].copy() for f in mid]
    out = sr.run(mid)
    assert len(out) == 4 and all(np.array_equal(o, w) for o, w in zip(out, want))
    assert not np.array_equal(out[0], out[3])


def test_ipc_server_expects_the_region_sizes_output():
    """The server sizes its frame slots from the options before the core exists."""
    from ezvtb.ipc.engine import expected_output

    base = {"use_interpolation": False, "use_cacher": False, "use_sr": True}
    assert expected_output("core", {**base, "sr_region_size": 128}) == ((512, 512, 4), 1)
    assert expected_output("core", base) == ((1024, 1024, 4), 1)
    assert expected_output("core", {**base, "sr_x4": False}) == ((1024, 1024, 4), 1)
    assert expected_output("core", {**base, "use_sr": False, "sr_region_size": 128}) == ((512, 512, 4), 1)
