"""benchmarks/bench_gpu.py: a clean one-line exit without CUDA, argument checks, and a CPU smoke run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_without_cuda_it_exits_cleanly_with_one_line():
    from ezvtb.engines.cuda import device_count

    n, why = device_count()
    if n:
        pytest.skip("a CUDA device is present: the benchmark would run")
    r = _run()
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench_gpu: skipped: no CUDA device"), r.stdout
    assert "torch" not in r.stderr


def test_arguments_are_checked():
    r = _run("--configs", "separable/fp8")
    assert r.returncode == 2 and "--configs: unknown ['separable/fp8']" in r.stderr
    r = _run("--backend", "cpu")
    assert r.returncode == 2 and "--smoke and --backend cpu go together" in r.stderr
    r = _run("--backend", "cpu", "--smoke", "--append")
    assert r.returncode == 2 and "nothing to record" in r.stderr


@pytest.mark.slow
def test_cpu_smoke_run_goes_through_the_tha_and_upstream_rows():
    r = _run("--backend", "cpu", "--smoke", "--configs", "separable/fp32", "--frames", "1", "--warmup", "0",
             "--no-chain", "--fidelity-images", "0", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "SMOKE RUN on the CPU (not GPU figures)" in out
    row = next(line for line in out.splitlines() if line.startswith("| THA separable fp32 "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) > 0 and float(cells[4]) > 0 and cells[5].endswith("x"), row  # ours, upstream, ratio
    assert "realistic trace" in out
