"""Classifier-free guidance: per-frame scales and the guided prediction.

``guided = uncond + scale * (cond - uncond)``, with a scale per frame:
  * "constant": every frame `scale`;
  * "linear": `min_scale` at the first frame to `scale` at the last (SVD's linear guider,
    1.0 -> 2.5; SVD-XT 1.5 -> 3.0);
  * "triangle": `min_scale` at the first and last frame, `scale` mid-way, linear in between
    (SV3D's triangle guider: the orbit starts and ends near the input view);
  * "spatiotemporal" (SV4D's guider, over a grid of T frames x V views flattened (t, v)): half the
    linear ramp over the frames plus half the triangle over the views.

`guided_model` wraps a denoiser so that cond and uncond run in one batched call (default) or in
two calls (half the activation memory); a guidance of exactly 1 makes one conditional call. It is
the one place where a pipeline's classifier-free guidance is computed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: torch is imported where a function needs it
    import torch

GUIDANCE_KINDS = ("constant", "linear", "triangle")
GRID_GUIDANCE_KINDS = GUIDANCE_KINDS + ("spatiotemporal",)


def guidance_scales(kind: str, num_frames: int, scale: float, min_scale: float = 1.0) -> "torch.Tensor":  # noqa: F821
    """Per-frame CFG scale, float32 shape (num_frames,), for `kind` in "constant" | "linear" | "triangle"."""
    import torch

    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"kind: expected one of {list(GUIDANCE_KINDS)}, got {kind!r}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected an int >= 1, got {num_frames!r}")
    for arg, v in (("scale", scale), ("min_scale", min_scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise ValueError(f"{arg}: expected a number, got {v!r}")
    if kind == "constant":
        return torch.full((num_frames,), float(scale), dtype=torch.float32)
    ramp = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    w = ramp if kind == "linear" else _triangle(ramp)
    return (float(min_scale) + w * (float(scale) - float(min_scale))).to(torch.float32)


def _triangle(ramp: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """The period-1 triangle wave on [0, 1]: 0 at both ends, 1 in the middle."""
    import torch

    return 2.0 * (ramp - torch.floor(ramp + 0.5)).abs()


def grid_guidance_scales(kind: str, num_frames: int, num_views: int, scale: float,
                         min_scale: float = 1.0) -> "torch.Tensor":  # noqa: F821
    """Per-row CFG scale of a T x V grid flattened in (t, v) order, float32 shape (T*V,).

    "spatiotemporal" (upstream's SpatiotemporalPredictionGuider): ``min + (scale - min) * (t/(T-1) / 2 +
    tri(v/(V-1)) / 2)``; "constant" | "linear" | "triangle": `guidance_scales` over the T*V rows.
    """
    import torch

    if kind not in GRID_GUIDANCE_KINDS:
        raise ValueError(f"kind: expected one of {list(GRID_GUIDANCE_KINDS)}, got {kind!r}")
    for name, n in (("num_frames", num_frames), ("num_views", num_views)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {n!r}")
    if kind != "spatiotemporal":
        return guidance_scales(kind, num_frames * num_views, scale, min_scale)
    t = torch.linspace(0, 1, num_frames, dtype=torch.float64)[:, None] * 0.5
    v = _triangle(torch.linspace(0, 1, num_views, dtype=torch.float64))[None, :] * 0.5
    return ((t + v).flatten() * (float(scale) - float(min_scale)) + float(min_scale)).float()


def apply_guidance(uncond: "torch.Tensor", cond: "torch.Tensor", scales: Any, frame_axis: int) -> "torch.Tensor":  # noqa: F821
    """``uncond + scales * (cond - uncond)`` with `scales` broadcast along `frame_axis`.

    scales: a number, a 0-d tensor, or a 1-D tensor of length F where ``uncond.shape[frame_axis]``
    is F or a multiple k*F (a flattened (batch frames) axis, batch-major as in ``(b t) c h w``:
    the F scales repeat for each of the k batch entries).
    """
    import torch

    if not isinstance(uncond, torch.Tensor) or not isinstance(cond, torch.Tensor):
        raise ValueError("uncond, cond: expected torch tensors")
    if uncond.shape != cond.shape:
        raise ValueError(f"cond: expected the shape of uncond {list(uncond.shape)}, got {list(cond.shape)}")
    nd = uncond.dim()
    if isinstance(frame_axis, bool) or not isinstance(frame_axis, int) or not -nd <= frame_axis < nd:
        raise ValueError(f"frame_axis: expected an int in [{-nd}, {nd}), got {frame_axis!r}")
    s = torch.as_tensor(scales, dtype=uncond.dtype, device=uncond.device)
    if s.dim() == 1:
        n = uncond.shape[frame_axis]
        if s.numel() == 0 or n % s.numel():
            raise ValueError(f"scales: expected length {n} (or a divisor of it) along axis {frame_axis}, "
                             f"got {s.numel()}")
        s = s.repeat(n // s.numel())
        shape = [1] * nd
        shape[frame_axis] = n
        s = s.reshape(shape)
    elif s.dim() != 0:
        raise ValueError(f"scales: expected a number or a 1-D tensor, got shape {list(s.shape)}")
    return uncond + s * (cond - uncond)


def guided_model(model: Callable[..., Any], cond: Sequence[Any], uncond: Sequence[Any], scales: Any,
                 frame_axis: int, *, batched: bool = True, batch_axis: int = 0) -> Callable[..., Any]:
    """A denoiser ``fn(x, t) -> guided`` over ``model(x, t, *conditioning)``.

    cond / uncond: the conditioning tensors after x and t (same count and shapes). batched=True
    concatenates [uncond, cond] along `batch_axis` and makes one call (x and a batched t are
    repeated); False makes two calls. `scales` and `frame_axis` as in `apply_guidance`; a scale of
    exactly 1 everywhere is no guidance: one call with `cond`.
    """
    import torch

    cond, uncond = tuple(cond), tuple(uncond)
    if len(cond) != len(uncond):
        raise ValueError(f"uncond: expected {len(cond)} tensors like cond, got {len(uncond)}")
    for i, (c, u) in enumerate(zip(cond, uncond)):
        if tuple(c.shape) != tuple(u.shape):
            raise ValueError(f"uncond[{i}]: expected shape {list(c.shape)} like cond[{i}], got {list(u.shape)}")

    def two(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return torch.cat([v, v], dim=batch_axis)
        return v

    unguided = bool((torch.as_tensor(scales, dtype=torch.float64) == 1.0).all())

    def fn(x: Any, t: Any) -> Any:
        if unguided:
            return model(x, t, *cond)
        if batched:
            both = [torch.cat([u, c], dim=batch_axis) for u, c in zip(uncond, cond)]
            out = model(two(x), two(t), *both)
            out_u, out_c = out.chunk(2, dim=batch_axis)
        else:
            out_u = model(x, t, *uncond)
            out_c = model(x, t, *cond)
        return apply_guidance(out_u, out_c, scales, frame_axis)

    return fn


__all__ = ["GRID_GUIDANCE_KINDS", "GUIDANCE_KINDS", "apply_guidance", "grid_guidance_scales", "guidance_scales",
           "guided_model"]
