"""Frame sinks: raw (file, FIFO, stdout pipe), shared-memory ring (in- and cross-process), mp4, vcam."""
import os
import subprocess
import sys
import textwrap
import threading
from multiprocessing import shared_memory

import numpy as np
import pytest

from ezvtb.live.sinks import ShmFrameReader, open_sink


def frames(n, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 4), dtype=np.uint8) for _ in range(n)]


def shm_name(tag):
    return f"ezvtb_t_{tag}_{os.getpid()}"


def test_raw_file_is_atomic_and_exact(tmp_path):
    path = tmp_path / "out.bgra"
    fs = frames(3)
    sink = open_sink(f"raw:{path}")
    for f in fs:
        sink.write(f)
    assert not path.exists()  # written under a temporary name until close
    sink.close()
    data = path.read_bytes()
    assert data == b"".join(f.tobytes() for f in fs)
    assert sink.stats()["frames"] == 3 and sink.stats()["bytes"] == len(data)

    aborted = open_sink(f"raw:{tmp_path / 'aborted.bgra'}")
    aborted.write(fs[0])
    aborted.abort()
    assert list(tmp_path.iterdir()) == [path]


def test_bad_frames_and_shape_change_keep_sink_usable(tmp_path):
    sink = open_sink(f"raw:{tmp_path / 'x.bgra'}")
    for bad, word in [(np.zeros((4, 4, 3), np.uint8), r"\(H, W, 4\)"), (np.zeros((4, 4, 4), np.float32), "float32"),
                      ([1, 2], "list")]:
        with pytest.raises(ValueError, match=word):
            sink.write(bad)
    sink.write(frames(1)[0])
    with pytest.raises(ValueError, match=r"expected shape \(48, 64, 4\)"):
        sink.write(frames(1, h=32)[0])
    sink.write(frames(1)[0])
    sink.close()
    assert (tmp_path / "x.bgra").stat().st_size == 2 * 48 * 64 * 4


def test_raw_into_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fs = frames(4)
    got = bytearray()

    def reader():
        with open(fifo, "rb") as f:
            while chunk := f.read(65536):
                got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    sink = open_sink(f"raw:{fifo}")
    for f in fs:
        sink.write(f)
    sink.close()
    t.join(5)
    assert bytes(got) == b"".join(f.tobytes() for f in fs)
    assert fifo.exists()  # a FIFO is written in place, never replaced


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from ezvtb.live.sinks import open_sink, SinkClosed
    sink = open_sink("raw:-")
    f = np.zeros((48, 64, 4), np.uint8)
    try:
        for i in range({n}):
            f[:] = i % 256
            sink.write(f)
    except SinkClosed as e:
        print("closed", e, file=sys.stderr)
        sys.exit(3)
    sink.close()
""")


def test_raw_stdout_pipe_and_reader_going_away():
    r = subprocess.run([sys.executable, "-c", CHILD.format(n=5)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 5 * 48 * 64 * 4
    assert r.stdout[48 * 64 * 4 * 3] == 3
    # a reader that stops after one frame: the writer gets SinkClosed (BrokenPipe), not a traceback
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(n=100000)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    first = p.stdout.read(48 * 64 * 4)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(60) == 3, err
    assert len(first) == 48 * 64 * 4 and "the reader went away" in err


def _ffmpeg():
    from ezvtb.video import ffmpeg_exe

    return ffmpeg_exe()


@pytest.mark.skipif(_ffmpeg() is None, reason="no ffmpeg: neither imageio-ffmpeg (an ezvtb dependency) nor one on PATH")
def test_ffmpeg_reads_the_raw_stream():
    """The documented command: ffmpeg -f rawvideo -pix_fmt bgra -s WxH -r FPS -i - ..."""
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(n=10)], stdout=subprocess.PIPE)
    ff = subprocess.run([_ffmpeg(), "-hide_banner", "-f", "rawvideo", "-pix_fmt", "bgra", "-s", "64x48", "-r", "30",
                         "-i", "-", "-f", "null", "-"], stdin=child.stdout, capture_output=True, timeout=60)
    child.wait(60)
    assert ff.returncode == 0, ff.stderr[-2000:]
    assert b"frame=   10" in ff.stderr or b"frame=10" in ff.stderr.replace(b" ", b"")


def test_shm_ring_in_process():
    name = shm_name("a")
    sink = open_sink(f"shm://{name}?slots=3")
    fs = frames(5)
    try:
        sink.write(fs[0])
        with ShmFrameReader(name) as r:
            assert r.shape == (48, 64, 4) and r.slots == 3 and r.writer_pid == os.getpid()
            got = r.read()
            assert got is not None and got[1] == 1
            np.testing.assert_array_equal(got[0], fs[0])
            assert r.read(after=1, timeout=0.01) is None  # nothing newer yet
            for f in fs[1:]:
                sink.write(f)
            frame, seq, t_ns = r.read(after=1)
            assert seq == 5 and t_ns > 0
            np.testing.assert_array_equal(frame, fs[4])
            frame[:] = 0  # the reader's copy, not the slot
            np.testing.assert_array_equal(r.read()[0], fs[4])
            assert not r.writer_closed
    finally:
        sink.close()
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)  # unlinked on close


READER = textwrap.dedent("""
    import sys, hashlib
    from ezvtb.live.sinks import ShmFrameReader
    r = ShmFrameReader(sys.argv[1])
    seen = 0
    while True:
        got = r.read(after=seen, timeout=10)
        if got is None:
            break
        frame, seq, _ = got
        # every frame is uniform with value seq % 256: a torn copy would mix two values
        if not (frame == seq % 256).all():
            print("torn", seq); sys.exit(4)
        seen = seq
        if seq >= int(sys.argv[2]):
            break
    print(seen, r.writer_closed)
    r.close()
""")


def test_shm_ring_cross_process_no_torn_frames():
    name = shm_name("b")
    sink = open_sink(f"shm://{name}?slots=4")
    f = np.zeros((256, 256, 4), np.uint8)
    sink.write(f)  # create the segment
    p = subprocess.Popen([sys.executable, "-c", READER, name, "400"], stdout=subprocess.PIPE, text=True)
    try:
        for i in range(2, 401):
            f[:] = i % 256
            sink.write(f)
        out, _ = p.communicate(timeout=60)
    finally:
        sink.close()
    assert p.returncode == 0, out
    assert out.split()[0] == "400"
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)  # the reader's exit did not keep or remove it early


def test_shm_errors():
    name = shm_name("c")
    sink = open_sink(f"shm://{name}")
    sink.write(frames(1)[0])
    try:
        with pytest.raises(ValueError, match="already exists"):
            open_sink(f"shm://{name}")
        seg = shared_memory.SharedMemory(name=name)
        from ezvtb.live.sinks import _untrack

        _untrack(seg)
        seg.close()
        st = os.stat(f"/dev/shm/{name}")
        assert st.st_mode & 0o777 == 0o600
    finally:
        sink.close()
    for url, word in [("shm://a/b", "shm name"), ("shm://x?slots=1", "slots must be"), ("shm://x?slots=q", "integer"),
                      ("shm://x?size=3", "unknown option")]:
        with pytest.raises(ValueError, match=word):
            open_sink(url)


def test_mp4_sink_composites_alpha(tmp_path):
    import cv2

    path = tmp_path / "v.mp4"
    sink = open_sink(f"mp4:{path}", fps=30, background=(0, 0, 255))  # BGR red
    clear = np.zeros((64, 96, 4), np.uint8)  # fully transparent
    solid = np.zeros((64, 96, 4), np.uint8)
    solid[..., 1] = 255
    solid[..., 3] = 255  # opaque green
    for i in range(6):
        sink.write(clear if i % 2 == 0 else solid)
    sink.close()
    cap = cv2.VideoCapture(str(path))
    got = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        got.append(fr)
    cap.release()
    assert len(got) == 6 and got[0].shape == (64, 96, 3)
    assert np.abs(got[0].reshape(-1, 3).mean(0) - [0, 0, 255]).max() < 12
    assert np.abs(got[1].reshape(-1, 3).mean(0) - [0, 255, 0]).max() < 12
    with pytest.raises(ValueError, match=r"\.mp4"):
        open_sink(f"mp4:{tmp_path / 'v.avi'}")


def test_vcam_without_pyvirtualcam_is_a_clear_error():
    try:
        import pyvirtualcam  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install pyvirtualcam"):
            open_sink("vcam://")
    else:
        pytest.skip("pyvirtualcam is installed; the no-camera error path depends on the machine")


@pytest.mark.parametrize("url, word", [("raw:", "needs '-'"), ("gif:x.gif", "unknown sink"), (3, "expected a sink URL"),
                                       ("raw:/nonexistent_dir/x", "does not exist")])
def test_bad_sink_urls(url, word):
    with pytest.raises(ValueError, match=word):
        open_sink(url)


def test_null_sink_counts():
    s = open_sink("null:")
    for f in frames(3):
        s.write(f)
    assert s.stats()["frames"] == 3


def test_raw_stdout_refuses_a_terminal():
    import pty

    master, slave = pty.openpty()
    code = ("import sys\nfrom ezvtb.live.sinks import open_sink\n"
            "try:\n    open_sink('raw:-')\nexcept ValueError as e:\n    print('refused:', e, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], stdout=slave, stderr=subprocess.PIPE, timeout=60)
    os.close(slave)
    os.close(master)
    assert r.returncode == 0 and b"refused: output raw:- writes binary frames" in r.stderr
