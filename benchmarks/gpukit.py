"""The GPU check kit: one payload (wheels, weights, graphs, upstream code) carried to an offline GPU box in parts.

A lent GPU machine takes at most 64 MiB per command (the repository's tree included) and keeps its disk only
while it stays warm, so `gpu_prepare.py` (on a CPU machine with PyPI) packs everything the check needs into
one uncompressed tar, records its sha256 and each part's in ``manifest.json``, and splits it into numbered
parts, one folder per device call. `gpu_check.py` (on the GPU machine) stashes each carried part in a folder
on that machine's disk, and once all are there joins them (byte-exact, checked against the manifest),
extracts the tar and installs its wheels offline (``pip install --no-index --no-deps --target``).

Standard library only: it runs on the GPU box before anything is installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
PAYLOAD = "payload.tar"
DEVICE_LIMIT = 64 * 1024**2  # what one device call may carry, the repository's tree included


def sha256_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def part_name(i: int, n: int) -> str:
    """The file name of part i (1-based) of n: ``payload.tar.part03of07``."""
    return f"{PAYLOAD}.part{i:02d}of{n:02d}"


def split_file(path: str | os.PathLike, dest: str | os.PathLike, part_bytes: int,
               folder_name: str = "part{i:02d}") -> dict:
    """Split `path` into parts of at most `part_bytes`, each in its own folder ``dest/part01/`` ... with a
    copy of the manifest; returns the manifest (sha256 and size of the whole and of each part)."""
    path, dest = Path(path), Path(dest)
    if part_bytes <= 0:
        raise ValueError(f"part_bytes: expected a positive size, got {part_bytes}")
    size = path.stat().st_size
    n = max(1, -(-size // part_bytes))
    manifest = {"payload": PAYLOAD, "size": size, "sha256": sha256_file(path), "part_bytes": part_bytes,
                "parts": []}
    with open(path, "rb") as src:
        for i in range(1, n + 1):
            folder = dest / folder_name.format(i=i)
            folder.mkdir(parents=True, exist_ok=True)
            name = part_name(i, n)
            h = hashlib.sha256()
            written = 0
            with open(folder / name, "wb") as out:
                while written < part_bytes and (b := src.read(min(1 << 20, part_bytes - written))):
                    h.update(b)
                    out.write(b)
                    written += len(b)
            manifest["parts"].append({"name": name, "folder": folder.name, "size": written, "sha256": h.hexdigest()})
    for p in manifest["parts"]:
        (dest / p["folder"] / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no {MANIFEST} (a part folder made by benchmarks/gpu_prepare.py holds one)")
    return json.loads(p.read_text())


def stash(part_folder: str | os.PathLike, kit: str | os.PathLike) -> list[str]:
    """Copy the parts found in `part_folder` into ``kit/parts/`` after checking each one's sha256; returns
    the names copied. A kit holding parts of another payload is emptied first."""
    part_folder, kit = Path(part_folder), Path(kit)
    manifest = read_manifest(part_folder)
    parts = kit / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    if (kit / MANIFEST).is_file() and read_manifest(kit)["sha256"] != manifest["sha256"]:
        shutil.rmtree(parts)
        parts.mkdir()
        for old in (kit / PAYLOAD, kit / "payload"):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
    (kit / MANIFEST).write_text(json.dumps(manifest, indent=1))
    copied = []
    for p in manifest["parts"]:
        src = part_folder / p["name"]
        if not src.is_file():
            continue
        digest = sha256_file(src)
        if digest != p["sha256"] or src.stat().st_size != p["size"]:
            raise ValueError(f"{src}: sha256 {digest} / {src.stat().st_size} bytes, expected {p['sha256']} / "
                             f"{p['size']} (damaged in transit: carry it again)")
        tmp = parts / (p["name"] + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, parts / p["name"])
        copied.append(p["name"])
    return copied


def missing_parts(kit: str | os.PathLike) -> list[dict]:
    """The manifest entries of the parts not (or not completely) in ``kit/parts/``."""
    kit = Path(kit)
    manifest = read_manifest(kit)
    return [p for p in manifest["parts"]
            if not ((kit / "parts" / p["name"]).is_file() and (kit / "parts" / p["name"]).stat().st_size == p["size"])]


def join_parts(kit: str | os.PathLike) -> Path:
    """Reassemble ``kit/payload.tar`` from its parts and check its sha256; returns its path."""
    kit = Path(kit)
    manifest = read_manifest(kit)
    out = kit / PAYLOAD
    if out.is_file() and out.stat().st_size == manifest["size"] and sha256_file(out) == manifest["sha256"]:
        return out
    missing = missing_parts(kit)
    if missing:
        raise FileNotFoundError(f"{kit}: parts missing: {[p['name'] for p in missing]} (carry their folders "
                                f"{[p['folder'] for p in missing]} again)")
    tmp = kit / (PAYLOAD + ".tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in manifest["parts"]:
            with open(kit / "parts" / p["name"], "rb") as src:
                while b := src.read(1 << 20):
                    h.update(b)
                    f.write(b)
    if h.hexdigest() != manifest["sha256"]:
        tmp.unlink()
        raise ValueError(f"{out}: the joined parts' sha256 {h.hexdigest()} is not the payload's "
                         f"{manifest['sha256']}")
    os.replace(tmp, out)
    return out


def extract(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract the payload tar into `dest` (members may not leave it); a finished extraction is kept."""
    tar_path, dest = Path(tar_path), Path(dest)
    stamp = dest / ".extracted"
    digest = sha256_file(tar_path)
    if stamp.is_file() and stamp.read_text() == digest:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tar_path) as tf:
        root = dest.resolve()
        for m in tf.getmembers():
            target = (dest / m.name).resolve()
            if not (target == root or root in target.parents) or not (m.isfile() or m.isdir()):
                raise ValueError(f"{tar_path}: member {m.name!r} is not a plain file or folder inside the payload")
        tf.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    stamp.write_text(digest)
    return dest


def pip_install(what: list[str], target: str | os.PathLike, *extra: str) -> subprocess.CompletedProcess:
    """``pip install --no-index --no-deps --target`` (never the network); the completed process."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(target), *extra, *what]
    return subprocess.run(cmd, capture_output=True, text=True)


def install_wheels(folder: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Install every wheel in `folder` into `target` offline; returns their file names. Raises naming pip's
    complaint when one does not install."""
    wheels = sorted(str(p) for p in Path(folder).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"{folder}: no wheels to install")
    r = pip_install(wheels, target)
    if r.returncode != 0:
        raise RuntimeError(f"pip install --no-index into {target} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-1500:]}")
    return [Path(w).name for w in wheels]
