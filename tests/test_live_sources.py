"""Pose sources: real UDP packets over 127.0.0.1 for iFacialMocap, OpenSeeFace and VMC; playback."""
import json
import socket
import struct
import time

import numpy as np
import pytest

from ezvtb.live.mapping import unity_euler_to_quaternion
from ezvtb.live.sources import (
    IFM_START,
    OSF_FACE_BYTES,
    OSF_FACE_BYTES_NO_FEATURES,
    OSF_HEADER,
    load_poses,
    open_source,
    parse_ifacialmocap,
    parse_openseeface,
)
from ezvtb.pose import index

TIMEOUT = 3.0


def wait_for(cond, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def wait_seq(src, seq):
    assert wait_for(lambda: (s := src.latest()) is not None and s.seq >= seq), src.stats()
    return src.latest()


@pytest.fixture
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(TIMEOUT)
    yield s
    s.close()


def val(sample, name):
    return float(sample.pose[index(name)])


# --- iFacialMocap --------------------------------------------------------------------------------
V2 = ("mouthSmile_R&0|eyeBlink_L&80|eyeBlink_R&0|jawOpen&45|browOuterUp_L&70|hapihapi|"
      "=head#-7.5,7.5,3.0,0.01,0.02,-0.3|rightEye#1.5,2.0,0.0|leftEye#1.4,2.1,0.0|")
V1 = "mouthSmile_R-0|eyeBlink_L-0|eyeBlink_R-80|jawOpen-0|=head#15.0,0.0,0.0,0,0,0|rightEye#0,0,0|leftEye#0,0,0|"


def test_parse_ifacialmocap_v1_v2_and_errors():
    s = parse_ifacialmocap(V2)
    assert s.blendshapes["eyeBlinkLeft"] == 0.8 and s.blendshapes["jawOpen"] == 0.45
    assert s.head == (-7.5, 7.5, 3.0)
    s1 = parse_ifacialmocap(V1)
    assert s1.blendshapes["eyeBlinkRight"] == 0.8 and s1.head == (15.0, 0.0, 0.0)
    for bad, word in [("=head#1,2,3", "head"), ("jawOpen&abc", "could not convert"), ("hapihapi|", "no blendshapes"),
                      ("leftEye#1,2|jawOpen&3", "leftEye"), ("jawOpen&nan", "non-finite")]:
        with pytest.raises(ValueError, match=word):
            parse_ifacialmocap(bad)


def test_ifacialmocap_handshake_packets_and_malformed(udp):
    phone_port = udp.getsockname()[1]
    src = open_source(f"ifm://127.0.0.1:{phone_port}?listen=0&filter=0&breathing=0")
    try:
        data, pc = udp.recvfrom(4096)  # the start string arrives at the "phone"
        assert data == IFM_START
        assert pc == src.address
        udp.sendto(V2.encode(), pc)
        s = wait_seq(src, 1)
        assert val(s, "eye_wink_left") == 1.0 and val(s, "mouth_aaa") == pytest.approx(1.0)
        assert val(s, "eyebrow_raised_left") == pytest.approx(1.0)
        assert val(s, "head_x") == pytest.approx(0.5) and val(s, "head_y") == pytest.approx(-0.5)
        assert val(s, "neck_z") == pytest.approx(0.2)
        # malformed packets are counted, never kill the receiver
        for bad in (b"\xff\xfe\xfd", b"=head#1,2", b"jawOpen&x", b""):
            udp.sendto(bad, pc)
        udp.sendto(V1.encode(), pc)
        s = wait_seq(src, 2)
        assert val(s, "eye_wink_right") == 1.0 and val(s, "head_x") == -1.0
        st = src.stats()
        assert st["malformed"] == 4 and st["packets"] == 6 and st["poses"] == 2 and st["handshakes"] >= 1
    finally:
        src.close()


# --- OpenSeeFace ---------------------------------------------------------------------------------
def osf_face(fid=0, eye_r=0.9, eye_l=0.1, success=1, euler=(180.0, 0.0, 90.0), features=None, with_features=True):
    head = OSF_HEADER.pack(time.time(), fid, 640.0, 480.0, eye_r, eye_l, success, 1.5, 0.0, 0.0, 0.0, 1.0,
                           *euler, 0.1, 0.2, 0.3)
    rng = np.random.default_rng(fid)
    points = rng.normal(size=68 + 136 + 210).astype("<f4").tobytes()
    out = head + points
    if with_features:
        f = dict(features or {})
        names = ["eye_l", "eye_r", "eyebrow_steepness_l", "eyebrow_updown_l", "eyebrow_quirk_l",
                 "eyebrow_steepness_r", "eyebrow_updown_r", "eyebrow_quirk_r", "mouth_corner_updown_l",
                 "mouth_corner_inout_l", "mouth_corner_updown_r", "mouth_corner_inout_r", "mouth_open", "mouth_wide"]
        out += struct.pack("<14f", *(f.get(n, 0.0) for n in names))
    return out


def test_parse_openseeface_sizes():
    one = osf_face(features={"mouth_open": 0.5})
    assert len(one) == OSF_FACE_BYTES == 1785
    faces = parse_openseeface(one + osf_face(fid=3))
    assert [f.id for f in faces] == [0, 3] and faces[0].features["mouth_open"] == 0.5
    old = osf_face(with_features=False)
    assert len(old) == OSF_FACE_BYTES_NO_FEATURES == 1729
    assert parse_openseeface(old)[0].features is None
    for n in (0, 1000, 1785 + 1):
        with pytest.raises(ValueError, match="expected a multiple of 1785"):
            parse_openseeface(bytes(n))
    with pytest.raises(ValueError, match="non-finite"):
        parse_openseeface(osf_face(euler=(float("nan"), 0.0, 0.0)))


def test_openseeface_receiver(udp):
    src = open_source("osf://127.0.0.1:0?filter=0&breathing=0&face=7")
    try:
        addr = src.address
        feats = {"mouth_open": 0.6, "eyebrow_updown_l": 0.7, "mouth_corner_updown_r": 0.6}
        udp.sendto(osf_face(fid=2) + osf_face(fid=7, euler=(-170.0, 0.0, 90.0), features=feats), addr)
        s = wait_seq(src, 1)
        assert val(s, "eye_wink_left") == 1.0 and val(s, "eye_wink_right") == 0.0  # face 7: left eye closed
        # jawOpen 0.6 opens fully; the one-sided smile spreads the lips a little: s = ramp(0.15, 0.1, 0.5)
        assert val(s, "mouth_aaa") == pytest.approx(0.875, abs=1e-6)
        assert val(s, "mouth_eee") == pytest.approx(0.125, abs=1e-6)
        assert val(s, "eyebrow_raised_left") == pytest.approx(1.0)
        assert val(s, "mouth_raised_corner_right") == pytest.approx(1.0)
        assert val(s, "head_x") == pytest.approx(10 / 15, abs=1e-5)  # raw pitch -170 -> 10 deg up
        udp.sendto(osf_face(fid=2), addr)  # no face 7: counted, pose kept
        for bad in (bytes(100), osf_face(fid=7)[:-1]):
            udp.sendto(bad, addr)
        # 1729-byte packet without features; failed 3-D fit keeps the previous head
        udp.sendto(osf_face(fid=7, eye_l=0.9, success=0, euler=(0.0, 50.0, 0.0), with_features=False), addr)
        s = wait_seq(src, 2)
        assert val(s, "eye_wink_left") == 0.0 and val(s, "mouth_aaa") == 0.0
        assert val(s, "head_x") == pytest.approx(10 / 15, abs=1e-5)
        st = src.stats()
        assert st["malformed"] == 2 and st["packets_without_selected_face"] == 1 and st["packets"] == 5
    finally:
        src.close()


# --- VMC -----------------------------------------------------------------------------------------
def vmc_bundle(blends, head_euler=None, extra=()):
    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder

    b = OscBundleBuilder(IMMEDIATELY)

    def msg(addr, *args):
        m = OscMessageBuilder(address=addr)
        for a in args:
            m.add_arg(a)
        b.add_content(m.build())

    msg("/VMC/Ext/OK", 1)
    msg("/VMC/Ext/T", 12.5)
    msg("/VMC/Ext/Root/Pos", "root", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    if head_euler is not None:
        msg("/VMC/Ext/Bone/Pos", "Hips", 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
        msg("/VMC/Ext/Bone/Pos", "Head", 0.0, 0.1, 0.0, *unity_euler_to_quaternion(*head_euler))
    for addr, args in extra:
        msg(addr, *args)
    for name, v in blends.items():
        msg("/VMC/Ext/Blend/Val", name, float(v))
    msg("/VMC/Ext/Blend/Apply")
    return b.build().dgram


def test_vmc_receiver_bundles_presets_perfect_sync_and_malformed(udp):
    src = open_source("vmc://127.0.0.1:0?filter=0&breathing=0")
    try:
        addr = src.address
        udp.sendto(vmc_bundle({"A": 1.0, "Blink_L": 1.0, "Joy": 0.0}, head_euler=(6.0, 0.0, 0.0)), addr)
        s = wait_seq(src, 1)
        assert val(s, "mouth_aaa") == 1.0 and val(s, "eye_wink_left") == 1.0 and val(s, "eye_wink_right") == 0.0
        assert val(s, "head_x") == pytest.approx(-0.4, abs=1e-5)  # 6 deg down
        # perfect sync (ARKit names, VRM capitalisation), yaw to the avatar's right; a bad message is skipped
        bad_msg = [("/VMC/Ext/Blend/Val", ("eyeWideLeft", "not a number"))]
        udp.sendto(vmc_bundle({"A": 0.0, "Blink_L": 0.0, "EyeBlinkRight": 0.8, "JawOpen": 0.45},
                              head_euler=(0.0, 7.5, 0.0), extra=bad_msg), addr)
        s = wait_seq(src, 2)
        assert val(s, "eye_wink_right") == 1.0 and val(s, "eye_wink_left") == 0.0
        assert val(s, "mouth_aaa") == pytest.approx(1.0)
        assert val(s, "head_y") == pytest.approx(0.5, abs=1e-5)  # unity yaw +7.5 -> ARKit -7.5 -> head_y +0.5
        assert val(s, "head_x") == pytest.approx(0.0, abs=1e-6)
        udp.sendto(b"this is not OSC", addr)
        udp.sendto(b"\x00" * 7, addr)
        udp.sendto(vmc_bundle({"JawOpen": 0.0, "O": 1.0}), addr)  # blends only: the head is kept
        s = wait_seq(src, 3)
        assert val(s, "mouth_ooo") == 1.0 and val(s, "mouth_aaa") == 0.0
        assert val(s, "head_y") == pytest.approx(0.5, abs=1e-5)
        st = src.stats()
        assert st["malformed"] == 2 and st["malformed_messages"] == 1 and st["packets"] == 5 and st["poses"] == 3
    finally:
        src.close()


def test_latest_only_no_queue_and_filter_on(udp):
    src = open_source("vmc://127.0.0.1:0?breathing=0")  # default One-Euro filter on
    try:
        n = 60
        for i in range(n):
            udp.sendto(vmc_bundle({"A": (i + 1) / n}), src.address)
        assert wait_for(lambda: src.stats()["packets"] == n)
        s = src.latest()
        assert s.seq == n  # every packet became a pose; only the newest is kept
        assert src.latest().seq == n  # reading does not consume
        a = val(s, "mouth_aaa")
        assert 0.0 < a < 1.0  # filtered: behind the last raw value (1.0), ahead of the first
        time.sleep(0.3)
        udp.sendto(vmc_bundle({"A": 1.0}), src.address)
        s2 = wait_seq(src, n + 1)
        assert a < val(s2, "mouth_aaa") <= 1.0
    finally:
        src.close()


def test_breathing_added_at_read_time(udp):
    src = open_source("vmc://127.0.0.1:0?breathing=0.5&filter=0")
    try:
        udp.sendto(vmc_bundle({"A": 1.0}), src.address)
        wait_seq(src, 1)
        vals = set()
        for _ in range(20):
            vals.add(round(val(src.latest(), "breathing"), 3))
            time.sleep(0.011)
        assert len(vals) > 5 and min(vals) >= 0.0 and max(vals) <= 1.0
    finally:
        src.close()


# --- URLs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, word", [
    ("vmc:127.0.0.1", "expected a URL"), ("xyz://1.2.3.4:5", "unknown scheme"), ("vmc://127.0.0.1:abc", "port"),
    ("vmc://127.0.0.1:99999", "port out of range"), ("vmc://127.0.0.1:0?colour=red", "unknown option"),
    ("ifm://:49983", "phone's address"), ("osf://127.0.0.1:0?face=x", "face expects a number"),
    ("vmc://127.0.0.1:0?invert=up", "invert"), ("vmc://127.0.0.1:0?mirror=maybe", "mirror"),
    ("vmc://127.0.0.1:0?jaw_lo=0.9", "jaw_lo"), ("vmc://127.0.0.1:0?beta=-1", "beta"),
    ("file://nope.npy", "no such file"), ("trace://?frames=0", "frames"),
])
def test_bad_urls(url, word):
    with pytest.raises(ValueError, match=word):
        open_source(url)


def test_port_in_use_is_an_oserror(udp):
    with pytest.raises(OSError, match="cannot listen"):
        open_source(f"vmc://127.0.0.1:{udp.getsockname()[1]}")


def test_invert_flips_head_axes(udp):
    src = open_source("vmc://127.0.0.1:0?filter=0&invert=yaw")
    try:
        udp.sendto(vmc_bundle({}, head_euler=(0.0, 7.5, 0.0)), src.address)
        assert val(wait_seq(src, 1), "head_y") == pytest.approx(-0.5, abs=1e-5)
    finally:
        src.close()


# --- playback ------------------------------------------------------------------------------------
def test_file_playback_npy_json_step_and_loop(tmp_path):
    poses = np.random.default_rng(3).uniform(0, 1, (5, 45)).astype(np.float32)
    np.save(tmp_path / "p.npy", poses)
    (tmp_path / "p.json").write_text(json.dumps({"poses": poses.tolist()}))
    for name in ("p.npy", "p.json"):
        src = open_source(f"file://{tmp_path / name}?step=1&loop=0")
        got = [src.latest().pose for _ in range(7)]
        np.testing.assert_allclose(np.stack(got[:5]), poses, atol=1e-6)
        np.testing.assert_allclose(got[6], poses[4], atol=1e-6)
        assert src.finished
    loop = open_source(f"file://{tmp_path / 'p.npy'}?step=1")
    got = [loop.latest().pose for _ in range(7)]
    np.testing.assert_array_equal(got[5], poses[0])
    assert not loop.finished
    wall = open_source(f"file://{tmp_path / 'p.npy'}?fps=1000&loop=0")
    time.sleep(0.02)
    wall.latest()
    assert wall.finished


def test_load_poses_errors(tmp_path):
    np.save(tmp_path / "bad_shape.npy", np.zeros((4, 44), np.float32))
    bad = np.zeros((3, 45))
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    (tmp_path / "x.json").write_text("[[1, 2], [3]]")
    (tmp_path / "x.txt").write_text("0")
    (tmp_path / "broken.json").write_text("{")
    for name, word in [("bad_shape.npy", r"\(N, 45\)"), ("nan.npy", "rows \\[1\\]"), ("x.json", "not an \\(N, 45\\)"),
                       ("x.txt", ".npy or .json"), ("broken.json", "cannot read"), ("missing.npy", "no such file")]:
        with pytest.raises(ValueError, match=f"trace: .*{word}"):
            load_poses(tmp_path / name)
    ok = np.full((2, 45), 5.0)
    np.save(tmp_path / "clip.npy", ok)
    assert load_poses(tmp_path / "clip.npy").max() == 1.0


def test_trace_playback():
    src = open_source("trace://?frames=12&step=1&fps=30")
    a = np.stack([src.latest().pose for _ in range(12)])
    assert a.shape == (12, 45) and a.dtype == np.float32
    assert np.ptp(a, axis=0).max() > 0.1  # the trace moves
