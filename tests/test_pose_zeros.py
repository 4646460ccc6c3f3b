"""-0.0 and +0.0 are one pose: zeros are made canonical where poses are validated,
so THA's change detection, its intermediate cache and the output-cache key all see one zero."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb.cache.keys import FrameKeys
from ezvtb.pose import POSE_MAX, POSE_MIN, canonical_zeros, index, quantize_pose, validate_pose

IRIS_X = index("iris_rotation_x")  # in the face slice [12:39]: the morpher's key
HEAD_X = index("head_x")


def signbits(a: np.ndarray) -> int:
    return int(np.signbit(a).sum())


def test_validated_and_quantised_poses_have_no_negative_zero():
    p = np.zeros(45, np.float32)
    p[IRIS_X] = p[HEAD_X] = -0.0
    p[0] = -0.0  # a [0, 1] parameter given as -0.0
    assert signbits(p) == 3
    v = validate_pose(p)
    assert signbits(v) == 0 and v.tobytes() == np.zeros(45, np.float32).tobytes()
    # quantisation rounds small negative values to -0.0: validate_pose(step=) and quantize_pose both fix it
    q = np.zeros(45, np.float32)
    q[IRIS_X], q[HEAD_X] = -0.01, -0.04
    assert signbits(np.round(q / 0.125) * 0.125) == 2  # what the grid alone gives
    assert signbits(validate_pose(q, step=1 / 8)) == 0
    assert signbits(quantize_pose(q.copy(), 1 / 8)) == 0
    assert validate_pose(q, step=1 / 8).tobytes() == validate_pose(np.zeros(45), step=1 / 8).tobytes()
    # other values are untouched, the output buffer is reused, and int/float64 inputs work alike
    r = np.linspace(-1, 1, 45)
    out = np.empty(45, np.float32)
    assert validate_pose(r, out=out) is out
    assert np.array_equal(out, np.clip(r.astype(np.float32), POSE_MIN, POSE_MAX))
    assert np.array_equal(canonical_zeros(np.array([-0.0, 0.5, -1.0])), [0.0, 0.5, -1.0])


def test_the_output_cache_key_uses_the_same_rule():
    keys = FrameKeys(bytes(32))
    a = np.zeros(45, np.float32)
    b = a.copy()
    b[IRIS_X] = -0.0
    assert keys.key(a) == keys.key(b) == keys.key(a.astype(np.float64))
    b[IRIS_X] = 1e-7
    assert keys.key(a) != keys.key(b)


@pytest.mark.slow
def test_the_morpher_runs_once_for_a_pose_that_only_flips_the_sign_of_zero(sample_bgra):
    """Real THA3 graphs on CPU, no output cache, no model cache: four poses that quantise to the same
    grid point, two of them with -0.01 (-> -0.0 before the fix). The morpher (keyed by pose[:39] bytes)
    and the combiner run once, not four times; every frame is the same."""
    from ezvtb import get_core

    core = get_core(backend="cpu", use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False,
                    model_cache=False, pose_quantization=1 / 8)
    try:
        core.setImage(sample_bgra("crypko_00"))
        base = np.zeros(45, np.float32)
        base[index("mouth_aaa")] = 0.5
        frames = []
        for k in range(4):
            p = base.copy()
            p[IRIS_X] = -0.01 if k % 2 else 0.01
            p[index("eyebrow_happy_left")] = 0.01  # [0, 1]: clipped / rounded to +0.0 either way
            frames.append(core.inference(p)[0].copy())
        runs = core.stats()["tha"]["runs"]
        assert runs["morpher"] == 1 and runs["combiner"] == 1 and runs["editor"] == 4, runs
        assert all(np.array_equal(f, frames[0]) for f in frames)
    finally:
        core.close()
