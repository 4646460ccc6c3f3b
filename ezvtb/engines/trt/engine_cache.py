"""The serialised TensorRT engine cache: key, file format, corruption handling (no tensorrt, no CUDA).

An engine is only valid for the exact ONNX graph, TensorRT version, GPU and build flags it was
built with, so the cache key is the sha256 of all of them:

    onnx sha256 (+ its external data files) | graph name | TensorRT version | GPU name | compute capability | build flags

File ``<cache_dir>/<graph>-<key[:16]>.engine``:

    b"EZVTBTRT" | u32 format version | u32 header length | header (JSON: the key fields)
    | 32-byte sha256 of the payload | u64 payload length | payload (the serialised engine)

`load_or_build` returns the cached payload when the file is whole and its header matches the
key; a missing file is built; a truncated, corrupt or mismatching file is rebuilt with a
warning (never fatal). Files are written atomically (`ezvtb.atomic.atomic_write`), so an
interrupted build leaves no half file. `deserialize` lets the caller reject a payload that
TensorRT itself refuses (then it is rebuilt once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ezvtb.atomic import atomic_write

log = logging.getLogger("ezvtb.engines.trt")

MAGIC = b"EZVTBTRT"
FORMAT_VERSION = 1
_HEAD = struct.Struct("<8sII")
_TAIL = struct.Struct("<32sQ")

T = TypeVar("T")


@dataclass(frozen=True)
class BuildFlags:
    """Builder settings that change the engine (all part of the cache key)."""

    fp16: bool = False
    tf32: bool = True
    strongly_typed: bool = False
    workspace_gb: float = 2.0
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if not self.workspace_gb > 0:
            raise ValueError(f"workspace_gb: expected a size in GB > 0, got {self.workspace_gb!r}")
        if self.optimization_level is not None and not (isinstance(self.optimization_level, int)
                                                        and 0 <= self.optimization_level <= 5):
            raise ValueError(f"optimization_level: expected None or an int in 0..5, got {self.optimization_level!r}")
        if self.fp16 and self.strongly_typed:
            raise ValueError("fp16: a strongly typed network takes its precisions from the graph; "
                             "pass fp16=False (or strongly_typed=False)")


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on."""

    onnx_sha256: str
    graph: str
    tensorrt: str
    gpu: str
    compute_capability: str
    flags: BuildFlags

    def fields(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = asdict(self.flags)
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()

    def file_name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.graph)[:64] or "graph"
        return f"{safe}-{self.digest[:16]}.engine"


_digests: dict[tuple[str, int, int], str] = {}


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 identifying an ONNX model: its .onnx file and, when it keeps weights as ONNX external
    data (graphs over 2 GB), every data file it references, so new weights never reuse an engine."""
    files = [os.fspath(path), *external_data_files(path)]
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("|".join(file_sha256(f) for f in files).encode()).hexdigest()


def external_data_files(path: str | os.PathLike) -> list[str]:
    """Paths of the external-data files an ONNX model references (sorted; [] for inline weights).

    A cheap byte scan for the protobuf field name "location" decides whether the graph needs parsing
    (with onnx, weights not loaded); ValueError naming the file when onnx is needed and missing."""
    p = os.fspath(path)
    tail = b""
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if b"location" in tail + block:
                break
            tail = block[-8:]
        else:
            return []
    try:
        import onnx
    except ImportError:
        raise ValueError(f"model {p!r} keeps its weights as ONNX external data: the engine cache key needs the "
                         "onnx package to find them (pip install onnx)") from None
    names: set[str] = set()

    def scan(graph: Any) -> None:  # initializers, constant attributes, subgraphs
        tensors = list(graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                tensors += ([a.t] if a.HasField("t") else []) + list(a.tensors)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    scan(g)
        names.update(e.value for t in tensors for e in t.external_data if e.key == "location")

    scan(onnx.load(p, load_external_data=False).graph)
    folder = os.path.dirname(os.path.abspath(p))
    return sorted(os.path.join(folder, n) for n in names)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (memoised by path, size and mtime)."""
    p = os.fspath(path)
    st = os.stat(p)
    k = (os.path.abspath(p), st.st_size, st.st_mtime_ns)
    d = _digests.get(k)
    if d is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        d = _digests[k] = h.hexdigest()
    return d


def encode(key: EngineKey, payload: bytes) -> bytes:
    header = json.dumps(key.fields(), sort_keys=True).encode()
    return (_HEAD.pack(MAGIC, FORMAT_VERSION, len(header)) + header
            + _TAIL.pack(hashlib.sha256(payload).digest(), len(payload)) + payload)


class CacheFileError(ValueError):
    """A cache file that cannot be used (truncated, corrupt, other key)."""


def decode(key: EngineKey, data: bytes) -> bytes:
    """The payload of a cache file, or CacheFileError saying what is wrong with it."""
    if len(data) < _HEAD.size:
        raise CacheFileError(f"truncated ({len(data)} bytes, no header)")
    magic, version, hlen = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CacheFileError("not an ezvtb engine file (bad magic)")
    if version != FORMAT_VERSION:
        raise CacheFileError(f"format version {version}, expected {FORMAT_VERSION}")
    end = _HEAD.size + hlen
    if len(data) < end + _TAIL.size:
        raise CacheFileError("truncated header")
    try:
        header = json.loads(data[_HEAD.size:end])
    except ValueError as e:
        raise CacheFileError(f"corrupt header ({e})") from None
    if header != key.fields():
        diff = sorted(k for k in set(header) | set(key.fields()) if header.get(k) != key.fields().get(k)) \
            if isinstance(header, dict) else ["header"]
        raise CacheFileError(f"built for another key (differs in {diff})")
    digest, n = _TAIL.unpack_from(data, end)
    payload = data[end + _TAIL.size:]
    if len(payload) != n:
        raise CacheFileError(f"truncated payload ({len(payload)} of {n} bytes)")
    if hashlib.sha256(payload).digest() != digest:
        raise CacheFileError("payload checksum mismatch")
    return payload


def load_or_build(cache_dir: str | os.PathLike, key: EngineKey, build: Callable[[], bytes],
                  deserialize: Callable[[bytes], T]) -> tuple[T, bool]:
    """(deserialize(payload), built) for `key`, from the cache or from `build()`.

    `build` returns the serialised engine; `deserialize` turns a payload into the runtime object
    and raises (or returns None) when it cannot. A bad cache file is logged and rebuilt.
    """
    path = Path(cache_dir) / key.file_name()
    if path.is_file():
        try:
            payload = decode(key, path.read_bytes())
            obj = deserialize(payload)
            if obj is None:
                raise CacheFileError("TensorRT could not deserialise the engine")
            log.info("%s: engine from cache %s", key.graph, path)
            return obj, False
        except (CacheFileError, OSError) as e:
            log.warning("%s: engine cache %s unusable (%s); rebuilding", key.graph, path, e)
        except Exception as e:  # noqa: BLE001 - a deserialiser refusing the payload
            log.warning("%s: engine cache %s rejected by the runtime (%s: %s); rebuilding",
                        key.graph, path, type(e).__name__, e)
    payload = build()
    if not isinstance(payload, (bytes, bytearray, memoryview)) or len(payload) == 0:
        raise RuntimeError(f"{key.graph}: the engine build returned no data")
    payload = bytes(payload)
    obj = deserialize(payload)
    if obj is None:
        raise RuntimeError(f"{key.graph}: TensorRT could not deserialise the engine it just built")
    with atomic_write(path) as f:
        f.write(encode(key, payload))
    log.info("%s: engine built and cached at %s (%.1f MB)", key.graph, path, len(payload) / 1e6)
    return obj, True


def timing_cache_path(cache_dir: str | os.PathLike, tensorrt: str, gpu: str, compute_capability: str) -> Path:
    """Where the builder's timing cache for this TensorRT version and GPU lives."""
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{tensorrt}-{gpu}-sm{compute_capability}")
    return Path(cache_dir) / f"timing-{tag}.cache"


def load_timing_cache(path: str | os.PathLike, create: Callable[[bytes], Any]) -> Any:
    """The builder's timing cache from `path`, or a new empty one.

    `create` is TensorRT's ``IBuilderConfig.create_timing_cache``: it raises or returns None for
    data it cannot parse. A missing file starts empty; an unreadable, rejected or corrupt file is
    logged and started empty too (`save_timing_cache` replaces it after the build). Returns None
    only when even an empty cache cannot be created (the build then runs without one).
    """
    p = Path(path)
    data = b""
    if p.is_file():
        try:
            data = p.read_bytes()
        except OSError as e:
            log.warning("timing cache %s unreadable (%s); starting an empty one", p, e)
    if data:
        try:
            cache = create(data)
        except Exception as e:  # noqa: BLE001 - a corrupt timing cache is never fatal
            cache, why = None, f"{type(e).__name__}: {e}"
        else:
            why = "TensorRT could not parse it"
        if cache is not None:
            return cache
        log.warning("timing cache %s rejected (%s); starting an empty one, rebuilt by this build", p, why)
    try:
        cache = create(b"")
    except Exception as e:  # noqa: BLE001
        cache = None
        log.warning("could not create an empty timing cache (%s: %s); building without one", type(e).__name__, e)
    if cache is None:
        log.warning("TensorRT created no timing cache; building without one")
    return cache


def save_timing_cache(path: str | os.PathLike, cache: Any) -> None:
    """Write `cache.serialize()` to `path` atomically; a failure is logged (the cache is only an optimisation)."""
    try:
        data = bytes(memoryview(cache.serialize()))
        with atomic_write(Path(path)) as fh:
            fh.write(data)
    except Exception as e:  # noqa: BLE001
        log.warning("could not save the timing cache %s: %s", path, e)
