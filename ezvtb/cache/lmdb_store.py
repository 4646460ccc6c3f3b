"""`LmdbStore`: the on-disk output-cache backend, an LMDB environment shared by processes.

Layout (named databases in one environment):

* ``frames``: key (20 B) -> encoded frame blob (`ezvtb.cache.codec`);
* ``access``: key -> last-access tick (8 B big-endian);
* ``order``:  tick (8 B big-endian, so LMDB sorts it) -> key: the oldest entries come first;
* ``meta``:   ``format`` (``FORMAT``), ``clock`` (the last tick), ``bytes`` (sum of blob sizes).

Access order is persisted in batches: `get` only reads (a fresh read transaction, no lock
taken); hits are remembered with `note_access` and written by `flush_access`, which the output
cache's writer thread calls with its batches of puts. Ticks come from ``meta/clock`` read and
bumped inside each write transaction, so they stay unique when several processes write.

Size: the map size is the budget. Before a write pushes the pages in use above
``HIGH_WATER`` of the budget, the oldest entries are evicted down to ``LOW_WATER``; a
``MapFullError`` (free pages held by readers, other processes' budgets) evicts a tenth of the
entries and retries, growing the map by 1/8 only if even deleting cannot proceed. It never
reaches the caller. ``MapResizedError`` (another process grew the map) is handled by adopting
the new size (``set_mapsize(0)``) and retrying.

Durability: every write is one transaction (``sync=True, metasync=False``: data pages are
flushed at commit, the meta page lazily). A process killed at any point leaves a database that
opens and serves every committed frame; an OS crash may undo the last commit but keeps the
database intact (LMDB's MDB_NOMETASYNC guarantee).

Paths: a directory (created if missing) holds ``data.mdb`` and ``lock.mdb``; an existing
regular file is opened as a single-file environment (its lock file is ``<path>-lock``).
Problems with the path raise ValueError naming it. The environment is reopened lazily in a
forked child (LMDB handles must not cross ``fork``).
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import lmdb

log = logging.getLogger("ezvtb.cache.lmdb")

FORMAT = b"ezvtb.output-cache.lmdb/1"
HIGH_WATER = 0.85
LOW_WATER = 0.75
MIN_BUDGET = 1 << 20
_DBS = (b"frames", b"access", b"order", b"meta")
_U64 = struct.Struct(">Q")
_LMDB_MAGIC = 0xBEEFC0DE
T = TypeVar("T")


def _u64(b: Any) -> int:
    return _U64.unpack(bytes(b))[0] if b is not None else 0


class _SharedExclusive:
    """Many transactions at once, or one `set_mapsize` (LMDB: no transaction may be active)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    def shared(self) -> "_Held":
        return _Held(self, False)

    def exclusive(self) -> "_Held":
        return _Held(self, True)

    def acquire(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                while self._exclusive or self._active:
                    self._cond.wait()
                self._exclusive = True
            else:
                while self._exclusive:
                    self._cond.wait()
                self._active += 1

    def release(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                self._exclusive = False
            else:
                self._active -= 1
            self._cond.notify_all()


class _Held:
    __slots__ = ("lock", "exclusive")

    def __init__(self, lock: _SharedExclusive, exclusive: bool) -> None:
        self.lock, self.exclusive = lock, exclusive

    def __enter__(self) -> None:
        self.lock.acquire(self.exclusive)

    def __exit__(self, *exc: object) -> None:
        self.lock.release(self.exclusive)


def _check_lmdb_file(data: Path, path: Path) -> None:
    """ValueError unless `data` is empty or starts with an LMDB meta page (checked before LMDB opens it)."""
    try:
        with open(data, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise ValueError(f"cacher_db_path: cannot read {str(data)!r}: {e.strerror}") from None
    if not head:
        return
    # page header: pgno (8), pad (2), flags (2), lower/upper (4); then MDB_meta.mm_magic (4)
    if len(head) < 20 or struct.unpack_from("<I", head, 16)[0] != _LMDB_MAGIC:
        raise ValueError(f"cacher_db_path: {str(path)!r} is not an LMDB database "
                         f"({str(data)!r} has no LMDB header); choose another path")


class LmdbStore:
    """Key -> encoded frame in an LMDB environment at `path`, map size = `budget_bytes`.

    Thread-safe: `get` may run on one thread while another calls `put_many` / `flush_access`.
    See the module docstring for layout, eviction, durability and multi-process use.
    """

    backend = "lmdb"

    def __init__(self, path: str | os.PathLike, budget_bytes: int, max_readers: int = 256) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < MIN_BUDGET:
            raise ValueError(f"cacher_ram_size: the LMDB budget must be >= {MIN_BUDGET} bytes (1 MiB), "
                             f"got {budget_bytes!r}")
        if not isinstance(max_readers, int) or max_readers < 1:
            raise ValueError(f"max_readers: expected an int >= 1, got {max_readers!r}")
        self.path = Path(os.fspath(path)).expanduser()
        self.budget_bytes = budget_bytes
        self.max_readers = max_readers
        self._rw = _SharedExclusive()
        self._write_lock = threading.Lock()
        self._touch_lock = threading.Lock()
        self._touched: dict[bytes, None] = {}
        self.max_touched = 8192
        self.evictions = 0
        self.rejected = 0
        self.map_full_retries = 0
        self.map_grown = 0
        self.resized = 0
        self._env: lmdb.Environment | None = None
        self._pid = -1
        self._open()

    # -- opening -----------------------------------------------------------------------------
    def _open(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            if not p.is_file():
                raise ValueError(f"cacher_db_path: {str(p)!r} is neither a directory nor a regular file")
            subdir = False
            _check_lmdb_file(p, p)
        else:
            subdir = True
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ValueError(f"cacher_db_path: cannot create the directory {str(p)!r}: "
                                 f"{e.strerror or e}") from None
            if (p / "data.mdb").exists():
                _check_lmdb_file(p / "data.mdb", p)
        if not os.access(p if subdir else p.parent, os.W_OK) or (not subdir and not os.access(p, os.W_OK)):
            raise ValueError(f"cacher_db_path: {str(p)!r} is not writable")
        try:
            env = lmdb.open(str(p), subdir=subdir, map_size=self.budget_bytes, max_dbs=len(_DBS) + 1,
                            max_readers=self.max_readers, sync=True, metasync=False, readahead=False,
                            meminit=False, lock=True)
        except lmdb.InvalidError as e:
            raise ValueError(f"cacher_db_path: {str(p)!r} is not an LMDB database ({e})") from None
        except lmdb.VersionMismatchError as e:
            raise ValueError(f"cacher_db_path: {str(p)!r} was written by another LMDB version ({e})") from None
        except lmdb.Error as e:
            raise ValueError(f"cacher_db_path: cannot open {str(p)!r} as an LMDB database: {e}") from None
        try:
            self._dbs = self._init_dbs(env)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._pid = os.getpid()
        self._frames, self._access, self._order, self._meta = self._dbs

    def _init_dbs(self, env: lmdb.Environment) -> tuple[Any, ...]:
        p = self.path
        try:
            with env.begin() as txn:
                names = [bytes(k) for k, _ in txn.cursor()]
        except lmdb.Error as e:
            raise ValueError(f"cacher_db_path: cannot read {str(p)!r}: {e}") from None
        foreign = [n for n in names if n not in _DBS]
        if foreign:
            raise ValueError(f"cacher_db_path: {str(p)!r} is an LMDB database but not an ezvtb output cache "
                             f"(it holds {[n.decode(errors='replace') for n in foreign[:5]]}); choose another path")
        try:
            with env.begin(write=True) as txn:
                dbs = tuple(env.open_db(n, txn=txn) for n in _DBS)
                fmt = txn.get(b"format", db=dbs[3])
                if fmt is None:
                    if txn.stat(dbs[0])["entries"]:
                        raise ValueError(f"cacher_db_path: {str(p)!r} has frames but no format record")
                    txn.put(b"format", FORMAT, db=dbs[3])
                elif bytes(fmt) != FORMAT:
                    raise ValueError(f"cacher_db_path: {str(p)!r} is an ezvtb output cache of another format "
                                     f"({bytes(fmt).decode(errors='replace')}, expected {FORMAT.decode()}); "
                                     "delete it or choose another path")
        except lmdb.ReadonlyError:
            raise ValueError(f"cacher_db_path: {str(p)!r} is not writable") from None
        except lmdb.Error as e:
            raise ValueError(f"cacher_db_path: cannot write to {str(p)!r}: {e}") from None
        return dbs

    def _ensure_env(self) -> lmdb.Environment:
        if self._env is None:
            raise RuntimeError("LmdbStore is closed")
        if self._pid != os.getpid():  # forked: LMDB handles must not be used across fork
            inherited, self._env = self._env, None
            inherited.close()  # only this process's copies (map, fds, its own reader slots)
            self._rw = _SharedExclusive()
            self._write_lock = threading.Lock()
            self._touch_lock = threading.Lock()
            self._touched = {}
            self._open()
        return self._env

    def _retry_resized(self, fn: Callable[[lmdb.Environment], T]) -> T:
        """Run `fn(env)` inside the shared lock; on MapResizedError adopt the new map size and retry."""
        for attempt in range(3):
            env = self._ensure_env()
            try:
                with self._rw.shared():
                    return fn(env)
            except lmdb.MapResizedError:
                if attempt == 2:
                    raise
                with self._rw.exclusive():
                    env.set_mapsize(0)  # adopt the size another process set
                self.resized += 1
                log.debug("LMDB map resized by another process; adopted %d bytes", env.info()["map_size"])
        raise AssertionError("unreachable")

    # -- reading -------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        """The blob stored under `key` (a copy), or None."""
        def read(env: lmdb.Environment) -> bytes | None:
            with env.begin(db=self._frames) as txn:
                return txn.get(key)

        return self._retry_resized(read)

    def contains(self, key: bytes) -> bool:
        def read(env: lmdb.Environment) -> bool:
            with env.begin(db=self._frames, buffers=True) as txn:
                return txn.get(key) is not None

        return self._retry_resized(read)

    def note_access(self, key: bytes) -> None:
        """Remember a hit; written to the access index by the next `flush_access` / `put_many`."""
        with self._touch_lock:
            self._touched.pop(key, None)
            self._touched[key] = None
            if len(self._touched) > self.max_touched:
                self._touched.pop(next(iter(self._touched)))

    # -- writing -------------------------------------------------------------------------------
    def _touch(self, txn: lmdb.Transaction, key: bytes, tick: int) -> None:
        old = txn.get(key, db=self._access)
        if old is not None:
            txn.delete(bytes(old), db=self._order)
        t = _U64.pack(tick)
        txn.put(t, key, db=self._order)
        txn.put(key, t, db=self._access)

    def _used_bytes(self, txn: lmdb.Transaction) -> int:
        pages = 0
        psize = 4096
        for db in self._dbs:
            s = txn.stat(db)
            pages += s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"]
            psize = s["psize"]
        return pages * psize

    def _evict_oldest(self, txn: lmdb.Transaction, count: int | None = None, free_bytes: int = 0) -> tuple[int, int]:
        """Delete the oldest entries: `count` of them, or until about `free_bytes` are freed.

        Returns (entries deleted, blob bytes deleted)."""
        n = freed = 0
        psize = txn.stat(self._frames)["psize"]
        cur = txn.cursor(db=self._order)
        if not cur.first():
            return 0, 0
        while True:
            if count is not None and n >= count:
                break
            if count is None and freed >= free_bytes:
                break
            tick, key = cur.item()
            key = bytes(key)
            blob = txn.get(key, db=self._frames)
            size = len(blob) if blob is not None else 0
            if blob is not None:
                txn.delete(key, db=self._frames)
            txn.delete(key, db=self._access)
            more = cur.delete()  # deletes the order entry and moves to the next one
            n += 1
            freed += -(-(size + 16) // psize) * psize + 64
            self._sub_bytes(txn, size)
            if not more:
                break
        self.evictions += n
        return n, freed

    def _sub_bytes(self, txn: lmdb.Transaction, size: int) -> None:
        total = _u64(txn.get(b"bytes", db=self._meta))
        txn.put(b"bytes", _U64.pack(max(0, total - size)), db=self._meta)

    def _write(self, items: list[tuple[bytes, bytes]], touches: list[bytes]) -> int:
        env = self._ensure_env()
        limit = min(self.budget_bytes, env.info()["map_size"])
        stored = 0
        with env.begin(write=True) as txn:
            tick = _u64(txn.get(b"clock", db=self._meta))
            for key in touches:
                if txn.get(key, db=self._frames) is not None:
                    tick += 1
                    self._touch(txn, key, tick)
            added = 0
            for key, blob in items:
                if txn.get(key, db=self._frames) is not None:  # written meanwhile by another process
                    tick += 1
                    self._touch(txn, key, tick)
                    continue
                need = -(-(len(blob) + 16) // 4096) * 4096 + 256
                if need > HIGH_WATER * limit:
                    self.rejected += 1
                    continue
                used = self._used_bytes(txn)
                if used + need > HIGH_WATER * limit:
                    self._evict_oldest(txn, free_bytes=used + need - int(LOW_WATER * limit))
                txn.put(key, blob, db=self._frames)
                tick += 1
                self._touch(txn, key, tick)
                added += len(blob)
                stored += 1
            txn.put(b"clock", _U64.pack(tick), db=self._meta)
            if added:
                total = _u64(txn.get(b"bytes", db=self._meta))
                txn.put(b"bytes", _U64.pack(total + added), db=self._meta)
        return stored

    def _write_retrying(self, items: list[tuple[bytes, bytes]], touches: list[bytes]) -> int:
        for attempt in range(8):
            try:
                return self._retry_resized(lambda env: self._write(items, touches))
            except lmdb.MapFullError:
                self.map_full_retries += 1
                log.debug("LMDB map full at %s; evicting the oldest tenth", self.path)
                try:
                    def evict(env: lmdb.Environment) -> int:
                        with env.begin(write=True) as txn:
                            entries = txn.stat(self._frames)["entries"]
                            return self._evict_oldest(txn, count=max(1, entries // 10))[0] if entries else 0

                    if self._retry_resized(evict) == 0 and attempt >= 1:
                        break  # nothing left to evict: the blob cannot fit
                except lmdb.MapFullError:  # even deleting needs pages: grow the map a little
                    env = self._ensure_env()
                    with self._rw.exclusive():
                        size = env.info()["map_size"]
                        env.set_mapsize(size + size // 8)
                    self.map_grown += 1
                    log.warning("LMDB map at %s full even for deletions; grew it to %d bytes",
                                self.path, size + size // 8)
        self.rejected += len(items)
        log.warning("LMDB cache at %s: %d frame(s) could not be stored (map full)", self.path, len(items))
        return 0

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Store (key, blob) pairs and pending access ticks in one transaction; returns frames stored.

        Evicts the oldest entries as needed; never raises MapFullError."""
        items = list(items)
        with self._write_lock:
            with self._touch_lock:
                touches, self._touched = list(self._touched), {}
            if not items and not touches:
                return 0
            return self._write_retrying(items, touches)

    def flush_access(self) -> None:
        """Write the remembered hits to the access index (one transaction)."""
        self.put_many([])

    def discard(self, key: bytes) -> None:
        """Remove one entry (for example a blob that does not decode)."""
        def drop(env: lmdb.Environment) -> None:
            with env.begin(write=True) as txn:
                blob = txn.get(key, db=self._frames)
                if blob is None:
                    return
                txn.delete(key, db=self._frames)
                old = txn.get(key, db=self._access)
                if old is not None:
                    txn.delete(bytes(old), db=self._order)
                    txn.delete(key, db=self._access)
                self._sub_bytes(txn, len(blob))

        with self._write_lock:
            self._retry_resized(drop)

    # -- the rest ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def read(env: lmdb.Environment) -> dict[str, Any]:
            with env.begin() as txn:
                return {"entries": txn.stat(self._frames)["entries"],
                        "stored_bytes": _u64(txn.get(b"bytes", db=self._meta)),
                        "used_bytes": self._used_bytes(txn), "map_size": env.info()["map_size"]}

        s = self._retry_resized(read)
        return {"backend": self.backend, "path": str(self.path), **s, "budget_bytes": self.budget_bytes,
                "evictions": self.evictions, "rejected": self.rejected, "map_full_retries": self.map_full_retries,
                "map_resized": self.resized, "map_grown": self.map_grown}

    def close(self) -> None:
        """Write pending access ticks and close the environment (idempotent)."""
        if self._env is None:
            return
        if self._pid == os.getpid():
            try:
                self.flush_access()
            except lmdb.Error as e:  # closing must not fail on a full or read-only disk
                log.warning("LMDB cache at %s: access ticks not written on close (%s)", self.path, e)
            with self._rw.exclusive():
                self._env.close()
        self._env = None
