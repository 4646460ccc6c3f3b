"""get_core(pipelined=True) with the real THA3 graphs on CPU: frames shifted by one, errors, setImage."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb import get_core
from ezvtb.pipeline import PipelinedCore
from ezvtb.pose import index

pytestmark = pytest.mark.slow

OPTS = dict(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False,
            model_cache=False, backend="cpu")


@pytest.fixture(scope="module")
def cores():
    plain = get_core(**OPTS)
    piped = get_core(**OPTS, pipelined=True)
    yield plain, piped
    plain.close()
    piped.close()


def _poses(n):
    out = []
    for k in range(n):
        p = np.zeros(45, np.float32)
        p[index("head_x")] = -0.6 + 0.3 * k
        p[index("mouth_aaa")] = 0.25 * (k % 4)
        out.append(p)
    return out


def test_frames_are_the_plain_frames_shifted_by_one(cores, sample_bgra):
    plain, piped = cores
    assert isinstance(piped, PipelinedCore)
    img = sample_bgra("crypko_00")
    plain.setImage(img)
    piped.setImage(img)
    poses = _poses(4)
    want = [plain.inference(p)[0].copy() for p in poses]
    got = []
    for p in poses:
        out = piped.inference(p)
        assert isinstance(out, list) and len(out) == 1 and out[0].shape == (512, 512, 4)
        got.append(out[0].copy())
    # f(p1), f(p1), f(p2), f(p3): one frame late, the first frame repeated
    for g, w in zip(got, [want[0], *want[:-1]]):
        np.testing.assert_array_equal(g, w)
    st = piped.stats()["pipelined"]
    assert st["in_flight"] and st["repeats"] == 1
    last = piped.flush()  # the frame still in flight: the last pose's
    np.testing.assert_array_equal(last[0], want[-1])
    assert piped.flush() is None


def test_returned_buffers_belong_to_the_pipelined_core(cores, sample_bgra):
    _, piped = cores
    piped.setImage(sample_bgra("crypko_00"))
    a = piped.inference(_poses(1)[0])[0]
    b = piped.inference(_poses(2)[1])[0]
    assert a is b, "reused call to call, as with Core"
    assert not np.shares_memory(b, piped.core.tha.sessions["editor"].output("image")), \
        "a copy: the worker renders the next frame into the stage buffers meanwhile"
    piped.flush()


def test_bad_pose_raises_at_once_and_setimage_resets(cores, sample_bgra):
    plain, piped = cores
    img, img2 = sample_bgra("crypko_00"), sample_bgra("lambda_00")
    piped.setImage(img)
    p1, p2 = _poses(2)
    piped.inference(p1)
    piped.inference(p2)  # p2 in flight
    with pytest.raises(ValueError, match="pose"):
        piped.inference(np.full(45, np.nan, np.float32))
    assert piped.stats()["pipelined"]["in_flight"], "a refused pose changes nothing"
    piped.setImage(img2)  # waits for p2's frame and discards it
    assert not piped.stats()["pipelined"]["in_flight"]
    plain.setImage(img2)
    want = plain.inference(p1)[0]
    np.testing.assert_array_equal(piped.inference(p1)[0], want)  # first call after setImage: synchronous
    piped.flush()


def test_a_render_error_surfaces_on_the_next_call(sample_bgra):
    core = get_core(**OPTS, pipelined=True)
    try:
        core.setImage(sample_bgra("crypko_00"))
        p1, p2, p3 = _poses(3)
        first = core.inference(p1)[0].copy()
        core.inference(p2)  # p2 renders in the worker
        core.flush()
        core.core.tha.sessions["editor"].close()  # the editor can no longer run: the worker's render fails
        core.inference(p3)
        with pytest.raises(RuntimeError, match="editor: the session is closed"):
            core.inference(p1)
        assert core.stats()["pipelined"]["worker_errors"] == 1
        assert first.shape == (512, 512, 4)
    finally:
        core.close()


def test_pipelined_is_checked():
    with pytest.raises(ValueError, match="pipelined: expected a bool"):
        get_core(**OPTS, pipelined="yes")
    with pytest.raises(TypeError, match="core: expected a Core"):
        PipelinedCore(object())
