"""GPU tests: CUDA EP device chaining, VRAM model cache, native TensorRT engines and their cache,
the TensorRT EP engine cache folder, native TensorRT THA / RIFE / SR against the CPU, SR's crop from
a host frame (the output-cache path), pipelining on the CUDA EP and on native TensorRT.

Every test skips with a reason unless its backend really runs here: a tiny real session must open
on the CUDA EP / TensorRT EP through `create_session` (which loads the pip-installed CUDA/cuDNN and
TensorRT libraries first and detects ORT's silent CPU fallback) and cuda-python must see a device;
native TensorRT must import and see a GPU.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ezvtb.engines import create_session
from ezvtb.engines.base import GraphSpec, TensorSpec

pytestmark = pytest.mark.gpu

TOY = GraphSpec("toy_gpu", (TensorSpec("x", (1, 4, 16, 16), "float32"),),
                (TensorSpec("y", (1, 4, 16, 16), "float32"),))


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """y = relu(x) * 2 + 1 (a graph every backend builds)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["m"]),
         helper.make_node("Add", ["m", "one"], ["y"])], "toy_gpu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], initializer=[two, one])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    p = tmp_path_factory.mktemp("gpu") / "toy_gpu.onnx"
    onnx.save(m, p)
    return p


def _ep_reason(toy_model, backend: str, **options) -> str:
    """"" when a real session opens on `backend` (cuda / tensorrt) and cuda-python sees a device."""
    import onnxruntime as ort

    from ezvtb.engines import BackendUnavailableError
    from ezvtb.engines.cuda import device_count

    ep = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}[backend]
    if ep not in ort.get_available_providers():
        return f"this onnxruntime build has no {ep} (install ezvtb[cuda] or ezvtb[tensorrt])"
    n, why = device_count()
    if not n:
        return f"cuda-python sees no CUDA device: {why}"
    try:
        s = create_session(toy_model, TOY, backend, **options)
    except BackendUnavailableError as e:
        return f"{ep} did not load: {e}"
    s.close()
    return ""


@pytest.fixture(scope="module")
def cuda_ep(toy_model):
    why = _ep_reason(toy_model, "cuda")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def native_trt():
    from ezvtb.engines.trt import available

    ok, why = available()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="module")
def trt_ep(toy_model, cuda_ep, tmp_path_factory):
    why = _ep_reason(toy_model, "tensorrt", trt_cache_dir=str(tmp_path_factory.mktemp("trt_ep_probe")))
    if why:
        pytest.skip(why)


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 4, 16, 16)).astype(np.float32)


def _want(x):
    return np.maximum(x, 0) * 2 + 1


def _psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _close_frames(a, b, what, min_psnr=40.0, min_within1=0.98):
    """GPU kernels (TF32, other conv algorithms) round differently from the CPU; a wrong buffer or
    a frame of another pose scores 10-25 dB, so these bounds separate right from wrong."""
    within1 = (np.abs(a.astype(int) - b.astype(int)) <= 1).mean()
    psnr = _psnr(a, b)
    print(f"{what}: PSNR {psnr:.1f} dB, within 1 level {100 * within1:.3f} %")
    assert psnr > min_psnr and within1 > min_within1, what


# --- CUDA EP ---------------------------------------------------------------------------------------------

def test_cuda_session_outputs_live_on_the_device_and_chain(cuda_ep, toy_model):
    from ezvtb.engines.memory import DeviceBuffer

    a = create_session(toy_model, TOY, "cuda")
    b = create_session(toy_model, TOY, "cuda")
    assert a.on_device and a.memory.name == "cuda:0" and a.providers[0] == "CUDAExecutionProvider"
    x = _x()
    y = a.run({"x": x})["y"]
    assert isinstance(y, DeviceBuffer)
    z = b.run({"x": y})["y"]  # device -> device, bound by address
    np.testing.assert_allclose(b.to_host(z), _want(_want(x)), rtol=1e-6)
    kept = a.copy_buffer(y)  # a device copy survives the next run
    a.run({"x": _x(1)})
    np.testing.assert_allclose(a.to_host(kept), _want(x), rtol=1e-6)
    host = a.host_array((1, 4, 16, 16), np.float32)
    np.testing.assert_allclose(a.to_host(a.view(y, 0), host[0]), _want(_x(1))[0], rtol=1e-6)


@pytest.fixture(scope="module")
def tha_fp32_paths():
    from ezvtb.export import tha3_graphs

    return tha3_graphs("separable", "fp32")


def _tha(paths, backend, **kw):
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.stages.tha import ThaStage

    return ThaStage({s: create_session(paths[s], graph_spec(s), backend) for s in STAGES}, **kw)


def _poses(n, seed=0):
    from ezvtb.pose import POSE_MAX, POSE_MIN

    rng = np.random.default_rng(seed)
    return [(POSE_MIN + (POSE_MAX - POSE_MIN) * rng.random(45)).astype(np.float32) for _ in range(n)]


def test_tha_device_chaining_equals_cpu(cuda_ep, tha_fp32_paths, sample_bgra):
    gpu, cpu = _tha(tha_fp32_paths, "cuda"), _tha(tha_fp32_paths, "cpu")
    img = sample_bgra("crypko_00")
    gpu.set_image(img)
    cpu.set_image(img)
    assert gpu.stats()["device"]
    for i, p in enumerate(_poses(3)):
        _close_frames(gpu.run(p), cpu.run(p), f"THA cuda vs cpu, pose {i}")


def test_vram_model_cache_keeps_its_budget(cuda_ep, tha_fp32_paths, sample_bgra):
    from ezvtb.engines.memory import DeviceBuffer

    entry = (4 * 512 * 512 + 4 * 256 * 256) * 4  # one morpher entry (fp32)
    budget = int(3.5 * entry / (1 - 0.1))  # ~3 morpher entries after the combiner's 10 % share
    st = _tha(tha_fp32_paths, "cuda", cache_bytes=budget, cache_on_device=True)
    st.set_image(sample_bgra("crypko_00"))
    poses = _poses(6)
    first = [st.run(p).copy() for p in poses]
    lru = st._morpher_lru
    assert lru.bytes <= lru.budget and len(lru) == 3 and lru.evictions == 3
    assert all(isinstance(v, DeviceBuffer) for k in list(lru.keys()) for v in lru.get(k))
    hits = lru.hits
    again = st.run(poses[-2])  # in the LRU: the morpher is skipped
    assert lru.hits == hits + 1
    _close_frames(again, first[-2], "VRAM cache hit vs computed", 50.0, 0.999)
    assert st.stats()["cache_on_device"]
    ram = _tha(tha_fp32_paths, "cuda", cache_bytes=budget, cache_on_device=False)
    ram.set_image(sample_bgra("crypko_00"))
    for p in poses:
        ram.run(p)
    lru = ram._morpher_lru
    assert all(isinstance(v, np.ndarray) for k in list(lru.keys()) for v in lru.get(k))
    hits = lru.hits
    _close_frames(ram.run(poses[-2]), first[-2], "RAM cache hit vs computed", 50.0, 0.999)
    assert lru.hits == hits + 1


def test_get_core_chain_on_cuda_matches_cpu(cuda_ep, sample_bgra):
    from ezvtb import get_core

    import inspect

    opts = dict(use_tensorrt=False, model_half=False, use_cacher=False, use_interpolation=True,
                interpolation_scale=2, interpolation_half=False, use_sr=True, sr_x4=True, sr_half=False)
    if "interpolation_flow_scale" in inspect.signature(get_core).parameters:
        opts["interpolation_flow_scale"] = 1.0  # the same RIFE flow resolution on both (auto differs)
    g = get_core(**opts, backend="cuda")
    c = get_core(**opts, backend="cpu")
    try:
        assert g.tha.device_output and g.after[0].device_output  # THA -> RIFE -> SR on the device
        img = sample_bgra("crypko_03")
        g.setImage(img)
        c.setImage(img)
        for i, p in enumerate(_poses(3, 1)):
            for a, b in zip(g.inference(p), c.inference(p)):
                _close_frames(a, b, f"chain cuda vs cpu, call {i}", 35.0, 0.95)
    finally:
        g.close()
        c.close()


@pytest.mark.parametrize("backend, needs, half", [("cuda", "cuda_ep", False), ("trt", "native_trt", True)])
def test_pipelined_returns_the_previous_frame(backend, needs, half, request, sample_bgra):
    from ezvtb import get_core

    request.getfixturevalue(needs)
    opts = dict(use_tensorrt=False, model_half=half, use_cacher=False, use_interpolation=False, backend=backend)
    plain, piped = get_core(**opts), get_core(**opts, pipelined=True)
    try:
        img = sample_bgra("crypko_00")
        plain.setImage(img)
        piped.setImage(img)
        poses = _poses(5, 2)
        want = [plain.inference(p)[0].copy() for p in poses]
        got = [piped.inference(p)[0].copy() for p in poses]
        for i, (g, w) in enumerate(zip(got, [want[0], *want[:-1]])):
            _close_frames(g, w, f"pipelined call {i} vs plain frame {max(i - 1, 0)}", 50.0, 0.999)
        _close_frames(piped.flush()[0], want[-1], "flush vs the last plain frame", 50.0, 0.999)
    finally:
        plain.close()
        piped.close()


# --- TensorRT EP ------------------------------------------------------------------------------------------

def test_tensorrt_ep_writes_its_engine_cache_under_the_folder(trt_ep, toy_model, tmp_path):
    s = create_session(toy_model, TOY, "tensorrt", trt_cache_dir=str(tmp_path / "trt_ep"))
    assert s.providers[0] == "TensorrtExecutionProvider"
    x = _x()
    np.testing.assert_allclose(s.to_host(s.run({"x": x})["y"]), _want(x), rtol=1e-5)
    folder = tmp_path / "trt_ep"
    engines = sorted(p.name for p in folder.iterdir() if p.suffix == ".engine")
    assert engines, f"no engine file in {sorted(p.name for p in folder.iterdir())} (a timing cache alone is not it)"
    again = create_session(toy_model, TOY, "tensorrt", trt_cache_dir=str(folder))
    np.testing.assert_allclose(again.to_host(again.run({"x": x})["y"]), _want(x), rtol=1e-5)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".engine") == engines, "loaded, not rebuilt"


# --- native TensorRT ---------------------------------------------------------------------------------------

def test_trt_session_runs_and_caches_its_engine(native_trt, toy_model, tmp_path, caplog):
    from ezvtb.engines.memory import DeviceBuffer
    from ezvtb.engines.trt import TrtSession

    cache = tmp_path / "trt"
    s = TrtSession(toy_model, TOY, cache_dir=cache)
    assert s.built and s.on_device
    x = _x()
    y = s.run({"x": x})["y"]
    assert isinstance(y, DeviceBuffer)
    np.testing.assert_allclose(s.to_host(y), _want(x), rtol=1e-5)
    z = s.run({"x": s.copy_buffer(y)})["y"]  # device input by address
    np.testing.assert_allclose(s.to_host(z), _want(_want(x)), rtol=1e-5)
    files = sorted(cache.glob("*.engine"))
    assert len(files) == 1

    s2 = TrtSession(toy_model, TOY, cache_dir=cache)
    assert not s2.built, "same key: loaded from the cache"
    s3 = TrtSession(toy_model, TOY, cache_dir=cache, tf32=False)
    assert s3.built and len(list(cache.glob("*.engine"))) == 2, "changed flags: a new key, rebuilt"

    files[0].write_bytes(files[0].read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        s4 = TrtSession(toy_model, TOY, cache_dir=cache)
    assert s4.built and any("rebuilding" in r.message for r in caplog.records)
    np.testing.assert_allclose(s4.to_host(s4.run({"x": x})["y"]), _want(x), rtol=1e-5)
    assert list(cache.glob("timing-*.cache")), "timing cache saved"


def test_trt_tha_fp16_matches_cpu_fp32(native_trt, sample_bgra):
    from ezvtb.export import tha3_graphs
    from ezvtb.models.tha3.spec import STAGES, graph_spec
    from ezvtb.stages.tha import ThaStage

    p16, p32 = tha3_graphs("separable", "fp16"), tha3_graphs("separable", "fp32")
    trt = ThaStage({s: create_session(p16[s], graph_spec(s, "fp16"), "trt") for s in STAGES})
    assert all(s.flags.strongly_typed for s in trt.sessions.values()), "fp16 graphs: precision from the graph"
    cpu = _tha(p32, "cpu")
    img = sample_bgra("crypko_05")
    trt.set_image(img)
    cpu.set_image(img)
    for i, p in enumerate(_poses(3, 3)):
        a, b = trt.run(p), cpu.run(p)
        psnr = _psnr(a, b)
        print(f"TRT fp16 vs CPU fp32, pose {i}: PSNR {psnr:.1f} dB, max {np.abs(a.astype(int) - b.astype(int)).max()}")
        assert psnr > 40


def _shifted(image, dx=6, dy=-3):
    import cv2

    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), (512, 512), borderValue=(0, 0, 0, 0))


def _rife(half, backend):
    import inspect

    from ezvtb.stages.rife import create_rife_stage

    # Same flow resolution on both backends (the auto default differs between the CPU and GPUs).
    kw = {"flow_scale": 1.0} if "flow_scale" in inspect.signature(create_rife_stage).parameters else {}
    return create_rife_stage(2, half, None, backend, **kw)


def test_trt_rife_fp16_is_strongly_typed_and_matches_cpu_fp32(native_trt, sample_bgra):
    """The fp16 RIFE graph has uint8 I/O: its float16 weights make it strongly typed."""
    trt, cpu = _rife(True, "trt"), _rife(False, "cpu")
    try:
        assert trt.session.backend == "trt" and trt.precision == "fp16"
        assert trt.session.flags.strongly_typed and not trt.session.flags.fp16, trt.session.flags
        a, b = sample_bgra("crypko_00"), sample_bgra("crypko_00")
        for i, frame in enumerate((a, _shifted(b), _shifted(b, -4, 5))):
            got = [f.copy() for f in trt.run([frame])]
            want = cpu.run([frame])
            for k, (g, w) in enumerate(zip(got, want)):
                _close_frames(g, w, f"RIFE trt fp16 vs cpu fp32, call {i} frame {k}", 35.0, 0.9)
    finally:
        trt.close()
        cpu.close()


@pytest.fixture(scope="module")
def trt_sr_x4(native_trt):
    from ezvtb.stages.sr import create_sr_stage

    sr = create_sr_stage(True, True, 1, None, "trt")
    yield sr
    sr.close()


def test_trt_sr_fp16_is_strongly_typed_and_matches_cpu_fp32(trt_sr_x4, sample_bgra):
    from ezvtb.stages.sr import create_sr_stage

    assert trt_sr_x4.session.flags.strongly_typed and not trt_sr_x4.session.flags.fp16
    cpu = create_sr_stage(True, False, 1, None, "cpu")
    try:
        for name in ("crypko_00", "crypko_03"):
            img = sample_bgra(name)
            _close_frames(trt_sr_x4.run([img])[0].copy(), cpu.run([img])[0], f"SR x4 trt fp16 vs cpu fp32, {name}",
                          35.0, 0.9)
    finally:
        cpu.close()
    x2 = create_sr_stage(False, True, 1, None, "trt")
    try:
        assert x2.session.flags.strongly_typed
        ref = create_sr_stage(False, False, 1, None, "cpu")
        img = sample_bgra("crypko_05")
        _close_frames(x2.run([img])[0].copy(), ref.run([img])[0], "SR x2 trt fp16 vs cpu fp32", 35.0, 0.9)
        ref.close()
    finally:
        x2.close()


def test_trt_crop_into_from_a_host_frame(trt_sr_x4, sample_bgra):
    """SR's region crop when its input is a host frame (what the output cache hands over): a pitched
    host-to-device copy; from a device frame: device-to-device. Both exact."""
    s = trt_sr_x4.session
    img = sample_bgra("crypko_07")
    dst = s.alloc((256, 256, 4), np.uint8)
    s.crop_into(dst, img, 7, 130)
    np.testing.assert_array_equal(s.to_host(dst), img[7:263, 130:386])
    frame = s.alloc((512, 512, 4), np.uint8)
    s.copy_into(frame, img)
    s.crop_into(dst, frame, 250, 3)
    np.testing.assert_array_equal(s.to_host(dst), img[250:506, 3:259])
    with pytest.raises(ValueError, match="outside"):
        s.crop_into(dst, img, 300, 0)
    np.testing.assert_array_equal(s.to_host(dst), img[250:506, 3:259])  # unchanged after the refusal


def test_trt_output_cache_feeds_sr_host_frames(native_trt, sample_bgra):
    """get_core on trt with the output cache: THA's frames go through the (host) cache, so SR crops
    from host frames; a cache hit must give the same output as the first render."""
    from ezvtb import get_core

    core = get_core(use_tensorrt=True, backend="trt", model_half=True, use_cacher=True, use_interpolation=False,
                    use_sr=True, sr_x4=True, sr_half=True, cacher_quality=100)
    try:
        assert not core.tha.device_output, "the cache sits between THA and SR: host frames"
        core.setImage(sample_bgra("crypko_02"))
        poses = _poses(2, 4)
        first = [core.inference(p)[0].copy() for p in poses]
        core.cache.flush()
        hits = core.cache.hits
        again = core.inference(poses[0])[0]
        assert core.cache.hits == hits + 1, "served from the output cache"
        _close_frames(again, first[0], "SR of a cached (host) THA frame vs the first render", 50.0, 0.999)
    finally:
        core.close()
