"""RifeStage semantics with real ONNX Runtime sessions (small 128x128 graphs for speed, one 512
graph through `create_rife_stage`), and get_core's RIFE option checks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from ezvtb.engines import create_session
from ezvtb.export.rife import rife_graph
from ezvtb.models.rife.spec import UnsupportedScaleError
from ezvtb.models.tha3.spec import graph_spec as tha_graph_spec
from ezvtb.stages.rife import RifeStage, create_rife_stage

from test_rife_models import random_v4_state_dict

SIZE = 128


@pytest.fixture(scope="module")
def frames(sample_bgra):
    """Four consecutive 128x128 BGRA frames of a character moving right."""
    img = cv2.resize(sample_bgra("crypko_05"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    out = []
    for k in range(4):
        m = np.float32([[1, 0, 2 * k], [0, 1, -k]])
        out.append(cv2.warpAffine(img, m, (SIZE, SIZE), borderValue=(0, 0, 0, 0)))
    return out


def _session(scale, rife_model=None):
    g = rife_graph(scale, "fp32", rife_model, size=SIZE)
    return g, create_session(g.path, g.spec, "cpu")


@pytest.fixture(scope="module")
def x2():
    g, s = _session(2)
    return g, s, create_session(g.path, g.spec, "cpu")  # a second session as the reference


def test_first_call_repeats_then_interpolates(x2, frames):
    g, sess, ref = x2
    stage = RifeStage(sess, g.version, "fp32")
    f0, f1, f2, f3 = frames
    out = stage.run([f0])
    assert len(out) == 2 and all(np.array_equal(o, f0) for o in out)
    assert stage.stats()["repeats"] == 1 and stage.stats()["runs"] == 0

    caller = f1.copy()  # the caller's buffer (THA's editor output), reused after the call
    out1 = stage.run([caller])
    want = ref.run({"prev_frame": f0, "frame": f1})["frames"].copy()
    assert len(out1) == 2 and np.array_equal(out1[0], want[0]) and np.array_equal(out1[1], f1)
    assert not np.array_equal(out1[0], f0) and not np.array_equal(out1[0], f1)
    kept = out1[0].copy()

    caller[:] = 0  # overwrite the caller's buffer: the stage kept its own copy of f1
    out2 = stage.run([f2])
    want = ref.run({"prev_frame": f1, "frame": f2})["frames"]
    assert np.array_equal(out2[0], want[0]) and np.array_equal(out2[1], f2)
    # preallocated, reused output: the previous call's arrays now hold this call's frames
    assert all(np.shares_memory(a, b) for a, b in zip(out1, out2))
    assert not np.array_equal(out1[0], kept) and np.array_equal(out1[0], out2[0])

    stage.reset()
    out3 = stage.run([f3])
    assert all(np.array_equal(o, f3) for o in out3)
    st = stage.stats()
    assert (st["runs"], st["repeats"], st["scale"], st["version"]) == (2, 2, 2, "hdv3")
    assert st["latency"]["rife"]["count"] == 4


def test_bad_input_keeps_the_stage_usable(x2, frames):
    g, sess, ref = x2
    stage = RifeStage(sess, g.version)
    f0, f1 = frames[:2]
    stage.run([f0])
    for bad, match in (([f0, f1], "frames: expected a list holding one THA frame, got list of 2"),
                       (f0, "frames: expected a list holding one THA frame, got ndarray"),
                       ([f0.astype(np.float32)],
                        r"frames\[0\].*expected uint8\[128, 128, 4\], got float32\[128, 128, 4\]"),
                       ([f0[:, :, :3].copy()], r"frames\[0\].*got uint8\[128, 128, 3\]"),
                       ([None], r"frames\[0\]: expected a uint8 \[128, 128, 4\] BGRA array, got NoneType")):
        with pytest.raises(ValueError, match=match):
            stage.run(bad)
    out = stage.run([f1])
    assert np.array_equal(out[0], ref.run({"prev_frame": f0, "frame": f1})["frames"][0])


def test_x4_and_v4_x3_return_exactly_scale_frames(frames, tmp_path):
    g4, s4 = _session(4)
    p = tmp_path / "flownet.pkl"
    torch.save(random_v4_state_dict(7), p)
    g3, s3 = _session(3, p)
    assert g3.version == "v4.25.lite"
    for g, s, n in ((g4, s4, 4), (g3, s3, 3)):
        stage = RifeStage(s, g.version)
        for k, f in enumerate(frames):
            out = stage.run([f])
            assert len(out) == n and all(o.shape == (SIZE, SIZE, 4) and o.dtype == np.uint8 for o in out)
            assert np.array_equal(out[-1], f)
            if k == 0:
                assert all(np.array_equal(o, f) for o in out)
        stage.close()


def test_stage_checks_its_session(x2):
    g, sess, _ = x2
    with pytest.raises(UnsupportedScaleError):
        g3, s3 = _session(3)
    with pytest.raises(ValueError, match="version: expected one of"):
        RifeStage(sess, "v9")

    class Fake:
        spec = tha_graph_spec("editor")

    with pytest.raises(ValueError, match="session: expected a RIFE graph"):
        RifeStage(Fake())


def test_create_rife_stage_512(sample_bgra):
    stage = create_rife_stage(2, False, None, "cpu")
    a = sample_bgra("crypko_01")
    b = np.ascontiguousarray(np.roll(a, 4, axis=1))
    stage.run([a])
    out = stage.run([b])
    assert len(out) == 2 and out[0].shape == (512, 512, 4) and np.array_equal(out[1], b)
    assert stage.precision == "fp32" and stage.session.spec.outputs[0].shape == (2, 512, 512, 4)
    stage.close()


def test_get_core_rife_options_are_checked_first(tmp_path):
    from ezvtb.factory import get_core

    for bad in (5, 1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match=f"interpolation_scale: expected one of \\[2, 3, 4\\], got {bad!r}"):
            get_core(use_interpolation=True, interpolation_scale=bad, use_cacher=False)
    with pytest.raises(ValueError, match="interpolation_scale=3 needs RIFE v4.x weights.*rife_model="):
        get_core(use_interpolation=True, interpolation_scale=3, use_cacher=False)
    with pytest.raises(FileNotFoundError, match="rife_model: no file at"):
        get_core(use_interpolation=True, interpolation_scale=3, rife_model=tmp_path / "x.pkl")
    with pytest.raises(ValueError, match="rife_model: expected None or the path"):
        get_core(use_interpolation=True, interpolation_scale=2, rife_model=42)
    with pytest.raises(ValueError, match="interpolation_half: expected a bool"):
        get_core(use_interpolation=True, interpolation_half="yes")


def test_get_core_with_rife_end_to_end(sample_bgra):
    """get_core -> Core(THA, RIFE x2, fp32, CPU): 2 frames per inference, repeat after setImage."""
    import ezvtb.export

    if not hasattr(ezvtb.export, "tha3_graphs"):
        pytest.skip("the THA3 export (ezvtb.export.tha3_graphs) is not in the tree yet")
    from ezvtb.factory import get_core
    from ezvtb.pose import index

    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=True,
                    interpolation_scale=2, interpolation_half=False, use_cacher=False, backend="cpu")
    try:
        assert [type(s).__name__ for s in core.after] == ["RifeStage"]
        core.setImage(sample_bgra("crypko_02"))
        pose = np.zeros(45, np.float32)
        out0 = [f.copy() for f in core.inference(pose)]
        assert len(out0) == 2 and np.array_equal(out0[0], out0[1])
        pose[index("head_y")] = 0.4
        pose[index("mouth_aaa")] = 1.0
        out1 = core.inference(pose)
        assert len(out1) == 2 and out1[1].shape == (512, 512, 4) and out1[1].dtype == np.uint8
        assert not np.array_equal(out1[1], out0[1])
        assert not np.array_equal(out1[0], out0[1]) and not np.array_equal(out1[0], out1[1])
        st = core.stats()["RifeStage"]
        assert (st["runs"], st["repeats"], st["scale"], st["version"]) == (1, 1, 2, "hdv3")
        core.setImage(sample_bgra("crypko_02"))
        out2 = core.inference(pose)
        assert np.array_equal(out2[0], out2[1]) and core.stats()["RifeStage"]["repeats"] == 2
    finally:
        core.close()
