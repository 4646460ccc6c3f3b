"""RIFE HDv3 on the CPU: candidate speed-ups beyond the product graph, and what each costs.

Every candidate is exported at flow 1/2 (the product's CPU default, 512x512, fp32) and run in ONNX
Runtime (CPU, the product's session options: no spinning) in the same process as the product graph,
rounds interleaved; CPU time per call (all threads) and the largest difference from the product
graph's output are reported. Candidates:

* **fused ConvTranspose heads** (exact): each block's flow head and mask head read the same
  features; their first transposed convolutions as one (c -> c/2 + c/2), one PReLU, their second
  ones as one block-diagonal transposed convolution (c -> 4 + 1).
* **phase heads** (exact): the same fused heads with each ConvTranspose(4, 2, 1) written as one
  2x2 convolution with 4 x cout outputs whose four phases are cut out and interleaved by pixel
  shuffle (ORT's Conv is about twice as fast per product as its ConvTranspose).
* **int8** (not exact): ORT static quantisation of the product graph's convolutions (QDQ,
  per-channel int8 weights, uint8 activations; the warps, blends and uint8 conversion stay float),
  calibrated on the benchmark's own frame pairs (optimistic).
* **one order per block** (not exact, quality only): HDv3 runs each block on (img0, img1) and on
  (img1, img0) and averages; running one order would halve the block work.

Quality: PSNR of each candidate's middle frame against the product graph's, on real THA3 frames
(sample images, consecutive poses of the realistic trace).

    python benchmarks/bench_rife_rewrites.py [--rounds 8] [--threads 2] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pct, publish, table  # noqa: E402

FLOW_SCALE = 0.5


def fused_convt_heads(block, feat):
    """conv1(feat), conv2(feat) of an HDv3Block as one pair of transposed convolutions."""
    import torch
    import torch.nn.functional as F

    f1, p1, f2 = block.conv1
    m1, q1, m2 = block.conv2
    first = F.conv_transpose2d(feat, torch.cat((f1.weight, m1.weight), 1), torch.cat((f1.bias, m1.bias)), 2, 1)
    hidden = F.prelu(first, torch.cat((p1.weight, q1.weight)))
    out = F.conv_transpose2d(hidden, _block_diagonal(f2.weight, m2.weight), torch.cat((f2.bias, m2.bias)), 2, 1)
    return out[:, :4], out[:, 4:5]


def _block_diagonal(w_flow, w_mask):
    half = w_flow.shape[0]
    w = w_flow.new_zeros(2 * half, w_flow.shape[1] + w_mask.shape[1], *w_flow.shape[2:])
    w[:half, :w_flow.shape[1]] = w_flow
    w[half:, w_flow.shape[1]:] = w_mask
    return w


# ConvTranspose2d(4, 2, 1): output row 2i + a reads input rows (i - 1, i) for a = 0, (i, i + 1) for
# a = 1, through these kernel rows.
_PHASE_TAPS = ((3, 1), (2, 0))


def phase_deconv(x, weight, bias):
    """ConvTranspose2d(k=4, s=2, p=1) (weight [cin, cout, 4, 4]) as one 2x2 Conv2d with 4 x cout
    outputs, its phases cut from the (H + 1) x (W + 1) output and interleaved by pixel shuffle."""
    import torch
    import torch.nn.functional as F

    cout = weight.shape[1]
    taps = [weight[:, :, list(_PHASE_TAPS[a])][:, :, :, list(_PHASE_TAPS[b])].permute(1, 0, 2, 3)
            for a in range(2) for b in range(2)]
    y = F.conv2d(x, torch.cat(taps, 0), bias.repeat(4), padding=1)
    h, w = x.shape[-2:]
    phases = [y[:, (2 * a + b) * cout:(2 * a + b + 1) * cout, a:a + h, b:b + w] for a in range(2) for b in range(2)]
    return F.pixel_shuffle(torch.stack(phases, 2).flatten(1, 2), 2)


def phase_heads(block, feat):
    """fused_convt_heads with both transposed convolutions as `phase_deconv`."""
    import torch
    import torch.nn.functional as F

    f1, p1, f2 = block.conv1
    m1, q1, m2 = block.conv2
    hidden = F.prelu(phase_deconv(feat, torch.cat((f1.weight, m1.weight), 1), torch.cat((f1.bias, m1.bias))),
                     torch.cat((p1.weight, q1.weight)))
    out = phase_deconv(hidden, _block_diagonal(f2.weight, m2.weight), torch.cat((f2.bias, m2.bias)))
    return out[:, :4], out[:, 4:5]


def with_heads(module, heads):
    """`module` (an exported Interpolator over IFNetHDv3) with every block's `heads` replaced."""
    import types

    for i in range(len(module.net.channels)):
        block = getattr(module.net, f"block{i}")
        block.heads = types.MethodType(heads, block)
    return module


def one_order(net):
    """IFNetHDv3 with each block run on (img0, img1) only (no averaging with the swapped order)."""
    import types

    import torch

    def both(self, block, w0, w1, mask, flow, scale):
        x0 = torch.cat((w0, w1), 1) if mask is None else torch.cat((w0, w1, mask), 1)
        return block(x0, flow, scale)

    net._both_orders = types.MethodType(both, net)
    return net


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    def pm(f):
        f = f.astype(np.float64)
        f[..., :3] *= f[..., 3:4] / 255.0
        return f
    mse = float(((pm(a) - pm(b)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", default="crypko_00,lambda_00")
    ap.add_argument("--pairs", type=int, default=3, help="pose pairs per image (default: %(default)s)")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ezvtb import get_core, prepare_image
    from ezvtb.atomic import atomic_write
    from ezvtb.engines import create_session
    from ezvtb.export.rife import REWRITES, build_interpolator, export_onnx, rife_graph
    from ezvtb.models.rife.spec import graph_spec
    from ezvtb.traces import realistic_trace
    from ezvtb.weights.rife import hdv3_weights
    from ezvtb.weights.tha3 import sample_image

    torch.set_num_threads(args.threads)
    trace = realistic_trace(2000, fps=20.0)
    starts = np.linspace(40, 1982, args.pairs).astype(int)
    core = get_core(use_tensorrt=False, model_half=False, model_cache=False, use_interpolation=False,
                    use_cacher=False, backend="cpu", threads=args.threads)
    pairs = []
    for name in [x for x in args.images.split(",") if x]:
        core.setImage(prepare_image(sample_image(name)))
        core.inference(trace[0])
        for k in starts:
            pairs.append(tuple(core.inference(trace[j])[0].copy() for j in (k, k + 8)))
    core.close()

    tmp = tempfile.mkdtemp(prefix="bench_rife_rewrites_")
    product = str(rife_graph(2, "fp32", flow_scale=FLOW_SCALE).path)
    weights = hdv3_weights()

    def exported(name, module):
        path = os.path.join(tmp, name + ".onnx")
        with atomic_write(path) as f:
            f.write(export_onnx(module))
        return path

    def interpolator():
        return build_interpolator(weights, 2, "fp32", flow_scale=FLOW_SCALE, rewrites=REWRITES)

    graphs = {
        "product graph (flow 1/2, batched orders)": product,
        "fused ConvTranspose heads (exact)": exported("fused", with_heads(interpolator(), fused_convt_heads)),
        "phase heads: 2x2 Conv + pixel shuffle (exact)": exported("phase", with_heads(interpolator(), phase_heads)),
    }

    class Pairs(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{"prev_frame": a, "frame": b} for a, b in pairs])

        def get_next(self):
            return next(self._it, None)

    int8 = os.path.join(tmp, "int8.onnx")
    quantize_static(product, int8, Pairs(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
    graphs["int8 convolutions (QDQ, per-channel; not exact)"] = int8

    spec = graph_spec(2, "fp32")
    sessions = {k: create_session(p, spec, "cpu", intra_op_threads=args.threads) for k, p in graphs.items()}
    feeds = [{"prev_frame": a, "frame": b} for a, b in pairs]
    outs = {k: [np.array(s.run(f)["frames"][0]) for f in feeds] for k, s in sessions.items()}
    ref_key = next(iter(graphs))
    cpu = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(args.rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            c0 = time.process_time()
            sessions[k].run(feeds[r % len(feeds)])
            cpu[k].append((time.process_time() - c0) * 1e3)
    for s in sessions.values():
        s.close()
    m = interpolator()
    one_order(m.net)
    with torch.no_grad():
        one = [m(torch.from_numpy(a), torch.from_numpy(b))[0].numpy() for a, b in pairs]

    base = pct(cpu[ref_key], 50)
    rows = []
    for k in keys:
        diff = max(int(np.abs(o.astype(np.int16) - r).max()) for o, r in zip(outs[k], outs[ref_key]))
        q = np.mean([psnr(o, r) for o, r in zip(outs[k], outs[ref_key])])
        rows.append([k, pct(cpu[k], 50), f"{base / pct(cpu[k], 50):.2f}x", diff,
                     "identical" if not np.isfinite(q) else f"{q:.2f}"])
    q_one = np.mean([psnr(o, r) for o, r in zip(one, outs[ref_key])])
    rows.append(["one order per block (eager, quality only)", "-", "~2x block work saved",
                 max(int(np.abs(o.astype(np.int16) - r).max()) for o, r in zip(one, outs[ref_key])), f"{q_one:.2f}"])
    t = table(["RIFE HDv3 x2 at flow 1/2, 512x512, ORT CPU", "CPU ms per call (p50)", "speed vs product",
               "max diff from product, grey levels", "PSNR vs product graph, dB"], rows)
    note = (f"{args.rounds} interleaved rounds, {args.threads} threads (product session options), "
            f"{len(pairs)} real THA3 frame pairs ({args.images}; poses k, k+8 of the realistic trace). "
            "int8 is calibrated on the same pairs it is scored on (optimistic).")
    publish("RIFE HDv3: candidate CPU speed-ups beyond the product graph", t, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
