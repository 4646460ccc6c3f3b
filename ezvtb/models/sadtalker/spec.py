"""Tensor names, shapes and dtypes of the two exported Audio2Coeff graphs (torch-free).

    audio2exp:  mels f32[N,1,80,16], ref_exp f32[1,N,E], blink f32[1,N,1] -> exp f32[1,N,E]
                (N = EXP_CHUNK video frames per run, the last chunk padded; E = 64)
    audio2pose: mels f32[S,1,80,16], z f32[1,L], class_id i64[1], ref_pose f32[1,6] -> motion f32[1,S,6]
                (S = seq_len = 32 frames per chunk, L = latent size 64)
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec

EXP_CHUNK = 10  # frames per audio2exp run, as upstream


def audio2exp_spec(frames: int = EXP_CHUNK, exp_dim: int = 64) -> GraphSpec:
    return GraphSpec("audio2exp",
                     (TensorSpec("mels", (frames, 1, 80, 16), "float32"),
                      TensorSpec("ref_exp", (1, frames, exp_dim), "float32"),
                      TensorSpec("blink", (1, frames, 1), "float32")),
                     (TensorSpec("exp", (1, frames, exp_dim), "float32"),))


def audio2pose_spec(seq_len: int = 32, latent: int = 64) -> GraphSpec:
    return GraphSpec("audio2pose",
                     (TensorSpec("mels", (seq_len, 1, 80, 16), "float32"),
                      TensorSpec("z", (1, latent), "float32"),
                      TensorSpec("class_id", (1,), "int64"),
                      TensorSpec("ref_pose", (1, 6), "float32")),
                     (TensorSpec("motion", (1, seq_len, 6), "float32"),))
