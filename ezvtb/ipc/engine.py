"""The frame source a server or a cluster replica runs: a core built from get_core options, or the echo engine."""
from __future__ import annotations

from typing import Any

from ezvtb.image import IMAGE_SHAPE
from ezvtb.ipc.echo import EchoCore, echo_frames
from ezvtb.options import CoreOptions

ENGINES = ("core", "echo")


def expected_output(engine: str, options: dict[str, Any], core: Any = None) -> tuple[tuple[int, int, int], int]:
    """(frame shape, frames per inference) that `engine` built from `options` produces.

    ``core``: `CoreOptions.output_shape` and `CoreOptions.frames_per_pose`; a built `core` whose last
    stage declares its output (`out_spec`) is taken at its word. ``echo``: 512x512x4, `echo_frames`.
    Every frame is checked at runtime too.
    """
    if engine == "echo":
        return IMAGE_SHAPE, echo_frames(options)
    opts = CoreOptions.from_mapping(options)
    shape = opts.output_shape
    for stage in getattr(core, "after", None) or []:
        out = getattr(stage, "out_spec", None)
        dims = tuple(getattr(out, "shape", ()) or ())
        if len(dims) == 3 and dims[2] == 4 and all(isinstance(d, int) and d > 0 for d in dims):
            shape = dims
    return shape, opts.frames_per_pose


def build_engine(engine: str, options: dict[str, Any]) -> Any:
    """The frame source: ``core`` = the core `options` (get_core keywords) describe, ``echo`` = `EchoCore`."""
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if engine == "echo":
        return EchoCore(frames=echo_frames(options))
    from ezvtb.factory import build_core  # the core assembly imports the stages and their runtimes

    return build_core(CoreOptions.from_mapping(options))


__all__ = ["ENGINES", "build_engine", "expected_output"]
