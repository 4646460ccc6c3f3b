"""The server's protocol state machine (`Server`): one client, one core, the messages of `ezvtb.ipc.protocol`.

Single-threaded: a poll loop that reads whatever has arrived, answers every request with exactly one reply,
renders only the newest waiting pose (older ones are answered DROPPED(SUPERSEDED)), and writes without
blocking. Memory is bounded whatever the client does: inbound, by the per-type payload bounds and the read
chunk; outbound, by at most one frames message in flight plus one queued (a newer one replaces a queued one,
answered DROPPED(STALE)) and by stopping reading while more than `OUT_LIMIT` bytes of small replies are unsent.
`ezvtb.ipc.server.serve` sets up the transport and runs it.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from typing import Any

import numpy as np

from ezvtb.ipc import protocol as P
from ezvtb.ipc.channels import Channel, ClientGone, StdioChannel, wait_fds
from ezvtb.ipc.listener import refuse
from ezvtb.ipc.shm import FrameRing

log = logging.getLogger("ezvtb.ipc")

READ_CHUNK = 256 * 1024
OUT_LIMIT = 256 * 1024  # unsent small replies above which the server stops reading requests


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
                return self._error(m.seq, P.ErrorCode.PROTOCOL,
                                   f"SET_IMAGE: {shape} {dtype} needs {nbytes} pixel bytes, the payload carries "
                                   f"{len(m.payload) - P.IMAGE.size}")
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


__all__ = ["OUT_LIMIT", "READ_CHUNK", "Server", "rss_kib"]
