"""Nothing a user owns is lost: outputs on a full disk, over inputs, after SIGINT/SIGTERM.

The full disk is real: a small tmpfs mounted for the test (needs root and CAP_SYS_ADMIN, as in
CI's container; skipped with the reason otherwise). Signals go to child processes. The fast tests
use the writers directly and the commands up to the point where they refuse their arguments
(before any model loads); the slow ones run the real THA3 core through `ezvtb demo` / `ezvtb run`.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ezvtb.atomic import AtomicOutput, OutputError, atomic_write, temp_name

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


@contextlib.contextmanager
def small_filesystem(size_kb: int):
    """A fresh tmpfs of `size_kb` KiB (a real ENOSPC when full); skips where mounting is not allowed."""
    mnt = Path(tempfile.mkdtemp(prefix="ezvtb_fullfs_"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root with CAP_SYS_ADMIN): {r.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _noise(n: int, h: int = 128, w: int = 128, c: int = 4, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, c), dtype=np.uint8) for _ in range(n)]


def _fill(folder: Path, keep_free: int) -> None:
    """Fill the file system of `folder` up to `keep_free` bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free > keep_free:
        (folder / "filler.bin").write_bytes(b"\0" * (free - keep_free))


def _frames_in(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(params=["ffmpeg", "opencv"])
def encoder(request, monkeypatch):
    import ezvtb.video as video

    if request.param == "opencv":
        monkeypatch.setenv("EZVTB_VIDEO_ENCODER", "opencv")
    else:
        monkeypatch.delenv("EZVTB_VIDEO_ENCODER", raising=False)
    video._find_ffmpeg.cache_clear()
    if request.param == "ffmpeg" and video.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg: imageio-ffmpeg (an ezvtb dependency) is not installed")
    yield request.param
    video._find_ffmpeg.cache_clear()


# --- the shared mechanism ----------------------------------------------------------------------
def test_atomic_outputs_follow_the_umask_and_temp_names_are_per_attempt(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "a.json", "w") as f:
            f.write("{}")
        from ezvtb.video import write_gif

        write_gif(tmp_path / "a.gif", [np.zeros((8, 8, 3), np.uint8)] * 2, 0.1)
    finally:
        os.umask(old)
    for name in ("a.json", "a.gif"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # 0o666 & ~0o027, never 0600
    # outputs a.mp4 and a.b.mp4: neither attempt's temporary name is a prefix pattern of the other's
    ta, tb = temp_name(tmp_path / "a.mp4", "T1"), temp_name(tmp_path / "a.b.mp4", "T2")
    assert ta.name == ".a.mp4.ezvtb-T1.tmp.mp4" and ta.suffix == ".mp4"
    assert not tb.name.startswith(".a.mp4.") and ta != temp_name(tmp_path / "a.mp4", "T3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.json"]


def test_atomic_output_refuses_to_replace_when_asked_and_keeps_the_old_file(tmp_path):
    from ezvtb.atomic import commit_without_replacing

    good = tmp_path / "good.bin"
    good.write_bytes(b"GOOD")
    out = AtomicOutput(good)
    out.tmp.write_bytes(b"partial")
    kept = commit_without_replacing(out, "partial")
    assert kept == tmp_path / "good.partial.bin" and kept.read_bytes() == b"partial"
    out2 = AtomicOutput(good)
    out2.tmp.write_bytes(b"second")
    assert commit_without_replacing(out2, "partial") == tmp_path / "good.partial-2.bin"
    assert good.read_bytes() == b"GOOD"
    out3 = AtomicOutput(good)
    with pytest.raises(OutputError, match="good.bin.*previous file is unchanged"):
        out3.commit(lambda p: (_ for _ in ()).throw(OutputError("3 of 5 frames")))
    assert good.read_bytes() == b"GOOD"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.bin", "good.partial-2.bin", "good.partial.bin"]


def test_temporaries_are_removed_when_the_process_is_interrupted(tmp_path):
    """SIGINT in the middle of a video (a child process): no temporary file, the old file intact."""
    good = tmp_path / "good.mp4"
    good.write_bytes(b"GOOD VIDEO")
    # Ctrl-C as in a terminal: a test runner started in the background of a non-interactive shell ignores
    # SIGINT, and its children would inherit that
    code = textwrap.dedent(f"""
        import signal, sys, numpy as np
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from ezvtb.video import VideoWriter
        f = np.zeros((64, 64, 4), np.uint8)
        with VideoWriter({str(good)!r}, 30, (64, 64)) as w:
            for i in range(100000):
                w.write(f)
                if i == 3:
                    print("writing", flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert p.stdout.readline().strip() == b"writing", p.stderr.read()[-2000:]
    p.send_signal(signal.SIGINT)
    p.wait(60)
    assert p.returncode != 0, (p.returncode, p.stderr.read()[-2000:], sorted(x.name for x in tmp_path.iterdir()))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["good.mp4"] and good.read_bytes() == b"GOOD VIDEO"


def test_sigterm_turns_into_cleanup_in_the_command_line(tmp_path):
    """`ezvtb.cli.main` turns SIGTERM into an exception: writers remove their temporary files, exit 143."""
    good = tmp_path / "good.mp4"
    good.write_bytes(b"GOOD VIDEO")
    code = textwrap.dedent(f"""
        import argparse, sys, numpy as np
        import ezvtb.cli as cli
        from ezvtb.video import VideoWriter

        def endless(args):
            f = np.zeros((64, 64, 4), np.uint8)
            with VideoWriter({str(good)!r}, 30, (64, 64)) as w:
                for i in range(10 ** 7):
                    w.write(f)
                    if i == 3:
                        print("writing", flush=True)

        def parser():
            p = argparse.ArgumentParser()
            p.set_defaults(func=endless)
            p.add_argument("-v", "--verbose", action="count", default=0)
            p.add_argument("-q", "--quiet", action="store_true")
            return p

        cli.build_parser = parser
        sys.exit(cli.main([]))
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert p.stdout.readline().strip() == b"writing", p.stderr.read()[-2000:]
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    assert p.returncode == 143, p.stderr.read()[-2000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["good.mp4"] and good.read_bytes() == b"GOOD VIDEO"


# --- a full disk -------------------------------------------------------------------------------
def test_full_disk_video_fails_loudly_and_keeps_the_good_file(encoder):
    from ezvtb.video import VideoWriter

    with small_filesystem(400) as fs:
        good = fs / "good.mp4"
        with VideoWriter(good, 30, (128, 128)) as w:
            for f in _noise(6, seed=1):
                w.write(f)
        before = good.read_bytes()
        assert _frames_in(good) == 6
        _fill(fs, 60_000)
        with pytest.raises(OutputError) as e:
            with VideoWriter(good, 30, (128, 128)) as w:
                for f in _noise(60, seed=2):
                    w.write(f)
        assert "good.mp4" in str(e.value) and "previous file is unchanged" in str(e.value)
        assert good.read_bytes() == before and _frames_in(good) == 6
        assert sorted(p.name for p in fs.iterdir()) == ["filler.bin", "good.mp4"]


@pytest.mark.parametrize("writer", ["sd_video.save_mp4", "sd_video.save_gif", "novel_view.write_mp4", "atomic_write",
                                    "raw_sink", "png_sink"])
def test_every_writer_fails_loudly_on_a_full_disk(writer):
    with small_filesystem(300) as fs:
        good = fs / {"sd_video.save_gif": "good.gif", "atomic_write": "good.bin", "raw_sink": "good.bgra",
                     "png_sink": "frames"}.get(writer, "good.mp4")
        if writer == "png_sink":
            (fs / "good.bin").write_bytes(b"GOOD")
        else:
            good.write_bytes(b"GOOD")
        _fill(fs, 40_000)
        frames = np.stack(_noise(40, 96, 96, 3, seed=3))
        with pytest.raises(OutputError, match=good.name):
            if writer == "sd_video.save_mp4":
                from ezvtb.sd_video.media import save_mp4

                save_mp4(frames.transpose(3, 0, 1, 2) / 255.0, good, fps=8)
            elif writer == "sd_video.save_gif":
                from ezvtb.sd_video.media import save_gif

                save_gif(images=frames.transpose(3, 0, 1, 2) / 255.0, path=good)  # sd-video's keyword
            elif writer == "novel_view.write_mp4":
                from ezvtb.novel_view.video_io import write_mp4

                write_mp4(good, frames, fps=8)
            elif writer == "atomic_write":
                with atomic_write(good) as f:
                    f.write(frames.tobytes())
            else:
                from ezvtb.live import open_sink

                sink = open_sink(f"{'png' if writer == 'png_sink' else 'raw'}:{good}")
                try:
                    for fr in _noise(40, 96, 96, 4):
                        sink.write(fr)
                    sink.close()
                except BaseException:
                    sink.abort()
                    raise
        if writer == "png_sink":
            assert sorted(p.name for p in fs.iterdir()) == ["filler.bin", "good.bin"]
        else:
            assert good.read_bytes() == b"GOOD"
            assert sorted(p.name for p in fs.iterdir()) == ["filler.bin", good.name]


def test_speech_is_muxed_into_an_h264_mp4_and_webm_keeps_alpha(tmp_path):
    import ezvtb.video as video

    video._find_ffmpeg.cache_clear()
    if video.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg: imageio-ffmpeg (an ezvtb dependency) is not installed")
    import subprocess as sp
    import wave

    from ezvtb.video import VideoWriter, container_frames, ffmpeg_exe

    wav = tmp_path / "s.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(16000) * 0.05) * 8000).astype("<i2").tobytes())
    half = np.zeros((64, 64, 4), np.uint8)
    half[:, :32] = (0, 0, 255, 255)  # left opaque red, right transparent
    with VideoWriter(tmp_path / "t.mp4", 10, (64, 64), audio=wav) as w:
        for _ in range(10):
            w.write(half)
    assert w.has_audio and container_frames(tmp_path / "t.mp4") == 10
    info = sp.run([ffmpeg_exe(), "-hide_banner", "-i", str(tmp_path / "t.mp4")], capture_output=True, text=True).stderr
    assert "h264" in info and "yuv420p" in info and "Audio: aac" in info, info
    with VideoWriter(tmp_path / "t.webm", 10, (64, 64)) as w:
        for _ in range(4):
            w.write(half)
    raw = sp.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-c:v", "libvpx-vp9", "-i",
                  str(tmp_path / "t.webm"), "-f", "rawvideo", "-pix_fmt", "bgra", "-"], capture_output=True).stdout
    back = np.frombuffer(raw, np.uint8).reshape(-1, 64, 64, 4)
    assert back.shape[0] == 4
    assert back[:, :, :28, 3].min() >= 250 and back[:, :, 36:, 3].max() <= 5  # alpha survives the round trip
    assert np.abs(back[0, 10, 10, :3].astype(int) - [0, 0, 255]).max() <= 12


def test_a_result_that_cannot_be_written_is_kept_elsewhere_and_the_message_says_where(tmp_path, monkeypatch):
    from ezvtb.outputs import rescue

    frames = np.stack(_noise(8, 64, 64, 3, seed=4))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the fallback folder, here
    with small_filesystem(200) as fs:
        _fill(fs, 10_000)
        msg = rescue(frames, OSError(28, "No space left on device"), "--out", fs / "orbit.mp4")
        kept = Path(re.search(r"kept in '([^']+)'", msg).group(1))
        assert kept.parent == tmp_path and "orbit.mp4" in msg and "--out" in msg
        assert np.array_equal(np.load(kept), frames)
        assert sorted(p.name for p in fs.iterdir()) == ["filler.bin"]


def test_png_sequence_keeps_alpha_appears_complete_and_never_writes_into_a_folder(tmp_path):
    import cv2

    from ezvtb.live import open_sink

    frames = _noise(3, 32, 48, 4, seed=5)
    sink = open_sink(f"png:{tmp_path / 'seq'}")
    for f in frames:
        sink.write(f)
    assert not (tmp_path / "seq").exists()  # under a temporary name until close
    sink.close()
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    for f, name in zip(frames, names):
        assert np.array_equal(cv2.imread(str(tmp_path / "seq" / name), cv2.IMREAD_UNCHANGED), f)  # lossless, alpha
    with pytest.raises(ValueError, match="not empty"):
        open_sink(f"png:{tmp_path / 'seq'}")
    aborted = open_sink(f"png:{tmp_path / 'other'}")
    aborted.write(frames[0])
    aborted.abort()
    late = open_sink(f"png:{tmp_path / 'late'}")
    late.write(frames[0])
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "mine.txt").write_text("appeared meanwhile")
    late.close(keep_existing=True)
    assert late.written == tmp_path / "late.partial" and (tmp_path / "late" / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late", "late.partial", "seq"]


# --- outputs never replace inputs; checks before any model loads -----------------------------
def test_check_outputs_compares_files_not_text(tmp_path):
    from ezvtb.outputs import check_outputs

    (tmp_path / "out").mkdir()
    src = tmp_path / "p.npy"
    np.save(src, np.zeros((2, 45), np.float32))
    os.link(src, tmp_path / "hard.bgra")
    (tmp_path / "sym.bgra").symlink_to(src)
    (tmp_path / "afile").write_text("x")
    for outs, word in [([("--out", src)], "is the input --in"),
                       ([("--out", tmp_path / "hard.bgra")], "is the input --in"),
                       ([("--out", tmp_path / "sym.bgra")], "is the input --in"),
                       ([("--out", tmp_path / "out/../p.npy")], "is the input --in"),
                       ([("--a", tmp_path / "out/c.mp4"), ("--b", tmp_path / "out/../out/c.mp4")],
                        "also the output --a"),
                       ([("--out", tmp_path / "afile/x.mp4")], "is a file, so the folder"),
                       ([("--out", tmp_path / "out")], "is a folder")]:
        with pytest.raises(ValueError, match=word):
            check_outputs(outs, [("--in", src)])
    with pytest.raises(ValueError, match=r"--out: expected a path ending in \.mp4"):
        check_outputs([("--out", tmp_path / "x.png")], suffixes={"--out": (".mp4",)})
    check_outputs([("--out", tmp_path / "new/deeper/x.mp4")], [("--in", src)], suffixes={"--out": (".mp4",)})
    assert not (tmp_path / "new").exists()  # checking creates nothing


def _cli(args: list[str]) -> tuple[int, str]:
    """Run `ezvtb ARGS` in a child process; (exit code, stderr+stdout)."""
    r = subprocess.run([sys.executable, "-m", "ezvtb", *args], capture_output=True, text=True, env=_env(),
                       timeout=1800)
    return r.returncode, r.stderr + r.stdout


def _main(args: list[str], capsys, caplog) -> tuple[int, str]:
    """`ezvtb ARGS` in this process (the refusals come before anything heavy); (exit code, output + log)."""
    from ezvtb.cli import main

    caplog.clear()
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out + out.err + caplog.text


def test_commands_refuse_to_write_over_their_inputs_before_loading_anything(tmp_path, capsys, caplog):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 255)).save(img)
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not loaded: the output check comes first" * 100)
    poses = tmp_path / "p.npy"
    np.save(poses, np.zeros((3, 45), np.float32))
    os.link(poses, tmp_path / "p_link.bgra")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    cases = [
        (["orbit", str(img), "--model", str(model), "--out", str(model)], "--out: expected a path ending in .mp4"),
        (["orbit", str(img), "--model", str(model), "--out", str(img)], "--out: expected a path ending in .mp4"),
        (["orbit", str(img), "--model", str(model), "--out", str(tmp_path / "img.png/../img.mp4"), "--fps", "inf"],
         "--fps: expected a frame rate"),
        (["orbit", str(img), "--model", str(model), "--fps", "0", "--out", str(tmp_path / "o.mp4")], "--fps"),
        (["orbit", str(img), "--model", str(model), "--out", str(tmp_path / "p.npy/x.mp4")],
         "is a file, so the folder"),
        (["run", "--input", f"file://{poses}", "--output", f"raw:{poses}"], "is the input --input"),
        (["run", "--input", "trace://", "--output", f"raw:{tmp_path / 'frames.npy'}"], "ends in .npy"),
        (["run", "--input", f"file://{poses}", "--output", f"raw:{tmp_path / 'p_link.bgra'}"], "is the input --input"),
        (["bench", "--trace", str(poses), "--json", str(poses)], "--json: expected a path ending in .json"),
        (["demo", "--fps", "inf", "--out", str(tmp_path / "d.mp4")], "--fps: expected a frame rate"),
        (["demo", "--image", str(img), "--out", str(tmp_path / "d.mp4"), "--gif", str(img)], "--gif: expected"),
        (["demo", "--threads", "-5"], "--threads: expected an int >= 0"),
        (["run", "--input", "trace://", "--output", "null:", "--threads", "-5"], "--threads: expected an int >= 0"),
        (["t2v", "a cat", "--model", str(tmp_path), "--out", str(tmp_path / "p.npy/x.mp4")], "is a file, so the"),
        (["t2v", "a cat", "--model", str(tmp_path), "--fps", "inf"], "--fps: expected a frame rate"),
        (["serve", "--transport", "shm", "--accept-timeout", "-1"], "--accept-timeout: expected"),
        (["serve", "--transport", "shm", "--socket", "/nope/dir/s.sock"], "/nope/dir"),
    ]
    for args, word in cases:
        rc, out = _main(args, capsys, caplog)
        assert rc == 2 and word in out, (args, rc, out[-1500:])
    rc, out = _main(["orbit", str(img), "--model", str(model), "--seed", str(2 ** 64)], capsys, caplog)
    assert rc == 2 and "--seed" in out and "2**64 - 1" in out, out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_render_batch_refuses_outputs_that_are_inputs_or_duplicates(tmp_path):
    from ezvtb.cluster.jobs import parse_jobs

    (tmp_path / "out").mkdir()
    np.save(tmp_path / "p.npy", np.zeros((2, 45), np.float32))
    from PIL import Image

    Image.new("RGBA", (64, 64)).save(tmp_path / "img.png")
    ok = {"poses": "p.npy", "image": "img.png"}
    for specs, word in [([{**ok, "output": "out/c.mp4"}, {**ok, "output": "out/../out/c.mp4"}], "also the output"),
                        ([{**ok, "output": "p.npy"}], "expected .mp4, .webm or a raw"),
                        ([{**ok, "output": "o.mp4"}, {**ok, "output": "img.png"}], "expected .mp4, .webm or a raw"),
                        ([{**ok, "output": "o.mp4"}, {"poses": "p.npy", "image": "o.mp4", "output": "x.mp4"}],
                         "is the input job 1's input")]:
        (tmp_path / "o.mp4").write_bytes(b"x")
        with pytest.raises(ValueError, match=word):
            parse_jobs(specs, base=tmp_path)


def test_render_batch_cleanup_removes_exactly_its_own_attempt(tmp_path):
    """Outputs a.mp4 and a.b.mp4: cleaning up a dead attempt at a.mp4 leaves a.b.mp4's temporary file alone."""
    import dataclasses

    from ezvtb.cluster.jobs import ThaRenderKind, parse_jobs

    np.save(tmp_path / "p.npy", np.zeros((2, 45), np.float32))
    ja, jb = parse_jobs([{"poses": "p.npy", "output": "a.mp4"}, {"poses": "p.npy", "output": "a.b.mp4"}], base=tmp_path)
    ja, ja_other, jb = (dataclasses.replace(ja, attempt="j0a1-x"), dataclasses.replace(ja, attempt="j0a2-y"),
                        dataclasses.replace(jb, attempt="j1a1-z"))
    for j in (ja, ja_other, jb):
        temp_name(j.spec["output"], j.attempt).write_bytes(b"partial")
    ThaRenderKind().cleanup(ja)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.b.mp4.ezvtb-j1a1-z.tmp.mp4",
                                                          ".a.mp4.ezvtb-j0a2-y.tmp.mp4", "p.npy"]


# --- ezvtb run: offline renders, a stopped recording -------------------------------------------
def test_offline_input_renders_every_pose_only_when_nothing_is_live(tmp_path):
    from ezvtb.cli.run import offline_input

    assert offline_input("file://p.npy", ["mp4:x.mp4"]) == "file://p.npy?step=1&loop=0"
    assert offline_input("trace://?frames=12", ["raw:x.bgra", "null:"]) == "trace://?frames=12&step=1&loop=0"
    assert offline_input("trace://?loop=1", ["webm:x.webm"]) == "trace://?loop=1&step=1"
    assert offline_input("video://take.mp4", ["webm:x.webm"]) == "video://take.mp4?step=1&loop=0"
    assert offline_input("trace://?step=0", ["mp4:x.mp4"]) is None  # asked for real time
    for outs in (["raw:-"], ["shm://x"], ["vcam://"], ["mp4:x.mp4", "shm://y"]):
        assert offline_input("trace://", outs) is None
    assert offline_input("vmc://127.0.0.1:39539", ["mp4:x.mp4"]) is None
    fifo = tmp_path / "f.bgra"
    os.mkfifo(fifo)
    assert offline_input("trace://", [f"raw:{fifo}"]) is None


def _have_core() -> bool:
    try:
        from ezvtb.export import tha3_graphs  # noqa: F401
    except ImportError:
        return False
    return True


CPU = ["--backend", "cpu", "--no-model-cache", "--threads", "2", "--stats-interval", "0"]


def _start(args: list[str]) -> tuple[subprocess.Popen, list[str], threading.Event]:
    p = subprocess.Popen([sys.executable, "-m", "ezvtb", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_env())
    lines: list[str] = []
    ready = threading.Event()

    def drain(stream):
        for line in stream:
            lines.append(line)
            if "core ready" in line:
                ready.set()

    for s in (p.stdout, p.stderr):
        threading.Thread(target=drain, args=(s,), daemon=True).start()
    return p, lines, ready


def _wait_for_temp(p: subprocess.Popen, lines: list[str], ready: threading.Event, folder: Path) -> None:
    deadline = time.monotonic() + 900  # the first run exports the graphs
    while time.monotonic() < deadline and p.poll() is None and not ready.wait(0.2):
        pass
    assert ready.is_set(), "".join(lines)[-3000:]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        if any(".ezvtb-" in x.name for x in folder.iterdir()):
            time.sleep(1.5)  # a few frames into the recording
            return
        time.sleep(0.05)
    raise AssertionError("no temporary file appeared: " + "".join(lines)[-3000:])


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_recording_never_replaces_the_existing_file(tmp_path, sig):
    poses = np.zeros((400, 45), np.float32)
    poses[:, 26] = np.linspace(0, 1, 400)
    np.save(tmp_path / "p.npy", poses)
    good = tmp_path / "good.mp4"
    good.write_bytes(b"GOOD VIDEO")
    p, lines, ready = _start(["run", "--input", f"file://{tmp_path / 'p.npy'}?step=1&loop=0", "--output",
                              f"mp4:{good}", "--fps", "30", *CPU])
    try:
        _wait_for_temp(p, lines, ready, tmp_path)
        p.send_signal(sig)
        p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    out = "".join(lines)
    assert p.returncode == 0, out[-3000:]
    assert good.read_bytes() == b"GOOD VIDEO"
    partial = tmp_path / "good.partial.mp4"
    assert f"kept as {partial}" in out and "stopped: signal" in out
    n = _frames_in(partial)
    assert 0 < n < 400 and f"rendered {n} frames" in out
    assert len(re.findall(r"rendered \d+ frames", out)) == 1  # the summary once
    assert sorted(x.name for x in tmp_path.iterdir()) == ["good.mp4", "good.partial.mp4", "p.npy"]


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
def test_demo_sigterm_leaves_no_temporary_file_and_the_old_video(tmp_path):
    good = tmp_path / "good.mp4"
    good.write_bytes(b"GOOD VIDEO")
    p, lines, ready = _start(["demo", "--frames", "400", "--out", str(good), "--backend", "cpu", "--threads", "2",
                              "--gif"])
    try:
        _wait_for_temp(p, lines, ready, tmp_path)
        p.send_signal(signal.SIGTERM)
        p.wait(120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, "".join(lines)[-3000:]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["good.mp4"] and good.read_bytes() == b"GOOD VIDEO"


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
def test_demo_on_a_full_disk_fails_and_keeps_the_good_video():
    with small_filesystem(1024) as fs:
        good = fs / "good.mp4"
        good.write_bytes(b"GOOD VIDEO" * 1000)
        _fill(fs, 4096)  # one page left: any real video is larger
        rc, out = _cli(["demo", "--frames", "6", "--out", str(good), "--backend", "cpu", "--threads", "2"])
        assert rc == 2 and "good.mp4" in out and "previous file is unchanged" in out, out[-3000:]
        assert "rendered 6 frames" not in out
        assert good.read_bytes() == b"GOOD VIDEO" * 1000
        assert sorted(x.name for x in fs.iterdir()) == ["filler.bin", "good.mp4"]


@pytest.mark.slow
@pytest.mark.skipif(not _have_core(), reason="the THA3 export is not in the tree")
def test_run_from_a_file_to_a_file_renders_every_pose_and_prints_the_summary_once(tmp_path):
    poses = np.zeros((12, 45), np.float32)
    poses[:, 26] = np.linspace(0, 1, 12)
    np.save(tmp_path / "p.npy", poses)
    rc, out = _cli(["run", "--input", f"file://{tmp_path / 'p.npy'}", "--output", f"mp4:{tmp_path / 'o.mp4'}",
                    "--output", f"raw:{tmp_path / 'o.bgra'}", "--fps", "30", *CPU])
    assert rc == 0, out[-3000:]
    assert _frames_in(tmp_path / "o.mp4") == 12
    raw = np.frombuffer((tmp_path / "o.bgra").read_bytes(), np.uint8).reshape(-1, 512, 512, 4)
    assert raw.shape[0] == 12 and len({f.tobytes() for f in raw}) > 6  # every pose, each once, in order
    assert "0 poses dropped" in out and "stopped: input finished" in out and out.count("rendered 12 frames") == 1
    assert "offline render" in out
