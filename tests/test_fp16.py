"""THA3 fp16 graphs: grid math stays fp32 in the graph, and fp16 frames stay close to fp32 frames.

The bounds sit well under what `benchmarks/bench_fp16.py` measured on CPU (worst of 4 images x 6
poses: PSNR BGR 59.6 dB, alpha 70.7 dB, 99.85 % of values within one grey level; a few edge
pixels differ by up to 70 levels, so the maximum itself is not bounded tightly).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, shape_inference

from ezvtb.models.tha3.spec import STAGES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fp16_paths():
    from ezvtb.export import tha3_graphs

    return tha3_graphs("separable", "fp16")


def test_grid_sample_runs_in_fp32_in_the_fp16_graphs(fp16_paths):
    seen = 0
    for s in STAGES:
        m = shape_inference.infer_shapes(onnx.load(str(fp16_paths[s])))
        g = m.graph
        types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
        types.update({t.name: t.data_type for t in g.initializer})
        halves = sum(t.data_type == TensorProto.FLOAT16 for t in g.initializer)
        assert halves > 0 or s == "decomposer" or not g.initializer, f"{s}: no fp16 weights in an fp16 graph"
        for n in g.node:
            if n.op_type == "GridSample":
                seen += 1
                got = [TensorProto.DataType.Name(types.get(x, 0)) for x in n.input[:2]]
                assert got == ["FLOAT", "FLOAT"], f"{s}: GridSample {n.name} runs on {got}"
    assert seen >= 4  # combiner, morpher, rotator, editor warp with GridSample


def _psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def test_fp16_frames_stay_close_to_fp32(fp16_paths, sample_bgra):
    from ezvtb.engines import create_session
    from ezvtb.export import tha3_graphs
    from ezvtb.models.tha3.spec import graph_spec
    from ezvtb.pose import POSE_MAX, POSE_MIN
    from ezvtb.stages.tha import ThaStage

    p32 = tha3_graphs("separable", "fp32")
    s32 = ThaStage({s: create_session(p32[s], graph_spec(s), "cpu") for s in STAGES})
    s16 = ThaStage({s: create_session(fp16_paths[s], graph_spec(s, "fp16"), "cpu") for s in STAGES})
    poses = [np.zeros(45, np.float32), POSE_MAX.astype(np.float32), POSE_MIN.astype(np.float32)]
    for name in ("crypko_05", "lambda_00"):
        img = sample_bgra(name)
        s32.set_image(img)
        s16.set_image(img)
        a = np.stack([s32.run(p).copy() for p in poses])
        b = np.stack([s16.run(p).copy() for p in poses])
        within1 = (np.abs(a.astype(int) - b.astype(int)) <= 1).mean()
        bgr, alpha = _psnr(a[..., :3], b[..., :3]), _psnr(a[..., 3], b[..., 3])
        print(f"{name}: PSNR BGR {bgr:.1f} dB, alpha {alpha:.1f} dB, within 1 level {100 * within1:.3f} %")
        assert bgr > 50 and alpha > 55 and within1 > 0.995
        assert not np.array_equal(a, b), "fp16 really ran (frames are not bit-identical)"
