"""`ezvtb run`: a live pose source -> core -> frame sink(s), paced at --fps.

    ezvtb run --input vmc://127.0.0.1:39539 --output shm://ezvtb --fps 30
    ezvtb run --input ifm://192.168.1.20:49983 --output raw:- | ffmpeg -f rawvideo -pix_fmt bgra \
        -s 512x512 -r 30 -i - -c:v libx264 out.mp4

Each tick takes the source's latest pose (never a queue), renders it and writes every returned
frame to every sink. A tick that ends after the next deadline makes the loop skip the missed
ticks (counted as late ticks) instead of running late ones back to back; "dropped" counts the
source's poses that were never rendered (gaps in its sequence numbers). With RIFE x N each tick
emits N frames, so the sinks receive N x fps frames per second.

Offline renders: when the input is a file or the trace (``file://``, ``trace://``, ``video://``) and every
output is a file (``mp4:``, ``webm:``, ``png:``, ``raw:PATH``, ``null:``), nothing is live, so every pose is
rendered once, in order, as fast as the core goes (``step=1``, ``loop=0`` unless the URL says
otherwise; ``?step=0`` plays the file in real time instead).

SIGINT/SIGTERM stop the loop cleanly (sinks closed, shared memory unlinked). A recording stopped
that way is kept: under its own name when no file had that name, else next to it as
``STEM.partial.SUFFIX`` (the existing file is never replaced by a stopped recording); the
summary says where. A run that ends on its own (--frames, --seconds, the input finished, the
reader gone) replaces the output file.
"""
from __future__ import annotations

import argparse
import collections
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from ezvtb.cli.core_options import add_core_arguments
from ezvtb.options import CoreOptions

log = logging.getLogger("ezvtb.run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="live: pose source -> core -> frame sinks, paced at --fps",
                       description="Drives a core from a live tracker (iFacialMocap, OpenSeeFace, VMC) or a pose "
                                   "file and sends frames to raw/shm/mp4/virtual-camera sinks. Sources and sinks "
                                   "are described in docs/live.md.")
    p.add_argument("--input", required=True, metavar="URL",
                   help="ifm://PHONE:49983, osf://127.0.0.1:11573, vmc://127.0.0.1:39539, cam://0 (webcam, own face "
                        "tracker), video://take.mp4, file://poses.npy, trace://")
    p.add_argument("--audio", metavar="URL",
                   help="speech drives the mouth on top of --input: audio://mic or audio://speech.wav "
                        "(ezvtb.live.lipsync; --input audio://... alone also works)")
    p.add_argument("--output", action="append", required=True, metavar="URL",
                   help="raw:-, raw:PATH, shm://NAME, mp4:PATH, webm:PATH (alpha kept), png:FOLDER (PNG sequence "
                        "with alpha), vcam://, null: (repeatable)")
    p.add_argument("--fps", type=float, default=30.0, help="render rate (default: %(default)s)")
    p.add_argument("--frames", type=int, help="stop after N rendered ticks")
    p.add_argument("--seconds", type=float, help="stop after S seconds")
    p.add_argument("--stats-interval", type=float, default=5.0, metavar="S",
                   help="log fps and latency every S seconds (default: %(default)s; 0 = off)")
    p.add_argument("--background", default="#FFFFFF",
                   help="background colour for mp4 and virtual-camera sinks (default: %(default)s)")
    add_core_arguments(p)
    p.set_defaults(func=run)


def _pcts(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "p99": math.nan}
    import numpy as np

    a = np.asarray(values, np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99))}


def run_loop(source: Any, core: Any, sinks: Sequence[Any], fps: float, *, frames: int | None = None,
             seconds: float | None = None, stop: threading.Event | None = None,
             stats_interval: float = 5.0, window: int = 1024, paced: bool = True) -> dict[str, Any]:
    """Source -> core -> sinks loop, paced at `fps` (module docstring). Returns a summary dict.

    `core` needs ``inference(pose) -> list[frame]``; `source` needs ``latest()`` and
    ``finished``; each sink needs ``write(frame)``. Stops on `frames` ticks, `seconds`, a set
    `stop` event, a finished playback source, or `SinkClosed`. paced=False: no waiting between
    ticks (offline renders). "dropped": poses of the source never rendered (sequence gaps);
    "late_ticks": ticks skipped because a render ended after the next deadline.
    """
    import numpy as np

    from ezvtb.live.sinks import SinkClosed
    from ezvtb.pose import POSE_SIZE

    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"--fps: expected a number > 0, got {fps}")
    if frames is not None and frames < 1:
        raise ValueError(f"--frames: expected >= 1, got {frames}")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"--seconds: expected > 0, got {seconds}")
    stop = stop or threading.Event()
    period = 1.0 / fps
    neutral = np.zeros(POSE_SIZE, np.float32)
    infer_ms: collections.deque[float] = collections.deque(maxlen=window)
    latency_ms: collections.deque[float] = collections.deque(maxlen=window)
    rendered = emitted = dropped = late = stale = 0
    last_seq = -1
    reason = "stopped"
    t_start = time.perf_counter()
    next_t = t_start
    next_report = t_start + stats_interval if stats_interval > 0 else math.inf
    report_from = (t_start, 0, 0, 0)
    while True:
        if stop.is_set():
            reason = "signal"
            break
        now = time.perf_counter()
        if paced and now < next_t:
            if stop.wait(next_t - now):
                reason = "signal"
                break
        sample = source.latest()
        pose = neutral if sample is None else sample.pose
        if sample is not None:
            stale += sample.seq == last_seq
            if last_seq >= 0 and sample.seq > last_seq + 1:
                dropped += sample.seq - last_seq - 1
            last_seq = sample.seq
        t0 = time.perf_counter()
        out = core.inference(pose)
        t1 = time.perf_counter()
        try:
            for f in out:
                for s in sinks:
                    s.write(f)
        except SinkClosed as e:
            log.info("%s", e)
            reason = "output closed"
            break
        done = time.perf_counter()
        rendered += 1
        emitted += len(out)
        infer_ms.append((t1 - t0) * 1e3)
        if sample is not None:
            latency_ms.append((done - sample.t) * 1e3)
        next_t += period
        if paced and done > next_t:  # late: skip the ticks already missed, never run them back to back
            missed = int((done - next_t) // period) + 1
            late += missed
            next_t += missed * period
        if done >= next_report:
            t_prev, r_prev, d_prev, l_prev = report_from
            inf, lat = _pcts(infer_ms), _pcts(latency_ms)
            src = source.stats() if hasattr(source, "stats") else {}
            log.info("%.1f fps (target %s), inference p50 %.1f / p95 %.1f ms, pose->frame p50 %.1f / p95 %.1f ms, "
                     "dropped %d poses, %d late ticks, input %s packets (%s malformed)",
                     (rendered - r_prev) / (done - t_prev), f"{fps:.1f}" if paced else "none, offline",
                     inf["p50"], inf["p95"], lat["p50"], lat["p95"], dropped - d_prev, late - l_prev,
                     src.get("packets", "-"), src.get("malformed", "-"))
            report_from = (done, rendered, dropped, late)
            next_report = done + stats_interval
        if frames is not None and rendered >= frames:
            reason = "frames"
            break
        if seconds is not None and done - t_start >= seconds:
            reason = "seconds"
            break
        if getattr(source, "finished", False):
            reason = "input finished"
            break
    elapsed = time.perf_counter() - t_start
    return {"rendered": rendered, "frames_out": emitted, "dropped": dropped, "late_ticks": late,
            "repeated_poses": stale, "paced": paced,
            "elapsed_s": elapsed, "fps": rendered / elapsed if elapsed > 0 else 0.0,
            "output_fps": emitted / elapsed if elapsed > 0 else 0.0, "target_fps": fps,
            "inference_ms": _pcts(infer_ms), "latency_ms": _pcts(latency_ms), "stop_reason": reason}


LIVE_SINKS = ("raw:-", "raw://-", "shm://", "vcam:")


def offline_input(url: str, outputs: Sequence[str]) -> str | None:
    """`url` with ``step=1`` (and ``loop=0``) added when nothing is live: a file or the trace in,
    only files out (module docstring). None when the run stays paced."""
    import os
    import stat
    import urllib.parse

    from ezvtb.live.sinks import output_path

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("file", "trace", "video"):
        return None
    for u in outputs:
        if u.startswith(LIVE_SINKS):
            return None
        path = output_path(u)
        if path is not None:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
                return None  # a FIFO or a device: someone reads it live
    base, _, query = rest.partition("?")
    q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    if q.get("step", "1") in ("0", "false", "no", "off"):
        return None
    q.setdefault("step", "1")
    q.setdefault("loop", "0")
    return f"{scheme}://{base}?{urllib.parse.urlencode(q)}"


def input_files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(argument, path) of every file `ezvtb run` reads: the pose file, the speech, core files."""
    import urllib.parse

    from ezvtb.cli.core_options import core_input_files

    files: list[tuple[str, str | None]] = list(core_input_files(args))
    for what, url in (("--input", args.input), ("--audio", getattr(args, "audio", None))):
        if url and "://" in url:
            scheme, _, rest = url.partition("://")
            if scheme.lower() in ("file", "audio", "video") and rest.split("?")[0] not in ("", "mic"):
                files.append((what, urllib.parse.unquote(rest.split("?")[0])))
    return files


def run(args: argparse.Namespace) -> int:
    from ezvtb.atomic import OutputError
    from ezvtb.factory import build_core
    from ezvtb.live import open_sink, open_source
    from ezvtb.live.sinks import output_path
    from ezvtb.outputs import check_fps, check_outputs
    from ezvtb.video import parse_color
    from ezvtb.weights.tha3 import load_character

    check_fps(args.fps)
    opts = CoreOptions.from_args(args)
    background = parse_color(args.background)
    check_outputs([("--output" if not u.startswith("png:") else "--output png:", output_path(u)) for u in args.output],
                  input_files(args), folders=("--output png:",))
    out_fps = args.fps * opts.frames_per_pose
    offline = None if getattr(args, "audio", None) else offline_input(args.input, args.output)
    input_url = offline or args.input
    if offline:
        log.info("offline render (a file in, files out): every pose rendered once in order, unpaced; "
                 "add ?step=0 to the input to play it in real time")
    sinks = [open_sink(u, out_fps, background) for u in args.output]
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    source = core = None
    ok = False
    kept: list[str] = []
    try:
        source = open_source(input_url)
        if getattr(args, "audio", None):
            from ezvtb.live.lipsync import MouthOverlaySource

            source = MouthOverlaySource(source, open_source(args.audio))
        image = load_character(args.image)
        t0 = time.perf_counter()
        core = build_core(opts)
        core.setImage(image)
        log.info("core ready in %.1f s; %s -> %s at %.1f fps", time.perf_counter() - t0, input_url,
                 ", ".join(args.output), args.fps)
        summary = run_loop(source, core, sinks, args.fps, frames=args.frames, seconds=args.seconds, stop=stop,
                           stats_interval=args.stats_interval, paced=not offline)
        ok = True
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if source is not None:
            source.close()
        stopped = ok and summary["stop_reason"] == "signal"
        errors = []
        for s in sinks:
            if not ok:
                s.abort()
                continue
            try:
                s.close(keep_existing=stopped)
            except OutputError as e:
                errors.append(str(e))
                continue
            written = getattr(s, "written", None)
            target = output_path(s.url)
            if stopped and written is not None and target is not None and Path(written) != Path(target):
                kept.append(f"the stopped recording is kept as {written} ({target} unchanged)")
        if core is not None:
            core.close()
    line = (f"rendered {summary['rendered']} frames in {summary['elapsed_s']:.1f} s: {summary['fps']:.2f} fps "
            f"(target {f'{args.fps:g}' if not offline else 'none, offline'}), {summary['frames_out']} frames out, "
            f"{summary['dropped']} poses dropped, {summary['late_ticks']} late ticks, inference "
            f"p50 {summary['inference_ms']['p50']:.1f} ms, pose->frame p50 {summary['latency_ms']['p50']:.1f} ms; "
            f"stopped: {summary['stop_reason']}" + "".join(f"; {k}" for k in kept))
    if any(u.startswith(("raw:-", "raw://-")) for u in args.output):
        log.info("%s", line)  # stdout carries the frames
    else:
        print(line, flush=True)
    if errors:
        raise OutputError("; ".join(errors))
    return 0
