"""Tracker -> THA3 mapping table, head-angle conventions, VRM presets, OpenSeeFace features."""
import math

import numpy as np
import pytest

from ezvtb.live.mapping import (
    ARKIT_BLENDSHAPES,
    Mapper,
    MappingConfig,
    TrackerState,
    breathing_value,
    canonical_blendshape,
    osf_head_angles,
    osf_to_blendshapes,
    quat_mul,
    quaternion_to_unity_euler,
    unity_euler_to_quaternion,
    unity_to_arkit,
)
from ezvtb.pose import POSE_MAX, POSE_MIN, index


def pose(bs=None, head=None, presets=None, **cfg):
    return Mapper(MappingConfig(**cfg)).to_pose(TrackerState(dict(bs or {}), head, dict(presets or {})))


def val(p, name):
    return float(p[index(name)])


def test_neutral_state_is_the_zero_pose():
    p = pose()
    assert p.dtype == np.float32 and p.shape == (45,)
    np.testing.assert_array_equal(p, np.zeros(45, np.float32))
    assert val(pose(iris_small=0.3), "iris_small_left") == pytest.approx(0.3)


def test_canonical_names():
    assert len(set(ARKIT_BLENDSHAPES)) == 52
    assert canonical_blendshape("eyeBlink_L") == "eyeBlinkLeft"
    assert canonical_blendshape("MOUTHSMILE_R") == "mouthSmileRight"
    assert canonical_blendshape("EyeBlinkLeft") == "eyeBlinkLeft"  # VMC perfect-sync spelling
    assert canonical_blendshape("jawOpen") == "jawOpen"
    assert canonical_blendshape("browInnerUp_L") is None
    assert canonical_blendshape("hapihapi") is None


def test_blink_and_smile_split_between_wink_and_happy_wink():
    p = pose({"eyeBlinkLeft": 0.8, "eyeBlinkRight": 0.0})
    assert val(p, "eye_wink_left") == 1.0 and val(p, "eye_wink_right") == 0.0
    assert val(p, "eye_happy_wink_left") == 0.0
    half = pose({"eyeBlinkLeft": 0.425})
    assert val(half, "eye_wink_left") == pytest.approx(0.5, abs=1e-6)
    smiling = pose({"eyeBlinkLeft": 0.8, "eyeBlinkRight": 0.8, "mouthSmileLeft": 0.8, "mouthSmileRight": 0.8})
    assert val(smiling, "eye_happy_wink_left") == 1.0 and val(smiling, "eye_wink_left") == 0.0
    assert val(smiling, "eyebrow_happy_left") == 1.0 and val(smiling, "mouth_raised_corner_right") == 1.0


def test_mouth_vowels():
    assert val(pose({"jawOpen": 0.45}), "mouth_aaa") == pytest.approx(1.0)
    assert val(pose({"jawOpen": 0.08}), "mouth_aaa") == 0.0
    o = pose({"jawOpen": 0.3, "mouthFunnel": 0.6})
    assert val(o, "mouth_ooo") == pytest.approx(1.0) and val(o, "mouth_aaa") == 0.0
    u = pose({"mouthPucker": 0.6})
    assert val(u, "mouth_uuu") == pytest.approx(1.0) and val(u, "mouth_ooo") == 0.0
    i = pose({"mouthStretchLeft": 0.5, "mouthStretchRight": 0.5})
    assert val(i, "mouth_iii") == pytest.approx(1.0) and val(i, "mouth_eee") == 0.0
    e = pose({"jawOpen": 0.45, "mouthStretchLeft": 0.5, "mouthStretchRight": 0.5})
    assert val(e, "mouth_eee") == pytest.approx(1.0) and val(e, "mouth_aaa") == 0.0 and val(e, "mouth_iii") == 0.0
    frown = pose({"mouthFrownLeft": 0.4})
    assert val(frown, "mouth_lowered_corner_left") == pytest.approx(1.0)
    assert val(frown, "mouth_lowered_corner_right") == 0.0
    assert val(pose({"mouthSmileLeft": 0.7}), "mouth_smirk") == pytest.approx(1.0)


def test_eyebrows_and_brow_down_target():
    p = pose({"browOuterUpLeft": 0.7})
    assert val(p, "eyebrow_raised_left") == pytest.approx(1.0) and val(p, "eyebrow_raised_right") == 0.0
    t = pose({"browInnerUp": 0.5})
    assert val(t, "eyebrow_troubled_left") == pytest.approx(1.0)
    d = pose({"browDownLeft": 0.45, "browDownRight": 0.25})
    assert val(d, "eyebrow_angry_left") == pytest.approx(1.0) and val(d, "eyebrow_angry_right") == pytest.approx(0.5)
    s = pose({"browDownLeft": 0.45}, brow_down="serious")
    assert val(s, "eyebrow_serious_left") == pytest.approx(1.0) and val(s, "eyebrow_angry_left") == 0.0


def test_gaze_signs():
    up = pose({"eyeLookUpLeft": 0.5, "eyeLookUpRight": 0.5})
    assert val(up, "iris_rotation_x") == pytest.approx(0.65)
    right = pose({"eyeLookInLeft": 0.5, "eyeLookOutRight": 0.5})  # both eyes toward the character's right
    assert val(right, "iris_rotation_y") == pytest.approx(0.65)


def test_head_angles_ranges_body_follow_and_clipping():
    p = pose(head=(7.5, -7.5, 3.0))
    assert val(p, "head_x") == pytest.approx(-0.5)
    assert val(p, "head_y") == pytest.approx(0.5)
    assert val(p, "neck_z") == pytest.approx(0.2)
    assert val(p, "body_y") == pytest.approx(0.25) and val(p, "body_z") == pytest.approx(0.1)
    big = pose(head=(-40.0, 90.0, -50.0))
    assert (val(big, "head_x"), val(big, "head_y"), val(big, "neck_z")) == (1.0, -1.0, -1.0)
    assert val(big, "body_y") == pytest.approx(-0.5)
    assert val(pose(head=(0, -7.5, 0), yaw_range=30.0), "head_y") == pytest.approx(0.25)


def test_mirror_swaps_sides_and_flips_yaw_roll():
    bs = {"eyeBlinkLeft": 0.8, "browOuterUpRight": 0.7}
    a = pose(bs, head=(3.0, 6.0, 9.0))
    b = pose(bs, head=(3.0, 6.0, 9.0), mirror=True)
    assert val(b, "eye_wink_right") == val(a, "eye_wink_left") == 1.0 and val(b, "eye_wink_left") == 0.0
    assert val(b, "eyebrow_raised_left") == val(a, "eyebrow_raised_right")
    assert val(b, "head_x") == val(a, "head_x")
    assert val(b, "head_y") == -val(a, "head_y") and val(b, "neck_z") == -val(a, "neck_z")


def test_vrm_presets():
    p = pose(presets={"aa": 1.0, "blinkleft": 1.0, "lookup": 0.5, "lookright": 0.25})
    assert val(p, "mouth_aaa") == 1.0 and val(p, "eye_wink_left") == 1.0 and val(p, "eye_wink_right") == 0.0
    assert val(p, "iris_rotation_x") == 0.5 and val(p, "iris_rotation_y") == 0.25
    h = pose(presets={"happy": 1.0, "blink": 1.0})
    assert val(h, "eye_happy_wink_left") == 1.0 and val(h, "eye_wink_left") == 0.0
    assert val(h, "eyebrow_happy_right") == 1.0 and val(h, "mouth_raised_corner_left") == 1.0
    s = pose(presets={"surprised": 0.5, "sad": 1.0})
    assert val(s, "eye_surprised_left") == 0.5 and val(s, "eyebrow_raised_right") == 0.5
    assert val(s, "eyebrow_troubled_left") == 1.0 and val(s, "mouth_lowered_corner_left") == 0.5


def test_random_states_stay_in_range():
    rng = np.random.default_rng(1)
    m = Mapper()
    for _ in range(300):
        bs = {n: float(rng.uniform(-0.5, 1.5)) for n in rng.choice(ARKIT_BLENDSHAPES, 20)}
        p = m.to_pose(TrackerState(bs, tuple(rng.uniform(-90, 90, 3)), {"aa": float(rng.uniform(0, 2))}))
        assert np.all(p >= POSE_MIN) and np.all(p <= POSE_MAX)


def test_non_finite_state_raises_and_mapper_stays_usable():
    m = Mapper()
    with pytest.raises(ValueError, match="non-finite"):
        m.to_pose(TrackerState({}, (float("nan"), 0.0, 0.0)))
    assert m.to_pose(TrackerState({"jawOpen": 1.0}))[index("mouth_aaa")] == 1.0


@pytest.mark.parametrize("kw, word", [({"jaw_lo": 0.5, "jaw_hi": 0.4}, "jaw_lo"), ({"brow_down": "sad"}, "brow_down"),
                                      ({"yaw_range": 0}, "yaw_range"), ({"body_follow": 2}, "body_follow"),
                                      ({"breathing_period": -1}, "breathing_period")])
def test_bad_config(kw, word):
    with pytest.raises(ValueError, match=word):
        MappingConfig(**kw)


def test_unity_euler_round_trip_and_axis_conventions():
    rng = np.random.default_rng(2)
    for _ in range(200):
        e = (rng.uniform(-85, 85), rng.uniform(-179, 179), rng.uniform(-179, 179))
        back = quaternion_to_unity_euler(unity_euler_to_quaternion(*e))
        np.testing.assert_allclose(back, e, atol=1e-6)
    # Unity's Euler order: q = qy * qx * qz (z first, then x, then y about world axes)
    q = unity_euler_to_quaternion(10, 20, 30)
    qx, qy, qz = (unity_euler_to_quaternion(10, 0, 0), unity_euler_to_quaternion(0, 20, 0),
                  unity_euler_to_quaternion(0, 0, 30))
    np.testing.assert_allclose(q, quat_mul(quat_mul(qy, qx), qz), atol=1e-12)
    # rotating Unity's forward (0, 0, 1) by x = +30 looks down (y < 0)
    x, _, _, w = unity_euler_to_quaternion(30, 0, 0)
    fwd_y = -2 * w * x  # y of R(q) * (0, 0, 1) for a pure x rotation
    assert fwd_y == pytest.approx(-math.sin(math.radians(30)))
    assert unity_to_arkit((10.0, 20.0, 5.0)) == (10.0, -20.0, -5.0)
    with pytest.raises(ValueError, match="quaternion"):
        quaternion_to_unity_euler((0, 0, 0, 0))


def test_osf_conversions():
    np.testing.assert_allclose(osf_head_angles((180.0, 0.0, 90.0)), (0.0, 0.0, 0.0), atol=1e-9)
    np.testing.assert_allclose(osf_head_angles((-180.0, 0.0, 90.0)), (0.0, 0.0, 0.0), atol=1e-9)
    # raw x -170 -> Unity x = -(10) -> ARKit pitch -10 (looking up); y 10 -> yaw -10; z 95 -> roll -5
    np.testing.assert_allclose(osf_head_angles((-170.0, 10.0, 95.0)), (-10.0, -10.0, -5.0), atol=1e-9)
    bs = osf_to_blendshapes(0.9, 0.2, {"mouth_open": 0.7, "mouth_wide": -0.5, "mouth_corner_updown_l": 0.4,
                                       "eyebrow_updown_r": -0.3})
    assert bs["eyeBlinkLeft"] == 0.0 and bs["eyeBlinkRight"] == 1.0
    assert bs["jawOpen"] == 0.7 and bs["mouthPucker"] == pytest.approx(0.3) and bs["mouthStretchLeft"] == 0.0
    assert bs["mouthSmileLeft"] == 0.4 and bs["browDownRight"] == pytest.approx(0.3)
    assert set(osf_to_blendshapes(0.5, 0.5, None)) == {"eyeBlinkLeft", "eyeBlinkRight"}


def test_breathing_value():
    assert breathing_value(0.0, 4.0) == 0.0
    assert breathing_value(2.0, 4.0) == pytest.approx(1.0)
    assert breathing_value(1.0, 4.0) == pytest.approx(0.5)
    assert breathing_value(1.0, 0.0) == 0.0
