"""Deterministic, realistic pose traces (what a face tracker feeding a VTuber app looks like).

`realistic_trace(n_frames, fps, name="realistic", seed=0)` returns float32 (n_frames, 45) poses,
clipped to the `ezvtb.pose` ranges. It is numpy only and seeded: the same arguments give the same
array, and a shorter trace is a prefix of a longer one (each component draws from its own
random stream, event by event). Components:

* slow head motion (yaw, pitch, roll as a mean-reverting random walk plus slow sways) with the
  body following it with a lag; breathing at ~0.25 Hz;
* gaze: fixations held 0.4-2.5 s with quick saccades, iris following the head a little;
* blinks every ~2-6 s (150-250 ms, closing faster than opening, sometimes doubled);
* speech: utterances of 0.8-4 s separated by pauses, visemes (aaa, iii, uuu, eee, ooo) every
  70-160 ms with smoothed onsets; occasional eyebrow raises on emphasis; short smiles;
* tracker noise: per-frame Gaussian jitter on every tracked value (angles and blendshapes),
  small values clipped at zero as trackers do, and rare glitch frames that jump and return.

Names: ``realistic`` (default, talking about half the time), ``idle`` (listening: no speech,
fewer expressions) and ``talk`` (speaking most of the time).
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from ezvtb.pose import POSE_MAX, POSE_MIN, POSE_SIZE, index

TRACE_NAMES = ("realistic", "idle", "talk")

# (speech share of the time, mean pause s, expression rate scale)
_PROFILES = {"realistic": (0.5, 1.6, 1.0), "idle": (0.0, 1.0, 0.5), "talk": (0.85, 0.6, 1.3)}

# Tracker jitter (standard deviation per frame, in pose units) after the light smoothing that
# tracker apps apply: head angles ~0.1 degree, blendshapes ~1-2 % of their range.
ANGLE_NOISE = 0.004
EYE_NOISE = 0.012
MOUTH_NOISE = 0.008
BROW_NOISE = 0.006
IRIS_NOISE = 0.01

_VISEMES = ("aaa", "iii", "uuu", "eee", "ooo")


def _smooth(x: np.ndarray, fps: float, tau_s: float) -> np.ndarray:
    """First-order low-pass along axis 0 (causal, so prefixes are stable)."""
    a = 1.0 - math.exp(-1.0 / (max(tau_s, 1e-6) * fps))
    y = np.empty_like(x)
    acc = x[0].copy() if x.ndim > 1 else x[0]
    for i in range(len(x)):
        acc = acc + a * (x[i] - acc)
        y[i] = acc
    return y


def _events(rng: np.random.Generator, duration: float, gap: tuple[float, float], first: float = 0.0) -> list[float]:
    """Start times of events separated by uniform gaps, from `first` until `duration`."""
    out, t = [], first
    while t < duration:
        out.append(t)
        t += rng.uniform(*gap)
    return out


def _pulse(t: np.ndarray, start: float, rise: float, hold: float, fall: float) -> np.ndarray:
    """0..1 envelope: linear rise, hold, linear fall."""
    up = np.clip((t - start) / rise, 0.0, 1.0)
    down = np.clip(1.0 - (t - start - rise - hold) / fall, 0.0, 1.0)
    return np.minimum(up, down)


def realistic_trace(n_frames: int = 2000, fps: float = 20.0, name: str = "realistic", seed: int = 0) -> np.ndarray:
    """A seeded tracker-like pose trace: float32 (n_frames, 45), clipped to the pose ranges.

    n_frames >= 1, fps > 0; `name` in ``TRACE_NAMES``. See the module docstring for the content.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames: expected an int >= 1, got {n_frames!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps: expected a number > 0, got {fps!r}")
    name = name or "realistic"
    if name not in _PROFILES:
        raise ValueError(f"name: expected one of {list(TRACE_NAMES)}, got {name!r}")
    speech_share, mean_pause, expr = _PROFILES[name]
    n = int(n_frames)
    t = np.arange(n, dtype=np.float64) / fps
    duration = n / fps
    base = zlib.crc32(name.encode()) ^ (int(seed) * 0x9E3779B1 & 0xFFFFFFFF)

    def stream(k: int) -> np.random.Generator:
        return np.random.default_rng([base, k])

    pose = np.zeros((n, POSE_SIZE), np.float64)

    # head and body: mean-reverting walk (noise drawn per frame) + slow sways
    r = stream(1)
    drive = r.normal(size=(n, 3)) * np.array([0.010, 0.016, 0.008]) * math.sqrt(20.0 / fps)
    walk = np.empty((n, 3))
    acc = np.zeros(3)
    k = 1.0 - math.exp(-1.0 / (3.0 * fps))
    for i in range(n):
        acc = acc * (1.0 - k) + drive[i]
        walk[i] = acc
    freqs = np.array([[0.07, 0.19], [0.05, 0.13], [0.04, 0.11]])
    phases = stream(2).uniform(0, 2 * math.pi, size=(3, 2))
    amps = np.array([[0.06, 0.03], [0.12, 0.05], [0.04, 0.02]])
    sway = sum(amps[:, j] * np.sin(2 * math.pi * freqs[:, j] * t[:, None] + phases[:, j]) for j in range(2))
    head = walk + sway  # head_x (pitch), head_y (yaw), neck_z (roll)
    pose[:, index("head_x")] = head[:, 0]
    pose[:, index("head_y")] = head[:, 1]
    pose[:, index("neck_z")] = head[:, 2]
    lagged = _smooth(head, fps, 0.6)
    pose[:, index("body_y")] = 0.45 * lagged[:, 1]
    pose[:, index("body_z")] = 0.35 * lagged[:, 2]
    pose[:, index("breathing")] = 0.5 + 0.5 * np.sin(2 * math.pi * 0.25 * t + stream(3).uniform(0, 6.28))

    # gaze: fixations and saccades; the iris counters part of the head yaw
    r, rp = stream(4), stream(14)
    gaze = np.zeros((n, 2))
    for start in _events(r, duration, (0.4, 2.5)):
        target = rp.normal(0.0, [0.25, 0.15])
        gaze[t >= start] = target
    gaze = _smooth(gaze, fps, 0.03)
    pose[:, index("iris_rotation_x")] = gaze[:, 1]
    pose[:, index("iris_rotation_y")] = gaze[:, 0] - 0.3 * head[:, 1]

    # blinks (both eyes, the right one a frame-fraction late and slightly weaker)
    r, rp = stream(5), stream(15)
    blink = np.zeros(n)
    for start in _events(r, duration, (2.0, 6.0), first=r.uniform(0.5, 2.0)):
        close, hold, open_ = rp.uniform(0.05, 0.08), rp.uniform(0.0, 0.05), rp.uniform(0.08, 0.14)
        blink = np.maximum(blink, _pulse(t, start, close, hold, open_))
        if rp.random() < 0.15:  # double blink
            blink = np.maximum(blink, _pulse(t, start + close + hold + open_ + 0.1, close, hold, open_))
    pose[:, index("eye_wink_left")] = blink
    pose[:, index("eye_wink_right")] = 0.95 * _smooth(blink, fps, 0.01)

    # speech: utterances with visemes; eyebrow raises on emphasis
    r = stream(6)
    mouth = np.zeros((n, len(_VISEMES)))
    brow = np.zeros(n)
    if speech_share > 0:
        mean_utt = mean_pause * speech_share / (1.0 - speech_share)
        start = r.uniform(0.05, 0.3)
        while start < duration:
            length = float(np.clip(r.exponential(mean_utt), 0.8, 4.0))
            v_t = start
            while v_t < start + length:
                v_len = r.uniform(0.07, 0.16)
                which = r.integers(len(_VISEMES))
                amp = r.uniform(0.35, 1.0)
                sel = (t >= v_t) & (t < v_t + v_len)
                mouth[sel, which] = amp
                v_t += v_len + (r.uniform(0.03, 0.12) if r.random() < 0.3 else 0.0)
            if r.random() < 0.35 * expr:
                at = start + r.uniform(0.0, length)
                brow = np.maximum(brow, r.uniform(0.4, 0.9) * _pulse(t, at, 0.15, r.uniform(0.2, 0.8), 0.3))
            start += length + float(np.clip(r.exponential(mean_pause), 0.3, 4.0))
    mouth = _smooth(mouth, fps, 0.04)
    for j, v in enumerate(_VISEMES):
        pose[:, index(f"mouth_{v}")] = mouth[:, j]
    # idle brow movements and smiles, whatever the profile
    r, rp = stream(7), stream(17)
    smile = np.zeros(n)
    for at in _events(r, duration, (6.0 / expr, 18.0 / expr), first=r.uniform(2.0, 8.0)):
        if rp.random() < 0.5:
            brow = np.maximum(brow, rp.uniform(0.3, 0.7) * _pulse(t, at, 0.2, rp.uniform(0.3, 1.0), 0.4))
        else:
            smile = np.maximum(smile, rp.uniform(0.3, 0.8) * _pulse(t, at, 0.3, rp.uniform(0.8, 3.0), 0.5))
    pose[:, index("eyebrow_raised_left")] = brow
    pose[:, index("eyebrow_raised_right")] = 0.9 * brow
    pose[:, index("eyebrow_happy_left")] = 0.4 * smile
    pose[:, index("eyebrow_happy_right")] = 0.4 * smile
    pose[:, index("eye_happy_wink_left")] = 0.5 * smile * (1 - blink)
    pose[:, index("eye_happy_wink_right")] = 0.5 * smile * (1 - blink)
    pose[:, index("mouth_raised_corner_left")] = 0.7 * smile
    pose[:, index("mouth_raised_corner_right")] = 0.7 * smile

    # tracker noise: jitter on every tracked value, zero-clipped blendshapes; rare glitches
    sigma = np.zeros(POSE_SIZE)
    sigma[0:12] = BROW_NOISE
    sigma[12:26] = EYE_NOISE
    sigma[26:37] = MOUTH_NOISE
    sigma[37:39] = IRIS_NOISE
    sigma[39:44] = ANGLE_NOISE
    sigma[44] = 0.0  # breathing is synthesised by apps, not tracked
    tracked = np.zeros(POSE_SIZE, bool)
    tracked[[index(f"eyebrow_{b}_{s}") for b in ("raised", "happy", "lowered") for s in ("left", "right")]] = True
    tracked[12:16] = True  # wink, happy wink
    tracked[[index("eye_surprised_left"), index("eye_surprised_right")]] = True
    tracked[26:37] = True
    tracked[37:44] = True
    pose += stream(8).normal(size=(n, POSE_SIZE)) * (sigma * tracked)
    glitch = stream(9).random(n) < 0.002
    pose[glitch, 39:42] += stream(10).normal(0.0, 0.08, size=(n, 3))[glitch]

    out = np.clip(pose, POSE_MIN.astype(np.float64), POSE_MAX.astype(np.float64)).astype(np.float32)
    return out
