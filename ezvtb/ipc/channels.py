"""Byte channels of the ``ezvtb serve`` process: stdio (a private duplicate of stdout) and a connected socket.

Both are non-blocking writers: `Channel.write` writes as much as fits now and says how much; reads
happen only after `wait_fds` said readable. A client that went away raises `ClientGone`.
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import stat

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


__all__ = ["Channel", "ClientGone", "SocketChannel", "StdioChannel", "grow_pipe", "wait_fds"]
