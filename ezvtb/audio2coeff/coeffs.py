"""The 3DMM coefficient layout Audio2Coeff produces and the host-side helpers both of its paths use (the whole-file
pipeline and the streamed one): 64 expression + 3 rotation angles + 3 translations per 25 fps video frame."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EXP_DIM = 64
COEFF_DIM = 70  # 64 expression + 3 rotation angles + 3 translations


def _savgol_window(n: int) -> int:
    return 13 if n >= 13 else int((n - 1) / 2) * 2 + 1


def smooth_pose(pose: np.ndarray) -> np.ndarray:
    """Savitzky-Golay along time (axis 0), window 13 or the largest odd <= T, order 2 (none below 3 frames)."""
    from scipy.signal import savgol_filter

    w = _savgol_window(pose.shape[0])
    if w < 3:
        return pose.astype(np.float32)
    return savgol_filter(pose, w, 2, axis=0).astype(np.float32)


def read_coeff_mat(path: str | os.PathLike, argument: str, min_cols: int = COEFF_DIM) -> np.ndarray:
    """``coeff_3dmm`` (N, >= min_cols) float32 from a .mat file; ValueError naming `argument` otherwise."""
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    try:
        d = loadmat(str(p))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a broken file
        raise ValueError(f"{argument}: {str(p)!r} is not a MATLAB .mat file: {e}") from None
    if "coeff_3dmm" not in d:
        raise ValueError(f"{argument}: {str(p)!r} has no 'coeff_3dmm' entry "
                         f"(has {sorted(k for k in d if not k.startswith('__'))})")
    c = np.asarray(d["coeff_3dmm"])
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < min_cols or not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"{argument}: 'coeff_3dmm' in {str(p)!r} must be (N >= 1, >= {min_cols}) numbers, "
                         f"got {c.dtype}{list(c.shape)}")
    return c.astype(np.float32)
