"""`ezvtb run`: the paced source -> core -> sink loop.

The fast tests drive `run_loop` with `TimedRenderer`, a stand-in with a controlled render time
(the real core takes ~0.7 s per frame on this CPU, so every tick would be late): they check
pacing, dropping instead of queueing, stop conditions and the data path. The slow tests run the
real core end to end through the CLI (`ezvtb run`), including SIGTERM.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import shared_memory

import numpy as np
import pytest

from ezvtb.cli.run import run_loop
from ezvtb.live import open_sink, open_source
from ezvtb.live.sinks import ShmFrameReader


class TimedRenderer:
    """Renders a 16x16 BGRA frame whose pixels encode the pose (value = round(255 * pose[k]))."""

    def __init__(self, ms=1.0, slow_calls=(), slow_ms=0.0, k=26):
        self.ms, self.slow_calls, self.slow_ms, self.k = ms, set(slow_calls), slow_ms, k
        self.starts, self.poses = [], []
        self.frame = np.zeros((16, 16, 4), np.uint8)

    def inference(self, pose):
        self.starts.append(time.perf_counter())
        self.poses.append(np.array(pose))
        delay = self.slow_ms if len(self.starts) - 1 in self.slow_calls else self.ms
        end = time.perf_counter() + delay / 1e3
        while time.perf_counter() < end:
            pass
        self.frame[:] = int(round(255 * float(pose[self.k])))
        return [self.frame]


def test_paced_never_faster_than_fps_and_no_drops_when_on_time():
    src = open_source("trace://?frames=50&step=1")
    r = TimedRenderer(ms=1.0)
    s = run_loop(src, r, [open_sink("null:")], fps=50, frames=15, stats_interval=0)
    print(s)
    assert s["rendered"] == 15 and s["frames_out"] == 15 and s["stop_reason"] == "frames"
    assert s["elapsed_s"] >= 14 / 50 - 1e-3  # paced: 15 ticks span at least 14 periods
    # Never faster than fps: render i starts on tick g_i >= i of the grid that began at the first
    # render (a per-gap bound would be flaky: a late tick followed by an on-time one is a short gap).
    since_first = np.asarray(r.starts) - r.starts[0]
    assert (since_first >= np.arange(len(r.starts)) * 0.02 - 2e-3).all(), since_first
    assert s["late_ticks"] <= 2  # on time (a little slack for a loaded machine)
    assert s["dropped"] == 0  # step=1: every pose of the source is rendered


def test_late_tick_skips_missed_ticks_instead_of_catching_up():
    src = open_source("trace://?frames=50&step=1")
    r = TimedRenderer(ms=1.0, slow_calls={3}, slow_ms=50.0)
    s = run_loop(src, r, [open_sink("null:")], fps=50, frames=8, stats_interval=0)
    print(s, np.diff(r.starts) * 1e3)
    assert s["rendered"] == 8
    assert s["late_ticks"] >= 2  # 50 ms at a 20 ms period: the next 2 ticks are skipped
    assert s["dropped"] == 0  # ... but with step=1 no pose is skipped, so none counts as dropped
    # after the slow call the loop waits for the next tick on the grid (t3 + 60 ms), it does not
    # run the missed ticks back to back
    assert r.starts[4] - r.starts[3] >= 0.055
    grid = (np.array(r.starts) - r.starts[0]) / 0.02
    assert grid[4] == pytest.approx(6.0, abs=0.4)


def test_every_tick_late_counts_drops_and_still_renders_each_tick_once():
    src = open_source("trace://?frames=50&step=1")
    r = TimedRenderer(ms=25.0)
    s = run_loop(src, r, [open_sink("null:")], fps=100, frames=6, stats_interval=0)
    assert s["rendered"] == 6 and s["late_ticks"] >= 6 * 2 - 1 and s["dropped"] == 0
    assert s["fps"] < 45


def test_drops_count_the_poses_a_wall_clock_source_skipped():
    # 200 poses/s played by wall clock, rendered at 50 fps: about 3 of every 4 poses are never rendered
    src = open_source("trace://?frames=400&fps=200")
    seqs = []

    class Recorded:
        finished = False

        def latest(self):
            sample = src.latest()
            seqs.append(sample.seq)
            return sample

    s = run_loop(Recorded(), TimedRenderer(ms=1.0), [open_sink("null:")], fps=50, frames=10, stats_interval=0)
    assert s["dropped"] == sum(max(0, b - a - 1) for a, b in zip(seqs, seqs[1:]))
    assert s["dropped"] >= 10  # 9 gaps of about 3 poses each


def test_unpaced_loop_renders_every_pose_without_waiting():
    src = open_source("trace://?frames=12&step=1&loop=0")
    stop = threading.Event()
    timer = threading.Timer(60, stop.set)  # a paced loop at 0.01 fps would still wait for its second tick
    timer.start()
    try:
        s = run_loop(src, TimedRenderer(ms=1.0), [open_sink("null:")], fps=0.01, stats_interval=0, stop=stop,
                     paced=False)
    finally:
        timer.cancel()
    assert s["rendered"] == 12 and s["stop_reason"] == "input finished"
    assert s["dropped"] == 0 and s["late_ticks"] == 0


def test_data_path_file_source_to_raw_sink_and_input_finished(tmp_path):
    poses = np.zeros((5, 45), np.float32)
    poses[:, 26] = [0.0, 0.25, 0.5, 0.75, 1.0]
    np.save(tmp_path / "p.npy", poses)
    out = tmp_path / "frames.bgra"
    sink = open_sink(f"raw:{out}")
    s = run_loop(open_source(f"file://{tmp_path / 'p.npy'}?step=1&loop=0"), TimedRenderer(), [sink], fps=200,
                 stats_interval=0)
    sink.close()
    assert s["stop_reason"] == "input finished" and s["rendered"] == 5
    data = np.frombuffer(out.read_bytes(), np.uint8).reshape(-1, 16, 16, 4)
    assert data[:, 0, 0, 0].tolist() == [0, 64, 128, 191, 255]


def test_stop_event_and_sink_closed(tmp_path):
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    s = run_loop(open_source("trace://?step=1"), TimedRenderer(), [open_sink("null:")], fps=100, stop=stop,
                 stats_interval=0.05)
    assert s["stop_reason"] == "signal" and 5 <= s["rendered"] <= 30

    from ezvtb.live.sinks import FrameSink, SinkClosed

    class GoneAfterThree(FrameSink):  # a consumer that disappears (as a closed pipe does)
        def _write(self, frame):
            if self.frames == 3:
                raise SinkClosed("reader went away")

    s = run_loop(open_source("trace://?step=1"), TimedRenderer(), [GoneAfterThree()], fps=200, stats_interval=0)
    assert s["stop_reason"] == "output closed" and s["rendered"] == 3


def test_live_vmc_source_latest_pose_reaches_the_frames():
    import socket

    from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
    from pythonosc.osc_message_builder import OscMessageBuilder

    def vmc_bundle(blends):
        b = OscBundleBuilder(IMMEDIATELY)
        for name, v in blends.items():
            m = OscMessageBuilder(address="/VMC/Ext/Blend/Val")
            m.add_arg(name)
            m.add_arg(float(v))
            b.add_content(m.build())
        b.add_content(OscMessageBuilder(address="/VMC/Ext/Blend/Apply").build())
        return b.build().dgram

    src = open_source("vmc://127.0.0.1:0?filter=0")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = threading.Event()

    def sender():
        i = 0
        while not stop.is_set():
            sock.sendto(vmc_bundle({"A": 1.0 if i >= 5 else 0.0}), src.address)
            i += 1
            time.sleep(0.005)

    t = threading.Thread(target=sender)
    t.start()
    try:
        r = TimedRenderer(k=26)
        s = run_loop(src, r, [open_sink("null:")], fps=50, seconds=0.5, stats_interval=0)
    finally:
        stop.set()
        t.join()
        sock.close()
        src.close()
    assert s["stop_reason"] == "seconds"
    assert r.poses[-1][26] == 1.0  # mouth_aaa of the newest packet
    assert s["latency_ms"]["p50"] < 200
    assert src.stats()["packets"] > s["rendered"]  # many packets, one render per tick: no queue


@pytest.mark.parametrize("kw, word", [({"fps": 0}, "--fps"), ({"fps": 30, "frames": 0}, "--frames"),
                                      ({"fps": 30, "seconds": -1}, "--seconds")])
def test_bad_loop_arguments(kw, word):
    with pytest.raises(ValueError, match=word):
        run_loop(open_source("trace://?step=1"), TimedRenderer(), [], **kw)


# --- the real core, end to end -------------------------------------------------------------------
def _have_tha3_export():
    try:
        from ezvtb.export import tha3_graphs  # noqa: F401
    except ImportError:
        return False
    return True


needs_core = pytest.mark.skipif(not _have_tha3_export(),
                                reason="the THA3 export (ezvtb.export.tha3_graphs) is not in the tree yet")
CPU = ["--backend", "cpu", "--no-model-cache", "--threads", "2"]


@pytest.mark.slow
@needs_core
def test_cli_run_trace_to_raw_file_with_real_core(tmp_path, capsys):
    from ezvtb.cli import main

    out = tmp_path / "f.bgra"
    rc = main(["run", "--input", "trace://?step=1", "--output", f"raw:{out}", "--output", f"mp4:{tmp_path / 'f.mp4'}",
               "--fps", "30", "--frames", "3", *CPU])
    assert rc == 0
    data = np.frombuffer(out.read_bytes(), np.uint8).reshape(-1, 512, 512, 4)
    assert data.shape[0] == 3
    assert data[..., 3].max() == 255 and data[..., 3].min() == 0  # a character over transparency
    assert np.abs(data[0].astype(int) - data[2].astype(int)).max() > 0  # the trace moves
    assert (tmp_path / "f.mp4").stat().st_size > 1000
    assert "rendered 3 frames" in capsys.readouterr().out


@pytest.mark.slow
@needs_core
def test_cli_run_shm_sigterm_stops_cleanly(tmp_path):
    # Deterministic on a fresh clone's first run: the shm segment appears with the first frame, after
    # the weights fetch and the first-run export (minutes on a loaded 2-core CPU), which used to fall
    # inside the fixed wait for the segment. The frame window now starts when the child logs "core
    # ready". stderr is drained by a thread, so the child can never block on a full pipe.
    name = f"ezvtb_run_{os.getpid()}"
    p = subprocess.Popen([sys.executable, "-m", "ezvtb", "run", "--input", "trace://", "--output", f"shm://{name}",
                          "--fps", "30", "--stats-interval", "1", *CPU], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def drain():
        for line in p.stderr:
            lines.append(line)
            if "core ready" in line:
                ready.set()

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        deadline = time.monotonic() + 900  # weights fetch + first-run export under load
        while time.monotonic() < deadline and p.poll() is None and not ready.wait(0.2):
            pass
        assert ready.is_set(), "".join(lines)[-3000:] if p.poll() is not None else "core not ready in 900 s"
        reader = None
        deadline = time.monotonic() + 120  # the first frame: one inference
        while reader is None and time.monotonic() < deadline and p.poll() is None:
            try:
                reader = ShmFrameReader(name)
            except FileNotFoundError:
                time.sleep(0.2)
        assert reader is not None, "".join(lines)[-3000:]
        got = reader.read(timeout=60)
        assert got is not None and got[0].shape == (512, 512, 4) and got[0][..., 3].max() == 255
        reader.close()
        p.send_signal(signal.SIGTERM)
        summary = p.stdout.read()  # the summary line is the command's output
        p.wait(timeout=60)
        drainer.join(timeout=10)
        err = "".join(lines)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "stopped: signal" in summary, err
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=name)
