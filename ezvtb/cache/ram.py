"""`RamStore`: the in-memory output-cache backend, a thread-safe `ByteLRU` of encoded frames."""
from __future__ import annotations

import threading
from typing import Any, Iterable

from ezvtb.lru import ByteLRU


class RamStore:
    """Least-recently-used map key -> encoded frame (bytes) with a budget in stored bytes.

    Stored bytes are the blob sizes (Python's per-object overhead, ~100 B per entry, is not
    counted). After every `put_many` the stored bytes are <= `budget_bytes`; a blob larger than
    the whole budget is not stored. `get` refreshes the entry (access order). Thread-safe.
    """

    backend = "ram"

    def __init__(self, budget_bytes: int) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise ValueError(f"budget_bytes: expected an int >= 0, got {budget_bytes!r}")
        self._lru: ByteLRU[bytes] = ByteLRU(budget_bytes, len)
        self._lock = threading.Lock()
        self.budget_bytes = budget_bytes
        self.rejected = 0  # blobs larger than the whole budget

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            return self._lru.get(key)

    def contains(self, key: bytes) -> bool:
        with self._lock:
            return key in self._lru

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Store (key, blob) pairs, evicting least-recently-used entries; returns how many were stored."""
        n = 0
        with self._lock:
            for key, blob in items:
                if self._lru.put(key, blob):
                    n += 1
                else:
                    self.rejected += 1
        return n

    def note_access(self, key: bytes) -> None:
        """No-op: `get` already refreshed the entry."""

    def flush_access(self) -> None:
        """No-op (access order is kept by `get`)."""

    def discard(self, key: bytes) -> None:
        with self._lock:
            self._lru.pop(key)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"backend": self.backend, "entries": len(self._lru), "stored_bytes": int(self._lru.bytes),
                    "budget_bytes": self.budget_bytes, "evictions": int(self._lru.evictions),
                    "rejected": self.rejected}

    def close(self) -> None:
        with self._lock:
            self._lru.clear()
