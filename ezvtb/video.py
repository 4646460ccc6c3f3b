"""Writing frames to video files: H.264 mp4 and VP9 WebM with alpha (ffmpeg), GIF (Pillow).

The encoder (`video_encoder`): the ffmpeg that the imageio-ffmpeg package ships (a static build
from PyPI, an ezvtb dependency), else an ``ffmpeg`` on PATH. Only when neither exists, mp4 falls
back to OpenCV's MPEG-4 Part 2 (mp4v; many browsers do not play it, and no sound) and WebM is
refused. ``EZVTB_VIDEO_ENCODER=opencv`` forces the fallback.

| suffix | video | alpha | sound |
|---|---|---|---|
| ``.mp4`` | H.264, yuv420p, faststart (browsers, editors) | composited over `background` | AAC, from `audio=` |
| ``.webm`` | VP9, yuva420p | kept (OBS media source, browsers, editors) | Opus, from `audio=` |
| ``.gif`` | 256 colours (Pillow) | composited | - |

Every file is written through `ezvtb.atomic.AtomicOutput`: a temporary sibling, checked (the
encoder's exit status and frame count, the container's frame count read back), flushed to the
disk, then renamed; a failure (a full disk, say) raises `OutputError` naming the file and leaves
the previous file in place.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ezvtb.atomic import AtomicOutput, OutputError, commit_without_replacing, kept
from ezvtb.outputs import check_fps

log = logging.getLogger("ezvtb.video")

VIDEO_SUFFIXES = (".mp4", ".webm")


def composite(frame: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Alpha-composite a uint8 BGRA frame over a BGR background colour -> uint8 BGR (new array)."""
    a = frame[:, :, 3:4].astype(np.float32) * (1.0 / 255.0)
    bg = np.asarray(background, np.float32)
    out = frame[:, :, :3].astype(np.float32) * a + bg * (1.0 - a)
    return (out + 0.5).astype(np.uint8)


def parse_color(text: str) -> tuple[int, int, int]:
    """'#RRGGBB' or 'R,G,B' -> a BGR tuple (ValueError naming the argument otherwise)."""
    s = text.strip()
    try:
        if s.startswith("#") and len(s) == 7:
            r, g, b = (int(s[i:i + 2], 16) for i in (1, 3, 5))
        else:
            r, g, b = (int(v) for v in s.split(","))
    except ValueError:
        raise ValueError(f"background: expected '#RRGGBB' or 'R,G,B', got {text!r}") from None
    if not all(0 <= v <= 255 for v in (r, g, b)):
        raise ValueError(f"background: channel values must be 0..255, got {text!r}")
    return (b, g, r)


@functools.lru_cache(maxsize=None)
def _find_ffmpeg() -> tuple[str | None, str]:
    if os.environ.get("EZVTB_VIDEO_ENCODER", "").lower() == "opencv":
        return None, "EZVTB_VIDEO_ENCODER=opencv"
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        return exe, f"imageio-ffmpeg {imageio_ffmpeg.__version__}"
    except Exception as e:  # noqa: BLE001 - not installed, or its binary missing for this platform
        why = f"imageio-ffmpeg: {type(e).__name__}"
    exe = shutil.which("ffmpeg")
    return (exe, "PATH") if exe else (None, why)


def ffmpeg_exe() -> str | None:
    """The ffmpeg executable ezvtb encodes with, or None (then mp4 falls back to OpenCV)."""
    return _find_ffmpeg()[0]


def video_encoder() -> str:
    """One line saying which encoder writes videos (for `ezvtb doctor`)."""
    exe, where = _find_ffmpeg()
    if exe is None:
        return (f"OpenCV mp4v (MPEG-4 Part 2; no WebM, no sound in videos) - no ffmpeg ({where}); "
                f"`pip install imageio-ffmpeg` gives H.264 mp4, VP9+alpha WebM and sound")
    return f"ffmpeg ({where}: {exe}): H.264 mp4, VP9 WebM with alpha, AAC/Opus sound"


def _ffmpeg_command(exe: str, tmp: Path, fps: float, size: tuple[int, int], alpha: bool,
                    audio: str | None) -> list[str]:
    w, h = size
    cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-progress", "pipe:1",
           "-f", "rawvideo", "-pix_fmt", "bgra" if alpha else "bgr24", "-s", f"{w}x{h}", "-r", repr(float(fps)),
           "-i", "pipe:0"]
    if audio is not None:
        cmd += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0"]
    if tmp.suffix.lower() == ".webm":
        cmd += ["-c:v", "libvpx-vp9", "-pix_fmt", "yuva420p", "-auto-alt-ref", "0", "-b:v", "0", "-crf", "30",
                "-deadline", "good", "-cpu-used", "4", "-row-mt", "1"]
        if audio is not None:
            cmd += ["-c:a", "libopus", "-b:a", "128k"]
        cmd += ["-f", "webm"]
    else:
        if w % 2 or h % 2:  # yuv420p needs even sides
            cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        cmd += ["-c:v", "libx264", "-preset", "medium", "-crf", "18", "-pix_fmt", "yuv420p"]
        if audio is not None:
            cmd += ["-c:a", "aac", "-b:a", "160k"]
        cmd += ["-movflags", "+faststart", "-f", "mp4"]
    return cmd + ["-fflags", "+bitexact", "-flags:v", "+bitexact", str(tmp)]


def container_frames(path: str | os.PathLike) -> int:
    """Frames an mp4/WebM says it holds (read back with OpenCV; -1 when it cannot be opened)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return -1
        return int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        cap.release()


class VideoWriter:
    """Writes frames to an mp4 or WebM (module docstring) and optionally a gif; a context manager.

    write(frame): uint8 BGRA (H, W, 4) or BGR (H, W, 3) frames of `size` (width, height); the
    mp4/gif composite alpha over `background` (BGR), the WebM keeps it. audio: a sound file muxed
    in (needs ffmpeg; `has_audio` says whether it was). token: names this attempt's temporary
    file (`ezvtb.atomic.temp_name`). Nothing appears under `path` until `close` succeeds; `abort`
    (or an exception inside ``with``) removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int],
                 background: tuple[int, int, int] = (255, 255, 255), gif: str | os.PathLike | None = None, *,
                 audio: str | os.PathLike | None = None, token: str | None = None) -> None:
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        if self.suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"out: expected a path ending in .mp4 or .webm, got {str(path)!r}")
        self.fps = check_fps(fps, "fps")
        if (len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size)):
            raise ValueError(f"size: expected (width, height) as positive ints, got {size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.background = background
        self.gif = Path(gif) if gif else None
        if self.gif is not None and self.gif.suffix.lower() != ".gif":
            raise ValueError(f"gif: expected a path ending in .gif, got {str(gif)!r}")
        self.alpha = self.suffix == ".webm"
        self.frames = 0
        self._gif_frames: list[np.ndarray] = []
        self._proc: subprocess.Popen | None = None
        self._cv: Any = None
        exe = ffmpeg_exe()
        if exe is None and self.alpha:
            raise RuntimeError(f"out: writing WebM ({str(path)!r}) needs ffmpeg: `pip install imageio-ffmpeg`")
        self.has_audio = audio is not None and exe is not None
        if audio is not None and exe is None:
            log.warning("no ffmpeg (pip install imageio-ffmpeg): %s gets no sound track", self.path)
        self.encoder = "ffmpeg" if exe else "opencv-mp4v"
        self._out = AtomicOutput(self.path, token)
        try:
            if exe is not None:
                self._log = tempfile.TemporaryFile()
                self._progress = tempfile.TemporaryFile()
                cmd = _ffmpeg_command(exe, self._out.tmp, self.fps, self.size, self.alpha,
                                      str(audio) if self.has_audio else None)
                # own process group: a Ctrl-C in the terminal reaches ezvtb, which then finishes or
                # stops the encoder itself
                self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=self._progress, stderr=self._log,
                                              start_new_session=True)
            else:
                import cv2

                self._cv = cv2.VideoWriter(str(self._out.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
                if not self._cv.isOpened():
                    raise OutputError(f"out: OpenCV cannot open an mp4 writer for {str(self.path)!r}")
        except BaseException:
            self._stop_encoder()
            self._out.discard()
            raise

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4) \
                or frame.shape[:2] != (self.size[1], self.size[0]):
            raise ValueError(f"frame: expected uint8 ({self.size[1]}, {self.size[0]}, 4 or 3), "
                             f"got {frame.dtype} {frame.shape}")
        if self.alpha:
            data = frame if frame.shape[2] == 4 else np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
        else:
            data = composite(frame, self.background) if frame.shape[2] == 4 else frame
        if self._proc is not None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(memoryview(np.ascontiguousarray(data)).cast("B"))
            except (BrokenPipeError, ValueError, OSError) as e:
                raise OutputError(f"{str(self.path)!r}: the encoder stopped ({self._ffmpeg_error() or e})") from None
        else:
            self._cv.write(np.ascontiguousarray(data))
        if self.gif is not None:
            bgr = data[:, :, :3] if not self.alpha else composite(data, self.background)
            self._gif_frames.append(bgr[:, :, ::-1].copy())
        self.frames += 1

    def _ffmpeg_error(self) -> str:
        if self.encoder != "ffmpeg":
            return ""
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return re.sub(r"^\[[^\]]*\]\s*", "", lines[-1])[:300] if lines else ""  # ffmpeg's last word

    def _stop_encoder(self, kill: bool = True) -> int | None:
        rc = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            if kill:
                proc.kill()
            else:
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()
                except OSError:
                    pass
            rc = proc.wait()
            if kill and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        if self._cv is not None:
            self._cv.release()
            self._cv = None
        return rc

    def _verify(self, tmp: Path) -> None:
        if self.frames == 0:
            raise OutputError("no frames were written")
        if self.encoder == "ffmpeg":
            self._progress.seek(0)
            counts = re.findall(rb"^frame=(\d+)", self._progress.read(), re.M)
            encoded = int(counts[-1]) if counts else -1
            if encoded != self.frames:
                raise OutputError(f"the encoder wrote {encoded} of {self.frames} frames")
        if tmp.stat().st_size == 0:
            raise OutputError("the file is empty")
        if self.suffix == ".mp4":
            n = container_frames(tmp)
            if n != self.frames:
                raise OutputError(f"only {max(n, 0)} of its {self.frames} frames are readable")

    def close(self, keep_existing: bool = False) -> Path:
        """Finish the file, check it and rename it to `path`, then write the gif; returns the
        video's final path. keep_existing: never replace an existing file at `path`; the video then
        goes to a free sibling name ``STEM.partial.SUFFIX`` (`ezvtb.atomic.commit_without_replacing`)."""
        try:
            rc = self._stop_encoder(kill=False)
        except BaseException:
            self.abort()
            raise
        if rc:
            err = self._ffmpeg_error()
            self._out.discard()
            self._close_logs()
            code = 256 - rc if 128 < rc < 256 else None  # ffmpeg exits with a negated errno
            reason = err or (os.strerror(code) if code else "no message")
            raise OutputError(f"{str(self.path)!r} could not be written (ffmpeg exit status {rc}: {reason}); "
                              f"{kept(self.path)}", code)
        try:
            if keep_existing:
                final = commit_without_replacing(self._out, "partial", self._verify)
            else:
                final = self._out.commit(self._verify)
        finally:
            self._close_logs()
        if self.gif is not None and self._gif_frames:
            write_gif(self.gif, self._gif_frames, 1.0 / self.fps)
        return final

    def abort(self) -> None:
        """Stop without writing anything (the temporary file is removed)."""
        self._stop_encoder(kill=True)
        self._out.discard()
        self._close_logs()

    def _close_logs(self) -> None:
        for f in (getattr(self, "_log", None), getattr(self, "_progress", None)):
            if f is not None:
                f.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_gif(path: str | os.PathLike, frames: Iterable[np.ndarray], seconds_per_frame: float) -> Path:
    """uint8 RGB (H, W, 3) frames -> a looping GIF, written atomically (checked: frame count)."""
    from PIL import Image

    imgs = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    if not imgs:
        raise ValueError("frames: nothing to write")

    def verify(tmp: Path) -> None:
        with Image.open(tmp) as im:
            n = getattr(im, "n_frames", 1)
        if n < 1:
            raise OutputError("the gif holds no frames")

    out = AtomicOutput(path)
    with out:
        imgs[0].save(out.tmp, format="GIF", save_all=True, append_images=imgs[1:], loop=0,
                     duration=max(1, int(round(1000 * seconds_per_frame))))
        return out.commit(verify)


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float) -> Path:
    """uint8 RGB (T, H, W, 3) frames -> an mp4/WebM via `VideoWriter` (atomic, checked)."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("frames: nothing to write")
    h, w = first.shape[:2]
    with VideoWriter(path, fps, (w, h)) as writer:
        writer.write(np.ascontiguousarray(first[:, :, ::-1]))
        for f in it:
            writer.write(np.ascontiguousarray(f[:, :, ::-1]))
    return writer.path
