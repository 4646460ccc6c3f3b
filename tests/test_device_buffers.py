"""The device-buffer path on CPU: ONNX Runtime CPU OrtValues bound by address (`device_buffers=True`).

This is the code a GPU runs (sessions hand out `DeviceBuffer`s, stages feed them to the next graph,
copy, view, crop and download them through `ezvtb.engines.memory`); only the copy primitive differs
(`ctypes.memmove` here, cudaMemcpy on CUDA). Every result is compared with the host path.
"""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ezvtb.engines import create_session
from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.engines.memory import HOST_PTR, DeviceBuffer, HostPtrMemory

A = GraphSpec("a", (TensorSpec("image", (4, 4, 4), "uint8"), TensorSpec("gain", (1, 1), "float32")),
              (TensorSpec("scaled", (4, 4, 4), "float32"),))
B = GraphSpec("b", (TensorSpec("scaled", (4, 4, 4), "float32"),), (TensorSpec("image", (4, 4, 4), "uint8"),))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """a: scaled = float(image) * gain;  b: image = uint8(clip(scaled + 1))."""
    d = tmp_path_factory.mktemp("onnx")
    u8 = lambda n: helper.make_tensor_value_info(n, TensorProto.UINT8, [4, 4, 4])  # noqa: E731
    f32 = lambda n, s=(4, 4, 4): helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))  # noqa: E731
    ga = helper.make_graph([helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
                            helper.make_node("Mul", ["xf", "gain"], ["scaled"])], "a",
                           [u8("image"), f32("gain", (1, 1))], [f32("scaled")])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    lo = helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0])
    hi = helper.make_tensor("hi", TensorProto.FLOAT, [], [255.0])
    gb = helper.make_graph([helper.make_node("Add", ["scaled", "one"], ["y"]),
                            helper.make_node("Clip", ["y", "lo", "hi"], ["yc"]),
                            helper.make_node("Cast", ["yc"], ["image"], to=TensorProto.UINT8)], "b",
                           [f32("scaled")], [u8("image")], initializer=[one, lo, hi])
    paths = []
    for g, name in ((ga, "a.onnx"), (gb, "b.onnx")):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(m)
        onnx.save(m, d / name)
        paths.append(d / name)
    return paths


def _img(v):
    return (np.arange(64, dtype=np.uint8).reshape(4, 4, 4) + v).astype(np.uint8)


def test_outputs_are_device_buffers_chained_by_address(graphs):
    a = create_session(graphs[0], A, "cpu", device_buffers=True)
    b = create_session(graphs[1], B, "cpu", device_buffers=True)
    assert a.on_device and b.on_device
    out = a.run({"image": _img(3), "gain": np.array([[2.0]], np.float32)})["scaled"]
    assert isinstance(out, DeviceBuffer) and out.device == "cpu" and out.shape == (4, 4, 4)
    ptr = out.ptr
    img = b.run({"scaled": out})["image"]  # fed by address, no host array in between
    want = np.clip(_img(3).astype(np.float32) * 2 + 1, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(b.to_host(img), want)
    # Preallocated: the next run writes the same buffer.
    out2 = a.run({"image": _img(5), "gain": np.array([[1.0]], np.float32)})["scaled"]
    assert out2 is out and out2.ptr == ptr
    np.testing.assert_array_equal(a.to_host(out2), _img(5).astype(np.float32))
    # to_host into a preallocated array
    host = np.empty((4, 4, 4), np.float32)
    assert a.to_host(out2, host) is host and np.array_equal(host, _img(5).astype(np.float32))


def test_host_sessions_refuse_device_buffers_and_shapes_are_checked(graphs):
    a = create_session(graphs[0], A, "cpu", device_buffers=True)
    host_b = create_session(graphs[1], B, "cpu")
    assert not host_b.on_device
    out = a.run({"image": _img(0), "gain": np.ones((1, 1), np.float32)})["scaled"]
    with pytest.raises(ValueError, match="cannot feed a session using host buffers"):
        host_b.run({"scaled": out})
    b = create_session(graphs[1], B, "cpu", device_buffers=True)
    wrong = HOST_PTR.empty((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"'scaled'.*float32\[4, 4, 4\].*float32\[4, 4\]"):
        b.run({"scaled": wrong})
    with pytest.raises(TypeError, match="expected a numpy array or a DeviceBuffer"):
        b.run({"scaled": [0.0] * 64})
    other = HostPtrMemory()
    other.name = "cuda:7"
    with pytest.raises(ValueError, match="cuda:7"):
        b.run({"scaled": other.empty((4, 4, 4), np.float32)})


def test_memory_operations_match_numpy():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 8, 10, 4), dtype=np.uint8)
    buf = HOST_PTR.copy(frames)
    np.testing.assert_array_equal(HOST_PTR.to_host(buf), frames)
    v = HOST_PTR.view(buf, 2)
    assert v.shape == (8, 10, 4) and v.owner is buf
    np.testing.assert_array_equal(HOST_PTR.to_host(v), frames[2])
    kept = HOST_PTR.copy(v)  # device-to-device copy survives a change of the source
    HOST_PTR.copy_into(buf, np.zeros_like(frames))
    np.testing.assert_array_equal(HOST_PTR.to_host(kept), frames[2])
    crop = HOST_PTR.empty((3, 4, 4), np.uint8)
    HOST_PTR.crop_into(crop, kept, 5, 6)
    np.testing.assert_array_equal(HOST_PTR.to_host(crop), frames[2, 5:8, 6:10])
    HOST_PTR.crop_into(crop, frames[1], 1, 2)  # host source
    np.testing.assert_array_equal(HOST_PTR.to_host(crop), frames[1, 1:4, 2:6])


def test_memory_operations_name_the_problem():
    buf = HOST_PTR.empty((2, 4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"src: expected uint8\[2, 4, 4, 4\], got float32"):
        HOST_PTR.copy_into(buf, np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(IndexError, match="index: expected 0..1, got 2"):
        HOST_PTR.view(buf, 2)
    with pytest.raises(ValueError, match="outside a 4x4 frame"):
        HOST_PTR.crop_into(HOST_PTR.empty((3, 3, 4), np.uint8), HOST_PTR.view(buf, 0), 2, 0)
    with pytest.raises(ValueError, match="out: expected a writeable C-contiguous"):
        HOST_PTR.to_host(buf, np.zeros((4, 4, 4, 2), np.uint8).transpose(3, 0, 1, 2))
    with pytest.raises(TypeError, match="expected a DeviceBuffer"):
        HOST_PTR.copy_into(np.zeros(3), np.zeros(3))


def test_rife_to_sr_chain_on_device_equals_host(sample_bgra):
    """RIFE x2 (device_output: views of its output buffer) -> SR UpConv7, all in "device" memory."""
    from ezvtb.export.rife import rife_graph
    from ezvtb.export.sr import sr_graph
    from ezvtb.stages.rife import RifeStage
    from ezvtb.stages.sr import SrStage

    rg = rife_graph(2, "fp32", size=128)
    sg = sr_graph("upconv7", 0, "fp32", size=128)
    names = ["crypko_00", "crypko_03", "crypko_05"]
    frames = [cv2.resize(sample_bgra(n), (128, 128), interpolation=cv2.INTER_AREA) for n in names]

    def chain(device):
        rife = RifeStage(create_session(rg.path, rg.spec, "cpu", device_buffers=device), rg.version, "fp32")
        sr = SrStage(create_session(sg.path, sg.spec, "cpu", device_buffers=device), "upconv7", max_frames=2)
        rife.device_output = device
        up = rife.session  # frames enter as device buffers on the device path (THA's editor output)
        x = up.alloc((128, 128, 4), np.uint8)
        outs = []
        for f in frames:
            if device:
                up.copy_into(x, f)
            else:
                x = f
            mid = rife.run([x])
            if device:
                assert all(isinstance(m, DeviceBuffer) for m in mid)
            outs.append([o.copy() for o in sr.run(mid)])
        return outs

    host, dev = chain(False), chain(True)
    for h, d in zip(host, dev):
        assert len(h) == len(d) == 2
        for a, b in zip(h, d):
            assert isinstance(b, np.ndarray)
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(host[1][0], host[1][1])  # the in-between differs from the frame


def test_sr_region_crop_on_device_equals_host(sample_bgra):
    from ezvtb.export.sr import sr_graph
    from ezvtb.stages.sr import SrStage

    g = sr_graph("animevideov3", 0, "fp32", size=32)
    frame = cv2.resize(sample_bgra("crypko_03"), (64, 64), interpolation=cv2.INTER_AREA)
    host = SrStage(create_session(g.path, g.spec, "cpu"), "animevideov3", region=(8, 16), frame_size=64)
    dev_s = create_session(g.path, g.spec, "cpu", device_buffers=True)
    dev = SrStage(dev_s, "animevideov3", region=(8, 16), frame_size=64)
    want = host.run([frame])[0].copy()
    buf = dev_s.alloc(frame.shape, np.uint8)
    dev_s.copy_into(buf, frame)
    assert isinstance(buf, DeviceBuffer)
    got = dev.run([buf])[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(dev.run([frame])[0], want)  # a host frame works too


@pytest.mark.slow
@pytest.mark.parametrize("cache_on_device", [True, False])
def test_tha_stage_on_device_equals_host(cache_on_device, sample_bgra):
    """Real THA3 fp32 graphs: device-path frames equal host-path frames bit for bit, with the
    intermediate LRU in "device" memory or in host RAM, including a cache hit."""
    from ezvtb.export import tha3_graphs
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.pose import index
    from ezvtb.stages.tha import ThaStage

    paths = tha3_graphs("separable", "fp32")

    def stage(device):
        sess = {s: create_session(paths[s], graph_spec(s), "cpu", device_buffers=device) for s in STAGES}
        return ThaStage(sess, cache_bytes=64 * 1024**2, cache_on_device=cache_on_device)

    poses = [np.zeros(45, np.float32) for _ in range(3)]
    poses[1][index("eye_wink_left")] = 1.0
    poses[1][index("eyebrow_angry_left")] = 0.7
    poses[1][index("head_x")] = 0.5
    poses[2][index("head_x")] = -0.3  # face pose of poses[0]: a morpher cache hit
    img = sample_bgra("crypko_00")
    h, d = stage(False), stage(True)
    h.set_image(img)
    d.set_image(img)
    for p in poses:
        np.testing.assert_array_equal(d.run(p), h.run(p))
    st = d.stats()
    assert st["device"] and st["cache_on_device"] == cache_on_device
    assert st["morpher_cache"]["hits"] == 1 and st["runs"]["morpher"] == 2
    kept = d._morpher_lru.get(poses[0][:39].tobytes())
    assert isinstance(kept[0], DeviceBuffer if cache_on_device else np.ndarray)
    d.device_output = True
    f = d.run(poses[1])
    assert isinstance(f, DeviceBuffer)
    np.testing.assert_array_equal(d.to_host(f), h.run(poses[1]))


def test_backend_chain_on_this_machine():
    import onnxruntime as ort

    from ezvtb.engines.trt import available
    from ezvtb.engines.policy import backend_chain, select_backend

    assert backend_chain("cuda", True) == [("cuda", "requested")]
    assert backend_chain("auto", False) == [("auto", "use_tensorrt=False")]
    with pytest.raises(ValueError, match="backend: expected one of"):
        backend_chain("metal", True)
    chain = backend_chain("auto", True)
    names = [b for b, _ in chain]
    assert names[-1] == "auto" and names == sorted(set(names), key=names.index)
    eps = ort.get_available_providers()
    assert ("trt" in names) == available()[0]
    assert ("tensorrt" in names) == ("TensorrtExecutionProvider" in eps)
    assert ("cuda" in names) == ("CUDAExecutionProvider" in eps)
    if names == ["auto"]:  # a CPU machine: the reason says what was missing
        assert "tensorrt" in chain[0][1] and select_backend("auto", True) == "auto"


@pytest.mark.slow
def test_link_device_stages_keeps_frames_on_the_device():
    from ezvtb.export import tha3_graphs
    from ezvtb.export.rife import rife_graph
    from ezvtb.export.sr import sr_graph
    from ezvtb.factory import link_device_stages
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.stages.rife import RifeStage
    from ezvtb.stages.sr import SrStage
    from ezvtb.stages.tha import ThaStage

    paths = tha3_graphs("separable", "fp32")
    rg, sg = rife_graph(2, "fp32", size=128), sr_graph("upconv7", 0, "fp32", size=128)

    def build(device):
        tha = ThaStage({s: create_session(paths[s], graph_spec(s), "cpu", device_buffers=device) for s in STAGES})
        rife = RifeStage(create_session(rg.path, rg.spec, "cpu", device_buffers=device), rg.version)
        sr = SrStage(create_session(sg.path, sg.spec, "cpu", device_buffers=device), "upconv7", max_frames=2)
        return tha, rife, sr

    tha, rife, sr = build(True)
    assert link_device_stages(tha, None, [rife, sr]) == ["ThaStage->RifeStage on cpu", "RifeStage->SrStage on cpu"]
    assert tha.device_output and rife.device_output and not sr.device_output
    tha, rife, sr = build(True)
    assert link_device_stages(tha, object(), [rife, sr]) == ["RifeStage->SrStage on cpu"]  # a cache needs host frames
    assert not tha.device_output
    tha, rife, sr = build(False)
    assert link_device_stages(tha, None, [rife, sr]) == [] and not tha.device_output
