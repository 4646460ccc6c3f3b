"""GPU set-up checks that run without a GPU: the CUDA major of each installed GPU component (package
metadata), `ezvtb doctor` reporting a disagreement, and the cuda/tensorrt extras pinning one CUDA major.

The installed distributions are real dist-info folders written to a temporary sys.path entry (what pip
leaves behind); onnxruntime's own `cuda_version` attribute is set only where this CPU build has none.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ezvtb.engines.cuda import cuda_major_mismatch, cuda_majors

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``installed(name, version)`` writes a dist-info folder that importlib.metadata finds."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def add(name: str, version: str) -> None:
        d = tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        d.mkdir()
        (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")

    return add


def _no_real_gpu_packages():
    import importlib.metadata as md

    for n in ("cuda-python", "cuda-bindings", "tensorrt-cu12", "tensorrt-cu13", "onnxruntime-gpu"):
        try:
            md.version(n)
        except md.PackageNotFoundError:
            continue
        pytest.skip(f"{n} is really installed here; the test writes its own set")


def test_cuda_majors_read_from_the_installed_packages(installed, monkeypatch):
    import onnxruntime as ort

    _no_real_gpu_packages()
    assert "cuda-python" not in cuda_majors()
    monkeypatch.setattr(ort, "cuda_version", "12.8", raising=False)  # what onnxruntime-gpu 1.2x says
    installed("tensorrt_cu12_libs", "10.16.1.11")
    installed("tensorrt", "10.16.1.11")  # the meta package names no CUDA major
    installed("cuda-bindings", "13.4.4")
    installed("cuda-python", "13.4.4")
    installed("nvidia-cuda-runtime", "13.0.96")
    m = cuda_majors()
    assert {k: v[0] for k, v in m.items()} == {"onnxruntime-gpu": 12, "tensorrt": 12, "cuda-python": 13,
                                               "nvidia-cuda-runtime wheel": 13}, m
    assert m["cuda-python"][1] == "cuda-bindings 13.4.4" and m["tensorrt"][1] == "tensorrt-cu12-libs 10.16.1.11"
    msg = cuda_major_mismatch(m, (12, 8))
    assert "CUDA majors disagree" in msg and "cuda-python (cuda-bindings 13.4.4)" in msg.split("CUDA 13:")[1], msg
    assert "driver supports CUDA up to 12.8" in msg and "cuda-python" in msg.split("driver supports")[1], msg


def test_agreeing_majors_are_no_problem():
    m = {"onnxruntime-gpu": (12, "x"), "tensorrt": (12, "y"), "cuda-python": (12, "z")}
    assert cuda_major_mismatch(m) == "" and cuda_major_mismatch(m, (12, 8)) == ""
    assert cuda_major_mismatch({}, (0, 0)) == ""
    assert "driver supports CUDA up to 12.4" in cuda_major_mismatch({"cuda-python": (13, "z")}, (12, 4))


def test_doctor_reports_a_cuda_major_mismatch(installed, monkeypatch, capsys):
    import onnxruntime as ort

    from ezvtb.cli import main

    _no_real_gpu_packages()
    monkeypatch.setattr(ort, "cuda_version", "12.2", raising=False)
    installed("cuda-python", "13.4.4")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "CUDA builds: onnxruntime-gpu CUDA 12 (onnxruntime" in out and "cuda-python CUDA 13" in out, out
    warning = next(line for line in out.splitlines() if "WARNING" in line)
    assert "CUDA majors disagree" in warning and "cuda-python 13.4.4" in warning


def _extra(name):
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][name]


# CUDA major of each requirement: onnxruntime-gpu on PyPI is built with CUDA 12 up to 1.26 and with
# CUDA 13 from 1.27 (its [cuda] extra requires nvidia-cuda-runtime-cu12 ~=12.0, then nvidia-cuda-runtime ~=13.0;
# 1.31.1's build_and_package_info says cuda_version = '13.0'); tensorrt-cuNN and nvidia-*-cuNN name theirs;
# cuda-python's and cuda-bindings' major is the CUDA major they bind.
def _majors_of(requirement: str) -> set[int]:
    from packaging.requirements import Requirement
    from packaging.version import Version

    r = Requirement(requirement)
    if r.name == "onnxruntime-gpu":
        allowed = [v for v in ("1.21.0", "1.26.0", "1.27.0", "1.31.1") if r.specifier.contains(Version(v))]
        return {12 if Version(v) < Version("1.27") else 13 for v in allowed}
    m = re.search(r"-cu(\d+)$", r.name)
    if m:
        return {int(m.group(1))}
    if r.name in ("cuda-python", "cuda-bindings"):
        return {m for m in (11, 12, 13, 14) if r.specifier.contains(Version(f"{m}.9.0"))}
    return set()


@pytest.mark.parametrize("extra, major", [("cuda", 13), ("tensorrt", 13), ("cuda12", 12), ("tensorrt-cuda12", 12)])
def test_each_gpu_extra_pins_one_cuda_major(extra, major):
    from ezvtb.engines.driver import GPU_EXTRAS

    reqs = _extra(extra)
    majors = {r.split(";")[0].strip(): _majors_of(r) for r in reqs}
    pinned = {k: v for k, v in majors.items() if v}
    assert any(k.startswith(("cuda-python", "cuda-bindings")) for k in pinned)
    assert any(k.startswith("onnxruntime-gpu") for k in pinned)
    assert all(v == {major} for v in pinned.values()), pinned
    names = " ".join(reqs)
    if extra.startswith("tensorrt"):
        assert f"tensorrt-cu{major}" in names and "[cuda,cudnn]" in names, "the TensorRT EP needs CUDA/cuDNN too"
    # preload_dlls (loads the pip-installed CUDA/cuDNN libraries) exists from onnxruntime 1.21
    from packaging.requirements import Requirement
    from packaging.version import Version

    ort = next(Requirement(r) for r in reqs if r.startswith("onnxruntime-gpu"))
    assert not ort.specifier.contains(Version("1.20.2")), ort
    # the extras table doctor and the README use names this extra with this major
    table = {e.name: e.cuda_major for e in GPU_EXTRAS} | {e.tensorrt_name: e.cuda_major for e in GPU_EXTRAS}
    assert table[extra] == major


def test_extras_table_covers_every_gpu_extra():
    from ezvtb.engines.driver import GPU_EXTRAS

    gpu = {k for k, v in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
           .items() if any(r.startswith("onnxruntime-gpu") for r in v)}
    assert gpu == {n for e in GPU_EXTRAS for n in (e.name, e.tensorrt_name)}
    readme = (ROOT / "README.md").read_text()
    for e in GPU_EXTRAS:
        assert f"| `{e.name}` |" in readme and f"| `{e.tensorrt_name}` |" in readme and f"R{e.driver_branch}" in readme


# --- backend fallback under auto ---------------------------------------------------------------------------

def test_open_first_falls_back_on_runtime_and_cuda_errors(caplog):
    import logging

    from ezvtb.engines.cuda import CudaError
    from ezvtb.engines.errors import BackendUnavailableError
    from ezvtb.engines.policy import open_first

    chain = [("trt", "native TensorRT"), ("tensorrt", "TRT EP"), ("cuda", "CUDA EP"), ("auto", "last")]
    failures = {"trt": RuntimeError("tha3/editor: TensorRT's ONNX parser rejected editor.onnx"),
                "tensorrt": CudaError("cudaStreamCreateWithFlags failed: cudaErrorInsufficientDriver"),
                "cuda": BackendUnavailableError("CUDAExecutionProvider did not load")}
    tried = []

    def open_on(backend):
        tried.append(backend)
        if backend in failures:
            raise failures[backend]
        return f"session on {backend}"

    def no_probe(backend):  # the chain names backends this machine lacks: open_on's own errors are under test
        pass

    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        assert open_first(chain, open_on, probe=no_probe) == ("session on auto", "auto", "last")
    assert tried == ["trt", "tensorrt", "cuda", "auto"]
    text = caplog.text
    assert "backend 'trt' (native TensorRT) did not load: RuntimeError: tha3/editor" in text
    assert "CudaError: cudaStreamCreateWithFlags" in text and "trying 'auto'" in text
    with pytest.raises(CudaError):  # the last candidate's error is raised
        open_first([("tensorrt", "requested")], open_on, probe=no_probe)
    with pytest.raises(ValueError):  # not a backend problem: no fallback
        open_first([("trt", "x"), ("auto", "y")], lambda b: (_ for _ in ()).throw(ValueError("bad spec")))


@pytest.mark.slow  # opens the THA3 graphs (exported once, ~2.5 min on 2 cores, then cached)
def test_get_core_falls_back_when_native_tensorrt_fails_to_build(monkeypatch, caplog):
    """get_core under auto: a TensorRT build RuntimeError / CudaError on the first candidate moves on to
    the next (here the CPU, real sessions); the failing GPU part is simulated (no GPU here)."""
    import logging

    from ezvtb import factory, options
    from ezvtb.engines import policy
    from ezvtb.engines.cuda import CudaError

    real = factory.create_session
    tried = []

    def trt_fails(path, spec, backend, **kw):
        tried.append(backend)
        if backend == "trt":
            raise CudaError("cudaStreamCreateWithFlags failed: cudaErrorNoDevice: no CUDA-capable device")
        return real(path, spec, backend, **kw)

    monkeypatch.setattr(factory, "create_session", trt_fails)
    # "trt" is simulated here: the provider check that runs before each candidate opens would refuse it first
    monkeypatch.setattr(policy, "require_backend", lambda backend: None)
    monkeypatch.setattr(options, "backend_chain", lambda backend, use_tensorrt: [
        ("trt", "use_tensorrt=True: native TensorRT"), ("auto", "fallback")] if backend == "auto"
        else [(backend, "requested")])
    opts = dict(use_tensorrt=True, model_half=False, use_interpolation=False, use_cacher=False, threads=1)
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        core = factory.get_core(**opts)
    try:
        assert tried[0] == "trt" and "auto" in tried
        assert core.tha.sessions["editor"].backend == "cpu"
        assert "backend 'trt' (use_tensorrt=True: native TensorRT) did not load: CudaError" in caplog.text
    finally:
        core.close()
    with pytest.raises(CudaError):  # an explicit backend does not fall back
        factory.get_core(**opts, backend="trt")


def test_no_device_reason_names_the_cuda_error_and_a_major_mismatch(monkeypatch):
    """Real cuda-python on a machine without a usable driver: 0 devices, CUDA's own error, and the
    installed-majors hint when onnxruntime-gpu and cuda-python disagree (the R580 driver trap)."""
    import onnxruntime as ort

    from ezvtb.engines import cuda

    try:
        cuda.runtime()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"cuda-python is not installed here ({e})")
    n, why = cuda.device_count()
    if n:
        pytest.skip("a CUDA device answers here")
    assert why.startswith("cudaGetDeviceCount failed: cudaError"), why
    major = cuda_majors()["cuda-python"][0]
    monkeypatch.setattr(ort, "cuda_version", f"{major - 1}.8", raising=False)
    n, why = cuda.device_count()
    assert n == 0 and "CUDA majors disagree" in why and f"CUDA {major}: cuda-python" in why, why
    from ezvtb.engines.errors import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"device_id=0: cudaGetDeviceCount failed: cudaError"):
        cuda.CudaMemory(0)  # what device buffers and native TensorRT hit: a clear reason, not a crash
    major_minor = cuda.driver_cuda_version()
    assert major_minor is not None and major_minor[0] >= 0, major_minor


@pytest.mark.slow  # opens the THA3 and RIFE graphs (exported once, then cached)
def test_a_frame_stage_that_fails_on_thas_backend_falls_back_too(monkeypatch, caplog):
    """THA loads on the first candidate but RIFE does not (TensorRT rejecting one graph): under auto,
    RIFE moves on down the chain instead of failing get_core. The first candidate here is the real CPU
    provider with RIFE's opening made to fail; the second is `auto` (real CPU sessions)."""
    import logging

    import ezvtb.engines as engines
    import ezvtb.stages.rife as rife_stage
    from ezvtb import factory, options

    real = engines.create_session
    tried = []

    def rife_fails_on_cpu(path, spec, backend, **kw):
        if spec.name.startswith("rife"):
            tried.append(backend)
            if backend == "cpu":
                raise RuntimeError(f"{spec.name}: TensorRT's ONNX parser rejected {path}")
        return real(path, spec, backend, **kw)

    monkeypatch.setattr(engines, "create_session", rife_fails_on_cpu)
    monkeypatch.setattr(factory, "create_session", rife_fails_on_cpu)
    monkeypatch.setattr(rife_stage, "create_session", rife_fails_on_cpu)
    monkeypatch.setattr(options, "backend_chain", lambda backend, use_tensorrt: [
        ("cpu", "first candidate"), ("auto", "second candidate")] if backend == "auto" else [(backend, "requested")])
    opts = dict(use_tensorrt=True, model_half=False, interpolation_half=False, use_interpolation=True,
                use_cacher=False, threads=1)
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        core = factory.get_core(**opts)
    try:
        assert tried == ["cpu", "auto"], tried
        assert core.tha.sessions["editor"].backend == "cpu" and core.after[0].session.backend == "cpu"
        assert "backend 'cpu' (first candidate) did not load: RuntimeError: rife_x2" in caplog.text
    finally:
        core.close()
    with pytest.raises(RuntimeError, match="rejected"):  # an explicit backend does not fall back
        factory.get_core(**opts, backend="cpu")


# --- which GPU extra fits this driver (ezvtb.engines.driver) ---------------------------------------------

def test_recommend_extra_follows_the_driver_and_the_gpu():
    from ezvtb.engines.driver import DriverFacts, recommend_extra

    h100 = [("NVIDIA H100 80GB HBM3", (9, 0))]
    extra, why = recommend_extra(DriverFacts("580.159.04", (13, 0), h100, "NVML"))
    assert extra.name == "cuda" and extra.cuda_major == 13, why
    assert "driver 580.159.04 supports CUDA up to 13.0: ezvtb[cuda] / ezvtb[tensorrt] (CUDA 13) fit" in why
    assert "ezvtb[cuda12] (CUDA 12) also runs" in why
    extra, why = recommend_extra(DriverFacts("550.54.15", (12, 4), h100))
    assert extra.name == "cuda12" and "ezvtb[cuda] needs R580+ (CUDA 13)" in why, why
    # CUDA 13 builds nothing for Pascal: the CUDA 12 extra, even on an R580 driver
    extra, why = recommend_extra(DriverFacts("580.95.05", (13, 0), [("NVIDIA GeForce GTX 1080", (6, 1))]))
    assert extra.name == "cuda12" and "CUDA 13 builds nothing for NVIDIA GeForce GTX 1080 (sm 6.1)" in why, why
    extra, why = recommend_extra(DriverFacts("470.82.01", (11, 4), h100))
    assert extra is None and "no GPU extra fits" in why and "R525+" in why, why
    extra, why = recommend_extra(None)
    assert extra is None and "no NVIDIA driver found" in why and "ezvtb[cpu]" in why


def test_driver_facts_on_this_machine_and_from_nvidia_smi(tmp_path, monkeypatch):
    """Without NVML, the facts come from nvidia-smi (a script printing what R580's nvidia-smi prints);
    without either, None. Where a real driver answers, its facts are sane."""
    from ezvtb.engines import driver

    real = driver.driver_facts()
    if real is not None:
        assert real.cuda[0] >= 10 and real.version[:1].isdigit(), real
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   'if [ "$1" = "" ]; then\n'
                   "echo '| NVIDIA-SMI 580.159.04      Driver Version: 580.159.04     CUDA Version: 13.0     |'\n"
                   "else\n"
                   "echo 'NVIDIA H100 80GB HBM3, 580.159.04, 9.0'\n"
                   "echo 'NVIDIA GeForce GTX 1080, 580.159.04, 6.1'\n"
                   "fi\n")
    smi.chmod(0o755)

    def no_nvml():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(driver, "_nvml_library", no_nvml)
    monkeypatch.setenv("PATH", str(tmp_path))
    facts = driver.driver_facts()
    assert facts is not None and facts.source == "nvidia-smi"
    assert (facts.version, facts.cuda) == ("580.159.04", (13, 0))
    assert facts.gpus == [("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA GeForce GTX 1080", (6, 1))]
    assert driver.recommend_extra(facts)[0].name == "cuda12"  # the GTX 1080 decides
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert driver.driver_facts() is None


def test_doctor_names_the_gpu_extra_for_this_machine(capsys):
    from ezvtb.cli import main
    from ezvtb.engines.driver import driver_facts, recommend_extra

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    extra, why = recommend_extra(driver_facts())
    line = next(x for x in out.splitlines() if "GPU extra for this driver:" in x)
    assert line.strip() == f"GPU extra for this driver: {f'ezvtb[{extra.name}]' if extra else 'none'} ({why})"
    assert "cuda-python" in out
