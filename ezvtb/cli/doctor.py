"""`ezvtb doctor`: what this machine can run (providers, GPU libraries, codecs, caches)."""
from __future__ import annotations

import argparse
import importlib
import platform


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="print available backends, libraries and cache locations")
    p.set_defaults(func=run)


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return str(getattr(m, "__version__", "installed"))


def run(args: argparse.Namespace) -> int:
    for line in report():
        print(line)
    return 0


def report() -> list[str]:
    """The doctor's report, one line per entry (also shown by the studio's Doctor panel)."""
    from ezvtb import __version__, paths

    lines: list[str] = []
    lines.append(f"ezvtb {__version__} on Python {platform.python_version()} ({platform.platform()})")
    lines.append(f"EZVTB_HOME: {paths.home()}")
    for mod in ("numpy", "onnxruntime", "onnx", "torch", "cv2", "lmdb", "tensorrt", "cuda"):
        lines.append(f"  {mod:<12} {_version(mod)}")
    try:
        import onnxruntime as ort

        lines.append(f"  onnxruntime providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        lines.append("  onnxruntime missing: install one of ezvtb[cpu] / [cuda] / [tensorrt] / [directml]")
    from ezvtb.cache import default_db_path, lossless_codec
    from ezvtb.cache.codec import jpeg_backend

    jpeg = jpeg_backend()
    lines.append(f"  output cache: JPEG via {jpeg.name} ({jpeg.version}), lossless (q100) codec "
                 f"{lossless_codec().name}, default database {default_db_path()}")
    from ezvtb.engines.trt import available
    from ezvtb.engines.policy import backend_chain, concrete_backend, resolve_precision

    lines += [f"  {line}" for line in _cuda_lines()]
    ok, why = available()
    lines.append(f"  native TensorRT: {'yes' if ok else 'no: ' + why}")
    lines.append(f"  TensorRT engine caches: {paths.home() / 'trt'} (native), {paths.home() / 'trt_ep'} (ORT EP)")
    chain = backend_chain("auto", True)
    lines.append("  get_core(use_tensorrt=True) tries: " + " -> ".join(b for b, _ in chain) + f" ({chain[0][1]})")
    from ezvtb.stages.rife import resolve_flow_scale

    for b in dict.fromkeys(concrete_backend(b) for b, _ in chain):
        p = resolve_precision(None, b)
        lines.append(f"  precision on {b} (model_half/interpolation_half/sr_half=None, auto): THA {p}, RIFE {p} "
              f"(flow at {resolve_flow_scale(None, b):g} of the frame), SR {p}")
    return lines


def _cuda_lines() -> list[str]:
    """The CUDA section: the driver and the GPU extra that fits it, cuda-python's module, devices, the CUDA
    major of each installed GPU package and any disagreement."""
    from ezvtb.engines import cuda
    from ezvtb.engines.driver import driver_facts, recommend_extra

    facts = driver_facts()
    extra, why = recommend_extra(facts)
    lines = []
    if facts is not None:
        gpus = ", ".join(f"{n} (sm {cc[0]}.{cc[1]})" if cc else n for n, cc in facts.gpus) or "no GPU listed"
        lines.append(f"NVIDIA driver {facts.version}, CUDA up to {facts.cuda[0]}.{facts.cuda[1]} ({facts.source}): "
                     f"{gpus}")
    lines.append(f"GPU extra for this driver: {f'ezvtb[{extra.name}]' if extra else 'none'} ({why})")
    try:
        rt = cuda.runtime()
    except Exception as e:  # noqa: BLE001 - BackendUnavailableError names what is missing
        lines.append(f"cuda-python: none, so no device buffers ({e})")
    else:
        n, why = cuda.device_count()
        lines.append(f"CUDA devices (cuda-python, {rt.__name__}): {n}" + (f" ({why})" if why else ""))
    majors, driver = cuda.cuda_majors(), cuda.driver_cuda_version()
    if majors:
        lines.append("CUDA builds: " + ", ".join(f"{c} CUDA {m} ({what})" for c, (m, what) in majors.items())
                     + (f"; driver supports CUDA {driver[0]}.{driver[1]}" if driver and driver[0] else ""))
    mismatch = cuda.cuda_major_mismatch(majors, driver or (facts.cuda if facts else None))
    if mismatch:
        lines.append(f"WARNING: {mismatch}")
    return lines
