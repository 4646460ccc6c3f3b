"""Face-tracker data -> the 45 THA3 pose parameters (the table is also in docs/live.md).

Every source first turns its packets into a `TrackerState`: ARKit-style blendshapes (the 52
canonical names, values 0..1), head angles in degrees and optional VRM expression presets.
`Mapper.to_pose` turns that state into a float32 (45,) pose. The same table serves every
tracker; OpenSeeFace features and VRM presets are first converted as described below.

Notation: ``ramp(v, lo, hi) = clip((v - lo) / (hi - lo), 0, 1)``; ``S`` is the side (left or
right, the character's own side); ``avg(x)`` is the mean of the left and right values.

| THA3 parameter | from | default |
|---|---|---|
| smile degree h (internal) | ``ramp(avg(mouthSmile), smile_lo, smile_hi)`` | 0.35, 0.65 |
| eye_wink_S | ``(1 - h) * ramp(eyeBlinkS, blink_lo, blink_hi)`` | 0.05, 0.8 |
| eye_happy_wink_S | ``h * ramp(eyeBlinkS, blink_lo, blink_hi)`` | |
| eye_surprised_S | ``ramp(eyeWideS, 0.05, wide_hi)`` | wide_hi 0.5 |
| eye_raised_lower_eyelid_S | ``ramp(max(eyeSquintS, cheekSquintS), 0.15, 0.7)`` | |
| eye_relaxed_S, eye_unimpressed_S | VRM presets only | |
| iris_small_S | constant ``iris_small`` | 0 |
| eyebrow_raised_S | ``ramp(browOuterUpS + 0.5 * browInnerUp, 0.05, 0.7)`` | |
| eyebrow_troubled_S | ``ramp(browInnerUp - browOuterUpS, 0.1, 0.5)`` | |
| eyebrow_<brow_down>_S | ``(1 - h) * ramp(browDownS, 0.05, 0.45)``; brow_down is angry, lowered or serious | angry |
| eyebrow_happy_S | ``h`` | |
| mouth open o (internal) | ``ramp(jawOpen, jaw_lo, jaw_hi)`` | 0.08, 0.45 |
| lip rounding r (internal) | ``ramp(max(mouthFunnel, mouthPucker), 0.15, 0.6)`` | |
| lip spreading s (internal) | ``ramp(avg(mouthStretch) + 0.5 * avg(mouthSmile), 0.1, 0.5)`` | |
| mouth_aaa | ``o * (1 - r) * (1 - s)`` | |
| mouth_eee | ``o * (1 - r) * s`` | |
| mouth_iii | ``(1 - o) * (1 - r) * ramp(avg(mouthStretch), 0.15, 0.5)`` | |
| mouth_ooo | ``r * f``, ``f = mouthFunnel / (mouthFunnel + mouthPucker)`` | |
| mouth_uuu | ``r * (1 - f)`` | |
| mouth_raised_corner_S | ``ramp(mouthSmileS, 0.1, 0.6)`` | |
| mouth_lowered_corner_S | ``(1 - o) * ramp(mouthFrownS, 0.05, 0.4)`` | |
| mouth_smirk | ``ramp(abs(mouthSmileLeft - mouthSmileRight), 0.2, 0.6)`` | |
| mouth_delta | 0 | |
| iris_rotation_x | ``gaze_gain * (avg(eyeLookUp) - avg(eyeLookDown))`` (up = +) | 1.3 |
| iris_rotation_y | ``gaze_gain * (eyeLookInLeft - eyeLookOutLeft + eyeLookOutRight - eyeLookInRight) / 2`` | |
| head_x | ``-pitch / pitch_range`` | 15 deg |
| head_y | ``-yaw / yaw_range`` | 15 deg |
| neck_z | ``roll / roll_range`` | 15 deg |
| body_y, body_z | ``body_follow * head_y``, ``body_follow * neck_z`` | 0.5 |
| breathing | ``0.5 - 0.5 cos(2 pi t / breathing_period)`` (added by the source; 0 = off) | 4 s |

Head angles are in the iFacialMocap / ARKit convention (the one THA3's own iFacialMocap demo
reads): pitch > 0 looks down, yaw > 0 turns toward the viewer's right, roll > 0 tilts the top of
the head toward the viewer's left. Eye-gaze signs also follow THA3's demo. All results are
clipped to each parameter's range (`ezvtb.pose`).

VRM presets (VMC; names compared case-insensitively, VRM 0.x and 1.0 spellings) are added on top
(maximum with the blendshape result): A/aa -> mouth_aaa, I/ih -> mouth_iii, U/ou -> mouth_uuu,
E/ee -> mouth_eee, O/oh -> mouth_ooo, Blink/blink -> eyeBlink both, Blink_L/blinkLeft and
Blink_R/blinkRight -> one eye, Joy/happy -> eye_happy_wink + eyebrow_happy +
mouth_raised_corner, Angry/angry -> eyebrow_angry + 0.5 mouth_lowered_corner, Sorrow/sad ->
eyebrow_troubled + 0.5 mouth_lowered_corner, Fun/relaxed -> eye_relaxed + mouth_raised_corner,
Surprised/surprised -> eye_surprised + eyebrow_raised, LookUp/LookDown/LookLeft/LookRight ->
iris_rotation_x/y.

OpenSeeFace (`osf_to_blendshapes`): eye openness from the packet's eye-open values
(``eyeBlinkS = 1 - ramp(openS, 0.25, 0.6)``); the 14 features (about -1..1 around the user's
median) become ``jawOpen = max(mouth_open, 0)``, ``mouthStretchS = max(mouth_wide, 0)``,
``mouthPucker = 0.6 * max(-mouth_wide, 0)``, ``mouthSmileS = max(mouth_corner_updown_S, 0)``,
``mouthFrownS = max(-mouth_corner_updown_S, 0)``, ``browOuterUpS = max(eyebrow_updown_S, 0)``,
``browDownS = max(-eyebrow_updown_S, 0)`` (all clipped to 0..1). Packets without features
(older trackers, 1729 bytes) drive the eyes and head only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from ezvtb.pose import POSE_MAX, POSE_MIN, POSE_SIZE, index

ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
assert len(ARKIT_BLENDSHAPES) == 52

# lower-case spelling -> canonical name; also the iFacialMocap "_L"/"_R" spellings.
_CANONICAL: dict[str, str] = {}
for _n in ARKIT_BLENDSHAPES:
    _CANONICAL[_n.lower()] = _n
    for _side, _suffix in (("Left", "_l"), ("Right", "_r")):
        if _n.endswith(_side):
            _CANONICAL[_n[: -len(_side)].lower() + _suffix] = _n


def canonical_blendshape(name: str) -> str | None:
    """The canonical ARKit name for `name` (any case; ``eyeBlink_L`` style too), or None."""
    return _CANONICAL.get(name.lower())


# VRM expression presets, lower-case, VRM 0.x and 1.0 spellings -> canonical preset name.
VRM_PRESETS: dict[str, str] = {
    "a": "aa", "aa": "aa", "i": "ih", "ih": "ih", "u": "ou", "ou": "ou", "e": "ee", "ee": "ee", "o": "oh", "oh": "oh",
    "blink": "blink", "blink_l": "blinkleft", "blinkleft": "blinkleft", "blink_r": "blinkright",
    "blinkright": "blinkright", "joy": "happy", "happy": "happy", "angry": "angry", "sorrow": "sad", "sad": "sad",
    "fun": "relaxed", "relaxed": "relaxed", "surprised": "surprised", "lookup": "lookup", "lookdown": "lookdown",
    "lookleft": "lookleft", "lookright": "lookright",
}

BROW_DOWN_TARGETS = ("angry", "lowered", "serious", "troubled")


@dataclasses.dataclass
class TrackerState:
    """One tracker sample, tracker-independent.

    blendshapes: canonical ARKit name -> 0..1 (missing names count as 0).
    head: (pitch, yaw, roll) in degrees, iFacialMocap/ARKit convention (module docstring), or None.
    presets: canonical VRM preset name (values of `VRM_PRESETS`) -> 0..1.
    """

    blendshapes: dict[str, float] = dataclasses.field(default_factory=dict)
    head: tuple[float, float, float] | None = None
    presets: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MappingConfig:
    """The tunable numbers of the mapping table (module docstring); defaults as listed there."""

    smile_lo: float = 0.35
    smile_hi: float = 0.65
    blink_lo: float = 0.05
    blink_hi: float = 0.8
    wide_hi: float = 0.5
    jaw_lo: float = 0.08
    jaw_hi: float = 0.45
    brow_down: str = "angry"
    iris_small: float = 0.0
    gaze_gain: float = 1.3
    pitch_range: float = 15.0
    yaw_range: float = 15.0
    roll_range: float = 15.0
    body_follow: float = 0.5
    breathing_period: float = 4.0
    mirror: bool = False

    def __post_init__(self) -> None:
        for lo, hi in (("smile_lo", "smile_hi"), ("blink_lo", "blink_hi"), ("jaw_lo", "jaw_hi")):
            a, b = getattr(self, lo), getattr(self, hi)
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                raise ValueError(f"{lo}/{hi}: expected finite {lo} < {hi}, got {a!r} and {b!r}")
        for name in ("wide_hi", "pitch_range", "yaw_range", "roll_range"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a finite value > 0, got {v!r}")
        if self.brow_down not in BROW_DOWN_TARGETS:
            raise ValueError(f"brow_down: expected one of {BROW_DOWN_TARGETS}, got {self.brow_down!r}")
        if not (0.0 <= self.iris_small <= 1.0):
            raise ValueError(f"iris_small: expected 0..1, got {self.iris_small!r}")
        if not (0.0 <= self.body_follow <= 1.0):
            raise ValueError(f"body_follow: expected 0..1, got {self.body_follow!r}")
        if not (math.isfinite(self.gaze_gain) and self.gaze_gain >= 0):
            raise ValueError(f"gaze_gain: expected a finite value >= 0, got {self.gaze_gain!r}")
        if not (math.isfinite(self.breathing_period) and self.breathing_period >= 0):
            raise ValueError(f"breathing_period: expected seconds >= 0 (0 = off), got {self.breathing_period!r}")


def ramp(v: float, lo: float, hi: float) -> float:
    """``clip((v - lo) / (hi - lo), 0, 1)``."""
    x = (v - lo) / (hi - lo)
    return 0.0 if x <= 0.0 else 1.0 if x >= 1.0 else x


def _clip01(v: float) -> float:
    return 0.0 if v <= 0.0 else 1.0 if v >= 1.0 else v


_I = {n: index(n) for n in (
    "eye_wink_left", "eye_wink_right", "eye_happy_wink_left", "eye_happy_wink_right", "eye_surprised_left",
    "eye_surprised_right", "eye_relaxed_left", "eye_relaxed_right", "eye_raised_lower_eyelid_left",
    "eye_raised_lower_eyelid_right", "iris_small_left", "iris_small_right", "eyebrow_raised_left",
    "eyebrow_raised_right", "eyebrow_troubled_left", "eyebrow_troubled_right", "eyebrow_happy_left",
    "eyebrow_happy_right", "eyebrow_angry_left", "eyebrow_angry_right", "eyebrow_lowered_left",
    "eyebrow_lowered_right", "eyebrow_serious_left", "eyebrow_serious_right", "mouth_aaa", "mouth_iii",
    "mouth_uuu", "mouth_eee", "mouth_ooo", "mouth_raised_corner_left", "mouth_raised_corner_right",
    "mouth_lowered_corner_left", "mouth_lowered_corner_right", "mouth_smirk", "iris_rotation_x",
    "iris_rotation_y", "head_x", "head_y", "neck_z", "body_y", "body_z", "breathing")}
BREATHING = _I["breathing"]

# Blendshape name pairs swapped by `mirror`.
_MIRROR_NAMES = [(n, n[:-4] + "Right") for n in ARKIT_BLENDSHAPES if n.endswith("Left")]


class Mapper:
    """Applies the mapping table (module docstring) with a `MappingConfig`."""

    def __init__(self, config: MappingConfig | None = None) -> None:
        self.config = config or MappingConfig()

    def to_pose(self, state: TrackerState, out: np.ndarray | None = None) -> np.ndarray:
        """A float32 (45,) pose for `state` (written into `out` when given); breathing is left at 0."""
        c = self.config
        bs = state.blendshapes
        if c.mirror:
            bs = dict(bs)
            for a, b in _MIRROR_NAMES:
                bs[a], bs[b] = state.blendshapes.get(b, 0.0), state.blendshapes.get(a, 0.0)
        g = bs.get
        p = np.zeros(POSE_SIZE, np.float64)
        I = _I  # noqa: E741, N806 - the ARKit-to-THA3 formulas' own name

        smile_l, smile_r = g("mouthSmileLeft", 0.0), g("mouthSmileRight", 0.0)
        smile = 0.5 * (smile_l + smile_r)
        h = ramp(smile, c.smile_lo, c.smile_hi)
        for side in ("left", "right"):
            S = side.capitalize()  # noqa: N806
            close = ramp(g(f"eyeBlink{S}", 0.0), c.blink_lo, c.blink_hi)
            p[I[f"eye_wink_{side}"]] = (1.0 - h) * close
            p[I[f"eye_happy_wink_{side}"]] = h * close
            p[I[f"eye_surprised_{side}"]] = ramp(g(f"eyeWide{S}", 0.0), 0.05, c.wide_hi)
            p[I[f"eye_raised_lower_eyelid_{side}"]] = ramp(max(g(f"eyeSquint{S}", 0.0), g(f"cheekSquint{S}", 0.0)),
                                                           0.15, 0.7)
            p[I[f"iris_small_{side}"]] = c.iris_small
            outer, inner = g(f"browOuterUp{S}", 0.0), g("browInnerUp", 0.0)
            p[I[f"eyebrow_raised_{side}"]] = ramp(outer + 0.5 * inner, 0.05, 0.7)
            p[I[f"eyebrow_troubled_{side}"]] = ramp(inner - outer, 0.1, 0.5)
            down = (1.0 - h) * ramp(g(f"browDown{S}", 0.0), 0.05, 0.45)
            k = I[f"eyebrow_{c.brow_down}_{side}"]
            p[k] = max(p[k], down)
            p[I[f"eyebrow_happy_{side}"]] = h
            p[I[f"mouth_raised_corner_{side}"]] = ramp(g(f"mouthSmile{S}", 0.0), 0.1, 0.6)

        o = ramp(g("jawOpen", 0.0), c.jaw_lo, c.jaw_hi)
        funnel, pucker = g("mouthFunnel", 0.0), g("mouthPucker", 0.0)
        r = ramp(max(funnel, pucker), 0.15, 0.6)
        stretch = 0.5 * (g("mouthStretchLeft", 0.0) + g("mouthStretchRight", 0.0))
        s = ramp(stretch + 0.5 * smile, 0.1, 0.5)
        f = funnel / (funnel + pucker) if funnel + pucker > 1e-6 else 0.5
        p[I["mouth_aaa"]] = o * (1.0 - r) * (1.0 - s)
        p[I["mouth_eee"]] = o * (1.0 - r) * s
        p[I["mouth_iii"]] = (1.0 - o) * (1.0 - r) * ramp(stretch, 0.15, 0.5)
        p[I["mouth_ooo"]] = r * f
        p[I["mouth_uuu"]] = r * (1.0 - f)
        p[I["mouth_lowered_corner_left"]] = (1.0 - o) * ramp(g("mouthFrownLeft", 0.0), 0.05, 0.4)
        p[I["mouth_lowered_corner_right"]] = (1.0 - o) * ramp(g("mouthFrownRight", 0.0), 0.05, 0.4)
        p[I["mouth_smirk"]] = ramp(abs(smile_l - smile_r), 0.2, 0.6)

        up = 0.5 * (g("eyeLookUpLeft", 0.0) + g("eyeLookUpRight", 0.0))
        dn = 0.5 * (g("eyeLookDownLeft", 0.0) + g("eyeLookDownRight", 0.0))
        p[I["iris_rotation_x"]] = c.gaze_gain * (up - dn)
        p[I["iris_rotation_y"]] = c.gaze_gain * 0.5 * (g("eyeLookInLeft", 0.0) - g("eyeLookOutLeft", 0.0)
                                                      + g("eyeLookOutRight", 0.0) - g("eyeLookInRight", 0.0))
        if state.presets:
            self._presets(state.presets, p)

        if state.head is not None:
            pitch, yaw, roll = state.head
            if c.mirror:
                yaw, roll = -yaw, -roll
            p[I["head_x"]] = -pitch / c.pitch_range
            p[I["head_y"]] = -yaw / c.yaw_range
            p[I["neck_z"]] = roll / c.roll_range
            hy = min(1.0, max(-1.0, p[I["head_y"]]))
            nz = min(1.0, max(-1.0, p[I["neck_z"]]))
            p[I["body_y"]] = c.body_follow * hy
            p[I["body_z"]] = c.body_follow * nz
        if not np.all(np.isfinite(p)):
            raise ValueError("tracker state: non-finite values (NaN or inf in blendshapes or head angles)")
        if out is None:
            out = np.empty(POSE_SIZE, np.float32)
        np.clip(p, POSE_MIN, POSE_MAX, out=out, casting="unsafe")
        return out

    def _presets(self, pr: Mapping[str, float], p: np.ndarray) -> None:
        I = _I  # noqa: E741, N806 - the ARKit-to-THA3 formulas' own name
        c = self.config
        v = {k: _clip01(float(x)) for k, x in pr.items()}
        g = v.get

        def up(name: str, value: float) -> None:
            k = I[name]
            p[k] = max(p[k], value)

        for preset, param in (("aa", "mouth_aaa"), ("ih", "mouth_iii"), ("ou", "mouth_uuu"), ("ee", "mouth_eee"),
                              ("oh", "mouth_ooo")):
            up(param, g(preset, 0.0))
        happy = g("happy", 0.0)
        sides = ("right", "left") if c.mirror else ("left", "right")
        for side, own in zip(("left", "right"), sides):
            blink = max(g("blink", 0.0), g(f"blink{own}", 0.0))
            up(f"eye_wink_{side}", (1.0 - happy) * blink)
            up(f"eye_happy_wink_{side}", happy)
            up(f"eyebrow_happy_{side}", happy)
            up(f"mouth_raised_corner_{side}", max(happy, g("relaxed", 0.0)))
            up(f"eyebrow_angry_{side}", g("angry", 0.0))
            up(f"eyebrow_troubled_{side}", g("sad", 0.0))
            up(f"mouth_lowered_corner_{side}", 0.5 * max(g("angry", 0.0), g("sad", 0.0)))
            up(f"eye_relaxed_{side}", g("relaxed", 0.0))
            up(f"eye_surprised_{side}", g("surprised", 0.0))
            up(f"eyebrow_raised_{side}", g("surprised", 0.0))
        look_v = g("lookup", 0.0) - g("lookdown", 0.0)
        look_h = g("lookright", 0.0) - g("lookleft", 0.0)
        if c.mirror:
            look_h = -look_h
        if look_v:
            p[I["iris_rotation_x"]] = look_v
        if look_h:
            p[I["iris_rotation_y"]] = look_h


def breathing_value(t: float, period: float) -> float:
    """``0.5 - 0.5 cos(2 pi t / period)``; 0 when `period` is 0 (off)."""
    if period <= 0:
        return 0.0
    return 0.5 - 0.5 * math.cos(2.0 * math.pi * (t % period) / period)


# --- OpenSeeFace -------------------------------------------------------------------------------
OSF_FEATURES: tuple[str, ...] = (
    "eye_l", "eye_r", "eyebrow_steepness_l", "eyebrow_updown_l", "eyebrow_quirk_l", "eyebrow_steepness_r",
    "eyebrow_updown_r", "eyebrow_quirk_r", "mouth_corner_updown_l", "mouth_corner_inout_l",
    "mouth_corner_updown_r", "mouth_corner_inout_r", "mouth_open", "mouth_wide",
)
OSF_EYE_CLOSED, OSF_EYE_OPEN = 0.25, 0.6


def osf_to_blendshapes(eye_open_left: float, eye_open_right: float,
                       features: Mapping[str, float] | None) -> dict[str, float]:
    """ARKit-style blendshapes from one OpenSeeFace face (table in the module docstring)."""
    bs = {
        "eyeBlinkLeft": 1.0 - ramp(eye_open_left, OSF_EYE_CLOSED, OSF_EYE_OPEN),
        "eyeBlinkRight": 1.0 - ramp(eye_open_right, OSF_EYE_CLOSED, OSF_EYE_OPEN),
    }
    if features:
        f = features.get
        wide = f("mouth_wide", 0.0)
        bs.update({
            "jawOpen": _clip01(f("mouth_open", 0.0)),
            "mouthStretchLeft": _clip01(wide),
            "mouthStretchRight": _clip01(wide),
            "mouthPucker": 0.6 * _clip01(-wide),
            "mouthSmileLeft": _clip01(f("mouth_corner_updown_l", 0.0)),
            "mouthSmileRight": _clip01(f("mouth_corner_updown_r", 0.0)),
            "mouthFrownLeft": _clip01(-f("mouth_corner_updown_l", 0.0)),
            "mouthFrownRight": _clip01(-f("mouth_corner_updown_r", 0.0)),
            "browOuterUpLeft": _clip01(f("eyebrow_updown_l", 0.0)),
            "browOuterUpRight": _clip01(f("eyebrow_updown_r", 0.0)),
            "browDownLeft": _clip01(-f("eyebrow_updown_l", 0.0)),
            "browDownRight": _clip01(-f("eyebrow_updown_r", 0.0)),
        })
    return bs


def wrap180(deg: float) -> float:
    """An angle in degrees wrapped into [-180, 180)."""
    return (deg + 180.0) % 360.0 - 180.0


def osf_head_angles(raw_euler: tuple[float, float, float]) -> tuple[float, float, float]:
    """OpenSeeFace's raw OpenCV Euler angles -> (pitch, yaw, roll) in the ARKit convention.

    OpenSeeFace sends ``cv2.RQDecomp3x3`` angles: a face looking into the camera reads about
    (+-180, 0, 90). Its Unity receiver maps them to ``x = -(x + 180)``, ``z = z - 90`` (Unity frame);
    the Unity -> ARKit step (`unity_to_arkit`) then flips yaw and roll.
    """
    x, y, z = raw_euler
    return unity_to_arkit((-wrap180(x + 180.0), wrap180(y), wrap180(z - 90.0)))


# --- VMC (Unity frame) ---------------------------------------------------------------------------
def quaternion_to_unity_euler(q: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """Unity Euler angles (x, y, z) in degrees of a unit quaternion (x, y, z, w).

    Unity composes ``Quaternion.Euler(x, y, z)`` as rotations about Z, then X, then Y (world
    axes), i.e. ``q = qy * qx * qz``; this inverts that (x in [-90, 90]). Non-unit quaternions
    are normalised; a zero quaternion raises ValueError.
    """
    x, y, z, w = (float(v) for v in q)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not (n > 1e-9 and math.isfinite(n)):
        raise ValueError(f"quaternion: expected a non-zero finite (x, y, z, w), got {q!r}")
    x, y, z, w = x / n, y / n, z / n, w / n
    sx = max(-1.0, min(1.0, 2.0 * (w * x - y * z)))
    ex = math.degrees(math.asin(sx))
    ey = math.degrees(math.atan2(2.0 * (w * y + x * z), 1.0 - 2.0 * (x * x + y * y)))
    ez = math.degrees(math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (x * x + z * z)))
    return ex, ey, ez


def unity_euler_to_quaternion(ex: float, ey: float, ez: float) -> tuple[float, float, float, float]:
    """Unity's ``Quaternion.Euler(ex, ey, ez)`` (degrees) as (x, y, z, w)."""
    def axis(i: int, deg: float) -> tuple[float, float, float, float]:
        h = math.radians(deg) / 2.0
        v = [0.0, 0.0, 0.0, math.cos(h)]
        v[i] = math.sin(h)
        return tuple(v)  # type: ignore[return-value]

    return quat_mul(quat_mul(axis(1, ey), axis(0, ex)), axis(2, ez))


def quat_mul(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    """Hamilton product ``a * b`` of (x, y, z, w) quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)


def unity_to_arkit(euler: tuple[float, float, float]) -> tuple[float, float, float]:
    """Unity head Euler angles (left-handed, avatar facing +z) -> ARKit (pitch, yaw, roll).

    Unity x > 0 and ARKit pitch > 0 both look down; Unity y > 0 turns toward the avatar's right
    (the viewer's left) and Unity z > 0 tilts toward the avatar's left, the opposite of ARKit's
    yaw and roll.
    """
    ex, ey, ez = euler
    return (ex, -ey, -ez)
