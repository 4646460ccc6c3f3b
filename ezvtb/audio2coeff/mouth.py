"""Audio2Coeff expression coefficients -> THA3 mouth parameters, through the BFM face the coefficients belong to.

SadTalker's 64 expression coefficients weight the expression basis of the Basel Face Model as Deep3DFaceRecon cut it
(``BFM_model_front.mat``, shipped in SadTalker's checkpoint download as ``checkpoints/BFM_Fitting/``). With the
identity fixed at the mean face, the 68 landmarks of a frame are

    landmarks = (meanshape + exBase @ exp)  at the vertices `keypoints` (1-based), xyz interleaved per vertex

and the mouth is measured on them (distances only, so the pose and the recentring of the mean do not matter):

| measure | definition |
|---|---|
| openness | mean distance of the inner-lip pairs 61-67, 62-66, 63-65 (0-based iBUG-68 numbering) |
| width | distance of the outer lip corners 48-54 |

both divided by the neutral face's outer-eye-corner distance (36-45). `ExpressionMouth` maps them to THA3 as a
bilinear blend on (open, spread/round): with o = openness above `open_closed` scaled to `open_full`, p = widening
beyond the neutral width scaled by `wide` and r = narrowing scaled by `narrow` (each clipped to [0, 1]):

    mouth_aaa = o (1 - max(p, r)),  mouth_iii = p (1 - o),  mouth_eee = p o,  mouth_uuu = r (1 - o),  mouth_ooo = r o

The ranges are deltas from the neutral face in eye-distance units; `calibrate(exp)` sets them from a voice's own
coefficients (percentiles), `save_profile` / `load_profile` keep them as JSON. numpy (scipy.io to read the .mat).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ezvtb.audio2coeff.coeffs import EXP_DIM
N_LANDMARKS = 68
BFM_KEYS = ("meanshape", "exBase", "keypoints")
BFM_HINT = ("SadTalker's checkpoint download ships it as checkpoints/BFM_Fitting/BFM_model_front.mat "
            "(BFM_Fitting.zip, next to the SadTalker_V0.0.2_*.safetensors files); Deep3DFaceRecon builds the same "
            "file from the Basel Face Model 2009")
INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
LIP_CORNERS = (48, 54)
EYE_CORNERS = (36, 45)
FPS = 25.0  # Audio2Coeff's frame rate


@dataclass(frozen=True)
class BfmLandmarks:
    """The 68 landmark rows of the BFM expression model: `mean` (68, 3) and `basis` (68, 3, 64)."""

    mean: np.ndarray
    basis: np.ndarray

    @classmethod
    def from_arrays(cls, meanshape: np.ndarray, ex_base: np.ndarray, keypoints: np.ndarray,
                    argument: str = "bfm") -> "BfmLandmarks":
        """From the .mat arrays: meanshape (3N, 1) or (1, 3N), exBase (3N, 64), keypoints 68 1-based indices."""
        mean = np.asarray(meanshape, np.float64).reshape(-1)
        base = np.asarray(ex_base, np.float64)
        kp = np.asarray(keypoints).reshape(-1)
        if mean.size == 0 or mean.size % 3:
            raise ValueError(f"{argument}: meanshape must hold 3N numbers (xyz per vertex), got {mean.size}")
        if base.ndim != 2 or base.shape != (mean.size, EXP_DIM):
            raise ValueError(f"{argument}: exBase must be ({mean.size}, {EXP_DIM}) for a {mean.size // 3}-vertex "
                             f"meanshape, got {list(base.shape)}")
        if kp.size != N_LANDMARKS or not np.all(np.equal(np.mod(kp, 1), 0)):
            raise ValueError(f"{argument}: keypoints must be {N_LANDMARKS} integer vertex indices, got {kp.size} "
                             f"values")
        kp = kp.astype(np.int64) - 1  # 1-based in the file
        if kp.min() < 0 or kp.max() >= mean.size // 3:
            raise ValueError(f"{argument}: keypoints must be 1-based vertex indices in 1..{mean.size // 3}, got "
                             f"{kp.min() + 1}..{kp.max() + 1}")
        mean3 = mean.reshape(-1, 3)[kp]
        basis = base.reshape(-1, 3, EXP_DIM)[kp]
        if not (np.isfinite(mean3).all() and np.isfinite(basis).all()):
            raise ValueError(f"{argument}: meanshape/exBase hold non-finite values at the landmarks")
        return cls(mean3, basis)

    @classmethod
    def load(cls, path: str | os.PathLike | None, argument: str = "bfm") -> "BfmLandmarks":
        """Reads ``BFM_model_front.mat`` (only the three keys needed)."""
        if path is None or not Path(path).is_file():
            raise FileNotFoundError(f"{argument}: BFM_model_front.mat not found at {str(path)!r}; {BFM_HINT}")
        from scipy.io import loadmat

        try:
            m = loadmat(str(path), variable_names=list(BFM_KEYS))
        except Exception as e:  # noqa: BLE001 - scipy raises several types for a file that is not a .mat
            raise ValueError(f"{argument}: cannot read {str(path)!r} as a MATLAB .mat file: {e}") from None
        missing = [k for k in BFM_KEYS if k not in m]
        if missing:
            raise ValueError(f"{argument}: {str(path)!r} lacks {missing}; expected a BFM_model_front.mat with "
                             f"{list(BFM_KEYS)} ({BFM_HINT})")
        return cls.from_arrays(m["meanshape"], m["exBase"], m["keypoints"], argument)

    def landmarks(self, exp: np.ndarray) -> np.ndarray:
        """(T, 68, 3) landmarks of (T, 64) expression coefficients (identity = the mean face)."""
        e = np.asarray(exp, np.float64)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] < EXP_DIM:
            raise ValueError(f"exp: expected (T, {EXP_DIM}) expression coefficients (or (T, 70) Audio2Coeff "
                             f"output), got {list(e.shape)}")
        return self.mean[None] + np.einsum("kcj,tj->tkc", self.basis, e[:, :EXP_DIM])

    @property
    def face_size(self) -> float:
        """The neutral face's outer-eye-corner distance (the normaliser of every measure)."""
        return float(np.linalg.norm(self.mean[EYE_CORNERS[0]] - self.mean[EYE_CORNERS[1]]))

    def measures(self, exp: np.ndarray) -> np.ndarray:
        """(T, 2) openness and width (module docstring) of (T, 64) coefficients."""
        return mouth_measures(self.landmarks(exp), self.face_size)


def mouth_measures(landmarks: np.ndarray, face_size: float) -> np.ndarray:
    """(T, 2) [inner-lip opening, lip-corner distance] / face_size of (T, 68, 3) landmarks."""
    lm = np.asarray(landmarks, np.float64)
    if not (math.isfinite(face_size) and face_size > 0):
        raise ValueError(f"face_size: expected a number > 0 (the eye corners coincide?), got {face_size!r}")
    top = lm[:, [a for a, _ in INNER_LIP_PAIRS]]
    bottom = lm[:, [b for _, b in INNER_LIP_PAIRS]]
    opening = np.linalg.norm(top - bottom, axis=2).mean(axis=1)
    width = np.linalg.norm(lm[:, LIP_CORNERS[0]] - lm[:, LIP_CORNERS[1]], axis=1)
    return np.stack([opening, width], axis=1) / face_size


PROFILE_KEYS = ("open_closed", "open_full", "wide", "narrow")


@dataclass
class ExpressionMouth:
    """Maps BFM mouth measures to THA3's a/i/u/e/o (module docstring). Ranges are deltas from the neutral face
    in eye-distance units: `open_closed` (opening still read as closed), `open_full` (fully open), `wide` /
    `narrow` (widening / narrowing of the corners that counts as fully spread / rounded)."""

    bfm: BfmLandmarks
    open_closed: float = 0.01
    open_full: float = 0.15
    wide: float = 0.05
    narrow: float = 0.05

    def __post_init__(self) -> None:
        self._check(self.open_closed, self.open_full, self.wide, self.narrow)
        self.neutral = self.bfm.measures(np.zeros(EXP_DIM))[0]

    @staticmethod
    def _check(open_closed: float, open_full: float, wide: float, narrow: float) -> None:
        vals = {"open_closed": open_closed, "open_full": open_full, "wide": wide, "narrow": narrow}
        bad = {k: v for k, v in vals.items() if not math.isfinite(float(v))}
        if bad:
            raise ValueError(f"{', '.join(bad)}: expected finite numbers, got {bad}")
        if not open_full > open_closed:
            raise ValueError(f"open_full/open_closed: expected open_full > open_closed, got {open_full}, "
                             f"{open_closed}")
        for k in ("wide", "narrow"):
            if not vals[k] > 0:
                raise ValueError(f"{k}: expected a number > 0, got {vals[k]}")

    def weights(self, exp: np.ndarray) -> np.ndarray:
        """(T, 5) a/i/u/e/o weights in [0, 1] of (T, 64) (or (T, 70)) coefficients."""
        m = self.bfm.measures(exp) - self.neutral
        o = np.clip((m[:, 0] - self.open_closed) / (self.open_full - self.open_closed), 0.0, 1.0)
        p = np.clip(m[:, 1] / self.wide, 0.0, 1.0)
        r = np.clip(-m[:, 1] / self.narrow, 0.0, 1.0)
        a = o * (1.0 - np.maximum(p, r))
        return np.stack([a, p * (1 - o), r * (1 - o), p * o, r * o], axis=1)  # VOWELS order: a i u e o

    def calibrate(self, exp: np.ndarray, low: float = 10.0, high: float = 95.0) -> None:
        """Ranges from a voice's own coefficients (e.g. Audio2Coeff on a recording of it): opening percentiles
        `low` / `high`, widening / narrowing at the `high` percentile of each side (>= 0.005 each)."""
        m = self.bfm.measures(exp) - self.neutral
        if len(m) < 10:
            raise ValueError(f"exp: need at least 10 frames to calibrate, got {len(m)}")
        lo, hi = np.percentile(m[:, 0], [low, high])
        wide = np.percentile(np.maximum(m[:, 1], 0), high)
        narrow = np.percentile(np.maximum(-m[:, 1], 0), high)
        vals = (float(lo), float(max(hi, lo + 0.005)), float(max(wide, 0.005)), float(max(narrow, 0.005)))
        self._check(*vals)
        self.open_closed, self.open_full, self.wide, self.narrow = vals

    def profile(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in PROFILE_KEYS}

    def save_profile(self, path: str | os.PathLike) -> None:
        from ezvtb.atomic import atomic_write

        with atomic_write(path, "w") as f:
            json.dump(self.profile(), f, indent=1)

    @classmethod
    def load_profile(cls, bfm: BfmLandmarks, path: str | os.PathLike, **overrides: Any) -> "ExpressionMouth":
        try:
            d = json.loads(Path(path).read_text())
            kw = {k: float(d[k]) for k in PROFILE_KEYS if k in d}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"profile: cannot read an expression-mouth profile from {str(path)!r}: {e}") from None
        return cls(bfm, **{**kw, **overrides})

    def track(self, coeffs: np.ndarray, fps: float) -> np.ndarray:
        """(ceil(T / 25 * fps), 5) weights at video rate from Audio2Coeff's (T, >= 64) 25 fps coefficients
        (coefficients linearly resampled)."""
        c = np.asarray(coeffs, np.float64)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < EXP_DIM:
            raise ValueError(f"coeffs: expected (T >= 1, {EXP_DIM}+) coefficients, got {list(c.shape)}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: expected a number > 0, got {fps!r}")
        n = max(1, int(math.ceil(c.shape[0] / FPS * fps)))
        src_t, t = np.arange(c.shape[0]) / FPS, np.arange(n) / fps
        exp = np.stack([np.interp(t, src_t, c[:, j]) for j in range(EXP_DIM)], axis=1)
        return self.weights(exp)


class ExpressionMouthPlayer:
    """The estimator interface of `ezvtb.live.lipsync.AudioFilePoseSource` (`push`, `mouth`, `reset`) over a
    precomputed 25 fps weight track: `push` advances the 16 kHz sample position, `mouth` returns the weights at
    it (linear between frames). For ``audio://speech.wav?sadtalker=CKPT&bfm=PATH``: the whole file is run through
    Audio2Coeff when the source opens (its mel windows look 0.2 s ahead, so this path is not causal; no microphone)."""

    RATE = 16000

    def __init__(self, weights: np.ndarray) -> None:
        w = np.asarray(weights, np.float64)
        if w.ndim != 2 or w.shape[1] != 5 or len(w) < 1:
            raise ValueError(f"weights: expected (T >= 1, 5) a/i/u/e/o weights, got {list(w.shape)}")
        self.weights = w
        self._pos = 0

    def reset(self) -> None:
        self._pos = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        self._pos += int(np.asarray(samples).reshape(-1).shape[0])
        return self.mouth()

    def mouth(self) -> np.ndarray:
        f = self._pos / self.RATE * FPS
        i = int(f) % len(self.weights)
        j = (i + 1) % len(self.weights)
        a = f - int(f)
        return (1 - a) * self.weights[i] + a * self.weights[j]


def expression_player(audio_path: str | os.PathLike, checkpoint: str | os.PathLike, bfm_path: str | os.PathLike,
                      *, profile: str | os.PathLike | None = None, pose_style: int = 0,
                      seed: int = 0) -> ExpressionMouthPlayer:
    """Audio2Coeff (`checkpoint`: SadTalker_V0.0.2_*.safetensors) on `audio_path`, mapped through the BFM at
    `bfm_path`, as an `ExpressionMouthPlayer`. The BFM is checked before the networks load."""
    import tempfile

    from scipy.io import savemat

    from ezvtb.audio2coeff.pipeline import Audio2Coeff

    bfm = BfmLandmarks.load(bfm_path, "bfm")
    mouth = ExpressionMouth.load_profile(bfm, profile) if profile else ExpressionMouth(bfm)
    a2c = Audio2Coeff({"use_safetensor": True, "checkpoint": str(checkpoint)}, "cpu", backend="auto")
    try:
        with tempfile.TemporaryDirectory() as d:
            first = Path(d) / "neutral.mat"
            savemat(str(first), {"coeff_3dmm": np.zeros((1, 73), np.float32)})
            coeffs = a2c.from_wav(audio_path, first, pose_style=pose_style, seed=seed)
    finally:
        a2c.close()
    return ExpressionMouthPlayer(mouth.weights(coeffs))
