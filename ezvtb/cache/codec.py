"""Frame codecs for the output cache: BGRA uint8 frames <-> self-describing byte blobs.

* `JpegCodec(quality)` (quality 1..99): colour and alpha as two JPEG planes (BGR 4:4:4 and a
  grey plane), libjpeg-turbo through PyTurboJPEG when its shared library loads, else OpenCV's
  bundled libjpeg-turbo. Both write standard JPEG, so blobs decode with either backend.
* `LosslessCodec(name)`: ``qoi``, ``lz4`` or ``raw`` (exact). `lossless_codec()` picks the first
  available of ``LOSSLESS_PREFERENCE`` (qoi: 108 KB per THA3 frame, decode 0.22 ms; lz4: 157 KB,
  0.08 ms; raw: 1024 KB; measured in benchmarks/bench_cache.py, see the README).

A blob is a 20-byte header (magic, format version, codec id, quality, height, width, the two
payload lengths) followed by the payloads, so any codec here decodes any blob (`decode_blob`).
`decode(blob, out)` writes into the caller's uint8 (H, W, 4) buffer and returns it; nothing is
allocated for the result. Codecs are thread-safe (no shared mutable state besides counters).
"""
from __future__ import annotations

import logging
import os
import struct
from typing import Any

import cv2
import numpy as np

log = logging.getLogger("ezvtb.cache.codec")

MAGIC = b"EZVF"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBBBHHII")  # magic, version, codec id, quality, reserved, h, w, len1, len2
HEADER_SIZE = _HEADER.size
CODEC_IDS = {"jpeg": 1, "raw": 2, "lz4": 3, "qoi": 4}
_CODEC_NAMES = {v: k for k, v in CODEC_IDS.items()}
LOSSLESS_PREFERENCE = ("qoi", "lz4", "raw")


class CodecError(ValueError):
    """A blob that is not a frame of this format (truncated, corrupt, unknown codec)."""


class CodecUnavailableError(RuntimeError):
    """A blob whose codec library is not installed in this process."""


def _check_frame(frame: np.ndarray) -> tuple[int, int]:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 4:
        got = f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        raise ValueError(f"frame: expected a uint8 (H, W, 4) BGRA array, got {got}")
    return int(frame.shape[0]), int(frame.shape[1])


def parse_header(blob: Any) -> tuple[str, int, int, int, int, int]:
    """(codec name, quality, height, width, len1, len2) of a blob; CodecError if it is not one."""
    if len(blob) < HEADER_SIZE:
        raise CodecError(f"blob: {len(blob)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, cid, quality, _, h, w, n1, n2 = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CodecError(f"blob: not an ezvtb frame (magic {magic!r}, version {version})")
    if cid not in _CODEC_NAMES:
        raise CodecError(f"blob: unknown codec id {cid}")
    if HEADER_SIZE + n1 + n2 != len(blob):
        raise CodecError(f"blob: payload lengths {n1}+{n2} do not match its size {len(blob)}")
    return _CODEC_NAMES[cid], quality, h, w, n1, n2


def _check_out(out: np.ndarray, h: int, w: int) -> None:
    if not isinstance(out, np.ndarray) or out.shape != (h, w, 4) or out.dtype != np.uint8 \
            or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous uint8 ({h}, {w}, 4) array, got "
                         f"shape {getattr(out, 'shape', None)} dtype {getattr(out, 'dtype', None)}")


# --- JPEG backends ---------------------------------------------------------------------------
class _Cv2Jpeg:
    name = "cv2"

    def __init__(self) -> None:
        self.version = cv2.__version__

    def encode(self, frame: np.ndarray, quality: int) -> tuple[bytes, bytes]:
        params = [cv2.IMWRITE_JPEG_QUALITY, quality,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        bgr = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        alpha = cv2.extractChannel(frame, 3)
        ok1, colour = cv2.imencode(".jpg", bgr, params)
        ok2, a = cv2.imencode(".jpg", alpha, params[:2])
        if not (ok1 and ok2):
            raise RuntimeError("cv2.imencode failed")
        return colour.tobytes(), a.tobytes()

    def decode(self, colour: Any, alpha: Any, out: np.ndarray) -> None:
        bgr = cv2.imdecode(np.frombuffer(colour, np.uint8), cv2.IMREAD_COLOR)
        a = cv2.imdecode(np.frombuffer(alpha, np.uint8), cv2.IMREAD_GRAYSCALE)
        if bgr is None or a is None or bgr.shape[:2] != out.shape[:2] or a.shape != out.shape[:2]:
            raise CodecError("blob: corrupt JPEG payload")
        cv2.merge([*cv2.split(bgr), a], dst=out)  # ~0.2 ms; numpy channel assignment costs ~2 ms


class _TurboJpeg:
    name = "turbojpeg"

    def __init__(self, lib_path: str | None = None) -> None:
        import turbojpeg  # PyTurboJPEG

        self._tj = turbojpeg.TurboJPEG(lib_path) if lib_path else turbojpeg.TurboJPEG()
        self._m = turbojpeg
        self.version = f"PyTurboJPEG {getattr(turbojpeg, '__version__', '?')}, {lib_path or 'system libturbojpeg'}"
        # one probe round trip: refuses a library the wrapper cannot drive
        probe = np.zeros((16, 16, 4), np.uint8)
        out = np.empty_like(probe)
        self.decode(*self.encode(probe, 85), out)

    def encode(self, frame: np.ndarray, quality: int) -> tuple[bytes, bytes]:
        m = self._m
        colour = self._tj.encode(frame, quality=quality, pixel_format=m.TJPF_BGRA, jpeg_subsample=m.TJSAMP_444)
        alpha = np.ascontiguousarray(cv2.extractChannel(frame, 3))[..., None]
        a = self._tj.encode(alpha, quality=quality, pixel_format=m.TJPF_GRAY, jpeg_subsample=m.TJSAMP_GRAY)
        return bytes(colour), bytes(a)

    def decode(self, colour: Any, alpha: Any, out: np.ndarray) -> None:
        m = self._m
        try:
            res = self._tj.decode(colour, pixel_format=m.TJPF_BGRA, dst=out)  # colour straight into out
            if res is not out:
                if res.shape != out.shape:
                    raise CodecError("blob: JPEG plane size does not match the header")
                np.copyto(out, res)
            a = self._tj.decode(alpha, pixel_format=m.TJPF_GRAY)
        except OSError as e:
            raise CodecError(f"blob: corrupt JPEG payload ({e})") from None
        if a.shape[:2] != out.shape[:2]:
            raise CodecError("blob: JPEG alpha plane size does not match the header")
        cv2.insertChannel(a, out, 3)


_BACKEND_CACHE: dict[str, Any] = {}


def jpeg_backend(prefer: str = "auto") -> Any:
    """The JPEG backend: ``auto`` (PyTurboJPEG if its library loads, else cv2), ``turbojpeg`` or ``cv2``.

    ``$EZVTB_TURBOJPEG_LIB`` may name the libturbojpeg shared library for PyTurboJPEG. The choice
    is made once per process and logged; ``turbojpeg`` raises ValueError naming why it failed.
    """
    if prefer not in ("auto", "turbojpeg", "cv2"):
        raise ValueError(f"jpeg_backend: expected 'auto', 'turbojpeg' or 'cv2', got {prefer!r}")
    if prefer in _BACKEND_CACHE:
        return _BACKEND_CACHE[prefer]
    backend: Any = None
    if prefer in ("auto", "turbojpeg"):
        try:
            backend = _TurboJpeg(os.environ.get("EZVTB_TURBOJPEG_LIB") or None)
            log.info("output cache JPEG backend: PyTurboJPEG (%s)", backend.version)
        except Exception as e:  # noqa: BLE001 - missing module, missing or too old libturbojpeg
            if prefer == "turbojpeg":
                raise ValueError(f"jpeg_backend: PyTurboJPEG is not usable here ({type(e).__name__}: {e}); "
                                 "see the README's 'Output cache' section") from None
            log.info("PyTurboJPEG unavailable (%s: %s); output cache uses OpenCV's bundled libjpeg-turbo",
                     type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    if backend is None:
        backend = _Cv2Jpeg()
    _BACKEND_CACHE[prefer] = backend
    return backend


# --- codecs -------------------------------------------------------------------------------------
class JpegCodec:
    """Lossy codec: BGR (4:4:4) and alpha as two JPEG planes at `quality` (1..99)."""

    lossless = False

    def __init__(self, quality: int = 85, backend: str = "auto") -> None:
        if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 99:
            raise ValueError(f"quality: expected an int in 1..99 for JPEG, got {quality!r}")
        self.quality = int(quality)
        self._backend = jpeg_backend(backend)
        self.name = "jpeg"
        self.backend = self._backend.name

    def encode(self, frame: np.ndarray) -> bytes:
        h, w = _check_frame(frame)
        colour, alpha = self._backend.encode(np.ascontiguousarray(frame), self.quality)
        return _HEADER.pack(MAGIC, FORMAT_VERSION, CODEC_IDS["jpeg"], self.quality, 0, h, w,
                            len(colour), len(alpha)) + colour + alpha

    def decode(self, blob: Any, out: np.ndarray) -> np.ndarray:
        return decode_blob(blob, out, jpeg=self._backend)


def _lossless_available(name: str) -> bool:
    if name == "raw":
        return True
    try:
        __import__(name)
        return True
    except ImportError:
        return False


class LosslessCodec:
    """Exact codec: ``qoi``, ``lz4`` (block) or ``raw`` bytes of the BGRA frame."""

    lossless = True
    quality = 100

    def __init__(self, name: str = "qoi") -> None:
        if name not in LOSSLESS_PREFERENCE:
            raise ValueError(f"lossless codec: expected one of {list(LOSSLESS_PREFERENCE)}, got {name!r}")
        if not _lossless_available(name):
            raise ValueError(f"lossless codec: {name!r} needs the '{name}' package (pip install 'ezvtb[codecs]')")
        self.name = name
        self.backend = name

    def encode(self, frame: np.ndarray) -> bytes:
        h, w = _check_frame(frame)
        frame = np.ascontiguousarray(frame)
        if self.name == "qoi":
            import qoi

            payload = qoi.encode(frame)  # channel order is irrelevant to a lossless codec
        elif self.name == "lz4":
            import lz4.block

            payload = lz4.block.compress(frame, store_size=False)
        else:
            payload = frame.tobytes()
        return _HEADER.pack(MAGIC, FORMAT_VERSION, CODEC_IDS[self.name], 100, 0, h, w, len(payload), 0) + payload

    def decode(self, blob: Any, out: np.ndarray) -> np.ndarray:
        return decode_blob(blob, out)


def lossless_codec() -> LosslessCodec:
    """The first available of ``LOSSLESS_PREFERENCE`` (raw is always available)."""
    for name in LOSSLESS_PREFERENCE:
        if _lossless_available(name):
            return LosslessCodec(name)
    raise AssertionError("unreachable: raw is always available")


def make_codec(quality: int, jpeg: str = "auto") -> JpegCodec | LosslessCodec:
    """`cacher_quality` -> codec: 1..99 JPEG, 100 lossless (`lossless_codec`)."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"cacher_quality: expected an int in 1..100 (100 = lossless), got {quality!r}")
    return lossless_codec() if quality == 100 else JpegCodec(int(quality), jpeg)


def decode_blob(blob: Any, out: np.ndarray, jpeg: Any = None) -> np.ndarray:
    """Decode any blob of this format into `out` (uint8 (H, W, 4), C-contiguous); returns `out`.

    CodecError for a malformed blob, CodecUnavailableError when its codec library is missing.
    """
    name, _, h, w, n1, n2 = parse_header(blob)
    _check_out(out, h, w)
    p1 = memoryview(blob)[HEADER_SIZE:HEADER_SIZE + n1]
    if name == "jpeg":
        (jpeg or jpeg_backend()).decode(p1, memoryview(blob)[HEADER_SIZE + n1:], out)
    elif name == "raw":
        if n1 != h * w * 4:
            raise CodecError(f"blob: raw payload of {n1} bytes for a {h}x{w}x4 frame")
        np.copyto(out, np.frombuffer(p1, np.uint8).reshape(h, w, 4))
    elif name == "lz4":
        try:
            import lz4.block
        except ImportError:
            raise CodecUnavailableError("blob: lz4 frame but the 'lz4' package is not installed") from None
        try:
            raw = lz4.block.decompress(p1, uncompressed_size=h * w * 4)
        except lz4.block.LZ4BlockError as e:
            raise CodecError(f"blob: corrupt lz4 payload ({e})") from None
        if len(raw) != h * w * 4:
            raise CodecError("blob: lz4 payload does not decompress to the frame size")
        np.copyto(out, np.frombuffer(raw, np.uint8).reshape(h, w, 4))
    else:
        try:
            import qoi
        except ImportError:
            raise CodecUnavailableError("blob: qoi frame but the 'qoi' package is not installed") from None
        try:
            img = qoi.decode(p1)
        except Exception as e:  # noqa: BLE001 - qoi raises plain ValueError/RuntimeError
            raise CodecError(f"blob: corrupt qoi payload ({e})") from None
        if img.shape != (h, w, 4):
            raise CodecError(f"blob: qoi payload of shape {img.shape} for a {h}x{w}x4 frame")
        np.copyto(out, img)
    return out
