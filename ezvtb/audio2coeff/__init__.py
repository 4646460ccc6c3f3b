"""SadTalker Audio2Coeff: speech -> 3DMM expression and head-pose coefficients.

`Audio2Coeff(sadtalker_path, device)`, `.generate(batch, coeff_save_dir, pose_style, ref_pose_coeff_path)`,
`.using_refpose(...)`, `.from_wav(audio_path, first_coeff_path, pose_style=0, seed=0)`; `load_cpk(...)`.
The front end (`ezvtb.audio2coeff.frontend`) is numpy-only; the networks need torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Audio2Coeff", "load_cpk"]


def __getattr__(name: str) -> Any:
    if name == "Audio2Coeff":
        from ezvtb.audio2coeff.pipeline import Audio2Coeff

        return Audio2Coeff
    if name == "load_cpk":
        from ezvtb.audio2coeff.checkpoint import load_cpk

        return load_cpk
    raise AttributeError(name)
