"""bench_diffusion_rewrites' profile: the arithmetic of convolutions and linear layers is counted from the
shapes ONNX Runtime's profile records (checked against the count worked out by hand for a small graph), the
time shares add up, the nodes that do the same work at every denoising step are found by data flow through
the graph ORT optimised, and the large-GEMM rate it compares them with is a positive rate."""
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


def test_node_flops_ignores_other_nodes_and_reads_grouped_weights():
    assert bdr.node_flops("Add", [[4, 4], [4, 4]], [[4, 4]]) == 0
    assert bdr.node_flops("Gemm", [[8, 64]], [[8, 32]]) == 2 * 8 * 32 * 64
    # a depthwise-style weight (out, in/groups=1, 3, 3): 9 multiply-adds per output
    assert bdr.node_flops("Conv", [[1, 4, 5, 5], [4, 1, 3, 3]], [[1, 4, 5, 5]]) == 2 * 100 * 9


def test_gemm_rate_is_a_rate():
    rate = bdr.gemm_rate(threads=1, n=256, calls=2)
    print(f"256^3 MatMul: {rate:.1f} GFLOP/s")
    assert np.isfinite(rate) and rate > 0.1


def _step_graph() -> tuple[bytes, dict]:
    """sample (4, 64), timestep (1,), context (8, 64): the context's projection is the same at every step, the
    timestep's scaling reads the timestep only, the rest reads the sample."""
    rng = np.random.default_rng(1)
    w = lambda name, shape: numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), name)  # noqa: E731
    nodes = [helper.make_node("MatMul", ["context", "w_kv"], ["kv"], name="/attn2/to_k/MatMul"),
             helper.make_node("ReduceMean", ["kv"], ["kv_mean"], axes=[0], keepdims=1, name="/attn2/mean"),
             helper.make_node("Mul", ["timestep", "t_scale"], ["t_emb"], name="/time_embedding/Mul"),
             helper.make_node("MatMul", ["sample", "w_in"], ["h"], name="/proj_in/MatMul"),
             helper.make_node("Add", ["h", "kv_mean"], ["h2"], name="/block/Add"),
             helper.make_node("Add", ["h2", "t_emb"], ["y"], name="/block/Add_1")]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    graph = helper.make_graph(nodes, "step", [vi("sample", [4, 64]), vi("timestep", [1]), vi("context", [8, 64])],
                              [vi("y", [4, 64])], [w("w_kv", (64, 64)), w("w_in", (64, 64)), w("t_scale", (1,))])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    feeds = {"sample": rng.standard_normal((4, 64), dtype=np.float32),
             "timestep": np.array([500.0], np.float32), "context": rng.standard_normal((8, 64), dtype=np.float32)}
    return data, feeds


def test_step_dependence_follows_the_data_flow(tmp_path):
    data, _ = _step_graph()
    path = tmp_path / "step.onnx"
    path.write_bytes(data)
    found = bdr.step_dependence(str(path), ["sample", "timestep"])
    print(found)
    assert found == {"/attn2/to_k/MatMul": "per video", "/attn2/mean": "per video",
                     "/time_embedding/Mul": "timestep only", "/proj_in/MatMul": "per step",
                     "/block/Add": "per step", "/block/Add_1": "per step"}


def test_profile_times_the_work_that_repeats_at_every_step():
    data, feeds = _step_graph()
    prof = bdr.profile_shares(data, feeds, threads=1, step_inputs=("sample", "timestep"))
    print({k: v for k, v in prof.items() if k != "kinds"})
    assert prof["per video"] > 0 and prof["timestep only"] > 0
    assert prof["per video"] + prof["timestep only"] < prof["total"]
