"""Survive a memory-mapped file that another process truncates: a SIGBUS guard for registered address ranges.

A process that reads a page of a shared file mapping beyond the file's current end gets SIGBUS, which kills it;
LMDB maps its whole data file, so one process truncating ``data.mdb`` kills every process that has it open. A
cache is derived data, so the output cache instead treats such a file as damaged (see `ezvtb.cache.lmdb_store`).

`MapGuard` installs (Linux, once per process) a SIGBUS handler that, for a fault inside a registered range,
maps anonymous zero pages over the range from the faulting page to its end (``mmap(MAP_FIXED)``) and counts the
fault; the faulting instruction then reads zeros instead of dying. The owner compares `Registration.faults`
before and after its access and discards what it read (LMDB reports zeroed pages as a damaged tree; entries carry
a checksum). A fault anywhere else restores the previous SIGBUS action and returns, so the fault repeats and is
handled exactly as before (the default action, or faulthandler's report).

Limits: Linux only (elsewhere `supported` is False and nothing is installed). The handler is a ctypes callback
that runs Python code inside a synchronous signal; the code it runs allocates nothing of its own beyond what
ctypes needs, but this is only sound because the alternative is certain death. A later
``signal.signal(SIGBUS, ...)`` or ``faulthandler.enable()`` replaces the handler (and with it this protection).
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import sys
import threading
from dataclasses import dataclass

log = logging.getLogger("ezvtb.cache.mapguard")

_SA_SIGINFO = 0x4
_SA_ONSTACK = 0x08000000
_PROT_READ, _PROT_WRITE = 0x1, 0x2
_MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x02, 0x10, 0x20, 0x4000
_PAGE = mmap.PAGESIZE
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SI_ADDR_OFFSET = 16 if ctypes.sizeof(ctypes.c_void_p) == 8 else 12  # siginfo_t: 3 ints (+ padding), then si_addr


class _SigAction(ctypes.Structure):  # glibc / musl `struct sigaction` on Linux
    _fields_ = [("sa_sigaction", ctypes.c_void_p), ("sa_mask", ctypes.c_ulong * (128 // ctypes.sizeof(ctypes.c_ulong))),
                ("sa_flags", ctypes.c_int), ("sa_restorer", ctypes.c_void_p)]


@dataclass
class Registration:
    """One guarded range [start, end); `faults` counts the SIGBUS faults it absorbed."""

    start: int
    end: int
    faults: int = 0


class MapGuard:
    """The process's SIGBUS guard (`guard()` returns the one instance)."""

    supported = sys.platform.startswith("linux")

    def __init__(self) -> None:
        self._ranges: list[Registration] = []
        self._lock = threading.Lock()
        self._installed = False
        self._old = _SigAction()
        self._libc = None
        self._callback = _HANDLER(self._on_sigbus)  # kept alive as long as the guard
        self.absorbed = 0

    # -- registration ---------------------------------------------------------------------------------------------
    def register(self, start: int, end: int) -> Registration:
        """Guard [start, end) (page-aligned addresses of a file mapping this process holds)."""
        reg = Registration(int(start), int(end))
        with self._lock:
            if self.supported and not self._installed:
                self._install()
            self._ranges = [*self._ranges, reg]  # replaced, never mutated: the handler reads a consistent list
        return reg

    def unregister(self, reg: Registration | None) -> None:
        if reg is None:
            return
        with self._lock:
            self._ranges = [r for r in self._ranges if r is not reg]

    @property
    def installed(self) -> bool:
        return self._installed

    # -- the handler ------------------------------------------------------------------------------------------------
    def _install(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        new = _SigAction()
        new.sa_sigaction = ctypes.cast(self._callback, ctypes.c_void_p).value
        new.sa_flags = _SA_SIGINFO | _SA_ONSTACK
        if libc.sigaction(signal.SIGBUS, ctypes.byref(new), ctypes.byref(self._old)) != 0:
            log.warning("could not install the SIGBUS guard (errno %d); a truncated cache file will kill the process",
                        ctypes.get_errno())
            return
        self._libc = libc
        self._installed = True

    def _on_sigbus(self, signum: int, info: int, context: int) -> None:
        addr = ctypes.c_void_p.from_address(info + _SI_ADDR_OFFSET).value or 0
        for r in self._ranges:
            if r.start <= addr < r.end:
                page = addr - addr % _PAGE
                res = self._libc.mmap(page, r.end - page, _PROT_READ | _PROT_WRITE,
                                      _MAP_PRIVATE | _MAP_FIXED | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
                if res == page:
                    r.faults += 1
                    self.absorbed += 1
                    return
                break
        # not ours (or the zero pages could not be mapped): the previous action handles the repeated fault
        self._libc.sigaction(signal.SIGBUS, ctypes.byref(self._old), None)
        self._installed = False


_GUARD: MapGuard | None = None


def guard() -> MapGuard:
    global _GUARD
    if _GUARD is None:
        _GUARD = MapGuard()
    return _GUARD


def mapping_of(fd: int) -> tuple[int, int] | None:
    """[start, end) of this process's largest mapping of the file open as `fd` (Linux /proc/self/maps), or None."""
    try:
        st = os.fstat(fd)
        best = None
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or int(parts[4]) != st.st_ino:
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                if os.makedev(major, minor) != st.st_dev:
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                if best is None or end - start > best[1] - best[0]:
                    best = (start, end)
        return best
    except (OSError, ValueError):
        return None
