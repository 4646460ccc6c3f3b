"""The core facade with the real THA3 graphs: seed example, errors, buffer reuse, stage skipping."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from ezvtb import get_core
from ezvtb.pose import index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core():
    c = get_core(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False,
                 model_cache=True, model_cache_size=0.05, backend="cpu")
    yield c
    c.close()


@pytest.fixture(scope="module")
def image():
    from ezvtb.weights.tha3 import sample_image

    return cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)


def test_seed_example_runs_as_written(image, tmp_path):
    """The seed's example, including `from ezvtb_interface import get_core`, in a fresh process."""
    from ezvtb.export import tha3_graphs

    # The seed's defaults (model_half=None: auto, fp32 on the CPU) use the fp32 graphs: export them here,
    # in this process, so that the child only runs the runtime path and can prove it never imports torch.
    tha3_graphs("separable", "fp32", progress=False)
    path = tmp_path / "character.png"
    cv2.imwrite(str(path), image)
    code = textwrap.dedent(f"""
        import sys, cv2, numpy as np
        from ezvtb_interface import get_core
        core = get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False)
        core.setImage(cv2.imread({str(path)!r}, cv2.IMREAD_UNCHANGED))
        pose = np.zeros((1, 45), np.float32)
        frames = core.inference(pose)
        assert core.stats()['tha']['precision'] == 'fp32', core.stats()['tha']['precision']
        assert isinstance(frames, list) and len(frames) == 1, frames
        f = frames[0]
        assert f.dtype == np.uint8 and f.shape == (512, 512, 4), (f.dtype, f.shape)
        assert 'torch' not in sys.modules, 'the runtime imported torch'
        print('ok', int(f[..., 3].sum()))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("ok")


def test_frames_are_bgra_uint8_and_follow_the_pose(core, image):
    core.setImage(image)
    p = np.zeros(45, np.float32)
    a = core.inference(p)[0].copy()
    p[index("head_y")] = 1.0
    b = core.inference(p)[0]
    assert a.shape == (512, 512, 4) and a.dtype == np.uint8
    # Same pose with zero rotation keeps the character where it was; a head turn changes pixels.
    assert np.abs(a.astype(int) - b.astype(int)).max() > 50
    # Alpha of the rendered frame matches the character's silhouette where nothing moves.
    assert abs(int(a[500, 256, 3]) - int(image[500, 256, 3])) <= 2


def test_returned_buffers_are_reused_by_the_next_call(core, image):
    core.setImage(image)
    p = np.zeros(45, np.float32)
    f1 = core.inference(p)[0]
    snapshot = f1.copy()
    p[index("head_x")] = 0.8
    f2 = core.inference(p)[0]
    assert f2 is f1 or np.shares_memory(f1, f2), "documented: the next call reuses the buffer"
    assert not np.array_equal(f1, snapshot)  # the old array now holds the new frame
    assert not np.array_equal(snapshot, f2)  # while the copy taken before is unchanged


def test_bad_inputs_raise_clear_errors_and_leave_the_core_usable(core, image):
    core.setImage(image)
    good = np.zeros((1, 45), np.float32)
    ref = core.inference(good)[0].copy()
    bad_poses = [np.zeros(44, np.float32), np.full(45, np.nan, np.float32), np.zeros((2, 45)), "x"]
    for bad in bad_poses:
        with pytest.raises(ValueError, match="pose"):
            core.inference(bad)
    bad_images = [np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512, 4), np.float32),
                  np.zeros((256, 256, 4), np.uint8), None]
    for bad in bad_images:
        with pytest.raises(ValueError, match="img"):
            core.setImage(bad)
    np.testing.assert_array_equal(core.inference(good)[0], ref)


def test_out_of_range_pose_is_clipped(core, image):
    core.setImage(image)
    p = np.zeros(45, np.float32)
    p[index("head_y")] = 1.0
    a = core.inference(p)[0].copy()
    p[index("head_y")] = 7.0
    np.testing.assert_array_equal(core.inference(p)[0], a)


def test_only_the_needed_subnetworks_run(core, image):
    tha = core.tha
    core.setImage(image)
    assert tha.runs["decomposer"] >= 1
    runs = lambda: dict(tha.runs)  # noqa: E731
    p = np.zeros(45, np.float32)
    core.inference(p)
    r0 = runs()
    p[index("breathing")] = 0.5  # rotation slice only
    core.inference(p)
    r1 = runs()
    assert (r1["combiner"], r1["morpher"]) == (r0["combiner"], r0["morpher"])
    assert (r1["rotator"], r1["editor"]) == (r0["rotator"] + 1, r0["editor"] + 1)
    p[index("mouth_aaa")] = 0.7  # face slice
    core.inference(p)
    r2 = runs()
    assert r2["combiner"] == r1["combiner"] and r2["morpher"] == r1["morpher"] + 1
    p[index("eyebrow_angry_left")] = 0.9  # eyebrow slice
    core.inference(p)
    r3 = runs()
    assert r3["combiner"] == r2["combiner"] + 1 and r3["morpher"] == r2["morpher"] + 1
    assert r3["decomposer"] == r0["decomposer"]


def test_model_cache_serves_seen_poses_without_running_the_networks(core, image):
    tha = core.tha
    core.setImage(image)
    p1 = np.zeros(45, np.float32)
    p1[index("eyebrow_raised_left")] = 1.0
    p2 = p1.copy()
    p2[index("eyebrow_raised_left")] = 0.0
    p2[index("mouth_ooo")] = 1.0
    a1 = core.inference(p1)[0].copy()
    core.inference(p2)
    before = dict(tha.runs)
    again = core.inference(p1)[0]
    assert tha.runs["combiner"] == before["combiner"] and tha.runs["morpher"] == before["morpher"]
    np.testing.assert_array_equal(again, a1)
    s = core.stats()["tha"]
    assert s["morpher_cache"]["hits"] >= 1 and s["morpher_cache"]["bytes"] <= s["morpher_cache"]["budget"]


def test_without_eyebrows_the_combiner_runs_once_per_image(image):
    c = get_core(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False,
                 model_use_eyebrow=False, backend="cpu")
    c.setImage(image)
    assert c.tha.runs["combiner"] == 1
    p = np.zeros(45, np.float32)
    a = c.inference(p)[0].copy()
    p[index("eyebrow_angry_left")] = 1.0  # ignored: eyebrows off
    np.testing.assert_array_equal(c.inference(p)[0], a)
    assert c.tha.runs["combiner"] == 1
    c.close()


def test_get_core_option_errors_name_the_option():
    with pytest.raises(ValueError, match="backend"):
        get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False, backend="metal")
    with pytest.raises(ValueError, match="model_cache_size"):
        get_core(use_tensorrt=False, use_interpolation=False, use_cacher=False, model_cache_size=-1)
    with pytest.raises(ValueError, match="device_id"):
        get_core(device_id=-1, use_tensorrt=False, use_interpolation=False, use_cacher=False)


def test_use_tensorrt_without_tensorrt_falls_back_with_a_warning(caplog):
    """The seed's contract: use_tensorrt=True where TensorRT is absent warns and runs elsewhere."""
    import logging

    from ezvtb.engines.trt import available

    if available()[0]:
        pytest.skip("TensorRT is usable on this machine: no fallback to observe")
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        c = get_core(use_tensorrt=True, model_half=False, use_interpolation=False, use_cacher=False)
    try:
        warned = [r.getMessage() for r in caplog.records if "use_tensorrt=True" in r.getMessage()]
        assert warned and "TensorRT is not usable" in warned[0], [r.getMessage() for r in caplog.records]
        # one short line on a CPU machine: what is missing, not every import error and install hint
        assert len(warned) == 1 and len(warned[0]) < 300 and "pip" not in warned[0], warned
    finally:
        c.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ezvtb"):  # an explicit backend is not a fallback
        get_core(use_tensorrt=True, backend="cpu", model_half=False, use_interpolation=False,
                 use_cacher=False).close()
    assert not [r for r in caplog.records if "use_tensorrt=True" in r.getMessage()]
