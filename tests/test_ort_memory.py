"""ORT memory options of CPU sessions: one shared arena, no per-session memory pattern,
the same results as ORT's own defaults (benchmarks/bench_memory.py measures the RSS)."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ezvtb.engines import GraphSpec, TensorSpec, create_session


def tiny_graph(path):
    """y = relu(conv(x)) + x on [1, 8, 64, 64]: real intermediates for the arena to hold."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 3, 3], np.random.default_rng(0).normal(
        size=(8, 8, 3, 3)).astype(np.float32).ravel().tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64, 64])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return GraphSpec("tiny", (TensorSpec("x", (1, 8, 64, 64), "float32"),),
                     (TensorSpec("y", (1, 8, 64, 64), "float32"),))


def test_cpu_sessions_share_one_arena_and_match_ort_defaults(tmp_path):
    spec = tiny_graph(tmp_path / "tiny.onnx")
    x = np.random.default_rng(1).normal(size=(1, 8, 64, 64)).astype(np.float32)
    shared = [create_session(tmp_path / "tiny.onnx", spec, "cpu", intra_op_threads=1) for _ in range(2)]
    before = create_session(tmp_path / "tiny.onnx", spec, "cpu", intra_op_threads=1, shared_cpu_arena=False,
                            mem_pattern=True)
    for s in shared:
        so = s._sess.get_session_options()
        assert so.enable_cpu_mem_arena and not so.enable_mem_pattern
        assert so.get_session_config_entry("session.use_env_allocators") == "1"
    so = before._sess.get_session_options()
    assert so.enable_mem_pattern
    with pytest.raises(RuntimeError, match="session.use_env_allocators"):  # not set: its own arena
        so.get_session_config_entry("session.use_env_allocators")
    want = before.run({"x": x})["y"].copy()
    for _ in range(2):
        for s in shared:
            np.testing.assert_array_equal(s.run({"x": x})["y"], want)
    assert float(np.abs(want).max()) > 0
    for s in (*shared, before):
        s.close()
