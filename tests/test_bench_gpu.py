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


@pytest.fixture(scope="module")
def toy_probe(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    from ezvtb.engines.base import GraphSpec, TensorSpec

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    p = tmp_path_factory.mktemp("probe") / "probe.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), p)
    return p, GraphSpec("probe", (TensorSpec("x", (1, 4), "float32"),), (TensorSpec("y", (1, 4), "float32"),))


def test_resolve_backend_opens_each_candidate_like_get_core(toy_probe, monkeypatch, caplog):
    """onnxruntime-gpu lists the TensorRT and CUDA EPs even when their libraries do not load: a listed
    provider must not be picked; each candidate is opened (real ORT sessions) and the chain ends on the
    CPU here, so the benchmark gets no GPU backend instead of crashing on 'tensorrt'."""
    import logging

    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here")
    sys.path.insert(0, str(SCRIPT.parent))
    import bench_gpu

    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", *real()])
    from ezvtb.engines.policy import backend_chain

    assert [b for b, _ in backend_chain("auto", True)] == ["tensorrt", "cuda", "auto"]  # listed, not loadable
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        backend, why = bench_gpu.resolve_backend("auto", 0, toy_probe)
    assert backend is None and why.startswith("only the CPU loaded"), why
    assert "backend 'tensorrt' (use_tensorrt=True: ONNX Runtime's TensorRT EP" in caplog.text
    assert "TensorrtExecutionProvider did not load" in caplog.text
    assert "trying 'cuda'" in caplog.text and "trying 'auto'" in caplog.text
    backend, why = bench_gpu.resolve_backend("tensorrt", 0, toy_probe)  # explicit: no fallback, no crash
    assert backend is None and "TensorrtExecutionProvider did not load" in why, why
    assert bench_gpu.resolve_backend("cpu", 0, toy_probe)[0] is None
