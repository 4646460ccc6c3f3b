"""LMDB's data file seen from outside the library: is it safe to map (meta pages, length), and the folder lock and
inode check used when a damaged file is moved aside (`ezvtb.cache.lmdb_store`)."""
from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Iterator

_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_DATA_VERSION = 1
_P_META = 0x08
_META_READ = 152  # page header (16) + MDB_meta up to mm_txnid


def _meta_page(head: bytes) -> tuple[int, int, int, int] | None:
    """(magic ok, page size, last page, txnid) of a meta page's first bytes; None if too short."""
    if len(head) < _META_READ:
        return None
    flags = struct.unpack_from("<H", head, 10)[0]
    magic, version = struct.unpack_from("<II", head, 16)
    psize = struct.unpack_from("<I", head, 40)[0]  # FREE_DBI's md_pad holds the page size
    last_pg, txnid = struct.unpack_from("<QQ", head, 136)
    ok = magic == _LMDB_MAGIC and version == _LMDB_DATA_VERSION and bool(flags & _P_META) \
        and psize >= 512 and psize & (psize - 1) == 0 and psize <= 1 << 16
    return (int(ok), psize, last_pg, txnid)


def inspect_data_file(data: Path, path: Path) -> str | None:
    """Why `data` (an LMDB data file) cannot be opened safely, or None when it can (or is empty).

    Damage found: a meta page that is not valid, or a file shorter than its newest meta page
    says it holds ((last page + 1) x page size; LMDB would map the missing pages and the first
    access to one kills the process with SIGBUS). ValueError when the file is no LMDB database at
    all (no meta page with LMDB's magic): it is not ours to move."""
    try:
        size = data.stat().st_size
        with open(data, "rb") as f:
            head = f.read(_META_READ)
            m0 = _meta_page(head)
            psizes = [m0[1]] if m0 and m0[0] else [4096, 8192, 16384, 65536, 512, 1024, 2048, 32768]
            m1 = None
            for ps in psizes:
                f.seek(ps)
                cand = _meta_page(f.read(_META_READ))
                if cand and cand[0] and cand[1] == ps:
                    m1 = cand
                    break
    except FileNotFoundError:
        return None  # moved aside by another process meanwhile: LMDB starts a new one
    except OSError as e:
        raise ValueError(f"cacher_db_path: cannot read {str(data)!r}: {e.strerror}") from None
    if size == 0:
        return None
    magic0 = len(head) >= 20 and struct.unpack_from("<I", head, 16)[0] == _LMDB_MAGIC
    if not magic0 and m1 is None:
        raise ValueError(f"cacher_db_path: {str(path)!r} is not an LMDB database "
                         f"({str(data)!r} has no LMDB header); choose another path")
    if magic0 and struct.unpack_from("<I", head, 20)[0] != _LMDB_DATA_VERSION:
        raise ValueError(f"cacher_db_path: {str(path)!r} was written by another LMDB version "
                         f"(data version {struct.unpack_from('<I', head, 20)[0]})")
    valid = [m for m in (m0, m1) if m and m[0]]
    if len(valid) < 2:
        return "a meta page is damaged" if size >= 2 * (valid[0][1] if valid else 4096) \
            else f"{size} bytes, shorter than its two meta pages"
    if valid[0][1] != valid[1][1]:
        return f"its meta pages disagree on the page size ({valid[0][1]} / {valid[1][1]})"
    psize, last_pg, _ = max(valid, key=lambda m: m[3])[1:]
    need = (last_pg + 1) * psize
    if size < need:
        return f"{size} bytes, shorter than the {need} bytes its meta page says it holds (truncated)"
    return None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` (no-op where flock does not exist): processes that found the same file
    damaged must not both check-then-rename, or the second renames the fresh file the first just created."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None
