"""Session layer: spec checks, preallocated outputs, provider selection and fallback detection.

Uses a small real ONNX graph built with onnx.helper and run by ONNX Runtime's CPU provider.
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ezvtb.engines import BackendUnavailableError, create_session
from ezvtb.engines.base import GraphSpec, TensorSpec
from ezvtb.engines.ort import OrtSession, resolve_providers

SPEC = GraphSpec(
    "toy",
    (TensorSpec("image", (4, 4, 4), "uint8"), TensorSpec("gain", (1, 1), "float32")),
    (TensorSpec("scaled", (4, 4, 4), "float32"), TensorSpec("image_out", (4, 4, 4), "uint8")),
)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    """scaled = float(image) * gain; image_out = image (through a Cast round trip)."""
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, [4, 4, 4])
    g = helper.make_tensor_value_info("gain", TensorProto.FLOAT, [1, 1])
    y = helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [4, 4, 4])
    z = helper.make_tensor_value_info("image_out", TensorProto.UINT8, [4, 4, 4])
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "gain"], ["scaled"]),
        helper.make_node("Cast", ["xf"], ["image_out"], to=TensorProto.UINT8),
    ]
    model = helper.make_model(helper.make_graph(nodes, "toy", [x, g], [y, z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "toy.onnx"
    onnx.save(model, path)
    return path


def feeds(value=3, gain=2.0):
    return {"image": np.full((4, 4, 4), value, np.uint8), "gain": np.array([[gain]], np.float32)}


def test_run_writes_into_preallocated_session_owned_buffers(toy_model):
    with create_session(toy_model, SPEC, "cpu") as s:
        out1 = s.run(feeds(3, 2.0))
        buf = out1["scaled"]
        np.testing.assert_array_equal(buf, np.full((4, 4, 4), 6.0, np.float32))
        kept = buf.copy()
        out2 = s.run(feeds(5, 1.0))
        assert out2["scaled"] is buf, "the output buffer must be reused, not reallocated"
        np.testing.assert_array_equal(buf, np.full((4, 4, 4), 5.0, np.float32))
        np.testing.assert_array_equal(kept, np.full((4, 4, 4), 6.0, np.float32))
        assert s.output("image_out") is out2["image_out"]
        assert s.backend == "cpu"


def test_bad_feeds_name_the_tensor_and_leave_the_session_usable(toy_model):
    s = OrtSession(toy_model, SPEC, "cpu")
    with pytest.raises(ValueError, match=r"'gain'.*float32\[1, 1\].*float64\[1, 1\]"):
        s.run({"image": np.zeros((4, 4, 4), np.uint8), "gain": np.zeros((1, 1))})
    with pytest.raises(ValueError, match=r"'image'.*uint8\[4, 4, 4\].*uint8\[4, 4\]"):
        s.run({"image": np.zeros((4, 4), np.uint8), "gain": np.zeros((1, 1), np.float32)})
    with pytest.raises(ValueError, match="missing inputs \\['gain'\\]"):
        s.run({"image": np.zeros((4, 4, 4), np.uint8)})
    assert s.run(feeds(1, 1.0))["scaled"][0, 0, 0] == 1.0


def test_non_contiguous_feed_is_accepted(toy_model):
    s = OrtSession(toy_model, SPEC, "cpu")
    big = np.arange(4 * 8 * 4, dtype=np.uint8).reshape(4, 8, 4)[:, ::2]
    assert not big.flags.c_contiguous
    out = s.run({"image": big, "gain": np.ones((1, 1), np.float32)})
    np.testing.assert_array_equal(out["image_out"], big)


def test_graph_that_does_not_match_the_spec_is_refused(toy_model):
    wrong = GraphSpec("toy", SPEC.inputs, (TensorSpec("other", (4, 4, 4), "float32"),))
    with pytest.raises(ValueError, match="does not match the declared spec"):
        OrtSession(toy_model, wrong, "cpu")


def test_missing_model_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OrtSession(tmp_path / "nope.onnx", SPEC, "cpu")


def test_unknown_backend_is_a_value_error(toy_model):
    with pytest.raises(ValueError, match="backend: expected one of"):
        create_session(toy_model, SPEC, "vulkan")


def test_explicit_gpu_backend_missing_from_this_build_is_an_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the CPU-only error path cannot be shown")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        resolve_providers("cuda")
    assert resolve_providers("auto") == ("cpu", False)


def test_silent_cpu_fallback_is_detected(toy_model, monkeypatch, caplog):
    """ORT falls back to CPU without raising when a GPU provider cannot load.

    Here CUDA is advertised but cannot load (CPU-only build): the session must notice from
    get_providers(): an error when asked explicitly, a warning under auto.
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here")
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with pytest.raises(BackendUnavailableError, match="fell back"):
        OrtSession(toy_model, SPEC, "cuda")
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        s = OrtSession(toy_model, SPEC, "auto")
    assert s.backend == "cpu"
    assert any("fell back" in r.message for r in caplog.records)
    assert s.run(feeds(2, 2.0))["scaled"][0, 0, 0] == 4.0


def test_options_reach_the_session(toy_model):
    s = create_session(toy_model, SPEC, "cpu", intra_op_threads=1, optimization="basic")
    assert s.options.intra_op_threads == 1
    with pytest.raises(ValueError, match="optimization"):
        create_session(toy_model, SPEC, "cpu", optimization="max")


# --- GPU library loading: the real preload runs only with onnxruntime-gpu; here the ORT
# module's functions are wrapped to record calls, the sessions themselves are real CPU sessions.

@pytest.fixture
def fresh_gpu_preparation(monkeypatch):
    """A process that has not prepared the GPU libraries yet; records preload_dlls and session creation."""
    import onnxruntime as ort

    from ezvtb.engines.ort import session as ort_session

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here: the real preload already ran or would")
    monkeypatch.setattr(ort_session, "_prepared", set())
    events: list[str] = []
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: events.append("preload_dlls"), raising=False)
    real_session = ort.InferenceSession

    def recording_session(path, *a, providers=None, **k):
        events.append(f"session {providers[0] if providers else '?'}")
        return real_session(path, *a, providers=providers, **k)

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    return events


def test_preload_dlls_runs_once_before_the_first_gpu_session(toy_model, monkeypatch, fresh_gpu_preparation, caplog):
    import onnxruntime as ort

    events = fresh_gpu_preparation
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        a = OrtSession(toy_model, SPEC, "auto")  # resolves to cuda, which cannot load on this CPU build
        b = OrtSession(toy_model, SPEC, "auto")
    assert events[:2] == ["preload_dlls", "session CUDAExecutionProvider"], events
    assert events.count("preload_dlls") == 1, events
    assert a.backend == b.backend == "cpu" and a.run(feeds(2, 2.0))["scaled"][0, 0, 0] == 4.0


def test_cpu_sessions_never_preload_gpu_libraries(toy_model, fresh_gpu_preparation):
    events = fresh_gpu_preparation
    create_session(toy_model, SPEC, "cpu")
    create_session(toy_model, SPEC, "auto")  # auto on a CPU-only build: the CPU provider
    assert events == ["session CPUExecutionProvider"] * 2


def test_tensorrt_ep_imports_tensorrt_before_its_first_session(toy_model, monkeypatch, fresh_gpu_preparation, caplog):
    import onnxruntime as ort

    events = fresh_gpu_preparation
    real = ort.get_available_providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *real()])
    import builtins

    real_import = builtins.__import__

    def recording_import(name, *a, **k):
        if name == "tensorrt":
            events.append("import tensorrt")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
        OrtSession(toy_model, SPEC, "tensorrt")  # the EP cannot load on this CPU build
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert events[:3] == ["preload_dlls", "import tensorrt", "session TensorrtExecutionProvider"], events
    with pytest.raises(BackendUnavailableError):
        OrtSession(toy_model, SPEC, "tensorrt")
    assert events.count("import tensorrt") == 1 and events.count("preload_dlls") == 1, events


def test_a_gpu_provider_failing_at_session_creation_did_not_load(toy_model, monkeypatch, caplog):
    """An EP that raises while creating the session (a TensorRT build, CUDA out of memory): ORT raises
    its own exception types (not RuntimeError); explicit backends get BackendUnavailableError, auto
    falls back to the CPU with a warning."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA really is available here")
    real, real_session = ort.get_available_providers, ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real()])

    def failing_on_cuda(path, *a, providers=None, **k):
        if "CUDAExecutionProvider" in (providers or []):
            raise Fail("CUDA failure 2: out of memory")
        return real_session(path, *a, providers=providers, **k)

    monkeypatch.setattr(ort, "InferenceSession", failing_on_cuda)
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider failed: Fail: CUDA failure 2"):
        OrtSession(toy_model, SPEC, "cuda")
    with caplog.at_level(logging.WARNING, logger="ezvtb"):
        s = OrtSession(toy_model, SPEC, "auto")
    assert s.backend == "cpu" and s.run(feeds(3, 1.0))["scaled"][0, 0, 0] == 3.0
    assert any("out of memory" in r.message for r in caplog.records)
