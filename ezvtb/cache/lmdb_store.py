"""`LmdbStore`: the on-disk output-cache backend, an LMDB environment shared by processes.

Layout (named databases in one environment):

* ``frames``: key (20 B) -> entry = checksum (16 B) + encoded frame blob (`ezvtb.cache.codec`);
  the checksum is blake2b keyed with ``CHECKSUM_KEY`` over key + blob, verified on every `get`;
* ``access``: key -> last-access tick (8 B big-endian);
* ``order``:  tick (8 B big-endian, so LMDB sorts it) -> key: the oldest entries come first;
* ``meta``:   ``format`` (``FORMAT``), ``clock`` (the last tick), ``bytes`` (sum of entry sizes).

Access order is persisted in batches: `get` only reads (a fresh read transaction, no lock
taken); hits are remembered with `note_access` and written by `flush_access`, which the output
cache's writer thread calls with its batches of puts. Ticks come from ``meta/clock`` read and
bumped inside each write transaction, so they stay unique when several processes write.

Size: the map size is the budget. Before a write pushes the pages in use above
``HIGH_WATER`` of the budget, the oldest entries are evicted down to ``LOW_WATER``; a
``MapFullError`` (free pages held by readers, other processes' budgets) evicts a tenth of the
entries and retries, growing the map by 1/8 only if even deleting cannot proceed. It never
reaches the caller. ``MapResizedError`` (another process grew the map, also between opening and
the first transaction) is handled by adopting the new size (``set_mapsize(0)``) and retrying.

Durability: every write is one transaction (``sync=True, metasync=False``: data pages are
flushed at commit, the meta page lazily). A process killed at any point leaves a database that
opens and serves every committed frame; an OS crash may undo the last commit but keeps the
database intact (LMDB's MDB_NOMETASYNC guarantee).

Faults: a cache is derived data, so damage costs frames, never the process.

* On open, ``data.mdb`` is checked against its newest valid meta page: a file shorter than
  (last page + 1) x page size (which LMDB would map and then die of SIGBUS on), or with a
  damaged meta page, is moved aside (renamed ``data.mdb.damaged-<UTC time>-<pid>``, kept for
  inspection), its lock file removed, and an empty cache started, with one warning.
* An entry whose checksum does not match (a corrupted page) raises `CorruptEntryError` (a
  `CodecError`: the output cache counts it in ``corrupt_entries`` and renders again) and is
  deleted by the next write transaction.
* LMDB reporting a damaged tree (``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``, ``MDB_BAD_TXN``; on
  open, a read of every database's first and last record is the check) turns the store into
  misses at once; the next write transaction (the writer thread) moves the file aside and
  starts an empty cache, as on open.
* A data file that shrinks while open (another process truncated it): every transaction first
  fstat()s our own descriptor of the file and treats a size below the largest seen as damage
  (`FileLostError`: misses, then the writer moves the file aside); a transaction already running when
  the pages vanish reads zeros instead of dying of SIGBUS (`ezvtb.cache.mapguard` maps zero pages over a
  fault inside our map, Linux) and its result is discarded. A writer that finds the file at the path
  replaced (moved aside by another process) reopens before writing.
* A database of an older entry format of ours (``OLDER_FORMATS``: entries without a checksum)
  is cleared on open, with a warning; an unknown (newer) format raises ValueError.

Paths: a directory (created if missing) holds ``data.mdb`` and ``lock.mdb``; an existing
regular file is opened as a single-file environment (its lock file is ``<path>-lock``).
Problems with the path raise ValueError naming it. The environment is reopened lazily in a
forked child (LMDB handles must not cross ``fork``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import lmdb

from ezvtb.cache.codec import CodecError
from ezvtb.cache.lmdb_file import folder_lock, inode, inspect_data_file
from ezvtb.cache.shared_lock import SharedExclusive
from ezvtb.cache.mapguard import Registration, guard, mapping_of

log = logging.getLogger("ezvtb.cache.lmdb")

FORMAT = b"ezvtb.output-cache.lmdb/2"
OLDER_FORMATS = (b"ezvtb.output-cache.lmdb/1",)  # entries without checksum: cleared on open
CHECKSUM_KEY = b"ezvtb.output-cache.entry/2"
CHECKSUM_SIZE = 16
HIGH_WATER = 0.85
LOW_WATER = 0.75
MIN_BUDGET = 1 << 20
_DBS = (b"frames", b"access", b"order", b"meta")
_U64 = struct.Struct(">Q")
# What LMDB reports on a damaged tree. MDB_BAD_TXN too: our transactions are always fresh and used
# correctly, and LMDB flags one as failed when it cannot read a named database's record (its first
# error is not returned then, only MDB_BAD_TXN on the next call).
class FileLostError(Exception):
    """The data file shrank while mapped (truncated by another process): its pages are gone."""


# MDB_BAD_DBI and MDB_PANIC too: we never drop or reopen a database while using it, so a changed database record
# means its pages were damaged (a truncated file that a writer extended again reads zeros there).
_DAMAGE_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadTxnError, lmdb.BadDbiError, lmdb.PanicError,
                  FileLostError)
T = TypeVar("T")
_RESIZED = object()


class CorruptEntryError(CodecError):
    """A stored entry failed its checksum (a damaged page); it is deleted by the next write."""


def entry_checksum(key: bytes, blob: Any) -> bytes:
    """The 16-byte checksum stored in front of `blob` under `key`: keyed blake2b of key + blob.

    Covers the key too, so a damaged tree that pairs a key with another entry's data is caught."""
    h = hashlib.blake2b(key, digest_size=CHECKSUM_SIZE, key=CHECKSUM_KEY)
    h.update(blob)
    return h.digest()


def _u64(b: Any) -> int:
    return _U64.unpack(bytes(b))[0] if b is not None else 0


class _Damaged(Exception):
    """LMDB found the tree damaged while opening."""


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
        self._rw = SharedExclusive()
        self._write_lock = threading.Lock()
        self._touch_lock = threading.Lock()
        self._touched: dict[bytes, None] = {}
        self.max_touched = 8192
        self.evictions = 0
        self.rejected = 0
        self.map_full_retries = 0
        self.map_grown = 0
        self.resized = 0
        self.checksum_failures = 0
        self.set_aside = 0
        self._discards: set[bytes] = set()
        self._damaged: str | None = None
        self._env: lmdb.Environment | None = None
        self._pid = -1
        self._fd = -1  # our own descriptor of the data file: fstat before each transaction
        self._size = 0  # the largest size seen; LMDB never shrinks its file
        self._guarded: Registration | None = None
        self.file_lost = 0
        self._open()

    # -- opening -----------------------------------------------------------------------------
    def _files(self) -> tuple[Path, Path, bool]:
        """(data file, lock file, subdir) of the environment at `path` (checks the path)."""
        p = self.path
        if p.exists() and not p.is_dir():
            if not p.is_file():
                raise ValueError(f"cacher_db_path: {str(p)!r} is neither a directory nor a regular file")
            return p, Path(f"{p}-lock"), False
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cacher_db_path: cannot create the directory {str(p)!r}: "
                             f"{e.strerror or e}") from None
        return p / "data.mdb", p / "lock.mdb", True

    def _set_aside(self, data: Path, lock: Path, reason: str, inode: int | None = None) -> None:
        """Rename a damaged data file to ``<name>.damaged-<UTC time>-<pid>`` (kept for inspection)
        and remove its lock file, so that LMDB starts an empty cache there. One warning.
        `inode`: only if the file there is still that one (another process may have replaced it)."""
        try:
            with folder_lock(data.parent):  # the inode check and the rename, atomic among our processes
                if inode is not None and data.stat().st_ino != inode:
                    return
                aside = data.with_name(f"{data.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
                                       f"-{os.getpid()}")
                os.rename(data, aside)
        except FileNotFoundError:
            return  # another process moved it first
        except OSError as e:
            raise ValueError(f"cacher_db_path: {str(self.path)!r} is damaged ({reason}) and cannot be moved "
                             f"aside: {e.strerror or e}") from None
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.debug("could not remove the lock file %s (%s)", lock, e)
        self.set_aside += 1
        log.warning("LMDB output cache at %s is damaged (%s): moved it to %s and started an empty cache",
                    self.path, reason, aside)

    def _open(self) -> None:
        data, lock, subdir = self._files()
        p = self.path
        if data.exists():
            reason = inspect_data_file(data, p)
            if reason is not None:
                time.sleep(0.05)  # look again: never move a healthy file that a writer was extending
                reason = inspect_data_file(data, p)
            if reason is not None:
                self._set_aside(data, lock, reason)
        if not os.access(p if subdir else p.parent, os.W_OK) or (not subdir and not os.access(p, os.W_OK)):
            raise ValueError(f"cacher_db_path: {str(p)!r} is not writable")
        for attempt in range(2):
            env = self._open_env(subdir)
            try:
                self._dbs = self._init_dbs(env)
                break
            except _Damaged as e:  # the tree itself is damaged: set it aside once and start over
                ino = inode(data)
                env.close()
                if attempt:
                    raise ValueError(f"cacher_db_path: cannot open {str(p)!r}: {e}") from None
                self._set_aside(data, lock, str(e), ino)
            except BaseException:
                env.close()
                raise
        self._env = env
        self._inode = inode(data)
        self._data_file, self._lock_file = data, lock
        self._damaged = None
        self._pid = os.getpid()
        self._frames, self._access, self._order, self._meta = self._dbs
        try:
            self._fd = os.open(data, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._size = os.fstat(self._fd).st_size
        except OSError as e:
            self._fd = -1
            log.debug("cannot watch the size of %s (%s)", data, e)
        self._guard_map()

    def _guard_map(self) -> None:
        """(Re-)register the environment's map with the SIGBUS guard (after opening or a map resize)."""
        guard().unregister(self._guarded)
        self._guarded = None
        if self._fd >= 0 and guard().supported:
            span = mapping_of(self._fd)
            if span is not None:
                self._guarded = guard().register(*span)

    def _release(self) -> None:
        """Forget the map guard and our descriptor (before the environment closes or after a fork)."""
        guard().unregister(self._guarded)
        self._guarded = None
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _check_file(self) -> None:
        """FileLostError when the data file is shorter than it was: truncated under us (reading a page past its
        new end would be SIGBUS). One fstat."""
        if self._fd < 0:
            return
        size = os.fstat(self._fd).st_size
        if size < self._size:
            self.file_lost += 1
            raise FileLostError(f"data.mdb shrank from {self._size} to {size} bytes while open "
                                "(truncated by another process)")
        self._size = size

    def _open_env(self, subdir: bool) -> lmdb.Environment:
        p = self.path
        try:
            return lmdb.open(str(p), subdir=subdir, map_size=self.budget_bytes, max_dbs=len(_DBS) + 1,
                             max_readers=self.max_readers, sync=True, metasync=False, readahead=False,
                             meminit=False, lock=True)
        except lmdb.InvalidError as e:
            raise ValueError(f"cacher_db_path: {str(p)!r} is not an LMDB database ({e})") from None
        except lmdb.VersionMismatchError as e:
            raise ValueError(f"cacher_db_path: {str(p)!r} was written by another LMDB version ({e})") from None
        except lmdb.Error as e:
            raise ValueError(f"cacher_db_path: cannot open {str(p)!r} as an LMDB database: {e}") from None

    def _begin_first(self, env: lmdb.Environment, write: bool) -> lmdb.Transaction:
        """The first transactions after opening: another process may have grown the map since
        `lmdb.open` (MDB_MAP_RESIZED); adopt its size and retry, as the read path does."""
        for attempt in range(5):
            try:
                return env.begin(write=write)
            except lmdb.MapResizedError:
                if attempt == 4:
                    raise
                env.set_mapsize(0)
                self.resized += 1
        raise AssertionError("unreachable")

    def _init_dbs(self, env: lmdb.Environment) -> tuple[Any, ...]:
        p = self.path
        try:
            with self._begin_first(env, False) as txn:
                names = [bytes(k) for k, _ in txn.cursor()]
        except _DAMAGE_ERRORS as e:
            raise _Damaged(str(e)) from None
        except lmdb.Error as e:
            raise ValueError(f"cacher_db_path: cannot read {str(p)!r}: {e}") from None
        foreign = [n for n in names if n not in _DBS]
        if foreign and set(names) & set(_DBS):  # ours, with a damaged name: not someone else's database
            raise _Damaged(f"unexpected database names {[n.decode(errors='replace') for n in foreign[:5]]}")
        if foreign:
            raise ValueError(f"cacher_db_path: {str(p)!r} is an LMDB database but not an ezvtb output cache "
                             f"(it holds {[n.decode(errors='replace') for n in foreign[:5]]}); choose another path")
        try:
            with self._begin_first(env, True) as txn:
                dbs = tuple(env.open_db(n, txn=txn) for n in _DBS)
                fmt = txn.get(b"format", db=dbs[3])
                if fmt is not None and bytes(fmt) in OLDER_FORMATS:
                    n = txn.stat(dbs[0])["entries"]
                    for db in dbs:
                        txn.drop(db, delete=False)
                    log.warning("LMDB output cache at %s: format %s has no checksums; cleared its %d frame(s)",
                                p, bytes(fmt).decode(errors="replace"), n)
                    fmt = None
                if fmt is None:
                    if txn.stat(dbs[0])["entries"]:
                        raise _Damaged("it has frames but no format record")
                    txn.put(b"format", FORMAT, db=dbs[3])
                elif not bytes(fmt).startswith(FORMAT[:-1]):
                    raise _Damaged(f"its format record is unreadable ({bytes(fmt)[:40]!r})")
                elif bytes(fmt) != FORMAT:
                    raise ValueError(f"cacher_db_path: {str(p)!r} is an ezvtb output cache of another format "
                                     f"({bytes(fmt).decode(errors='replace')}, expected {FORMAT.decode()}); "
                                     "delete it or choose another path")
            with env.begin() as txn:  # every database readable: LMDB flags a damaged tree here
                for db in dbs:
                    txn.stat(db)
                    cur = txn.cursor(db=db)
                    if cur.first():
                        cur.key()
                        cur.last()
        except _DAMAGE_ERRORS as e:
            raise _Damaged(str(e)) from None
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
            self._release()
            inherited.close()  # only this process's copies (map, fds, its own reader slots)
            self._rw = SharedExclusive()
            self._write_lock = threading.Lock()
            self._touch_lock = threading.Lock()
            self._touched = {}
            self._discards = set()
            self._open()
        return self._env

    def _retry_resized(self, fn: Callable[[lmdb.Environment], T]) -> T:
        """Run `fn(env)` inside the shared lock; on MapResizedError adopt the new map size and retry."""
        for attempt in range(3):
            self._ensure_env()  # reopens in a forked child, before touching the (inherited) lock
            with self._rw.shared():
                env = self._ensure_env()  # again under the lock: a reset (exclusive) replaces it
                self._check_file()
                reg = self._guarded
                faults = reg.faults if reg is not None else 0
                try:
                    result = fn(env)
                except lmdb.MapResizedError:
                    if reg is not None and reg.faults != faults:
                        raise self._lost() from None
                    if attempt == 2:
                        raise
                    result = _RESIZED
                except Exception:
                    if reg is not None and reg.faults != faults:
                        raise self._lost() from None
                    raise
                if reg is not None and reg.faults != faults:
                    raise self._lost()
                if result is not _RESIZED:
                    return result
            with self._rw.exclusive():
                env = self._ensure_env()
                env.set_mapsize(0)  # adopt the size another process set
                self._guard_map()
            self.resized += 1
            log.debug("LMDB map resized by another process; adopted %d bytes", env.info()["map_size"])
        raise AssertionError("unreachable")

    def _lost(self) -> FileLostError:
        """A page of the map vanished during a transaction (the SIGBUS guard read zeros instead)."""
        self.file_lost += 1
        return FileLostError("a page of data.mdb vanished while it was read (the file was truncated by another "
                             "process); what that transaction read is discarded")

    # -- reading -------------------------------------------------------------------------------
    def _note_damage(self, e: BaseException) -> None:
        """LMDB found the tree damaged: serve misses until the next write transaction resets the file."""
        if self._damaged is None:
            self._damaged = f"{type(e).__name__}: {e}"
            log.warning("LMDB output cache at %s: %s; serving misses until it is replaced", self.path, self._damaged)

    def get(self, key: bytes) -> bytes | None:
        """The blob stored under `key` (a copy), or None.

        CorruptEntryError (a CodecError) when the entry fails its checksum; it is then deleted by
        the next write transaction. None while the database is known to be damaged."""
        def read(env: lmdb.Environment) -> bytes | None:
            with env.begin(db=self._frames, buffers=True) as txn:
                entry = txn.get(key)
                if entry is None:
                    return None
                n = len(entry)
                blob = entry[CHECKSUM_SIZE:]
                if n > CHECKSUM_SIZE and entry_checksum(key, blob) == entry[:CHECKSUM_SIZE]:
                    return bytes(blob)  # the only copy, made inside the read transaction
            self.checksum_failures += 1
            self.discard(key)
            raise CorruptEntryError(f"entry {key.hex()[:12]}: {n} bytes that fail their checksum "
                                    "(a damaged page); dropped")

        if self._damaged is not None:
            return None
        try:
            return self._retry_resized(read)
        except _DAMAGE_ERRORS as e:
            self._note_damage(e)
            return None

    def contains(self, key: bytes) -> bool:
        """Whether an entry is stored under `key` (its checksum is not verified)."""
        def read(env: lmdb.Environment) -> bool:
            with env.begin(db=self._frames, buffers=True) as txn:
                return txn.get(key) is not None

        if self._damaged is not None:
            return False
        try:
            return self._retry_resized(read)
        except _DAMAGE_ERRORS as e:
            self._note_damage(e)
            return False

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

    def _write(self, items: list[tuple[bytes, bytes]], touches: list[bytes], discards: list[bytes]) -> int:
        env = self._ensure_env()
        limit = min(self.budget_bytes, env.info()["map_size"])
        stored = 0
        with env.begin(write=True) as txn:
            for key in discards:
                self._drop(txn, key)
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
                entry = entry_checksum(key, blob) + blob
                need = -(-(len(entry) + 16) // 4096) * 4096 + 256
                if need > HIGH_WATER * limit:
                    self.rejected += 1
                    continue
                used = self._used_bytes(txn)
                if used + need > HIGH_WATER * limit:
                    self._evict_oldest(txn, free_bytes=used + need - int(LOW_WATER * limit))
                txn.put(key, entry, db=self._frames)
                tick += 1
                self._touch(txn, key, tick)
                added += len(entry)
                stored += 1
            txn.put(b"clock", _U64.pack(tick), db=self._meta)
            if added:
                total = _u64(txn.get(b"bytes", db=self._meta))
                txn.put(b"bytes", _U64.pack(total + added), db=self._meta)
        return stored

    def _write_retrying(self, items: list[tuple[bytes, bytes]], touches: list[bytes], discards: list[bytes]) -> int:
        for attempt in range(8):
            try:
                return self._retry_resized(lambda env: self._write(items, touches, discards))
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
                        self._guard_map()
                    self.map_grown += 1
                    log.warning("LMDB map at %s full even for deletions; grew it to %d bytes",
                                self.path, size + size // 8)
        self.rejected += len(items)
        log.warning("LMDB cache at %s: %d frame(s) could not be stored (map full)", self.path, len(items))
        return 0

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Store (key, blob) pairs, pending access ticks and pending discards in one transaction;
        returns frames stored. Each entry is stored with its checksum (`entry_checksum`).

        Evicts the oldest entries as needed; never raises MapFullError. A database found damaged
        (by a read or by this transaction) is moved aside and replaced by an empty one here."""
        items = list(items)
        with self._write_lock:
            self._ensure_env()
            with self._touch_lock:
                touches, self._touched = list(self._touched), {}
                discards, self._discards = list(self._discards), set()
            if self._damaged is None and self._inode is not None and inode(self._data_file) != self._inode:
                self._note_damage(FileLostError("data.mdb was replaced by another process (it found the file "
                                                "damaged and moved it aside)"))
            if self._damaged is not None:
                self._reset_damaged()
                touches = discards = []
            if not items and not touches and not discards:
                return 0
            try:
                return self._write_retrying(items, touches, discards)
            except _DAMAGE_ERRORS as e:
                self._note_damage(e)
                self._reset_damaged()
                return self._write_retrying(items, [], [])

    def _reset_damaged(self) -> None:
        """Close the environment, move the damaged file aside (if nobody has yet) and open an empty one."""
        env, reason = self._ensure_env(), self._damaged or "damaged"
        with self._rw.exclusive():
            self._release()
            env.close()
            self._env = None
            self._set_aside(self._data_file, self._lock_file, reason, self._inode)
            self._open()

    def flush_access(self) -> None:
        """Write the remembered hits and pending discards (one transaction)."""
        self.put_many([])

    def discard(self, key: bytes) -> None:
        """Remove one entry (a blob that does not decode, or fails its checksum) with the next write
        transaction (`put_many` / `flush_access`): the caller never waits for LMDB's write lock."""
        with self._touch_lock:
            self._discards.add(bytes(key))
            self._touched.pop(key, None)

    def _drop(self, txn: lmdb.Transaction, key: bytes) -> None:
        entry = txn.get(key, db=self._frames)
        if entry is None:
            return
        txn.delete(key, db=self._frames)
        old = txn.get(key, db=self._access)
        if old is not None:
            txn.delete(bytes(old), db=self._order)
            txn.delete(key, db=self._access)
        self._sub_bytes(txn, len(entry))

    # -- the rest ------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def read(env: lmdb.Environment) -> dict[str, Any]:
            with env.begin() as txn:
                return {"entries": txn.stat(self._frames)["entries"],
                        "stored_bytes": _u64(txn.get(b"bytes", db=self._meta)),
                        "used_bytes": self._used_bytes(txn), "map_size": env.info()["map_size"]}

        try:
            s = self._retry_resized(read) if self._damaged is None else {}
        except _DAMAGE_ERRORS as e:
            self._note_damage(e)
            s = {}
        return {"backend": self.backend, "path": str(self.path), **s, "budget_bytes": self.budget_bytes,
                "evictions": self.evictions, "rejected": self.rejected, "map_full_retries": self.map_full_retries,
                "map_resized": self.resized, "map_grown": self.map_grown,
                "checksum_failures": self.checksum_failures, "set_aside": self.set_aside,
                "file_lost": self.file_lost,
                "damaged": self._damaged}

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
                self._release()
                self._env.close()
        else:
            self._release()
        self._env = None
