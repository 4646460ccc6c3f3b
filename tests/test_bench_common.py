"""benchmarks/_common.py: the load watch (refusal, --allow-loaded flag, other-process CPU time counted from
/proc/stat with real processes), the note wording, the LOADED heading, and the OpenVINO column's runner."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as bc  # noqa: E402

IDLE = (0.12, 0.30, 0.40)
# burns {s} s of wall time (wall) or of its own CPU time (cpu, however contended the machine is)
BUSY_LOOP = "import time\nt = time.{clock}()\nwhile time.{clock}() - t < {s}:\n    pass\n"


class Readings:
    """Scripted readings for the watch's seams: each call returns the next value."""

    def __init__(self, *values):
        self.values = list(values)

    def __call__(self):
        return self.values.pop(0)


def parse(*argv):
    ap = argparse.ArgumentParser()
    bc.add_load_args(ap)
    return ap.parse_args(list(argv))


def test_refuses_a_loaded_machine_naming_the_load_and_the_flag():
    assert parse().allow_loaded is False
    watch = bc.LoadWatch(parse().allow_loaded, loadavg=lambda: (1.87, 1.2, 1.0))
    with pytest.raises(SystemExit, match=r"1-minute load average is 1\.87, over the limit 1\.5.*--allow-loaded"):
        watch.check()
    with pytest.raises(SystemExit):  # start checks too when check was not called
        bc.LoadWatch(loadavg=lambda: (1.51, 0, 0)).start()
    bc.LoadWatch(loadavg=lambda: (1.5, 0, 0)).check()  # at the limit: runs


def test_settle_waits_for_the_load_to_fall_then_checks():
    slept = []
    watch = bc.LoadWatch(loadavg=Readings((1.9, 1, 1), (1.6, 1, 1), (1.2, 1, 1), (1.2, 1, 1)))
    assert watch.settle(timeout_s=60, poll_s=5, sleep=slept.append) is watch
    assert slept == [5, 5] and watch.load_before == (1.2, 1, 1)
    busy = bc.LoadWatch(loadavg=lambda: (1.8, 1.7, 1.6))  # another process keeps it busy: refused when time is up
    with pytest.raises(SystemExit, match="1.80"):
        busy.settle(timeout_s=10, poll_s=5, sleep=slept.append)
    assert slept == [5, 5, 5, 5]


def test_allow_loaded_runs_flagged_and_the_heading_says_loaded(tmp_path, monkeypatch, capsys):
    watch = bc.LoadWatch(parse("--allow-loaded").allow_loaded, loadavg=Readings((2.4, 1.9, 1.5), (2.6, 2.0, 1.6)),
                         busy_seconds=Readings(100.0, 102.2), own_seconds=Readings(5.0, 7.0),
                         clock=Readings(10.0, 12.0))
    with watch:
        pass
    assert watch.loaded and watch.other_cores == pytest.approx(0.1)
    assert watch.note() == ("Load: 1-min average 2.40 before, 2.60 after (this run's own threads count); other "
                            "processes used 0.10 cores during the run (0.2 CPU s over 2.0 s): LOADED: 1-min load "
                            "average 2.40 before the run, over 1.5 (run with --allow-loaded).")
    monkeypatch.setattr(bc, "RESULTS", tmp_path / "RESULTS.md")
    bc.publish("UNet step", "| a |", "Note.", True, load=watch)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## UNet step [LOADED] (" in text and "Note. Load: 1-min average 2.40" in text
    assert "LOADED: 1-min load average 2.40" in capsys.readouterr().out


def test_other_processes_over_the_threshold_flag_an_idle_started_run():
    # 3.0 busy s on the machine, 1.0 of them ours, over 2 s: others used 1.0 core
    watch = bc.LoadWatch(loadavg=Readings(IDLE, (1.9, 0.5, 0.4)), busy_seconds=Readings(50.0, 53.0),
                         own_seconds=Readings(1.0, 2.0), clock=Readings(0.0, 2.0)).start().stop()
    assert watch.other_cores == pytest.approx(1.0) and watch.loaded
    assert watch.note().endswith("LOADED: other processes used 1.00 cores, over 0.25.")
    assert watch.heading("T") == "T [LOADED]"
    # 0.03 cores of others: idle, whatever the load average after (the run's own threads raise it)
    watch = bc.LoadWatch(loadavg=Readings(IDLE, (1.85, 0.6, 0.4)), busy_seconds=Readings(50.0, 54.06),
                         own_seconds=Readings(1.0, 5.0), clock=Readings(0.0, 2.0)).start().stop()
    assert not watch.loaded and watch.heading("T") == "T"
    assert watch.note() == ("Load: 1-min average 0.12 before, 1.85 after (this run's own threads count); other "
                            "processes used 0.03 cores during the run (0.1 CPU s over 2.0 s): idle.")
    assert bc.OTHER_CORES_LIMIT == 0.25
    with pytest.raises(RuntimeError, match="stop before start"):
        bc.LoadWatch().stop()


def test_proc_stat_busy_seconds():
    tick = bc.os.sysconf("SC_CLK_TCK")
    line = "cpu  100 20 30 5000 40 1 2 7 0 0\ncpu0 50 10 15 2500 20 0 1 3 0 0\n"
    assert bc.busy_seconds_from_stat(line) == pytest.approx((100 + 20 + 30 + 1 + 2 + 7) / tick)
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        bc.busy_seconds_from_stat("cpu0 1 2 3 4\n")
    assert bc.machine_busy_seconds() > 0


def test_a_busy_process_that_is_not_ours_counts_as_other_cpu():
    # the child is not waited for until the watch stops, so its CPU time is not this process's
    watch = bc.LoadWatch(loadavg=lambda: IDLE)
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(clock="perf_counter", s=1.5)])
    try:
        with watch:
            time.sleep(1.0)
    finally:
        child.wait()
    # on an idle machine the child alone is ~1 core; on a shared one others fill what it does not get
    assert watch.other_cores > 0.5, watch.note()


def test_own_threads_and_waited_children_are_not_other_cpu():
    watch = bc.LoadWatch(loadavg=lambda: IDLE)
    with watch:
        exec(BUSY_LOOP.format(clock="process_time", s=0.6))  # this process
        subprocess.run([sys.executable, "-c", BUSY_LOOP.format(clock="process_time", s=0.6)], check=True)  # a child
    assert watch.own_s >= 1.15, watch.own_s  # both counted as ours (the child once waited for)
    # an idle sleep: this process uses ~no CPU, so everything the machine did was others'
    watch = bc.LoadWatch(loadavg=lambda: IDLE)
    busy0 = bc.machine_busy_seconds()
    with watch:
        time.sleep(0.5)
    busy = bc.machine_busy_seconds() - busy0
    assert watch.own_s < 0.05 and watch.other_s == pytest.approx(max(0.0, busy - watch.own_s), abs=0.05)


def test_alternating_calls_pause_before_each_and_reverse_the_order():
    calls = []
    times = bc.alternating_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, settle=0.01)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    t0 = time.perf_counter()
    bc.timed_ms(lambda: None, settle=0.05)
    assert time.perf_counter() - t0 >= 0.05


def _graph(path: Path, contrib: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"]),
             helper.make_node("Neg", ["h"], ["z"])]
    opsets = [helper.make_opsetid("", 17)]
    if contrib:
        # an ONNX Runtime contrib operator OpenVINO has no conversion for (it reads some, e.g.
        # MultiHeadAttention and FastGelu)
        nodes[1] = helper.make_node("BiasSplitGelu", ["h", "b"], ["y"], domain="com.microsoft")
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(w, "w")]
                          + [numpy_helper.from_array(np.ones(4, np.float32), "b")] * contrib)
    onnx.save(helper.make_model(g, opset_imports=opsets), path)
    return path


def test_openvino_runner_matches_onnx_runtime_and_names_what_it_cannot_read(tmp_path):
    pytest.importorskip("openvino", reason="openvino is in the dev extra")
    import onnxruntime as ort

    path = _graph(tmp_path / "plain.onnx", contrib=False)
    run, reason = bc.openvino_runner(path, threads=1)
    assert run is not None and reason == ""
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    got = run({"x": x})
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert len(got) == 2  # graph order: y then z
    for g, w in zip(got, want):
        assert float(np.abs(g - w).max()) < 1e-5
    kept = [g.copy() for g in got]
    run({"x": 3 * x})  # the next call does not overwrite what the last returned (copies, not request buffers)
    for g, k in zip(got, kept):
        np.testing.assert_array_equal(g, k)
    run, reason = bc.openvino_runner(_graph(tmp_path / "contrib.onnx", contrib=True))
    assert run is None and reason == ("OpenVINO cannot read contrib.onnx: No conversion rule found for operations: "
                                      "com.microsoft.BiasSplitGelu"), reason
    run, reason = bc.openvino_runner(tmp_path / "missing.onnx")
    assert run is None and reason.startswith("OpenVINO cannot read missing.onnx: "), reason
