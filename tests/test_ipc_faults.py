"""IPC faults against real ``ezvtb serve`` processes (echo engine): a second server's
liveness probe on the same socket (while the first serves, and while it is still building its core),
a second client, and SET_IMAGE headers whose dimensions overflow."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ezvtb.ipc import Client
from ezvtb.ipc import protocol as P
from test_ipc import SHM_DIR, RawPeer, pose, serve_argv

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX") or not SHM_DIR.is_dir(),
                                reason="needs POSIX shared memory (/dev/shm) and Unix sockets")

# `ezvtb serve` whose engine takes 3 s to build (a stand-in for exporting / loading a real core)
SLOW_BUILD = textwrap.dedent("""
    import sys, time
    import ezvtb.ipc.server as server
    real = server.build_engine
    def slow(*a, **k):
        time.sleep(3.0)
        return real(*a, **k)
    server.build_engine = slow
    from ezvtb.cli import main
    sys.argv = ["ezvtb"] + sys.argv[1:]
    sys.exit(main())
""")


@pytest.fixture
def image():
    rng = np.random.default_rng(2)
    return rng.integers(0, 256, (512, 512, 4), dtype=np.uint8)


def start_first(path: str, slow: bool = False) -> subprocess.Popen:
    argv = serve_argv("shm", "--socket", path)
    if slow:
        argv = [sys.executable, "-c", SLOW_BUILD, *argv[3:]]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = first.stdout.readline()
    assert path in line, (line, first.stderr.read() if first.poll() is not None else "")
    return first


def second_server_refuses(path: str) -> None:
    r = subprocess.run(serve_argv("shm", "--socket", path, "--accept-timeout", "5"), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "in use by a running server" in r.stderr, (r.returncode, r.stderr[-2000:])


@pytest.mark.parametrize("slow", [False, True], ids=["serving", "building-its-core"])
def test_a_second_server_on_the_same_socket_never_ends_the_first(tmp_path, image, slow):
    path = str(tmp_path / "one.sock")
    first = start_first(path, slow)
    try:
        second_server_refuses(path)  # its probe connects and closes: before the fix, the first took it as its client
        assert first.poll() is None and os.path.exists(path)
        with Client.connect(path, timeout=30) as c:
            c.setImage(image)
            assert np.array_equal(c.inference(pose())[0], image)
            second_server_refuses(path)  # while serving: still "in use", and the socket stays
            assert os.path.exists(path)
            with pytest.raises(RuntimeError, match="busy: this ezvtb server already serves a client"):
                Client.connect(path, timeout=30)  # a second client is refused, the first one goes on
            assert np.array_equal(c.inference(pose())[0], image)
            assert c.stats()["ipc"]["server"]["connections_refused"] >= 2
        assert first.wait(10) == 0 and not os.path.exists(path)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(10)
        first.stdout.close()
        first.stderr.close()


@pytest.mark.parametrize("transport", ("stdio", "shm"))
def test_set_image_dimensions_that_overflow_are_a_protocol_error_naming_them(transport, tmp_path, image):
    peer = RawPeer(transport, tmp_path)
    try:
        peer.hello()
        source = P.IMAGE_SHM if transport == "shm" else P.IMAGE_INLINE
        cases = [(4, (65536,) * 4, "65536x65536x65536x65536"),  # 2**64: np.prod in int64 wraps to 0
                 (4, (4, 65536, 65536, 65536), "4x65536x65536x65536"),
                 (2, (4, 0xFFFFFFFF, 0, 0), "4x4294967295"),
                 (4, (0xFFFFFFFF,) * 4, "4294967295x4294967295x4294967295x4294967295")]
        for seq, (ndim, dims, named) in enumerate(cases, 2):
            for kind, size in ((b"u", 1), (b"f", 8)):
                peer.send(P.encode(P.Msg.SET_IMAGE, seq, P.IMAGE.pack(source, ndim, kind, size, *dims)))
                text = peer.expect_error(seq, P.ErrorCode.PROTOCOL)
                assert f"dimensions {named} of" in text and "limit" in text, text
                assert "Traceback" not in text and " -" not in text, text  # no negative byte count
        peer.set_image(20, image)  # and the server goes on
        peer.send(P.encode(P.Msg.POSE, 21, P.POSE.pack(0, *[0.0] * 45)))
        assert peer.recv()[:2] == (P.Msg.FRAMES, 21)
        s = peer.stats(22)["server"]
        assert s["errors"] == 2 * len(cases)
    finally:
        peer.close()


def test_stale_client_directories_are_swept_and_live_or_young_ones_kept(tmp_path):
    """Both a client and its server killed (SIGKILL): nobody removed the directory; the next spawn sweeps it."""
    from ezvtb.ipc.client import sweep_stale_client_dirs

    old = time.time() - 600
    empty, dead, live, young, other = (tmp_path / f"ezvtb-client-{n}" for n in ("empty", "dead", "live", "young", "x"))
    for d in (empty, dead, live, young, other):
        d.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead / "ezvtb.sock"))
    s.close()  # a socket file nobody listens on
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(str(live / "ezvtb.sock"))
    listening.listen(1)
    (other / "notes.txt").write_text("not ours to delete")
    for d in (empty, dead, live, other):
        os.utime(d, (old, old))
    try:
        assert sweep_stale_client_dirs(str(tmp_path)) == 2
        assert not empty.exists() and not dead.exists()
        assert live.exists() and young.exists() and (other / "notes.txt").exists()
    finally:
        listening.close()
