"""Tensor names, shapes and dtypes of the exported super-resolution graphs (torch-free).

One graph per (model, weights, precision)::

    input:  frame     u8[S, S, 4]        BGRA (straight alpha)
    output: upscaled  u8[k*S, k*S, 4]    BGRA

* ``upconv7``: waifu2x UpConv7 (anime_style_art_rgb), k = 2, S = 512 -> 1024. The graph pads the
  RGB input by `UPCONV7_PAD` = 7 px of edge replication per side (the network's convolutions are
  all "valid"), as waifu2x-ncnn-vulkan and nunif do.
* ``animevideov3``: Real-ESRGAN realesr-animevideov3 (SRVGGNetCompact), k = 4, S = 256 -> 1024.
  It upscales a 256x256 *region* of the 512x512 THA frame; the stage copies the region (top-left
  corner `sr_region`, default `DEFAULT_REGION` = rows 0:256, cols 128:384, the head and shoulders
  of a THA3 character, which is centred in the top half of the frame) into the graph's input.

Inside every graph: uint8 -> float /255, BGR -> RGB, HWC -> NCHW, the network on RGB; alpha is
upscaled separately (`ALPHA_MODES`): ``model`` (default, `ALPHA_MODE`) replicates alpha to three
channels and runs it through the same network as a second batch item (channels averaged);
``bicubic`` resizes it (a = -0.75, like ``cv2.INTER_CUBIC``). The default was chosen by measured
alpha PSNR on the ten THA3 sample images (downscale, then upscale; ``tests/test_sr_fidelity.py``):
UpConv7 noise1 46.3 dB vs bicubic 35.1 dB, animevideov3 33.3 dB vs 29.4 dB; ``bicubic`` halves
the network's work. Then clamp to [0, 1], x255, round half-to-even, -> uint8 HWC BGRA. Precision
(``fp32``/``fp16``) changes only the network's internal dtype; the I/O stays uint8.
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.engines.policy import check_precision

MODELS = ("upconv7", "animevideov3")
SCALES = {"upconv7": 2, "animevideov3": 4}
INPUT_SIZES = {"upconv7": 512, "animevideov3": 256}
UPCONV7_PAD = 7
FRAME_SIZE = 512  # THA frames
DEFAULT_REGION = (0, 128)  # (top, left) of the default 256x256 x4 region in the 512x512 frame
# Sides of the x4 region (`sr_region_size`): the same network exported at that input size; the
# output is 4x the side. Cost scales with the area (README, "Super-resolution").
REGION_SIZES = tuple(range(64, FRAME_SIZE + 1, 32))
# Default regions are centred here: the centre of THA3's face box (rows 32:224, cols 160:352), so
# 256 gives `DEFAULT_REGION`, 192 the face box and 128 THA3's 128x128 head box.
REGION_CENTRE = (128, 256)
ALPHA_MODES = ("model", "bicubic")
ALPHA_MODE = "model"
NOISE_LEVELS = (-1, 0, 1, 2, 3)  # -1: waifu2x's plain scale2x model (no denoising)

INPUT_NAME = "frame"
OUTPUT_NAME = "upscaled"


def check_model(model: object) -> str:
    if model not in MODELS:
        raise ValueError(f"model: expected one of {list(MODELS)}, got {model!r}")
    return str(model)


def check_noise(noise: object, name: str = "sr_noise") -> int:
    """-1 (plain scale2x) or 0..3; ValueError naming `name` otherwise."""
    if isinstance(noise, bool) or not isinstance(noise, int) or noise not in NOISE_LEVELS:
        raise ValueError(f"{name}: expected -1 (no denoising) or a noise level 0, 1, 2, 3, got {noise!r}")
    return int(noise)


def check_region_size(size: object, name: str = "sr_region_size") -> int:
    """A side in `REGION_SIZES` (a multiple of 32 from 64 to 512); ValueError naming `name` otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size not in REGION_SIZES:
        raise ValueError(f"{name}: expected a multiple of 32 from {REGION_SIZES[0]} to {REGION_SIZES[-1]}, "
                         f"got {size!r}")
    return int(size)


def default_region(size: int = INPUT_SIZES["animevideov3"], frame: int = FRAME_SIZE) -> tuple[int, int]:
    """(top, left) of the default x4 region of side `size`: centred on `REGION_CENTRE` (the face of a
    THA3 character), moved inside the frame where needed; `DEFAULT_REGION` for 256."""
    top, left = (min(max(c - size // 2, 0), frame - size) for c in REGION_CENTRE)
    return top, left


def check_region(region: object, size: int = INPUT_SIZES["animevideov3"], frame: int = FRAME_SIZE,
                 name: str = "sr_region") -> tuple[int, int]:
    """(top, left) of a `size` x `size` region inside a `frame` x `frame` image; ValueError otherwise."""
    ok = isinstance(region, (tuple, list)) and len(region) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in region)
    if ok:
        top, left = int(region[0]), int(region[1])
        ok = 0 <= top <= frame - size and 0 <= left <= frame - size
    if not ok:
        raise ValueError(f"{name}: expected (top, left) ints with 0 <= top, left <= {frame - size} "
                         f"(a {size}x{size} region inside the {frame}x{frame} frame), got {region!r}")
    return top, left


def check_alpha(alpha: object, name: str = "sr_alpha") -> str:
    if alpha not in ALPHA_MODES:
        raise ValueError(f"{name}: expected one of {list(ALPHA_MODES)}, got {alpha!r}")
    return str(alpha)


def graph_spec(model: str, precision: str = "fp32", size: int | None = None) -> GraphSpec:
    """The declared I/O of one SR graph; `size` (input side) defaults to `INPUT_SIZES[model]`."""
    check_model(model)
    check_precision(precision)
    s = INPUT_SIZES[model] if size is None else size
    if isinstance(s, bool) or not isinstance(s, int) or s < 8:
        raise ValueError(f"size: expected an int >= 8, got {size!r}")
    k = SCALES[model]
    return GraphSpec(f"sr_{model}",
                     (TensorSpec(INPUT_NAME, (s, s, 4), "uint8"),),
                     (TensorSpec(OUTPUT_NAME, (k * s, k * s, 4), "uint8"),))


def variant_name(model: str, noise: int = 0) -> str:
    """``upconv7_noise1``, ``upconv7_scale2x`` (noise -1) or ``animevideov3``."""
    check_model(model)
    if model == "animevideov3":
        return model
    noise = check_noise(noise, "noise")
    return "upconv7_scale2x" if noise == -1 else f"upconv7_noise{noise}"


def onnx_file_name(model: str, noise: int, precision: str, alpha: str = ALPHA_MODE, size: int | None = None) -> str:
    """E.g. ``sr_upconv7_noise1_fp16_amodel.onnx``; the input side is appended when not the default."""
    suffix = "" if size is None or size == INPUT_SIZES[model] else f"_{size}"
    return f"sr_{variant_name(model, noise)}_{check_precision(precision)}_a{check_alpha(alpha, 'alpha')}{suffix}.onnx"
