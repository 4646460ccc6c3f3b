"""`get_core` and `build_core`: a `Core` from its options (`ezvtb.options.CoreOptions`)."""
from __future__ import annotations

import logging
import os
import textwrap
from typing import Any

from ezvtb.core import Core
from ezvtb.engines import create_session
from ezvtb.engines.policy import (
    CPU_HALF_COST,
    concrete_backend,
    open_first,
    open_stage,
    resolve_precision,
    session_options,
)
from ezvtb.models.tha3.spec import STAGES, graph_spec
from ezvtb.options import CoreOptions
from ezvtb.pipeline import PipelinedCore
from ezvtb.stages.rife import create_rife_stage, resolve_flow_scale
from ezvtb.stages.sr import create_sr_stage
from ezvtb.stages.tha import ThaStage

log = logging.getLogger("ezvtb")

GB = 1024**3


def link_device_stages(tha: ThaStage, cache: Any, after: list[Any]) -> list[str]:
    """Let frames stay in device memory between stages that share it; returns the links made.

    THA hands its device frame to the first stage after it unless an output cache sits in
    between (the cache stores host frames); RIFE hands device views to SR. Only the last
    stage's frames (or THA's, alone) are downloaded to the host.
    """
    links = []
    stages = [tha, *after]
    for i, (a, b) in enumerate(zip(stages, stages[1:])):
        sa = a.sessions["editor"] if a is tha else a.session
        sb = b.session
        same = sa.on_device and sb.on_device and getattr(sa, "memory", None) is not None \
            and getattr(sb, "memory", None) is not None and sa.memory.name == sb.memory.name
        if same and not (a is tha and cache is not None):
            a.device_output = True
            links.append(f"{type(a).__name__}->{type(b).__name__} on {sa.memory.name}")
    return links


def get_core(
    device_id: int = 0,
    use_tensorrt: bool = True,
    model_seperable: bool = True,
    model_half: bool | None = None,
    model_cache: bool = True,
    model_vram_cache: bool = True,
    model_cache_size: float = 1.0,
    model_use_eyebrow: bool = True,
    use_interpolation: bool = True,
    interpolation_scale: int = 2,
    interpolation_half: bool | None = None,
    use_cacher: bool = True,
    cacher_quality: int = 85,
    cacher_ram_size: float = 2.0,
    use_sr: bool = False,
    sr_x4: bool = True,
    sr_half: bool | None = None,
    sr_noise: int = 1,
    *,
    backend: str = "auto",
    threads: int = 0,
    weights_dir: str | os.PathLike | None = None,
    rife_model: str | os.PathLike | None = None,
    sr_region: tuple[int, int] | None = None,
    sr_alpha: str = "model",
    sr_region_size: int | None = None,
    cacher_on_database: bool = False,
    cacher_db_path: str | os.PathLike | None = None,
    pose_quantization: float | None = None,
    pipelined: bool = False,
    interpolation_flow_scale: float | None = None,
) -> Core:
    """Build a core from the seed interface's options (`ezvtb_interface.get_core`, plus keyword-only ones).

    Every option is validated first (ValueError naming it, before any export); then THA3, the output
    cache, RIFE and SR are opened as `build_core` describes. The options (defaults and meaning) are
    `ezvtb.options.CoreOptions`'s, listed below.
    """
    return build_core(CoreOptions(
        device_id=device_id, use_tensorrt=use_tensorrt, model_seperable=model_seperable, model_half=model_half,
        model_cache=model_cache, model_vram_cache=model_vram_cache, model_cache_size=model_cache_size,
        model_use_eyebrow=model_use_eyebrow, use_interpolation=use_interpolation,
        interpolation_scale=interpolation_scale, interpolation_half=interpolation_half, use_cacher=use_cacher,
        cacher_quality=cacher_quality, cacher_ram_size=cacher_ram_size, use_sr=use_sr, sr_x4=sr_x4, sr_half=sr_half,
        sr_noise=sr_noise, backend=backend, threads=threads, weights_dir=weights_dir, rife_model=rife_model,
        sr_region=sr_region, sr_alpha=sr_alpha, sr_region_size=sr_region_size, cacher_on_database=cacher_on_database,
        cacher_db_path=cacher_db_path, pose_quantization=pose_quantization, pipelined=pipelined,
        interpolation_flow_scale=interpolation_flow_scale))


def _options_doc() -> str:
    lines = ["", "    Options:"]
    for info in CoreOptions.describe():
        lines += textwrap.wrap(f"{info.name} (default {info.default!r}): {info.help}", 112,
                               initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines) + "\n"


get_core.__doc__ = (get_core.__doc__ or "") + _options_doc()


def build_core(opts: CoreOptions) -> Core:
    """Open the core `opts` describes.

    THA3 opens on the first backend of `opts.backend_chain()` that really loads (`open_first`), at the
    precision `resolve_precision` gives there; the output cache (built first, so a missing codec library or
    a bad LMDB path fails before any export), RIFE and SR follow THA's backend (`open_stage`). With
    `opts.pipelined` a `ezvtb.pipeline.PipelinedCore` wraps the core.
    """
    cache = None
    if opts.use_cacher:
        from ezvtb.cache import create_output_cache  # loads OpenCV (the JPEG codec): only for a core with a cache

        cache = create_output_cache(opts.cacher_quality, opts.cacher_ram_size, opts.cacher_on_database,
                                    opts.cacher_db_path)
    try:
        return _assemble(opts, cache)
    except BaseException:
        if cache is not None:
            cache.close()
        raise


def _assemble(opts: CoreOptions, cache: Any) -> Core:
    chain = opts.backend_chain()
    device_id, threads = opts.device_id, opts.threads

    from ezvtb.export import tha3_graphs  # exports on first use (needs torch), cached after

    def open_tha(backend: str, precision: str, options: dict[str, Any]) -> dict[str, Any]:
        paths = tha3_graphs(opts.variant, precision, weights_dir=opts.weights_dir)
        return {s: create_session(paths[s], graph_spec(s, precision), backend, **options) for s in STAGES}

    def open_on(name: str) -> tuple[dict[str, Any], str]:
        precision = resolve_precision(opts.model_half, concrete_backend(name))
        return open_tha(name, precision, session_options(name, device_id, threads)), precision

    (sessions, precision), backend, reason = open_first(chain, open_on)
    actual = getattr(sessions["editor"], "backend", backend)
    resolved = "" if actual == backend else f", resolved from {backend!r}"
    if opts.wants_tensorrt and actual not in ("trt", "tensorrt"):
        # The seed's contract: use_tensorrt=True without TensorRT falls back with a logged warning.
        # One line: the reason names what is missing; `ezvtb doctor` has the details.
        log.warning("TensorRT is not usable here: running on %r (%s)%s", actual, reason, resolved)
    else:
        log.info("backend: %s (%s)%s", actual, reason, resolved)
    if resolve_precision(opts.model_half, actual) != precision:  # auto precision, ORT fell back to the CPU
        for sess in sessions.values():
            sess.close()
        precision = resolve_precision(opts.model_half, actual)
        sessions = open_tha(actual, precision, session_options(backend, device_id, threads))
    # RIFE and SR follow THA's backend: their auto precision is resolved from the one that loaded.
    rife_precision = resolve_precision(opts.interpolation_half, actual) if opts.use_interpolation else None
    sr_precision = resolve_precision(opts.sr_half, actual) if opts.use_sr else None
    if actual == "cpu":
        forced = [n for n, p in (("model_half", precision), ("interpolation_half", rife_precision),
                                 ("sr_half", sr_precision)) if p == "fp16"]
        if forced:  # only an explicit True gets here: auto is fp32 on the CPU
            log.warning("%s=True on the CPU backend: fp16 graphs run slower there than fp32 (measured on a 2-core "
                        "CPU: %s) and less precisely; leave them at None (auto = fp32 on the CPU)",
                        "/".join(forced), CPU_HALF_COST)
    log.info("precision: THA %s%s%s", precision, f", RIFE {rife_precision}" if rife_precision else "",
             f", SR {sr_precision}" if sr_precision else "")
    on_device = sessions["morpher"].on_device
    if opts.model_cache:
        log.info("THA intermediate cache in %s (%.2f GB)",
                 "device memory" if opts.model_vram_cache and on_device else "host RAM", opts.model_cache_size)
    tha = ThaStage(sessions, use_eyebrow=opts.model_use_eyebrow,
                   cache_bytes=int(opts.model_cache_size * GB) if opts.model_cache else 0,
                   cache_on_device=opts.model_vram_cache)
    tha.precision = precision
    eyebrow = "eyebrow" if opts.model_use_eyebrow else "noeyebrow"
    tha_variant = f"tha3/{opts.variant}/{precision}/{eyebrow}"

    # Frame stages after THA: RIFE, then super-resolution.
    after = []
    if opts.use_interpolation:
        after.append(open_stage(chain, backend, lambda b, o: create_rife_stage(
            opts.interpolation_scale, rife_precision == "fp16", opts.rife_model, b,
            flow_scale=resolve_flow_scale(opts.interpolation_flow_scale, actual), **o), device_id, threads))
    if opts.use_sr:
        after.append(open_stage(chain, backend, lambda b, o: create_sr_stage(
            opts.sr_x4, sr_precision == "fp16", opts.sr_noise, opts.sr_region, b, sr_alpha=opts.sr_alpha,
            sr_region_size=opts.sr_region_size, max_frames=opts.frames_per_pose, **o), device_id, threads))

    links = link_device_stages(tha, cache, after)
    if links:
        log.info("frames stay on the device between stages: %s", ", ".join(links))
    core = Core(tha, cache=cache, after=after, variant=tha_variant, pose_quantization=opts.pose_quantization)
    if opts.pipelined:
        return PipelinedCore(core)  # type: ignore[return-value] - same public API as Core
    return core
