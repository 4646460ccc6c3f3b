"""The ``shm`` transport's Unix socket: binding it (0600, a stale file replaced), finding the one client
among the connections (liveness probes dropped) and refusing the others."""
from __future__ import annotations

import logging
import os
import select
import socket
import stat
import time

from ezvtb.ipc import protocol as P

log = logging.getLogger("ezvtb.ipc")

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


__all__ = ["BUSY", "accept_client", "bind_socket", "refuse"]
