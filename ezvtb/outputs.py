"""Checks every command runs on its outputs before any expensive work.

`check_outputs` refuses an output that is one of the command's inputs (the same file by
resolved path, symlink or hard link: `same_file`), two outputs that are the same file, a suffix
that does not match the format written, an output that is a folder, and a folder that cannot be
created (a file in the way, no write permission). `check_fps` refuses a frame rate that is not a
finite number in (0, MAX_FPS]. `rescue` keeps a finished result that could not be written where
asked (frames as .npy in a folder that has room) and says where.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger("ezvtb.outputs")

MAX_FPS = 1000.0


def check_fps(fps: object, what: str = "--fps") -> float:
    """`fps` as a float: a finite number in (0, MAX_FPS]; ValueError naming `what` otherwise."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise ValueError(f"{what}: expected a frame rate in (0, {MAX_FPS:g}], got {fps!r}")
    return float(fps)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name one file: equal resolved paths, or the same inode (hard/sym links)."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError):
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist: not the same existing file
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def check_folder(path: str | os.PathLike, what: str) -> None:
    """The folder of output `path` exists or can be created, and can be written."""
    parent = Path(path).parent if str(Path(path).parent) else Path(".")
    anc = parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{what}: {str(anc)!r} is a file, so the folder {str(parent)!r} for {str(path)!r} "
                         f"cannot exist")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ValueError(f"{what}: no permission to write in {str(anc)!r} (for {str(path)!r})")


def check_outputs(outputs: Iterable[tuple[str, Any]], inputs: Iterable[tuple[str, Any]] = (),
                  suffixes: dict[str, Sequence[str]] | None = None, folders: Iterable[str] = ()) -> None:
    """Refuse outputs that overwrite inputs or each other, have the wrong suffix, or cannot be written.

    outputs / inputs: (what, path) pairs, `what` being the argument that named the path (``--out``);
    None paths are skipped. An input may be a folder (a model folder): an existing file inside
    it is an input too. suffixes: {what: allowed suffixes (lower case, '' = no suffix)}.
    folders: the `what`s whose output is a folder (allowed to exist as one).
    """
    outs = [(w, Path(p)) for w, p in outputs if p is not None and str(p) != ""]
    ins = [(w, Path(p)) for w, p in inputs if p is not None and str(p) != ""]
    folders = set(folders)
    for k, (what, out) in enumerate(outs):
        allowed = (suffixes or {}).get(what)
        if allowed is not None and out.suffix.lower() not in allowed:
            names = " or ".join(s if s else "a folder (no suffix)" for s in allowed)
            raise ValueError(f"{what}: expected a path ending in {names}, got {str(out)!r}")
        if out.is_dir() and what not in folders:
            raise ValueError(f"{what}: {str(out)!r} is a folder; expected a file name")
        if out.exists() and not out.is_dir() and what in folders:
            raise ValueError(f"{what}: {str(out)!r} is a file; expected a folder")
        check_folder(out, what)
        for in_what, inp in ins:
            clash = same_file(out, inp) or (inp.is_dir() and out.exists() and not out.is_dir() and _inside(out, inp))
            if clash:
                raise ValueError(f"{what}: {str(out)!r} is the input {in_what} ({str(inp)!r}); "
                                 f"ezvtb never writes over its own inputs, pick another output")
        for other_what, other in outs[:k]:
            if same_file(out, other):
                raise ValueError(f"{what}: {str(out)!r} is also the output {other_what} ({str(other)!r})")


def rescue(frames, error: BaseException, what: str, path: str | os.PathLike) -> str:
    """Save `frames` (a numpy array) as .npy where there is room; a message saying where.

    Tries the output's folder, then the temporary folder; the caller raises with the message.
    """
    import numpy as np

    from ezvtb.atomic import atomic_write

    name = f"{Path(path).stem or 'ezvtb'}-rescued-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.npy"
    for folder in (Path(path).parent, Path(tempfile.gettempdir())):
        target = folder / name
        try:
            with atomic_write(target) as f:
                np.save(f, np.asarray(frames))
        except OSError as e:
            log.warning("could not keep the result in %s either: %s", folder, e)
            continue
        return (f"{what}: could not write {str(path)!r} ({error}); the generated frames are kept in "
                f"{str(target)!r} (numpy .npy, load with numpy.load)")
    return f"{what}: could not write {str(path)!r} ({error}), and no folder had room for the frames"
