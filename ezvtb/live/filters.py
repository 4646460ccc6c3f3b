"""The One-Euro filter (Casiez, Roussel, Vogel, CHI 2012), vectorised over pose parameters.

A first-order low-pass filter whose cutoff rises with the signal's speed: at rest the cutoff is
`min_cutoff` (Hz), so tracker jitter is smoothed away; when the value moves, the cutoff becomes
``min_cutoff + beta * |speed|`` (speed in units per second, itself low-passed at `d_cutoff`),
so fast motions (blinks, head turns) pass with little lag.

For one parameter, with ``alpha(fc, dt) = 1 / (1 + 1 / (2 pi fc dt))``::

    dx      = (x - x_hat_prev) / dt
    dx_hat  = dx_hat_prev + alpha(d_cutoff, dt) * (dx - dx_hat_prev)
    fc      = min_cutoff + beta * |dx_hat|
    x_hat   = x_hat_prev + alpha(fc, dt) * (x - x_hat_prev)

The first sample passes through unchanged. With ``beta = 0`` the filter is an exponential moving
average whose steady-state lag behind a ramp is ``1 / (2 pi min_cutoff)`` seconds.
"""
from __future__ import annotations

import math

import numpy as np


def _positive(name: str, value: object, shape: tuple[int, ...], allow_zero: bool = False) -> np.ndarray:
    try:
        a = np.broadcast_to(np.asarray(value, np.float64), shape).copy()
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or an array broadcastable to {shape}, got {value!r}") from None
    ok = np.isfinite(a) & ((a >= 0) if allow_zero else (a > 0))
    if not ok.all():
        raise ValueError(f"{name}: expected finite values {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return a


class OneEuroFilter:
    """One-Euro filter over a float vector of `size` values.

    min_cutoff: cutoff at rest in Hz (scalar or per-value array), lower = smoother but laggier.
    beta: speed coefficient (scalar or per-value array), higher = less lag on fast motion.
    d_cutoff: cutoff of the speed estimate in Hz.
    `__call__(x, t)` takes a (size,) array and a timestamp in seconds (monotonic) and returns a
    new float64 (size,) array (the caller owns it). A timestamp that does not advance returns the
    previous output unchanged (a copy).
    """

    def __init__(self, size: int, min_cutoff: float | np.ndarray = 1.0, beta: float | np.ndarray = 0.5,
                 d_cutoff: float = 1.0) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected an int >= 1, got {size!r}")
        self.size = size
        self.min_cutoff = _positive("min_cutoff", min_cutoff, (size,))
        self.beta = _positive("beta", beta, (size,), allow_zero=True)
        self.d_cutoff = float(_positive("d_cutoff", d_cutoff, ())[()])
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next sample passes through unchanged."""
        self._x: np.ndarray | None = None
        self._dx = np.zeros(self.size, np.float64)
        self._t = 0.0

    @staticmethod
    def alpha(cutoff: float | np.ndarray, dt: float) -> float | np.ndarray:
        """Smoothing factor of a first-order low-pass at `cutoff` Hz for a step of `dt` seconds."""
        return 1.0 / (1.0 + 1.0 / (2.0 * math.pi * np.asarray(cutoff) * dt))

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if x.shape != (self.size,):
            raise ValueError(f"x: expected shape ({self.size},), got {x.shape}")
        if not math.isfinite(t):
            raise ValueError(f"t: expected a finite timestamp in seconds, got {t!r}")
        if self._x is None:
            self._x = x.copy()
            self._t = float(t)
            return self._x.copy()
        dt = float(t) - self._t
        if dt <= 0.0:
            return self._x.copy()
        dx = (x - self._x) / dt
        self._dx += self.alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + self.alpha(cutoff, dt) * (x - self._x)
        self._t = float(t)
        return self._x.copy()
