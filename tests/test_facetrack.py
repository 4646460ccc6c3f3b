"""Webcam face tracking without a camera: skimage's astronaut photograph, rotated, shifted, scaled and
mirrored, through `FaceTracker` (detector + face mesh on ORT sessions, PnP head pose, features), the
calibration profile, the ``cam://`` / ``video://`` sources and `ezvtb run` on a video file."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the test photograph")

from ezvtb.live.facetrack import (  # noqa: E402
    DEFAULT_NEUTRAL,
    FaceProfile,
    FaceTracker,
    blendshapes,
)
from ezvtb.live.mapping import Mapper, MappingConfig, TrackerState  # noqa: E402
from ezvtb.pose import index  # noqa: E402

ROLL_TOL = 1.5      # degrees: roll change vs the known image rotation
STILL_TOL = 2.0     # degrees: pitch/yaw drift under an in-plane rotation
# degrees: yaw/roll of the mirrored photo vs minus the original's; measured 0.5 (yaw) and 0.1 (roll) with the
# mesh with attention (the plain mesh is less mirror-symmetric on this photo: 1.5 and 2.4).
MIRROR_TOL = 1.5
SHIFT_TOL = 1.0     # pixels: landmark centre vs the known shift
SCALE_TOL = 0.03    # relative: eye distance vs the known scale


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(skdata.astronaut()[..., ::-1])


@pytest.fixture(scope="module")
def tracker():
    t = FaceTracker(filter_params={})
    yield t
    t.close()


def canvas(img: np.ndarray, angle: float = 0.0, scale: float = 1.0, shift=(0.0, 0.0), size=(640, 480)) -> np.ndarray:
    """`img` placed at the centre of a size[0] x size[1] frame, rotated by `angle` degrees (counter-clockwise
    on screen) and scaled about the frame's centre, then shifted by `shift` pixels."""
    w, h = size
    ih, iw = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    m[:, 2] += m[:, :2] @ np.array([(w - iw) / 2, (h - ih) / 2])  # centre the image first
    m[:, 2] += np.asarray(shift, np.float64)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(40, 40, 40))


def settle(tracker: FaceTracker, frame: np.ndarray):
    """Track a still frame until the region has converged (detector on the first, mesh regions after)."""
    tracker.reset()
    res = None
    for _ in range(3):
        res = tracker.process(frame)
        assert res is not None
    return res


def test_roll_follows_image_rotation(tracker, astronaut):
    base = settle(tracker, canvas(astronaut)).head
    for angle in (-20.0, -10.0, 10.0, 20.0):
        head = settle(tracker, canvas(astronaut, angle)).head
        d_roll = head[2] - base[2]
        print(f"rotation {angle:+.0f} deg: roll change {d_roll:+.2f}, pitch {head[0] - base[0]:+.2f}, "
              f"yaw {head[1] - base[1]:+.2f}")
        assert abs(d_roll - angle) <= ROLL_TOL
        assert abs(head[0] - base[0]) <= STILL_TOL and abs(head[1] - base[1]) <= STILL_TOL


def test_position_and_size_follow_shift_and_scale(tracker, astronaut):
    base = settle(tracker, canvas(astronaut))
    for shift in ((60.0, -25.0), (-80.0, 40.0)):
        r = settle(tracker, canvas(astronaut, shift=shift))
        d = np.subtract(r.centre, base.centre)
        print(f"shift {shift}: landmark centre moved {d.round(2)}")
        assert np.abs(d - shift).max() <= SHIFT_TOL
    for scale in (0.85, 1.3):  # much smaller faces are beyond the short-range detector in a 640x480 frame
        r = settle(tracker, canvas(astronaut, scale=scale))
        ratio = r.eye_distance / base.eye_distance
        print(f"scale {scale}: eye distance ratio {ratio:.4f}")
        assert abs(ratio / scale - 1) <= SCALE_TOL


def test_mirrored_photo_mirrors_yaw_and_roll(tracker, astronaut):
    frame = canvas(astronaut)
    a = settle(tracker, frame).head
    b = settle(tracker, np.ascontiguousarray(frame[:, ::-1])).head
    print(f"original (pitch, yaw, roll) {np.round(a, 2)}, mirrored {np.round(b, 2)}")
    assert abs(b[1] + a[1]) <= MIRROR_TOL and abs(b[2] + a[2]) <= MIRROR_TOL and abs(b[0] - a[0]) <= MIRROR_TOL
    assert abs(a[1]) > 1.0  # the astronaut's head is turned a little: the test can tell the signs apart


def test_mirror_option_maps_a_mirrored_face_to_the_same_pose(astronaut):
    frame = canvas(astronaut)
    plain = FaceTracker(filter_params={})
    mirrored = FaceTracker(filter_params={}, mapping=MappingConfig(mirror=True))
    try:
        p = [plain.track(frame) for _ in range(3)][-1]
        q = [mirrored.track(np.ascontiguousarray(frame[:, ::-1])) for _ in range(3)][-1]
    finally:
        plain.close()
        mirrored.close()
    for name in ("head_y", "neck_z"):
        print(name, p[index(name)], q[index(name)])
        assert abs(p[index(name)] - q[index(name)]) <= MIRROR_TOL / 15.0


def test_detector_runs_only_when_tracking_is_lost(tracker, astronaut):
    frame = canvas(astronaut)
    tracker.reset()
    before = tracker.detections
    for _ in range(4):
        assert tracker.process(frame) is not None
    assert tracker.detections - before == 1
    assert tracker.process(np.full_like(frame, 40)) is None  # face gone: lost, detector finds nothing
    assert tracker.process(frame).detected  # back: found by the detector again
    assert not tracker.process(frame).detected


def test_bad_frames_are_rejected_and_the_tracker_stays_usable(tracker, astronaut):
    for bad in (np.zeros((480, 640), np.uint8), np.zeros((480, 640, 3), np.float32), "frame"):
        with pytest.raises(ValueError, match="frame: expected a uint8"):
            tracker.track(bad)
    assert tracker.track(canvas(astronaut)) is not None


def test_calibration_profile(tmp_path, astronaut):
    tr = FaceTracker(filter_params={})
    try:
        results = [tr.process(canvas(astronaut)) for _ in range(3)]
        prof = tr.calibrate(results)
        pose = tr.track(canvas(astronaut))
        for name in ("head_x", "head_y", "neck_z", "eye_wink_left", "eye_wink_right", "mouth_aaa", "mouth_ooo"):
            assert abs(pose[index(name)]) <= 0.1, (name, pose[index(name)])  # head: 1.5 degrees (region jitter)
        path = prof.save(tmp_path / "me.json")
        loaded = FaceProfile.load(path)
        assert loaded == prof
        # a rotation after calibration reads as the rotation itself
        tr.reset()
        pose = [tr.track(canvas(astronaut, 9.0)) for _ in range(3)][-1]
        assert abs(pose[index("neck_z")] * 15.0 - 9.0) <= ROLL_TOL
    finally:
        tr.close()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "neutral": {"eye_open_left": -1}}))
    with pytest.raises(ValueError, match="bad.json.*eye_open_left"):
        FaceProfile.load(bad)
    bad.write_text(json.dumps({"version": 1, "ranges": {"jaw": [0.5, 0.1]}}))
    with pytest.raises(ValueError, match="jaw expects"):
        FaceProfile.load(bad)
    with pytest.raises(ValueError, match="no such file"):
        FaceProfile.load(tmp_path / "none.json")


def test_features_to_mouth_eye_and_brow_shapes():
    prof = FaceProfile()
    n = dict(DEFAULT_NEUTRAL)
    mapper = Mapper()

    def pose(**changes):
        f = {**n, **changes}
        return mapper.to_pose(TrackerState(blendshapes(f, prof), (0.0, 0.0, 0.0)))

    p = pose()
    assert p[index("mouth_aaa")] == 0 and p[index("eye_wink_left")] == 0
    p = pose(mouth_gap=0.45)  # open mouth, neutral width: "a"
    assert p[index("mouth_aaa")] > 0.9 and p[index("mouth_ooo")] == 0
    p = pose(mouth_gap=0.45, mouth_width=n["mouth_width"] * 0.78)  # open and round: "o"
    assert p[index("mouth_ooo")] > 0.9 and p[index("mouth_aaa")] < 0.1
    p = pose(mouth_width=n["mouth_width"] * 0.78)  # closed and round: "u"
    assert p[index("mouth_uuu")] > 0.9
    p = pose(mouth_width=n["mouth_width"] * 1.3)  # closed and wide: "i"
    assert p[index("mouth_iii")] > 0.5
    p = pose(eye_open_left=0.05)  # the user's left eye closed: a wink
    assert p[index("eye_wink_left")] > 0.99 and p[index("eye_wink_right")] == 0
    p = pose(brow_left=n["brow_left"] * 1.3, brow_right=n["brow_right"] * 1.3)
    assert p[index("eyebrow_raised_left")] > 0.5 and p[index("eyebrow_raised_right")] > 0.5
    # irises toward the image's left = the user looks to their right: iFacialMocap's sign (In left + Out right)
    p = pose(iris_h_left=-0.2, iris_h_right=-0.2)
    q = mapper.to_pose(TrackerState({"eyeLookInLeft": 1.0, "eyeLookOutRight": 1.0}, (0.0, 0.0, 0.0)))
    assert p[index("iris_rotation_y")] > 0.9 * q[index("iris_rotation_y")] > 0
    p = pose(iris_v_left=-0.12, iris_v_right=-0.12)  # irises up in the image: looking up
    assert p[index("iris_rotation_x")] >= 0.99  # gaze_gain x 1, clipped to the range


def _write_video(path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


def test_video_source_steps_through_a_file_and_records(tmp_path, astronaut):
    from ezvtb.live import open_source

    angles = [0.0, 6.0, 12.0, 6.0, 0.0, -6.0, -10.0]
    video = tmp_path / "take.mp4"
    _write_video(video, [canvas(astronaut, a) for a in angles])
    rec = tmp_path / "poses.npy"
    src = open_source(f"video://{video}?step=1&filter=0&record={rec}")
    try:
        poses = [src.latest().pose for _ in angles]
        assert src.latest() is not None and src.finished
        assert src.stats()["frames_with_face"] == len(angles)
    finally:
        src.close()
    rolls = np.array([p[index("neck_z")] for p in poses]) * 15.0
    print("roll changes", np.round(rolls - rolls[0], 2), "rotations", angles)
    assert np.abs((rolls - rolls[0]) - np.array(angles)).max() <= ROLL_TOL
    assert np.load(rec).shape == (len(angles), 45)

    for url, msg in ((f"video://{tmp_path / 'none.mp4'}", "no video file"), ("cam://", "needs a camera index"),
                     (f"video://{video}?bogus=1", "unknown option"), (f"cam://{video}?fps=0", "fps expects"),
                     (f"cam://{video}?profile={tmp_path / 'p.json'}", "profile=")):
        with pytest.raises(ValueError, match=msg):
            open_source(url)


def test_video_source_plays_in_real_time_on_its_thread(tmp_path, astronaut):
    """Without step=1 a file plays at its frame rate on the source's thread; latest() keeps the newest pose."""
    import time

    from ezvtb.live import open_source

    video = tmp_path / "take.mp4"
    _write_video(video, [canvas(astronaut, a) for a in (0.0, 5.0, 10.0, 5.0)], fps=20.0)
    src = open_source(f"video://{video}?filter=0")
    try:
        deadline = time.monotonic() + 60
        while not src.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        assert src.finished
        s = src.latest()
        st = src.stats()
    finally:
        src.close()
    assert st["packets"] == 4 and st["frames_with_face"] == 4 and s.seq == 4
    assert abs(s.pose[index("neck_z")] * 15.0 - settle_roll(astronaut, 5.0)) <= ROLL_TOL


def settle_roll(astronaut, angle):
    t = FaceTracker(filter_params={})
    try:
        return float(t.mapper.to_pose(t.state(settle(t, canvas(astronaut, angle))))[index("neck_z")] * 15.0)
    finally:
        t.close()


def test_a_missing_camera_is_a_clear_error():
    from ezvtb.live import open_source

    with pytest.raises(OSError, match=r"cam://57.*cannot open the camera 57"):
        open_source("cam://57")
    with pytest.raises(ValueError, match="width expects a positive integer"):
        open_source("cam://0?width=-3")


@pytest.mark.slow
def test_ezvtb_run_from_a_video_file(tmp_path, astronaut):
    """`ezvtb run --input cam://file.mp4` end to end (real THA3 core on the CPU): the recorded pose's roll
    follows the rotation the video was made with."""
    from ezvtb.cli import main

    angles = [0.0, 4.0, 8.0, 12.0, 8.0, 0.0, -5.0, -10.0]
    video = tmp_path / "take.mp4"
    _write_video(video, [canvas(astronaut, a) for a in angles])
    rec = tmp_path / "poses.npy"
    out = tmp_path / "frames.bgra"
    rc = main(["run", "--input", f"cam://{video}?step=1&filter=0&breathing=0&record={rec}", "--output", f"raw:{out}",
               "--fps", "30", "--stats-interval", "0"])
    assert rc == 0
    poses = np.load(rec)
    assert poses.shape == (len(angles), 45)
    assert out.stat().st_size == len(angles) * 512 * 512 * 4  # one frame per video frame, then "input finished"
    rolls = poses[:, index("neck_z")] * 15.0
    print("ezvtb run: roll changes", np.round(rolls - rolls[0], 2), "rotations", angles)
    assert np.abs((rolls - rolls[0]) - np.array(angles)).max() <= ROLL_TOL


def test_a_tracker_with_exported_graphs_imports_no_torch(tracker):
    """Once the graphs are exported (the module fixture did), a tracker starts and tracks without torch."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from ezvtb.live.facetrack import FaceTracker; t = FaceTracker(); "
            "t.track(np.zeros((120, 160, 3), np.uint8)); t.close(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
