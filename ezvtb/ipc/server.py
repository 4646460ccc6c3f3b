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

import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable


import ezvtb
from ezvtb.ipc import protocol as P
from ezvtb.ipc.channels import Channel, SocketChannel, StdioChannel
from ezvtb.ipc.engine import ENGINES, build_engine, expected_output
from ezvtb.ipc.listener import accept_client, bind_socket
from ezvtb.ipc.session import Server
from ezvtb.ipc.shm import MAX_GROUPS, FrameRing

log = logging.getLogger("ezvtb.ipc")


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that every cleanup `finally` runs."""


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
    res = _Resources(remove_socket_dir=remove_socket_dir)
    try:
        if transport == "stdio":
            res.channel = StdioChannel()
        else:
            if socket_path is None:
                res.own_dir = tempfile.mkdtemp(prefix="ezvtb-")  # 0700
                socket_path = os.path.join(res.own_dir, "ezvtb.sock")
            res.listener = bind_socket(socket_path)
            res.socket_path = socket_path
            log.info("listening on %s", socket_path)
            if announce:
                announce(f"ezvtb serve: listening on {socket_path} (shm transport, engine {engine})")
        res.core, shape, n, error = _build(engine, options)
        if transport == "shm":
            assert res.listener is not None
            if error is None:
                res.ring = FrameRing(shape, n, int(slots))
            conn = accept_client(res.listener, accept_timeout)
            if conn is None:
                log.error("no client connected within %g s", accept_timeout)
                return 1
            res.channel = SocketChannel(conn)
        info = {"ezvtb": ezvtb.__version__, "engine": engine, "options": options, "pid": os.getpid()}
        server = Server(res.channel, P.Transport[transport.upper()], res.core, shape, n, ring=res.ring,
                        startup_error=error, message_timeout=message_timeout, info=info, listener=res.listener)
        why = server.run()
        log.info("stopping: %s", why)
        return 2 if error is not None else 0
    except Terminated as t:
        log.info("stopping: %s", t)
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # cleanup is short; do not interrupt it
        try:
            res.release()
        finally:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)


def _build(engine: str, options: dict[str, Any]) -> tuple[Any, tuple[int, int, int], int, BaseException | None]:
    """(engine, frame shape, frames per inference, None), or (None, placeholders, the error) when it could not
    be built: the error is kept and reported to the client at HELLO."""
    t0 = time.perf_counter()
    try:
        core = build_engine(engine, options)  # get_core checks every option first
        shape, n = expected_output(engine, options, core)
    except Exception as e:  # noqa: BLE001 - reported to the client at HELLO
        log.error("could not build the %s engine: %s: %s", engine, type(e).__name__, e)
        return None, (512, 512, 4), 1, e
    log.info("%s engine ready in %.1f s", engine, time.perf_counter() - t0)
    return core, shape, n, None


@dataclass
class _Resources:
    """What `serve` opened; `release` closes it on every exit path (the socket file and a private directory
    removed, the shared-memory segment unlinked, the core closed)."""

    remove_socket_dir: bool = False  # also remove the (empty) directory of the socket: Client.spawn's own
    channel: Channel | None = None
    listener: socket.socket | None = None
    socket_path: str | None = None  # set once bound
    own_dir: str | None = None  # a private directory made here for the socket
    ring: FrameRing | None = None
    core: Any = None

    def release(self) -> None:
        if self.ring is not None:
            self.ring.close()
        if self.listener is not None:
            self.listener.close()
        if self.socket_path is not None:
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
            if self.remove_socket_dir:  # gone even if the client was killed
                try:
                    os.rmdir(os.path.dirname(os.path.abspath(self.socket_path)))
                except OSError:
                    pass  # not empty, or already removed by the client
        if self.own_dir is not None:
            shutil.rmtree(self.own_dir, ignore_errors=True)
        if self.channel is not None:
            self.channel.close()
        if self.core is not None:
            try:
                self.core.close()
            except Exception as e:  # noqa: BLE001
                log.warning("closing the core: %s", e)


__all__ = ["Terminated", "serve"]
