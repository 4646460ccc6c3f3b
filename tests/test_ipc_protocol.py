"""The IPC framing in isolation: layouts, bounds, resynchronisation, truncation (no processes)."""
from __future__ import annotations

import struct
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ezvtb.ipc import protocol as P


def reader() -> P.MessageReader:
    return P.MessageReader(P.CLIENT_BOUNDS)


def drain(r: P.MessageReader) -> list:
    out = []
    while (m := r.next()) is not None:
        out.append(m)
    return out


def pose_msg(seq: int, mask: int = 0, value: float = 0.0) -> bytes:
    return P.encode(P.Msg.POSE, seq, P.POSE.pack(mask, *([value] * 45)))


def test_layouts_are_explicit_little_endian_and_sized_as_documented():
    assert P.HEADER.format.startswith("<") and P.HEADER.size == 16
    assert P.HELLO.size == 4 and P.WELCOME.size == 32 and P.IMAGE.size == 20
    assert P.POSE.size == 4 + 45 * 4 and P.FRAMES.size == 16 and P.ERROR.size == 4 and P.DROPPED.size == 4
    for s in (P.HELLO, P.WELCOME, P.IMAGE, P.POSE, P.RELEASE, P.FRAMES, P.DROPPED, P.ERROR):
        assert s.format.startswith("<"), s.format
    m = P.encode(P.Msg.STATS, 0x01020304)
    # magic, version 1 as u16 LE, type 5 as u16 LE, seq LE, length 0
    assert m == b"EZVB" + b"\x01\x00" + b"\x05\x00" + b"\x04\x03\x02\x01" + b"\x00\x00\x00\x00"


def test_messages_round_trip_in_order_whatever_the_chunking():
    stream = (P.encode(P.Msg.HELLO, 1, P.HELLO.pack(1, 0, 0)) + pose_msg(2, 5, 0.25)
              + P.encode(P.Msg.STATS, 3) + P.encode(P.Msg.SHUTDOWN, 4))
    for chunk in (1, 3, 7, 16, 17, len(stream)):
        r = reader()
        got = []
        for i in range(0, len(stream), chunk):
            r.feed(stream[i:i + chunk])
            got += drain(r)
        assert [(m.type, m.seq) for m in got] == [(P.Msg.HELLO, 1), (P.Msg.POSE, 2), (P.Msg.STATS, 3),
                                                  (P.Msg.SHUTDOWN, 4)], chunk
        mask, *pose = P.POSE.unpack(got[1].payload)
        assert mask == 5 and pose == [0.25] * 45
        assert r.pending == 0


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=300), cut=st.integers(1, 400))
def test_garbage_between_messages_is_reported_once_and_skipped(garbage, cut):
    """Any garbage before a valid message costs at most one PROTOCOL issue; the message survives."""
    garbage = garbage.replace(b"EZVB", b"EZVX")
    tail = b"E" if garbage.endswith(b"E") else b"EZ" if garbage.endswith(b"EZ") else b""
    stream = garbage + pose_msg(7) + P.encode(P.Msg.STATS, 8)
    r = reader()
    got = []
    for i in range(0, len(stream), cut):
        r.feed(stream[i:i + cut])
        got += drain(r)
    issues = [m for m in got if isinstance(m, P.Issue)]
    msgs = [(m.type, m.seq) for m in got if isinstance(m, P.Message)]
    assert msgs[-2:] == [(P.Msg.POSE, 7), (P.Msg.STATS, 8)], (garbage, tail)
    assert len(issues) <= 1 + (1 if len(msgs) > 2 else 0)
    assert all(i.code == P.ErrorCode.PROTOCOL for i in issues)


def test_wrong_length_unknown_type_and_oversize_are_skipped_consistently():
    r = reader()
    got = []
    r.feed(P.encode(P.Msg.POSE, 1, b"\0" * 100))                  # POSE must be 184 bytes
    r.feed(P.encode(0x42, 2, b"abc"))                               # unknown type
    r.feed(P.encode(P.Msg.STATS, 3, b"x"))                          # STATS is empty
    r.feed(P.HEADER.pack(P.MAGIC, 1, P.Msg.SET_IMAGE, 4, P.IMAGE.size + P.MAX_IMAGE_BYTES + 1))
    got += drain(r)
    for _ in range(16):  # the oversized image arrives in 1 MiB chunks: skipped, never stored
        r.feed(b"\0" * P.MiB)
        got += drain(r)
        assert r.buffered == 0
    r.feed(b"\0" * (P.IMAGE.size + P.MAX_IMAGE_BYTES + 1 - 16 * P.MiB) + P.encode(P.Msg.STATS, 5))
    got += drain(r)
    assert [type(m).__name__ for m in got] == ["Issue", "Issue", "Issue", "Issue", "Message"]
    assert [m.seq for m in got] == [1, 2, 3, 4, 5]
    assert "POSE payload: expected 184 bytes, got a declared length of 100" in got[0].text
    assert "unexpected message type 0x0042" in got[1].text
    assert "SET_IMAGE payload: expected" in got[3].text


def test_memory_stays_bounded_while_skipping_a_huge_declared_message():
    r = reader()
    r.feed(P.HEADER.pack(P.MAGIC, 1, P.Msg.SET_IMAGE, 9, P.MAX_SKIP))
    assert isinstance(r.next(), P.Issue)
    chunk = b"\0" * P.MiB
    for _ in range(20):
        r.feed(chunk)
        assert r.buffered == 0 and r.next() is None
    # beyond MAX_SKIP a length is a corrupt header: resync instead of waiting for 4 GiB
    r2 = reader()
    r2.feed(P.HEADER.pack(P.MAGIC, 1, P.Msg.POSE, 1, 0xFFFFFFFF) + P.encode(P.Msg.STATS, 2))
    got = drain(r2)
    assert isinstance(got[0], P.Issue) and "exceeds" in got[0].text
    assert isinstance(got[-1], P.Message) and got[-1].seq == 2


def test_version_mismatch_is_a_version_issue_and_the_message_is_skipped():
    r = reader()
    r.feed(P.encode(P.Msg.HELLO, 1, P.HELLO.pack(0, 0, 0), version=2) + P.encode(P.Msg.STATS, 2))
    a, b = drain(r)
    assert isinstance(a, P.Issue) and a.code == P.ErrorCode.VERSION and a.type == P.Msg.HELLO
    assert "peer speaks version 2, this side speaks version 1" in a.text
    assert isinstance(b, P.Message) and b.seq == 2


def test_a_stalled_message_is_abandoned_with_a_truncation_issue():
    r = reader()
    msg = pose_msg(11)
    r.feed(msg[:50])
    assert r.next() is None and r.pending == 50
    assert not r.stalled(0.05)
    time.sleep(0.08)
    assert r.stalled(0.05)
    issue = r.abandon(0.05)
    assert issue.seq == 11 and "truncated POSE message: received 50 of 200 bytes" in issue.text
    assert r.pending == 0
    r.feed(msg)
    (m,) = drain(r)
    assert m.seq == 11


def test_error_codes_map_to_exception_classes_both_ways():
    for exc, code in ((ValueError("x"), P.ErrorCode.VALUE), (RuntimeError("x"), P.ErrorCode.RUNTIME),
                      (NotImplementedError("x"), P.ErrorCode.NOT_IMPLEMENTED),
                      (FileNotFoundError("x"), P.ErrorCode.FILE_NOT_FOUND), (KeyError("x"), P.ErrorCode.INTERNAL),
                      (P.VersionMismatchError("x"), P.ErrorCode.VERSION)):
        assert P.error_code(exc) == code
        assert isinstance(exc, P.error_class(code)) or code == P.ErrorCode.INTERNAL
    raw = P.encode_error(3, P.ErrorCode.VALUE, "pose: bad" + "é" * 5000)
    (code, _), text = P.decode_text(raw[16:], P.ERROR)
    assert code == P.ErrorCode.VALUE and text.startswith("pose: bad") and len(text.encode()) <= P.MAX_TEXT


def test_pose_payload_floats_are_little_endian_float32():
    p = np.linspace(-1, 1, 45, dtype=np.float32)
    raw = P.POSE.pack(0, *p.tolist())
    assert np.array_equal(np.frombuffer(raw, "<f4", 45, 4), p)
    assert struct.unpack_from("<f", raw, 4)[0] == p[0]
