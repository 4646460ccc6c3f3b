"""The output cache inside real cores (THA3 separable fp32 graphs on CPU): hits return the fresh
frame's pixels, quantised poses share frames, no frame of a previous character, RIFE on cached
frames, and an LMDB cache hit in a second process. Kept to a handful of THA frames (~0.7 s each)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ezvtb import get_core
from ezvtb.pose import quantize_pose
from ezvtb.traces import realistic_trace

pytestmark = pytest.mark.slow
CPU = dict(backend="cpu", use_tensorrt=False, model_half=False)


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def editor_runs(core) -> int:
    return core.stats()["tha"]["runs"]["editor"]


@pytest.fixture(scope="module")
def pose():
    return realistic_trace(200, 20.0)[150]  # mid-speech, head turned a little


@pytest.fixture(scope="module")
def q100_core():
    core = get_core(use_interpolation=False, cacher_quality=100, cacher_ram_size=0.1, pose_quantization=1 / 8, **CPU)
    yield core
    core.close()


def test_a_quantised_pose_seen_before_is_served_exactly_without_running_tha(q100_core, sample_bgra, pose):
    core = q100_core
    core.setImage(sample_bgra("crypko_00"))
    fresh = core.inference(pose)[0].copy()
    runs = editor_runs(core)
    core.cache.flush()
    nearby = quantize_pose(pose.copy(), 1 / 8) + np.float32(0.03)  # snaps to the same 1/8 grid (< 1/16 away)
    hit = core.inference(nearby)[0]
    assert editor_runs(core) == runs  # THA did not run
    assert np.array_equal(hit, fresh)  # lossless, and the same snapped pose
    s = core.stats()["cache"]
    assert s["hits"] >= 1 and s["entries"] >= 1 and s["codec"] in ("qoi", "lz4", "raw")
    assert "cache_get" in core.stats()["latency"]


def test_no_frame_of_the_previous_character_after_set_image(q100_core, sample_bgra, pose):
    core = q100_core
    core.setImage(sample_bgra("crypko_00"))
    a = core.inference(pose)[0].copy()
    core.cache.flush()
    core.setImage(sample_bgra("lambda_00"))
    runs = editor_runs(core)
    b = core.inference(pose)[0].copy()
    assert editor_runs(core) == runs + 1  # a miss: rendered for the new character
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    core.setImage(sample_bgra("crypko_00"))
    assert np.array_equal(core.inference(pose)[0], a)  # and character A's own frame is back


def test_default_quality_hits_match_fresh_frames_and_rife_runs_on_them(sample_bgra):
    core = get_core(use_interpolation=True, interpolation_scale=2, interpolation_half=False, cacher_ram_size=0.1,
                    **CPU)
    try:
        trace = realistic_trace(200, 20.0)
        p0, p1 = trace[60], trace[150]
        core.setImage(sample_bgra("crypko_00"))
        fresh0 = core.inference(p0)[-1].copy()
        out = core.inference(p1)
        fresh1, fresh_mid = out[-1].copy(), out[0].copy()
        core.cache.flush()
        runs = editor_runs(core)
        hit0 = [f.copy() for f in core.inference(p0)]
        hit1 = [f.copy() for f in core.inference(p1)]
        assert editor_runs(core) == runs  # both served from the cache
        assert len(hit0) == len(hit1) == 2 and all(f.shape == (512, 512, 4) for f in hit0 + hit1)
        assert psnr(hit0[-1][..., :3], fresh0[..., :3]) >= 38 and psnr(hit1[-1][..., :3], fresh1[..., :3]) >= 38
        assert psnr(hit0[-1][..., 3], fresh0[..., 3]) >= 38
        # RIFE interpolated between cached frames as between fresh ones: p0 -> p1 again
        assert psnr(hit1[0], fresh_mid) >= 35
        assert not np.array_equal(hit1[0], hit1[-1])
        s = core.stats()["cache"]
        assert s["hits"] == 2 and s["misses"] == 2 and s["hit_rate"] == 0.5 and s["quality"] == 85
        assert s["mean_decode_ms"] > 0 and s["mean_encode_ms"] > 0 and s["dropped_writes"] == 0
    finally:
        core.close()


def test_an_lmdb_cache_is_hit_by_a_second_process(tmp_path, sample_bgra, pose):
    db = tmp_path / "frames.lmdb"
    opts = dict(use_interpolation=False, cacher_quality=100, cacher_ram_size=0.05, cacher_on_database=True,
                cacher_db_path=str(db), **CPU)
    image = sample_bgra("lambda_00")
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "pose.npy", pose)
    core = get_core(**opts)
    core.setImage(image)
    fresh = core.inference(pose)[0].copy()
    core.close()  # flushes the writer
    code = textwrap.dedent("""
        import hashlib, json, sys, numpy as np
        from ezvtb import get_core
        core = get_core(**json.loads(sys.argv[1]))
        core.setImage(np.load(sys.argv[2]))
        f = core.inference(np.load(sys.argv[3]))[0]
        s = core.stats()
        print(json.dumps([hashlib.sha256(f.tobytes()).hexdigest(), s["cache"]["hits"], s["tha"]["runs"]["editor"],
                          'torch' in sys.modules]))
        core.close()
    """)
    r = subprocess.run([sys.executable, "-c", code, json.dumps(opts), str(tmp_path / "image.npy"),
                        str(tmp_path / "pose.npy")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    digest, hits, editor, torch_loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert hits == 1 and editor == 0 and not torch_loaded
    assert digest == hashlib.sha256(fresh.tobytes()).hexdigest()  # the very same pixels
