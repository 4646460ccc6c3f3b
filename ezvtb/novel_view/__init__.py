"""Novel views from one image or a video : SV3D orbits, SVD image-to-video, the SV4D helper names.

Seed-compatible names (`preprocess_video`, `load_model`, `do_sample`, `run_img2vid`, `load_module_gpu`,
`unload_module_gpu`, `initial_model_load`) are thin facades over `ezvtb.novel_view.model.VideoModel` (the
networks of one official checkpoint, each stage on torch or an exported session) and
`ezvtb.novel_view.sampling` (EDM Euler with per-frame guidance). `sv3d_orbit` is the SV3D entry point.
Importing this package needs torch and diffusers (the ``diffusion`` extra).
"""
from ezvtb.novel_view.helpers import (EulerEDMSampler, do_sample, initial_model_load, load_image, load_model,
                                      load_module_gpu, orbit_cameras, preprocess_video, run_img2vid,
                                      save_frames_mp4, sv3d_orbit, unload_module_gpu)
from ezvtb.novel_view.model import VideoModel

__all__ = ["EulerEDMSampler", "VideoModel", "do_sample", "initial_model_load", "load_image", "load_model",
           "load_module_gpu", "orbit_cameras", "preprocess_video", "run_img2vid", "save_frames_mp4", "sv3d_orbit",
           "unload_module_gpu"]
