"""Live pose sources: iFacialMocap, OpenSeeFace and VMC receivers, file and trace playback.

Open one with `open_source(url)`:

| URL | what |
|---|---|
| ``ifm://PHONE:PORT`` | iFacialMocap (UDP text v1/v2). Sends the start string to the phone at PHONE:PORT (default port 49983) and listens on ``listen`` (default: PORT) |
| ``osf://BIND:PORT`` | OpenSeeFace (UDP binary, 1785-byte faces, 1729 without features); listens on BIND:PORT (default 11573) |
| ``vmc://BIND:PORT`` | VMC protocol (OSC over UDP, python-osc); listens on BIND:PORT (default 39539) |
| ``file://PATH`` | (N, 45) poses from a ``.npy`` or ``.json`` file, played at ``fps`` |
| ``trace://[NAME]`` | the built-in realistic pose trace, played at ``fps`` |
| ``audio://PATH.wav``, ``audio://mic`` | speech -> mouth shapes (`ezvtb.live.lipsync`) |
| ``cam://0``, ``cam://PATH``, ``video://PATH`` | webcam or video file -> face tracker (`ezvtb.live.facetrack`) |

Query parameters (``?a=1&b=2``): every live source takes ``min_cutoff``, ``beta``, ``d_cutoff``
(One-Euro filter, `ezvtb.live.filters`; ``filter=0`` turns it off), ``mirror=1``, ``breathing``
(period in s, 0 = off), ``invert=pitch,yaw,roll`` (flip head axes) and the `MappingConfig` numbers
(``jaw_lo``, ``brow_down``, ...). ``ifm`` also takes ``listen`` (local port) and ``bind`` (local
address; default all interfaces, or 127.0.0.1 when PHONE is a loopback address); ``osf`` takes
``face`` (face id; default: the first face of each packet). Playback sources take ``fps``
(default 30), ``loop`` (default 1) and ``step=1`` (advance one pose per `latest` call instead of
by wall clock).

Receivers run on a daemon thread and keep only the latest pose: nothing is queued, a slow reader
just sees fewer poses. Every datagram is counted; a malformed one is counted and dropped and the
receiver keeps running. `latest()` returns a `PoseSample` whose pose array is a fresh copy owned by
the caller.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
import struct
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ezvtb.demo_script import demo_poses
from ezvtb.extras import require
from ezvtb.live.filters import OneEuroFilter
from ezvtb.live.lipsync import open_audio_source
from ezvtb.live.mapping import (
    OSF_FEATURES,
    VRM_PRESETS,
    Mapper,
    MappingConfig,
    TrackerState,
    breathing_value,
    canonical_blendshape,
    osf_head_angles,
    osf_to_blendshapes,
    quat_mul,
    quaternion_to_unity_euler,
    unity_to_arkit,
)
from ezvtb.live.source_base import (
    PLAYBACK_KEYS,
    TRACKER_KEYS,
    PlaybackClock,
    PoseSample,
    PoseSource,
    filter_params,
    inverted_axes,
    mapping_config,
    playback_options,
    query_number,
)
from ezvtb.pose import POSE_MAX, POSE_MIN, POSE_SIZE, index

log = logging.getLogger("ezvtb.live")

BREATHING = index("breathing")
IFM_PORT, OSF_PORT, VMC_PORT = 49983, 11573, 39539
IFM_START = b"iFacialMocap_sahuasouryya9218sauhuiayeta91555dy3719|sendDataVersion=v2"
IFM_HANDSHAKE_INTERVAL = 2.0  # s without data before the start string is sent again


# --- parsers (pure functions, tested directly and through the receivers) ----------------------
def _floats(text: str, n: int, what: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != n:
        raise ValueError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    vals = [float(v) for v in parts]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{what}: non-finite number in {text!r}")
    return vals


def parse_ifacialmocap(text: str) -> TrackerState:
    """One iFacialMocap packet (v1 ``name-NN`` or v2 ``name&NN``, ``|``-separated) -> state.

    Blendshape values are 0..100 (scaled to 0..1); ``=head#rx,ry,rz,tx,ty,tz`` gives the head
    angles in degrees (pitch, yaw, roll); ``rightEye#``/``leftEye#`` are checked and ignored (the
    eyeLook blendshapes carry the gaze). Unknown names are ignored. Raises ValueError for a
    packet with a malformed item or with neither blendshapes nor head angles.
    """
    state = TrackerState()
    for part in text.split("|"):
        part = part.strip()
        if not part:
            continue
        if part.startswith(("=head#", "head#")):
            v = _floats(part.split("#", 1)[1], 6, "head")
            state.head = (v[0], v[1], v[2])
        elif part.startswith(("rightEye#", "leftEye#")):
            _floats(part.split("#", 1)[1], 3, part.split("#", 1)[0])
        else:
            sep = "&" if "&" in part else "-" if "-" in part else None
            if sep is None:
                continue  # a flag word some app versions add; not data
            name, _, value = part.rpartition(sep)
            canon = canonical_blendshape(name)
            if canon is None:
                continue
            x = float(value)
            if not math.isfinite(x):
                raise ValueError(f"{name}: non-finite value {value!r}")
            state.blendshapes[canon] = min(1.0, max(0.0, x / 100.0))
    if not state.blendshapes and state.head is None:
        raise ValueError("no blendshapes and no head angles in the packet")
    return state


OSF_HEADER = struct.Struct("<di2f2fBf4f3f3f")  # time, id, cam w/h, eye open R/L, success, pnp error, quat, euler, translation
OSF_POINTS_BYTES = 4 * (68 + 68 * 2 + 70 * 3)  # confidences, 2-D landmarks, 3-D points
OSF_FEATURES_STRUCT = struct.Struct("<14f")
OSF_FACE_BYTES = OSF_HEADER.size + OSF_POINTS_BYTES + OSF_FEATURES_STRUCT.size  # 1785
OSF_FACE_BYTES_NO_FEATURES = OSF_HEADER.size + OSF_POINTS_BYTES  # 1729
assert (OSF_FACE_BYTES, OSF_FACE_BYTES_NO_FEATURES) == (1785, 1729)


class OsfFace(NamedTuple):
    time: float
    id: int
    eye_open_right: float
    eye_open_left: float
    success: bool
    euler: tuple[float, float, float]
    features: dict[str, float] | None


def parse_openseeface(data: bytes) -> list[OsfFace]:
    """Split one OpenSeeFace datagram into faces (1785 bytes each, or 1729 without features)."""
    n = len(data)
    if n and n % OSF_FACE_BYTES == 0:
        stride, has_features = OSF_FACE_BYTES, True
    elif n and n % OSF_FACE_BYTES_NO_FEATURES == 0:
        stride, has_features = OSF_FACE_BYTES_NO_FEATURES, False
    else:
        raise ValueError(f"OpenSeeFace packet of {n} bytes: expected a multiple of {OSF_FACE_BYTES} "
                         f"(or {OSF_FACE_BYTES_NO_FEATURES} without features)")
    faces = []
    for off in range(0, n, stride):
        h = OSF_HEADER.unpack_from(data, off)
        t, fid, eye_r, eye_l, success, euler = h[0], h[1], h[4], h[5], h[6], h[12:15]
        feats = None
        if has_features:
            vals = OSF_FEATURES_STRUCT.unpack_from(data, off + OSF_HEADER.size + OSF_POINTS_BYTES)
            feats = dict(zip(OSF_FEATURES, vals))
        nums = [eye_r, eye_l, *euler, *(feats.values() if feats else ())]
        if not all(math.isfinite(v) for v in nums):
            raise ValueError(f"OpenSeeFace face {fid}: non-finite eye, angle or feature values")
        faces.append(OsfFace(t, fid, eye_r, eye_l, bool(success), tuple(euler), feats))
    return faces


def osf_state(face: OsfFace) -> TrackerState:
    """A `TrackerState` from one OpenSeeFace face (head only when the 3-D fit succeeded)."""
    bs = osf_to_blendshapes(face.eye_open_left, face.eye_open_right, face.features)
    return TrackerState(blendshapes=bs, head=osf_head_angles(face.euler) if face.success else None)


class VmcAccumulator:
    """VMC marionette state across OSC messages.

    ``/VMC/Ext/Blend/Val name value`` values are staged and become current at
    ``/VMC/Ext/Blend/Apply``; ``/VMC/Ext/Bone/Pos name px py pz qx qy qz qw`` for ``Head`` (and
    ``Neck``, composed as neck * head) sets the head rotation. Other addresses are ignored.
    `feed(datagram)` returns True when the datagram changed the pose (an Apply or a head bone).
    Raises ValueError for a datagram that is not OSC; messages with wrong argument types are
    skipped and counted in `malformed_messages`.
    """

    def __init__(self) -> None:
        require("io", "the VMC input (vmc://)")  # when the source opens, not in its receiver thread
        self.pending: dict[str, float] = {}
        self.blend: dict[str, float] = {}
        self.head_q: tuple[float, float, float, float] | None = None
        self.neck_q: tuple[float, float, float, float] | None = None
        self.malformed_messages = 0
        self.messages = 0

    def feed(self, data: bytes) -> bool:
        from pythonosc.osc_packet import OscPacket, ParseError  # the optional io extra (checked in __init__)

        try:
            packet = OscPacket(data)
        except ParseError as e:
            raise ValueError(f"not an OSC packet: {e}") from None
        changed = False
        for timed in packet.messages:
            msg = timed.message
            self.messages += 1
            try:
                changed |= self._message(msg.address, msg.params)
            except (ValueError, TypeError, IndexError):
                self.malformed_messages += 1
        return changed

    def _message(self, address: str, p: list[Any]) -> bool:
        if address == "/VMC/Ext/Blend/Val":
            if len(p) != 2 or not isinstance(p[0], str) or not isinstance(p[1], (int, float)) \
                    or not math.isfinite(p[1]):
                raise ValueError(address)
            self.pending[p[0]] = float(p[1])
            return False
        if address == "/VMC/Ext/Blend/Apply":
            self.blend.update(self.pending)
            self.pending.clear()
            return True
        if address == "/VMC/Ext/Bone/Pos":
            if len(p) != 8 or not isinstance(p[0], str) or not all(isinstance(v, (int, float)) for v in p[1:]):
                raise ValueError(address)
            if p[0] not in ("Head", "Neck"):
                return False
            q = tuple(float(v) for v in p[4:8])
            quaternion_to_unity_euler(q)  # validates (finite, non-zero)
            if p[0] == "Head":
                self.head_q = q  # type: ignore[assignment]
            else:
                self.neck_q = q  # type: ignore[assignment]
            return p[0] == "Head"
        return False

    def state(self) -> TrackerState:
        st = TrackerState()
        for name, v in self.blend.items():
            canon = canonical_blendshape(name)
            if canon is not None:
                st.blendshapes[canon] = min(1.0, max(0.0, v))
            else:
                preset = VRM_PRESETS.get(name.lower())
                if preset is not None:
                    st.presets[preset] = min(1.0, max(0.0, v))
        if self.head_q is not None:
            q = quat_mul(self.neck_q, self.head_q) if self.neck_q is not None else self.head_q
            st.head = unity_to_arkit(quaternion_to_unity_euler(q))
        return st


# --- live (UDP) sources ------------------------------------------------------------------------
class LiveSource(PoseSource):
    """Common part of the UDP receivers: socket, thread, mapping, filter, latest-pose slot."""

    default_port = 0

    def __init__(self, url: str, bind: tuple[str, int], mapping: MappingConfig | None = None,
                 filter_params: dict[str, float] | None = None, invert: tuple[str, ...] = ()) -> None:
        self.url = url
        self.mapper = Mapper(mapping)
        fp = {"min_cutoff": 1.0, "beta": 1.0, "d_cutoff": 1.0} if filter_params is None else filter_params
        self.filter = OneEuroFilter(POSE_SIZE, **fp) if fp else None
        bad = [a for a in invert if a not in ("pitch", "yaw", "roll")]
        if bad:
            raise ValueError(f"input: invert expects a comma-separated subset of pitch,yaw,roll, got {bad}")
        self._invert = tuple(-1.0 if a in invert else 1.0 for a in ("pitch", "yaw", "roll"))
        self._head: tuple[float, float, float] | None = None
        self._lock = threading.Lock()
        self._sample: PoseSample | None = None
        self._seq = 0
        self.packets = 0
        self.malformed = 0
        self.errors = 0
        self._last_packet = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged_malformed = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(bind)
        except OSError as e:
            self.sock.close()
            raise OSError(f"input {url}: cannot listen on UDP {bind[0] or '0.0.0.0'}:{bind[1]}: {e}") from None
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()

    # thread ---------------------------------------------------------------------------------
    def start(self) -> "LiveSource":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"ezvtb-source-{type(self).__name__}",
                                            daemon=True)
            self._thread.start()
            log.info("%s listening on %s:%d", self.url, *self.address)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._tick()
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                self.errors += 1
                time.sleep(0.01)
                continue
            now = time.perf_counter()
            self.packets += 1
            self._last_packet = now
            try:
                self._handle(data, addr, now)
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                self._malformed(e)
            except Exception as e:  # noqa: BLE001 - a packet must never kill the receiver
                self._malformed(e)
                log.exception("%s: unexpected error on a packet", self.url)

    def _malformed(self, e: BaseException) -> None:
        self.malformed += 1
        if self._logged_malformed < 5:
            self._logged_malformed += 1
            log.warning("%s: malformed packet dropped (%s)%s", self.url, e,
                        "; further ones are only counted" if self._logged_malformed == 5 else "")

    def _tick(self) -> None:
        """Called before each receive (handshakes)."""

    def _handle(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        raise NotImplementedError

    # publishing -----------------------------------------------------------------------------
    def publish(self, state: TrackerState, now: float) -> None:
        """Map, filter and store `state` as the latest pose (keeps the previous head when absent)."""
        if state.head is not None:
            state.head = tuple(a * s for a, s in zip(state.head, self._invert))  # type: ignore[assignment]
            self._head = state.head
        else:
            state.head = self._head
        pose = self.mapper.to_pose(state)
        if self.filter is not None:
            pose = np.clip(self.filter(pose, now), POSE_MIN, POSE_MAX).astype(np.float32)
        with self._lock:
            self._seq += 1
            self._sample = PoseSample(pose, now, self._seq)

    def latest(self) -> PoseSample | None:
        with self._lock:
            s = self._sample
        if s is None:
            return None
        pose = s.pose.copy()
        pose[BREATHING] = breathing_value(time.perf_counter(), self.mapper.config.breathing_period)
        return PoseSample(pose, s.t, s.seq)

    def stats(self) -> dict[str, Any]:
        age = time.perf_counter() - self._last_packet if self._last_packet else None
        return {"url": self.url, "address": f"{self.address[0]}:{self.address[1]}", "packets": self.packets,
                "malformed": self.malformed, "poses": self._seq, "socket_errors": self.errors,
                "last_packet_age_s": age}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self.sock.close()


class IFacialMocapSource(LiveSource):
    """iFacialMocap receiver: sends the start string to the phone, parses its v1/v2 text packets."""

    def __init__(self, url: str, phone: tuple[str, int], bind: tuple[str, int], **kw: Any) -> None:
        super().__init__(url, bind, **kw)
        self.phone = phone
        self._last_handshake = -1e9
        self.handshakes = 0

    def _tick(self) -> None:
        now = time.perf_counter()
        if now - self._last_packet > IFM_HANDSHAKE_INTERVAL and now - self._last_handshake > IFM_HANDSHAKE_INTERVAL:
            self._last_handshake = now
            try:
                self.sock.sendto(IFM_START, self.phone)
                self.handshakes += 1
            except OSError as e:
                self.errors += 1
                log.debug("%s: start string not sent: %s", self.url, e)

    def _handle(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        self.publish(parse_ifacialmocap(data.decode("utf-8")), now)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "handshakes": self.handshakes}


class OpenSeeFaceSource(LiveSource):
    """OpenSeeFace receiver (binary faces; `face` picks a face id, default the first one)."""

    def __init__(self, url: str, bind: tuple[str, int], face: int | None = None, **kw: Any) -> None:
        super().__init__(url, bind, **kw)
        self.face = face
        self.no_face = 0

    def _handle(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        faces = parse_openseeface(data)
        chosen = faces[0] if self.face is None else next((f for f in faces if f.id == self.face), None)
        if chosen is None:
            self.no_face += 1
            return
        self.publish(osf_state(chosen), now)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "packets_without_selected_face": self.no_face}


class VmcSource(LiveSource):
    """VMC protocol marionette receiver (blendshapes and the head bone)."""

    def __init__(self, url: str, bind: tuple[str, int], **kw: Any) -> None:
        super().__init__(url, bind, **kw)
        self.acc = VmcAccumulator()

    def _handle(self, data: bytes, addr: tuple[str, int], now: float) -> None:
        if self.acc.feed(data):
            self.publish(self.acc.state(), now)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "messages": self.acc.messages, "malformed_messages": self.acc.malformed_messages}


# --- playback ----------------------------------------------------------------------------------
def _load_npy(p: Path, argument: str) -> np.ndarray:
    """The array in a ``.npy`` file, its header checked against the file's size before anything is allocated
    (a header claiming more data than the file holds is refused, however large the claim)."""
    with open(p, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, SyntaxError, EOFError) as e:
            raise ValueError(f"{argument}: {str(p)!r} is not a .npy file ({e})") from None
        if dtype.hasobject:
            raise ValueError(f"{argument}: {str(p)!r} holds Python objects, not numbers")
        need = int(np.prod(shape, dtype=object)) * dtype.itemsize
        have = os.fstat(f.fileno()).st_size - f.tell()
        if need > have:
            raise ValueError(f"{argument}: {str(p)!r} claims shape {shape} ({need} bytes) but holds only {have} "
                             "bytes of data (truncated or damaged)")
        f.seek(0)
        return np.load(f, allow_pickle=False)


def load_poses(path: str | os.PathLike, argument: str = "trace") -> np.ndarray:
    """A float32 (N, 45) pose array from ``.npy`` or ``.json`` (a list of 45-number lists, or
    ``{"poses": [...]}``). Values are clipped to the parameter ranges; ValueError names `argument`."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{argument}: no such file {str(p)!r}")
    try:
        if p.suffix.lower() == ".npy":
            a = _load_npy(p, argument)
        elif p.suffix.lower() == ".json":
            obj = json.loads(p.read_text())
            if isinstance(obj, dict):
                obj = obj.get("poses")
            a = np.asarray(obj, dtype=np.float64)
        else:
            raise ValueError(f"{argument}: expected a .npy or .json file of (N, 45) poses, got {str(p)!r}")
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{argument}: cannot read {str(p)!r}: {e}") from None
    except ValueError as e:
        if str(e).startswith(argument):
            raise
        raise ValueError(f"{argument}: {str(p)!r} is not an (N, 45) array of numbers: {e}") from None
    if a.ndim != 2 or a.shape[1] != POSE_SIZE or a.shape[0] < 1:
        raise ValueError(f"{argument}: expected an (N, 45) pose array with N >= 1 in {str(p)!r}, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{argument}: expected real numbers in {str(p)!r}, got dtype {a.dtype}")
    if not np.isfinite(a).all():
        rows = np.flatnonzero(~np.isfinite(a).all(axis=1))
        raise ValueError(f"{argument}: NaN or inf in {str(p)!r} at rows {rows[:5].tolist()}")
    return np.clip(a, POSE_MIN, POSE_MAX).astype(np.float32)


def builtin_trace(n_frames: int = 300, fps: float = 30.0, name: str = "") -> np.ndarray:
    """The built-in realistic trace (`ezvtb.traces` when present, else the demo script)."""
    try:
        from ezvtb import traces  # type: ignore[attr-defined]
    except ImportError:
        traces = None
    if traces is not None:
        return np.asarray(traces.realistic_trace(n_frames, fps, **({"name": name} if name else {})), np.float32)
    if name:
        raise ValueError(f"input: named traces need ezvtb.traces, got trace://{name}")
    return demo_poses(n_frames, fps)


class PlaybackSource(PoseSource):
    """Plays an (N, 45) array at `fps` by wall clock (or one pose per `latest` call with `step`)."""

    def __init__(self, url: str, poses: np.ndarray, fps: float = 30.0, loop: bool = True, step: bool = False) -> None:
        self.clock = PlaybackClock(fps, step)
        self.url = url
        self.poses = poses
        self.fps = self.clock.fps
        self.loop = bool(loop)
        self.step = bool(step)
        self._index = -1

    def start(self) -> "PlaybackSource":
        """Starts the playback clock (the first `latest` does it otherwise)."""
        self.clock.start()
        return self

    def latest(self) -> PoseSample | None:
        i = self.clock.frame()
        n = len(self.poses)
        if i >= n and not self.loop:
            self._index = n
            i = n - 1
        else:
            self._index = i
            i %= n
        return PoseSample(self.poses[i].copy(), time.perf_counter(), self._index + 1)

    @property
    def finished(self) -> bool:
        """True once a non-looping playback has returned its last pose."""
        return not self.loop and self._index >= len(self.poses) - 1

    def stats(self) -> dict[str, Any]:
        return {"url": self.url, "poses": len(self.poses), "position": self._index, "fps": self.fps}


# --- URLs --------------------------------------------------------------------------------------
def _host_port(url: str, netloc: str, default_port: int, default_host: str) -> tuple[str, int]:
    host, sep, port = netloc.rpartition(":")
    if not sep:
        host, port = netloc, ""
    host = host.strip("[]") or default_host
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"input: expected HOST:PORT in {url!r}, got port {port!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"input: port out of range in {url!r}: {p}")
    return host, p


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def open_source(url: str) -> PoseSource:
    """A started pose source for `url` (table in the module docstring). ValueError for a bad URL."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"input: expected a URL such as vmc://127.0.0.1:39539, ifm://PHONE_IP:49983, "
                         f"osf://127.0.0.1:11573, file://poses.npy or trace://, got {url!r}")
    scheme, rest = url.split("://", 1)
    rest, _, query = rest.partition("?")
    try:
        q = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ValueError(f"input: malformed query string {query!r} in {url!r}") from None
    scheme = scheme.lower()

    def check_keys(allowed: set[str]) -> None:
        unknown = sorted(set(q) - allowed)
        if unknown:
            raise ValueError(f"input: unknown option(s) {unknown} for {scheme}:// (allowed: {sorted(allowed)})")

    if scheme in ("file", "trace"):
        check_keys(PLAYBACK_KEYS | {"frames"})
        fps, loop, step = playback_options(q, loop=True)
        if scheme == "file":
            poses = load_poses(urllib.parse.unquote(rest), "input")
        else:
            frames = int(query_number("frames", q.get("frames", "300")))
            if frames < 1:
                raise ValueError(f"input: frames expects >= 1, got {frames}")
            poses = builtin_trace(frames, fps, rest)
        return PlaybackSource(url, poses, fps, loop, step).start()

    if scheme == "audio":  # speech -> mouth (ezvtb.live.lipsync)
        return open_audio_source(url, rest, q)
    if scheme in ("cam", "video"):  # webcam or video file -> face tracker (ezvtb.live.facetrack)
        from ezvtb.live.camera import open_camera_source  # loads OpenCV and the tracker's graphs

        return open_camera_source(url, scheme, rest, q)
    live = {"ifm": IFM_PORT, "osf": OSF_PORT, "vmc": VMC_PORT}
    if scheme not in live:
        raise ValueError(f"input: unknown scheme {scheme!r} in {url!r}; expected ifm, osf, vmc, file, trace, audio, "
                         "cam or video")
    extra = {"ifm": {"listen", "bind"}, "osf": {"face"}, "vmc": set()}[scheme]
    check_keys(TRACKER_KEYS | extra)
    host, port = _host_port(url, rest, live[scheme], "0.0.0.0" if scheme != "ifm" else "")
    if scheme == "ifm" and not host:
        raise ValueError(f"input: ifm:// needs the phone's address, e.g. ifm://192.168.1.20:49983, got {url!r}")
    kw: dict[str, Any] = {"mapping": mapping_config(q), "filter_params": filter_params(q)}
    if q.get("invert"):
        kw["invert"] = inverted_axes(q)
    if scheme == "ifm":
        listen = int(query_number("listen", q["listen"])) if "listen" in q else port
        bind = q.get("bind", "127.0.0.1" if is_loopback(host) else "0.0.0.0")
        src: LiveSource = IFacialMocapSource(url, (host, port), (bind, listen), **kw)
    elif scheme == "osf":
        face = int(query_number("face", q["face"])) if "face" in q else None
        src = OpenSeeFaceSource(url, (host, port), face=face, **kw)
    else:
        src = VmcSource(url, (host, port), **kw)
    return src.start()
