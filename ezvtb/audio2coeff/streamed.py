"""`Audio2Coeff.from_wav` in bounded memory: the audio is read, resampled and turned into mel windows a chunk of
video frames at a time (`frontend.stream_wav`, `frontend.stream_mel_windows`), and each chunk goes through the
networks before the next is read. The networks see exactly the batches of the whole-clip path (expression: the
same 10-frame chunks; pose: the same 32-frame chunks from frame 1 with the same z, the remainder re-running the
last 32 frames), so the coefficients are those of `Audio2Coeff.coefficients` on `make_batch`'s whole-file batch.

Peak memory: a working set that stops growing at one chunk of 320 video frames (12.8 s: their samples, STFT, mel
windows and the networks' activations, plus a few seconds of audio at the file's rate; measured 38 MB of peak
RSS growth for 24 s and for 120 s of 96 kHz stereo) plus the result: 70 + 6 + 1 float32 per video frame (~8 KB
per second of audio).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ezvtb.audio2coeff import frontend
from ezvtb.audio2coeff.coeffs import COEFF_DIM, EXP_DIM, read_coeff_mat, smooth_pose

log = logging.getLogger("ezvtb.audio2coeff")

CHUNK_FRAMES = 320  # video frames per step: a multiple of the 10-frame expression chunk


def coefficients_from_wav(a2c: Any, audio_path: str | os.PathLike, first_coeff_path: str | os.PathLike,
                          pose_style: int, seed: int | None) -> np.ndarray:
    """(T, 70) float32 coefficients of a wav, as `Audio2Coeff.from_wav` documents, streamed."""
    import torch


    n, samples = frontend.stream_wav(audio_path, argument="audio_path")
    heard = [False]

    def chunks():
        for c in samples:
            heard[0] = heard[0] or bool(np.any(c))
            yield c

    if n < frontend.SAMPLES_PER_FRAME:
        raise ValueError(f"audio_path: {str(audio_path)!r} lasts {n / frontend.SAMPLE_RATE * 1000:.1f} ms,"
                         f" shorter than one 25 fps video frame (40 ms)")
    first = read_coeff_mat(first_coeff_path, "first_coeff_path")[:1, :COEFF_DIM]
    t, windows = frontend.stream_mel_windows(n, chunks(), CHUNK_FRAMES, "audio_path")
    rng = np.random.default_rng(seed)
    blink = frontend.blink_schedule(t, rng)
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    seq = a2c.pose_config.seq_len
    z = torch.randn(max(1, a2c.pose_chunks(t)), a2c.pose_config.latent_size, generator=g).numpy()
    ref_exp, ref_pose = first[0, :EXP_DIM], first[0, EXP_DIM:COEFF_DIM]

    exp = np.empty((t, EXP_DIM), np.float32)
    motion = np.zeros((t, 6), np.float32)  # frame 0 is the reference: motion 0
    pending = np.zeros((0, 80, 16), np.float32)  # frames not yet in a pose chunk (from frame 1 on)
    last = np.zeros((0, 80, 16), np.float32)  # the last `seq` frames seen (for the remainder)
    done = 1  # frames with motion
    k = 0  # pose chunk index (its z)
    small = t - 1 < seq  # fewer than one pose chunk: the whole clip is small; the whole-clip path handles it
    kept = [] if small else None
    i0 = 0

    def motion_of(frames: np.ndarray, chunk: int) -> np.ndarray:
        dummy = np.zeros((1, 80, 16), np.float32)  # predict_motion's frame 0 (the reference, motion 0)
        return a2c.predict_motion(np.concatenate([dummy, frames]), ref_pose, pose_style, lambda _: z[chunk])[1:]

    for w in windows:
        i1 = i0 + len(w)
        exp[i0:i1] = a2c.predict_expression(w, np.broadcast_to(ref_exp, (len(w), EXP_DIM)), blink[i0:i1])
        if small:
            kept.append(w)
        else:
            rest = w[1:] if i0 == 0 else w
            pending = np.concatenate([pending, rest])
            last = np.concatenate([last, rest])[-seq:]
            while len(pending) >= seq:
                motion[done:done + seq] = motion_of(pending[:seq], k)
                pending, done, k = pending[seq:], done + seq, k + 1
        i0 = i1
    if small:
        mels = np.concatenate(kept)
        motion = a2c.predict_motion(mels, ref_pose, pose_style, lambda c: z[c])
    elif len(pending):  # the remainder: re-run the last `seq` frames, keep its tail
        motion[done:] = motion_of(last, k)[-len(pending):]
    if not heard[0]:
        log.warning("audio_path: %s is silent; the mouth will stay closed", audio_path)
    pose = smooth_pose(first[:1, EXP_DIM:COEFF_DIM] + motion)
    return np.concatenate([exp, pose], axis=1).astype(np.float32)
