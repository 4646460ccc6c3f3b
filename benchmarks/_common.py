"""Shared helpers for the benchmarks: machine description, load watch, percentiles, alternating timing,
the OpenVINO column, table printing, RESULTS.md."""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")
# A run refuses to start above this 1-minute load average (2-core reference machine: 0.75 per core),
# unless given --allow-loaded; it then runs and its table is marked LOADED.
LOAD_LIMIT = 1.5
# A run is marked LOADED when other processes used more than this many cores on average while it ran.
OTHER_CORES_LIMIT = 0.25
# Pause before each timed call, so worker threads another library leaves spinning after its call
# (OpenVINO's, torch's, ONNX Runtime's) have gone idle; applied to every side alike.
SETTLE_S = 0.05


def machine() -> str:
    """One line describing the CPU, cores, memory and library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        mem = float("nan")
    try:
        load = "load avg %.1f" % os.getloadavg()[0]
    except OSError:
        load = ""
    libs = []
    for mod in ("onnxruntime", "torch", "numpy", "cv2"):
        try:
            libs.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001
            pass
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {load}; Python {platform.python_version()}; "
            + ", ".join(libs))


def busy_seconds_from_stat(text: str) -> float:
    """Busy CPU seconds of the whole machine from the text of /proc/stat: user + nice + system + irq +
    softirq + steal of the aggregate ``cpu`` line (steal: time the hypervisor gave to other guests)."""
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "cpu":
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in (f[1:9] + ["0"] * 8)[:8])
            return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    raise ValueError("/proc/stat: no aggregate 'cpu' line")


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores summed), from /proc/stat."""
    with open("/proc/stat") as f:
        return busy_seconds_from_stat(f.read())


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadWatch:
    """Was anything else running? Wraps the measured part of a benchmark (``with watch:`` or start/stop).

    `check` (also done by `start`) reads the 1/5/15-minute load average and refuses to go on (SystemExit
    naming the load and the flag) above `limit`, unless `allow_loaded`: then the run goes on, flagged.
    Between `start` and `stop` it counts the CPU time other processes used: the machine's busy time
    (/proc/stat) minus this process's own (threads, and children once waited for), in cores (other CPU
    seconds / wall seconds), and flags the run above `other_limit`. The load average alone cannot tell:
    the benchmark's own threads push it toward their count. The readers are parameters so a test can
    inject readings.
    """

    def __init__(self, allow_loaded: bool = False, *, limit: float = LOAD_LIMIT,
                 other_limit: float = OTHER_CORES_LIMIT,
                 loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
                 busy_seconds: Callable[[], float] = machine_busy_seconds,
                 own_seconds: Callable[[], float] = own_cpu_seconds,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.allow_loaded = bool(allow_loaded)
        self.limit = float(limit)
        self.other_limit = float(other_limit)
        self._loadavg, self._busy, self._own, self._clock = loadavg, busy_seconds, own_seconds, clock
        self.load_before: tuple[float, float, float] | None = None
        self.load_after: tuple[float, float, float] | None = None
        self.wall_s = self.own_s = self.other_s = float("nan")
        self._start: tuple[float, float, float] | None = None

    def check(self) -> "LoadWatch":
        """Read the load average; refuse a loaded machine unless `allow_loaded`. Call it before any
        expensive set-up (the benchmark's own set-up raises the load average too)."""
        self.load_before = tuple(self._loadavg())
        if self.load_before[0] > self.limit and not self.allow_loaded:
            raise SystemExit(f"load: the 1-minute load average is {self.load_before[0]:.2f}, over the limit "
                             f"{self.limit} on this {os.cpu_count()}-core machine; other work would skew the "
                             "timings. Wait for an idle machine, or pass --allow-loaded to run anyway (the table "
                             "is then marked LOADED).")
        return self

    def settle(self, timeout_s: float = 180.0, poll_s: float = 5.0,
               sleep: Callable[[float], None] = time.sleep) -> "LoadWatch":
        """Wait (up to `timeout_s`) for the 1-minute load average to fall to `limit`, then `check`: for a run
        whose own set-up (exports, a previous network's timing) has just pushed the load average up; the
        average decays within about a minute once that work is done. Another process keeping the machine
        busy still gets the run refused (or flagged with `allow_loaded`) when the time is up."""
        waited = 0.0
        while self._loadavg()[0] > self.limit and waited < timeout_s:
            sleep(poll_s)
            waited += poll_s
        return self.check()

    def start(self) -> "LoadWatch":
        if self.load_before is None:
            self.check()
        self._start = (self._clock(), self._busy(), self._own())
        return self

    def stop(self) -> "LoadWatch":
        if self._start is None:
            raise RuntimeError("LoadWatch.stop before start")
        wall0, busy0, own0 = self._start
        self.wall_s = self._clock() - wall0
        self.own_s = self._own() - own0
        self.other_s = max(0.0, (self._busy() - busy0) - self.own_s)
        self.load_after = tuple(self._loadavg())
        return self

    def __enter__(self) -> "LoadWatch":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def other_cores(self) -> float:
        """Cores other processes used on average between start and stop."""
        return self.other_s / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def reasons(self) -> list[str]:
        """Why the run is flagged (empty: idle)."""
        out = []
        if self.load_before is not None and self.load_before[0] > self.limit:
            out.append(f"1-min load average {self.load_before[0]:.2f} before the run, over {self.limit} "
                       "(run with --allow-loaded)")
        if self.other_cores > self.other_limit:
            out.append(f"other processes used {self.other_cores:.2f} cores, over {self.other_limit}")
        return out

    @property
    def loaded(self) -> bool:
        return bool(self.reasons)

    def note(self) -> str:
        """One line for the table note: the load before and after and the other processes' CPU."""
        before = f"{self.load_before[0]:.2f}" if self.load_before else "?"
        after = f"{self.load_after[0]:.2f}" if self.load_after else "?"
        line = (f"Load: 1-min average {before} before, {after} after (this run's own threads count); other "
                f"processes used {self.other_cores:.2f} cores during the run ({self.other_s:.1f} CPU s over "
                f"{self.wall_s:.1f} s)")
        return f"{line}: idle." if not self.loaded else f"{line}: LOADED: {'; '.join(self.reasons)}."

    def heading(self, title: str) -> str:
        """`title` marked LOADED for a flagged run, so a loaded table is never mistaken for an idle one."""
        return f"{title} [LOADED]" if self.loaded else title


def add_load_args(ap: argparse.ArgumentParser) -> None:
    """Add ``--allow-loaded`` (run, flagged, above the load limit) to a benchmark's arguments."""
    ap.add_argument("--allow-loaded", action="store_true",
                    help=f"run even when the 1-minute load average is over {LOAD_LIMIT} (the table is marked "
                         "LOADED)")


def timed_ms(fn: Callable[[], Any], settle: float = SETTLE_S) -> float:
    """Milliseconds one ``fn()`` takes, after a `settle` pause."""
    if settle > 0:
        time.sleep(settle)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def alternating_ms(sides: Mapping[str, Callable[[], Any]], rounds: int, settle: float = SETTLE_S
                   ) -> dict[str, list[float]]:
    """`rounds` timed calls of every side, interleaved (order reversed every other round), each after a
    `settle` pause: {side: [ms, ...]}."""
    order = list(sides.items())
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(rounds):
        for k, fn in (order if r % 2 == 0 else order[::-1]):
            times[k].append(timed_ms(fn, settle))
    return times


def openvino_runner(onnx_path: str | os.PathLike, threads: int = 0
                    ) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None, str]:
    """OpenVINO's CPU plugin on an ONNX graph (what a CPU user would pick instead of ONNX Runtime).

    Returns ``(run, "")`` where ``run({input name: array})`` gives the outputs in graph order (copies),
    or ``(None, reason)`` when openvino is not installed or cannot read or compile the graph (e.g. it
    holds ONNX Runtime's com.microsoft operators). Compiled for latency, f32, `threads` inference threads
    (0: OpenVINO's default).
    """
    try:
        import openvino as ov
    except ImportError as e:
        return None, f"openvino is not installed ({e})"
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises its own RuntimeError kinds; the reason is reported
        # OpenVINO's message starts with where in its sources it failed and ends with what failed
        lines = [ln.strip(" -") for ln in str(e).splitlines() if ln.strip(" -")] or [type(e).__name__]
        return None, f"OpenVINO cannot read {Path(onnx_path).name}: {lines[-1][:200]}"
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = request.infer(feeds)
        return [np.array(res[o], copy=True) for o in outputs]

    return run, ""


def portable_onnx(module: Any, spec: Any, name: str) -> tuple[Path, str]:
    """The ONNX graph of `module` for runtimes other than ONNX Runtime (OpenVINO): exported with the
    portable network rewrites (standard ONNX operators only) under ``name + "-portable"``; where this
    checkout has no rewrites, the plain export under `name` (the graph ONNX Runtime reads too).
    Returns the path and a few words saying which graph it is."""
    from ezvtb.export.exporter import export_module

    try:
        from ezvtb.export.network_rewrites import PORTABLE_REWRITES
    except ImportError:
        return export_module(module, spec, name=name, progress=False), "plain export (no rewrites in this checkout)"
    path = export_module(module, spec, name=name + "-portable", rewrites=PORTABLE_REWRITES, progress=False)
    return path, "portable rewrites: " + (", ".join(PORTABLE_REWRITES) or "none")


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples, np.float64), q))


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else f"{c:.1f}" if isinstance(c, float) else str(c)
                                             for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def append_results(title: str, body: str) -> None:
    """Append a dated section to benchmarks/RESULTS.md."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=RESULTS.parent).stdout.strip()
    except OSError:
        rev = ""
    with open(RESULTS, "a") as f:
        f.write(f"\n## {title} ({stamp}, commit {rev or '?'})\n\nMachine: {machine()}\n\n{body}\n")


def publish(title: str, text: str, note: str, append: bool, load: LoadWatch | None = None) -> None:
    """Print a benchmark's table and its note; with `append`, add both to benchmarks/RESULTS.md.
    With `load` (a stopped `LoadWatch`), its line ends the note and a flagged run's heading says LOADED."""
    if load is not None:
        note = f"{note} {load.note()}"
        title = load.heading(title)
    print(text)
    print()
    print(note)
    if append:
        append_results(title, text + "\n\n" + note)
