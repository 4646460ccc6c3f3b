"""Speech: SadTalker Audio2Coeff seconds per second of audio (torch eager vs exported ORT), and the live
lip-sync path's per-hop cost and sound-to-pose latency.

Audio2Coeff uses random weights in the real sizes and the bundled safetensors layout (no SadTalker weights are
installable; the cost does not depend on the weight values). The clip is a synthetic voiced signal (espeak-ng
speech when espeak-ng is installed). One warm-up call per backend on a short clip (ORT: the export and session
creation happen there), then `--rounds` timed `from_wav` calls per backend, alternating, each after a short
settle pause; the table shows the best and the median. Rows: mel front end alone, whole `from_wav` (front end +
audio2exp + audio2pose + smoothing).

Lip sync (`ezvtb.live.lipsync`): analysis cost per 10 ms hop (p50/p95 over a real signal), the onset delay in
audio time (hop at which mouth_aaa first reaches half its sustained value after a vowel onset), and the wall-clock
sound-to-pose latency of the file source played in real time and polled every millisecond (what `ezvtb run`'s
render tick would read; add the microphone's input buffer, typically 10-30 ms at ``latency="low"``, and half a
render tick for a live setup).

The run refuses to start on a loaded machine (1-minute load average over 1.5; ``--allow-loaded`` runs it anyway,
marked LOADED) and reports the CPU other processes used while it ran.

    python benchmarks/bench_audio.py [--seconds 4] [--rounds 3] [--allow-loaded] [--append]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import SETTLE_S, LoadWatch, add_load_args, alternating_ms, pct, publish, table  # noqa: E402


def speech(seconds: float, folder: str) -> str:
    import soundfile

    path = os.path.join(folder, "speech.wav")
    exe = shutil.which("espeak-ng")
    if exe:
        text = "konnichiwa. kyou wa ii tenki desu ne. issho ni asobimashou. " * 4
        subprocess.run([exe, "-v", "ja", "-w", path, text], check=True, capture_output=True)
        import soundfile as sf

        y, r = sf.read(path, dtype="float32")
        sf.write(path, y[: int(seconds * r)], r)
        return path
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    ph = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    y = sum(np.sin(k * ph) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2.3 * t)) ** 2
    soundfile.write(path, (0.3 * y / np.abs(y).max()).astype(np.float32), rate)
    return path


def audio2coeff_rows(seconds: float, rounds: int, folder: str) -> tuple[list[list[object]], float]:
    import torch
    from safetensors.torch import save_file
    from scipy.io import savemat

    from ezvtb.audio2coeff import Audio2Coeff
    from ezvtb.audio2coeff import frontend as fe
    from ezvtb.models.sadtalker.networks import ExpressionNet, PoseNet

    torch.manual_seed(0)
    bundle = {f"audio2exp.{k}": v for k, v in ExpressionNet().state_dict().items()}
    bundle |= {f"audio2pose.{k}": v for k, v in PoseNet().state_dict().items()}
    ckpt = os.path.join(folder, "SadTalker_random.safetensors")
    save_file(bundle, ckpt)
    face = os.path.join(folder, "face.mat")
    savemat(face, {"coeff_3dmm": np.zeros((1, 73), np.float32)})
    wav = speech(seconds, folder)
    short = os.path.join(folder, "short.wav")
    import soundfile

    y, r = soundfile.read(wav, dtype="float32")
    soundfile.write(short, y[: int(0.5 * r)], r)
    dur = len(fe.load_wav(wav)) / 16000
    paths = {"use_safetensor": True, "checkpoint": ckpt}
    runners = {"torch eager": Audio2Coeff(paths, "cpu", backend="torch"),
               "ORT (cpu)": Audio2Coeff(paths, "cpu", backend="cpu")}
    for a2c in runners.values():
        a2c.from_wav(short, face, seed=0)  # warm-up; ORT exports and opens its sessions here
    sides = {"mel": lambda: fe.audio_features(fe.load_wav(wav))}
    sides |= {name: (lambda a2c=a2c: a2c.from_wav(wav, face, seed=0)) for name, a2c in runners.items()}
    times = {k: [ms / 1e3 for ms in ts] for k, ts in alternating_ms(sides, rounds).items()}
    mel_t = times.pop("mel")
    ref = float(np.median(times["torch eager"]))
    rows = [["mel front end (numpy)", f"{min(mel_t) / dur:.4f}", f"{float(np.median(mel_t)) / dur:.4f}", "-"]]
    for name, ts in times.items():
        rows.append([f"Audio2Coeff.from_wav, {name}", f"{min(ts) / dur:.3f}", f"{float(np.median(ts)) / dur:.3f}",
                     f"{ref / float(np.median(ts)):.2f}x"])
    for a2c in runners.values():
        a2c.close()
    return rows, dur


def lipsync_rows() -> list[list[object]]:
    from ezvtb.live import lipsync as ls

    rate = 16000
    t = np.arange(int(1.5 * rate)) / rate
    from scipy.signal import lfilter

    # a voiced 'a'-like buzz: 120 Hz pulses through resonances at 750/1200/2600 Hz
    y = np.diff(np.floor(np.cumsum(np.full(len(t), 120.0 / rate))), prepend=0.0)
    for f, bw in ((750, 80), (1200, 100), (2600, 140)):
        r = np.exp(-np.pi * bw / rate)
        y = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / rate), r * r], y)
    vowel = (0.3 * y / np.abs(y).max()).astype(np.float32)
    onset = 0.3
    signal = np.concatenate([np.zeros(int(onset * rate), np.float32), vowel])
    est = ls.VowelEstimator()
    # per-hop cost
    costs = []
    for i in range(0, len(signal) - ls.HOP + 1, ls.HOP):
        t0 = time.perf_counter()
        est.push(signal[i:i + ls.HOP])
        costs.append((time.perf_counter() - t0) * 1e3)
    w = est.track(signal)[:, 0]
    steady = float(np.median(w[-50:]))
    first = int(np.flatnonzero(w >= 0.5 * steady)[0])
    audio_delay = ((first + 1) * ls.HOP / rate - onset) * 1e3
    # wall clock: the file source played in real time, polled every ms
    lat = []
    for _ in range(3):
        src = ls.AudioFilePoseSource("bench", signal, ls.VowelEstimator())
        src.start()
        t0 = time.perf_counter() - src.clock.elapsed()  # when playback started
        crossed = None
        while time.perf_counter() - t0 < onset + 0.5:
            s = src.latest()
            if s.pose[ls.MOUTH["a"]] >= 0.5 * steady:
                crossed = s.t
                break
            time.sleep(0.001)
        if crossed is not None:
            lat.append((crossed - (t0 + onset)) * 1e3)
    return [["analysis per 10 ms hop (ms)", f"{pct(costs, 50):.2f}", f"{pct(costs, 95):.2f}"],
            ["onset -> half-open mouth, audio time (ms)", audio_delay, audio_delay],
            ["onset -> half-open mouth, wall clock, file source (ms)", float(np.median(lat)) if lat else float("nan"),
             max(lat) if lat else float("nan")]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length for Audio2Coeff (default 4)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    add_load_args(ap)
    args = ap.parse_args()
    watch = LoadWatch(args.allow_loaded).check()
    os.environ.setdefault("EZVTB_HOME", tempfile.mkdtemp(prefix="ezvtb_bench_audio_"))
    with watch:
        with tempfile.TemporaryDirectory() as d:
            rows, dur = audio2coeff_rows(args.seconds, args.rounds, d)
        lip = lipsync_rows()
    t1 = table(["Audio2Coeff (random weights, real sizes)", "s per s of audio (best)", "median", "vs eager"], rows)
    t2 = table(["live lip sync (ezvtb.live.lipsync)", "p50 / median", "p95 / max"], lip)
    note = (f"Audio2Coeff on a {dur:.1f} s clip ({'espeak-ng speech' if shutil.which('espeak-ng') else 'synthetic'}),"
            f" {args.rounds} rounds alternating backends after one warm-up each, each call after a "
            f"{SETTLE_S * 1e3:.0f} ms settle pause; 'vs eager' = eager median / this median. OpenVINO: not run "
            "(from_wav chains several graphs with host steps between them through ONNX Runtime sessions; there is "
            "no OpenVINO backend to put in their place). Lip-sync latency budget 100 ms: the measured onset delay + "
            "the microphone input buffer (10-30 ms, not measurable without a microphone here) + half a render tick "
            "(17 ms at 30 fps).")
    publish("Speech: Audio2Coeff (torch vs ORT) and live lip sync", t1 + "\n\n" + t2, note, args.append, load=watch)


if __name__ == "__main__":
    main()
