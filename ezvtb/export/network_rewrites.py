"""Export-time rewrites of the generative networks (diffusers UNets and the blocks built on them).

Each rewrite computes the same function in operators ONNX Runtime's CPU provider runs faster; each
was measured alone and together by ``benchmarks/bench_diffusion_rewrites.py`` and is exact up to
float rounding (the pipelines' torch-vs-graph bounds hold). The torch modules themselves stay
upstream's computation: `rewritten` swaps sub-modules in place for the duration of an export (the
new modules share the original parameters, nothing is copied) and puts everything back after.

    fused_attention   every diffusers ``Attention`` as ONNX Runtime's ``com.microsoft.MultiHeadAttention``
                      (head split, scaled QK^T, softmax and the weighted sum in one kernel; nothing of
                      size heads x queries x keys is written to memory). Runs only on ONNX Runtime.
    temporal_conv2d   ``Conv3d`` with a (k, 1, 1) kernel (the temporal convolutions) as a ``Conv2d`` with a
                      (k, 1) kernel over (batch, channels, frames, height * width): the CPU provider runs
                      2-D convolutions in its blocked NCHWc layout, 3-D ones through im2col.
    split_geglu       GEGLU's one projection to 2 x inner channels followed by a split as two projections
                      (no copy of the 2 x inner tensor into two halves).
    single_key_attention  attention to a one-token context (SVD/SV3D's image embedding) as that token's
                      projected value broadcast over the queries: the softmax of one logit is exactly 1, so
                      the query and key projections and the attention itself are skipped, and the output
                      projection runs on the context tokens only.
    frame_shared_context  the cross-attention of a ``UNet3DConditionModel``, which repeats each video's text
                      context for every frame: keys and values projected once per video instead of once per
                      frame, and the queries of all its frames attending to them in one call.

`CONTRIB_REWRITES` need ONNX Runtime's contrib operators; `PORTABLE_REWRITES` give standard ONNX that any
runtime reads (TensorRT, OpenVINO). Which rewrites a backend's graphs get is decided here, by `rewrites_for`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

REWRITES = ("fused_attention", "temporal_conv2d", "split_geglu", "single_key_attention", "frame_shared_context")
CONTRIB_REWRITES = ("fused_attention",)  # need ONNX Runtime's com.microsoft operators
PORTABLE_REWRITES = tuple(r for r in REWRITES if r not in CONTRIB_REWRITES)  # standard ONNX


def rewrites_for(backend: str, precision: str = "fp32") -> tuple[str, ...]:
    """The rewrites a graph opened on `backend` is exported with (``auto`` resolved as a session would): all of
    them for fp32 on the `REWRITE_BACKENDS` they were measured on, the portable ones for fp16 there (the
    contrib attention kernel was measured in fp32 only), none elsewhere."""
    from ezvtb.engines.policy import REWRITE_BACKENDS, concrete_backend

    if backend == "torch" or concrete_backend(backend) not in REWRITE_BACKENDS:
        return ()
    return REWRITES if precision == "fp32" else PORTABLE_REWRITES


def check_rewrites(rewrites: Iterable[str]) -> tuple[str, ...]:
    """`rewrites` as a sorted tuple of known names; ValueError naming the unknown ones."""
    if isinstance(rewrites, str) or not isinstance(rewrites, Iterable):
        raise ValueError(f"rewrites: expected a sequence of rewrite names, got {rewrites!r}")
    names = tuple(sorted(set(rewrites)))
    unknown = [r for r in names if r not in REWRITES]
    if unknown:
        raise ValueError(f"rewrites: unknown {unknown}; expected some of {list(REWRITES)}")
    return names


def applicable(module: Any, rewrites: Iterable[str]) -> tuple[str, ...]:
    """The rewrites of `rewrites` that would replace something in `module` (sorted): a module with nothing to
    rewrite exports the same graph, under the same cache key, as without them."""
    with rewritten(module, rewrites) as counts:
        return tuple(r for r, n in counts.items() if n)


# -- applying them ------------------------------------------------------------------------------------
@contextlib.contextmanager
def rewritten(module: Any, rewrites: Iterable[str]) -> Iterator[dict[str, int]]:
    """`module` with `rewrites` applied in place until the block exits (then exactly as before).

    Yields how many sub-modules each rewrite replaced. Parameters are shared, never copied; the
    module's state dict keys change inside the block (compute digests before entering it).
    """
    names = check_rewrites(rewrites)
    if names:
        from ezvtb.models.export_blocks import ExportAttentionProcessor, FrameCount, SplitGEGLU, TemporalConv2d, \
            is_geglu, is_unet3d, plain_attention
    counts = {r: 0 for r in names}
    undo: list[Any] = []
    frames_of: dict[int, Any] = {}  # id of a cross-attention of a UNet3D -> that UNet3D's FrameCount
    try:
        if names:
            for parent in list(module.modules()):
                if "frame_shared_context" in names and is_unet3d(parent):
                    frames = FrameCount()
                    undo.append((parent.register_forward_pre_hook(frames.hook, with_kwargs=True), "hook", None))
                    frames_of.update((id(m), frames) for m in parent.modules()
                                     if getattr(m, "is_cross_attention", False) and plain_attention(m))
                for child_name, child in list(parent.named_children()):
                    new = None
                    if "temporal_conv2d" in names and TemporalConv2d.applies(child):
                        new, kind = TemporalConv2d(child), "temporal_conv2d"
                    elif "split_geglu" in names and is_geglu(child):
                        new, kind = SplitGEGLU(child), "split_geglu"
                    if new is not None:
                        setattr(parent, child_name, new)
                        undo.append((parent, child_name, child))
                        counts[kind] += 1
                fused, single = "fused_attention" in names, "single_key_attention" in names
                frames = frames_of.get(id(parent))
                if (fused or single or frames is not None) and plain_attention(parent):
                    old = parent.processor
                    parent.processor = ExportAttentionProcessor(old, fused=fused, single_key=single, frames=frames)
                    undo.append((parent, "processor", old))
                    for r in (("fused_attention",) * fused + ("single_key_attention",) * single
                              + ("frame_shared_context",) * (frames is not None)):
                        counts[r] += 1
        yield counts
    finally:
        for obj, attr, old in reversed(undo):
            if attr == "hook":
                obj.remove()
            elif attr == "processor":
                obj.processor = old
            else:
                setattr(obj, attr, old)


__all__ = ["CONTRIB_REWRITES", "PORTABLE_REWRITES", "REWRITES", "applicable", "check_rewrites", "rewrites_for",
           "rewritten"]
