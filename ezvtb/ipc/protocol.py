"""The ezvtb IPC wire protocol, version 1 (the full specification is docs/ipc.md).

Every message is a 16-byte header followed by a payload of `length` bytes::

    offset size  field
    0      4     magic   b"EZVB"
    4      2     version u16  (PROTOCOL_VERSION)
    6      2     type    u16  (`Msg`)
    8      4     seq     u32  (a reply carries the seq of the request it answers)
    12     4     length  u32  (payload bytes that follow)

All integers and floats are little-endian. The header layout, the HELLO layout and the ERROR
layout are frozen across protocol versions, so either side can always report a version mismatch.
Payload layouts are the `struct.Struct` constants below; each client message type has a size
bound (`CLIENT_BOUNDS`) that the server enforces before buffering the payload.

This module is pure framing (no I/O policy): `encode` builds a message, `MessageReader` is an
incremental parser with bounded memory that resynchronises after garbage.
"""
from __future__ import annotations

import enum
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAGIC = b"EZVB"
HEADER = struct.Struct("<4sHHII")
HEADER_SIZE = HEADER.size  # 16
MAX_SEQ = 0xFFFFFFFF


class Msg(enum.IntEnum):
    """Message types. 0x01-0x7F: client -> server; 0x81-0xFF: server -> client."""

    HELLO = 0x01
    SET_IMAGE = 0x02
    POSE = 0x03
    RELEASE = 0x04
    STATS = 0x05
    SHUTDOWN = 0x06
    WELCOME = 0x81
    OK = 0x82
    FRAMES = 0x83
    DROPPED = 0x84
    STATS_REPLY = 0x85
    ERROR = 0x86
    BYE = 0x87


class Transport(enum.IntEnum):
    STDIO = 0
    SHM = 1


class ErrorCode(enum.IntEnum):
    """ERROR payload codes; the client raises the matching exception (`error_class`)."""

    VALUE = 1            # ValueError from the core (bad image, bad pose, bad get_core option)
    RUNTIME = 2          # RuntimeError from the core (e.g. inference before setImage)
    PROTOCOL = 3         # malformed, truncated, unexpected or oversized message
    VERSION = 4          # protocol version mismatch
    NOT_IMPLEMENTED = 5  # NotImplementedError (an option the core does not support yet)
    FILE_NOT_FOUND = 6   # FileNotFoundError (e.g. a weights path)
    INTERNAL = 7         # anything else; the message starts with the exception type


class DropReason(enum.IntEnum):
    """Why a POSE was answered with DROPPED instead of FRAMES."""

    SUPERSEDED = 1  # a newer POSE was already waiting when this one came up: it was not rendered
    STALE = 2       # rendered, but newer frames were ready before these reached the client
    NO_SLOT = 3     # shm: the client holds every slot group; release one (RELEASE / POSE mask)


# --- payload layouts --------------------------------------------------------------------------
# HELLO (client -> server): transport u8, reserved u8, reserved u16. Frozen across versions.
HELLO = struct.Struct("<BBH")
# WELCOME (server -> client): transport u8, pixel dtype u8 (1 = uint8), frames per inference u16,
# height u32, width u32, channels u32, slot groups u16, shm name length u16, server pid u32,
# shm segment size u64; then the shm name (ASCII), then a UTF-8 JSON object (server info).
WELCOME = struct.Struct("<BBHIIIHHIQ")
DTYPE_UINT8 = 1
# SET_IMAGE (client -> server): source u8 (0 = pixels follow inline, 1 = the shm image slot),
# ndim u8, dtype kind (b"u", b"i", b"f", b"b") char, itemsize u8, 4 x u32 dims (unused = 0);
# inline pixels follow, little-endian, C order.
IMAGE = struct.Struct("<BBcB4I")
IMAGE_INLINE, IMAGE_SHM = 0, 1
# POSE (client -> server): release mask u32 (slot groups handed back, shm), then 45 x float32.
POSE_SIZE = 45
POSE = struct.Struct("<I45f")
# RELEASE (client -> server): release mask u32.
RELEASE = struct.Struct("<I")
# FRAMES (server -> client): slot group u16 (NO_GROUP = frames inline), frame count u16,
# reserved u32, server render time f64 (ms); stdio: count * H * W * C pixel bytes follow.
FRAMES = struct.Struct("<HH4xd")
NO_GROUP = 0xFFFF
# DROPPED (server -> client): reason u16 (`DropReason`), frames not delivered u16; UTF-8 text.
DROPPED = struct.Struct("<HH")
# ERROR (server -> client): code u16 (`ErrorCode`), reserved u16; UTF-8 message. Frozen.
ERROR = struct.Struct("<HH")
# STATS_REPLY: a UTF-8 JSON object. OK, BYE, STATS, SHUTDOWN: empty.

KiB, MiB = 1024, 1024 * 1024
MAX_IMAGE_BYTES = 16 * MiB          # inline SET_IMAGE pixels (a valid image is exactly 1 MiB)
MAX_TEXT = 4 * KiB                  # ERROR / DROPPED text is truncated to this
MAX_JSON = 1 * MiB                  # WELCOME info and STATS_REPLY
# Inclusive (min, max) payload sizes of client messages, checked before anything is buffered.
CLIENT_BOUNDS: dict[int, tuple[int, int]] = {
    Msg.HELLO: (HELLO.size, 4 * KiB),
    Msg.SET_IMAGE: (IMAGE.size, IMAGE.size + MAX_IMAGE_BYTES),
    Msg.POSE: (POSE.size, POSE.size),
    Msg.RELEASE: (RELEASE.size, RELEASE.size),
    Msg.STATS: (0, 0),
    Msg.SHUTDOWN: (0, 0),
}
# Beyond this a declared length is treated as a corrupt header (resync) instead of being skipped.
MAX_SKIP = 64 * MiB


class ProtocolError(RuntimeError):
    """The peer sent something this side cannot interpret, or the server reported one."""


class VersionMismatchError(ProtocolError):
    """Client and server speak different protocol versions."""


class ServerError(RuntimeError):
    """An unexpected exception inside the server (ERROR code INTERNAL)."""


_CODE_CLASS: dict[int, type[Exception]] = {
    ErrorCode.VALUE: ValueError,
    ErrorCode.RUNTIME: RuntimeError,
    ErrorCode.PROTOCOL: ProtocolError,
    ErrorCode.VERSION: VersionMismatchError,
    ErrorCode.NOT_IMPLEMENTED: NotImplementedError,
    ErrorCode.FILE_NOT_FOUND: FileNotFoundError,
    ErrorCode.INTERNAL: ServerError,
}


def error_class(code: int) -> type[Exception]:
    return _CODE_CLASS.get(code, ServerError)


def error_code(exc: BaseException) -> int:
    """The ERROR code for an exception raised by the core (most specific class first)."""
    for cls, code in ((VersionMismatchError, ErrorCode.VERSION), (ProtocolError, ErrorCode.PROTOCOL),
                      (NotImplementedError, ErrorCode.NOT_IMPLEMENTED), (FileNotFoundError, ErrorCode.FILE_NOT_FOUND),
                      (ValueError, ErrorCode.VALUE), (RuntimeError, ErrorCode.RUNTIME)):
        if isinstance(exc, cls):
            return code
    return ErrorCode.INTERNAL


def type_name(t: int) -> str:
    try:
        return Msg(t).name
    except ValueError:
        return f"0x{t:04x}"


def encode(msg: int, seq: int, payload: bytes | bytearray | memoryview = b"", version: int | None = None) -> bytes:
    """One complete message (header + payload) as bytes; `version` defaults to PROTOCOL_VERSION."""
    v = PROTOCOL_VERSION if version is None else version
    return HEADER.pack(MAGIC, v, int(msg), seq & MAX_SEQ, len(payload)) + bytes(payload)


def encode_text(msg: int, seq: int, fixed: struct.Struct, values: tuple, text: str) -> bytes:
    """A message whose payload is `fixed` followed by UTF-8 text (truncated to MAX_TEXT bytes)."""
    raw = text.encode("utf-8", "replace")[:MAX_TEXT].decode("utf-8", "ignore").encode()  # whole characters
    return encode(msg, seq, fixed.pack(*values) + raw)


def encode_error(seq: int, code: int, message: str) -> bytes:
    return encode_text(Msg.ERROR, seq, ERROR, (int(code), 0), message)


def encode_json(msg: int, seq: int, obj: Any) -> bytes:
    raw = json.dumps(obj, default=_json_default, separators=(",", ":")).encode()
    if len(raw) > MAX_JSON:
        raise ValueError(f"JSON payload of {len(raw)} bytes exceeds the {MAX_JSON} byte bound")
    return encode(msg, seq, raw)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def decode_text(payload: bytes | memoryview, fixed: struct.Struct) -> tuple[tuple, str]:
    if len(payload) < fixed.size:
        raise ProtocolError(f"payload of {len(payload)} bytes is shorter than its {fixed.size}-byte fixed part")
    return fixed.unpack_from(payload), bytes(payload[fixed.size:]).decode("utf-8", "replace")


@dataclass
class Message:
    type: int
    seq: int
    payload: bytes
    version: int = PROTOCOL_VERSION


@dataclass
class Issue:
    """A framing problem found by `MessageReader` (the caller answers it with an ERROR)."""

    code: int
    seq: int
    text: str
    type: int = 0
    version: int = PROTOCOL_VERSION


class MessageReader:
    """Incremental, bounded parser of a byte stream into `Message`s and `Issue`s.

    `bounds` maps each accepted message type to its inclusive (min, max) payload size; other
    types are reported and skipped. Memory is bounded by the largest allowed message plus one
    fed chunk: an oversized declared length is skipped (discarded as it arrives, never stored)
    or, beyond MAX_SKIP, treated as a corrupt header. Garbage (no magic) is dropped up to the
    next b"EZVB". `stalled(timeout)` + `abandon()` drop a message that stops arriving midway.
    Versions other than `version` are reported as ErrorCode.VERSION issues and the message skipped.
    """

    def __init__(self, bounds: dict[int, tuple[int, int]], version: int = PROTOCOL_VERSION) -> None:
        self.bounds = dict(bounds)
        self.version = version
        self._buf = bytearray()
        self._skip = 0
        self._skip_header: tuple[int, int] | None = None  # (type, seq) of the message being skipped
        self._last_progress = time.monotonic()
        self.bytes_in = 0
        self.garbage_bytes = 0
        self._in_garbage = False  # one Issue per run of garbage, however it is chunked

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.bytes_in += len(data)
        self._last_progress = time.monotonic()
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
            if not data:
                return
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held (or still to be skipped)."""
        return len(self._buf) + self._skip

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def touch(self) -> None:
        """Restart the stall clock (the caller stopped reading for reasons of its own)."""
        self._last_progress = time.monotonic()

    def stalled(self, timeout: float) -> bool:
        return self.pending > 0 and time.monotonic() - self._last_progress > timeout

    def seconds_to_stall(self, timeout: float) -> float | None:
        if not self.pending:
            return None
        return max(0.0, timeout - (time.monotonic() - self._last_progress))

    def abandon(self, timeout: float) -> Issue:
        """Drop the incomplete message (or the rest of a skip) and report it as truncated."""
        got, want, t, seq = len(self._buf), 0, 0, 0
        if self._skip:
            t, seq = self._skip_header or (0, 0)
            what = f"{type_name(t)} message being skipped was cut off: {self._skip} bytes never arrived"
        elif len(self._buf) >= HEADER_SIZE and bytes(self._buf[:4]) == MAGIC:
            _, _, t, seq, length = HEADER.unpack_from(self._buf)
            want = HEADER_SIZE + length
            what = f"truncated {type_name(t)} message: received {got} of {want} bytes"
        else:
            what = f"truncated message: received {got} bytes of a {HEADER_SIZE}-byte header"
        self._buf.clear()
        self._skip = 0
        self._skip_header = None
        return Issue(ErrorCode.PROTOCOL, seq, f"{what} (nothing arrived for {timeout:g} s); discarded", t)

    def next(self) -> Message | Issue | None:
        """The next complete message or framing issue, or None when more bytes are needed."""
        while True:
            if self._skip:
                return None
            buf = self._buf
            if len(buf) < HEADER_SIZE:
                if buf and not MAGIC.startswith(bytes(buf[:4])):
                    issue = self._resync("bad magic")
                    if issue is not None:
                        return issue
                    continue
                return None
            magic, version, t, seq, length = HEADER.unpack_from(buf)
            if magic != MAGIC or length > MAX_SKIP:
                why = "bad magic" if magic != MAGIC else f"declared length {length} exceeds {MAX_SKIP} bytes"
                issue = self._resync(why)
                if issue is not None:
                    return issue
                continue
            self._in_garbage = False
            if version != self.version:
                self._start_skip(length, t, seq)
                return Issue(ErrorCode.VERSION, seq, f"protocol version mismatch: peer speaks version {version}, "
                             f"this side speaks version {self.version}", t, version)
            bound = self.bounds.get(t)
            if bound is None:
                self._start_skip(length, t, seq)
                return Issue(ErrorCode.PROTOCOL, seq, f"unexpected message type {type_name(t)} "
                             f"({length}-byte payload skipped)", t)
            lo, hi = bound
            if not lo <= length <= hi:
                self._start_skip(length, t, seq)
                exp = f"{lo}" if lo == hi else f"{lo}..{hi}"
                return Issue(ErrorCode.PROTOCOL, seq, f"{type_name(t)} payload: expected {exp} bytes, "
                             f"got a declared length of {length} (message skipped)", t)
            end = HEADER_SIZE + length
            if len(buf) < end:
                return None
            payload = bytes(buf[HEADER_SIZE:end])
            del buf[:end]
            return Message(t, seq, payload, version)

    def _start_skip(self, length: int, t: int, seq: int) -> None:
        end = HEADER_SIZE + length
        have = len(self._buf)
        if have >= end:
            del self._buf[:end]
        else:
            self._skip = end - have
            self._skip_header = (t, seq)
            self._buf.clear()

    def _resync(self, why: str) -> Issue | None:
        buf = self._buf
        i = buf.find(MAGIC, 1)
        if i < 0:  # keep a tail that may be the start of the next magic
            keep = 0
            for k in range(min(3, len(buf) - 1), 0, -1):
                if MAGIC.startswith(bytes(buf[-k:])):
                    keep = k
                    break
            i = len(buf) - keep
        del buf[:i]
        self.garbage_bytes += i
        if self._in_garbage:
            return None  # same run of garbage: already reported
        self._in_garbage = True
        return Issue(ErrorCode.PROTOCOL, 0, f"malformed message ({why}): skipped {i} bytes to the next header")
