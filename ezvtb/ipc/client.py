"""`Client`: the out-of-process core, with the same API as `ezvtb.Core`.

    from ezvtb.ipc import Client
    with Client.spawn("shm", use_tensorrt=False, use_interpolation=False, use_cacher=False) as core:
        core.setImage(img)
        frames = core.inference(pose)   # list of uint8 (512, 512, 4) BGRA, reused by the next call

Contract (the core's): `setImage` and `inference` validate their input with the core's own
functions (`validate_image`, `validate_pose`) before anything is sent, so a bad image or pose
raises the very ValueError the in-process core raises; the server validates again, and an error
it reports (ValueError, RuntimeError, NotImplementedError, FileNotFoundError) is re-raised here as
the same exception class with the server's message. After any such error the client and the
server stay usable.

Buffer reuse (the core's rule): the arrays returned by `inference` belong to the client and are
overwritten by the next `inference` call; copy them to keep them. With the shm transport they
are private copies, not views of the shared segment, so `close()` never invalidates them.
Thread-safe: calls are serialised by a lock.
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

import numpy as np

from ezvtb.image import validate_image
from ezvtb.ipc import protocol as P
from ezvtb.ipc.shm import RingView
from ezvtb.pose import POSE_SIZE, validate_pose
from ezvtb.stages.timing import Timings

log = logging.getLogger("ezvtb.ipc")

LOG_FLAGS = {"quiet": ["-q"], "info": [], "debug": ["-vv"]}


class ServerGone(ConnectionError):
    """The server process closed the connection (it exited, crashed or was killed)."""


class FramesDropped(RuntimeError):
    """The server answered a pose with DROPPED (see `reason`); the client stays usable."""

    def __init__(self, reason: int, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class _Stream:
    """The client end of the byte stream: blocking sends, exact receives with an optional deadline."""

    def __init__(self, rfd: int, wfd: int, sock: socket.socket | None = None) -> None:
        self.rfd, self.wfd, self.sock = rfd, wfd, sock
        self.nread = 0  # bytes received so far (the client checks it against message boundaries)

    def send(self, *parts: bytes | bytearray | memoryview) -> None:
        try:
            if self.sock is not None:
                if len(parts) == 1:
                    self.sock.sendall(parts[0])
                else:
                    views = [memoryview(p).cast("B") for p in parts]
                    while views:
                        n = self.sock.sendmsg(views)
                        views = _advance(views, n)
            else:
                views = [memoryview(p).cast("B") for p in parts]
                while views:
                    n = os.writev(self.wfd, views)
                    views = _advance(views, n)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ServerGone(f"the ezvtb server closed the connection ({e})") from None

    def recv_into(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill `view` completely. `deadline` (monotonic) bounds the wait for the first byte only."""
        got, n = 0, len(view)
        while got < n:
            if deadline is not None and got == 0:
                left = deadline - time.monotonic()
                if left <= 0 or not _readable(self.rfd, left):
                    raise TimeoutError("no reply from the ezvtb server in time")
            try:
                k = self.sock.recv_into(view[got:]) if self.sock is not None else os.readv(self.rfd, [view[got:]])
            except ConnectionResetError:
                k = 0
            if k == 0:
                raise ServerGone("the ezvtb server closed the connection")
            got += k
            self.nread += k


def _readable(fd: int, timeout: float) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000 + 0.999))))


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    while views and n >= len(views[0]):
        n -= len(views[0])
        views = views[1:]
    if views and n:
        views = [views[0][n:]] + views[1:]
    return views


class _Resources:
    """What must be released even if the user forgets `close()` (run by weakref.finalize)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.files: list[Any] = []
        self.ring: RingView | None = None
        self.tmpdir: str | None = None

    def __call__(self, wait: float = 5.0) -> int | None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass
        self.files = []
        rc = None
        if self.proc is not None:
            try:
                rc = self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                log.warning("ezvtb server (pid %d) did not exit; terminating it", self.proc.pid)
                self.proc.terminate()
                try:
                    rc = self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    rc = self.proc.wait()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        return rc


CLIENT_DIR_PREFIX = "ezvtb-client-"


def sweep_stale_client_dirs(base: str | None = None, min_age_s: float = 60.0) -> int:
    """Remove this user's ``ezvtb-client-*`` socket directories (in `base`, default the temp dir)
    that nobody serves any more: empty, or holding only a socket that refuses connections, and
    untouched for `min_age_s` seconds (a starting server binds well within that). The server
    removes its client's directory itself; this catches the case where both were killed.
    Returns how many were removed. Never raises."""
    removed = 0
    try:
        entries = list(os.scandir(base or tempfile.gettempdir()))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(CLIENT_DIR_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or time.time() - st.st_mtime < min_age_s:
                continue
            names = os.listdir(entry.path)
            if names not in ([], ["ezvtb.sock"]):
                continue
            if names:
                path = os.path.join(entry.path, names[0])
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                probe.settimeout(1.0)
                try:
                    probe.connect(path)
                    continue  # a live server: leave it alone
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
                finally:
                    probe.close()
                os.unlink(path)
            os.rmdir(entry.path)
            removed += 1
            log.debug("removed the stale client directory %s", entry.path)
        except OSError:
            continue
    return removed


class Client:
    """A connection to one ``ezvtb serve`` process; mirrors `ezvtb.Core` (see the module docstring).

    Use `Client.spawn(...)` to start a server, or `Client.connect(path)` for a shm server started
    with ``ezvtb serve --transport shm --socket PATH``. Attributes after the handshake:
    `transport` ("stdio" | "shm"), `frame_shape` (H, W, 4), `frames_per_inference`, `server_pid`,
    `server_info` (dict), `shm_name` (shm transport), `socket_path`.
    """

    def __init__(self, stream: _Stream, transport: str, *, resources: _Resources | None = None,
                 timeout: float | None = None, startup_timeout: float | None = 900.0,
                 socket_path: str | None = None) -> None:
        self._stream = stream
        self._res = resources or _Resources()
        self._finalizer = weakref.finalize(self, self._res, 2.0)
        self.timeout = timeout
        self.transport = transport
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._seq = 0
        self._closed = False
        self._broken: BaseException | None = None
        self._held = 0  # shm: release mask of groups we own, handed back with the next POSE
        self._hdr = bytearray(P.HEADER_SIZE)
        self._boundary = 0  # stream offset where the next reply starts (== nread between calls)
        self.timings = Timings()
        self._counts = {"requests": 0, "frames": 0, "dropped": 0, "errors": 0, "stale_replies": 0}
        self.server_info: dict[str, Any] = {}
        self.ring: RingView | None = None
        self._handshaking = True  # an ERROR with seq 0 (a busy server refusing us) answers the HELLO
        try:
            self._handshake(startup_timeout)
            self._handshaking = False
        except BaseException as e:
            self._describe_exit(e)
            self._abort()
            raise

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def spawn(cls, transport: str = "shm", *, engine: str = "core", slots: int = 3, timeout: float | None = None,
              startup_timeout: float | None = 900.0, message_timeout: float | None = None,
              log_level: str = "quiet", python: str | None = None, stderr: Any = None,
              env: dict[str, str] | None = None, **options: Any) -> "Client":
        """Start ``python -m ezvtb serve`` and connect to it.

        transport: ``shm`` (frames through shared memory) or ``stdio`` (frames through pipes).
        engine: ``core`` (``ezvtb.get_core(**options)``) or ``echo`` (`ezvtb.ipc.echo.EchoCore`:
            no model, for testing an integration). options: `get_core` keyword arguments; an
            invalid one raises get_core's ValueError here.
        slots: shm slot groups. timeout: seconds to wait for each reply (None = no limit).
        startup_timeout: seconds for the server to build the core (first runs export graphs).
        log_level: server logging on its stderr: ``quiet`` (warnings), ``info``, ``debug``.
        stderr: where the server's stderr goes (default: inherited).
        """
        if transport not in ("shm", "stdio"):
            raise ValueError(f"transport: expected 'shm' or 'stdio', got {transport!r}")
        if log_level not in LOG_FLAGS:
            raise ValueError(f"log_level: expected one of {list(LOG_FLAGS)}, got {log_level!r}")
        opts = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
        try:
            opts_json = json.dumps(opts)
        except TypeError as e:
            raise ValueError(f"options: every get_core option must be JSON-serialisable ({e})") from None
        argv = [python or sys.executable, "-m", "ezvtb", *LOG_FLAGS[log_level], "serve", "--transport", transport,
                "--engine", engine, "--options", opts_json, "--slots", str(int(slots))]
        if message_timeout is not None:
            argv += ["--message-timeout", str(float(message_timeout))]
        res = _Resources()
        deadline = None if startup_timeout is None else time.monotonic() + startup_timeout
        try:
            if transport == "stdio":
                res.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                            env=env, bufsize=0, close_fds=True)
                res.files = [res.proc.stdin, res.proc.stdout]
                stream = _Stream(res.proc.stdout.fileno(), res.proc.stdin.fileno())
                return cls(stream, "stdio", resources=res, timeout=timeout, startup_timeout=startup_timeout)
            sweep_stale_client_dirs()  # left behind when a client and its server were both killed
            res.tmpdir = tempfile.mkdtemp(prefix=CLIENT_DIR_PREFIX)  # 0700: only this user can reach the socket
            path = os.path.join(res.tmpdir, "ezvtb.sock")
            res.proc = subprocess.Popen(argv + ["--socket", path, "--accept-timeout", "60", "--remove-socket-dir"],
                                        stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=stderr, env=env, close_fds=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            res.files = [sock]
            while True:
                try:
                    sock.connect(path)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    rc = res.proc.poll()
                    if rc is not None:
                        raise ServerGone(f"ezvtb serve exited with code {rc} before accepting a connection "
                                         "(its stderr says why)") from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"ezvtb serve did not open {path} within {startup_timeout} s") from None
                    time.sleep(0.01)
            left = None if deadline is None else max(1.0, deadline - time.monotonic())
            return cls(_Stream(sock.fileno(), sock.fileno(), sock), "shm", resources=res, timeout=timeout,
                       startup_timeout=left, socket_path=path)
        except BaseException:
            if res.proc is not None and res.proc.poll() is None:
                res.proc.terminate()
            res(wait=5.0)
            raise

    @classmethod
    def connect(cls, socket_path: str | os.PathLike, *, timeout: float | None = None,
                startup_timeout: float | None = 900.0) -> "Client":
        """Connect to a running ``ezvtb serve --transport shm --socket PATH`` (one client per server)."""
        path = os.fspath(socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise ServerGone(f"socket_path: cannot connect to {path!r} ({e.strerror or e})") from None
        res = _Resources()
        res.files = [sock]
        return cls(_Stream(sock.fileno(), sock.fileno(), sock), "shm", resources=res, timeout=timeout,
                   startup_timeout=startup_timeout, socket_path=path)

    def _handshake(self, startup_timeout: float | None) -> None:
        transport = P.Transport[self.transport.upper()]
        seq = self._next_seq()
        try:
            self._stream.send(P.encode(P.Msg.HELLO, seq, P.HELLO.pack(transport, 0, 0)))
        except ServerGone as gone:  # a server may refuse us (busy) before our HELLO arrives: read why
            try:
                self._reply(seq, timeout=1.0, frames_ok=False)
            except (ServerGone, TimeoutError, P.ProtocolError):
                raise gone from None
            raise
        t, payload = self._reply(seq, timeout=startup_timeout, frames_ok=False)
        if t != P.Msg.WELCOME or len(payload) < P.WELCOME.size:
            raise P.ProtocolError(f"handshake: expected WELCOME, got {P.type_name(t)} ({len(payload)} bytes)")
        tr, dtype, n, h, w, c, groups, name_len, pid, size = P.WELCOME.unpack_from(payload)
        if tr != transport or dtype != P.DTYPE_UINT8 or not (1 <= n <= 64 and c == 4 and 0 < h <= 16384
                                                               and 0 < w <= 16384):
            raise P.ProtocolError(f"handshake: unusable WELCOME (transport {tr}, dtype {dtype}, {n} x {(h, w, c)})")
        name = payload[P.WELCOME.size:P.WELCOME.size + name_len].decode("ascii")
        try:
            self.server_info = json.loads(payload[P.WELCOME.size + name_len:] or b"{}")
        except ValueError:
            self.server_info = {}
        self.frame_shape = (h, w, c)
        self.frames_per_inference = n
        self.server_pid = pid
        self.shm_name = name or None
        self._frame_bytes = h * w * c
        self._out = [np.empty(self.frame_shape, np.uint8) for _ in range(n)]
        self._pose_msg = bytearray(P.HEADER_SIZE + P.POSE.size)
        self._pose_f32 = np.ndarray((POSE_SIZE,), "<f4", self._pose_msg, P.HEADER_SIZE + 4)
        self._pose = np.zeros(POSE_SIZE, np.float32)
        if self.transport == "shm":
            self.ring = self._res.ring = RingView(name, self.frame_shape, n, groups)
        log.debug("connected to ezvtb server pid %d: %s, %d x %s", pid, self.transport, n, self.frame_shape)

    # -- the Core API -----------------------------------------------------------------------------
    def setImage(self, img: np.ndarray) -> None:  # noqa: N802 - Core API
        """Set the character: uint8 (512, 512, 4) BGRA (validated here, then by the server)."""
        img = validate_image(img, "img")
        with self._lock:
            self._check()
            seq = self._next_seq()
            kind, itemsize = img.dtype.kind.encode(), img.dtype.itemsize
            dims = list(img.shape) + [0] * (4 - img.ndim)
            if self.ring is not None:
                np.copyto(self.ring.image, img)
                head = P.IMAGE.pack(P.IMAGE_SHM, img.ndim, kind, itemsize, *dims)
                self._call(seq, P.encode(P.Msg.SET_IMAGE, seq, head))
            else:
                head = P.IMAGE.pack(P.IMAGE_INLINE, img.ndim, kind, itemsize, *dims)
                hdr = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Msg.SET_IMAGE, seq, len(head) + img.nbytes)
                self._call(seq, hdr, head, img.reshape(-1))

    def inference(self, pose: Any) -> list[np.ndarray]:
        """The next frame(s) for `pose`: `frames_per_inference` uint8 (H, W, 4) arrays owned by the
        client and overwritten by the next call. Raises `FramesDropped` if the server dropped them."""
        with self._lock:
            self._check()
            p = validate_pose(pose, "pose", out=self._pose)
            seq = self._next_seq()
            msg = self._pose_msg
            P.HEADER.pack_into(msg, 0, P.MAGIC, P.PROTOCOL_VERSION, P.Msg.POSE, seq, P.POSE.size)
            P.RELEASE.pack_into(msg, P.HEADER_SIZE, self._held)
            self._pose_f32[:] = p
            t0 = time.perf_counter()
            self._held = 0  # handed back with this message
            t, payload = self._call(seq, msg, frames_ok=True)
            self.timings.add("round_trip", (time.perf_counter() - t0) * 1e3)
            if t != P.Msg.FRAMES:
                raise P.ProtocolError(f"expected FRAMES for a pose, got {P.type_name(t)}")
            self._counts["frames"] += self.frames_per_inference
            return list(self._out)

    def stats(self) -> dict[str, Any]:
        """The core's stats dict plus ``"ipc": {"server": counters, "client": counters}`` (see docs/ipc.md)."""
        with self._lock:
            self._check()
            seq = self._next_seq()
            t, payload = self._call(seq, P.encode(P.Msg.STATS, seq))
            if t != P.Msg.STATS_REPLY:
                raise P.ProtocolError(f"expected STATS_REPLY, got {P.type_name(t)}")
            s = json.loads(payload)
            out = dict(s.get("core", {}))
            out["ipc"] = {"server": s.get("server", {}),
                          "client": dict(self._counts, transport=self.transport, latency=self.timings.summary())}
            return out

    def close(self) -> None:
        """Ask the server to shut down, wait for it (5 s, then terminate), release everything. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._broken is None and self._stream.nread == self._boundary:
                try:
                    seq = self._next_seq()
                    self._stream.send(P.encode(P.Msg.SHUTDOWN, seq))
                    t, _ = self._reply(seq, timeout=5.0)
                except (OSError, P.ProtocolError, RuntimeError, ValueError) as e:
                    log.debug("shutdown handshake: %s", e)
            self.ring = None
            self._finalizer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- plumbing ---------------------------------------------------------------------------------
    def _abort(self) -> None:
        self._closed = True
        self.ring = None
        if self._res.proc is not None and self._res.proc.poll() is None:
            self._res.proc.terminate()
        self._finalizer()

    def _check(self) -> None:
        if self._closed:
            raise RuntimeError("this ezvtb.ipc.Client is closed")
        if self._broken is None and self._stream.nread != self._boundary:
            self._broken = P.ProtocolError("a call was interrupted in the middle of a reply")
        if self._broken is not None:
            raise ServerGone(f"the connection to the ezvtb server is broken: {self._broken}; close this "
                             "client and start or connect a new one")

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < P.MAX_SEQ else 1
        return self._seq

    def _call(self, seq: int, *parts: Any, frames_ok: bool = False) -> tuple[int, bytes]:
        self._counts["requests"] += 1
        try:
            self._stream.send(*parts)
            return self._reply(seq, timeout=self.timeout, frames_ok=frames_ok)
        except (ServerGone, P.ProtocolError) as e:
            if not isinstance(e, P.ProtocolError) or getattr(e, "fatal", True):
                self._broken = e
                self._describe_exit(e)
            raise

    def _describe_exit(self, e: BaseException) -> None:
        proc = self._res.proc
        if isinstance(e, ServerGone) and proc is not None:
            try:
                rc = proc.wait(1.0)
                e.args = (f"{e.args[0]}; the server (pid {proc.pid}) exited with code {rc}",)
            except subprocess.TimeoutExpired:
                pass

    def _reply(self, seq: int, timeout: float | None, frames_ok: bool = False) -> tuple[int, bytes]:
        """Read messages until the reply to `seq`; returns (type, payload). FRAMES are unpacked into
        `_out`; ERROR / DROPPED raise. Late replies to earlier (timed-out) requests are skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        hdr = memoryview(self._hdr)
        while True:
            start = self._stream.nread
            self._stream.recv_into(hdr, deadline)
            magic, version, t, rseq, length = P.HEADER.unpack_from(hdr)
            self._boundary = start + P.HEADER_SIZE + length
            if magic != P.MAGIC:
                raise P.ProtocolError(f"bad reply header {bytes(hdr)!r}: the stream is out of sync")
            if version != P.PROTOCOL_VERSION:
                payload = self._read_payload(length, P.MAX_JSON)
                text = ""
                if t == P.Msg.ERROR and len(payload) >= P.ERROR.size:
                    text = ": " + P.decode_text(payload, P.ERROR)[1]
                raise P.VersionMismatchError(f"protocol version mismatch: the server speaks version {version}, "
                                             f"this client speaks version {P.PROTOCOL_VERSION}{text}")
            if t == P.Msg.FRAMES:
                self._frames(rseq, length, rseq == seq and frames_ok)
                if rseq == seq:
                    return t, b""
                self._counts["stale_replies"] += 1
                continue
            payload = self._read_payload(length, P.MAX_JSON + P.WELCOME.size + 256)
            if rseq != seq and not (rseq == 0 and t == P.Msg.ERROR and self._handshaking):
                self._counts["stale_replies"] += 1
                log.debug("skipping a late %s reply to request %d", P.type_name(t), rseq)
                continue
            if t == P.Msg.ERROR:
                (code, _), text = P.decode_text(payload, P.ERROR)
                self._counts["errors"] += 1
                exc = P.error_class(code)(text)
                if isinstance(exc, P.ProtocolError):
                    exc.fatal = False  # type: ignore[attr-defined] - the server kept serving
                raise exc
            if t == P.Msg.DROPPED:
                (reason, _), text = P.decode_text(payload, P.DROPPED)
                self._counts["dropped"] += 1
                raise FramesDropped(reason, text)
            return t, payload

    def _read_payload(self, length: int, bound: int) -> bytes:
        if length > bound:
            raise P.ProtocolError(f"reply of {length} bytes exceeds the {bound}-byte bound")
        buf = bytearray(length)
        if length:
            self._stream.recv_into(memoryview(buf))
        return bytes(buf)

    def _frames(self, seq: int, length: int, wanted: bool) -> None:
        head = bytearray(P.FRAMES.size)
        if length < P.FRAMES.size:
            raise P.ProtocolError(f"FRAMES payload of {length} bytes")
        self._stream.recv_into(memoryview(head))
        group, n, ms = P.FRAMES.unpack(head)
        if n != self.frames_per_inference:
            raise P.ProtocolError(f"FRAMES with {n} frames, the handshake announced {self.frames_per_inference}")
        if group == P.NO_GROUP:
            if length != P.FRAMES.size + n * self._frame_bytes:
                raise P.ProtocolError(f"FRAMES payload of {length} bytes for {n} frames of {self.frame_shape}")
            if wanted:
                for out in self._out:
                    self._stream.recv_into(memoryview(out).cast("B"))
            else:
                scratch = memoryview(bytearray(min(self._frame_bytes, 1 << 20)))
                left = length - P.FRAMES.size
                while left:
                    k = min(left, len(scratch))
                    self._stream.recv_into(scratch[:k])
                    left -= k
        else:
            ring = self.ring
            if ring is None or group >= ring.groups or length != P.FRAMES.size:
                raise P.ProtocolError(f"FRAMES names slot group {group} on the {self.transport} transport")
            if wanted:
                if int(ring.seqs[group]) != seq:
                    raise P.ProtocolError(f"slot group {group} holds request {int(ring.seqs[group])}, expected {seq}")
                for dst, src in zip(self._out, ring.frames[group]):
                    np.copyto(dst, src)
            self._held |= 1 << group  # ours now; handed back with the next POSE
        if wanted:
            self.timings.add("server_render", ms)
