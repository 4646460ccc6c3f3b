"""The GPU check kit on a CPU machine: parts join back byte for byte, a prepared kit installs offline into a
scratch target, and the check stops early, saying why, where no GPU answers.

The wheel that travels here is ezvtb's own, built from this tree offline (``pip wheel --no-index
--no-build-isolation``); the real kit carries onnxruntime-gpu and the weights the same way.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpukit  # noqa: E402


def _py(*args, cwd=ROOT, env=None, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("size", [1_000_123, 4 * 65536])
def test_split_and_join_round_trip_is_byte_exact(tmp_path, size):
    data = os.urandom(size)
    src = tmp_path / "payload.tar"
    src.write_bytes(data)
    part = 65536 * 4 if size > 4 * 65536 else 65536  # the last part short / every part full
    m = gpukit.split_file(src, tmp_path / "parts", part)
    n = len(m["parts"])
    assert n == -(-size // part) == 4 and sum(p["size"] for p in m["parts"]) == size
    assert [p["name"] for p in m["parts"]] == [f"payload.tar.part{i:02d}of{n:02d}" for i in range(1, n + 1)]
    kit = tmp_path / "kit"
    for p in reversed(m["parts"][1:]):  # any order
        gpukit.stash(tmp_path / "parts" / p["folder"], kit)
    assert [p["name"] for p in gpukit.missing_parts(kit)] == [m["parts"][0]["name"]]
    with pytest.raises(FileNotFoundError, match=r"parts missing: \['payload.tar.part01of0\d'\].*part01"):
        gpukit.join_parts(kit)
    gpukit.stash(tmp_path / "parts" / "part01", kit)
    joined = gpukit.join_parts(kit)
    assert joined.read_bytes() == data and gpukit.sha256_file(joined) == m["sha256"]


def test_a_damaged_part_is_refused_and_another_payload_replaces_the_old(tmp_path):
    src = tmp_path / "payload.tar"
    src.write_bytes(os.urandom(300_000))
    m = gpukit.split_file(src, tmp_path / "a", 100_000)
    part = tmp_path / "a" / "part02" / m["parts"][1]["name"]
    good = part.read_bytes()
    part.write_bytes(good[:500] + bytes([good[500] ^ 1]) + good[501:])
    kit = tmp_path / "kit"
    with pytest.raises(ValueError, match="damaged in transit: carry it again"):
        gpukit.stash(tmp_path / "a" / "part02", kit)
    assert not (kit / "parts" / m["parts"][1]["name"]).exists()
    gpukit.stash(tmp_path / "a" / "part01", kit)
    src.write_bytes(os.urandom(150_000))  # a new payload: the old parts go
    m2 = gpukit.split_file(src, tmp_path / "b", 100_000)
    gpukit.stash(tmp_path / "b" / "part02", kit)
    assert sorted(p.name for p in (kit / "parts").iterdir()) == [m2["parts"][1]["name"]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A kit made by gpu_prepare.py from ezvtb's own wheel, in parts of 64 KiB; (kit folder, its output)."""
    tmp = tmp_path_factory.mktemp("gpukit")
    wheels = tmp / "wheels"
    r = _py("-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(wheels), str(ROOT),
            timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot build ezvtb's wheel offline here: {(r.stderr or r.stdout).strip()[-300:]}")
    dest = tmp / "kit-parts"
    r = _py("benchmarks/gpu_prepare.py", "--wheels-from", str(wheels), "--no-weights", "--part-mib", "0.0625",
            "--dest", str(dest))
    assert r.returncode == 0, r.stderr[-2000:]
    return dest, r.stdout


def test_prepare_prints_the_calls_and_the_kit_installs_offline(prepared, tmp_path):
    dest, out = prepared
    folders = sorted(p for p in dest.iterdir() if p.is_dir())
    n = len(folders)
    assert n >= 3 and [f.name for f in folders] == [f"part{i:02d}" for i in range(1, n + 1)]
    assert f"in {n} part(s) of at most 0.1 MiB" in out
    for i, f in enumerate(folders, 1):
        rel = os.path.relpath(f, ROOT)
        assert f"  {i}. run(carry=['{rel}'], timeout_s={600 if i == n else 120}, command='PYTHONUNBUFFERED=1 " \
               f"python3 benchmarks/gpu_check.py {rel}')" in out, out
    kit, results = tmp_path / "kit", tmp_path / "out"
    for i, f in enumerate(folders, 1):  # one device call each, stashing only
        r = _py("benchmarks/gpu_check.py", str(f), "--kit", str(kit), "--out", str(results), "--run", "no")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (f"have {i} of {n} parts" if i < n else f"all {n} parts are stashed") in r.stdout
    import gpu_check  # the box's install step: join, extract, pip install --no-index --target, environment

    env, record = gpu_check.install(gpu_check.Log(results), kit)
    assert record["status"] == "ok"
    payload = kit / "payload"
    assert len(list((kit / "site").glob("ezvtb-*.dist-info"))) == 1 and (kit / "site" / ".installed").is_file()
    assert env["EZVTB_HOME"] == str(payload / "home")
    assert env["PYTHONPATH"].split(os.pathsep)[:3] == [str(kit / "ezvtb-site"), str(kit / "site"),
                                                      str(payload / "upstream")]
    r = _py("-P", "-c", "import ezvtb, ezvtb.engines.driver as d; print(ezvtb.__file__, d.GPU_EXTRAS[0].name)",
            cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == str(kit / "ezvtb-site" / "ezvtb" / "__init__.py") and r.stdout.split()[1] == "cuda"
    target = tmp_path / "scratch"
    assert gpukit.install_wheels(payload / "wheels", target) == [p.name for p in (payload / "wheels").glob("*.whl")]
    assert (target / "ezvtb" / "engines" / "driver.py").read_bytes() == (ROOT / "ezvtb/engines/driver.py").read_bytes()
    with pytest.raises(FileNotFoundError, match="no wheels"):
        gpukit.install_wheels(tmp_path / "nothing", target)


def test_without_a_gpu_the_check_stops_before_the_install(prepared, tmp_path):
    sys.path.insert(0, str(ROOT))
    from ezvtb.engines.driver import driver_facts

    if driver_facts() is not None:
        pytest.skip("an NVIDIA driver answers here: the check would run")
    dest, _ = prepared
    kit = tmp_path / "kit"
    r = _py("benchmarks/gpu_check.py", *sorted(str(p) for p in dest.iterdir() if p.is_dir()), "--kit", str(kit),
            "--out", str(tmp_path / "out"))
    assert r.returncode == 3, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu_check: no NVIDIA GPU here (no NVIDIA driver found") and "nothing to check" in last
    assert not (kit / "payload").exists() and not (kit / "site").exists(), "stopped before joining and installing"
    assert (tmp_path / "out" / "gpu_check.log").read_text().strip().splitlines()[-1] == last


def test_check_and_prepare_name_their_argument_problems(tmp_path):
    r = _py("benchmarks/gpu_check.py", "--kit", str(tmp_path / "kit"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "nothing stashed" in r.stdout
    r = _py("benchmarks/gpu_check.py", "--steps", "doctor,benchmark", "--kit", str(tmp_path / "kit"))
    assert r.returncode == 2 and "--steps: expected some of ['doctor', 'export', 'tests', 'bench']" in r.stderr
    r = _py("benchmarks/gpu_check.py", str(tmp_path / "nope"), "--kit", str(tmp_path / "kit"), "--out", str(tmp_path))
    assert r.returncode == 2 and "no such folder (was it named in the call's carry list?)" in r.stdout
    r = _py("benchmarks/gpu_prepare.py", "--part-mib", "64", "--dest", str(tmp_path / "k"))
    assert r.returncode == 2 and "--part-mib: 64.0 MiB does not fit" in r.stderr and "the tree takes" in r.stderr
    r = _py("benchmarks/gpu_prepare.py", "--dest", str(ROOT / "benchmarks" / "kit-here"))
    assert r.returncode == 2 and "is not ignored by git" in r.stderr
    assert not (ROOT / "benchmarks" / "kit-here").exists()


@pytest.mark.slow  # installs, then a doctor, a pytest and a benchmark process: about 1.5 minutes on 2 cores
def test_the_run_phase_end_to_end_with_a_driver_that_answers(prepared, tmp_path):
    """The whole check after the GPU probe, on this CPU: an nvidia-smi printing what R580's prints lets the
    probe pass; then install, doctor, tests/test_gpu.py (every test skips: no CUDA EP here) and bench_gpu (one
    'skipped' line) run as steps with their output under OUT and a summary."""
    dest, _ = prepared
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n"
                   'if [ "$1" = "" ]; then echo "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   '
                   'CUDA Version: 13.0 |"\n'
                   'else echo "NVIDIA H100 80GB HBM3, 580.159.04, 9.0"; fi\n')
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "out"
    r = _py("benchmarks/gpu_check.py", *sorted(str(p) for p in dest.iterdir() if p.is_dir()), "--kit",
            str(tmp_path / "kit"), "--out", str(out), "--budget-s", "400", "--steps", "doctor,tests,bench", env=env,
            timeout=900)
    assert "GPU: NVIDIA H100 80GB HBM3; driver 580.159.04, CUDA 13.0 (nvidia-smi); driver 580.159.04 supports " \
           "CUDA up to 13.0: ezvtb[cuda] / ezvtb[tensorrt] (CUDA 13) fit" in r.stdout, r.stdout[-3000:]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary[:4]] == ["install", "doctor", "tests", "bench"]  # export: not asked
    assert all(" ok " in line for line in summary[:4]), summary
    assert summary[4].startswith("pytest: ") and " skipped" in summary[4] and "failed" not in summary[4], summary
    doctor = (out / "doctor.txt").read_text()
    assert "GPU extra for this driver: ezvtb[cuda]" in doctor and str(tmp_path / "kit" / "payload" / "home") in doctor
    assert "no CUDAExecutionProvider" in (out / "test_gpu.txt").read_text()
    assert (out / "bench_gpu.txt").read_text().startswith("bench_gpu: skipped: no CUDA device")
    assert sorted(p.name for p in out.iterdir()) == ["bench_gpu.txt", "doctor.txt", "gpu_check.log", "summary.txt",
                                                     "test_gpu.txt"]  # at most 8 files come back from $OUT


def test_a_failed_install_is_reported_not_a_traceback(tmp_path, monkeypatch):
    """A payload whose wheel pip refuses: the check says so in its log and summary and exits 1."""
    import tarfile

    import gpu_check

    stage = tmp_path / "stage" / "wheels"
    stage.mkdir(parents=True)
    (stage / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip archive")
    tar = tmp_path / "payload.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(stage, "wheels")
    gpukit.split_file(tar, tmp_path / "parts", 1 << 20)
    kit, out = tmp_path / "kit", tmp_path / "out"
    gpukit.stash(tmp_path / "parts" / "part01", kit)
    driver = gpu_check.driver_module()
    facts = driver.DriverFacts("580.159.04", (13, 0), [("NVIDIA H100 80GB HBM3", (9, 0))], "test")
    monkeypatch.setattr(driver, "driver_facts", lambda: facts)  # the GPU probe passes; nothing else is replaced
    monkeypatch.setattr(gpu_check, "driver_module", lambda: driver)
    assert gpu_check.main(["--kit", str(kit), "--out", str(out)]) == 1
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("install failed: RuntimeError: pip install --no-index into") and "broken" in summary
    assert "gpu_check: the install failed: RuntimeError" in (out / "gpu_check.log").read_text()


def test_the_wheels_that_travel_are_the_base_dependencies_the_image_lacks():
    import importlib.metadata as md
    import tomllib

    import gpu_prepare

    lacks = gpu_prepare.image_lacks()
    assert "lmdb==" + md.version("lmdb") in lacks and "platformdirs==" + md.version("platformdirs") in lacks
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip().lower() for d in deps}
    assert names == gpu_prepare.IMAGE_HAS | gpu_prepare.NOT_NEEDED | {x.split("==")[0] for x in lacks}
