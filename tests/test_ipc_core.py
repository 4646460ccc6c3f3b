"""`ezvtb serve` with the real core (THA3 on ONNX Runtime CPU) against the same core in-process."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb import get_core
from ezvtb.ipc import Client
from ezvtb.pose import index

pytestmark = pytest.mark.slow

OPTS = dict(use_tensorrt=False, model_half=False, use_interpolation=False, use_cacher=False, backend="cpu")


def poses() -> list[np.ndarray]:
    a = np.zeros((1, 45), np.float32)
    b = a.copy()
    b[0, index("head_y")] = 0.8
    b[0, index("mouth_aaa")] = 1.0
    b[0, index("eye_wink_left")] = 1.0
    return [a, b]


@pytest.fixture(scope="module")
def core():
    c = get_core(**OPTS)
    yield c
    c.close()


@pytest.mark.parametrize("transport", ["shm", "stdio"])
def test_real_core_frames_through_the_server_match_the_in_process_core(transport, core, sample_bgra):
    img = sample_bgra("crypko_00")
    core.setImage(img)
    with Client.spawn(transport, timeout=600, **OPTS) as c:
        assert c.frames_per_inference == 1 and c.frame_shape == (512, 512, 4)
        assert c.server_info["engine"] == "core"
        c.setImage(img)
        outs = []
        for p in poses():
            got = c.inference(p)[0].copy()
            want = core.inference(p)[0]
            diff = int(np.abs(got.astype(np.int16) - want.astype(np.int16)).max())
            print(f"{transport}: max abs difference server vs in-process = {diff}")
            assert diff <= 1
            outs.append(got)
        assert np.abs(outs[0].astype(np.int16) - outs[1].astype(np.int16)).max() > 50  # the pose moved her
        with pytest.raises(ValueError) as got_err:
            c.inference(np.zeros((2, 45), np.float32))
        with pytest.raises(ValueError) as want_err:
            core.inference(np.zeros((2, 45), np.float32))
        assert str(got_err.value) == str(want_err.value)
        s = c.stats()
        assert s["frames"] == 2 and "tha" in s and s["ipc"]["server"]["frames_delivered"] == 2


def test_real_core_with_rife_x2_delivers_two_frames_per_call_through_shm(sample_bgra):
    opts = dict(OPTS, use_interpolation=True, interpolation_scale=2, interpolation_half=False)
    img = sample_bgra("crypko_01")
    with Client.spawn("shm", timeout=600, **opts) as c:
        assert c.frames_per_inference == 2
        c.setImage(img)
        a, b = poses()
        first = [f.copy() for f in c.inference(a)]
        second = c.inference(b)
        assert len(first) == len(second) == 2
        assert np.array_equal(first[0], first[1])  # after setImage the first call repeats (RIFE rule)
        mid, last = second[0].astype(np.int16), second[1].astype(np.int16)
        assert np.abs(mid - last).max() > 0 and np.abs(mid - first[1].astype(np.int16)).max() > 0


def test_sigterm_while_the_core_is_being_built_still_cleans_up(tmp_path):
    """The socket is bound before the (seconds-long) core build; SIGTERM during the build exits 0
    and removes the socket, and no segment is left behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = tmp_path / "s.sock"
    before = set(Path("/dev/shm").glob("ezvtb_*"))
    proc = subprocess.Popen([sys.executable, "-m", "ezvtb", "-q", "serve", "--transport", "shm", "--socket", str(path),
                             "--options", '{"use_tensorrt": false, "model_half": false, "use_interpolation": false, '
                             '"use_cacher": false, "backend": "cpu"}'], stdout=subprocess.PIPE, text=True)
    try:
        assert str(path) in proc.stdout.readline()  # listening; now building the core
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0
        print(f"exited {time.monotonic() - t0:.2f} s after SIGTERM")
        assert not path.exists()
        assert set(Path("/dev/shm").glob("ezvtb_*")) <= before
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
