"""The built-in demo pose script: a few seconds of a character talking, blinking and moving.

`demo_poses(n_frames, fps)` returns a float32 (n_frames, 45) array. The script is
deterministic (no randomness) and exercises every parameter group: blinks, talking mouth
shapes (aaa/iii/uuu/eee/ooo), eyebrows, iris movement, a head turn and tilt, body sway and
breathing, so every THA3 sub-network runs with changing inputs.
"""
from __future__ import annotations

import numpy as np

from ezvtb.pose import POSE_SIZE, index


def _smooth_pulse(t: np.ndarray, start: float, length: float) -> np.ndarray:
    """0 -> 1 -> 0 over [start, start + length] with a raised-cosine shape."""
    x = np.clip((t - start) / length, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(2 * np.pi * x)


def demo_poses(n_frames: int = 150, fps: float = 30.0) -> np.ndarray:
    if n_frames < 1:
        raise ValueError(f"n_frames: expected >= 1, got {n_frames}")
    if not fps > 0:
        raise ValueError(f"fps: expected > 0, got {fps}")
    t = np.arange(n_frames, dtype=np.float64) / fps
    dur = max(t[-1], 1e-6)
    p = np.zeros((n_frames, POSE_SIZE), np.float64)

    # Blinks every ~1.7 s, 0.25 s long (both eyes).
    blink = np.zeros_like(t)
    for s in np.arange(0.6, dur, 1.7):
        blink = np.maximum(blink, _smooth_pulse(t, s, 0.25))
    p[:, index("eye_wink_left")] = blink
    p[:, index("eye_wink_right")] = blink

    # Talking: cycle through vowels, syllables of ~0.18 s, pauses between phrases.
    vowels = ["mouth_aaa", "mouth_iii", "mouth_uuu", "mouth_eee", "mouth_ooo"]
    syll = 0.18
    phrase = (t % 2.4) < 1.6  # speak 1.6 s, pause 0.8 s
    k = (t // syll).astype(int)
    openness = np.sin(np.pi * ((t % syll) / syll)) ** 2 * phrase
    for i, v in enumerate(vowels):
        p[:, index(v)] = np.where(k % len(vowels) == i, openness, 0.0)

    # Eyebrows: raised, then troubled, then happy.
    p[:, index("eyebrow_raised_left")] = p[:, index("eyebrow_raised_right")] = _smooth_pulse(t, 0.3, 1.2)
    p[:, index("eyebrow_troubled_left")] = p[:, index("eyebrow_troubled_right")] = _smooth_pulse(t, 1.8, 1.2) * 0.8
    p[:, index("eyebrow_happy_left")] = p[:, index("eyebrow_happy_right")] = _smooth_pulse(t, 3.3, 1.2)
    # A smile while happy.
    corners = _smooth_pulse(t, 3.3, 1.2) * 0.7
    p[:, index("mouth_raised_corner_left")] = p[:, index("mouth_raised_corner_right")] = corners

    # Irises drift.
    p[:, index("iris_rotation_x")] = 0.4 * np.sin(2 * np.pi * t / 3.1)
    p[:, index("iris_rotation_y")] = 0.3 * np.sin(2 * np.pi * t / 2.3 + 1.0)

    # Head turn (y), nod (x), tilt (neck z); body sway; breathing at ~0.25 Hz.
    p[:, index("head_y")] = 0.8 * np.sin(2 * np.pi * t / 5.0)
    p[:, index("head_x")] = 0.3 * np.sin(2 * np.pi * t / 2.5)
    p[:, index("neck_z")] = 0.4 * np.sin(2 * np.pi * t / 4.0 + 0.5)
    p[:, index("body_y")] = 0.4 * np.sin(2 * np.pi * t / 6.0)
    p[:, index("body_z")] = 0.3 * np.sin(2 * np.pi * t / 3.5 + 1.3)
    p[:, index("breathing")] = 0.5 - 0.5 * np.cos(2 * np.pi * t / 4.0)
    return p.astype(np.float32)
