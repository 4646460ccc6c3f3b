"""What webcam face tracking costs per 640x480 frame on the CPU: our ONNX graphs on ORT vs the original
TFLite models on Google's LiteRT interpreter (the reference, same process, same inputs).

Rows: the detector alone (letterbox + 128x128 network + decoding/NMS), the plain face mesh and the face mesh
with attention (irises; the tracker's default) alone (warp + 192x192 network), a tracked frame
(`FaceTracker.process` while the face is tracked: mesh with attention, PnP, features) and a frame with a
re-detection (`reset` first: detector + mesh + the refining second mesh pass). The reference column runs the
same TFLite networks through LiteRT (XNNPACK, same thread count) on the same crops; ratio = reference / ours.
LiteRT cannot run the mesh with attention (MediaPipe's custom operators), so that row has no reference.
Frames: skimage's astronaut photograph centred on a 640x480 canvas.

    python benchmarks/bench_facetrack.py [--frames 60] [--threads 1] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pct, publish, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    if args.frames < 2:
        raise SystemExit(f"--frames: expected >= 2, got {args.frames}")
    from ai_edge_litert.interpreter import Interpreter
    from skimage import data

    from ezvtb.live.facetrack import FaceTracker, Roi
    from ezvtb.models.facetrack.spec import DETECTOR, DETECTOR_SIZE, LANDMARK_SIZE, LANDMARKS
    from ezvtb.weights.mediapipe import model_file

    img = np.ascontiguousarray(data.astronaut()[..., ::-1])
    frame = np.full((480, 640, 3), 40, np.uint8)
    frame[:, 64:576] = img[16:496]
    tracker = FaceTracker(threads=args.threads, filter_params={})
    plain = FaceTracker(threads=args.threads, filter_params={}, iris=False)
    for _ in range(3):
        res = tracker.process(frame)
    roi = res.roi
    square = Roi(320.0, 240.0, 640.0, 0.0)

    refs = {}
    for name in (DETECTOR, LANDMARKS):
        it = Interpreter(model_path=str(model_file(name)[0]), num_threads=args.threads)
        it.allocate_tensors()
        refs[name] = it

    def litert(name: str, rgb: np.ndarray, lo: float, hi: float) -> None:
        it = refs[name]
        x = (rgb.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo))[None]
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        for d in it.get_output_details():
            it.get_tensor(d["index"])

    cases = {
        "detector (letterbox + net + NMS)": (lambda: tracker.detect(frame),
                                             lambda: litert(DETECTOR, tracker._crop(frame, square, DETECTOR_SIZE),
                                                            -1.0, 1.0)),
        "face mesh, plain (warp + net)": (lambda: plain.landmarks(frame, roi),
                                          lambda: litert(LANDMARKS, tracker._crop(frame, roi, LANDMARK_SIZE), 0.0,
                                                         1.0)),
        "face mesh with attention (warp + net)": (lambda: tracker.landmarks(frame, roi), None),
        "tracked frame (process)": (lambda: tracker.process(frame), None),
        "re-detected frame (reset + process)": (lambda: (tracker.reset(), tracker.process(frame)), None),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cases}
    for _ in range(args.frames):  # interleaved, so load changes hit every row alike
        for k, (ours, ref) in cases.items():
            t0 = time.perf_counter()
            ours()
            t1 = time.perf_counter()
            times[k][0].append((t1 - t0) * 1e3)
            if ref is not None:
                ref()
                times[k][1].append((time.perf_counter() - t1) * 1e3)
    rows = []
    for k, (ours, ref) in times.items():
        ref_p50 = pct(ref, 50) if ref else None
        rows.append([k, pct(ours, 50), pct(ours, 95), "-" if ref_p50 is None else ref_p50,
                     "-" if ref_p50 is None else f"{ref_p50 / pct(ours, 50):.2f}"])
    text = table(["step (640x480 frame)", "ours p50 ms", "ours p95 ms", "LiteRT p50 ms", "LiteRT/ours"], rows)
    note = (f"ORT CPU, {args.threads} intra-op thread(s), {args.frames} interleaved rounds; the machine is shared "
            "(about 8 concurrent jobs on 2 cores while measured), so absolute times are inflated; the ratio "
            "column compares runtimes in the same loop. A tracked frame runs only the mesh (with attention); the "
            "detector runs when tracking is lost.")
    publish("Webcam face tracking (bench_facetrack.py)", text, note, args.append)
    tracker.close()
    plain.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
