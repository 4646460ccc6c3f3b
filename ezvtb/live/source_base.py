"""What every pose source shares: the sample and source types, URL query parsing and the playback clock.

Trackers (`ezvtb.live.sources`), pose files and traces (`PlaybackSource`) and speech (`ezvtb.live.lipsync`)
build on this module; it imports none of them.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ezvtb.live.mapping import MappingConfig


class PoseSample(NamedTuple):
    """pose: float32 (45,) (a copy owned by the caller); t: `time.perf_counter()` when the data
    arrived (playback: when the pose was produced); seq: increases with every new tracker pose."""

    pose: np.ndarray
    t: float
    seq: int


class PoseSource:
    """Base: `start()`, `latest()`, `stats()`, `close()`; usable as a context manager."""

    url = ""

    def start(self) -> "PoseSource":
        return self

    def latest(self) -> PoseSample | None:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """True when a non-looping playback has played its last pose."""
        return False

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self) -> "PoseSource":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- URL query values ------------------------------------------------------------------------------------
def query_bool(name: str, v: str) -> bool:
    """A URL query flag: 1/true/yes/on or 0/false/no/off; ValueError naming `name` otherwise."""
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"input: {name} expects 0 or 1, got {v!r}")


def query_number(name: str, v: str) -> float:
    """A finite number from a URL query value; ValueError naming `name` otherwise."""
    try:
        x = float(v)
    except ValueError:
        raise ValueError(f"input: {name} expects a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"input: {name} expects a finite number, got {v!r}")
    return x


PLAYBACK_KEYS = {"fps", "loop", "step"}
FILTER_KEYS = {"min_cutoff", "beta", "d_cutoff", "filter"}
# Query keys every tracker source (UDP receivers, camera) takes: the filter, axis inversion, breathing, mapping.
TRACKER_KEYS = FILTER_KEYS | {"invert", "breathing"} | {f.name for f in dataclasses.fields(MappingConfig)}


def mapping_config(q: Mapping[str, str]) -> MappingConfig:
    """A `MappingConfig` from URL query values (unknown keys are left to the caller)."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(MappingConfig):
        if f.name in q:
            v = q[f.name]
            kw[f.name] = v if f.type in ("str", str) else query_bool(f.name, v) if f.type in ("bool", bool) \
                else query_number(f.name, v)
    if "breathing" in q:
        kw["breathing_period"] = query_number("breathing", q["breathing"])
    return MappingConfig(**kw)


def filter_params(q: Mapping[str, str]) -> dict[str, float]:
    """The One-Euro filter's parameters from the query (each default 1.0); ``{}`` with ``filter=0`` (no filter)."""
    if "filter" in q and not query_bool("filter", q["filter"]):
        return {}
    return {k: query_number(k, q.get(k, "1.0")) for k in ("min_cutoff", "beta", "d_cutoff")}


def inverted_axes(q: Mapping[str, str]) -> tuple[str, ...]:
    """``invert=a,b`` -> ("a", "b") (empty without it)."""
    return tuple(a.strip() for a in q.get("invert", "").split(",") if a.strip())


def playback_options(q: dict[str, str], *, loop: bool) -> tuple[float, bool, bool]:
    """(fps, loop, step) of a playback URL (file://, trace://, audio://PATH): fps default 30, `loop` the
    scheme's default, step off."""
    return (query_number("fps", q.get("fps", "30")), query_bool("loop", q.get("loop", "1" if loop else "0")),
            query_bool("step", q.get("step", "0")))


# --- playback ----------------------------------------------------------------------------------------------
class PlaybackClock:
    """Where a playback is: by wall clock from `start()` (the first reading starts it), or, with `step`,
    one tick per reading (every item is played, however slow the consumer)."""

    def __init__(self, fps: float, step: bool = False) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"input: fps expects a number > 0, got {fps!r}")
        self.fps = float(fps)
        self.step = bool(step)
        self._t0: float | None = None
        self._ticks = 0

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def tick(self) -> int:
        """Step mode: 0, 1, 2, ... one per call."""
        i = self._ticks
        self._ticks += 1
        return i

    def elapsed(self) -> float:
        """Wall-clock mode: seconds since `start()`."""
        self.start()
        return time.perf_counter() - self._t0  # type: ignore[operator]

    def frame(self) -> int:
        """The index of the item to play now, at `fps` items per second (or the next one in step mode)."""
        return self.tick() if self.step else int(self.elapsed() * self.fps)


__all__ = ["FILTER_KEYS", "PLAYBACK_KEYS", "TRACKER_KEYS", "PlaybackClock", "PoseSample", "PoseSource",
           "filter_params", "inverted_axes", "mapping_config", "playback_options", "query_bool", "query_number"]
