"""Output cache: THA frames served again for poses seen before (RAM LRU or LMDB, JPEG or lossless).

`create_output_cache(...)` builds an `OutputCache` from `get_core`'s cacher options;
`check_cacher_options(...)` validates them without touching the disk (called before any export).
Modules: `codec` (blob format, JPEG and lossless codecs), `keys` (blake2b keys), `ram`
(`RamStore`), `lmdb_store` (`LmdbStore`), `output_cache` (`OutputCache`). No torch import.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ezvtb.cache.codec import JpegCodec, LosslessCodec, lossless_codec, make_codec
from ezvtb.cache.keys import FrameKeys, character_digest
from ezvtb.cache.output_cache import OutputCache
from ezvtb.cache.ram import RamStore

GB = 1024**3

__all__ = ["OutputCache", "RamStore", "JpegCodec", "LosslessCodec", "FrameKeys", "character_digest",
           "make_codec", "lossless_codec", "check_cacher_options", "create_output_cache",
           "default_db_path"]


def default_db_path() -> Path:
    """Where `cacher_on_database=True` keeps its LMDB environment without `cacher_db_path`."""
    from ezvtb import paths

    return paths.home() / "output_cache.lmdb"


def check_cacher_options(cacher_quality: Any, cacher_ram_size: Any, cacher_on_database: Any,
                         cacher_db_path: Any) -> dict[str, Any]:
    """Validated options (ValueError naming the option otherwise); touches nothing on disk."""
    if isinstance(cacher_quality, bool) or not isinstance(cacher_quality, int) or not 1 <= cacher_quality <= 100:
        raise ValueError(f"cacher_quality: expected an int in 1..100 (100 = lossless), got {cacher_quality!r}")
    try:
        gb = float(cacher_ram_size)
    except (TypeError, ValueError):
        gb = math.nan
    if isinstance(cacher_ram_size, bool) or not (math.isfinite(gb) and gb > 0):
        raise ValueError(f"cacher_ram_size: expected a size in GB > 0, got {cacher_ram_size!r}")
    if not isinstance(cacher_on_database, (bool, int)) or isinstance(cacher_on_database, float):
        raise ValueError(f"cacher_on_database: expected a bool, got {cacher_on_database!r}")
    if cacher_db_path is not None and not isinstance(cacher_db_path, (str, os.PathLike)):
        raise ValueError(f"cacher_db_path: expected a path (str or os.PathLike) or None, got {cacher_db_path!r}")
    if cacher_db_path is not None and not str(os.fspath(cacher_db_path)).strip():
        raise ValueError("cacher_db_path: expected a path, got an empty string")
    if cacher_db_path is not None and not cacher_on_database:
        raise ValueError("cacher_db_path: given, but cacher_on_database=False keeps the cache in RAM; "
                         "pass cacher_on_database=True to use the database")
    budget = int(gb * GB)
    if cacher_on_database:
        from ezvtb.cache.lmdb_store import MIN_BUDGET

        if budget < MIN_BUDGET:
            raise ValueError(f"cacher_ram_size: the database budget must be >= 1 MiB, got {cacher_ram_size!r} GB")
    return {"quality": int(cacher_quality), "budget_bytes": budget, "on_database": bool(cacher_on_database),
            "db_path": None if cacher_db_path is None else Path(os.fspath(cacher_db_path)).expanduser()}


def create_output_cache(cacher_quality: int = 85, cacher_ram_size: float = 2.0, cacher_on_database: bool = False,
                        cacher_db_path: str | os.PathLike | None = None, *, jpeg_backend: str = "auto",
                        queue_size: int = 16, store: Any = None) -> OutputCache:
    """An `OutputCache` for `get_core`'s options.

    cacher_quality 1..99: JPEG (colour 4:4:4 + alpha planes); 100: lossless (`lossless_codec`).
    cacher_ram_size: budget in GB, of the RAM LRU or of the LMDB map.
    cacher_on_database / cacher_db_path: LMDB environment at that path (default `default_db_path()`).
    store: a store to use instead of opening one for these options.
    """
    o = check_cacher_options(cacher_quality, cacher_ram_size, cacher_on_database, cacher_db_path)
    codec = make_codec(o["quality"], jpeg_backend)
    if store is None and o["on_database"]:
        from ezvtb.cache.lmdb_store import LmdbStore

        store = LmdbStore(o["db_path"] or default_db_path(), o["budget_bytes"])
    elif store is None:
        store = RamStore(o["budget_bytes"])
    return OutputCache(store, codec, queue_size=queue_size)
