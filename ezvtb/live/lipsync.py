"""Speech -> THA3 mouth parameters, without any downloaded weights (uLipSync-style signal processing).

Every 10 ms the newest 25 ms of 16 kHz audio is analysed:

| step | value |
|---|---|
| envelope | Hann window, log power spectrum (1024-point FFT), cepstrum liftered to 2.5 ms (the vocal-tract envelope without the pitch harmonics), in dB below its maximum over 150-3600 Hz, floored at -30 dB |
| features | F1 = power centroid of the envelope over 200-1100 Hz (first formant region, as log2 Hz); M = envelope peak over 1100-1700 Hz (a's F2, above o's); H = peak over 1800-3500 Hz (F2/F3 of i and e) |
| vowel | distance to five vowel templates (a, i, u, e, o) in units of `FEATURE_SCALES`; weights softmax(-d^2 / (2 temperature)) |
| openness | window RMS in dBFS mapped linearly from `silence_db` (closed) to `loud_db` (fully open) |
| mouth | mouth_<v> = openness * weight_v; attack/release smoothing (time constants `attack`, `release`) |

Default templates (`DEFAULT_TEMPLATES`) come from average adult Japanese-vowel first formants and the typical
envelope levels of each vowel, so the estimator works out of the box. `calibrate(vowel, samples)` replaces a
template by the mean features of the user's own sustained vowel, `calibrate_silence(samples)` sets the noise floor, and `save_profile` / `load_profile`
keep a voice profile as JSON.

Latency (sound to pose): half the analysis window (12.5 ms) + up to one hop (10 ms) + the attack smoothing
(about one time constant, 15 ms by default) + the audio device's input buffer (microphone, ``latency="low"``:
typically 10-30 ms) + the render tick. `benchmarks/bench_audio.py` measures it; the budget is 100 ms.

Sources (`open_source`): ``audio://PATH.wav`` plays a file by wall clock (``step=1``: one `fps` tick per
`latest` call; ``loop=1``), ``audio://mic`` reads the default microphone through `sounddevice` (``device=`` picks
one). Options: ``profile=voice.json``, ``silence_db``, ``loud_db``, ``attack``, ``release``, ``temperature``,
``breathing`` (period, s). Only the mouth parameters (and breathing) are set; the rest of the pose is neutral.
With ``sadtalker=SadTalker_V0.0.2_*.safetensors&bfm=BFM_model_front.mat`` (files only; ``exp_profile``,
``pose_style``, ``seed``) the mouth comes from Audio2Coeff's expression coefficients instead
(`ezvtb.audio2coeff.mouth`, precomputed for the whole file when the source opens).

numpy only (scipy is imported lazily, to resample a file or build the default templates); no torch.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ezvtb.atomic import atomic_write
from ezvtb.audio2coeff.frontend import hann_periodic, load_wav, resample, to_mono
from ezvtb.live.mapping import breathing_value
from ezvtb.live.source_base import (
    PLAYBACK_KEYS,
    PlaybackClock,
    PoseSample,
    PoseSource,
    playback_options,
    query_number,
)
from ezvtb.pose import POSE_SIZE, index

log = logging.getLogger("ezvtb.live.lipsync")

RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 1024
LIFTER = 40  # cepstral bins kept (2.5 ms): the envelope without the pitch harmonics
FLOOR_DB = -30.0
VOWELS = ("a", "i", "u", "e", "o")
MOUTH = {v: index(f"mouth_{v * 3}") for v in VOWELS}  # mouth_aaa, mouth_iii, ...
BREATHING = index("breathing")
N_FEATURES = 3
# (log2 F1 centroid in Hz, mid-band level dB, high-band level dB) per vowel
DEFAULT_TEMPLATES = {
    "a": (math.log2(780.0), -6.0, -14.0),
    "i": (math.log2(300.0), -28.0, -8.0),
    "u": (math.log2(350.0), -26.0, -24.0),
    "e": (math.log2(460.0), -28.0, -4.0),
    "o": (math.log2(560.0), -26.0, -17.0),
}
FEATURE_SCALES = np.array([0.3, 8.0, 5.0])  # log2 F1 (0.3 octave), dB, dB

_FREQS = np.arange(N_FFT // 2 + 1) * RATE / N_FFT
_REF_BAND = (_FREQS > 150) & (_FREQS < 3600)
_F1_BAND = (_FREQS >= 200) & (_FREQS <= 1100)
_MID_BAND = (_FREQS >= 1100) & (_FREQS <= 1700)
_HIGH_BAND = (_FREQS >= 1800) & (_FREQS <= 3500)
_WIN = hann_periodic(WINDOW)


def _envelope_features(frames: np.ndarray) -> np.ndarray:
    """(N, 400) windows -> (N, 3) features (module docstring)."""
    power_db = 10.0 * np.log10(np.abs(np.fft.rfft(frames * _WIN, N_FFT, axis=1)) ** 2 + 1e-12)
    cep = np.fft.irfft(power_db, axis=1)
    cep[:, LIFTER:N_FFT - LIFTER + 1] = 0.0
    env = np.fft.rfft(cep, axis=1).real
    env = np.maximum(env - env[:, _REF_BAND].max(axis=1, keepdims=True), FLOOR_DB)
    p = 10.0 ** (env[:, _F1_BAND] / 10.0)
    f1 = (p * _FREQS[_F1_BAND]).sum(axis=1) / p.sum(axis=1)
    return np.stack([np.log2(f1), env[:, _MID_BAND].max(axis=1), env[:, _HIGH_BAND].max(axis=1)], axis=1)


def features(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-hop (N, 3) features and (N,) RMS levels in dBFS of a 16 kHz signal (400-sample windows every 160)."""
    x = np.asarray(samples, np.float64)
    if len(x) < WINDOW:
        return np.zeros((0, N_FEATURES)), np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]
    rms = np.sqrt(np.mean(frames * frames, axis=1) + 1e-20)
    return _envelope_features(frames), 20.0 * np.log10(rms + 1e-12)


def frame_features(window: np.ndarray) -> tuple[np.ndarray, float]:
    """Features (3,) and RMS level (dBFS) of one 400-sample 16 kHz window."""
    f, db = features(np.asarray(window, np.float64)[-WINDOW:])
    return f[0], float(db[0])


def default_templates() -> dict[str, np.ndarray]:
    return {v: np.array(t, np.float64) for v, t in DEFAULT_TEMPLATES.items()}


def _check_positive(name: str, v: float) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a number > 0, got {v!r}")
    return v


@dataclass
class VowelEstimator:
    """Streaming vowel + openness estimator (module docstring). Feed 16 kHz float samples with `push`, read
    the smoothed mouth weights with `mouth()`; `analyse(window)` is the stateless per-window step."""

    silence_db: float = -45.0
    loud_db: float = -18.0
    attack: float = 0.015  # s, opening time constant
    release: float = 0.06  # s, closing time constant
    temperature: float = 1.0  # softmax temperature on squared scaled distances
    templates: dict[str, np.ndarray] = field(default_factory=default_templates)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.silence_db) and math.isfinite(self.loud_db) and self.loud_db > self.silence_db):
            raise ValueError(f"loud_db/silence_db: expected finite loud_db > silence_db, got {self.loud_db}, "
                             f"{self.silence_db}")
        _check_positive("attack", self.attack)
        _check_positive("release", self.release)
        _check_positive("temperature", self.temperature)
        missing = [v for v in VOWELS if v not in self.templates]
        if missing:
            raise ValueError(f"templates: missing vowel(s) {missing}")
        self._buf = np.zeros(WINDOW, np.float64)
        self._pending = 0  # samples since the last analysis
        self._state = np.zeros(len(VOWELS))
        self._tmpl = np.stack([np.asarray(self.templates[v], np.float64) for v in VOWELS])

    # --- stateless ------------------------------------------------------------------------------
    def vowel_weights(self, feat: np.ndarray) -> np.ndarray:
        """(5,) softmax weights of the vowels for one (3,) feature vector."""
        d2 = (((self._tmpl - feat[None, :]) / FEATURE_SCALES) ** 2).sum(axis=1)
        s = -0.5 * d2 / self.temperature
        w = np.exp(s - s.max())
        return w / w.sum()

    def openness(self, level_db: float) -> float:
        return float(min(1.0, max(0.0, (level_db - self.silence_db) / (self.loud_db - self.silence_db))))

    def analyse(self, window: np.ndarray) -> np.ndarray:
        """Unsmoothed (5,) mouth weights (a, i, u, e, o) of one 400-sample window."""
        feat, db = frame_features(window)
        return self.openness(db) * self.vowel_weights(feat)

    # --- streaming ------------------------------------------------------------------------------
    def reset(self) -> None:
        self._buf[:] = 0
        self._pending = 0
        self._state[:] = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feeds samples; runs one analysis per completed 10 ms hop; returns the smoothed (5,) weights."""
        x = np.asarray(samples, np.float64).reshape(-1)
        pos = 0
        while pos < len(x):
            take = min(HOP - self._pending, len(x) - pos)
            self._buf = np.roll(self._buf, -take)
            self._buf[-take:] = x[pos:pos + take]
            pos += take
            self._pending += take
            if self._pending == HOP:
                self._pending = 0
                self._step(self.analyse(self._buf))
        return self._state.copy()

    def _step(self, target: np.ndarray) -> None:
        dt = HOP / RATE
        a_up, a_down = 1 - math.exp(-dt / self.attack), 1 - math.exp(-dt / self.release)
        alpha = np.where(target > self._state, a_up, a_down)
        self._state += alpha * (target - self._state)

    def mouth(self) -> np.ndarray:
        return self._state.copy()

    def track(self, samples: np.ndarray) -> np.ndarray:
        """(N, 5) smoothed weights after each 10 ms hop of a whole 16 kHz signal (offline use and tests)."""
        self.reset()
        x = np.asarray(samples, np.float64)
        return np.stack([self.push(x[i:i + HOP]) for i in range(0, len(x) - HOP + 1, HOP)]) if len(x) >= HOP \
            else np.zeros((0, len(VOWELS)))

    # --- calibration ----------------------------------------------------------------------------
    def calibrate(self, vowel: str, samples: np.ndarray, rate: int = RATE) -> None:
        """Template of `vowel` := mean features of the voiced windows of a recording of it (>= 0.2 s)."""
        if vowel not in VOWELS:
            raise ValueError(f"vowel: expected one of {VOWELS}, got {vowel!r}")
        x = _to_16k(samples, rate)
        feats, db = features(x)
        voiced = feats[db > self.silence_db + 0.5 * (self.loud_db - self.silence_db)] if len(db) else feats
        if len(voiced) < 20:
            raise ValueError(f"samples: need at least 0.2 s of voiced '{vowel}' above "
                             f"{self.silence_db + 0.5 * (self.loud_db - self.silence_db):.0f} dBFS, got "
                             f"{len(voiced) * HOP / RATE:.2f} s")
        self.templates[vowel] = voiced.mean(axis=0)
        self._tmpl = np.stack([np.asarray(self.templates[v], np.float64) for v in VOWELS])

    def calibrate_silence(self, samples: np.ndarray, rate: int = RATE, margin_db: float = 6.0) -> None:
        """Sets `silence_db` just above the loudest 95th-percentile level of a recording of the room."""
        _, db = features(_to_16k(samples, rate))
        if len(db) == 0:
            raise ValueError("samples: need at least 25 ms of audio")
        floor = float(np.percentile(db, 95)) + margin_db
        if floor >= self.loud_db:
            raise ValueError(f"samples: the room is too loud ({floor:.0f} dBFS noise floor >= loud_db {self.loud_db})")
        self.silence_db = floor

    def profile(self) -> dict[str, Any]:
        return {"silence_db": self.silence_db, "loud_db": self.loud_db, "attack": self.attack,
                "release": self.release, "temperature": self.temperature,
                "templates": {v: [float(x) for x in self.templates[v]] for v in VOWELS}}

    def save_profile(self, path: str | os.PathLike) -> None:

        with atomic_write(path, "w") as f:
            json.dump(self.profile(), f, indent=1)

    @classmethod
    def load_profile(cls, path: str | os.PathLike, **overrides: Any) -> "VowelEstimator":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            tm = {v: np.asarray(d["templates"][v], np.float64) for v in VOWELS}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"profile: cannot read a voice profile from {str(p)!r}: {e}") from None
        if any(t.shape != (N_FEATURES,) or not np.isfinite(t).all() for t in tm.values()):
            raise ValueError(f"profile: templates in {str(p)!r} must be {N_FEATURES} finite numbers per vowel")
        kw = {k: float(d[k]) for k in ("silence_db", "loud_db", "attack", "release", "temperature") if k in d}
        return cls(**{**kw, **overrides}, templates=tm)


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:

    return resample(to_mono(samples), int(rate), RATE)


def mouth_pose(weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A float32 (45,) pose (neutral except the mouth) from (5,) a/i/u/e/o weights."""
    pose = np.zeros(POSE_SIZE, np.float32) if out is None else out
    for v, w in zip(VOWELS, weights):
        pose[MOUTH[v]] = min(1.0, max(0.0, float(w)))
    return pose


# --- pose sources ---------------------------------------------------------------------------------


class AudioFilePoseSource(PoseSource):
    """Plays a 16 kHz mono signal by wall clock (or `fps` ticks per `latest` with `step`): each `latest` feeds
    the samples up to the current position to the estimator and returns the mouth pose."""

    def __init__(self, url: str, samples: np.ndarray, estimator: VowelEstimator, *, fps: float = 30.0,
                 loop: bool = False, step: bool = False, breathing_period: float = 0.0) -> None:
        if len(samples) < HOP:
            raise ValueError(f"input: {url!r} has less than 10 ms of audio")
        self.url, self.samples, self.est = url, np.asarray(samples, np.float32), estimator
        self.fps, self.loop, self.step = _check_positive("fps", fps), bool(loop), bool(step)
        self.clock = PlaybackClock(self.fps, self.step)
        self.breathing_period = breathing_period
        self._pos = 0  # samples fed so far (absolute, grows across loops)
        self._seq = 0
        self.analysis_s = 0.0

    def start(self) -> "AudioFilePoseSource":
        self.clock.start()
        return self

    def _target(self) -> int:
        """Samples to have fed: up to the end of this tick (step), or up to now (wall clock)."""
        if self.step:
            return int(round((self.clock.tick() + 1) * RATE / self.fps))
        return int(self.clock.elapsed() * RATE)

    def latest(self) -> PoseSample:
        target = self._target()
        n = len(self.samples)
        if not self.loop:
            target = min(target, n)
        t0 = time.perf_counter()
        while self._pos < target:
            i = self._pos % n
            take = min(target - self._pos, n - i)
            self.est.push(self.samples[i:i + take])
            self._pos += take
        self.analysis_s += time.perf_counter() - t0
        pose = mouth_pose(self.est.mouth())
        pose[BREATHING] = breathing_value(time.perf_counter(), self.breathing_period)
        self._seq += 1
        return PoseSample(pose, time.perf_counter(), self._seq)

    @property
    def finished(self) -> bool:
        return not self.loop and self._pos >= len(self.samples)

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "position_s": self._pos / RATE, "duration_s": len(self.samples) / RATE,
                "analysis_s": self.analysis_s}


class MicrophonePoseSource(PoseSource):
    """Live microphone through `sounddevice` (16 kHz mono, 10 ms blocks, low-latency input): the callback feeds
    the estimator; `latest` returns the newest mouth pose."""

    def __init__(self, url: str, estimator: VowelEstimator, device: str | int | None = None,
                 breathing_period: float = 0.0) -> None:
        try:
            import sounddevice  # the optional mic extra (PortAudio)
        except (ImportError, OSError) as e:
            raise RuntimeError(f"input {url}: the microphone needs the 'sounddevice' package and PortAudio "
                               f"(pip install ezvtb[mic]): {e}") from None
        self.url, self.est, self.breathing_period = url, estimator, breathing_period
        self._lock = threading.Lock()
        self._sample: PoseSample | None = None
        self._seq = 0
        self.blocks = 0
        self.overflows = 0
        self.stream = sounddevice.InputStream(samplerate=RATE, blocksize=HOP, channels=1, dtype="float32",
                                              latency="low", device=device, callback=self._callback)
        self.input_latency_s = float(self.stream.latency)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.overflows += 1
        w = self.est.push(indata[:, 0])
        now = time.perf_counter()
        with self._lock:
            self.blocks += 1
            self._seq += 1
            self._sample = PoseSample(mouth_pose(w), now, self._seq)

    def start(self) -> "MicrophonePoseSource":
        self.stream.start()
        return self

    def latest(self) -> PoseSample | None:
        with self._lock:
            s = self._sample
        if s is None:
            return None
        pose = s.pose.copy()
        pose[BREATHING] = breathing_value(time.perf_counter(), self.breathing_period)
        return PoseSample(pose, s.t, s.seq)

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "blocks": self.blocks, "overflows": self.overflows,
                "input_latency_s": self.input_latency_s}

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


class MouthOverlaySource(PoseSource):
    """A tracker source with the mouth driven by an audio source: mouth_{aaa..ooo} = max(tracker, audio)."""

    def __init__(self, base: PoseSource, audio: PoseSource) -> None:
        self.base, self.audio = base, audio
        self.url = f"{base.url} + {audio.url}"
        self._idx = np.array([MOUTH[v] for v in VOWELS])

    def start(self) -> "MouthOverlaySource":
        self.base.start()
        self.audio.start()
        return self

    def latest(self) -> PoseSample | None:
        b, a = self.base.latest(), self.audio.latest()
        if b is None:
            return a
        if a is None:
            return b
        pose = b.pose.copy()
        pose[self._idx] = np.maximum(pose[self._idx], a.pose[self._idx])
        return PoseSample(pose, max(a.t, b.t), b.seq + a.seq)

    @property
    def finished(self) -> bool:
        return self.base.finished

    def stats(self) -> dict[str, Any]:
        return {"tracker": self.base.stats(), "audio": self.audio.stats()}

    def close(self) -> None:
        self.base.close()
        self.audio.close()


AUDIO_KEYS = PLAYBACK_KEYS | {"profile", "silence_db", "loud_db", "attack", "release", "temperature",
              "breathing", "device", "sadtalker", "bfm", "exp_profile", "pose_style", "seed"}
SADTALKER_KEYS = ("sadtalker", "bfm", "exp_profile", "pose_style", "seed")  # ezvtb.audio2coeff.mouth


def open_audio_source(url: str, rest: str, q: dict[str, str]) -> PoseSource:
    """``audio://PATH`` or ``audio://mic`` (module docstring); called by `ezvtb.live.open_source`."""
    unknown = sorted(set(q) - AUDIO_KEYS)
    if unknown:
        raise ValueError(f"input: unknown option(s) {unknown} for audio:// (allowed: {sorted(AUDIO_KEYS)})")
    kw = {k: query_number(k, q[k]) for k in ("silence_db", "loud_db", "attack", "release", "temperature") if k in q}
    est = VowelEstimator.load_profile(q["profile"], **kw) if q.get("profile") else VowelEstimator(**kw)
    breathing = query_number("breathing", q.get("breathing", "0"))
    target = urllib.parse.unquote(rest)
    if any(k in q for k in SADTALKER_KEYS):
        est = _expression_player(url, target, q)
    if target in ("mic", "microphone"):
        dev: str | int | None = q.get("device") or None
        if isinstance(dev, str) and dev.isdigit():
            dev = int(dev)
        return MicrophonePoseSource(url, est, dev, breathing).start()

    samples = load_wav(target, RATE, "input")
    fps, loop, step = playback_options(q, loop=False)
    return AudioFilePoseSource(url, samples, est, fps=fps, loop=loop, step=step, breathing_period=breathing).start()


def _expression_player(url: str, target: str, q: dict[str, str]) -> Any:
    """``sadtalker=CKPT&bfm=PATH[&exp_profile=JSON&pose_style=N&seed=N]``: the mouth from Audio2Coeff's
    expression coefficients (`ezvtb.audio2coeff.mouth`), precomputed for the whole file."""
    if target in ("mic", "microphone"):
        raise ValueError(f"input: {url!r}: sadtalker=/bfm= need a file (Audio2Coeff looks 0.2 s ahead); "
                         f"use audio://mic without them")
    if not q.get("sadtalker") or not q.get("bfm"):
        raise ValueError(f"input: {url!r}: the expression mouth needs both sadtalker=SadTalker_V0.0.2_*.safetensors "
                         f"and bfm=BFM_model_front.mat")
    from ezvtb.audio2coeff.mouth import expression_player  # Audio2Coeff: torch and the SadTalker networks

    return expression_player(target, q["sadtalker"], q["bfm"], profile=q.get("exp_profile") or None,
                             pose_style=int(query_number("pose_style", q.get("pose_style", "0"))),
                             seed=int(query_number("seed", q.get("seed", "0"))))


def mouth_track(samples: np.ndarray, fps: float, estimator: VowelEstimator | None = None) -> np.ndarray:
    """(ceil(duration * fps), 45) poses, one per video frame: the smoothed mouth at the end of each frame."""
    est = estimator or VowelEstimator()
    w = est.track(samples)
    n = max(1, int(math.ceil(len(samples) / RATE * fps)))
    hops = np.minimum(((np.arange(1, n + 1) / fps) * RATE / HOP).astype(int) - 1, len(w) - 1)
    return np.stack([mouth_pose(w[h] if h >= 0 else np.zeros(len(VOWELS))) for h in hops])
