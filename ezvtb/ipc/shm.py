"""The shared-memory frame ring of the ``shm`` transport (layout in docs/ipc.md).

One POSIX shared-memory segment, created by the server (its only owner: the server creates it
owner-only, mode 0600, and unlinks it on shutdown), attached by the client::

    offset 0      segment header (`SEGMENT`), then the seq table: groups x u64 at SEQ_TABLE
    image_offset  the input image slot: 512 x 512 x 4 uint8 (SET_IMAGE with source = shm)
    group_offset  `groups` slot groups, `group_stride` bytes apart (page-aligned), each holding
                  `frames_per_group` frames of H x W x C uint8, `frame_stride` bytes apart

Ownership rule (the one that keeps a slot from being overwritten while it is read):
every slot group starts server-owned. The server writes frames only into groups it owns,
stores the request seq in the seq table, then sends FRAMES(group). From the moment the first
byte of that FRAMES message is written to the control channel the group belongs to the client;
the server never writes it again until the client hands it back with RELEASE or with the
release mask of its next POSE. A FRAMES notice still queued in the server (not one byte written)
has not transferred ownership: the server may take that group back for newer frames and answer
the older request with DROPPED(STALE). If no group is free, the POSE is answered DROPPED(NO_SLOT).
The input image slot belongs to the client except while a SET_IMAGE(source = shm) request is
outstanding (the server reads it before replying).

Python 3.11/3.12's `multiprocessing.resource_tracker` registers every attached segment and
unlinks it when the attaching process exits, which would destroy the server's segment when a
client exits. `attach` therefore unregisters the segment (3.13+: ``track=False``).
"""
from __future__ import annotations

import logging
import os
import secrets
import struct
import sys
from multiprocessing import shared_memory

import numpy as np

log = logging.getLogger("ezvtb.ipc")

SEGMENT = struct.Struct("<8sHHHHIIIIQQQQQ")
SEGMENT_MAGIC = b"EZVBSHM1"
LAYOUT_VERSION = 1
SEQ_TABLE = 128  # offset of the groups x u64 seq table
MAX_GROUPS = 32  # the release mask is a u32
PAGE = 4096
IMAGE_SLOT_SHAPE = (512, 512, 4)


def _align(n: int, a: int = PAGE) -> int:
    return (n + a - 1) // a * a


def segment_name() -> str:
    """A fresh, unguessable segment name (<= 30 characters: macOS limits names to 31)."""
    return f"ezvtb_{os.getpid() % 10**7}_{secrets.token_hex(6)}"


class FrameRing:
    """Server side: creates, writes and finally unlinks the segment. Not thread-safe."""

    def __init__(self, frame_shape: tuple[int, int, int], frames_per_group: int, groups: int = 3) -> None:
        if not 1 <= groups <= MAX_GROUPS:
            raise ValueError(f"slots: expected 1..{MAX_GROUPS} slot groups, got {groups}")
        h, w, c = (int(x) for x in frame_shape)
        self.frame_shape = (h, w, c)
        self.frames_per_group = int(frames_per_group)
        self.groups = int(groups)
        self.frame_stride = _align(h * w * c, 64)
        self.group_stride = _align(self.frame_stride * self.frames_per_group)
        self.image_offset = PAGE
        self.image_size = int(np.prod(IMAGE_SLOT_SHAPE))
        self.group_offset = _align(self.image_offset + self.image_size)
        self.size = self.group_offset + self.group_stride * self.groups
        self.shm = shared_memory.SharedMemory(name=segment_name(), create=True, size=self.size)
        self.name = self.shm.name
        buf = self.shm.buf
        SEGMENT.pack_into(buf, 0, SEGMENT_MAGIC, LAYOUT_VERSION, self.groups, self.frames_per_group, 0, h, w, c, 0,
                          self.image_offset, self.image_size, self.group_offset, self.group_stride, self.frame_stride)
        self.seqs = np.ndarray((self.groups,), "<u8", buf, SEQ_TABLE)
        self.seqs[:] = 0
        self.image = np.ndarray(IMAGE_SLOT_SHAPE, np.uint8, buf, self.image_offset)
        self.frames = [[np.ndarray(self.frame_shape, np.uint8, buf, self.group_offset + g * self.group_stride
                                   + i * self.frame_stride) for i in range(self.frames_per_group)]
                       for g in range(self.groups)]
        self.free = list(range(self.groups))  # server-owned groups, lowest first
        log.debug("shm segment %s: %d bytes, %d groups x %d frames %s", self.name, self.size, self.groups,
                  self.frames_per_group, self.frame_shape)

    def write(self, group: int, frames: list[np.ndarray], seq: int) -> None:
        """Copy `frames` into `group` (which the server must own) and record `seq`."""
        for dst, src in zip(self.frames[group], frames):
            np.copyto(dst, src)
        self.seqs[group] = seq

    def close(self) -> None:
        """Drop every view, unmap and unlink the segment (idempotent)."""
        shm, self.shm = getattr(self, "shm", None), None
        if shm is None:
            return
        self.seqs = self.image = None  # type: ignore[assignment]
        self.frames = []
        try:
            shm.close()
        finally:
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        log.debug("shm segment %s unlinked", self.name)


class RingView:
    """Client side: attaches to the server's segment (without ever unlinking it) and checks it."""

    def __init__(self, name: str, frame_shape: tuple[int, int, int], frames_per_group: int, groups: int) -> None:
        self.name = name
        self.shm = attach(name)
        try:
            buf = self.shm.buf
            if len(buf) < SEGMENT.size:
                raise ValueError(f"shm segment {name!r} is too small ({len(buf)} bytes)")
            (magic, layout, g, fpg, _, h, w, c, _, self.image_offset, self.image_size, self.group_offset,
             self.group_stride, self.frame_stride) = SEGMENT.unpack_from(buf, 0)
            if magic != SEGMENT_MAGIC or layout != LAYOUT_VERSION:
                raise ValueError(f"shm segment {name!r}: not an ezvtb frame ring of layout {LAYOUT_VERSION} "
                                 f"(magic {magic!r}, layout {layout})")
            if (g, fpg, (h, w, c)) != (groups, frames_per_group, tuple(frame_shape)):
                raise ValueError(f"shm segment {name!r} holds {g} groups x {fpg} frames {(h, w, c)}, the handshake "
                                 f"announced {groups} x {frames_per_group} {tuple(frame_shape)}")
            end = self.group_offset + self.group_stride * g
            if end > len(buf) or self.image_offset + self.image_size > len(buf):
                raise ValueError(f"shm segment {name!r}: layout needs {end} bytes, segment has {len(buf)}")
            self.groups, self.frames_per_group, self.frame_shape = g, fpg, (h, w, c)
            self.seqs = np.ndarray((g,), "<u8", buf, SEQ_TABLE)
            self.image = np.ndarray(IMAGE_SLOT_SHAPE, np.uint8, buf, self.image_offset)
            self.frames = [[np.ndarray(self.frame_shape, np.uint8, buf, self.group_offset + k * self.group_stride
                                       + i * self.frame_stride) for i in range(fpg)] for k in range(g)]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Drop every view and unmap (the server unlinks). Idempotent."""
        shm, self.shm = getattr(self, "shm", None), None
        if shm is None:
            return
        self.seqs = self.image = None  # type: ignore[assignment]
        self.frames = []
        shm.close()


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to an existing segment without letting this process's resource tracker unlink it."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    shm = shared_memory.SharedMemory(name=name)
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - never leave an attached segment half-set-up
        shm.close()
        raise
    return shm
