"""Text-to-video and video-to-video with ModelScope's model (the sd-video API), on exported graphs.

`SDVideo` is sd-video's ``SDVideo`` facade; `save_gif`, `save_pngs`, `save_mp4`, `load_sequence`
its helpers; the fine-tuning trainer lives in `ezvtb.sd_video.trainer`. Imports are lazy: importing
this package does not import torch.
"""
from __future__ import annotations

__all__ = ["SDVideo", "save_gif", "save_pngs", "save_mp4", "load_sequence"]


def __getattr__(name: str):
    if name == "SDVideo":
        from ezvtb.sd_video.pipeline import SDVideo

        return SDVideo
    if name in ("save_gif", "save_pngs", "save_mp4", "load_sequence"):
        from ezvtb.sd_video import media

        return getattr(media, name)
    raise AttributeError(f"module 'ezvtb.sd_video' has no attribute {name!r}")
