"""The 45-float THA3 pose: parameter names, ranges, slices, and validation.

| index | parameters | range |
|---|---|---|
| 0-11  | eyebrow_{troubled,angry,lowered,raised,happy,serious}_{left,right} | [0, 1] |
| 12-23 | eye_{wink,happy_wink,surprised,relaxed,unimpressed,raised_lower_eyelid}_{left,right} | [0, 1] |
| 24-25 | iris_small_{left,right} | [0, 1] |
| 26-31 | mouth_{aaa,iii,uuu,eee,ooo,delta} | [0, 1] |
| 32-35 | mouth_{lowered,raised}_corner_{left,right} | [0, 1] |
| 36    | mouth_smirk | [0, 1] |
| 37-38 | iris_rotation_{x,y} | [-1, 1] |
| 39-41 | head_x, head_y, neck_z | [-1, 1] |
| 42-43 | body_y, body_z | [-1, 1] |
| 44    | breathing | [0, 1] |

Slices: eyebrow = [0:12] (combiner), face = [12:39] (face morpher), rotation = [39:45]
(rotator and editor). Values outside a parameter's range are clipped to it.
"""
from __future__ import annotations

import numpy as np

POSE_SIZE = 45
EYEBROW = slice(0, 12)
FACE = slice(12, 39)
ROTATION = slice(39, 45)


def _names() -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []

    def pair(base: str) -> None:
        out.extend([(f"{base}_left", 0.0, 1.0), (f"{base}_right", 0.0, 1.0)])

    for b in ("troubled", "angry", "lowered", "raised", "happy", "serious"):
        pair(f"eyebrow_{b}")
    for b in ("wink", "happy_wink", "surprised", "relaxed", "unimpressed", "raised_lower_eyelid"):
        pair(f"eye_{b}")
    pair("iris_small")
    for b in ("aaa", "iii", "uuu", "eee", "ooo", "delta"):
        out.append((f"mouth_{b}", 0.0, 1.0))
    pair("mouth_lowered_corner")
    pair("mouth_raised_corner")
    out.append(("mouth_smirk", 0.0, 1.0))
    for n in ("iris_rotation_x", "iris_rotation_y", "head_x", "head_y", "neck_z", "body_y", "body_z"):
        out.append((n, -1.0, 1.0))
    out.append(("breathing", 0.0, 1.0))
    return out


PARAMETERS: tuple[tuple[str, float, float], ...] = tuple(_names())
PARAMETER_NAMES: tuple[str, ...] = tuple(n for n, _, _ in PARAMETERS)
POSE_MIN = np.array([lo for _, lo, _ in PARAMETERS], dtype=np.float32)
POSE_MAX = np.array([hi for _, _, hi in PARAMETERS], dtype=np.float32)
assert len(PARAMETERS) == POSE_SIZE


def index(name: str) -> int:
    """Index of a parameter by name (``KeyError`` naming the parameter if unknown)."""
    try:
        return PARAMETER_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown pose parameter {name!r}") from None


def canonical_zeros(pose: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`pose` with every -0.0 turned into +0.0 (into `out`, any float array of its shape; in place
    by default). The one place of this rule: every consumer that compares or hashes pose bytes
    (THA's change detection and intermediate cache, the output-cache key) sees one zero."""
    return np.add(pose, 0.0, out=pose if out is None else out, casting="unsafe")  # -0.0 + 0.0 = +0.0


def validate_pose(pose: object, argument: str = "pose", out: np.ndarray | None = None,
                  step: float | None = None) -> np.ndarray:
    """Check and normalise a pose to a float32 (45,) array clipped to the parameter ranges.

    Accepts shape (45,) or (1, 45), any real dtype. Raises ValueError naming `argument`
    for other shapes, non-numeric data, NaN or inf. Writes into `out` when given.
    `step`: snap to that grid (`quantize_pose`). Zeros come out as +0.0 (`canonical_zeros`),
    so a pose compares byte-equal to the same pose with -0.0 anywhere.
    """
    try:
        a = np.asarray(pose)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"{argument}: expected 45 floats of shape (45,) or (1, 45), got {type(pose).__name__}") from e
    if a.shape not in ((POSE_SIZE,), (1, POSE_SIZE)):
        raise ValueError(
            f"{argument}: expected shape (45,) or (1, 45) float32, got shape {a.shape} dtype {a.dtype}"
        )
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
        raise ValueError(f"{argument}: expected a real-valued (float32) array, got dtype {a.dtype}")
    a = a.reshape(POSE_SIZE)
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a.astype(np.float64)))
        raise ValueError(
            f"{argument}: contains NaN or inf at index {bad.tolist()} "
            f"({', '.join(PARAMETER_NAMES[i] for i in bad[:5])})"
        )
    if out is None:
        out = np.empty(POSE_SIZE, dtype=np.float32)
    np.clip(a, POSE_MIN, POSE_MAX, out=out, casting="unsafe")
    return quantize_pose(out, step)


def quantize_pose(pose: np.ndarray, step: float | None) -> np.ndarray:
    """Snap every parameter to a grid of `step` (in place; None leaves the values unchanged);
    zeros come out as +0.0 either way (rounding -0.01 gives -0.0)."""
    if step:
        np.round(pose / step, out=pose)
        pose *= step
        np.clip(pose, POSE_MIN, POSE_MAX, out=pose)
    return canonical_zeros(pose)
