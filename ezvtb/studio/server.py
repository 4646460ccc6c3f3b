"""The studio's web server: FastAPI routes for the panels, a WebSocket for the live preview, the OBS overlay.

`Studio` holds one render loop (one core), the output folder and the running generate job;
`create_app(studio)` serves it. Errors from the library come back as ``{"error": message}`` with
status 400 (413 for an upload over its limit) and are shown in the page; anything unexpected is
logged with its traceback and reported in one line, and the app keeps serving.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ezvtb.pose import PARAMETER_NAMES
from ezvtb.studio import panels
from ezvtb.studio.camera import BrowserCameraSource
from ezvtb.studio.engine import LiveSession, RenderLoop, encode_png
from ezvtb.studio.options import core_kwargs_from, option_fields

log = logging.getLogger("ezvtb.studio")

STATIC = Path(__file__).with_name("static")
CLIENT_ERRORS = (ValueError, FileNotFoundError, OSError, RuntimeError, KeyError)


class UploadTooLarge(ValueError):
    pass


class Studio:
    """One studio: a render loop around one core built from `options` (core option values by name),
    the output folder, and at most one generate job."""

    def __init__(self, options: dict[str, Any], out_dir: str | Path, image: np.ndarray | None = None,
                 build_core: Callable[[dict[str, Any]], Any] | None = None) -> None:
        core_kwargs_from(options)  # validated before anything starts
        self.options = dict(options)
        self.folder = panels.OutputFolder(out_dir)
        self.uploads = panels.OutputFolder(self.folder.root / "uploads")
        self._build = build_core or _get_core
        if image is None:
            image = _prepare_sample("crypko_00")
        self.loop = RenderLoop(lambda: self._build(self.options), image)
        self.character_messages: list[str] = ["bundled sample crypko_00"]
        self.generate: panels.GenerateJob | None = None
        self.url = ""
        self.closing = threading.Event()

    def start(self) -> "Studio":
        self.loop.start()
        return self

    def close(self) -> None:
        self.closing.set()
        if self.generate is not None:
            self.generate.cancel()
        self.loop.stop()

    # panel actions -------------------------------------------------------------------------------
    def set_character(self, image: np.ndarray, messages: list[str]) -> dict[str, Any]:
        self.loop.call(lambda: self.loop.cmd_set_image(image))
        self.character_messages = messages
        return {"messages": messages}

    def set_options(self, values: dict[str, Any]) -> dict[str, Any]:
        merged = {**self.options, **values}
        core_kwargs_from(merged)  # ValueError naming the flag, before the running core is touched
        old = self.options
        self.options = merged
        try:
            self.loop.call(self.loop.cmd_rebuild)
        except Exception:
            self.options = old
            raise
        return {"options": option_fields(self.options)}

    def start_live(self, form: dict[str, Any]) -> dict[str, Any]:
        source, describe = panels.open_live(form)
        session = LiveSession(source, panels.live_fps(form), describe)
        self.loop.call(lambda: self.loop.cmd_start_live(session))
        return {"source": describe}

    def camera(self) -> BrowserCameraSource | None:
        """The running live source's browser camera, if it has one (the page feeds it frames)."""
        live = self.loop.live
        source = None if live is None else live.source
        source = getattr(source, "base", source)  # lip sync on top of the camera
        return source if isinstance(source, BrowserCameraSource) else None

    def set_output(self, name: str, on: bool) -> dict[str, Any]:
        live = self.loop.live
        if on:
            if live is None:
                raise ValueError("outputs: start a live source first")
            sink, where = panels.open_output(name, live.fps, self.folder)
            self.loop.call(lambda: self.loop.cmd_set_output(name, sink))
            return {"output": name, "on": True, "where": where}
        self.loop.call(lambda: self.loop.cmd_set_output(name, None))
        return {"output": name, "on": False}

    def start_speak(self, wav: Path, fps: float, breathing: float) -> dict[str, Any]:
        job = panels.SpeakJob(wav, self.folder, fps, breathing)
        self.loop.call(lambda: self.loop.cmd_start_job(job))
        return job.status()

    def start_generate(self, kind: str, form: dict[str, Any]) -> dict[str, Any]:
        avail = panels.generate_availability()
        if not avail["available"]:
            raise ValueError(f"generate: {avail['reason']}")
        if self.generate is not None and self.generate.state == "running":
            raise ValueError(f"generate: a {self.generate.kind} run is in progress; cancel it first")
        self.generate = panels.GenerateJob(kind, form, self.folder).start()
        return self.generate.status()

    def stats(self) -> dict[str, Any]:
        s = self.loop.stats()
        s["generate"] = self.generate.status() if self.generate else None
        return s

    def state(self) -> dict[str, Any]:
        pose, version = self.loop.pose()
        return {"options": option_fields(self.options), "poser": panels.poser_layout(),
                "pose": pose.tolist(), "pose_version": version, "samples": panels.sample_names(),
                "character_messages": self.character_messages,
                "live_sources": panels.LIVE_SOURCES,
                "outputs": panels.OUTPUTS, "overlay_url": self.url.rstrip("/") + "/overlay",
                "generate": panels.generate_availability(), "output_folder": str(self.folder.root),
                "limits": {"image_mb": panels.MAX_IMAGE_BYTES // panels.MB,
                           "audio_mb": panels.MAX_AUDIO_BYTES // panels.MB,
                           "pose_mb": panels.MAX_POSE_BYTES // panels.MB}}


def _get_core(options: dict[str, Any]) -> Any:
    from ezvtb import get_core

    return get_core(**core_kwargs_from(options))


def _prepare_sample(name: str) -> np.ndarray:
    from ezvtb import prepare_image

    return prepare_image(panels.sample_path(name))


async def read_limited(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with `UploadTooLarge` past `limit` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"{what}: {int(declared) / panels.MB:.1f} MB; the limit is {limit // panels.MB} MB")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise UploadTooLarge(f"{what}: over the {limit // panels.MB} MB limit")
        chunks.append(chunk)
    return b"".join(chunks)


def upload_name(request: Request, default: str) -> str:
    """The uploaded file's name as the page sent it (URL-encoded header); only shown in messages."""
    return urllib.parse.unquote(request.headers.get("x-filename") or "")[:200] or default


def frame_message(seq: int, png: bytes, meta: dict[str, Any]) -> bytes:
    """One preview message: 4-byte big-endian header length, the JSON header (seq, format, width, height, what
    rendered it), the image (PNG or raw RGBA rows)."""
    head = json.dumps({**meta, "seq": seq}).encode()
    return struct.pack(">I", len(head)) + head + png


def create_app(studio: Studio) -> FastAPI:
    app = FastAPI(title="ezvtb studio", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(UploadTooLarge)
    async def too_large(_request: Request, e: UploadTooLarge) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=413)

    for exc in CLIENT_ERRORS:
        @app.exception_handler(exc)
        async def client_error(_request: Request, e: Exception) -> JSONResponse:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            return JSONResponse({"error": str(msg)}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return JSONResponse({"error": f"internal error ({type(e).__name__}): {e}"}, status_code=500)

    def page(name: str) -> HTMLResponse:
        return HTMLResponse((STATIC / name).read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/")
    def index() -> HTMLResponse:
        return page("index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/overlay")
    def overlay() -> HTMLResponse:
        return page("overlay.html")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        allowed = {p.name: p for p in STATIC.iterdir() if p.suffix in (".js", ".css")}
        if name not in allowed:
            return JSONResponse({"error": f"no static file {name!r}"}, status_code=404)
        return FileResponse(allowed[name], headers={"Cache-Control": "no-store"})

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return studio.state()

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        return studio.stats()

    @app.get("/api/doctor")
    def doctor() -> dict[str, Any]:
        return {"lines": panels.doctor_lines()}

    @app.get("/api/samples/{name}.png")
    def sample_png(name: str) -> FileResponse:
        return FileResponse(panels.sample_path(name), media_type="image/png")

    @app.post("/api/character/sample")
    def character_sample(body: dict[str, Any]) -> dict[str, Any]:
        name = str(body.get("name"))
        return studio.set_character(_prepare_sample(name), [f"bundled sample {name}"])

    @app.post("/api/character/upload")
    async def character_upload(request: Request) -> dict[str, Any]:
        name = upload_name(request, "upload")
        data = await read_limited(request, panels.MAX_IMAGE_BYTES, f"image {name!r}")
        image, messages = await run_in_threadpool(panels.prepare_character, data, name)
        return await run_in_threadpool(studio.set_character, image, messages)

    @app.get("/api/character.png")
    def character_png() -> Response:
        if studio.loop.image is None:
            raise ValueError("character: none set yet")
        return Response(encode_png(studio.loop.image), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/pose")
    def set_pose(body: dict[str, Any]) -> dict[str, Any]:
        if "pose" in body:
            version = studio.loop.set_pose(np.asarray(body["pose"], np.float64))
        else:
            pose, _ = studio.loop.pose()  # named values change only those parameters
            merged = {n: float(x) for n, x in zip(PARAMETER_NAMES, pose)}
            merged.update(body.get("values") or {})
            version = studio.loop.set_pose(panels.pose_from_mapping(merged, "pose"))
        return {"pose_version": version}

    @app.post("/api/preset")
    def preset(body: dict[str, Any]) -> dict[str, Any]:
        pose = panels.preset_pose(str(body.get("name")))
        version = studio.loop.set_pose(pose)
        return {"pose": pose.tolist(), "pose_version": version}

    @app.get("/api/pose.json")
    def pose_json() -> JSONResponse:
        pose, _ = studio.loop.pose()
        return JSONResponse(panels.pose_to_json(pose),
                            headers={"Content-Disposition": 'attachment; filename="pose.json"'})

    @app.post("/api/pose.json")
    async def load_pose_json(request: Request) -> dict[str, Any]:
        name = upload_name(request, "pose JSON")
        data = await read_limited(request, panels.MAX_POSE_BYTES, name)
        pose = panels.pose_from_json(data, name)
        version = studio.loop.set_pose(pose)
        return {"pose": pose.tolist(), "pose_version": version}

    @app.get("/api/frame.png")
    def frame_png() -> Response:
        _seq, frame, _meta = studio.loop.bus.latest()
        if frame is None:
            raise ValueError("frame: nothing rendered yet")
        return Response(encode_png(frame, 6), media_type="image/png",
                        headers={"Content-Disposition": 'attachment; filename="frame.png"'})

    @app.post("/api/options")
    def options(body: dict[str, Any]) -> dict[str, Any]:
        return studio.set_options(dict(body.get("values") or {}))

    @app.post("/api/live/start")
    def live_start(body: dict[str, Any]) -> dict[str, Any]:
        return studio.start_live(body)

    @app.post("/api/live/stop")
    def live_stop() -> dict[str, Any]:
        return {"stopped": studio.loop.call(studio.loop.cmd_stop_live)}

    @app.post("/api/live/output")
    def live_output(body: dict[str, Any]) -> dict[str, Any]:
        return studio.set_output(str(body.get("name")), bool(body.get("on")))

    @app.post("/api/speak")
    async def speak(request: Request) -> dict[str, Any]:
        data = await read_limited(request, panels.MAX_AUDIO_BYTES, "speech")
        if not data:
            raise ValueError("speech: the upload is empty")
        q = request.query_params
        try:
            fps, breathing = float(q.get("fps", "25")), float(q.get("breathing", "4"))
        except ValueError:
            raise ValueError("speak: fps and breathing expect numbers") from None
        wav = studio.uploads.new_path("speech", ".wav")
        wav.write_bytes(data)
        return await run_in_threadpool(studio.start_speak, wav, fps, breathing)

    @app.post("/api/job/cancel")
    def job_cancel() -> dict[str, Any]:
        job = studio.loop.job
        if job is not None:
            job.cancelled.set()
        return {"cancelled": job is not None}

    @app.post("/api/generate/{kind}")
    def generate(kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return studio.start_generate(kind, body)

    @app.post("/api/generate-cancel")
    def generate_cancel() -> dict[str, Any]:
        if studio.generate is not None:
            studio.generate.cancel()
        return {"cancelled": studio.generate is not None}

    @app.get("/files")
    def files() -> dict[str, Any]:
        return {"folder": str(studio.folder.root), "files": studio.folder.files()}

    @app.get("/files/{name}")
    def file(name: str) -> FileResponse:
        return FileResponse(studio.folder.resolve(name))

    @app.websocket("/ws/preview")
    async def preview(ws: WebSocket) -> None:
        """Newest frame only; the next one is sent after the page acknowledges the last (a slow page
        just sees fewer frames). ``?format=rgba`` sends raw RGBA (pages on this machine), default PNG."""
        fmt = ws.query_params.get("format", "png")
        if fmt not in studio.loop.bus.FORMATS:
            await ws.close(code=1003, reason=f"format: expected one of {studio.loop.bus.FORMATS}")
            return
        await ws.accept()
        bus = studio.loop.bus
        fresh = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop_listening = bus.listen(lambda: loop.call_soon_threadsafe(fresh.set))
        last = 0
        try:
            while not studio.closing.is_set():
                if bus.seq <= last:
                    try:
                        await asyncio.wait_for(fresh.wait(), 0.5)
                    except TimeoutError:
                        continue
                fresh.clear()
                # raw RGBA is a copy (about a millisecond): done here; a PNG is encoded on a worker thread
                got = bus.take(last, fmt) if fmt == "rgba" else await run_in_threadpool(bus.take, last, fmt)
                if got is None:
                    continue
                last, data, meta = got
                await ws.send_bytes(frame_message(last, data, meta))
                while not studio.closing.is_set():
                    try:
                        await asyncio.wait_for(ws.receive_text(), 0.5)
                        break
                    except TimeoutError:
                        continue
            await ws.close()
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
            return
        finally:
            stop_listening()

    @app.websocket("/ws/camera")
    async def camera(ws: WebSocket) -> None:
        """Frames from the page's camera -> the face tracker; one reply per frame (the page sends the next
        frame after it), so a slow tracker slows the camera upload, never the render loop."""
        await ws.accept()
        try:
            while not studio.closing.is_set():
                try:
                    msg = await asyncio.wait_for(ws.receive(), 0.5)
                except TimeoutError:
                    continue
                if msg["type"] == "websocket.disconnect":
                    return
                cam = studio.camera()
                try:
                    if cam is None:
                        raise ValueError("camera: start Live with the browser camera as the source first")
                    found = await run_in_threadpool(cam.feed, msg.get("bytes") or b"")
                    reply: dict[str, Any] = {"face": found, "frames": cam.frames, "faces": cam.faces}
                except ValueError as e:
                    reply = {"error": str(e)}
                await ws.send_text(json.dumps(reply))
            await ws.close()
        except (WebSocketDisconnect, RuntimeError, asyncio.CancelledError):
            return

    return app


class Running:
    """A studio served by uvicorn on a background thread (`start_server`); `close()` stops both."""

    def __init__(self, studio: Studio, server: Any, thread: Any, url: str) -> None:
        self.studio, self.server, self.thread, self.url = studio, server, thread, url

    def close(self) -> None:
        self.studio.closing.set()  # preview sockets end first, so the server stops without waiting
        self.server.should_exit = True
        self.thread.join(10)
        self.studio.close()

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bind(host: str, port: int):
    """A listening TCP socket on host:port (port 0: a free port)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def start_server(studio: Studio, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Running:
    """Serve `studio` on host:port from a background thread; returns once the server accepts connections."""
    import threading
    import time

    import uvicorn

    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    studio.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{real_port}/"
    app = create_app(studio)
    # no per-message deflate: compressing a megabyte of RGBA per preview frame costs tens of milliseconds
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, ws_max_size=16 * 1024 * 1024,
                                           ws_per_message_deflate=False, timeout_graceful_shutdown=2))
    studio.start()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ezvtb-studio-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            studio.close()
            raise RuntimeError("the studio's web server did not start")
        time.sleep(0.02)
    return Running(studio, server, thread, studio.url)
