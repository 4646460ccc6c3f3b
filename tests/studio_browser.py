"""Headless Chromium for the studio's browser tests and benchmark (Debian's chromium + chromium-driver via
Selenium). `missing()` names what is absent so callers can skip with that reason."""
from __future__ import annotations

import importlib.util
import shutil
import time
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver", "chromium-driver")


def _which(names: tuple[str, ...]) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for mod, pkg in (("selenium", "selenium"), ("fastapi", "ezvtb[web]"), ("uvicorn", "ezvtb[web]")):
        if importlib.util.find_spec(mod) is None:
            return f"the {mod} module is not installed (pip install {pkg})"
    if _which(CHROMIUM_NAMES) is None:
        return "chromium is not installed (Debian package chromium)"
    if _which(DRIVER_NAMES) is None:
        return "chromedriver is not installed (Debian package chromium-driver)"
    return None


def open_chromium(width: int = 1400, height: int = 1000, fake_camera: str | None = None) -> Any:
    """A headless Chromium WebDriver (no network downloads: the system browser and driver); `fake_camera`: a
    .y4m / .mjpeg file the page's getUserMedia camera plays instead of a device."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _which(CHROMIUM_NAMES)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}", "--force-device-scale-factor=1",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    if fake_camera:
        for a in ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-video-capture={fake_camera}"):
            opts.add_argument(a)
    return webdriver.Chrome(service=Service(_which(DRIVER_NAMES)), options=opts)


def wait_js(driver: Any, script: str, timeout: float = 300.0, interval: float = 0.1) -> Any:
    """Poll ``return <script>`` until it is truthy; its value (AssertionError with the script on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {script}")
        time.sleep(interval)


def element_png(driver: Any, element_id: str):
    """The element as displayed (screenshot), decoded to a uint8 BGR(A) array."""
    import cv2
    import numpy as np

    png = driver.find_element("id", element_id).screenshot_as_png
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)


def write_y4m(path: Any, frames: list, fps: int = 10) -> None:
    """Uncompressed YUV4MPEG2 (4:2:0) video of BGR uint8 frames (even sizes): Chromium's fake camera format."""
    import cv2

    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
