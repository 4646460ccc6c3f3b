"""The ``ezvtb serve`` process: one core, one client, the protocol of `ezvtb.ipc.protocol`.

Transports:

- ``stdio``: messages on stdin/stdout, frames inline in FRAMES messages. The protocol stream is
  a private duplicate of fd 1; fd 1 itself is pointed at stderr, so a stray print (from a
  library, an exporter) can never corrupt the stream. Logging goes to stderr.
- ``shm``: control messages on a Unix domain socket (created 0600), frames in a shared-memory
  ring of slot groups (`ezvtb.ipc.shm`, created 0600); no frame bytes cross the socket.

The server is single-threaded: a select loop that reads whatever has arrived, answers every
request with exactly one reply, renders only the newest waiting pose (older ones are answered
DROPPED(SUPERSEDED)), and writes without blocking. Memory is bounded whatever the client does:
inbound, by the per-type payload bounds and the read chunk; outbound, by at most one frames
message in flight plus one queued (a newer one replaces a queued one, answered DROPPED(STALE))
and by stopping reading while more than OUT_LIMIT bytes of small replies are unsent.
The server exits when its client disconnects, on SHUTDOWN, SIGTERM or SIGINT, and removes the
segment and the socket on every one of those paths.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from ezvtb.ipc import protocol as P
from ezvtb.ipc.engine import ENGINES, build_engine, expected_output
from ezvtb.ipc.shm import MAX_GROUPS, FrameRing

log = logging.getLogger("ezvtb.ipc")

READ_CHUNK = 256 * 1024
OUT_LIMIT = 256 * 1024  # unsent small replies above which the server stops reading requests


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that every cleanup `finally` runs."""


class ClientGone(Exception):
    """The client closed its end (EOF, EPIPE, ECONNRESET)."""


class Channel:
    """A byte stream: `read` (b"" = EOF, only after select said readable), non-blocking `write`."""

    in_fd: int
    out_fd: int

    def read(self, n: int) -> bytes:
        raise NotImplementedError

    def write(self, views: list[memoryview]) -> int:
        """Write as much of `views` (in order) as fits now; returns the byte count (0 if full)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class StdioChannel(Channel):
    """stdin / a private duplicate of stdout; fd 1 (and sys.stdout) are redirected to stderr."""

    def __init__(self) -> None:
        import sys

        self.in_fd = 0
        self.out_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._flags = fcntl.fcntl(self.out_fd, fcntl.F_GETFL)
        fcntl.fcntl(self.out_fd, fcntl.F_SETFL, self._flags | os.O_NONBLOCK)

    def grow_pipes(self, size: int) -> None:
        grow_pipe(self.out_fd, size)
        grow_pipe(self.in_fd, 2 * 1024 * 1024)

    def read(self, n: int) -> bytes:
        try:
            return os.read(self.in_fd, n)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def write(self, views: list[memoryview]) -> int:
        try:
            return os.writev(self.out_fd, views)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone(str(e)) from None

    def close(self) -> None:
        if self.out_fd >= 0:
            try:
                fcntl.fcntl(self.out_fd, fcntl.F_SETFL, self._flags)
                os.close(self.out_fd)
            except OSError:
                pass
            self.out_fd = -1


class SocketChannel(Channel):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.in_fd = self.out_fd = sock.fileno()

    def read(self, n: int) -> bytes:
        try:
            return self.sock.recv(n)
        except BlockingIOError:
            raise InterruptedError from None  # spurious wake-up: nothing to read after all
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def write(self, views: list[memoryview]) -> int:
        try:
            return self.sock.sendmsg(views)
        except BlockingIOError:
            return 0
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ClientGone(str(e)) from None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def wait_fds(rfds: list[int], wfds: list[int], timeout: float | None) -> tuple[bool, bool]:
    """poll(2) for readable `rfds` / writable `wfds` (no FD_SETSIZE limit); (any readable, any writable).
    Hang-up and errors count as readable (the read returns EOF) and as writable (the write fails)."""
    p = select.poll()
    for fd in rfds:
        p.register(fd, select.POLLIN)
    for fd in wfds:
        p.register(fd, select.POLLOUT | (select.POLLIN if fd in rfds else 0))
    events = p.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
    bad = select.POLLHUP | select.POLLERR | select.POLLNVAL
    r = any(ev & (select.POLLIN | bad) for fd, ev in events if fd in rfds)
    w = any(ev & (select.POLLOUT | bad) for fd, ev in events if fd in wfds)
    return r, w


def grow_pipe(fd: int, size: int) -> None:
    """Best effort: raise a pipe's kernel buffer to `size` (capped at pipe-max-size). Linux only."""
    op = getattr(fcntl, "F_SETPIPE_SZ", None)
    if op is None:
        return
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                size = min(size, int(f.read()))
        except (OSError, ValueError):
            size = min(size, 1024 * 1024)
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
            fcntl.fcntl(fd, op, size)
    except OSError:
        pass


def bind_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from the start (umask), stale file replaced."""
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ValueError(f"socket: {path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
            raise ValueError(f"socket: {path!r} is in use by a running server")
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # left behind by a server that was killed
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(8)  # probes and refused second clients queue here while the core is being built
    return sock


BUSY = "busy: this ezvtb server already serves a client (one client per server); start another server"


def refuse(conn: socket.socket) -> None:
    """Answer a connection that is not the server's client with ERROR(RUNTIME, busy) and close it."""
    try:
        conn.send(P.encode_error(0, P.ErrorCode.RUNTIME, BUSY), socket.MSG_DONTWAIT)
    except OSError:
        pass  # a probe that has gone already, or a full buffer: closing says enough
    conn.close()


def accept_client(listener: socket.socket, timeout: float) -> socket.socket | None:
    """The first connection on `listener` that sends something (a client starts with HELLO); None
    after `timeout` seconds. A connection that closes without sending a byte (a liveness probe, such
    as a second server's `bind_socket` check) is dropped and the wait goes on: a probe never becomes
    the client. Connections still silent when the client is found are refused (`refuse`)."""
    end = time.monotonic() + timeout
    listener.setblocking(False)
    pending: list[socket.socket] = []
    try:
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return None
            p = select.poll()
            p.register(listener.fileno(), select.POLLIN)
            for c in pending:
                p.register(c.fileno(), select.POLLIN)
            for fd, _ in p.poll(max(1, int(left * 1000))):
                if fd == listener.fileno():
                    try:
                        c, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    c.setblocking(False)
                    pending.append(c)
                    if len(pending) > 16:  # bounded: the oldest silent one goes
                        refuse(pending.pop(0))
                    continue
                c = next((c for c in pending if c.fileno() == fd), None)
                if c is None:
                    continue
                try:
                    first = c.recv(1, socket.MSG_PEEK)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    first = b""
                pending.remove(c)
                if first:
                    return c
                c.close()
                log.debug("a connection closed without sending anything (a liveness probe); still waiting")
    finally:
        for c in pending:
            refuse(c)


# --- the server -----------------------------------------------------------------------------
class _Out:
    """One outbound message: `view` (bytes or a pool buffer), bytes already `sent`."""

    __slots__ = ("view", "sent", "seq", "frames", "group", "buf")

    def __init__(self, view: memoryview | bytes, seq: int = 0, frames: int = 0, group: int | None = None,
                 buf: int | None = None) -> None:
        self.view = memoryview(view)
        self.sent = 0
        self.seq, self.frames, self.group, self.buf = seq, frames, group, buf


class Server:
    """Serves one client on `channel`. `core` may be None with `startup_error` set (reported at HELLO)."""

    def __init__(self, channel: Channel, transport: int, core: Any, frame_shape: tuple[int, int, int],
                 frames: int, *, ring: FrameRing | None = None, startup_error: BaseException | None = None,
                 message_timeout: float = 5.0, info: dict[str, Any] | None = None,
                 listener: socket.socket | None = None) -> None:
        self.ch = channel
        self.listener = listener  # shm: kept listening, so that a probe sees "in use"; others are refused
        self.transport = P.Transport(transport)
        self.core = core
        self.frame_shape = tuple(int(x) for x in frame_shape)
        self.n = int(frames)
        self.ring = ring
        self.startup_error = startup_error
        self.message_timeout = float(message_timeout)
        self.info = dict(info or {})
        self.reader = P.MessageReader(P.CLIENT_BOUNDS)
        self.q: deque[_Out] = deque()
        self.small_bytes = 0
        self.ready = False
        self.frame_bytes = int(np.prod(self.frame_shape))
        # stdio: two preallocated FRAMES messages (one in flight + one queued at most)
        self._pool: list[int] = []
        self._bufs: list[bytearray] = []
        self._views: list[list[np.ndarray]] = []
        # shm: group ownership
        self.free: list[int] = list(range(ring.groups)) if ring is not None else []
        self.held: set[int] = set()
        self.c = dict(requests=0, poses=0, frames_rendered=0, frames_delivered=0, frames_dropped_stale=0,
                      poses_superseded=0, poses_no_slot=0, errors=0, malformed=0, bytes_out=0,
                      max_unsent_bytes=0, max_unsent_messages=0, reads_paused=0, connections_refused=0)
        self.t0 = time.monotonic()

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> str:
        """Serve until the client leaves or asks to shut down; returns why."""
        try:
            paused = False
            while True:
                pause = self.small_bytes > OUT_LIMIT
                if pause and not paused:
                    self.c["reads_paused"] += 1
                elif paused and not pause:
                    self.reader.touch()  # a message cut short by our own pause is not the client's fault
                paused = pause
                rl = [] if pause else [self.ch.in_fd]
                if self.listener is not None and not pause:
                    rl.append(self.listener.fileno())
                wl = [self.ch.out_fd] if self.q else []
                timeout = None if pause else self.reader.seconds_to_stall(self.message_timeout)
                r, w = wait_fds(rl, wl, timeout)
                if w:
                    self._flush()
                if r and self.listener is not None:
                    self._refuse_others()
                if r:
                    try:
                        data = self.ch.read(READ_CHUNK)
                    except InterruptedError:
                        data = None
                    if data == b"":  # answer what was asked before the client hung up, then go
                        self._flush(block=True, deadline_s=10.0)
                        return "client disconnected"
                    if data:
                        self.reader.feed(data)
                        self._drain()
                        self.reader.touch()  # time spent rendering is not the client's stall
                elif not w and not pause and self.reader.stalled(self.message_timeout):
                    self._issue(self.reader.abandon(self.message_timeout))
                if self.q:
                    self._flush()
        except ClientGone as e:
            return f"client gone ({e})"
        except _Shutdown:
            return "shutdown requested"

    def _refuse_others(self) -> None:
        """Accept and refuse every connection waiting on the listener (never blocks)."""
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("accept on the listener failed: %s", e)
                return
            self.c["connections_refused"] += 1
            log.info("refused another connection: this server serves one client")
            refuse(conn)

    def _drain(self) -> None:
        items: list[P.Message | P.Issue] = []
        while (m := self.reader.next()) is not None:
            items.append(m)
        last_pose = max((i for i, m in enumerate(items) if isinstance(m, P.Message) and m.type == P.Msg.POSE),
                        default=-1)
        for i, m in enumerate(items):
            if isinstance(m, P.Issue):
                self._issue(m)
                continue
            self.c["requests"] += 1
            try:
                self._handle(m, superseded=i < last_pose)
            except (ClientGone, _Shutdown):
                raise
            except Exception as e:  # noqa: BLE001 - a bug must not take the server down
                log.exception("error handling %s seq %d", P.type_name(m.type), m.seq)
                self._error(m.seq, P.ErrorCode.INTERNAL, f"{type(e).__name__}: {e}")

    def _issue(self, issue: P.Issue) -> None:
        self.c["malformed"] += 1
        log.warning("%s", issue.text)
        fatal = issue.code == P.ErrorCode.VERSION and (not self.ready or issue.type == P.Msg.HELLO)
        self._error(issue.seq, issue.code, issue.text)
        if fatal:
            self._flush(block=True)
            raise ClientGone("protocol version mismatch")

    # -- requests -------------------------------------------------------------------------------
    def _handle(self, m: P.Message, superseded: bool) -> None:
        t = m.type
        if t == P.Msg.HELLO:
            return self._hello(m)
        if not self.ready:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, f"expected HELLO first, got {P.type_name(t)}")
        if t == P.Msg.POSE:
            return self._pose(m, superseded)
        if t == P.Msg.SET_IMAGE:
            return self._set_image(m)
        if t == P.Msg.RELEASE:
            (mask,) = P.RELEASE.unpack(m.payload)
            err = self._release(mask)
            if err:
                self._error(m.seq, P.ErrorCode.PROTOCOL, err)
            return None
        if t == P.Msg.STATS:
            return self._send_small(P.encode_json(P.Msg.STATS_REPLY, m.seq, self.stats()))
        if t == P.Msg.SHUTDOWN:
            self._send_small(P.encode(P.Msg.BYE, m.seq))
            self._flush(block=True)
            raise _Shutdown
        return self._error(m.seq, P.ErrorCode.PROTOCOL, f"unexpected message type {P.type_name(t)}")

    def _hello(self, m: P.Message) -> None:
        if self.ready:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, "duplicate HELLO (the handshake is done)")
        transport, _, _ = P.HELLO.unpack_from(m.payload)
        if transport != self.transport:
            want = P.Transport(transport).name.lower() if transport in P.Transport._value2member_map_ else transport
            self._error(m.seq, P.ErrorCode.PROTOCOL, f"transport: this server runs {self.transport.name.lower()}, "
                                                     f"the client asked for {want}")
            self._flush(block=True)
            raise ClientGone("transport mismatch")
        if self.startup_error is not None:
            e = self.startup_error
            self._error(m.seq, P.error_code(e), str(e) if P.error_code(e) != P.ErrorCode.INTERNAL
                        else f"{type(e).__name__}: {e}")
            self._flush(block=True)
            raise ClientGone("the core failed to start")
        name = self.ring.name.encode() if self.ring else b""
        info = json.dumps(self.info, default=str).encode()
        payload = P.WELCOME.pack(self.transport, P.DTYPE_UINT8, self.n, *self.frame_shape,
                                 self.ring.groups if self.ring else 0, len(name), os.getpid(),
                                 self.ring.size if self.ring else 0) + name + info
        self.ready = True
        if self.transport == P.Transport.STDIO:
            self._pool = [0, 1]
            size = P.HEADER_SIZE + P.FRAMES.size + self.n * self.frame_bytes
            self._bufs = [bytearray(size) for _ in range(2)]
            self._views = [[np.ndarray(self.frame_shape, np.uint8, b, P.HEADER_SIZE + P.FRAMES.size
                                       + i * self.frame_bytes) for i in range(self.n)] for b in self._bufs]
            if isinstance(self.ch, StdioChannel):
                self.ch.grow_pipes(size)
        self._send_small(P.encode(P.Msg.WELCOME, m.seq, payload))
        log.info("client connected (%s transport, %d frame(s) of %s per inference)", self.transport.name.lower(),
                 self.n, self.frame_shape)

    def _set_image(self, m: P.Message) -> None:
        source, ndim, kind, itemsize, *dims = P.IMAGE.unpack_from(m.payload)
        if not 0 <= ndim <= 4 or any(dims[ndim:]):
            return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: bad shape header ndim={ndim} dims={dims}")
        try:
            if kind not in (b"u", b"i", b"f", b"b"):
                raise TypeError
            dtype = np.dtype(f"<{kind.decode()}{itemsize}")
        except TypeError:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: unsupported dtype {kind!r}{itemsize}")
        shape = tuple(dims[:ndim])
        nbytes = dtype.itemsize
        for d in shape:  # Python ints: 4 x 0xFFFFFFFF must not wrap around (np.prod in int64 does)
            nbytes *= d
        limit = self.ring.image_size if source == P.IMAGE_SHM and self.ring is not None else P.MAX_IMAGE_BYTES
        if nbytes > limit:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: dimensions {'x'.join(map(str, shape))} of "
                                                            f"{dtype} are {nbytes} bytes, more than the {limit}-byte "
                                                            "limit (an image is 512x512x4 uint8)")
        if source == P.IMAGE_INLINE:
            if len(m.payload) != P.IMAGE.size + nbytes:
                return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: {shape} {dtype} needs {nbytes} pixel "
                                                                f"bytes, the payload carries {len(m.payload) - P.IMAGE.size}")
            img = np.frombuffer(m.payload, dtype, offset=P.IMAGE.size).reshape(shape).copy()
        elif source == P.IMAGE_SHM and self.ring is not None:
            if nbytes > self.ring.image_size or len(m.payload) != P.IMAGE.size:
                return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: {shape} {dtype} ({nbytes} bytes) does "
                                                                f"not fit the {self.ring.image_size}-byte image slot")
            img = np.ndarray(shape, dtype, self.ring.shm.buf, self.ring.image_offset).copy()
        else:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, f"SET_IMAGE: bad source {source} for the "
                                                            f"{self.transport.name.lower()} transport")
        img = img.astype(img.dtype.newbyteorder("="), copy=False)
        try:
            self.core.setImage(img)
        except Exception as e:  # noqa: BLE001 - the core's own errors go back to the client
            return self._core_error(m.seq, e)
        self._send_small(P.encode(P.Msg.OK, m.seq))

    def _pose(self, m: P.Message, superseded: bool) -> None:
        (mask,) = P.RELEASE.unpack_from(m.payload)
        err = self._release(mask)
        if err:
            return self._error(m.seq, P.ErrorCode.PROTOCOL, err)
        self.c["poses"] += 1
        if superseded:
            self.c["poses_superseded"] += 1
            return self._dropped(m.seq, P.DropReason.SUPERSEDED, 0, "superseded by a newer pose")
        pose = np.frombuffer(m.payload, "<f4", P.POSE_SIZE, offset=4).astype(np.float32)
        if self.ring is not None and not self.free and self._unsent_frames() is None:
            self.c["poses_no_slot"] += 1  # checked before rendering: nowhere to put the frames
            return self._dropped(m.seq, P.DropReason.NO_SLOT, 0, f"no free frame slot: the client holds all "
                                 f"{self.ring.groups} slot groups (release them with RELEASE or the POSE mask)")
        t0 = time.perf_counter()
        try:
            frames = self.core.inference(pose)
        except Exception as e:  # noqa: BLE001
            return self._core_error(m.seq, e)
        ms = (time.perf_counter() - t0) * 1e3
        if (not isinstance(frames, list) or len(frames) != self.n
                or any(not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.shape != self.frame_shape
                       for f in frames)):
            got = [(getattr(f, "dtype", type(f).__name__), getattr(f, "shape", None)) for f in frames] \
                if isinstance(frames, list) else type(frames).__name__
            return self._error(m.seq, P.ErrorCode.INTERNAL, f"the core returned {got}, the handshake announced "
                                                            f"{self.n} x uint8 {self.frame_shape}")
        self.c["frames_rendered"] += self.n
        self._deliver(m.seq, frames, ms)

    def _deliver(self, seq: int, frames: list[np.ndarray], ms: float) -> None:
        old = self._unsent_frames()
        if old is not None:  # not one byte sent yet: take its slot back, the older request gets DROPPED
            group, buf = old.group, old.buf
            self.c["frames_dropped_stale"] += old.frames
            drop = P.encode_text(P.Msg.DROPPED, old.seq, P.DROPPED, (P.DropReason.STALE, old.frames),
                                 "stale: newer frames were ready before these were sent")
            self.small_bytes += len(drop) - (len(old.view) if old.buf is None else 0)
            old.view, old.frames, old.group, old.buf = memoryview(drop), 0, None, None
        elif self.ring is not None:
            group, buf = self.free.pop(0), None
        else:
            group, buf = None, self._pool.pop()
        if self.ring is not None:
            assert group is not None
            self.ring.write(group, frames, seq)
            data = P.encode(P.Msg.FRAMES, seq, P.FRAMES.pack(group, self.n, ms))
            self.q.append(_Out(data, seq, self.n, group=group))
            self.small_bytes += len(data)
        else:
            assert buf is not None
            b = self._bufs[buf]
            P.HEADER.pack_into(b, 0, P.MAGIC, P.PROTOCOL_VERSION, P.Msg.FRAMES, seq, len(b) - P.HEADER_SIZE)
            P.FRAMES.pack_into(b, P.HEADER_SIZE, P.NO_GROUP, self.n, ms)
            for dst, src in zip(self._views[buf], frames):
                np.copyto(dst, src)
            self.q.append(_Out(b, seq, self.n, buf=buf))
        self._note_queue()

    def _unsent_frames(self) -> _Out | None:
        for e in self.q:
            if e.frames and e.sent == 0:
                return e
        return None

    def _release(self, mask: int) -> str | None:
        if not mask:
            return None
        groups = [g for g in range(32) if mask >> g & 1]
        n = self.ring.groups if self.ring is not None else 0
        for g in groups:
            if g >= n:
                return f"release mask 0x{mask:08x}: slot group {g} does not exist ({n} groups)"
            if g not in self.held:
                return f"release mask 0x{mask:08x}: slot group {g} is not held by the client"
        for g in groups:
            self.held.discard(g)
            self.free.append(g)
        return None

    # -- replies --------------------------------------------------------------------------------
    def _core_error(self, seq: int, e: Exception) -> None:
        code = P.error_code(e)
        if code == P.ErrorCode.INTERNAL:
            log.error("core error: %s: %s", type(e).__name__, e)
            return self._error(seq, code, f"{type(e).__name__}: {e}")
        log.info("request %d refused: %s", seq, e)
        self._error(seq, code, str(e))

    def _error(self, seq: int, code: int, text: str) -> None:
        self.c["errors"] += 1
        self._send_small(P.encode_error(seq, code, text))

    def _dropped(self, seq: int, reason: int, frames: int, text: str) -> None:
        self._send_small(P.encode_text(P.Msg.DROPPED, seq, P.DROPPED, (reason, frames), text))

    def _send_small(self, data: bytes) -> None:
        self.q.append(_Out(data))
        self.small_bytes += len(data)
        self._note_queue()

    def _note_queue(self) -> None:
        self.c["max_unsent_messages"] = max(self.c["max_unsent_messages"], len(self.q))
        self.c["max_unsent_bytes"] = max(self.c["max_unsent_bytes"], self.small_bytes)

    def _flush(self, block: bool = False, deadline_s: float = 5.0) -> None:
        """Write queued messages without blocking (gathered into one writev/sendmsg of up to 64)."""
        end = time.monotonic() + deadline_s
        while self.q:
            views = []
            for e in self.q:
                views.append(e.view[e.sent:])
                if len(views) == 64:
                    break
            n = self.ch.write(views)
            self.c["bytes_out"] += n
            while n and self.q:
                e = self.q[0]
                k = min(n, len(e.view) - e.sent)
                if e.sent == 0 and e.frames:
                    self.c["frames_delivered"] += e.frames
                    if e.group is not None:
                        self.held.add(e.group)  # ownership passes with the first byte
                e.sent += k
                n -= k
                if e.buf is None:
                    self.small_bytes -= k
                if e.sent == len(e.view):
                    self.q.popleft()
                    if e.buf is not None:
                        self._pool.append(e.buf)
            if not self.q:
                return
            if not block or time.monotonic() > end:
                return
            wait_fds([], [self.ch.out_fd], max(0.0, end - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        """{"core": the engine's stats(), "server": counters} (see docs/ipc.md)."""
        s = dict(self.c)
        s.update(transport=self.transport.name.lower(), uptime_s=round(time.monotonic() - self.t0, 3),
                 bytes_in=self.reader.bytes_in, garbage_bytes=self.reader.garbage_bytes,
                 unsent_messages=len(self.q), unsent_bytes=self.small_bytes, rss_kib=rss_kib(),
                 shm_name=self.ring.name if self.ring else None,
                 slot_groups=self.ring.groups if self.ring else 0, groups_free=len(self.free),
                 groups_held_by_client=sorted(self.held))
        return {"core": self.core.stats() if self.core is not None else {}, "server": s}


class _Shutdown(Exception):
    pass


def rss_kib() -> int:
    """Current resident set size of this process in KiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


# --- entry point ----------------------------------------------------------------------------
def serve(transport: str = "stdio", options: dict[str, Any] | None = None, *, engine: str = "core",
          socket_path: str | None = None, slots: int = 3, message_timeout: float = 5.0,
          accept_timeout: float = 120.0, announce: Callable[[str], None] | None = None,
          remove_socket_dir: bool = False) -> int:
    """Run one server to completion (see the module docstring); returns an exit status:
    0 after a normal stop (client left, SHUTDOWN, SIGTERM), 1 if no client connected within
    `accept_timeout` (shm), 2 if the engine could not be built (the error went to the client).

    Builds the engine first (an error is kept and reported to the client at HELLO), then serves
    one client. SIGTERM and SIGINT stop it; the socket, its private directory and the segment
    are removed on every exit path (`remove_socket_dir`: also the directory of a given
    `socket_path`, if empty; `Client.spawn` passes it for the directory it made).

    shm: the client is the first connection that sends something; a connection that closes
    without a byte (a liveness probe: another ``serve`` checking whether the socket is in use)
    is dropped, and the listener stays open while serving, so later probes see the socket in use
    and later clients get ERROR(RUNTIME, busy) instead of taking the server down.
    """
    options = dict(options or {})
    if transport not in ("stdio", "shm"):
        raise ValueError(f"transport: expected 'stdio' or 'shm', got {transport!r}")
    if not 1 <= int(slots) <= MAX_GROUPS:
        raise ValueError(f"slots: expected 1..{MAX_GROUPS}, got {slots!r}")
    if not message_timeout > 0:
        raise ValueError(f"message_timeout: expected seconds > 0, got {message_timeout!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")

    def on_term(signum: int, frame: object) -> None:
        raise Terminated(signal.Signals(signum).name)

    old_term = signal.signal(signal.SIGTERM, on_term)
    channel: Channel | None = None
    listener: socket.socket | None = None
    ring: FrameRing | None = None
    core = None
    own_dir = None
    bound = False
    try:
        if transport == "stdio":
            channel = StdioChannel()
        else:
            if socket_path is None:
                own_dir = tempfile.mkdtemp(prefix="ezvtb-")  # 0700
                socket_path = os.path.join(own_dir, "ezvtb.sock")
            listener = bind_socket(socket_path)
            bound = True
            log.info("listening on %s", socket_path)
            if announce:
                announce(f"ezvtb serve: listening on {socket_path} (shm transport, engine {engine})")
        error: BaseException | None = None
        shape, n = (512, 512, 4), 1
        t0 = time.perf_counter()
        try:
            core = build_engine(engine, options)  # get_core checks every option first
            shape, n = expected_output(engine, options, core)
            log.info("%s engine ready in %.1f s", engine, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported to the client at HELLO
            log.error("could not build the %s engine: %s: %s", engine, type(e).__name__, e)
            error = e
        if transport == "shm":
            assert listener is not None
            if error is None:
                ring = FrameRing(shape, n, int(slots))
            conn = accept_client(listener, accept_timeout)
            if conn is None:
                log.error("no client connected within %g s", accept_timeout)
                return 1
            channel = SocketChannel(conn)
        import ezvtb

        info = {"ezvtb": ezvtb.__version__, "engine": engine, "options": options, "pid": os.getpid()}
        server = Server(channel, P.Transport[transport.upper()], core, shape, n, ring=ring, startup_error=error,
                        message_timeout=message_timeout, info=info, listener=listener)
        why = server.run()
        log.info("stopping: %s", why)
        return 2 if error is not None else 0
    except Terminated as t:
        log.info("stopping: %s", t)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup is short; do not interrupt it
        try:
            if ring is not None:
                ring.close()
            if listener is not None:
                listener.close()
            if bound:
                try:
                    os.unlink(socket_path)
                except FileNotFoundError:
                    pass
                if remove_socket_dir:  # Client.spawn's private directory: gone even if the client was killed
                    try:
                        os.rmdir(os.path.dirname(os.path.abspath(socket_path)))
                    except OSError:
                        pass  # not empty, or already removed by the client
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
            if channel is not None:
                channel.close()
            if core is not None:
                try:
                    core.close()
                except Exception as e:  # noqa: BLE001
                    log.warning("closing the core: %s", e)
        finally:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)


__all__ = ["serve", "Server", "ENGINES", "build_engine", "expected_output", "bind_socket",
           "accept_client", "refuse", "Terminated", "ClientGone"]
