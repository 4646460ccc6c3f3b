"""A shared/exclusive lock for threads: many holders at once, or one alone (the LMDB store's transactions
against `set_mapsize`, during which LMDB allows no active transaction)."""
from __future__ import annotations

import threading


class SharedExclusive:
    """Many transactions at once, or one `set_mapsize` (LMDB: no transaction may be active)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    def shared(self) -> "Held":
        return Held(self, False)

    def exclusive(self) -> "Held":
        return Held(self, True)

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


class Held:
    __slots__ = ("lock", "exclusive")

    def __init__(self, lock: SharedExclusive, exclusive: bool) -> None:
        self.lock, self.exclusive = lock, exclusive

    def __enter__(self) -> None:
        self.lock.acquire(self.exclusive)

    def __exit__(self, *exc: object) -> None:
        self.lock.release(self.exclusive)
