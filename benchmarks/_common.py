"""Shared helpers for the benchmarks: machine description, percentiles, table printing, RESULTS.md."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).with_name("RESULTS.md")


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


def publish(title: str, text: str, note: str, append: bool) -> None:
    """Print a benchmark's table and its note; with `append`, add both to benchmarks/RESULTS.md."""
    print(text)
    print()
    print(note)
    if append:
        append_results(title, text + "\n\n" + note)
