"""The TensorRT engine cache (key, file format, rebuild on a changed key or a bad file) on real files.

`ezvtb.engines.trt.engine_cache` imports neither tensorrt nor CUDA; the builder handed to it here
is a plain function returning bytes (on a GPU it is TrtSession's TensorRT build), and the
deserialiser parses them, so every branch of the cache logic runs for real.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import zlib

import pytest

from ezvtb.engines.trt import engine_cache as ec


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "g.onnx"
    p.write_bytes(b"\x08\x07" + bytes(range(256)) * 40)
    return p


class Builder:
    """Builds a 'plan' from the ONNX bytes (zlib) and counts builds."""

    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return zlib.compress(self.path.read_bytes())


def deserialize(payload: bytes):
    return zlib.decompress(payload)  # raises zlib.error on a bad payload


def key_for(path, **over):
    fields = dict(onnx_sha256=ec.file_sha256(path), graph="tha3/editor", tensorrt="10.16.1.11",
                  gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0", flags=ec.BuildFlags())
    fields.update(over)
    return ec.EngineKey(**fields)


def test_built_once_then_loaded(tmp_path, onnx_file):
    b = Builder(onnx_file)
    key = key_for(onnx_file)
    obj, built = ec.load_or_build(tmp_path / "cache", key, b, deserialize)
    assert built and b.calls == 1 and obj == onnx_file.read_bytes()
    path = tmp_path / "cache" / key.file_name()
    assert path.is_file() and path.name.startswith("tha3_editor-")
    obj2, built2 = ec.load_or_build(tmp_path / "cache", key, b, deserialize)
    assert not built2 and b.calls == 1 and obj2 == obj
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "atomic write leaves no temp file"


@pytest.mark.parametrize("change", [
    {"tensorrt": "10.15.1.29"},
    {"gpu": "NVIDIA GeForce RTX 4090"},
    {"compute_capability": "8.9"},
    {"flags": ec.BuildFlags(fp16=True)},
    {"flags": ec.BuildFlags(tf32=False)},
    {"flags": ec.BuildFlags(strongly_typed=True)},
    {"flags": ec.BuildFlags(workspace_gb=4.0)},
    {"flags": ec.BuildFlags(optimization_level=5)},
    {"graph": "tha3/morpher"},
])
def test_a_changed_key_rebuilds(tmp_path, onnx_file, change):
    b = Builder(onnx_file)
    k1 = key_for(onnx_file)
    ec.load_or_build(tmp_path, k1, b, deserialize)
    k2 = key_for(onnx_file, **change)
    assert k2.digest != k1.digest and k2.file_name() != k1.file_name()
    _, built = ec.load_or_build(tmp_path, k2, b, deserialize)
    assert built and b.calls == 2
    assert not ec.load_or_build(tmp_path, k1, b, deserialize)[1], "the first engine is still cached"


def test_changed_onnx_content_changes_the_key(tmp_path, onnx_file):
    k1 = key_for(onnx_file)
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\x00")
    assert key_for(onnx_file).onnx_sha256 != k1.onnx_sha256


def _corrupt_truncate(data):
    return data[: len(data) // 2]


def _corrupt_flip_payload(data):
    b = bytearray(data)
    b[-10] ^= 0xFF
    return bytes(b)


def _corrupt_magic(data):
    return b"GARBAGE!" + data[8:]


def _corrupt_header(data):
    b = bytearray(data)
    b[20] = ord("{") if b[20] != ord("{") else ord("[")
    b[17:19] = b"\xff\xfe"
    return bytes(b)


def _empty(data):
    return b""


@pytest.mark.parametrize("corrupt, why", [
    (_corrupt_truncate, "truncated"),
    (_corrupt_flip_payload, "checksum mismatch"),
    (_corrupt_magic, "bad magic"),
    (_corrupt_header, "header"),
    (_empty, "truncated"),
])
def test_a_bad_file_is_rebuilt_with_a_warning(tmp_path, onnx_file, caplog, corrupt, why):
    b = Builder(onnx_file)
    key = key_for(onnx_file)
    ec.load_or_build(tmp_path, key, b, deserialize)
    path = tmp_path / key.file_name()
    good = path.read_bytes()
    path.write_bytes(corrupt(good))
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        obj, built = ec.load_or_build(tmp_path, key, b, deserialize)
    assert built and b.calls == 2 and obj == onnx_file.read_bytes()
    assert any("rebuilding" in r.message and why in r.message for r in caplog.records), \
        [r.message for r in caplog.records]
    assert path.read_bytes() == good, "the repaired file is whole again"


def test_a_file_of_another_key_under_this_name_is_rebuilt(tmp_path, onnx_file, caplog):
    b = Builder(onnx_file)
    key, other = key_for(onnx_file), key_for(onnx_file, gpu="other GPU")
    (tmp_path / key.file_name()).write_bytes(ec.encode(other, b()))
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        _, built = ec.load_or_build(tmp_path, key, b, deserialize)
    assert built
    assert any("another key" in r.message and "gpu" in r.message for r in caplog.records)


def test_a_payload_the_runtime_refuses_is_rebuilt(tmp_path, onnx_file, caplog):
    b = Builder(onnx_file)
    key = key_for(onnx_file)
    (tmp_path / key.file_name()).write_bytes(ec.encode(key, b"not zlib"))  # whole file, bad engine
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        obj, built = ec.load_or_build(tmp_path, key, b, deserialize)
    assert built and obj == onnx_file.read_bytes()
    assert any("rejected by the runtime" in r.message for r in caplog.records)
    # A deserialiser returning None (TensorRT's way) counts as a refusal too.
    calls = []
    obj, built = ec.load_or_build(tmp_path, key, b, lambda p: calls.append(p) or (None if len(calls) == 1 else p))
    assert built and len(calls) == 2


def test_a_failed_build_writes_nothing(tmp_path, onnx_file):
    key = key_for(onnx_file)

    def fails():
        raise RuntimeError("TensorRT failed to build the engine: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        ec.load_or_build(tmp_path, key, fails, deserialize)
    with pytest.raises(RuntimeError, match="returned no data"):
        ec.load_or_build(tmp_path, key, lambda: b"", deserialize)
    assert list(tmp_path.iterdir()) == [onnx_file]


def test_build_flags_are_checked():
    with pytest.raises(ValueError, match="workspace_gb"):
        ec.BuildFlags(workspace_gb=0)
    with pytest.raises(ValueError, match="optimization_level"):
        ec.BuildFlags(optimization_level=7)
    with pytest.raises(ValueError, match="strongly typed"):
        ec.BuildFlags(fp16=True, strongly_typed=True)
    assert dataclasses.asdict(ec.BuildFlags()) == {"fp16": False, "tf32": True, "strongly_typed": False,
                                                   "workspace_gb": 2.0, "optimization_level": None}


def test_timing_cache_path_is_per_version_and_gpu(tmp_path):
    a = ec.timing_cache_path(tmp_path, "10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0")
    b = ec.timing_cache_path(tmp_path, "10.16.1.11", "NVIDIA GeForce RTX 4090", "8.9")
    assert a != b and a.parent == tmp_path and " " not in a.name


def test_trt_session_without_tensorrt_fails_clearly():
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    else:
        pytest.skip("tensorrt is installed here")
    from ezvtb.engines import BackendUnavailableError
    from ezvtb.engines.trt import available

    with pytest.raises(BackendUnavailableError, match=r"tensorrt.*ezvtb\[tensorrt\]"):
        from ezvtb.engines.trt import TrtSession  # noqa: F401
    ok, why = available()
    assert not ok and "tensorrt" in why


# --- timing cache (TensorRT's create_timing_cache returns None for data it cannot parse) -------------------

class TimingCache:
    """Stands in for trt.ITimingCache: a JSON dict of tactic timings, serialised as bytes."""

    def __init__(self, entries):
        self.entries = entries

    def serialize(self):
        return json.dumps(self.entries).encode()


def create_timing_cache(data: bytes):
    """TensorRT's semantics: b"" -> an empty cache, parseable data -> that cache, else None."""
    if not data:
        return TimingCache({})
    try:
        return TimingCache(json.loads(data))
    except ValueError:
        return None


@pytest.mark.parametrize("content, why", [(b"\x00garbage\xff", "could not parse"), (b'{"conv": 1', "could not parse")])
def test_a_corrupt_timing_cache_is_started_empty_and_rebuilt(tmp_path, caplog, content, why):
    path = ec.timing_cache_path(tmp_path, "10.16.1.11", "NVIDIA H100 80GB HBM3", "9.0")
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        cache = ec.load_timing_cache(path, create_timing_cache)
    assert cache is not None and cache.entries == {}, "an empty cache instead of None (which failed the build)"
    assert any("rejected" in r.message and why in r.message for r in caplog.records), caplog.text
    cache.entries["conv"] = 0.25  # the build adds timings
    ec.save_timing_cache(path, cache)
    assert json.loads(path.read_bytes()) == {"conv": 0.25}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert ec.load_timing_cache(path, create_timing_cache).entries == {"conv": 0.25}, "the rebuilt file loads"


def test_timing_cache_missing_raising_or_uncreatable(tmp_path, caplog):
    path = tmp_path / "timing.cache"
    assert ec.load_timing_cache(path, create_timing_cache).entries == {}  # missing: empty, no warning
    path.write_bytes(b"xx")

    def raising(data):
        if data:
            raise RuntimeError("Failed to deserialize the timing cache")
        return TimingCache({})

    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        assert ec.load_timing_cache(path, raising).entries == {}
        assert ec.load_timing_cache(path, lambda data: None) is None  # not even an empty one: build without
    assert "RuntimeError: Failed to deserialize" in caplog.text and "building without one" in caplog.text
    ec.save_timing_cache(tmp_path / "sub" / "t.cache", object())  # no serialize(): logged, not raised
    assert "could not save the timing cache" in caplog.text


# --- network typing from the graph's precision ------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_graphs():
    """Real exported RIFE HDv3 x2 and SR graphs, small frames (same weights and graph format as 512)."""
    pytest.importorskip("torch")
    from ezvtb.export.rife import rife_graph
    from ezvtb.export.sr import sr_graph

    return {"rife fp16": rife_graph(2, "fp16", size=128), "rife fp32": rife_graph(2, "fp32", size=128),
            "sr x4 fp16": sr_graph("animevideov3", 0, "fp16", size=32),
            "sr x2 fp16": sr_graph("upconv7", 0, "fp16", size=32),
            "sr x2 fp32": sr_graph("upconv7", 0, "fp32", size=32)}


def test_fp16_rife_and_sr_graphs_are_built_strongly_typed(exported_graphs):
    from ezvtb.engines.trt.precision import float16_evidence, strongly_typed_for

    for name, g in exported_graphs.items():
        io_dtypes = {t.dtype for t in (*g.spec.inputs, *g.spec.outputs)}
        assert io_dtypes == {"uint8"}, (name, io_dtypes)  # the graph's I/O says nothing about its precision
        evidence = float16_evidence(g.path)
        print(f"{name}: {evidence or 'no float16 tensor'}")
        assert strongly_typed_for(g.path, g.spec) is (g.precision == "fp16"), name
        if g.precision == "fp16":
            assert evidence.startswith("initializer "), evidence  # float16 weights


def _graph(nodes, inputs, outputs, initializers=(), fp16_value_info=False):
    from onnx import TensorProto, helper

    vi = [helper.make_tensor_value_info("h", TensorProto.FLOAT16, [1, 4])] if fp16_value_info else []
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                                               value_info=vi), opset_imports=[helper.make_opsetid("", 17)])


def test_float16_found_in_casts_constants_and_subgraphs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from ezvtb.engines.trt.precision import float16_evidence

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    cases = {
        "plain fp32": (_graph([helper.make_node("Relu", ["x"], ["y"])], [x], [y]), ""),
        "cast": (_graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="c"),
                         helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)], [x], [y]),
                 "Cast node 'c' to float16"),
        "constant": (_graph([helper.make_node("Constant", [], ["k"], name="k16", value=helper.make_tensor(
            "k", TensorProto.FLOAT16, [1], [1.0])), helper.make_node("Relu", ["x"], ["y"])], [x], [y]),
                     "Constant node 'k16' with a float16 value"),
    }
    then = helper.make_graph([helper.make_node("Cast", ["x"], ["t"], to=TensorProto.FLOAT16, name="inner")],
                             "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT16, [1, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    cases["subgraph"] = (_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                                [x, cond], [y]), "tensor 't'")
    for name, (model, want) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.onnx"
        onnx.save(model, p)
        assert float16_evidence(p) == want, name


def test_without_onnx_the_io_decides_with_a_warning(tmp_path, monkeypatch, caplog):
    import sys

    import onnx
    from onnx import TensorProto, helper

    from ezvtb.engines.base import GraphSpec, TensorSpec
    from ezvtb.engines.trt import precision

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [4])
    p = tmp_path / "u8.onnx"
    onnx.save(_graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
                      helper.make_node("Cast", ["h"], ["y"], to=TensorProto.UINT8)], [x], [y]), p)
    spec = GraphSpec("u8", (TensorSpec("x", (4,), "uint8"),), (TensorSpec("y", (4,), "uint8"),))
    assert precision.strongly_typed_for(p, spec)
    monkeypatch.setattr(precision, "_found", {})
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with caplog.at_level(logging.WARNING, logger="ezvtb.engines.trt"):
        assert not precision.strongly_typed_for(p, spec)
    assert "`onnx` package is missing" in caplog.text


def _external_data_graph(folder, weight: float):
    """A one-MatMul ONNX graph whose weight lives in an external data file next to it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((64, 64), weight, np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    folder.mkdir()
    onnx.save(helper.make_model(graph), str(folder / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    return folder / "m.onnx"


def test_engine_key_covers_external_data_weights(tmp_path, onnx_file):
    """Same .onnx bytes, other weights in the external data file: another key (no stale engine)."""
    a = _external_data_graph(tmp_path / "a", 1.0)
    b = _external_data_graph(tmp_path / "b", 2.0)
    assert ec.file_sha256(a) == ec.file_sha256(b)  # the graph file alone cannot tell them apart
    assert ec.external_data_files(a) == [str(tmp_path / "a" / "m.data")]
    assert ec.model_sha256(a) != ec.model_sha256(b)
    assert ec.external_data_files(onnx_file) == [] and ec.model_sha256(onnx_file) == ec.file_sha256(onnx_file)
