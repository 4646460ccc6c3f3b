"""Face-tracking models: our TFLite reader + PyTorch modules + exported ONNX graphs vs the original TFLite
models run by Google's LiteRT interpreter (``ai-edge-litert``, a test-only dependency), on a real photograph.

The weights are MediaPipe's face detector and face mesh from the ``mediapipe==0.10.14`` wheel
(`ezvtb.weights.mediapipe`, fetched once into ``$EZVTB_HOME``, never installed).
"""
from __future__ import annotations

import numpy as np
import pytest

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (dev extra) runs the reference")
skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the test photograph")
torch = pytest.importorskip("torch")

from ezvtb.models.facetrack.spec import DETECTOR, LANDMARK_SIZE, LANDMARKS  # noqa: E402
from ezvtb.models.facetrack.tflite import TfliteFormatError, load_tflite, parse_tflite  # noqa: E402
from ezvtb.weights.mediapipe import model_file  # noqa: E402

# Max abs error bounds (outputs: raw box/keypoint offsets and logits, up to ~150; landmark pixels 0..192).
# Measured: detector 5e-5, mesh 9e-5 (float32 both sides, the same fp16-stored weights).
TORCH_VS_LITERT = 1e-3
ONNX_VS_LITERT = 1e-3


def _reference(path, x: np.ndarray) -> list[np.ndarray]:
    it = litert.Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


@pytest.fixture(scope="module")
def astronaut_bgr():
    return np.ascontiguousarray(skdata.astronaut()[..., ::-1])


def _inputs(astronaut_bgr):
    """(detector input uint8 128x128 RGB: the whole letterboxed photo, mesh input uint8 192x192 RGB: the face)."""
    import cv2

    rgb = astronaut_bgr[..., ::-1]
    det = cv2.resize(rgb, (128, 128), interpolation=cv2.INTER_AREA)
    face = np.ascontiguousarray(rgb[40:216, 136:312])  # the face with a margin (176 px square)
    mesh = cv2.resize(face, (LANDMARK_SIZE, LANDMARK_SIZE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(det), np.ascontiguousarray(mesh)


def test_reader_reads_the_graphs():
    for name, ops in ((DETECTOR, {"CONV_2D": 21, "DEPTHWISE_CONV_2D": 16, "PAD": 11, "MAX_POOL_2D": 3}),
                      (LANDMARKS, {"CONV_2D": 25, "PRELU": 23, "DEPTHWISE_CONV_2D": 20, "MAX_POOL_2D": 6})):
        g = load_tflite(model_file(name)[0])
        counts = g.op_types()
        for op, n in ops.items():
            assert counts[op] == n, (name, op, counts)
        assert all(t.data is None or t.dtype in (np.float16, np.int32) for t in g.tensors)


def test_reader_rejects_bad_files(tmp_path):
    with pytest.raises(TfliteFormatError, match="not a TensorFlow Lite model"):
        parse_tflite(b"\x00" * 64, "junk.tflite")
    data = model_file(DETECTOR)[0].read_bytes()
    with pytest.raises(TfliteFormatError, match="cut.tflite"):
        parse_tflite(data[: len(data) // 3], "cut.tflite")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_tflite(tmp_path / "missing.tflite")


@pytest.mark.parametrize("which", ["detector", "landmarks"])
def test_torch_and_onnx_match_litert(which, astronaut_bgr):
    from ezvtb.engines import create_session
    from ezvtb.export.facetrack import build_module, facetrack_graph

    det_in, mesh_in = _inputs(astronaut_bgr)
    img = det_in if which == "detector" else mesh_in
    name = DETECTOR if which == "detector" else LANDMARKS
    lo, hi = (-1.0, 1.0) if which == "detector" else (0.0, 1.0)
    x = (img.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo))[None]
    ref = _reference(model_file(name)[0], x)

    module = build_module(which)
    with torch.no_grad():
        raw = [t.numpy() for t in module.net(torch.from_numpy(x))]
    err_torch = max(float(np.abs(a - b).max()) for a, b in zip(raw, ref))

    graph = facetrack_graph(which)
    with create_session(graph.path, graph.spec, "cpu") as sess:
        out = {k: np.array(v) for k, v in sess.run({"image": img}).items()}
    if which == "detector":
        ref_main, ref_score = ref[0][0], 1 / (1 + np.exp(-np.clip(ref[1].reshape(-1).astype(np.float64), -100, 100)))
        got_main, got_score = out["boxes"], out["scores"]
    else:
        ref_main, ref_score = ref[0].reshape(-1, 3), 1 / (1 + np.exp(-ref[1].reshape(-1)))
        got_main, got_score = out["landmarks"], out["presence"]
    err_onnx = max(float(np.abs(got_main - ref_main).max()), float(np.abs(got_score - ref_score).max()))
    print(f"{which}: torch vs LiteRT max abs {err_torch:.2e}, ONNX (ORT) vs LiteRT max abs {err_onnx:.2e}")
    assert err_torch <= TORCH_VS_LITERT
    assert err_onnx <= ONNX_VS_LITERT
    # the photograph's face is found: a confident detection and a present face
    assert got_score.max() > 0.9


@pytest.mark.parametrize("n,k,s", [(48, 3, 2), (47, 3, 2), (64, 5, 2), (16, 3, 1), (15, 2, 1), (9, 4, 3)])
def test_same_padding_as_symmetric_padding_and_crop(n, k, s):
    """TFLite 'same' padding (before = total // 2) done as a symmetric convolution padding and a crop equals
    explicit asymmetric zero padding followed by a 'valid' convolution."""
    import torch.nn.functional as F

    from ezvtb.models.facetrack.net import _Conv, _same_pad
    from ezvtb.models.facetrack.tflite import TfliteOp

    g = np.random.default_rng(n * 100 + k * 10 + s)
    w = g.standard_normal((4, k, k, 3)).astype(np.float32)
    b = g.standard_normal(4).astype(np.float32)
    op = TfliteOp(0, "CONV_2D", (0, 1, 2), (3,), {"padding": "same", "stride": (s, s), "activation": None,
                                                  "dilation": (1, 1)})
    conv = _Conv(op, w, b, (1, n, n + 1, 3), "test")
    x = torch.from_numpy(g.standard_normal((1, 3, n, n + 1)).astype(np.float32))
    ph, pw = _same_pad(n, k, s, 1), _same_pad(n + 1, k, s, 1)
    ref = F.conv2d(F.pad(x, (*pw, *ph)), torch.from_numpy(w).permute(0, 3, 1, 2), torch.from_numpy(b), s)
    with torch.no_grad():
        got = conv(x)
    assert got.shape == ref.shape == (1, 4, -(-n // s), -(-(n + 1) // s))
    assert float((got - ref).abs().max()) < 1e-5
