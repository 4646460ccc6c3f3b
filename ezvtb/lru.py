"""A least-recently-used map with a byte budget (not thread-safe; callers lock if needed)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Iterator, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """LRU map whose budget is counted in bytes of stored values.

    `size_of(value)` gives a value's size. After every `put`, the stored bytes are <= budget;
    a value larger than the whole budget is not stored. `evictions` counts removed entries.
    """

    def __init__(self, budget_bytes: int, size_of: Callable[[V], int]) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes: expected >= 0, got {budget_bytes}")
        self.budget = int(budget_bytes)
        self._size_of = size_of
        self._d: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._d

    def keys(self) -> Iterator[Hashable]:
        return iter(self._d.keys())

    def get(self, key: Hashable) -> V | None:
        item = self._d.get(key)
        if item is None:
            self.misses += 1
            return None
        self._d.move_to_end(key)
        self.hits += 1
        return item[0]

    def put(self, key: Hashable, value: V) -> bool:
        """Store `value`; returns False when it alone exceeds the budget (not stored)."""
        size = int(self._size_of(value))
        old = self._d.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.budget:
            return False
        while self._d and self.bytes + size > self.budget:
            _, (_, s) = self._d.popitem(last=False)
            self.bytes -= s
            self.evictions += 1
        self._d[key] = (value, size)
        self.bytes += size
        return True

    def pop(self, key: Hashable) -> V | None:
        """Remove `key` (not counted as an eviction); returns its value or None."""
        item = self._d.pop(key, None)
        if item is None:
            return None
        self.bytes -= item[1]
        return item[0]

    def clear(self) -> None:
        self._d.clear()
        self.bytes = 0
