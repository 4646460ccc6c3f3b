"""Peak memory of exporting a large UNet with `ezvtb.export.exporter.export_module`.

Each measurement runs in a fresh subprocess: it builds a random diffusers UNet3DConditionModel (the
ModelScope text-to-video layout at reduced width), reads its resident memory, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``), exports the UNet step graph (inline weights or external
data) and reads the peak (VmHWM) again. Reported: the weights' size, RSS before the export, peak
during it, and the growth over the built model in multiples of the weights. The target is "one copy
of the weights plus the graph being written": growth ~1x for an inline graph, well under 1x with
external data.

    python benchmarks/bench_export_memory.py [--channels 160] [--append]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import publish, table  # noqa: E402

CHILD = r"""
import json, os, sys, time, tempfile
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
import torch
torch.set_num_threads(int(sys.argv[4]))
from ezvtb.diffusion.unet3d import UNet3DStep, parameter_count
from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.export.exporter import export_module
from diffusers import UNet3DConditionModel
c = int(sys.argv[1]); external = sys.argv[2] == "external"; layers = int(sys.argv[3])
net = UNet3DConditionModel(block_out_channels=(c, 2 * c, 4 * c, 4 * c), layers_per_block=layers,
                           cross_attention_dim=1024, attention_head_dim=64).eval()
step = UNet3DStep(net).eval()
weights = sum(p.numel() * p.element_size() for p in step.parameters())
spec = GraphSpec("unet3d_mem", (TensorSpec("sample", (1, 4, 2, 8, 8), "float32"),
                                TensorSpec("timestep", (1,), "float32"),
                                TensorSpec("encoder_hidden_states", (1, 4, 1024), "float32")),
                 (TensorSpec("eps", (1, 4, 2, 8, 8), "float32"),))
import gc; gc.collect()
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0 = time.perf_counter()
out = tempfile.mkdtemp(prefix="ezvtb_mem_")
path = export_module(step, spec, name="unet3d_mem", out_dir=out, external_data=external, progress=False)
seconds = time.perf_counter() - t0
peak = status("VmHWM")
files = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
import shutil; shutil.rmtree(out, ignore_errors=True)
print(json.dumps({"params": parameter_count(step), "weights": weights, "before": before, "peak": peak,
                  "seconds": seconds, "files": files}))
"""


def measure(channels: int, mode: str, layers: int, threads: int) -> dict:
    env = dict(os.environ)
    home = tempfile.mkdtemp(prefix="ezvtb_mem_home_")
    env["EZVTB_HOME"] = home
    r = subprocess.run([sys.executable, "-c", CHILD, str(channels), mode, str(layers), str(threads)],
                       capture_output=True, text=True, env=env)
    shutil.rmtree(home, ignore_errors=True)
    if r.returncode != 0:
        raise SystemExit(f"export subprocess failed ({mode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=160, help="base channels (x1, x2, x4, x4); 160 -> 361 M params")
    ap.add_argument("--layers", type=int, default=2, help="res blocks per level (ModelScope: 2)")
    ap.add_argument("--modes", default="inline,external")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    rows = []
    params = 0
    for mode in args.modes.split(","):
        t = time.perf_counter()
        m = measure(args.channels, mode, args.layers, args.threads)
        params = m["params"]
        gib = 1024 ** 3
        rows.append([mode, f"{m['weights'] / gib:.2f}", f"{m['before'] / gib:.2f}", f"{m['peak'] / gib:.2f}",
                     f"{(m['peak'] - m['before']) / m['weights']:.2f}x", f"{m['files'] / gib:.2f}",
                     f"{m['seconds']:.0f}"])
        print(f"{mode}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    text = table(["graph", "weights GiB", "RSS before GiB", "peak RSS GiB", "growth / weights", "files GiB",
                  "export s"], rows)
    note = (f"diffusers UNet3DConditionModel, block_out_channels ({args.channels}, {2 * args.channels}, "
            f"{4 * args.channels}, {4 * args.channels}), {args.layers} res blocks per level, cross-attention 1024: "
            f"{params / 1e6:.0f} M parameters (fp32). One subprocess per row; peak = VmHWM after resetting it "
            "(clear_refs) once the model is built, so it counts the export only. TorchScript exporter (static "
            "shapes, 1x4x2x8x8 latent). The exporter is handed an empty initializer map (its ModelProto and bytes "
            "hold no weights) and the graph is written from the tensors' own memory, inline or to one external "
            "file.")
    publish("export_module peak memory (UNet3D)", text, note, args.append)


if __name__ == "__main__":
    main()
