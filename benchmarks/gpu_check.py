"""The GPU check, on a lent GPU box without network: stash the carried kit parts, then install and run.

    python3 benchmarks/gpu_check.py [PART_FOLDER ...] [--kit DIR] [--run auto|yes|no] [--budget-s 330]

Each call stashes the part folders it is given (made by benchmarks/gpu_prepare.py, carried by the device
call) in ``--kit`` (default /var/tmp/ezvtb-gpukit: the box's disk, kept while the machine stays warm) and
says which parts are still missing. Once all are there (``--run auto``, the default; ``--run yes`` insists,
``no`` only stashes) it:

1. stops at once, saying so, where no NVIDIA driver or GPU answers (NVML / nvidia-smi);
2. joins the parts (sha256 checked), extracts them, installs the wheels and ezvtb from this tree with
   ``pip install --no-index --no-deps --target`` and puts those folders on PYTHONPATH, the image's
   nvidia-* CUDA 13 libraries on LD_LIBRARY_PATH and the carried weights and graphs in EZVTB_HOME;
3. prints ``ezvtb doctor``, exports the RIFE and SR graphs with the box's torch (in parallel; the THA3
   graphs travel), runs tests/test_gpu.py (CUDA EP tests; the TensorRT ones skip naming what is missing)
   and benchmarks/bench_gpu.py on the CUDA EP against upstream tha3 eager on the same GPU, each within
   what is left of ``--budget-s``;
4. writes gpu_check.log, doctor.txt, export.txt, test_gpu.txt, bench_gpu.txt and summary.txt under
   ``$OUT`` (else ``KIT/out``).

Exit status: 0 when every step passed (or parts are still missing), 1 when a step failed, 2 for a usage
problem, 3 when there is no GPU.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpukit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = 3
# The steps after the install: ezvtb doctor, the RIFE/SR graph export, tests/test_gpu.py, bench_gpu (CUDA EP).
STEPS = ("doctor", "export", "tests", "bench")


class Log:
    """Prints and keeps a copy in OUT/gpu_check.log."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.f = open(out / "gpu_check.log", "a", buffering=1)

    def __call__(self, msg: str = "") -> None:
        print(msg, flush=True)
        self.f.write(msg + "\n")


def driver_module():
    """ezvtb.engines.driver from this tree, loaded by path (it needs nothing installed)."""
    spec = importlib.util.spec_from_file_location("_ezvtb_driver", ROOT / "ezvtb" / "engines" / "driver.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def nvidia_lib_dirs() -> list[str]:
    """The lib folders of the nvidia-* wheels this Python has (CUDA 13: nvidia/cu13/lib, nvidia/cudnn/lib)."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels
    except ImportError:
        return []
    return sorted(str(p) for base in nvidia.__path__ for p in Path(base).glob("*/lib") if p.is_dir())


def run_step(log: Log, name: str, cmd: list[str], out_file: Path, seconds: float, env: dict, cwd: Path) -> dict:
    """Run one step, streaming its output to the log and `out_file`; killed when `seconds` run out."""
    log(f"\n=== {name}: {' '.join(cmd)} (at most {seconds:.0f} s)")
    t0 = time.monotonic()
    with open(out_file, "w", buffering=1) as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)

        def pump():
            for line in p.stdout:
                f.write(line)
                log(line.rstrip("\n"))

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        try:
            rc = p.wait(timeout=seconds)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            status = f"stopped after {seconds:.0f} s"
        t.join(timeout=10)
    return {"step": name, "status": status, "seconds": time.monotonic() - t0}


# The RIFE and SR graphs the tests and the benchmark open (exported on the box unless the carried files hold
# them already: a cache hit is instant): (kind, precision) -> the call, as create_rife_stage / create_sr_stage make it
# on a GPU backend (RIFE flow at full size; SR x4 = animevideov3 on the default region, x2 = UpConv7 noise 1).
GRAPHS = [("rife", "fp32"), ("rife", "fp16"), ("sr_x4", "fp32"), ("sr_x4", "fp16"), ("sr_x2", "fp32"),
          ("sr_x2", "fp16")]


def export_one(job: tuple[str, str], threads: int) -> str:
    """Export (or find cached) one graph of `GRAPHS`; returns a line saying which and how long."""
    import torch

    torch.set_num_threads(threads)
    kind, precision = job
    t0 = time.monotonic()
    if kind == "rife":
        from ezvtb.export.rife import rife_graph

        path = rife_graph(2, precision, None, flow_scale=1.0).path
    else:
        from ezvtb.export.sr import sr_graph
        from ezvtb.stages.sr import check_sr_options

        o = check_sr_options(kind == "sr_x4", precision == "fp16", 1, None, "model", None)
        path = sr_graph(o["model"], o["noise"], o["precision"], o["alpha"], size=o["size"]).path
    return f"{kind} {precision}: {path.name} in {time.monotonic() - t0:.1f} s"


def export_graphs() -> int:
    """Export `GRAPHS` in parallel processes (the box has many cores; one export uses few)."""
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // len(GRAPHS))
    with ProcessPoolExecutor(len(GRAPHS)) as pool:
        for line in pool.map(export_one, GRAPHS, [threads] * len(GRAPHS)):
            print(line, flush=True)
    return 0


def install(log: Log, kit: Path) -> tuple[dict, dict]:
    """Join, extract and install the payload; returns (the children's environment, the step record)."""
    t0 = time.monotonic()
    tar = gpukit.join_parts(kit)
    payload = gpukit.extract(tar, kit / "payload")
    log(f"payload joined and extracted ({tar.stat().st_size / 1e6:.1f} MB, sha256 checked) in "
        f"{time.monotonic() - t0:.1f} s")
    site = kit / "site"
    stamp = site / ".installed"
    digest = gpukit.read_manifest(kit)["sha256"]
    if not (stamp.is_file() and stamp.read_text() == digest):
        if site.exists():
            shutil.rmtree(site)
        names = gpukit.install_wheels(payload / "wheels", site)
        stamp.write_text(digest)
        log(f"installed offline into {site}: {', '.join(names)}")
    ezvtb_site = kit / "ezvtb-site"
    if ezvtb_site.exists():
        shutil.rmtree(ezvtb_site)
    r = gpukit.pip_install([str(ROOT)], ezvtb_site, "--no-build-isolation")
    if r.returncode == 0:
        log(f"installed ezvtb from {ROOT} into {ezvtb_site}")
        code = [str(ezvtb_site)]
    else:
        log(f"pip could not build ezvtb from the tree here ({(r.stderr or r.stdout).strip()[-300:]}); "
            f"using the tree itself on PYTHONPATH")
        code = [str(ROOT)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(code + [str(site), str(payload / "upstream")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(nvidia_lib_dirs() + ([env["LD_LIBRARY_PATH"]]
                                                                  if env.get("LD_LIBRARY_PATH") else []))
    env["EZVTB_HOME"] = str(payload / "home")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    log(f"PYTHONPATH={env['PYTHONPATH']}\nLD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}\nEZVTB_HOME={env['EZVTB_HOME']}")
    return env, {"step": "install", "status": "ok", "seconds": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", help="part folders carried by this call (benchmarks/gpu_prepare.py)")
    ap.add_argument("--kit", default=os.environ.get("EZVTB_GPUKIT", "/var/tmp/ezvtb-gpukit"))
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default $OUT, else KIT/out)")
    ap.add_argument("--run", choices=("auto", "yes", "no"), default="auto")
    ap.add_argument("--budget-s", type=float, default=330.0, help="seconds for install, doctor, tests and bench")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma list of the steps to run (default: all, "
                                                              f"{','.join(STEPS)})")
    ap.add_argument("--export-graphs", action="store_true", help=argparse.SUPPRESS)  # the check's export step
    a = ap.parse_args(argv)
    if a.export_graphs:
        return export_graphs()
    steps_wanted = [x.strip() for x in a.steps.split(",") if x.strip()]
    if not steps_wanted or set(steps_wanted) - set(STEPS):
        ap.error(f"--steps: expected some of {list(STEPS)}, got {a.steps!r}")
    t_start = time.monotonic()
    kit = Path(a.kit)
    out = Path(a.out) if a.out else kit / "out"
    log = Log(out)

    for folder in a.parts:
        if not Path(folder).is_dir():
            log(f"gpu_check: {folder}: no such folder (was it named in the call's carry list?)")
            return 2
        copied = gpukit.stash(folder, kit)
        log(f"stashed {', '.join(copied) or 'nothing'} from {folder} in {kit}/parts")
    try:
        missing = gpukit.missing_parts(kit)
    except FileNotFoundError:
        log(f"gpu_check: nothing stashed in {kit} yet: pass a part folder made by benchmarks/gpu_prepare.py")
        return 2
    total = len(gpukit.read_manifest(kit)["parts"])
    if missing:
        log(f"have {total - len(missing)} of {total} parts; still to carry: "
            f"{', '.join(p['folder'] for p in missing)}")
        if a.run == "yes":
            log("gpu_check: --run yes, but parts are missing (the machine may have been given back between calls)")
            return 2
        return 0
    if a.run == "no":
        log(f"all {total} parts are stashed")
        return 0

    driver = driver_module()
    facts = driver.driver_facts()
    if facts is None or not facts.gpus:
        why = driver.recommend_extra(facts)[1] if facts is None else f"driver {facts.version} lists no GPU"
        log(f"gpu_check: no NVIDIA GPU here ({why}); stopping before the install: nothing to check")
        return NO_GPU
    extra, why = driver.recommend_extra(facts)
    log(f"GPU: {', '.join(n for n, _ in facts.gpus)}; driver {facts.version}, CUDA {facts.cuda[0]}.{facts.cuda[1]} "
        f"({facts.source}); {why}")

    try:
        env, record = install(log, kit)
    except (OSError, ValueError, RuntimeError) as e:  # a damaged payload, pip refusing a wheel, a full disk
        log(f"gpu_check: the install failed: {type(e).__name__}: {e}")
        (out / "summary.txt").write_text(f"install failed: {type(e).__name__}: {e}\n")
        return 1
    steps = [record]
    py = [sys.executable, "-P"]  # -P: the installed ezvtb, not the tree through the working folder
    plan = [
        ("doctor", py + ["-m", "ezvtb", "doctor"], "doctor.txt", 60, kit),
        ("export", py + [str(Path(__file__).resolve()), "--export-graphs"], "export.txt", 150, kit),
        ("tests", py + ["-m", "pytest", "tests/test_gpu.py", "-v", "-rs", "-p", "no:cacheprovider"],
         "test_gpu.txt", 120, ROOT),
        ("bench", py + ["benchmarks/bench_gpu.py", "--backend", "cuda", "--configs",
                                      "separable/fp32,separable/fp16", "--frames", str(a.frames), "--warmup",
                                      str(a.warmup), "--fidelity-images", "1"], "bench_gpu.txt", 10_000, ROOT),
    ]
    for name, cmd, fname, cap, cwd in plan:
        if name not in steps_wanted:
            continue
        left = a.budget_s - (time.monotonic() - t_start)
        if left < 20:
            log(f"\n=== {name}: skipped, {left:.0f} s of the budget left")
            steps.append({"step": name, "status": "skipped (budget)", "seconds": 0.0})
            continue
        steps.append(run_step(log, name, cmd, out / fname, min(cap, left), env, cwd))

    lines = [f"{s['step']:<22} {s['status']:<24} {s['seconds']:7.1f} s" for s in steps]
    tests = (out / "test_gpu.txt")
    if tests.is_file():
        tail = [x for x in tests.read_text().splitlines() if x.startswith("=") and (" passed" in x or " failed" in x
                                                                                 or " skipped" in x)]
        lines += [f"pytest: {tail[-1].strip('= ')}"] if tail else []
    lines.append(f"total {time.monotonic() - t_start:.1f} s")
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    log("\n=== summary\n" + "\n".join(lines))
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
