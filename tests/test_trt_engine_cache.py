"""The TensorRT engine cache (key, file format, rebuild on a changed key or a bad file) on real files.

`ezvtb.engines.trt.engine_cache` imports neither tensorrt nor CUDA; the builder handed to it here
is a plain function returning bytes (on a GPU it is TrtSession's TensorRT build), and the
deserialiser parses them, so every branch of the cache logic runs for real.
"""
from __future__ import annotations

import dataclasses
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
