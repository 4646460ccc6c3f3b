"""Webcam face tracking: frames -> MediaPipe face detector + face mesh -> the 45-float pose.

API for callers with their own frames (the web app's browser camera): build one
``tracker = FaceTracker()`` (optionally ``FaceTracker(profile="me.json", mapping=MappingConfig(mirror=True))``)
and call ``tracker.track(frame_bgr, t=None)`` with each uint8 ``[H, W, 3]`` BGR frame (any size; ``t`` is the
frame's time in seconds, default `time.perf_counter()`). It returns a new float32 ``(45,)`` pose (mapped,
One-Euro filtered, clipped; breathing left at 0) or ``None`` when no face is found in that frame.
``tracker.process(frame_bgr)`` returns the full `FaceResult` (468 landmarks in frame pixels, region,
head angles, features, blendshapes) instead; ``tracker.calibrate(neutral_results)`` fits the neutral face of
the user and returns a `FaceProfile` (``profile.save(path)`` writes it as JSON). A tracker is not thread-safe:
use one per stream. The networks run as ONNX graphs on `ezvtb.engines` sessions (exported from the TFLite
files on first use, which needs torch; later starts import no torch).

Pipeline per frame: while no face is tracked, the detector (BlazeFace short range, 128x128 letterboxed
input) finds faces: boxes decoded from its 896 anchors, weighted non-maximum suppression (IoU 0.3), the best
face kept. Its region (box centre, side 1.5 x the box's longer side, rotated so the eyes are level) is warped
upright to 192x192 for the face mesh. The mesh's presence score decides whether the face is still there;
while it is, the next frame's region comes from this frame's landmarks (box of the landmarks in the face's
own frame, side 1.5 x, eye-corner angle), so the detector runs only when tracking is lost.

Landmarks -> `TrackerState` (docs/live.md, "Webcam"): head pitch/yaw/roll from ``cv2.solvePnP`` of six mesh
points to a generic face (camera: focal length = the frame's longer side, centre = the frame's centre),
minus the profile's neutral angles; eye openness (lid gap / eye width), eyebrow height, mouth gap, width
and corner lift and the iris position in each eye, relative to the profile's neutral values, become
ARKit-style blendshapes, which the shared `Mapper` turns into the pose. The irises come from MediaPipe's
face mesh with attention (``iris=True``, the default); with the plain mesh ``eyeLook*`` stay 0.

The ``cam://`` and ``video://`` pose sources built on this tracker are in `ezvtb.live.camera`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from ezvtb.live.filters import OneEuroFilter
from ezvtb.live.mapping import Mapper, MappingConfig, TrackerState, ramp
from ezvtb.models.facetrack.spec import (
    DETECTOR_SIZE,
    LANDMARK_SIZE,
    anchors,
)
from ezvtb.pose import POSE_MAX, POSE_MIN, POSE_SIZE

log = logging.getLogger("ezvtb.live.facetrack")

MIN_DETECTION_SCORE = 0.5
MIN_PRESENCE = 0.5
NMS_IOU = 0.3
ROI_SCALE = 1.5

# Face-mesh landmark indices (MediaPipe's 468-point topology). "Right" is the user's right (image left).
RIGHT_EYE = {"outer": 33, "inner": 133, "upper": 159, "lower": 145}
LEFT_EYE = {"outer": 263, "inner": 362, "upper": 386, "lower": 374}
RIGHT_BROW = (105, 66)
LEFT_BROW = (334, 296)
MOUTH = {"upper": 13, "lower": 14, "right": 61, "left": 291}
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1

# Generic adult face for the PnP fit (millimetres, approximate anthropometric averages), in camera-like
# axes for a face looking into the camera: x to the image's right, y down, z away from the camera, origin
# at the nose tip. Points: nose tip, chin (menton), outer eye corners, mouth corners.
PNP_INDICES = (NOSE_TIP, CHIN, RIGHT_EYE["outer"], LEFT_EYE["outer"], MOUTH["right"], MOUTH["left"])
PNP_MODEL = np.array([[0.0, 0.0, 0.0], [0.0, 72.0, 20.0], [-45.0, -38.0, 40.0], [45.0, -38.0, 40.0],
                      [-25.0, 28.0, 30.0], [25.0, 28.0, 30.0]], np.float64)

FEATURES = ("eye_open_left", "eye_open_right", "brow_left", "brow_right", "mouth_gap", "mouth_width",
            "corner_lift_left", "corner_lift_right", "iris_h_left", "iris_h_right", "iris_v_left", "iris_v_right")
IRIS_FEATURES = FEATURES[-4:]


# --- results -----------------------------------------------------------------------------------
@dataclass
class Detection:
    """One detected face: score 0..1, box (x0, y0, x1, y1) and 6 keypoints (x, y) in frame pixels
    (right eye, left eye, nose, mouth, right ear, left ear; right = the user's right)."""

    score: float
    box: np.ndarray
    keypoints: np.ndarray


@dataclass
class Roi:
    """A square region: centre (cx, cy) and side in frame pixels, angle (radians) of its x axis in the
    image (positive turns it toward +y)."""

    cx: float
    cy: float
    size: float
    angle: float

    def to_frame(self, out_size: int) -> np.ndarray:
        """2x3 affine matrix: crop pixel coordinates (0..out_size) -> frame pixel coordinates."""
        k = self.size / out_size
        c, s = math.cos(self.angle) * k, math.sin(self.angle) * k
        h = out_size / 2.0
        return np.array([[c, -s, self.cx - c * h + s * h], [s, c, self.cy - s * h - c * h]], np.float64)


@dataclass
class FaceResult:
    """What `FaceTracker.process` found in one frame."""

    landmarks: np.ndarray            # float32 [468, 3]: x, y in frame pixels, z in the same scale
    presence: float                  # face-mesh presence probability
    roi: Roi                         # the region the mesh ran on
    detected: bool                   # True when the detector ran for this frame
    head: tuple[float, float, float]  # (pitch, yaw, roll) degrees, ARKit convention, before the neutral offset
    features: dict[str, float]
    frame_size: tuple[int, int]      # (height, width)
    irises: np.ndarray | None = None  # float32 [10, 2] frame pixels: the user's right iris (centre + 4 rim
    #                                  points), then the left one; None without the iris model

    @property
    def eye_distance(self) -> float:
        """Distance between the outer eye corners in frame pixels (the face's size)."""
        lm = self.landmarks
        return float(np.linalg.norm(lm[RIGHT_EYE["outer"], :2] - lm[LEFT_EYE["outer"], :2]))

    @property
    def centre(self) -> tuple[float, float]:
        """Mean of the landmarks (x, y) in frame pixels."""
        m = self.landmarks[:, :2].mean(axis=0)
        return float(m[0]), float(m[1])


# --- calibration profile -----------------------------------------------------------------------
# Neutral feature values without a calibration: those of skimage's astronaut photograph (a relaxed smile,
# lips together), rounded; the ranges turn feature deviations into 0..1 blendshapes (docs/live.md, "Webcam").
DEFAULT_NEUTRAL = {"eye_open_left": 0.30, "eye_open_right": 0.30, "brow_left": 0.27, "brow_right": 0.27,
                   "mouth_gap": 0.10, "mouth_width": 0.75, "corner_lift_left": 0.05, "corner_lift_right": 0.05,
                   "iris_h_left": 0.0, "iris_h_right": 0.0, "iris_v_left": 0.0, "iris_v_right": 0.0}
DEFAULT_RANGES = {
    "blink": (0.35, 0.8),        # eye openness / neutral: fully closed .. open
    "wide": (1.1, 1.5),          # eye openness / neutral: eyeWide 0 .. 1
    "brow_up": (0.04, 0.25),     # brow height / neutral - 1: browOuterUp 0 .. 1
    "brow_down": (0.03, 0.15),   # 1 - brow height / neutral: browDown 0 .. 1
    "jaw": (0.02, 0.45),         # mouth gap - neutral (eye-distance units): jawOpen 0 .. 1
    "stretch": (1.04, 1.3),      # mouth width / neutral: mouthStretch 0 .. 1
    "pucker": (0.04, 0.22),      # 1 - mouth width / neutral: lip rounding 0 .. 1
    "smile": (0.01, 0.07),       # corner lift - neutral (eye-distance units): mouthSmile 0 .. 1
    "frown": (0.01, 0.05),       # neutral - corner lift: mouthFrown 0 .. 1
    "gaze_h": (0.02, 0.2),       # iris offset along the eye - neutral (eye widths): eyeLookIn/Out 0 .. 1
    "gaze_v": (0.02, 0.12),      # iris offset across the eye - neutral (eye widths): eyeLookUp/Down 0 .. 1
}
PROFILE_VERSION = 1
# Head angles the generic PnP face reads for a portrait looking into the camera: skimage's astronaut
# photograph reads (25.2, 2.2, -3.4) with the mesh with attention (29 pitch with the plain mesh). The default
# profile subtracts the pitch part; `FaceTracker.calibrate` measures the user's own.
DEFAULT_HEAD = (25.0, 0.0, 0.0)


@dataclass
class FaceProfile:
    """Per-user calibration: neutral features and head angles, and the ranges of `DEFAULT_RANGES`."""

    neutral: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_NEUTRAL))
    head: tuple[float, float, float] = DEFAULT_HEAD
    ranges: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))

    def __post_init__(self) -> None:
        for k, v in self.neutral.items():
            if k not in FEATURES or not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"profile neutral: expected finite numbers for {list(FEATURES)}, got {k}={v!r}")
        for k in ("eye_open_left", "eye_open_right", "brow_left", "brow_right", "mouth_width"):
            if self.neutral.get(k, 1.0) <= 0:
                raise ValueError(f"profile neutral: {k} must be > 0, got {self.neutral[k]!r}")
        self.neutral = {**DEFAULT_NEUTRAL, **{k: float(v) for k, v in self.neutral.items()}}
        if len(self.head) != 3 or not all(math.isfinite(float(a)) for a in self.head):
            raise ValueError(f"profile head: expected three finite angles (pitch, yaw, roll), got {self.head!r}")
        self.head = tuple(float(a) for a in self.head)  # type: ignore[assignment]
        rng = dict(DEFAULT_RANGES)
        for k, v in self.ranges.items():
            if k not in DEFAULT_RANGES:
                raise ValueError(f"profile ranges: unknown range {k!r} (expected one of {list(DEFAULT_RANGES)})")
            lo, hi = (float(x) for x in v)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"profile ranges: {k} expects [lo, hi] with lo < hi, got {v!r}")
            rng[k] = (lo, hi)
        self.ranges = rng

    def to_json(self) -> dict[str, Any]:
        return {"version": PROFILE_VERSION, "neutral": self.neutral, "head": list(self.head),
                "ranges": {k: list(v) for k, v in self.ranges.items()}}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON (atomically: a failed write leaves an existing file intact)."""
        from ezvtb.atomic import atomic_write

        p = Path(path)
        with atomic_write(p, "w") as f:
            json.dump(self.to_json(), f, indent=1)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FaceProfile":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"profile: no such file {str(p)!r}")
        try:
            obj = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"profile: cannot read {str(p)!r} as JSON: {e}") from None
        if not isinstance(obj, dict) or obj.get("version") != PROFILE_VERSION:
            raise ValueError(f"profile: {str(p)!r} is not an ezvtb face profile (version {PROFILE_VERSION})")
        try:
            return cls(dict(obj.get("neutral", {})), tuple(obj.get("head", DEFAULT_HEAD)),
                       {k: tuple(v) for k, v in dict(obj.get("ranges", {})).items()})
        except (TypeError, ValueError) as e:
            raise ValueError(f"profile {str(p)!r}: {e}") from None


# --- geometry ----------------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a (4,) with boxes b (N, 4), (x0, y0, x1, y1)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def decode_detections(boxes: np.ndarray, scores: np.ndarray, anchor_xy: np.ndarray,
                      min_score: float = MIN_DETECTION_SCORE, iou: float = NMS_IOU) -> list[tuple[float, np.ndarray]]:
    """Detector outputs -> [(score, [16] = x0, y0, x1, y1, 6 x (x, y))] in the 0..1 input square.

    Box centre and keypoints are offsets from the anchor centre in input pixels, size in input pixels.
    Weighted NMS: each cluster (IoU > `iou` with its best box) is the score-weighted mean of its members,
    with the best member's score. Sorted by score.
    """
    s = DETECTOR_SIZE
    keep = np.flatnonzero(scores >= min_score)
    if keep.size == 0:
        return []
    raw = boxes[keep].astype(np.float64) / s
    a = anchor_xy[keep].astype(np.float64)
    cx, cy = raw[:, 0] + a[:, 0], raw[:, 1] + a[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    dec = np.empty((keep.size, 16))
    dec[:, 0], dec[:, 1], dec[:, 2], dec[:, 3] = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    dec[:, 4::2] = raw[:, 4::2] + a[:, :1]
    dec[:, 5::2] = raw[:, 5::2] + a[:, 1:]
    sc = scores[keep].astype(np.float64)
    order = np.argsort(-sc, kind="stable")
    dec, sc = dec[order], sc[order]
    out = []
    remaining = np.ones(len(sc), bool)
    while remaining.any():
        i = int(np.flatnonzero(remaining)[0])
        cand = np.flatnonzero(remaining)
        members = cand[_iou(dec[i, :4], dec[cand, :4]) > iou]
        members = np.union1d(members, [i])
        wts = sc[members][:, None]
        out.append((float(sc[i]), (dec[members] * wts).sum(0) / wts.sum()))
        remaining[members] = False
    return out


def roi_from_detection(det: Detection) -> Roi:
    x0, y0, x1, y1 = det.box
    (rx, ry), (lx, ly) = det.keypoints[0], det.keypoints[1]
    return Roi((x0 + x1) / 2, (y0 + y1) / 2, ROI_SCALE * max(x1 - x0, y1 - y0), math.atan2(ly - ry, lx - rx))


def roi_from_landmarks(lm: np.ndarray) -> Roi:
    """Region for the next frame: the landmarks' box in the face's own (eye-level) frame, 1.5 x its longer side."""
    r, l_ = lm[RIGHT_EYE["outer"], :2], lm[LEFT_EYE["outer"], :2]
    ang = math.atan2(l_[1] - r[1], l_[0] - r[0])
    c, s = math.cos(ang), math.sin(ang)
    xy = lm[:, :2].astype(np.float64)
    u = xy @ np.array([[c, -s], [s, c]])  # rotate by -ang: face frame
    lo, hi = u.min(0), u.max(0)
    mid = (lo + hi) / 2
    centre = np.array([c * mid[0] - s * mid[1], s * mid[0] + c * mid[1]])
    return Roi(float(centre[0]), float(centre[1]), float(ROI_SCALE * max(hi - lo)), ang)


# `FaceTracker.refine`: the mesh runs again on the new region when it differs from the one used by more
# than these (angle in degrees, centre and side relative to the side).
REFINE_ANGLE, REFINE_SHIFT, REFINE_SIZE = 3.0, 0.05, 0.08


def _moved(a: Roi, b: Roi) -> bool:
    d_ang = abs((math.degrees(b.angle - a.angle) + 180.0) % 360.0 - 180.0)
    return (d_ang > REFINE_ANGLE or math.hypot(b.cx - a.cx, b.cy - a.cy) > REFINE_SHIFT * a.size
            or abs(b.size / a.size - 1.0) > REFINE_SIZE)


def head_pose(lm: np.ndarray, frame_size: tuple[int, int]) -> tuple[float, float, float] | None:
    """(pitch, yaw, roll) in degrees (ARKit convention: pitch > 0 looks down, yaw > 0 turns toward the viewer's
    right, roll > 0 tilts the head's top toward the viewer's left) from a PnP fit of `PNP_MODEL`; None if the
    fit fails."""
    h, w = frame_size
    f = float(max(h, w))
    cam = np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float64)
    pts = lm[list(PNP_INDICES), :2].astype(np.float64)
    ok, rvec, _ = cv2.solvePnP(PNP_MODEL, pts, cam, None, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        return None
    rot, _ = cv2.Rodrigues(rvec)
    # rot = Rz(g) Ry(b) Rx(a) in camera axes: a rotation of the image about its centre changes only g.
    b = math.asin(max(-1.0, min(1.0, -rot[2, 0])))
    a = math.atan2(rot[2, 1], rot[2, 2])
    g = math.atan2(rot[1, 0], rot[0, 0])
    # Rx(a > 0) turns the face's forward axis (-z) toward +y: looks down; Ry(b > 0) turns it toward -x
    # (the viewer's left); Rz(g > 0) turns the face clockwise on the screen.
    pitch, yaw, roll = math.degrees(a), -math.degrees(b), -math.degrees(g)
    return pitch, yaw, roll


def face_features(lm: np.ndarray, irises: np.ndarray | None = None) -> dict[str, float]:
    """Scale-free measurements of the face from 3-D landmarks (eye-distance units, roll-free; `FEATURES`); the
    iris ones (iris centre from the middle of the eye corners along / across the corner line, in eye widths,
    + = toward the image's right / down) only with `irises`."""
    p = lm.astype(np.float64)
    d = lambda a, b: float(np.linalg.norm(p[a] - p[b]))  # noqa: E731
    iod = max(d(RIGHT_EYE["outer"], LEFT_EYE["outer"]), 1e-6)
    out = {}
    for side, eye, brow in (("right", RIGHT_EYE, RIGHT_BROW), ("left", LEFT_EYE, LEFT_BROW)):
        out[f"eye_open_{side}"] = d(eye["upper"], eye["lower"]) / max(d(eye["outer"], eye["inner"]), 1e-6)
        eye_c = (p[eye["upper"]] + p[eye["lower"]]) / 2
        out[f"brow_{side}"] = float(np.linalg.norm(p[list(brow)].mean(0) - eye_c)) / iod
    out["mouth_gap"] = d(MOUTH["upper"], MOUTH["lower"]) / iod
    out["mouth_width"] = d(MOUTH["right"], MOUTH["left"]) / iod
    up = p[FOREHEAD] - p[CHIN]
    up /= max(float(np.linalg.norm(up)), 1e-6)
    centre = (p[MOUTH["upper"]] + p[MOUTH["lower"]]) / 2
    out["corner_lift_right"] = float((p[MOUTH["right"]] - centre) @ up) / iod
    out["corner_lift_left"] = float((p[MOUTH["left"]] - centre) @ up) / iod
    if irises is not None:
        for side, (a, b), c in (("right", (RIGHT_EYE["outer"], RIGHT_EYE["inner"]), irises[0]),
                                ("left", (LEFT_EYE["inner"], LEFT_EYE["outer"]), irises[5])):
            ex = p[b, :2] - p[a, :2]  # image-left corner -> image-right corner
            width = max(float(np.linalg.norm(ex)), 1e-6)
            ex /= width
            off = np.asarray(c, np.float64) - (p[a, :2] + p[b, :2]) / 2
            out[f"iris_h_{side}"] = float(off @ ex) / width
            out[f"iris_v_{side}"] = float(off @ np.array([-ex[1], ex[0]])) / width
    return out


def blendshapes(features: Mapping[str, float], profile: FaceProfile) -> dict[str, float]:
    """ARKit-style blendshapes (0..1) from `face_features` and a profile (docs/live.md, "Webcam")."""
    n, r = profile.neutral, profile.ranges
    bs: dict[str, float] = {}
    for side in ("Left", "Right"):
        s = side.lower()
        eye = features[f"eye_open_{s}"] / n[f"eye_open_{s}"]
        bs[f"eyeBlink{side}"] = 1.0 - ramp(eye, *r["blink"])
        bs[f"eyeWide{side}"] = ramp(eye, *r["wide"])
        brow = features[f"brow_{s}"] / n[f"brow_{s}"] - 1.0
        bs[f"browOuterUp{side}"] = ramp(brow, *r["brow_up"])
        bs[f"browDown{side}"] = ramp(-brow, *r["brow_down"])
        lift = features[f"corner_lift_{s}"] - n[f"corner_lift_{s}"]
        bs[f"mouthSmile{side}"] = ramp(lift, *r["smile"])
        bs[f"mouthFrown{side}"] = ramp(-lift, *r["frown"])
    bs["browInnerUp"] = 0.5 * (bs["browOuterUpLeft"] + bs["browOuterUpRight"])
    if all(k in features for k in IRIS_FEATURES):
        # toward the image's left is toward the user's right: "out" for the right eye, "in" for the left
        for side, toward_left in (("Right", "Out"), ("Left", "In")):
            s = side.lower()
            dh = features[f"iris_h_{s}"] - n[f"iris_h_{s}"]
            dv = features[f"iris_v_{s}"] - n[f"iris_v_{s}"]
            other = "In" if toward_left == "Out" else "Out"
            bs[f"eyeLook{toward_left}{side}"] = ramp(-dh, *r["gaze_h"])
            bs[f"eyeLook{other}{side}"] = ramp(dh, *r["gaze_h"])
            bs[f"eyeLookUp{side}"] = ramp(-dv, *r["gaze_v"])
            bs[f"eyeLookDown{side}"] = ramp(dv, *r["gaze_v"])
    jaw = ramp(features["mouth_gap"] - n["mouth_gap"], *r["jaw"])
    width = features["mouth_width"] / n["mouth_width"]
    stretch = ramp(width, *r["stretch"])
    rounding = ramp(1.0 - width, *r["pucker"])
    funnel = rounding * ramp(jaw, 0.15, 0.45)  # rounded and open: "o"; rounded and closed: "u"
    bs.update({"jawOpen": jaw, "mouthStretchLeft": stretch, "mouthStretchRight": stretch,
               "mouthFunnel": funnel, "mouthPucker": rounding - funnel})
    return bs


# --- the tracker -------------------------------------------------------------------------------
class FaceTracker:
    """Face detector + face mesh on `ezvtb.engines` sessions, with region tracking (module docstring).

    backend: an `ezvtb.engines` backend (default ``cpu``: the graphs are small); threads: ORT intra-op
    threads (1 leaves the other cores to the renderer). profile: a `FaceProfile`, a JSON path or None
    (defaults). mapping: the `MappingConfig` (mirror, ranges); filter_params: One-Euro parameters
    (``{}`` = no filter; default min_cutoff 1, beta 1, d_cutoff 1 as the other live sources). iris: use the
    face mesh with attention (also irises: gaze; default) instead of the plain mesh. refine: run the
    mesh a second time on the region its landmarks give when that region moved by more than `REFINE_ANGLE`
    degrees, `REFINE_SHIFT` or `REFINE_SIZE` of its side (the detector's first region, fast head motion).
    """

    def __init__(self, backend: str = "cpu", threads: int = 1, profile: FaceProfile | str | os.PathLike | None = None,
                 mapping: MappingConfig | None = None, filter_params: Mapping[str, float] | None = None,
                 invert: Iterable[str] = (), min_detection: float = MIN_DETECTION_SCORE,
                 min_presence: float = MIN_PRESENCE, refine: bool = True, iris: bool = True) -> None:
        from ezvtb.engines import create_session
        from ezvtb.export.facetrack import facetrack_graph

        if not (0.0 < min_detection < 1.0 and 0.0 < min_presence < 1.0):
            raise ValueError(f"min_detection/min_presence: expected values in (0, 1), got {min_detection}, "
                             f"{min_presence}")
        invert = tuple(invert)
        bad = [a for a in invert if a not in ("pitch", "yaw", "roll")]
        if bad:
            raise ValueError(f"invert: expected a subset of pitch, yaw, roll, got {bad}")
        self.profile = profile if isinstance(profile, FaceProfile) else \
            FaceProfile() if profile is None else FaceProfile.load(profile)
        self.mapper = Mapper(mapping)
        fp = {"min_cutoff": 1.0, "beta": 1.0, "d_cutoff": 1.0} if filter_params is None else dict(filter_params)
        self.filter = OneEuroFilter(POSE_SIZE, **fp) if fp else None
        self._invert = tuple(-1.0 if a in invert else 1.0 for a in ("pitch", "yaw", "roll"))
        self.min_detection, self.min_presence = float(min_detection), float(min_presence)
        opts = {"intra_op_threads": int(threads)}
        self.iris = bool(iris)
        det, mesh = facetrack_graph("detector"), facetrack_graph("attention" if self.iris else "landmarks")
        self.detector = create_session(det.path, det.spec, backend, **opts)
        self.mesh = create_session(mesh.path, mesh.spec, backend, **opts)
        self._anchors = anchors()
        self._roi: Roi | None = None
        self._head: tuple[float, float, float] | None = None
        self.refine = bool(refine)
        self.frames = self.detections = self.lost = self.refined = 0
        self.last: FaceResult | None = None

    # networks ------------------------------------------------------------------------------------
    @staticmethod
    def _check_frame(frame: Any) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 \
                or frame.shape[0] < 8 or frame.shape[1] < 8:
            got = f"{frame.dtype}{list(frame.shape)}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frame: expected a uint8 [H, W, 3] BGR image (H, W >= 8), got {got}")
        return frame

    def _crop(self, frame: np.ndarray, roi: Roi, size: int) -> np.ndarray:
        m = roi.to_frame(size)
        # warpAffine's inverse map takes pixel centres: shift by half a pixel on both sides
        m_pix = m.copy()
        m_pix[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
        crop = cv2.warpAffine(frame, m_pix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)

    def detect(self, frame_bgr: np.ndarray) -> list[Detection]:
        """Faces in the frame (best first), via the letterboxed 128x128 detector."""
        frame = self._check_frame(frame_bgr)
        h, w = frame.shape[:2]
        side = float(max(h, w))
        square = Roi(w / 2.0, h / 2.0, side, 0.0)
        out = self.detector.run({"image": self._crop(frame, square, DETECTOR_SIZE)})
        found = decode_detections(out["boxes"], out["scores"], self._anchors, self.min_detection)
        dets = []
        for score, v in found:
            pts = (v.reshape(8, 2) - 0.5) * side + np.array([w / 2.0, h / 2.0])
            dets.append(Detection(score, pts[:2].reshape(4), pts[2:]))
        return dets

    def landmarks(self, frame_bgr: np.ndarray, roi: Roi) -> tuple[np.ndarray, float, np.ndarray | None]:
        """(float32 [468, 3] landmarks, presence, float32 [10, 2] irises or None) of the face mesh run on `roi`,
        in frame pixels."""
        frame = self._check_frame(frame_bgr)
        out = self.mesh.run({"image": self._crop(frame, roi, LANDMARK_SIZE)})
        lm = out["landmarks"].astype(np.float64)
        m = roi.to_frame(LANDMARK_SIZE)
        xy = lm[:, :2] @ m[:, :2].T + m[:, 2]
        z = lm[:, 2:] * (roi.size / LANDMARK_SIZE)
        irises = None
        if "irises" in out:
            irises = (out["irises"].astype(np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)
        return np.concatenate([xy, z], axis=1).astype(np.float32), float(out["presence"][0]), irises

    # tracking ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the tracked face and the filter's history."""
        self._roi = None
        self._head = None
        self.last = None
        if self.filter is not None:
            self.filter.reset()

    def process(self, frame_bgr: np.ndarray) -> FaceResult | None:
        """Track one frame (detector only when no face is tracked); None when no face is found."""
        frame = self._check_frame(frame_bgr)
        self.frames += 1
        for attempt in range(2):
            detected = self._roi is None
            if detected:
                dets = self.detect(frame)
                self.detections += 1
                if not dets:
                    return None
                self._roi = roi_from_detection(dets[0])
            lm, presence, irises = self.landmarks(frame, self._roi)
            if presence >= self.min_presence:
                break
            self._roi = None
            self.lost += not detected
            if detected:
                return None
        roi = self._roi
        nxt = roi_from_landmarks(lm)
        if self.refine and _moved(roi, nxt):  # fast motion or a coarse detector region: run the mesh again
            lm2, presence2, irises2 = self.landmarks(frame, nxt)
            if presence2 >= self.min_presence:
                roi, lm, presence, irises = nxt, lm2, presence2, irises2
                nxt = roi_from_landmarks(lm)
                self.refined += 1
        self._roi = nxt
        head = head_pose(lm, frame.shape[:2])
        if head is None:
            head = self._head or (0.0, 0.0, 0.0)
        self._head = head
        res = FaceResult(lm, presence, roi, detected, head, face_features(lm, irises), frame.shape[:2], irises)
        self.last = res
        return res

    def state(self, result: FaceResult) -> TrackerState:
        """The `TrackerState` of a result: blendshapes, head angles minus the profile's neutral, inverted axes."""
        head = tuple((a - n) * s for a, n, s in zip(result.head, self.profile.head, self._invert))
        return TrackerState(blendshapes(result.features, self.profile), head)  # type: ignore[arg-type]

    def pose(self, result: FaceResult, t: float | None = None) -> np.ndarray:
        """float32 (45,) pose of a result: mapped, filtered at time `t` (default now), clipped."""
        pose = self.mapper.to_pose(self.state(result))
        if self.filter is not None:
            pose = self.filter(pose, time.perf_counter() if t is None else float(t))
        return np.clip(pose, POSE_MIN, POSE_MAX).astype(np.float32)

    def track(self, frame_bgr: np.ndarray, t: float | None = None) -> np.ndarray | None:
        """One frame -> float32 (45,) pose, or None when no face is found (module docstring)."""
        res = self.process(frame_bgr)
        return None if res is None else self.pose(res, t)

    def calibrate(self, neutral: Iterable[FaceResult]) -> FaceProfile:
        """Fit the profile's neutral features and head angles to results of the user's relaxed face looking into
        the camera (their median); keeps the ranges. Sets and returns the new profile."""
        rs = [r for r in neutral if isinstance(r, FaceResult)]
        if not rs:
            raise ValueError("neutral: expected at least one FaceResult of the user's relaxed face")
        feats = {k: float(np.median([r.features[k] for r in rs])) for k in FEATURES if k in rs[0].features}
        head = tuple(float(np.median([r.head[i] for r in rs])) for i in range(3))
        self.profile = FaceProfile(feats, head, dict(self.profile.ranges))  # type: ignore[arg-type]
        return self.profile

    def stats(self) -> dict[str, Any]:
        return {"frames": self.frames, "detector_runs": self.detections, "tracking_lost": self.lost,
                "mesh_reruns": self.refined}

    def close(self) -> None:
        for s in (self.detector, self.mesh):
            try:
                s.close()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
