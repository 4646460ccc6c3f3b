"""`SrStage`: super-resolution of every frame leaving THA (or RIFE), as the last stage.

Two models (graphs declared in `ezvtb.models.sr.spec`):

* ``sr_x4=False``: waifu2x **UpConv7** anime_style_art_rgb, the whole 512x512 frame -> 1024x1024.
  `sr_noise` picks the waifu2x model: 0..3 = denoise level N then 2x (``noiseN_scale2.0x``),
  -1 = the plain 2x model without denoising (``scale2.0x``).
* ``sr_x4=True``: Real-ESRGAN **realesr-animevideov3** x4 on a square region of the frame, 256x256
  -> 1024x1024 by default (the region is the output: a close-up; `sr_region_size` picks another
  side, the graph is exported for it). `sr_region` = (top, left), default `default_region` (centred
  on the face): for 256, (0, 128), rows 0:256, cols 128:384, the head and shoulders of a THA3
  character. `sr_noise` does not apply (animevideov3 has a single model, trained on degraded
  video: it denoises anyway); it is still validated.

Both output uint8 BGRA, (1024, 1024, 4) by default; alpha is upscaled by the network too (see the spec).
Runtime only: one `Session` (no torch). `create_sr_stage` finds or exports the graph.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ezvtb.engines import create_session
from ezvtb.engines.base import Session
from ezvtb.engines.policy import concrete_backend, require_backend, resolve_precision
from ezvtb.export.sr import sr_graph  # torch is imported only when the graph must be exported
from ezvtb.models.sr.spec import (
    ALPHA_MODE,
    FRAME_SIZE,
    INPUT_NAME,
    INPUT_SIZES,
    MODELS,
    OUTPUT_NAME,
    check_alpha,
    check_noise,
    check_region,
    check_region_size,
    default_region,
)
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.sr")

MAX_FRAMES = 4  # a RIFE x4 stage before SR hands over 4 frames per call


class SrStage:
    """Upscales each frame of a call with one SR graph.

    ``run(frames)``: 1..`max_frames` uint8 (512, 512, 4) BGRA frames. Returns as many uint8
    (k*S, k*S, 4) BGRA arrays (1024x1024). Output i is a buffer owned by the stage, allocated once
    per frame index and overwritten by the next `run`: copy what must outlive it. The input frames
    are only read. For ``animevideov3`` the `region` is copied into a preallocated input buffer.
    On a device session the frames may also be device buffers of the same memory (RIFE's or
    THA's outputs): the crop happens in device memory and each result is downloaded once.
    SR is the last stage: its frames are always host arrays.
    """

    device_output = False  # the last stage: always downloads
    precision: str | None = None  # fp32 / fp16 of the graph (set by create_sr_stage), reported by stats()

    def __init__(self, session: Session, model: str, region: tuple[int, int] | None = None,
                 max_frames: int = MAX_FRAMES, frame_size: int = FRAME_SIZE) -> None:
        if model not in MODELS:
            raise ValueError(f"model: expected one of {list(MODELS)}, got {model!r}")
        spec = session.spec
        if (spec.input_names != (INPUT_NAME,) or spec.output_names != (OUTPUT_NAME,)
                or spec.inputs[0].dtype != "uint8" or spec.outputs[0].dtype != "uint8"
                or len(spec.inputs[0].shape) != 3 or spec.inputs[0].shape[2] != 4):
            raise ValueError(f"session: expected an SR graph (input {INPUT_NAME!r} u8[S, S, 4], output "
                             f"{OUTPUT_NAME!r} u8[kS, kS, 4]), got {spec}")
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or not 1 <= max_frames <= 16:
            raise ValueError(f"max_frames: expected an int in 1..16, got {max_frames!r}")
        self.session = session
        self.model = model
        self.in_spec, self.out_spec = spec.inputs[0], spec.outputs[0]
        size = self.in_spec.shape[0]
        if model == "upconv7":
            if region is not None:
                raise ValueError(f"region: only the x4 model upscales a region; got {region!r} for upconv7")
            self.region = None
            self.frame_shape = self.in_spec.shape
            self._crop = None
        else:
            self.region = check_region(default_region(size, frame_size) if region is None else region, size,
                                       frame_size, name="sr_region")
            self.frame_shape = (frame_size, frame_size, 4)
            self._crop = session.alloc(self.in_spec.shape, np.uint8)
        self.max_frames = max_frames
        self._outs = [session.host_array(self.out_spec.shape, np.uint8) for _ in range(max_frames)]
        self.timings = Timings()
        self.runs = 0

    def reset(self) -> None:
        """Nothing to forget between characters (SR has no temporal state)."""

    def _check(self, frames: Any) -> list[Any]:
        if not isinstance(frames, (list, tuple)) or not 1 <= len(frames) <= self.max_frames:
            got = f"{type(frames).__name__} of {len(frames)}" if isinstance(frames, (list, tuple)) \
                else type(frames).__name__
            raise ValueError(f"frames: expected a list of 1..{self.max_frames} frames, got {got}")
        device = self.session.on_device
        for i, f in enumerate(frames):
            ok_type = isinstance(f, np.ndarray) or (device and hasattr(f, "memory"))
            if not ok_type or np.dtype(f.dtype) != np.uint8 or tuple(f.shape) != self.frame_shape:
                got = f"{np.dtype(f.dtype)}{list(f.shape)}" if ok_type else type(f).__name__
                raise ValueError(f"frames[{i}]: expected a uint8 {list(self.frame_shape)} BGRA array, got {got}")
        return list(frames)

    def run(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Upscale each frame; returns the stage's buffers (see the class docstring)."""
        frames = self._check(frames)
        with self.timings.time("sr"):
            for i, f in enumerate(frames):
                if self._crop is not None:
                    self.session.crop_into(self._crop, f, *self.region)
                    f = self._crop
                res = self.session.run({INPUT_NAME: f})
                self.session.to_host(res[OUTPUT_NAME], self._outs[i])
                self.runs += 1
        return self._outs[:len(frames)]

    def stats(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "region": self.region, "runs": self.runs,
                "device": bool(self.session.on_device),
                "output_shape": list(self.out_spec.shape), "latency": self.timings.summary()}

    def close(self) -> None:
        self.session.close()


def check_sr_options(sr_x4: Any, sr_half: Any, sr_noise: Any, sr_region: Any = None,
                     sr_alpha: Any = ALPHA_MODE, sr_region_size: Any = None) -> dict[str, Any]:
    """Validate get_core's SR options before any work; returns {model, precision, noise, region,
    alpha, size} (size: the graph's input side, None = the model's default).

    sr_noise must be -1 or 0..3 either way (so a typo never passes silently), but only UpConv7
    (``sr_x4=False``) uses it. sr_region and sr_region_size apply to ``sr_x4=True`` only (None =
    a 256x256 region at `default_region`).
    """
    for name, v in (("sr_x4", sr_x4), ("sr_half", sr_half)):
        if name == "sr_half" and v is None:  # auto: resolved from the backend (create_sr_stage, get_core)
            continue
        if not isinstance(v, (bool, np.bool_)) and not (isinstance(v, int) and v in (0, 1)):
            raise ValueError(f"{name}: expected a bool, got {v!r}")
    x4 = bool(sr_x4)
    model = "animevideov3" if x4 else "upconv7"
    noise = check_noise(sr_noise, "sr_noise")
    if x4:
        noise = 0  # animevideov3 has one model
    size = None
    if x4:
        side = INPUT_SIZES["animevideov3"] if sr_region_size is None else check_region_size(sr_region_size)
        size = None if side == INPUT_SIZES["animevideov3"] else side
        region = check_region(default_region(side) if sr_region is None else sr_region, side, name="sr_region")
    else:
        for name, v in (("sr_region", sr_region), ("sr_region_size", sr_region_size)):
            if v is not None:
                raise ValueError(f"{name}: only used with sr_x4=True (a region upscaled 4x); "
                                 f"got {v!r} with sr_x4=False")
        region = None
    precision = None if sr_half is None else "fp16" if bool(sr_half) else "fp32"
    return {"model": model, "precision": precision, "noise": noise, "region": region,
            "alpha": check_alpha(sr_alpha, "sr_alpha"), "size": size}


def create_sr_stage(sr_x4: bool = True, sr_half: bool | None = None, sr_noise: int = 1,
                    sr_region: tuple[int, int] | None = None, backend: str = "auto", *,
                    sr_alpha: str = ALPHA_MODE, sr_region_size: int | None = None, max_frames: int = MAX_FRAMES,
                    **session_options: Any) -> SrStage:
    """Find (or export, which needs torch) the SR graph and open it on `backend`.

    sr_region_size (x4 only): side of the upscaled region (`REGION_SIZES`; None = 256, output
    1024x1024); the output is 4x the side."""

    o = check_sr_options(sr_x4, sr_half, sr_noise, sr_region, sr_alpha, sr_region_size)
    require_backend(backend)  # before the export below
    if o["precision"] is None:  # auto: fp16 on GPU backends, fp32 on the CPU
        o["precision"] = resolve_precision(None, concrete_backend(backend))
    graph = sr_graph(o["model"], o["noise"], o["precision"], o["alpha"], size=o["size"])
    session = create_session(graph.path, graph.spec, backend, **session_options)
    log.info("SR %s%s %s alpha=%s, input %s on %s", o["model"], "" if sr_x4 else f" noise {o['noise']}",
             o["precision"], o["alpha"], "x".join(map(str, graph.spec.inputs[0].shape[:2])),
             getattr(session, "backend", backend))
    stage = SrStage(session, o["model"], o["region"], max_frames=max_frames)
    stage.precision = o["precision"]
    return stage
