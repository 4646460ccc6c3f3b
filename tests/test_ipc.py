"""`ezvtb serve` and `ezvtb.ipc.Client` against real server subprocesses (echo engine: no model).

Every test starts its own ``python -m ezvtb serve`` process; the robustness cases talk raw
protocol bytes to it (garbage, wrong lengths, truncation, version mismatch, a client that stops
reading, a client that dies, SIGTERM) and check that it answers, keeps serving, keeps its memory
bounded and removes its socket and shared-memory segment.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ezvtb.ipc import Client, EchoCore, FramesDropped, ServerGone, VersionMismatchError
from ezvtb.ipc import protocol as P
from ezvtb.pose import validate_pose

TRANSPORTS = ("stdio", "shm")
SHM_DIR = Path("/dev/shm")
pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or not SHM_DIR.is_dir(),
                                reason="needs POSIX shared memory (/dev/shm) and Unix sockets")


def serve_argv(transport: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ezvtb", "-q", "serve", "--transport", transport, "--engine", "echo",
            "--message-timeout", "0.3", *extra]


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (512, 512, 4), dtype=np.uint8)
    img[:40] = 0  # a transparent band, as character images have
    return img


def pose(head_x: float = 0.0, head_y: float = 0.0) -> np.ndarray:
    p = np.zeros((1, 45), np.float32)
    p[0, 39], p[0, 40] = head_x, head_y
    return p


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RawPeer:
    """A hand-written protocol client: bytes in, messages out, against a real server process."""

    def __init__(self, transport: str, tmp_path: Path, *extra: str) -> None:
        self.transport = transport
        self.sock = None
        if transport == "stdio":
            self.proc = subprocess.Popen(serve_argv("stdio", *extra), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         bufsize=0)
            self.rfd, self.wfd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        else:
            self.path = str(tmp_path / "ezvtb.sock")
            self.proc = subprocess.Popen(serve_argv("shm", "--socket", self.path, *extra), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, bufsize=0)
            line = self.proc.stdout.readline().decode()  # the announce line
            assert self.path in line, line
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(self.path)
            self.rfd = self.wfd = self.sock.fileno()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.wfd, view)
            view = view[n:]

    def read_exact(self, n: int, timeout: float = 10.0) -> bytes:
        out = bytearray()
        end = time.monotonic() + timeout
        while len(out) < n:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"got {len(out)} of {n} bytes")
            chunk = os.read(self.rfd, n - len(out))
            if not chunk:
                raise EOFError(f"EOF after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def recv(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        magic, version, t, seq, length = P.HEADER.unpack(self.read_exact(16, timeout))
        assert magic == P.MAGIC and version == P.PROTOCOL_VERSION
        return t, seq, self.read_exact(length, timeout)

    def hello(self) -> tuple:
        self.send(P.encode(P.Msg.HELLO, 1, P.HELLO.pack(P.Transport[self.transport.upper()], 0, 0)))
        t, seq, payload = self.recv()
        assert (t, seq) == (P.Msg.WELCOME, 1), (P.type_name(t), payload[4:])
        fields = P.WELCOME.unpack_from(payload)
        self.shm_name = payload[P.WELCOME.size:P.WELCOME.size + fields[7]].decode()
        return fields

    def set_image(self, seq: int, img: np.ndarray) -> None:
        head = P.IMAGE.pack(P.IMAGE_INLINE, 3, b"u", 1, *img.shape, 0)
        self.send(P.encode(P.Msg.SET_IMAGE, seq, head + img.tobytes()))
        assert self.recv()[:2] == (P.Msg.OK, seq)

    def expect_error(self, seq: int, code: int, timeout: float = 10.0) -> str:
        t, rseq, payload = self.recv(timeout)
        assert t == P.Msg.ERROR, (P.type_name(t), payload[:80])
        (c, _), text = P.decode_text(payload, P.ERROR)
        assert (rseq, c) == (seq, code), (rseq, c, text)
        return text

    def stats(self, seq: int) -> dict:
        self.send(P.encode(P.Msg.STATS, seq))
        t, rseq, payload = self.recv()
        assert (t, rseq) == (P.Msg.STATS_REPLY, seq)
        return json.loads(payload)

    def close(self) -> int:
        if self.sock is not None:
            self.sock.close()
        else:
            self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self.proc.stdout:
                self.proc.stdout.close()


# --- the Client mirrors the core ---------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_frames_equal_the_in_process_engine_byte_for_byte(transport, image):
    ref = EchoCore(frames=3)
    ref.setImage(image)
    with Client.spawn(transport, engine="echo", interpolation_scale=3, timeout=30) as c:
        assert (c.transport, c.frame_shape, c.frames_per_inference) == (transport, (512, 512, 4), 3)
        assert c.server_info["engine"] == "echo" and c.server_info["options"] == {"interpolation_scale": 3}
        c.setImage(image)
        for k, (hx, hy) in enumerate([(0, 0), (0.5, -0.25), (-1, 1), (0.1, 0.9), (0, 0)]):
            got = c.inference(pose(hx, hy))
            want = ref.inference(pose(hx, hy))
            assert len(got) == 3
            for i, (a, b) in enumerate(zip(got, want)):
                assert a.dtype == np.uint8 and a.shape == (512, 512, 4)
                assert np.array_equal(a, b), (transport, k, i)
        # the pose moved the image: the frames are not all the same
        assert not np.array_equal(got[0], got[2]) or not np.array_equal(want[0], image)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_returned_arrays_are_reused_by_the_next_call_like_the_core(transport, image):
    with Client.spawn(transport, engine="echo", use_interpolation=False, timeout=30) as c:
        c.setImage(image)
        first = c.inference(pose(0, 0))
        keep = first[0].copy()
        second = c.inference(pose(0, 1))
        assert len(first) == len(second) == 1
        assert second[0] is first[0]  # same client-owned buffer, overwritten in place
        assert not np.array_equal(first[0], keep) and np.array_equal(keep, image)
        assert first[0].flags.owndata or first[0].base is not None
    # private copies, not views of the segment: still readable after close()
    assert int(second[0].sum()) > 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_are_the_cores_and_both_sides_keep_serving(transport, image):
    ref = EchoCore(1)
    with Client.spawn(transport, engine="echo", use_interpolation=False, timeout=30) as c:
        with pytest.raises(RuntimeError, match="^setImage must be called before inference$"):
            c.inference(pose())  # raised by the server, re-raised here
        for bad in (np.zeros(44, np.float32), [[0.0] * 45] * 2, np.full(45, np.nan, np.float32)):
            with pytest.raises(ValueError) as got:
                c.inference(bad)
            with pytest.raises(ValueError) as want:
                validate_pose(bad, "pose")
            assert str(got.value) == str(want.value)
        for bad in (image[:, :, :3], image.astype(np.float32), None, image[::2, ::2]):
            with pytest.raises(ValueError) as got:
                c.setImage(bad)
            with pytest.raises(ValueError) as want:
                ref.setImage(bad)
            assert str(got.value) == str(want.value) and str(got.value).startswith("img: expected")
        c.setImage(image)
        # the server's own validation, reached by a raw POSE with NaN (the client would refuse it)
        seq = 1000
        raw = P.encode(P.Msg.POSE, seq, P.POSE.pack(0, *([0.0] * 3 + [float("nan")] + [0.0] * 41)))
        with pytest.raises(ValueError) as got:
            c._call(seq, raw)
        bad_pose = np.zeros(45, np.float32)
        bad_pose[3] = np.nan
        with pytest.raises(ValueError) as want:
            validate_pose(bad_pose, "pose")
        assert str(got.value) == str(want.value) and "index [3]" in str(got.value)
        # a wrong-shape image sent raw: the core's message from the server
        small = np.zeros((256, 256, 4), np.uint8)
        head = P.IMAGE.pack(P.IMAGE_INLINE, 3, b"u", 1, 256, 256, 4, 0)
        with pytest.raises(ValueError) as got:
            c._call(1001, P.encode(P.Msg.SET_IMAGE, 1001, head + small.tobytes()))
        with pytest.raises(ValueError) as want:
            ref.setImage(small)
        assert str(got.value) == str(want.value)
        assert np.array_equal(c.inference(pose())[0], image)  # still serving, image unchanged
        s = c.stats()
        assert s["ipc"]["server"]["errors"] >= 3 and s["frames"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stats_mirror_the_core_and_add_ipc_counters(transport, image):
    with Client.spawn(transport, engine="echo", timeout=30) as c:
        c.setImage(image)
        for k in range(4):
            c.inference(pose(0, k / 4))
        s = c.stats()
    assert s["frames"] == 4 and s["latency"]["total"]["count"] == 4 and s["engine"] == "echo"
    srv, cli = s["ipc"]["server"], s["ipc"]["client"]
    assert srv["poses"] == 4 and srv["frames_rendered"] == 8 and srv["frames_delivered"] == 8
    assert srv["frames_dropped_stale"] == srv["poses_superseded"] == srv["malformed"] == 0
    assert srv["transport"] == transport and cli["transport"] == transport
    assert cli["latency"]["round_trip"]["count"] == 4 and cli["frames"] == 8
    if transport == "shm":
        assert srv["slot_groups"] == 3 and len(srv["groups_held_by_client"]) == 1
        assert srv["bytes_out"] < 4096  # no frame bytes through the control socket
    else:
        assert srv["bytes_out"] > 8 * 512 * 512 * 4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_core_options_raise_get_cores_valueerror_at_spawn(transport):
    from ezvtb import get_core

    with pytest.raises(ValueError) as want:
        get_core(use_interpolation="yes")  # checked before any export
    with pytest.raises(ValueError) as got:
        Client.spawn(transport, use_interpolation="yes", timeout=30)
    assert str(got.value) == str(want.value) == "use_interpolation: expected a bool, got 'yes'"
    with pytest.raises(ValueError, match=r"options: unknown get_core option\(s\) \['not_an_option'\]"):
        Client.spawn(transport, engine="echo", not_an_option=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_version_mismatch_is_a_clear_error(transport, monkeypatch):
    monkeypatch.setattr(P, "PROTOCOL_VERSION", 99)
    with pytest.raises(VersionMismatchError, match="version 1.*version 99|version 99.*version 1"):
        Client.spawn(transport, engine="echo", timeout=30)


def test_client_close_and_context_manager(image):
    c = Client.spawn("shm", engine="echo", timeout=30)
    proc, name, path = c._res.proc, c.shm_name, c.socket_path
    c.setImage(image)
    c.close()
    c.close()  # idempotent
    assert proc.returncode == 0 and c.closed
    assert not (SHM_DIR / name).exists() and not os.path.exists(path)
    with pytest.raises(RuntimeError, match="closed"):
        c.inference(pose())


# --- robustness, raw protocol --------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_malformed_and_truncated_messages_get_errors_and_the_server_keeps_serving(transport, tmp_path, image):
    peer = RawPeer(transport, tmp_path)
    try:
        peer.send(P.encode(P.Msg.STATS, 5))
        assert "expected HELLO first" in peer.expect_error(5, P.ErrorCode.PROTOCOL)
        peer.hello()
        peer.set_image(2, image)
        peer.send(b"this is not a message at all" * 3)
        assert "malformed message (bad magic)" in peer.expect_error(0, P.ErrorCode.PROTOCOL)
        peer.send(P.encode(P.Msg.POSE, 3, b"\x01" * 100))
        assert "POSE payload: expected 184 bytes" in peer.expect_error(3, P.ErrorCode.PROTOCOL)
        peer.send(P.encode(0x77, 4, b"xyz"))
        assert "unexpected message type" in peer.expect_error(4, P.ErrorCode.PROTOCOL)
        peer.send(P.encode(P.Msg.HELLO, 6, P.HELLO.pack(0, 0, 0)))
        assert "duplicate HELLO" in peer.expect_error(6, P.ErrorCode.PROTOCOL)
        peer.send(P.encode(P.Msg.RELEASE, 7, P.RELEASE.pack(1 << 31)))
        assert "slot group 31" in peer.expect_error(7, P.ErrorCode.PROTOCOL)
        head = P.IMAGE.pack(P.IMAGE_INLINE, 3, b"u", 1, 512, 512, 4, 0)
        peer.send(P.encode(P.Msg.SET_IMAGE, 8, head + b"\0" * 1000))
        assert "needs 1048576 pixel bytes" in peer.expect_error(8, P.ErrorCode.PROTOCOL)
        # an oversized SET_IMAGE is skipped as it streams in, never buffered
        big = P.IMAGE.size + P.MAX_IMAGE_BYTES + 4096
        peer.send(P.HEADER.pack(P.MAGIC, 1, P.Msg.SET_IMAGE, 9, big) + b"\0" * big)
        assert "SET_IMAGE payload: expected" in peer.expect_error(9, P.ErrorCode.PROTOCOL)
        # truncated: a pose that stops after 50 bytes; after --message-timeout (0.3 s) it is dropped
        peer.send(P.encode(P.Msg.POSE, 10, P.POSE.pack(0, *[0.0] * 45))[:50])
        text = peer.expect_error(10, P.ErrorCode.PROTOCOL, timeout=5)
        assert "truncated POSE message: received 50 of 200 bytes" in text
        # and everything still works
        peer.send(P.encode(P.Msg.POSE, 11, P.POSE.pack(0, *[0.0] * 45)))
        t, seq, payload = peer.recv()
        assert (t, seq) == (P.Msg.FRAMES, 11)
        if transport == "stdio":
            assert np.array_equal(np.frombuffer(payload, np.uint8, 512 * 512 * 4, 16).reshape(512, 512, 4), image)
        s = peer.stats(12)["server"]
        assert s["malformed"] == 5 and s["errors"] == 9 and s["garbage_bytes"] >= 84
        assert s["rss_kib"] < 400 * 1024
        peer.send(P.encode(P.Msg.SHUTDOWN, 13))
        assert peer.recv()[:2] == (P.Msg.BYE, 13)
        assert peer.proc.wait(10) == 0
    finally:
        peer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_hello_with_another_version_gets_a_version_error_and_the_server_exits(transport, tmp_path):
    peer = RawPeer(transport, tmp_path)
    try:
        peer.send(P.encode(P.Msg.HELLO, 1, P.HELLO.pack(P.Transport[transport.upper()], 0, 0), version=7))
        text = peer.expect_error(1, P.ErrorCode.VERSION)
        assert text == "protocol version mismatch: peer speaks version 7, this side speaks version 1"
        assert peer.proc.wait(10) == 0
    finally:
        peer.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_stops_reading_does_not_grow_the_server(transport, tmp_path, image):
    """Poses keep coming, nothing is read: memory stays flat, stale work is dropped and counted,
    the server stops reading once its unsent replies pass the bound, and every request still gets
    exactly one reply, in order, once the client reads again."""
    peer = RawPeer(transport, tmp_path)
    paced, burst = 300, 12000
    n = paced + burst
    try:
        peer.hello()
        peer.set_image(2, image)
        base = rss_kib(peer.proc.pid)
        sent = []

        def writer():
            for k in range(n):
                seq = 100 + k
                peer.send(P.encode(P.Msg.POSE, seq, P.POSE.pack(0, *([0.0] * 40 + [k % 2] + [0.0] * 4))))
                sent.append(seq)
                if k < paced:
                    time.sleep(0.002)  # a tracker's pace: most poses get rendered, not superseded

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        time.sleep(2.0)  # the server renders, fills the channel, then stops reading
        assert th.is_alive(), "the server kept accepting requests it could not answer"
        grown = rss_kib(peer.proc.pid) - base
        # 300 rendered poses x 2 frames x 1 MiB would be 600 MiB if anything queued them
        assert grown < 48 * 1024, f"server RSS grew by {grown} KiB"
        order = []
        kinds: dict[int, int] = {}
        while len(order) < n:
            t, seq, payload = peer.recv(timeout=20)
            assert seq not in kinds, f"two replies to {seq}"
            kinds[seq] = t
            order.append(seq)
            if t == P.Msg.DROPPED:
                (reason, _), _ = P.decode_text(payload, P.DROPPED)
                assert reason in (P.DropReason.SUPERSEDED, P.DropReason.STALE, P.DropReason.NO_SLOT)
        th.join(10)
        assert order == sent == list(range(100, 100 + n))
        s = peer.stats(1)["server"]
        delivered = list(kinds.values()).count(P.Msg.FRAMES)
        assert 1 <= delivered < n and list(kinds.values()).count(P.Msg.DROPPED) == n - delivered
        assert s["poses"] == n and s["frames_delivered"] == 2 * delivered
        dropped = s["poses_superseded"] + s["poses_no_slot"] + s["frames_dropped_stale"] // 2
        assert dropped == n - delivered, s
        assert s["reads_paused"] > 0 and s["max_unsent_bytes"] < P.MiB, s
        if transport == "shm":  # the raw client never releases: 3 groups go out, then there is no slot
            assert delivered == 3 and s["groups_held_by_client"] == [0, 1, 2] and s["poses_no_slot"] > 0
        else:  # one frames message in flight, one queued; every newer one replaces the queued one
            assert s["frames_dropped_stale"] > 0
        print(transport, f"RSS +{grown} KiB", {k: s[k] for k in ("poses_superseded", "poses_no_slot",
              "frames_dropped_stale", "frames_delivered", "max_unsent_bytes", "reads_paused")})
    finally:
        peer.close()


def test_stdio_requests_written_then_closed_are_all_answered_before_exit(tmp_path, image):
    """`cat requests.bin | ezvtb serve --transport stdio > replies.bin` works: EOF on stdin is not
    the end of the replies."""
    requests = (P.encode(P.Msg.HELLO, 1, P.HELLO.pack(0, 0, 0))
                + P.encode(P.Msg.SET_IMAGE, 2, P.IMAGE.pack(0, 3, b"u", 1, 512, 512, 4, 0) + image.tobytes())
                + P.encode(P.Msg.POSE, 3, P.POSE.pack(0, *[0.0] * 45))
                + P.encode(P.Msg.STATS, 4))
    (tmp_path / "requests.bin").write_bytes(requests)
    with open(tmp_path / "requests.bin", "rb") as fin, open(tmp_path / "replies.bin", "wb") as fout:
        rc = subprocess.run(serve_argv("stdio", "-o", "use_interpolation=false"), stdin=fin, stdout=fout,
                            timeout=60).returncode
    assert rc == 0
    data = (tmp_path / "replies.bin").read_bytes()
    got = []
    while data:
        _, _, t, seq, length = P.HEADER.unpack_from(data)
        got.append((t, seq))
        if t == P.Msg.FRAMES:
            frame = np.frombuffer(data, np.uint8, 512 * 512 * 4, 16 + P.FRAMES.size).reshape(512, 512, 4)
            assert np.array_equal(frame, image)
        data = data[16 + length:]
    assert got == [(P.Msg.WELCOME, 1), (P.Msg.OK, 2), (P.Msg.FRAMES, 3), (P.Msg.STATS_REPLY, 4)]


CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from ezvtb.ipc import Client
    c = Client.spawn(sys.argv[1], engine="echo", timeout=30)
    c.setImage(np.zeros((512, 512, 4), np.uint8))
    c.inference(np.zeros(45, np.float32))
    print(json.dumps({"pid": c.server_pid, "shm": c.shm_name, "socket": c.socket_path}), flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)  # die without closing anything
""")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_server_exits_and_cleans_up_when_its_client_dies(transport):
    child = subprocess.Popen([sys.executable, "-c", CHILD, transport], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        info = json.loads(child.stdout.readline())
        if transport == "shm":
            assert (SHM_DIR / info["shm"]).exists() and os.path.exists(info["socket"])
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(10) == -signal.SIGKILL
        wait_until(lambda: gone(info["pid"]), 10, "the server to exit")
        if transport == "shm":
            assert not (SHM_DIR / info["shm"]).exists()
            assert not os.path.exists(info["socket"])
            # the dead client's private directory goes with the server (it cannot clean up after SIGKILL)
            assert not os.path.exists(os.path.dirname(info["socket"]))
    finally:
        if child.poll() is None:
            child.kill()


def test_shm_segment_and_socket_are_owner_only_and_removed_after_sigterm(image):
    c = Client.spawn("shm", engine="echo", timeout=30)
    proc = c._res.proc
    try:
        seg, sock = SHM_DIR / c.shm_name, Path(c.socket_path)
        assert stat.S_IMODE(seg.stat().st_mode) == 0o600
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert seg.stat().st_uid == os.getuid()
        c.setImage(image)
        c.inference(pose())
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not seg.exists() and not sock.exists()
        with pytest.raises(ServerGone, match="exited with code 0"):
            c.inference(pose())
    finally:
        c.close()


def test_stdio_server_exits_cleanly_on_sigterm_and_the_client_says_so(image):
    c = Client.spawn("stdio", engine="echo", timeout=30)
    try:
        c.setImage(image)
        os.kill(c.server_pid, signal.SIGTERM)
        assert c._res.proc.wait(10) == 0
        with pytest.raises(ServerGone):
            c.inference(pose())
    finally:
        c.close()


def test_a_killed_servers_segment_is_reclaimed_and_its_stale_socket_replaced(tmp_path, image):
    """SIGKILL skips all cleanup: the server's resource tracker (the segment's only registered
    owner) unlinks the segment, and the next server on the same path replaces the dead socket."""
    path = str(tmp_path / "s.sock")
    first = subprocess.Popen(serve_argv("shm", "--socket", path), stdout=subprocess.PIPE, text=True)
    assert path in first.stdout.readline()
    c = Client.connect(path, timeout=30)
    name = c.shm_name
    assert (SHM_DIR / name).exists()
    first.kill()
    first.wait(10)
    first.stdout.close()
    c.close()
    wait_until(lambda: not (SHM_DIR / name).exists(), 10, "the resource tracker to unlink the segment")
    assert os.path.exists(path)  # the stale socket
    second = subprocess.Popen(serve_argv("shm", "--socket", path), stdout=subprocess.PIPE, text=True)
    try:
        assert path in second.stdout.readline()
        with Client.connect(path, timeout=30) as c2:
            c2.setImage(image)
            assert np.array_equal(c2.inference(pose())[0], image)
        assert second.wait(10) == 0 and not os.path.exists(path)
    finally:
        if second.poll() is None:
            second.kill()
        second.stdout.close()


def test_a_client_that_attaches_and_exits_does_not_unlink_the_servers_segment(image):
    """Python 3.11's resource tracker would unlink a segment a client attached to; ours opts out."""
    with Client.spawn("shm", engine="echo", timeout=30) as c:
        c.setImage(image)
        code = ("import sys; from ezvtb.ipc.shm import attach; s = attach(sys.argv[1]); "
                "print(len(s.buf)); s.close()")
        r = subprocess.run([sys.executable, "-c", code, c.shm_name], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and int(r.stdout) > 0, r.stderr
        assert "leaked" not in r.stderr
        assert (SHM_DIR / c.shm_name).exists()
        assert np.array_equal(c.inference(pose())[0], image)


def test_no_slot_and_release_over_the_shm_transport(tmp_path, image):
    """The ownership rule: groups announced to the client are never rewritten until released."""
    peer = RawPeer("shm", tmp_path, "--slots", "2")
    from ezvtb.ipc.shm import RingView

    try:
        tr, _, n, h, w, ch, groups, name_len, pid, size = peer.hello()
        assert groups == 2 and n == 2
        peer.set_image(2, image)
        ring = RingView(peer.shm_name, (h, w, ch), n, groups)
        got = []
        for seq, hy in ((3, 0.5), (4, -0.5)):
            peer.send(P.encode(P.Msg.POSE, seq, P.POSE.pack(0, *([0.0] * 40 + [hy] + [0.0] * 4))))
            t, rseq, payload = peer.recv()
            assert (t, rseq) == (P.Msg.FRAMES, seq)
            group, count, _ = P.FRAMES.unpack(payload)
            assert int(ring.seqs[group]) == seq
            got.append((group, [f.copy() for f in ring.frames[group]]))
        assert {got[0][0], got[1][0]} == {0, 1}
        peer.send(P.encode(P.Msg.POSE, 5, P.POSE.pack(0, *[0.0] * 45)))
        t, rseq, payload = peer.recv()
        (reason, _), text = P.decode_text(payload, P.DROPPED)
        assert (t, rseq, reason) == (P.Msg.DROPPED, 5, P.DropReason.NO_SLOT) and "holds all 2" in text
        for group, frames in got:  # untouched while held
            assert all(np.array_equal(a, b) for a, b in zip(ring.frames[group], frames))
        # release group of request 3 with the pose mask: the next frames go there
        peer.send(P.encode(P.Msg.POSE, 6, P.POSE.pack(1 << got[0][0], *[0.0] * 45)))
        t, rseq, payload = peer.recv()
        assert (t, rseq) == (P.Msg.FRAMES, 6) and P.FRAMES.unpack(payload)[0] == got[0][0]
        assert np.array_equal(ring.frames[got[0][0]][1], image)
        assert all(np.array_equal(a, b) for a, b in zip(ring.frames[got[1][0]], got[1][1]))
        ring.close()
    finally:
        peer.close()


def test_superseded_poses_are_answered_dropped_and_only_the_newest_is_rendered(tmp_path, image):
    peer = RawPeer("stdio", tmp_path)
    try:
        peer.hello()
        peer.set_image(2, image)
        burst = b"".join(P.encode(P.Msg.POSE, 10 + k, P.POSE.pack(0, *[0.0] * 45)) for k in range(5))
        peer.send(burst)  # one write: the server sees all five at once
        kinds = [peer.recv()[:2] for _ in range(5)]
        assert kinds[-1] == (P.Msg.FRAMES, 14)
        assert all(t == P.Msg.DROPPED for t, _ in kinds[:-1]) and [s for _, s in kinds] == list(range(10, 15))
        s = peer.stats(3)
        assert s["server"]["poses_superseded"] == 4 and s["core"]["frames"] == 1
    finally:
        peer.close()


def test_frames_dropped_reaches_the_client_as_an_exception_and_it_recovers(tmp_path, image):
    with Client.spawn("shm", engine="echo", slots=1, timeout=30) as c:
        c.setImage(image)
        c.inference(pose())
        c._held, held = 0, c._held  # pretend we forgot to hand the group back
        with pytest.raises(FramesDropped, match="holds all 1") as e:
            c.inference(pose())
        assert e.value.reason == P.DropReason.NO_SLOT
        c._held = held
        assert np.array_equal(c.inference(pose())[0], image)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_late_replies_are_skipped_and_their_slot_groups_handed_back(transport, image):
    """Replies to requests the client no longer waits for (e.g. after a timeout) are skipped by seq;
    a late FRAMES over shm still hands its group to the client, which returns it with the next POSE."""
    with Client.spawn(transport, engine="echo", use_interpolation=False, timeout=30) as c:
        c.setImage(image)
        c._stream.send(P.encode(P.Msg.STATS, 900_000))
        c._stream.send(P.encode(P.Msg.POSE, 900_001, P.POSE.pack(0, *[0.0] * 40 + [1.0] + [0.0] * 4)))
        time.sleep(0.2)  # both requests are answered before the next one is even sent
        out = c.inference(pose(0, 0))[0]
        assert np.array_equal(out, image)  # its own frames, not the late ones (shifted by head_y = 1)
        s = c.stats()
        assert s["ipc"]["client"]["stale_replies"] == 2
        if transport == "shm":
            assert len(s["ipc"]["server"]["groups_held_by_client"]) == 2
            c.inference(pose(0, 0))
            assert len(c.stats()["ipc"]["server"]["groups_held_by_client"]) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_call_interrupted_mid_reply_leaves_a_clear_error_not_garbage(transport, image):
    """E.g. Ctrl-C while a frame is arriving: the stream position is unknown, so the client refuses
    further calls with ServerGone instead of misreading bytes; close() still stops the server."""
    c = Client.spawn(transport, engine="echo", use_interpolation=False, timeout=30)
    proc = c._res.proc
    try:
        c.setImage(image)
        c._stream.send(P.encode(P.Msg.STATS, 4242))
        c._stream.recv_into(memoryview(bytearray(5)))  # part of the reply's header, then "interrupted"
        with pytest.raises(ServerGone, match="interrupted in the middle of a reply"):
            c.inference(pose())
    finally:
        c.close()
    assert proc.returncode is not None
