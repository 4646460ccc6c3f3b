"""The studio's overheads, measured in a real headless Chromium against an `ezvtb studio` process on this CPU.

1. Slider release -> new frame visible: a keyboard step on a Poser slider (the page's input + change events) until
   the frame of that pose is painted (requestAnimationFrame after drawing), minus the THA frame time the server
   reports for that frame (`core.inference`), split by the server's publish time (same clock) into the way to the
   render, the way back to the page and the paint. Target: at most 100 ms of overhead.
2. Preview vs core on the built-in trace at 10 fps: frames the page showed / frames the core rendered, over the
   same window. Target: at least 90 %. Then the same run with 3 extra preview sockets that never acknowledge a
   frame (stalled tabs): the core's rate with them / without them (dropping preview frames must not slow it).
3. Idle CPU of the studio process (no live source, poser idle), with the page open and with no page.

    python benchmarks/bench_studio.py [--releases 8] [--seconds 30] [--idle 20] [--append]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from _common import pct, publish, table  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url + "api/stats", timeout=60).read())


def post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())


def wait(cond, timeout: float = 600.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def idle_cpu(pid: int, seconds: float) -> float:
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return 100.0 * (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--releases", type=int, default=8, help="slider releases timed")
    ap.add_argument("--seconds", type=float, default=60.0, help="trace run length per condition")
    ap.add_argument("--idle", type=float, default=20.0, help="idle CPU window")
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    import studio_browser as sb

    why = sb.missing()
    if why:
        raise SystemExit(f"bench_studio: {why}")
    from selenium.webdriver.common.keys import Keys
    from websockets.sync.client import connect

    out_dir = tempfile.TemporaryDirectory(prefix="ezvtb-bench-studio-")
    proc = subprocess.Popen([sys.executable, "-m", "ezvtb", "-q", "studio", "--port", "0", "--out-dir", out_dir.name],
                            stdout=subprocess.PIPE, text=True)
    driver = None
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://\S+/)", line)
        if not m:
            raise SystemExit(f"bench_studio: the studio did not start: {line!r}")
        url = m.group(1)
        wait(lambda: stats(url)["ready"] and stats(url)["rendered"] >= 1, what="the first frame")
        idle_no_page = idle_cpu(proc.pid, args.idle)

        driver = sb.open_chromium()
        driver.get(url)
        sb.wait_js(driver, "window.studio && window.studio.ready && window.studio.previewFrames >= 1")
        idle_page = idle_cpu(proc.pid, args.idle)

        # 1. slider release -> frame visible
        driver.find_element("css selector", '#tabs button[data-tab="poser"]').click()
        overhead, total, render, before, after, page = [], [], [], [], [], []
        for i in range(args.releases + 1):  # the first release warms the rotator's caches and is not counted
            name = "head_y" if i % 2 else "mouth_aaa"
            n = driver.execute_script("return window.studio.timings.length")
            driver.find_element("id", f"p-{name}").send_keys(Keys.ARROW_RIGHT if (i // 2) % 2 == 0 else Keys.ARROW_LEFT)
            t = sb.wait_js(driver, f"window.studio.timings.length > {n} && window.studio.timings[{n}].shown !== "
                                   f"undefined && window.studio.timings[{n}]", timeout=600)
            if i:
                total.append(t["shown"] - t["release"])
                render.append(t["render_ms"])
                overhead.append(t["shown"] - t["release"] - t["render_ms"])
                before.append(t["published"] - t["render_ms"] - t["release"])  # release -> render starts
                after.append(t["arrived"] - t["published"])  # frame published -> it arrives in the page
                page.append(t["shown"] - t["arrived"])
            time.sleep(0.3)

        # 2. preview vs core on the trace at 10 fps, then with stalled preview sockets
        driver.find_element("css selector", '#tabs button[data-tab="live"]').click()

        def trace_run(stalled: int) -> tuple[int, int, float]:
            post(url, "api/live/start", {"source": "trace", "fps": 10})
            socks = contextlib.ExitStack()
            for _ in range(stalled):  # connected, never reading: each holds one unacknowledged frame
                socks.enter_context(connect(url.replace("http://", "ws://") + "ws/preview"))
            try:
                wait(lambda: (stats(url).get("live") or {}).get("ticks", 0) >= 1, what="the first live frame")
                first = stats(url)
                seq0, tick0, t0 = first["preview_seq"], first["live"]["ticks"], time.perf_counter()
                time.sleep(args.seconds)
                last = stats(url)
                seq1, tick1, t1 = last["preview_seq"], last["live"]["ticks"], time.perf_counter()
                time.sleep(1.0)  # the last frame's trip to the page
                seqs = driver.execute_script("return window.studio.shownSeqs")
            finally:
                socks.close()
                post(url, "api/live/stop", {})
            # every live frame is published with the next sequence number: the page's share is exact
            shown_in = len({q for q in seqs if seq0 < q <= seq1})
            return seq1 - seq0, shown_in, (tick1 - tick0) / (t1 - t0)

        rendered, shown, core_fps = trace_run(0)
        rendered_s, shown_s, core_fps_s = trace_run(3)
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(30)
        out_dir.cleanup()

    tha = pct(render, 50)
    rows = [
        ["slider release -> frame visible, total (p50 / p95 ms)", f"{pct(total, 50):.0f} / {pct(total, 95):.0f}", ""],
        ["THA frame time of those frames (p50 ms)", f"{tha:.0f}", ""],
        ["overhead over the THA frame (p50 / p95 ms)", f"{pct(overhead, 50):.0f} / {pct(overhead, 95):.0f}",
         "<= 100 ms"],
        ["  release -> the render starts (pose request, render loop wakes; p50 ms)", f"{pct(before, 50):.0f}", ""],
        ["  frame published -> it arrives in the page (p50 ms)", f"{pct(after, 50):.0f}", ""],
        ["  arrived -> painted (p50 ms)", f"{pct(page, 50):.0f}", ""],
        ["trace at 10 fps: core frames / frames the page showed", f"{rendered} / {shown}", ""],
        ["preview share of core frames", f"{100.0 * shown / max(1, rendered):.0f} %", ">= 90 %"],
        ["core fps: 1 page / 1 page + 3 stalled sockets", f"{core_fps:.2f} / {core_fps_s:.2f}", "no slower"],
        ["stalled run: core frames / frames the page showed", f"{rendered_s} / {shown_s}", ""],
        ["idle CPU, no page / page open (% of one core)", f"{idle_no_page:.2f} / {idle_page:.2f}", ""],
    ]
    text = table(["measure", "value", "target"], rows)
    note = (f"{args.releases} slider releases (keyboard steps on mouth_aaa / head_y; each waits for its frame), "
            f"trace runs of {args.seconds:g} s, idle windows of {args.idle:g} s; `ezvtb studio` (CLI defaults: CPU, "
            f"fp32, no RIFE/cache/SR) in its own process, page in headless Chromium on the same machine. The core "
            f"renders the 10 fps trace as fast as the CPU allows (late ticks are skipped, as in `ezvtb run`).")
    publish("Studio web app (bench_studio.py)", text, note, args.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
