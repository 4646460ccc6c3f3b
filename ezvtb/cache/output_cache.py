"""`OutputCache`: THA frames by (character, model variant, pose), served instead of running THA.

The core calls `set_character(image, variant)` on `setImage`, then per frame `get(pose)` and,
on a miss, `put(pose, frame)` with the THA frame (see `ezvtb.core.FrameCache`).

* A hit is served synchronously: key (blake2b, ~2 us), store lookup, decode into a buffer the
  cache owns, returned as uint8 (H, W, 4) BGRA. That buffer is overwritten by the next hit:
  consume or copy it first (the core's output contract says the same).
* `put` never stalls the caller: it copies the frame (the THA buffer is reused next frame) and
  queues it for the writer thread, which encodes and stores it in batches. When the bounded
  queue is full the write is dropped and counted (``dropped_writes``). A frame still waiting in
  the queue is already served by `get` (``pending_hits``), exactly as rendered.
* Keys hash the character image's bytes, so after `set_character` with another image no frame
  of the previous one can come back (`ezvtb.cache.keys`).
* Errors of the writer thread (disk full, ...) are logged and counted (``write_errors``); an
  entry that fails the store's checksum (LMDB) or does not decode is a miss (rendered again),
  counted (``corrupt_entries``) and dropped from the store.

`flush()` waits until every queued frame is stored; `close()` flushes and stops the thread.
"""
from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from typing import Any

import numpy as np

from ezvtb.cache.codec import CodecError, CodecUnavailableError, JpegCodec, LosslessCodec, parse_header
from ezvtb.cache.keys import FrameKeys, character_digest

log = logging.getLogger("ezvtb.cache")

_STOP = object()
_OPEN: "weakref.WeakSet[OutputCache]" = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    """At interpreter exit, store what is still queued (a script that never called close)."""
    for cache in list(_OPEN):
        try:
            cache.close(timeout=10.0)
        except Exception as e:  # noqa: BLE001 - exiting anyway
            log.warning("output cache: not closed cleanly at exit (%s)", e)


class OutputCache:
    """Frame cache over a store (`RamStore` or `LmdbStore`) with `codec` (`make_codec`).

    queue_size: frames waiting for the writer thread (bounded; a full queue drops the write).
    batch: most frames encoded and stored per store transaction.
    Not re-entrant for `get`/`put` (the core serialises its calls); `stats`, `flush` and
    `close` may be called from any thread.
    """

    def __init__(self, store: Any, codec: JpegCodec | LosslessCodec, queue_size: int = 16, batch: int = 16) -> None:
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size: expected an int >= 1, got {queue_size!r}")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        self.store = store
        self.codec = codec
        self.queue_size = queue_size
        self.batch = batch
        self._keys: FrameKeys | None = None
        self._out: np.ndarray | None = None
        self._pending: dict[bytes, np.ndarray] = {}
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()  # pending, free list, counters shared with the writer
        self._closed = False
        self.hits = self.misses = self.pending_hits = 0
        self.dropped_writes = self.writes = self.write_errors = self.corrupt_entries = self.read_errors = 0
        self._encode_ms = self._decode_ms = self._lookup_ms = 0.0
        self._encodes = self._decodes = self._lookups = 0
        self._start_writer()
        _OPEN.add(self)

    # -- writer thread -------------------------------------------------------------------------
    def _start_writer(self) -> None:
        self._pid = os.getpid()
        self._q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        self._thread = threading.Thread(target=self._writer, name="ezvtb-cache-writer", daemon=True)
        self._thread.start()

    def _check_fork(self) -> None:
        if self._pid != os.getpid():  # threads do not survive fork: start a new writer
            self._pending.clear()
            self._lock = threading.Lock()
            self._start_writer()

    def _writer(self) -> None:
        q = self._q
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                self._store_batch([])  # write remembered hits (LMDB access order)
                continue
            if item is _STOP:
                return
            markers: list[threading.Event] = []
            batch: list[tuple[bytes, np.ndarray]] = []
            stop = False
            while True:
                if isinstance(item, threading.Event):
                    markers.append(item)
                elif item is _STOP:
                    stop = True
                    break
                else:
                    batch.append(item)
                if len(batch) >= self.batch:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            self._store_batch(batch)
            for m in markers:
                m.set()
            if stop:
                return

    def _store_batch(self, batch: list[tuple[bytes, np.ndarray]]) -> None:
        encoded = []
        try:
            for key, buf in batch:
                t0 = time.perf_counter()
                blob = self.codec.encode(buf)
                ms = (time.perf_counter() - t0) * 1e3
                encoded.append((key, blob))
                with self._lock:
                    self._encode_ms += ms
                    self._encodes += 1
            stored = self.store.put_many(encoded)  # also writes remembered hits (LMDB access order)
            with self._lock:
                self.writes += stored
        except Exception as e:  # noqa: BLE001 - the writer must survive any store or codec error
            with self._lock:
                self.write_errors += len(batch)
            log.warning("output cache: %d frame(s) not stored (%s: %s)", len(batch), type(e).__name__, e)
        finally:
            with self._lock:
                for key, buf in batch:
                    self._pending.pop(key, None)
                    if len(self._free) < self.queue_size + 2:
                        self._free.append(buf)

    # -- FrameCache protocol ------------------------------------------------------------------------
    def set_character(self, image: np.ndarray, variant: str) -> None:
        """Key every following frame by `image`'s content, `variant` and the codec's fidelity."""
        self._check_open()
        self._keys = FrameKeys(character_digest(image, str(variant), self.codec.quality))

    def _frame_key(self, pose: np.ndarray) -> bytes:
        self._check_open()
        if self._keys is None:
            raise RuntimeError("output cache: set_character must be called first")
        return self._keys.key(pose)

    def _out_for(self, h: int, w: int) -> np.ndarray:
        if self._out is None or self._out.shape != (h, w, 4):
            self._out = np.empty((h, w, 4), np.uint8)
        return self._out

    def get(self, pose: np.ndarray) -> np.ndarray | None:
        """The cached frame for `pose` (45 floats, after quantisation) or None.

        Returns a uint8 (H, W, 4) BGRA buffer owned by the cache, overwritten by the next hit."""
        key = self._frame_key(pose)
        with self._lock:
            buf = self._pending.get(key)
            if buf is not None:
                out = self._out_for(*buf.shape[:2])
                np.copyto(out, buf)
                self.hits += 1
                self.pending_hits += 1
                return out
        t0 = time.perf_counter()
        try:
            blob = self.store.get(key)
        except CodecError as e:  # the store's own integrity check (LMDB entry checksum) failed
            self._corrupt(key, e)
            return None
        except Exception as e:  # noqa: BLE001 - a failing store is a miss, never a failed frame
            self.read_errors += 1
            self.misses += 1
            if self.read_errors in (1, 10, 100) or self.read_errors % 1000 == 0:
                log.warning("output cache: lookup failed (%d so far; %s: %s)", self.read_errors, type(e).__name__, e)
            return None
        t1 = time.perf_counter()
        with self._lock:
            self._lookup_ms += (t1 - t0) * 1e3
            self._lookups += 1
        if blob is None:
            self.misses += 1
            return None
        try:
            _, _, h, w, _, _ = parse_header(blob)
            out = self.codec.decode(blob, self._out_for(h, w))
        except (CodecError, CodecUnavailableError) as e:
            self._corrupt(key, e)
            return None
        with self._lock:
            self._decode_ms += (time.perf_counter() - t1) * 1e3
            self._decodes += 1
        self.hits += 1
        self.store.note_access(key)
        return out

    def _corrupt(self, key: bytes, e: Exception) -> None:
        """An entry that fails its checksum or does not decode: a miss, counted, and dropped."""
        self.corrupt_entries += 1
        self.misses += 1
        n = self.corrupt_entries
        if n <= 10 or n % 1000 == 0:
            log.warning("output cache: dropping an entry that is corrupt or does not decode (%d so far; %s)", n, e)
        try:
            self.store.discard(key)
        except Exception as e2:  # noqa: BLE001
            log.warning("output cache: could not drop the entry (%s)", e2)

    def put(self, pose: np.ndarray, frame: np.ndarray) -> None:
        """Queue a copy of `frame` (uint8 (H, W, 4)) for `pose`; returns at once (drops if the queue is full)."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 4:
            raise ValueError(f"frame: expected a uint8 (H, W, 4) BGRA array, got "
                             f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', None)}")
        key = self._frame_key(pose)
        self._check_fork()
        with self._lock:
            if key in self._pending:
                return
            buf = self._free.pop() if self._free else None
        if buf is None or buf.shape != frame.shape:
            buf = np.empty_like(frame, order="C")
        np.copyto(buf, frame)
        with self._lock:
            self._pending[key] = buf
        try:
            self._q.put_nowait((key, buf))
        except queue.Full:
            with self._lock:
                self._pending.pop(key, None)
                self.dropped_writes += 1
                self._free.append(buf)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every frame queued so far is stored; False if `timeout` (s) ran out."""
        self._check_open()
        self._check_fork()
        marker = threading.Event()
        try:
            self._q.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """hits, misses, hit_rate, entries, stored_bytes, evictions, dropped_writes, mean ms, ...

        mean_encode_ms: encode on the writer thread; mean_decode_ms: decode + BGRA rebuild of a
        stored hit; mean_lookup_ms: store lookup (hit or miss). hit_rate and the means are None
        before the first lookup / encode / decode. Plain, JSON-serialisable values."""
        with self._lock:
            looked = self.hits + self.misses
            s: dict[str, Any] = {
                "hits": self.hits, "misses": self.misses, "hit_rate": self.hits / looked if looked else None,
                "pending_hits": self.pending_hits, "dropped_writes": self.dropped_writes, "writes": self.writes,
                "write_errors": self.write_errors, "read_errors": self.read_errors,
                "corrupt_entries": self.corrupt_entries,
                "queued": len(self._pending),
                "mean_encode_ms": self._encode_ms / self._encodes if self._encodes else None,
                "mean_decode_ms": self._decode_ms / self._decodes if self._decodes else None,
                "mean_lookup_ms": self._lookup_ms / self._lookups if self._lookups else None,
                "codec": self.codec.name, "codec_backend": self.codec.backend, "quality": self.codec.quality,
            }
        if not self._closed:
            try:
                s.update(self.store.stats())
            except Exception as e:  # noqa: BLE001 - stats never raise (a closed or broken store)
                s["store_error"] = f"{type(e).__name__}: {e}"
        return s

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("output cache is closed")

    def close(self, timeout: float = 30.0) -> None:
        """Store the queued frames, stop the writer thread and close the store (idempotent)."""
        if self._closed:
            return
        if self._pid == os.getpid() and self._thread.is_alive():
            if not self.flush(timeout):
                log.warning("output cache: queued frames not stored within %.0f s on close", timeout)
            try:
                self._q.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        self._closed = True
        _OPEN.discard(self)
        self.store.close()
