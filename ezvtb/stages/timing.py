"""Per-step latency bookkeeping for stages and the core (bounded, no per-frame allocation)."""
from __future__ import annotations

import time
from collections import deque

import numpy as np


class Timings:
    """Keeps the last `window` durations (ms) of each named step."""

    def __init__(self, window: int = 512) -> None:
        self.window = window
        self._d: dict[str, deque[float]] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, ms: float) -> None:
        q = self._d.get(name)
        if q is None:
            q = self._d[name] = deque(maxlen=self.window)
            self.counts[name] = 0
        q.append(ms)
        self.counts[name] += 1

    def time(self, name: str) -> "_Timer":
        return _Timer(self, name)

    def summary(self) -> dict[str, dict[str, float]]:
        """{step: {count, mean_ms, p50_ms, p95_ms, p99_ms}} over the window."""
        out = {}
        for k, q in self._d.items():
            a = np.fromiter(q, dtype=np.float64)
            out[k] = {
                "count": self.counts[k],
                "mean_ms": float(a.mean()),
                "p50_ms": float(np.percentile(a, 50)),
                "p95_ms": float(np.percentile(a, 95)),
                "p99_ms": float(np.percentile(a, 99)),
            }
        return out

    def reset(self) -> None:
        self._d.clear()
        self.counts.clear()


class _Timer:
    __slots__ = ("t", "name", "t0")

    def __init__(self, t: Timings, name: str) -> None:
        self.t, self.name = t, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.t.add(self.name, (time.perf_counter() - self.t0) * 1e3)
