"""bench_diffusion_rewrites' profile: the arithmetic of convolutions and linear layers is counted from the
shapes ONNX Runtime's profile records (checked against the count worked out by hand for a small graph), the
time shares add up, and the large-GEMM rate it compares them with is a positive rate."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_diffusion_rewrites as bdr  # noqa: E402


def _conv_then_linear() -> tuple[bytes, dict, float]:
    """Conv 8->16 channels 3x3 on 1x8x16x16, flattened to 16x256, then a 256->32 linear layer; with the FLOP
    count by hand."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3), dtype=np.float32), "w_conv"),
             numpy_helper.from_array(np.array([16, 256], np.int64), "flat"),
             numpy_helper.from_array(rng.standard_normal((256, 32), dtype=np.float32), "w_lin")]
    nodes = [helper.make_node("Conv", ["x", "w_conv"], ["c"], pads=[1, 1, 1, 1], name="/block/conv/Conv"),
             helper.make_node("Reshape", ["c", "flat"], ["r"], name="/block/Reshape"),
             helper.make_node("MatMul", ["r", "w_lin"], ["y"], name="/block/proj/MatMul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 32])], inits)
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    flops = 2 * (16 * 16 * 16) * (8 * 3 * 3) + 2 * (16 * 32) * 256
    return data, {"x": rng.standard_normal((1, 8, 16, 16), dtype=np.float32)}, float(flops)


def test_profile_counts_convolution_and_linear_arithmetic():
    data, feeds, flops = _conv_then_linear()
    prof = bdr.profile_shares(data, feeds, threads=1)
    print(f"counted {prof['gemm_flops']:.0f} FLOP (by hand {flops:.0f}) in {prof['gemm_ms']:.3f} ms; {prof['kinds']}")
    assert prof["gemm_flops"] == flops
    assert prof["gemm_ms"] > 0 and prof["kinds"]["convolution"] > 0 and prof["kinds"]["linear"] > 0
    assert abs(sum(prof["kinds"].values()) - prof["total"]) < 1e-9
    assert prof["invariant"] == 0  # no cross-attention or timestep embedding in this graph


def test_node_flops_ignores_other_nodes_and_reads_grouped_weights():
    assert bdr.node_flops("Add", [[4, 4], [4, 4]], [[4, 4]]) == 0
    assert bdr.node_flops("Gemm", [[8, 64]], [[8, 32]]) == 2 * 8 * 32 * 64
    # a depthwise-style weight (out, in/groups=1, 3, 3): 9 multiply-adds per output
    assert bdr.node_flops("Conv", [[1, 4, 5, 5], [4, 1, 3, 3]], [[1, 4, 5, 5]]) == 2 * 100 * 9


def test_gemm_rate_is_a_rate():
    rate = bdr.gemm_rate(threads=1, n=256, calls=2)
    print(f"256^3 MatMul: {rate:.1f} GFLOP/s")
    assert np.isfinite(rate) and rate > 0.1
