"""Frame sinks: where `ezvtb run` sends the core's uint8 (H, W, 4) BGRA frames.

Open one with `open_sink(url, fps)`:

| URL | what |
|---|---|
| ``raw:-`` | raw BGRA bytes to stdout, frame after frame (pipe into ffmpeg) |
| ``raw:PATH`` | the same into a file (written to a temporary name, renamed on close) or into an existing FIFO |
| ``shm://NAME`` | a shared-memory ring of frame slots (layout below); ``?slots=N`` (default 4) |
| ``mp4:PATH`` | an H.264 mp4 (`ezvtb.video`), alpha composited over the background colour |
| ``webm:PATH`` | a VP9 WebM that keeps the alpha channel (`ezvtb.video`; OBS, browsers, editors) |
| ``png:FOLDER`` | a PNG sequence with alpha (``frame_000000.png``, ...) in a new folder (every editor reads it) |
| ``vcam://[DEVICE]`` | a virtual camera via ``pyvirtualcam`` (optional; alpha composited) |
| ``null:`` | discards frames (measurements) |

Every sink opens lazily on its first frame (the frame shape fixes the size) and copies or
consumes the frame before `write` returns, so the core may reuse its buffer. A frame of another
shape than the first raises ValueError. A consumer that goes away (closed pipe) raises
`SinkClosed`. File sinks write through `ezvtb.atomic.AtomicOutput` (a temporary name, checked,
renamed on `close`; `abort` removes it); ``close(keep_existing=True)`` never replaces an existing
file and keeps the recording under a free ``STEM.partial.SUFFIX`` name instead (`written` says
where). `output_path(url)` is the file a sink URL writes, if any.

Shared-memory layout (``shm://NAME``; POSIX segment ``/NAME``, created by the sink with mode
0600, unlinked by `close`; all integers little-endian)::

    offset  0  magic      8 bytes  b"EZVTBLV1"
    offset  8  version    u32      1
    offset 12  data_off   u32      offset of slot 0 (4096)
    offset 16  slots      u32
    offset 20  height     u32
    offset 24  width      u32
    offset 28  channels   u32      4 (BGRA)
    offset 32  slot_stride u64     bytes between slots (frame bytes rounded up to 4096)
    offset 40  latest_seq u64      sequence number of the newest complete frame (0 = none yet)
    offset 48  writer_pid u32
    offset 52  closed     u32      1 once the writer has stopped
    offset 64  slot table: `slots` x (seq u64, time_ns u64)
    data_off + k * slot_stride: frame slot k, height x width x 4 uint8, row-major BGRA

Frame number s (1, 2, ...) goes to slot ``(s - 1) % slots``. The writer sets the slot's seq to 0,
copies the frame, stores ``time.time_ns()`` and the slot seq s, then sets latest_seq = s. A reader
reads latest_seq, copies slot ``(latest_seq - 1) % slots`` and accepts the copy when that slot's
seq equals latest_seq both before and after the copy (else it retries): it never blocks the
writer, and it has ``slots - 1`` frame periods to finish a copy. `ShmFrameReader` implements this.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import struct
import sys
import time
import urllib.parse
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger("ezvtb.live")

SHM_MAGIC = b"EZVTBLV1"
SHM_VERSION = 1
SHM_HEADER = struct.Struct("<8sIIIIIIQQII")
SHM_SLOT_TABLE = 64
SHM_DATA_OFFSET = 4096
SHM_MAX_SLOTS = (SHM_DATA_OFFSET - SHM_SLOT_TABLE) // 16
_LATEST, _PID, _CLOSED = 40, 48, 52
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,30}$")


class SinkClosed(RuntimeError):
    """The consumer of a sink went away (for example the reading end of a pipe closed)."""


def _check_frame(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 4:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frame: expected a uint8 (H, W, 4) BGRA array, got {desc}")
    return frame


class FrameSink:
    """Base: `write(frame)`, `stats()`, `close()`; opened lazily by the first `write`."""

    url = ""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.shape: tuple[int, int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        frame = _check_frame(frame)
        if self.shape is None:
            self._open(frame.shape)
            self.shape = frame.shape
        elif frame.shape != self.shape:
            raise ValueError(f"frame: expected shape {self.shape} like the first frame of {self.url}, "
                             f"got {frame.shape}")
        self._write(frame)
        self.frames += 1
        self.bytes += frame.nbytes

    def _open(self, shape: tuple[int, int, int]) -> None:
        pass

    def _write(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "frames": self.frames, "bytes": self.bytes}

    def close(self, keep_existing: bool = False) -> None:
        pass

    def abort(self) -> None:
        """Stop after an error (files written to a temporary name are removed)."""
        self.close()

    def __enter__(self) -> "FrameSink":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class NullSink(FrameSink):
    url = "null:"

    def _write(self, frame: np.ndarray) -> None:
        pass


RAW_REFUSED_SUFFIXES = (".npy", ".json", ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".mp4", ".webm", ".mov",
                        ".mkv", ".avi", ".wav", ".flac", ".ogg", ".safetensors", ".onnx", ".pkl", ".pth", ".ckpt",
                        ".mdb", ".txt", ".yaml")


class RawSink(FrameSink):
    """Raw BGRA frames, back to back, to stdout (``-``), a FIFO or a file (atomic: temp + rename)."""

    def __init__(self, path: str, token: str | None = None) -> None:
        super().__init__()
        self.url = f"raw:{path}"
        self.path = path
        self.token = token
        self.written: Path | None = None
        self._f: BinaryIO | None = None
        self._out: Any = None
        if path == "-" and sys.stdout.isatty():
            raise ValueError("output raw:- writes binary frames to stdout, which is a terminal here; pipe it into "
                             "a program (| ffmpeg -f rawvideo -pix_fmt bgra -s 512x512 -r 30 -i - ...) or use raw:PATH")
        if path != "-":
            p = Path(path)
            if p.exists() and not (stat.S_ISFIFO(p.stat().st_mode) or stat.S_ISCHR(p.stat().st_mode)
                                   or p.is_file()):
                raise ValueError(f"output: {path!r} is neither a file, a FIFO nor a character device")
            if not p.parent.is_dir():
                raise ValueError(f"output: folder {str(p.parent)!r} of {path!r} does not exist")
            if not self.is_stream and p.suffix.lower() in RAW_REFUSED_SUFFIXES:
                raise ValueError(f"output: raw:PATH writes raw BGRA frames, but {path!r} ends in {p.suffix} "
                                 f"(another format); use a name ending in .bgra or .raw")

    @property
    def is_stream(self) -> bool:
        """stdout, a FIFO or a device: written in place, not a file of its own."""
        if self.path == "-":
            return True
        try:
            m = os.stat(self.path).st_mode
        except OSError:
            return False
        return stat.S_ISFIFO(m) or stat.S_ISCHR(m)

    def _open(self, shape: tuple[int, int, int]) -> None:
        if self.path == "-":
            self._f = sys.stdout.buffer
            return
        if self.is_stream:
            self._f = open(self.path, "wb", buffering=0)
        else:
            from ezvtb.atomic import AtomicOutput

            self._out = AtomicOutput(self.path, self.token)
            self._f = self._out.open("wb")
        log.info("raw sink %s: %dx%d BGRA frames (%d bytes each)", self.path, shape[1], shape[0],
                 shape[0] * shape[1] * shape[2])

    def _write(self, frame: np.ndarray) -> None:
        assert self._f is not None
        try:
            self._f.write(memoryview(np.ascontiguousarray(frame)).cast("B"))
            if self.path == "-":
                self._f.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise SinkClosed(f"output {self.url}: the reader went away ({e})") from None
        except OSError as e:
            from ezvtb.atomic import OutputError, kept

            raise OutputError(f"{self.path!r} could not be written ({e}); {kept(self.path)}", e.errno) from None

    def _verify(self, tmp: Path) -> None:
        from ezvtb.atomic import OutputError

        expected = self.bytes
        if tmp.stat().st_size != expected:
            raise OutputError(f"{tmp.stat().st_size} of {expected} bytes on the disk")

    def close(self, keep_existing: bool = False) -> None:
        if self.path == "-":
            with contextlib.suppress(BrokenPipeError, ValueError):
                sys.stdout.buffer.flush()
            return
        f, self._f = self._f, None
        out, self._out = self._out, None
        if out is None:
            if f is not None:
                f.close()
            return
        try:
            assert f is not None
            f.close()
        except BaseException:
            out.discard()
            raise
        if keep_existing:
            from ezvtb.atomic import commit_without_replacing

            self.written = commit_without_replacing(out, "partial", self._verify)
        else:
            self.written = out.commit(self._verify)

    def abort(self) -> None:
        f, self._f = self._f, None
        if f is not None and f is not getattr(sys.stdout, "buffer", None):
            with contextlib.suppress(OSError):
                f.close()
        out, self._out = self._out, None
        if out is not None:
            out.discard()


class ShmSink(FrameSink):
    """Shared-memory ring of frame slots (layout in the module docstring). Owns and unlinks it."""

    def __init__(self, name: str, slots: int = 4) -> None:
        super().__init__()
        if not _NAME.match(name):
            raise ValueError(f"output: shm name must be 1-30 characters of A-Z a-z 0-9 _ . -, got {name!r}")
        if not 2 <= slots <= SHM_MAX_SLOTS:
            raise ValueError(f"output: shm slots must be 2..{SHM_MAX_SLOTS}, got {slots}")
        self.url = f"shm://{name}"
        self.name = name
        self.slots = slots
        self.shm: shared_memory.SharedMemory | None = None
        self._seq = 0
        try:  # fail early (before any frame) when the name is taken
            probe = shared_memory.SharedMemory(name=name)
        except FileNotFoundError:
            pass
        else:
            probe.close()
            _untrack(probe)
            raise ValueError(f"output: shared-memory segment {name!r} already exists (another writer?); "
                             f"pick another name")

    def _open(self, shape: tuple[int, int, int]) -> None:
        h, w, c = shape
        frame_bytes = h * w * c
        self.slot_stride = (frame_bytes + 4095) // 4096 * 4096
        size = SHM_DATA_OFFSET + self.slots * self.slot_stride
        try:
            self.shm = shared_memory.SharedMemory(name=self.name, create=True, size=size)
        except FileExistsError:
            raise ValueError(f"output: shared-memory segment {self.name!r} already exists; pick another name") from None
        buf = self.shm.buf
        buf[:SHM_DATA_OFFSET] = bytes(SHM_DATA_OFFSET)
        SHM_HEADER.pack_into(buf, 0, SHM_MAGIC, SHM_VERSION, SHM_DATA_OFFSET, self.slots, h, w, c, self.slot_stride,
                             0, os.getpid(), 0)
        self._table = np.ndarray((self.slots, 2), "<u8", buf, SHM_SLOT_TABLE)
        self._latest = np.ndarray((1,), "<u8", buf, _LATEST)
        self._frames = [np.ndarray(shape, np.uint8, buf, SHM_DATA_OFFSET + k * self.slot_stride)
                        for k in range(self.slots)]
        log.info("shm sink /%s: %d slots of %dx%d BGRA, %d bytes", self.name, self.slots, w, h, size)

    def _write(self, frame: np.ndarray) -> None:
        s = self._seq + 1
        k = (s - 1) % self.slots
        self._table[k, 0] = 0
        np.copyto(self._frames[k], frame)
        self._table[k, 1] = time.time_ns()
        self._table[k, 0] = s
        self._latest[0] = s
        self._seq = s

    def close(self, keep_existing: bool = False) -> None:
        shm, self.shm = self.shm, None
        if shm is None:
            return
        struct.pack_into("<I", shm.buf, _CLOSED, 1)
        self._table = self._latest = None  # type: ignore[assignment]
        self._frames = []
        shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()
        log.info("shm sink /%s unlinked after %d frames", self.name, self.frames)


def _untrack(shm: shared_memory.SharedMemory) -> None:
    """Stop this process's resource tracker from unlinking a segment it only attached to (3.11/3.12)."""
    if sys.version_info < (3, 13):
        from multiprocessing import resource_tracker

        with contextlib.suppress(Exception):
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


class ShmFrameReader:
    """Reader side of ``shm://NAME``: attaches (never unlinks) and copies out the newest frame."""

    def __init__(self, name: str) -> None:
        if sys.version_info >= (3, 13):
            self.shm = shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]
        else:
            self.shm = shared_memory.SharedMemory(name=name)
            _untrack(self.shm)
        try:
            buf = self.shm.buf
            magic, ver, off, slots, h, w, c, stride, _, pid, _ = SHM_HEADER.unpack_from(buf, 0)
            if magic != SHM_MAGIC or ver != SHM_VERSION:
                raise ValueError(f"shm {name!r}: not an ezvtb frame ring (magic {magic!r}, version {ver})")
            if off + slots * stride > len(buf) or h * w * c > stride:
                raise ValueError(f"shm {name!r}: header describes more than the segment's {len(buf)} bytes")
            self.slots, self.shape, self.writer_pid = slots, (h, w, c), pid
            self._table = np.ndarray((slots, 2), "<u8", buf, SHM_SLOT_TABLE)
            self._latest = np.ndarray((1,), "<u8", buf, _LATEST)
            self._frames = [np.ndarray(self.shape, np.uint8, buf, off + k * stride) for k in range(slots)]
        except BaseException:
            self.shm.close()
            raise

    @property
    def latest_seq(self) -> int:
        return int(self._latest[0])

    @property
    def writer_closed(self) -> bool:
        return struct.unpack_from("<I", self.shm.buf, _CLOSED)[0] == 1

    def read(self, after: int = 0, timeout: float = 1.0) -> tuple[np.ndarray, int, int] | None:
        """The newest frame with seq > `after` as (copy, seq, time_ns), or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            s = int(self._latest[0])
            if s > after:
                k = (s - 1) % self.slots
                if int(self._table[k, 0]) == s:
                    out = self._frames[k].copy()
                    t = int(self._table[k, 1])
                    if int(self._table[k, 0]) == s:
                        return out, s, t
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.0005)

    def close(self) -> None:
        self._table = self._latest = None  # type: ignore[assignment]
        self._frames = []
        self.shm.close()

    def __enter__(self) -> "ShmFrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoFileSink(FrameSink):
    """An mp4 (alpha over `background`, a BGR tuple) or WebM (alpha kept) through `ezvtb.video.VideoWriter`."""

    def __init__(self, path: str, fps: float, background: tuple[int, int, int] = (255, 255, 255),
                 token: str | None = None) -> None:
        super().__init__()
        from ezvtb.outputs import check_fps

        suffix = Path(path).suffix.lower()
        scheme = "webm" if suffix == ".webm" else "mp4"
        if suffix not in (".mp4", ".webm"):
            raise ValueError(f"output: mp4:PATH needs a path ending in .mp4 (webm:PATH one in .webm), got {path!r}")
        self.url = f"{scheme}:{path}"
        self.path, self.fps, self.background, self.token = path, check_fps(fps, "fps"), background, token
        self.written: Path | None = None
        self._w: Any = None

    def _open(self, shape: tuple[int, int, int]) -> None:
        from ezvtb.video import VideoWriter

        self._w = VideoWriter(self.path, self.fps, (shape[1], shape[0]), background=self.background,
                              token=self.token)

    def _write(self, frame: np.ndarray) -> None:
        self._w.write(frame)

    def close(self, keep_existing: bool = False) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            self.written = w.close(keep_existing=keep_existing)

    def abort(self) -> None:
        if self._w is not None:
            self._w.abort()
            self._w = None


Mp4Sink = VideoFileSink


class PngSequenceSink(FrameSink):
    """BGRA frames as ``frame_000000.png``, ... (alpha kept) in a new folder, through
    `ezvtb.atomic.AtomicFolder`: the folder appears complete on `close`, never over an existing one."""

    def __init__(self, folder: str, token: str | None = None) -> None:
        super().__init__()
        p = Path(folder)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise ValueError(f"output: png:{folder} needs a new (or empty) folder; {folder!r} exists and is not empty")
        if p.suffix.lower() in RAW_REFUSED_SUFFIXES:
            raise ValueError(f"output: png:FOLDER names a folder, got {folder!r} (a {p.suffix} name)")
        self.url = f"png:{folder}"
        self.path, self.token = folder, token
        self.written: Path | None = None
        self._dir: Any = None

    def _open(self, shape: tuple[int, int, int]) -> None:
        from ezvtb.atomic import AtomicFolder

        self._dir = AtomicFolder(self.path, self.token)

    def _write(self, frame: np.ndarray) -> None:
        import cv2

        ok, buf = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise RuntimeError(f"output {self.url}: OpenCV could not encode frame {self.frames} as PNG")
        self._dir.write(f"frame_{self.frames:06d}.png", buf.tobytes())

    def close(self, keep_existing: bool = False) -> None:
        if self._dir is not None:
            d, self._dir = self._dir, None
            self.written = d.commit("partial")

    def abort(self) -> None:
        if self._dir is not None:
            self._dir.discard()
            self._dir = None


class VirtualCameraSink(FrameSink):
    """A virtual camera through pyvirtualcam (OBS virtual camera, v4l2loopback, Unity Capture)."""

    def __init__(self, device: str | None, fps: float, background: tuple[int, int, int] = (0, 255, 0)) -> None:
        super().__init__()
        try:
            import pyvirtualcam  # noqa: F401
        except ImportError:
            raise RuntimeError("output vcam://: pyvirtualcam is not installed; `pip install pyvirtualcam` "
                               "(and a virtual camera: OBS on Windows/macOS, v4l2loopback on Linux)") from None
        self.url = f"vcam://{device or ''}"
        self.device, self.fps, self.background = device, fps, background
        self._cam: Any = None

    def _open(self, shape: tuple[int, int, int]) -> None:
        import pyvirtualcam

        try:
            self._cam = pyvirtualcam.Camera(width=shape[1], height=shape[0], fps=self.fps,
                                            fmt=pyvirtualcam.PixelFormat.BGR, device=self.device or None)
        except Exception as e:  # noqa: BLE001 - pyvirtualcam raises RuntimeError/ValueError per backend
            raise RuntimeError(f"output {self.url}: cannot open a virtual camera: {e}") from None
        log.info("virtual camera %s: %dx%d @ %.1f fps", self._cam.device, shape[1], shape[0], self.fps)

    def _write(self, frame: np.ndarray) -> None:
        from ezvtb.video import composite

        self._cam.send(composite(frame, self.background))

    def close(self, keep_existing: bool = False) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None


def output_path(url: str) -> str | None:
    """The file (or png: folder) a sink URL writes (mp4:, webm:, raw:PATH, png:), or None (stdout, shm, vcam, null)."""
    for scheme in ("raw:", "mp4:", "webm:", "png:"):
        if isinstance(url, str) and url.startswith(scheme):
            path = url[len(scheme):]
            path = path[2:] if path.startswith("//") else path
            return None if path in ("", "-") else path
    return None


def open_sink(url: str, fps: float = 30.0, background: tuple[int, int, int] = (255, 255, 255),
              token: str | None = None) -> FrameSink:
    """A sink for `url` (table in the module docstring); `fps` and `background` (BGR) serve mp4/webm/vcam;
    `token` names the attempt in file sinks' temporary names (`ezvtb.atomic.temp_name`)."""
    if not isinstance(url, str):
        raise ValueError(f"output: expected a sink URL such as raw:-, shm://NAME or mp4:out.mp4, got {url!r}")
    if url == "null:" or url == "null":
        return NullSink()
    if url.startswith("raw:"):
        path = url[4:]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("output: raw: needs '-' (stdout) or a path, e.g. raw:- or raw:frames.bgra")
        return RawSink(path, token)
    if url.startswith("mp4:") or url.startswith("webm:"):
        path = output_path(url) or ""
        if url.startswith("webm:") and not path.lower().endswith(".webm"):
            raise ValueError(f"output: webm:PATH needs a path ending in .webm, got {path!r}")
        return VideoFileSink(path, fps, background, token)
    if url.startswith("png:"):
        path = output_path(url)
        if not path:
            raise ValueError("output: png: needs a folder, e.g. png:frames")
        return PngSequenceSink(path, token)
    if url.startswith("shm://"):
        rest, _, query = url[6:].partition("?")
        q = dict(urllib.parse.parse_qsl(query))
        unknown = sorted(set(q) - {"slots"})
        if unknown:
            raise ValueError(f"output: unknown option(s) {unknown} for shm:// (allowed: ['slots'])")
        try:
            slots = int(q.get("slots", "4"))
        except ValueError:
            raise ValueError(f"output: shm slots expects an integer, got {q['slots']!r}") from None
        return ShmSink(rest, slots)
    if url.startswith("vcam:"):
        dev = url[5:].lstrip("/")
        return VirtualCameraSink(dev or None, fps, background)
    raise ValueError(f"output: unknown sink {url!r}; expected raw:-, raw:PATH, shm://NAME, mp4:PATH, webm:PATH, "
                     f"png:FOLDER, vcam:// or null:")
