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


# --- MediaPipe's custom operators (face mesh with attention): literal numpy ports of the C++ kernels
# (mediapipe/util/tflite/operations/*.cc, version 2) as the independent implementation; no runtime here can
# run them (LiteRT lacks them, the mediapipe wheel cannot be installed beside our protobuf).
def _np_landmarks_to_matrix(lm, left, right, subset, out_h, out_w, scale_x, scale_y):
    pairs = [(subset[2 * i], subset[2 * i + 1]) for i in range(len(subset) // 2)]
    if len(subset) % 2:
        pairs.append((subset[-1], subset[-1]))
    r = 0.0 - np.arctan2(lm[right, 1] - lm[left, 1], lm[right, 0] - lm[left, 0])
    rot = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    rot_inv = np.array([[np.cos(-r), -np.sin(-r), 0], [np.sin(-r), np.cos(-r), 0], [0, 0, 1]])
    pts = [rot @ np.array([lm[i, 0], lm[i, 1], 1.0]) for pair in pairs for i in pair]
    hi, lo = np.max(pts, 0), np.min(pts, 0)
    w, h = hi[0] - lo[0], hi[1] - lo[1]
    c = rot_inv @ np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 1.0])
    t = np.eye(4)
    for m in (np.array([[1, 0, 0, c[0]], [0, 1, 0, c[1]], [0, 0, 1, 0], [0, 0, 0, 1]]),
              np.array([[np.cos(-r), -np.sin(-r), 0, 0], [np.sin(-r), np.cos(-r), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
              np.diag([scale_x * w / out_w, scale_y * h / out_h, 1, 1]),
              np.array([[1, 0, 0, -out_w / 2], [0, 1, 0, -out_h / 2], [0, 0, 1, 0], [0, 0, 0, 1]])):
        t = t @ m
    return t


def _np_transform_bilinear(x, m, out_h, out_w):
    """x NHWC [1, H, W, C]; per output pixel as in the kernel's loops."""
    _, h, w, c = x.shape
    xt, yt = m[0].copy(), m[1].copy()
    xt[3] += xt[0] * 0.5 + xt[1] * 0.5 - 0.5
    yt[3] += yt[0] * 0.5 + yt[1] * 0.5 - 0.5
    out = np.zeros((1, out_h, out_w, c))

    def read(i, j):
        return np.zeros(c) if i < 0 or j < 0 or i >= h or j >= w else x[0, i, j]

    for oy in range(out_h):
        for ox in range(out_w):
            v = np.array([ox, oy, 0.0, 1.0])
            tx, ty = xt @ v, yt @ v
            if tx < 0 or tx > w - 1 or ty < 0 or ty > h - 1:
                continue
            fx, fy = int(np.floor(tx)), int(np.floor(ty))
            rc, lc = tx - fx, ty - fy
            upper = (1 - rc) * read(fy, fx) + rc * read(fy, fx + 1)
            lower = (1 - rc) * read(fy + 1, fx) + rc * read(fy + 1, fx + 1)
            out[0, oy, ox] = lc * lower + (1 - lc) * upper
    return out


def test_custom_operators_match_numpy_ports_of_the_kernels(astronaut_bgr):
    from ezvtb.models.facetrack.net import TfliteNet, landmarks_to_transform_matrix, transform_landmarks, \
        transform_tensor_bilinear
    from ezvtb.models.facetrack.spec import ATTENTION

    g = load_tflite(model_file(ATTENTION)[0])
    net = TfliteNet(g).eval()
    _, mesh_in = _inputs(astronaut_bgr)
    with torch.no_grad():
        vals = net.values(torch.from_numpy(mesh_in.astype(np.float32) / 255.0)[None])
    errs = {"matrix": 0.0, "bilinear": 0.0, "landmarks": 0.0}
    for op in g.ops:
        c = op.options.get("custom")
        if op.type == "CUSTOM:Landmarks2TransformMatrix":
            lm = vals[op.inputs[0]]
            ref = _np_landmarks_to_matrix(lm[0].double().numpy(), c["left_rotation_idx"], c["right_rotation_idx"],
                                          c["subset_idxs"], c["output_height"], c["output_width"], c["scale_x"],
                                          c["scale_y"])
            got = landmarks_to_transform_matrix(lm, (c["left_rotation_idx"], c["right_rotation_idx"]),
                                                sorted(set(c["subset_idxs"])), (c["output_height"], c["output_width"]),
                                                (c["scale_x"], c["scale_y"]))[0].numpy()
            errs["matrix"] = max(errs["matrix"], float(np.abs(got - ref).max()))
        elif op.type == "CUSTOM:TransformTensorBilinear":
            x, m = vals[op.inputs[0]], vals[op.inputs[1]]
            ref = _np_transform_bilinear(x.permute(0, 2, 3, 1).double().numpy(), m[0].double().numpy(),
                                         c["output_height"], c["output_width"])
            got = transform_tensor_bilinear(x, m, (c["output_height"], c["output_width"])).permute(0, 2, 3, 1).numpy()
            errs["bilinear"] = max(errs["bilinear"], float(np.abs(got - ref).max() / np.abs(ref).max()))
        elif op.type == "CUSTOM:TransformLandmarks":
            p, m = vals[op.inputs[0]], vals[op.inputs[1]][0].double().numpy()
            pts = p[0].double().numpy()
            ref = pts @ m[:2, :2].T + m[:2, 3]
            got = transform_landmarks(p, vals[op.inputs[1]])[0].numpy()
            errs["landmarks"] = max(errs["landmarks"], float(np.abs(got - ref).max()))
    print("custom operators vs numpy ports, max abs error:", errs)
    assert errs["matrix"] < 1e-4 and errs["bilinear"] < 1e-5 and errs["landmarks"] < 1e-3


def test_attention_mesh_agrees_with_the_plain_mesh_on_litert_and_finds_the_irises(astronaut_bgr):
    """The mesh-with-attention graph (ORT) next to the plain mesh run by LiteRT on the same face: the 468
    points agree to within a pixel on average; each iris centre lies between its eye's corners."""
    from ezvtb.engines import create_session
    from ezvtb.export.facetrack import build_module, facetrack_graph

    _, mesh_in = _inputs(astronaut_bgr)
    plain = _reference(model_file(LANDMARKS)[0], (mesh_in.astype(np.float32) / 255.0)[None])[0].reshape(-1, 3)
    graph = facetrack_graph("attention")
    with create_session(graph.path, graph.spec, "cpu") as sess:
        out = {k: np.array(v) for k, v in sess.run({"image": mesh_in}).items()}
    with torch.no_grad():
        ref = [t.numpy() for t in build_module("attention")(torch.from_numpy(mesh_in))]
    err_onnx = max(float(np.abs(out[k] - r).max()) for k, r in zip(("landmarks", "irises", "presence"), ref))
    mean_px = float(np.linalg.norm(out["landmarks"][:, :2] - plain[:, :2], axis=1).mean())
    print(f"attention mesh: ONNX vs torch max abs {err_onnx:.2e}; "
          f"mean distance to LiteRT's plain mesh {mean_px:.2f} px")
    assert err_onnx <= ONNX_VS_LITERT
    assert mean_px < 1.5 and out["presence"][0] > 0.9
    lm, ir = out["landmarks"], out["irises"]
    for centre, (a, b) in ((ir[0], (33, 133)), (ir[5], (362, 263))):
        lo, hi = sorted((lm[a, 0], lm[b, 0]))
        assert lo < centre[0] < hi and abs(centre[1] - (lm[a, 1] + lm[b, 1]) / 2) < 0.5 * (hi - lo)
