"""Audio front end of SadTalker's Audio2Coeff, in numpy (scipy only for reading, resampling and pre-emphasis).

| step | value |
|---|---|
| load | wav/flac/ogg via soundfile (scipy.io.wavfile as fallback), channels averaged to mono, resampled to 16 kHz with `scipy.signal.resample_poly` |
| length | cropped/padded to whole 25 fps video frames (640 samples each) |
| pre-emphasis | y[n] - 0.97 y[n-1] |
| STFT | n_fft 800, hop 200, periodic Hann window of 800, centred (padded by 400 on each side) |
| mel | 80 slaney-scale, slaney-normalised triangular filters, 55 to 7600 Hz |
| scaling | 20 log10(max(1e-5, S)) - 20 dB, mapped from [-100, 0] dB to [-4, 4] and clipped |
| windows | video frame i takes 16 mel frames from int(80 (i-2) / 25), indices clamped to the spectrogram |

`pad_mode="constant"` (zeros) is what librosa >= 0.10 does in `librosa.stft` and so what SadTalker's
`audio.py` computes with today's librosa; `"reflect"` is librosa 0.9's default (the SadTalker repository pins
0.9.2). The two differ only in the first and last two mel frames.

No torch and no librosa here: the realtime lip-sync source reuses `stft_magnitude` and `mel_filterbank`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_WINDOW = 16  # mel frames per video frame (0.2 s)
MEL_FRAMES_PER_SECOND = SAMPLE_RATE / HOP  # 80


# --- mel scale and filters (slaney) ------------------------------------------------------------
_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float32 triangular filters, equally spaced on the slaney mel scale, each scaled
    by 2 / (its bandwidth in Hz) (slaney area normalisation)."""
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"fmin/fmax: expected 0 <= fmin < fmax <= {sample_rate / 2}, got {fmin}, {fmax}")
    bin_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    dist = edges[:, None] - bin_hz[None, :]  # edge minus bin frequency
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    return (filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def hann_periodic(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_magnitude(y: np.ndarray, n_fft: int = N_FFT, hop: int = HOP, pad_mode: str = "constant") -> np.ndarray:
    """|STFT| of a 1-D signal, (n_fft // 2 + 1, 1 + len(y) // hop), centred frames, periodic Hann window."""
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode: expected 'constant' or 'reflect', got {pad_mode!r}")
    y = np.asarray(y, dtype=np.float64)
    half = n_fft // 2
    if pad_mode == "reflect" and len(y) <= half:
        raise ValueError(f"audio: reflect padding needs more than {half} samples, got {len(y)}")
    padded = np.pad(y, half, mode=pad_mode)
    n_frames = 1 + (len(padded) - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]
    return np.abs(np.fft.rfft(frames * hann_periodic(n_fft), axis=1)).T


def preemphasize(y: np.ndarray, k: float = PREEMPHASIS) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    out = y.copy()
    out[1:] -= k * y[:-1]
    return out


_MEL_BASIS: np.ndarray | None = None


def melspectrogram(wav: np.ndarray, pad_mode: str = "constant") -> np.ndarray:
    """SadTalker's normalised log-mel spectrogram of 16 kHz samples: (80, 1 + len // 200) float64 in [-4, 4]."""
    global _MEL_BASIS
    if _MEL_BASIS is None:
        _MEL_BASIS = mel_filterbank()
    mag = stft_magnitude(preemphasize(wav), pad_mode=pad_mode)
    mel = _MEL_BASIS.astype(np.float64) @ mag
    min_level = math.exp(MIN_LEVEL_DB / 20.0 * math.log(10.0))
    db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
    scaled = 2.0 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_windows(mel: np.ndarray, num_frames: int, fps: int = FPS) -> np.ndarray:
    """(num_frames, 80, 16) float32: video frame i sees mel frames int(80 (i-2)/fps) ... +15, clamped."""
    start = (80.0 * ((np.arange(num_frames) - 2) / float(fps))).astype(np.int64)  # truncates toward zero
    idx = np.clip(start[:, None] + np.arange(MEL_WINDOW)[None, :], 0, mel.shape[1] - 1)
    return np.ascontiguousarray(mel[:, idx].transpose(1, 0, 2)).astype(np.float32)


# --- reading audio -----------------------------------------------------------------------------
def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 (channels averaged)."""
    a = np.asarray(samples)
    if a.ndim == 2:
        a = a.mean(axis=1)
    elif a.ndim != 1:
        raise ValueError(f"audio: expected (samples,) or (samples, channels), got shape {a.shape}")
    return a.astype(np.float32)


def resample(samples: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (`scipy.signal.resample_poly`, Kaiser window) from `rate` to `target` Hz."""
    if rate == target:
        return np.asarray(samples, dtype=np.float32)
    if rate <= 0:
        raise ValueError(f"audio: sample rate must be > 0, got {rate}")
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    return resample_poly(np.asarray(samples, np.float64), target // g, int(rate) // g).astype(np.float32)


def _int_to_float(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return (a.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.float32) / float(-np.iinfo(a.dtype).min)
    return a.astype(np.float32)


def read_audio(path: str | os.PathLike, argument: str = "audio") -> tuple[np.ndarray, int]:
    """Samples (n,) or (n, channels) as float32 in [-1, 1] and the file's sample rate.

    ValueError naming `argument` for a missing file or one that is not audio."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    errors = []
    try:
        import soundfile
    except ImportError:  # libsndfile missing too; scipy's wav reader below
        soundfile = None
    if soundfile is not None:
        try:
            data, rate = soundfile.read(str(p), dtype="float32", always_2d=False)
            return np.asarray(data), int(rate)
        except Exception as e:  # noqa: BLE001 - libsndfile raises its own error types
            errors.append(f"soundfile: {e}")
    try:
        from scipy.io import wavfile
    except ImportError:
        if soundfile is None:
            from ezvtb.extras import require

            require("audio", f"{argument}: reading audio files")
        raise
    try:
        rate, data = wavfile.read(str(p))
        return _int_to_float(np.asarray(data)), int(rate)
    except Exception as e:  # noqa: BLE001
        errors.append(f"wavfile: {e}")
    raise ValueError(f"{argument}: {str(p)!r} is not a readable audio file ({'; '.join(errors)})")


def load_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, argument: str = "audio") -> np.ndarray:
    """Mono float32 samples at `sample_rate` (any channel count and rate in the file). Read and resampled block
    by block (`stream_wav`): the peak is the result (4 bytes per output sample) plus a few seconds of audio."""
    n, chunks = stream_wav(path, sample_rate, argument)
    out = np.empty(n, np.float32)
    filled = 0
    for c in chunks:
        c = c[: n - filled]
        out[filled: filled + len(c)] = c
        filled += len(c)
    return out[:filled]


@dataclass
class AudioFeatures:
    """What Audio2Coeff needs from one clip: `mels` (T, 80, 16) float32 per video frame, T frames at 25 fps."""

    mels: np.ndarray
    num_frames: int
    wav: np.ndarray  # the 16 kHz samples, cropped to T frames

    @property
    def duration(self) -> float:
        return self.num_frames / FPS


def crop_to_frames(wav: np.ndarray, argument: str = "audio") -> tuple[np.ndarray, int]:
    """Cropped to a whole number of 25 fps frames; ValueError for less than one frame (40 ms)."""
    num_frames = int(len(wav) / (SAMPLE_RATE / FPS))
    if num_frames < 1:
        raise ValueError(f"{argument}: {len(wav)} samples at 16 kHz is shorter than one 25 fps video frame "
                         f"({SAMPLES_PER_FRAME} samples, 40 ms)")
    return wav[: num_frames * SAMPLES_PER_FRAME], num_frames


def audio_features(wav: np.ndarray, pad_mode: str = "constant", argument: str = "audio") -> AudioFeatures:
    """Per-frame mel windows of 16 kHz mono samples."""
    wav, num_frames = crop_to_frames(np.asarray(wav, dtype=np.float32), argument)
    mel = melspectrogram(wav, pad_mode)
    return AudioFeatures(mel_windows(mel, num_frames), num_frames, wav)


def blink_schedule(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(T, 1) float32 eye-blink ratio: 5-frame blinks [0.5, 0.9, 1, 0.9, 0.5] at random gaps of
    min(10, T) to min(T/2, 70) frames, none when T <= 20 (SadTalker's schedule, our RNG)."""
    ratio = np.zeros((num_frames, 1), np.float32)
    if num_frames <= 20:
        return ratio
    lo, hi = min(10, num_frames), min(num_frames // 2, 70)
    frame = 0
    while True:
        start = int(rng.integers(lo, max(hi, lo + 1)))
        if frame + start + 5 > num_frames - 1:
            break
        ratio[frame + start: frame + start + 5, 0] = [0.5, 0.9, 1.0, 0.9, 0.5]
        frame += start + 5
    return ratio


# --- streaming: bounded memory for any length ------------------------------------------------------------------
BLOCK_SECONDS = 1.0  # input read per step, at the file's own rate
RESAMPLE_CHUNK = 4 * SAMPLE_RATE  # 16 kHz samples produced per resampling step


def open_audio_blocks(path: str | os.PathLike, argument: str = "audio") -> tuple[int, int, "Iterator[np.ndarray]"]:
    """(rate, frames, blocks) of an audio file read block by block: each block (n,) mono float32 in [-1, 1]
    (channels averaged as `to_mono`), about `BLOCK_SECONDS` long. The same values `read_audio` + `to_mono` give
    for the whole file; ValueError naming `argument` for a missing, unreadable, empty or non-finite file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    errors = []
    try:
        import soundfile

        f = soundfile.SoundFile(str(p))
        rate, frames = int(f.samplerate), int(f.frames)

        def sf_blocks() -> Iterator[np.ndarray]:
            with f:
                for b in f.blocks(blocksize=max(1, int(rate * BLOCK_SECONDS)), dtype="float32"):
                    yield b

        source: Iterator[np.ndarray] = sf_blocks()
    except ImportError:
        source = None  # type: ignore[assignment]
    except Exception as e:  # noqa: BLE001 - libsndfile raises its own error types
        errors.append(f"soundfile: {e}")
        source = None  # type: ignore[assignment]
    if source is None:
        try:
            from scipy.io import wavfile

            rate, data = wavfile.read(str(p), mmap=True)
            rate, frames = int(rate), int(data.shape[0])

            def wav_blocks() -> Iterator[np.ndarray]:
                step = max(1, int(rate * BLOCK_SECONDS))
                for i in range(0, frames, step):
                    yield _int_to_float(np.asarray(data[i:i + step]))

            source = wav_blocks()
        except Exception as e:  # noqa: BLE001
            errors.append(f"wavfile: {e}")
            raise ValueError(f"{argument}: {str(p)!r} is not a readable audio file ({'; '.join(errors)})") from None
    if frames <= 0:
        raise ValueError(f"{argument}: {str(path)!r} has no samples")
    if rate <= 0:
        raise ValueError(f"{argument}: sample rate must be > 0, got {rate}")

    def mono_blocks() -> Iterator[np.ndarray]:
        for b in source:
            m = to_mono(b)
            if not np.isfinite(m).all():
                raise ValueError(f"{argument}: {str(path)!r} contains NaN or inf samples")
            yield m

    return rate, frames, mono_blocks()


class PolyphaseStream:
    """`resample`'s polyphase resampling (`scipy.signal.resample_poly`: Kaiser window 5.0, zero padding) of a
    signal of `n_in` samples given block by block, output in chunks: the same filter and, for every output
    sample, the same taps over the same input samples, so the result equals the whole-signal call. Holds only
    the input samples the next output chunk needs."""

    def __init__(self, rate: int, target: int, n_in: int) -> None:
        from scipy.signal import firwin
        from scipy.signal._upfirdn import _output_len

        g = math.gcd(int(rate), int(target))
        self.up, self.down = int(target) // g, int(rate) // g
        self.n_in = int(n_in)
        n_out = self.n_in * self.up
        self.n_out = n_out // self.down + bool(n_out % self.down)
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        n_pre_pad = self.down - half_len % self.down
        n_post_pad = 0
        self.n_pre_remove = (half_len + n_pre_pad) // self.down
        while _output_len(len(h) + n_pre_pad + n_post_pad, self.n_in, self.up, self.down) \
                < self.n_out + self.n_pre_remove:
            n_post_pad += 1
        self.h = np.concatenate([np.zeros(n_pre_pad), h, np.zeros(n_post_pad)])
        self._buf = np.zeros(0, np.float64)
        self._start = 0  # absolute index of _buf[0]
        self._received = 0
        self._next = 0  # next output index

    def _span(self, j0: int, j1: int) -> tuple[int, int]:
        """Input range [k0, k1) the outputs [j0, j1) read; k0 a multiple of `down` (same filter phase)."""
        i0, i1 = j0 + self.n_pre_remove, j1 - 1 + self.n_pre_remove
        k_lo = max(0, (i0 * self.down - len(self.h)) // self.up + 1)
        k_hi = min(self.n_in, i1 * self.down // self.up + 1)
        return k_lo - k_lo % self.down, max(k_hi, k_lo - k_lo % self.down)

    def _emit(self, j1: int) -> np.ndarray:
        from scipy.signal import upfirdn

        j0 = self._next
        k0, k1 = self._span(j0, j1)
        seg = self._buf[k0 - self._start: k1 - self._start]
        z = upfirdn(self.h, seg, self.up, self.down)
        off = k0 * self.up // self.down
        lo, hi = j0 + self.n_pre_remove - off, j1 + self.n_pre_remove - off
        out = np.zeros(j1 - j0, np.float64)
        have = z[max(lo, 0): min(hi, len(z))]
        out[max(lo, 0) - lo: max(lo, 0) - lo + len(have)] = have
        self._next = j1
        drop = self._span(j1, min(self.n_out, j1 + 1))[0] - self._start if j1 < self.n_out else len(self._buf)
        if drop > 0:
            self._buf = self._buf[drop:]
            self._start += drop
        return out.astype(np.float32)

    def feed(self, block: np.ndarray) -> Iterator[np.ndarray]:
        """Add input samples; yields every output chunk they complete."""
        block = np.asarray(block, np.float64)[: max(0, self.n_in - self._received)]
        self._buf = np.concatenate([self._buf, block])
        self._received += len(block)
        while self._next < self.n_out:
            j1 = min(self.n_out, self._next + RESAMPLE_CHUNK)
            if self._span(self._next, j1)[1] > self._received:
                break
            yield self._emit(j1)

    def finish(self) -> Iterator[np.ndarray]:
        """The remaining output (input missing from a short file counts as zeros, as padding does)."""
        if self._received < self.n_in:
            self._buf = np.concatenate([self._buf, np.zeros(self.n_in - self._received)])
            self._received = self.n_in
        while self._next < self.n_out:
            yield self._emit(min(self.n_out, self._next + RESAMPLE_CHUNK))


def stream_wav(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
               argument: str = "audio") -> tuple[int, "Iterator[np.ndarray]"]:
    """(number of samples, chunks): the file as mono float32 at `sample_rate`, chunk by chunk; what `load_wav`
    returns, with memory bounded by a few seconds of audio whatever the length."""
    rate, frames, blocks = open_audio_blocks(path, argument)
    if rate == sample_rate:
        return frames, blocks
    rs = PolyphaseStream(rate, sample_rate, frames)

    def chunks() -> Iterator[np.ndarray]:
        for b in blocks:
            yield from rs.feed(b)
        yield from rs.finish()

    return rs.n_out, chunks()


def stream_mel_windows(n_samples: int, chunks: "Iterator[np.ndarray]", chunk_frames: int = 320,
                       argument: str = "audio") -> tuple[int, "Iterator[np.ndarray]"]:
    """(T, windows): `audio_features(wav).mels` of the 16 kHz signal given as `chunks` (`n_samples` in all, as
    `stream_wav` gives them), `chunk_frames` video frames at a time ((n, 80, 16) float32 each). Constant padding
    only (``pad_mode="constant"``, the default). Holds the samples of one chunk (plus its 16-window overlap)."""
    global _MEL_BASIS
    if _MEL_BASIS is None:
        _MEL_BASIS = mel_filterbank()
    num_frames = int(n_samples / (SAMPLE_RATE / FPS))
    if num_frames < 1:
        raise ValueError(f"{argument}: {n_samples} samples at 16 kHz is shorter than one 25 fps video frame "
                         f"({SAMPLES_PER_FRAME} samples, 40 ms)")
    length = num_frames * SAMPLES_PER_FRAME  # cropped
    n_mel = 1 + length // HOP
    half = N_FFT // 2
    basis = _MEL_BASIS.astype(np.float64)
    window = hann_periodic(N_FFT)
    min_level = math.exp(MIN_LEVEL_DB / 20.0 * math.log(10.0))

    def windows() -> Iterator[np.ndarray]:
        buf = np.zeros(0, np.float64)  # pre-emphasised samples y[start:], y = preemphasize(cropped signal)
        start = 0
        prev = 0.0  # the raw sample before buf's first one
        received = 0
        it = iter(chunks)
        for i0 in range(0, num_frames, chunk_frames):
            i1 = min(num_frames, i0 + chunk_frames)
            starts = (80.0 * ((np.arange(i0, i1) - 2) / float(FPS))).astype(np.int64)
            f0, f1 = max(0, int(starts[0])), min(n_mel - 1, int(starts[-1]) + MEL_WINDOW - 1)
            need = min(length, f1 * HOP + half)  # y samples up to the last frame's right edge
            while received < need:
                c = np.asarray(next(it), np.float64)[: length - received]
                y = c.copy()
                y[1:] -= PREEMPHASIS * c[:-1]
                y[0] -= PREEMPHASIS * prev if received else 0.0
                prev = float(c[-1]) if len(c) else prev
                buf = np.concatenate([buf, y])
                received += len(c)
            lo = f0 * HOP - half  # y index of the first frame's left edge (the padded signal's f0 * HOP)
            seg = buf[max(lo, 0) - start: need - start]
            seg = np.concatenate([np.zeros(max(0, -lo)), seg, np.zeros((f1 * HOP + half) - need)])
            frames = np.lib.stride_tricks.sliding_window_view(seg, N_FFT)[::HOP][: f1 - f0 + 1]
            mag = np.abs(np.fft.rfft(frames * window, axis=1)).T
            db = 20.0 * np.log10(np.maximum(min_level, basis @ mag)) - REF_LEVEL_DB
            mel = np.clip(2.0 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE,
                          -MAX_ABS_VALUE, MAX_ABS_VALUE)
            idx = np.clip(starts[:, None] + np.arange(MEL_WINDOW)[None, :], 0, n_mel - 1) - f0
            yield np.ascontiguousarray(mel[:, idx].transpose(1, 0, 2)).astype(np.float32)
            keep_from = max(0, int((80.0 * ((i1 - 2) / float(FPS)))) * HOP - half)  # the next chunk's first edge
            if keep_from > start:
                buf = buf[keep_from - start:]
                start = keep_from

    return num_frames, windows()
