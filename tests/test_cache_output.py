"""OutputCache over the RAM store with synthetic frames: no stale frames after set_character, buffer
ownership, copies on put, counters, corrupt entries, writer errors, argument checks."""
from __future__ import annotations

import numpy as np
import pytest

from ezvtb.cache import OutputCache, RamStore, create_output_cache
from ezvtb.cache.codec import JpegCodec, LosslessCodec
from ezvtb.cache.lmdb_store import LmdbStore

STATS_KEYS = {"hits", "misses", "hit_rate", "entries", "stored_bytes", "evictions", "dropped_writes",
              "mean_encode_ms", "mean_decode_ms", "writes", "pending_hits", "backend", "codec", "budget_bytes"}


def character(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((512, 512, 4), np.uint8)
    img[64:480, 96:416] = rng.integers(0, 256, 4, dtype=np.uint8)
    img[64:480, 96:416, 3] = 255
    return img


def frame(seed: int, i: int) -> np.ndarray:
    f = character(seed)
    f[100 + i: 140 + i, 120:300, :3] = (40 * i + 90 * seed) % 256
    return f


def pose(i: int) -> np.ndarray:
    return np.random.default_rng(1000 + i).random(45).astype(np.float32)


def test_no_frame_of_the_previous_character_ever_comes_back():
    cache = OutputCache(RamStore(64 << 20), LosslessCodec("raw"))
    a, b = character(1), character(2)
    cache.set_character(a, "tha3/v")
    for i in range(5):
        cache.put(pose(i), frame(1, i))
    cache.set_character(b, "tha3/v")  # while A's frames may still be queued
    assert all(cache.get(pose(i)) is None for i in range(5))
    assert cache.flush()
    assert all(cache.get(pose(i)) is None for i in range(5))  # also once they are stored
    cache.put(pose(0), frame(2, 0))
    assert np.array_equal(cache.get(pose(0)), frame(2, 0))
    cache.set_character(a, "tha3/v")  # back to A: A's frames, never B's
    assert np.array_equal(cache.get(pose(0)), frame(1, 0))
    cache.set_character(a, "tha3/other")  # same image, another model variant: nothing
    assert cache.get(pose(0)) is None
    s = cache.stats()
    assert s["entries"] == 6 and s["hits"] == 2
    cache.close()


def test_hits_are_cache_owned_buffers_and_puts_copy_the_frame():
    cache = create_output_cache(100, 0.1)
    cache.set_character(character(3), "v")
    src = frame(3, 1)
    cache.put(pose(1), src)
    src[:] = 0  # the caller reuses its buffer (THA does): the cache kept its own copy
    cache.put(pose(2), frame(3, 2))
    assert cache.flush()
    h1 = cache.get(pose(1))
    assert np.array_equal(h1, frame(3, 1)) and h1.dtype == np.uint8 and h1.shape == (512, 512, 4)
    h2 = cache.get(pose(2))
    assert h2 is h1 and np.array_equal(h1, frame(3, 2))  # documented: the next hit overwrites it
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        cache.get(pose(1))


def test_stats_report_every_counter():
    cache = create_output_cache(85, 0.0001)  # 107 KB, about 8 frames: evictions happen
    s = cache.stats()
    assert STATS_KEYS <= set(s) and s["hit_rate"] is None and s["mean_encode_ms"] is None
    cache.set_character(character(4), "v")
    for i in range(40):
        assert cache.get(pose(i)) is None
        cache.put(pose(i), frame(4, i))
        cache.flush()
    for i in range(35, 40):
        assert cache.get(pose(i)) is not None
    s = cache.stats()
    assert s["hits"] == 5 and s["misses"] == 40 and abs(s["hit_rate"] - 5 / 45) < 1e-12
    assert s["evictions"] > 0 and s["stored_bytes"] <= s["budget_bytes"] == int(0.0001 * 1024**3)
    assert s["writes"] == 40 and s["entries"] == 40 - s["evictions"]
    assert s["mean_encode_ms"] > 0 and s["mean_decode_ms"] > 0 and s["codec"] == "jpeg"
    assert s["dropped_writes"] == 0 and s["write_errors"] == 0
    cache.close()


def test_a_corrupt_entry_is_a_miss_and_is_dropped():
    store = RamStore(8 << 20)
    cache = OutputCache(store, JpegCodec(85, "cv2"))
    cache.set_character(character(5), "v")
    cache.put(pose(0), frame(5, 0))
    assert cache.flush()
    key = cache._keys.key(pose(0))
    blob = bytearray(store.get(key))
    blob[40:400] = bytes(360)
    store.put_many([(key, bytes(blob))])
    assert cache.get(pose(0)) is None
    s = cache.stats()
    assert s["corrupt_entries"] == 1 and s["entries"] == 0
    cache.close()


def test_writer_errors_are_counted_and_the_cache_keeps_serving(tmp_path):
    store = LmdbStore(tmp_path / "db", 8 << 20)
    cache = OutputCache(store, LosslessCodec("raw"))
    cache.set_character(character(6), "v")
    cache.put(pose(0), frame(6, 0))
    assert cache.flush()
    store.close()  # the database goes away under the writer thread
    cache.put(pose(1), frame(6, 1))
    assert cache.flush()
    s = cache.stats()
    assert s["write_errors"] == 1 and s["writes"] == 1 and "closed" in s["store_error"]
    assert cache._thread.is_alive()
    cache.put(pose(2), frame(6, 2))  # still accepts work, still counts
    assert cache.flush() and cache.stats()["write_errors"] == 2
    assert cache.get(pose(0)) is None  # a failing lookup is a miss, not a failed frame
    assert cache.stats()["read_errors"] == 1
    cache.close()


def test_bad_arguments_are_refused():
    cache = create_output_cache(85, 0.01)
    with pytest.raises(RuntimeError, match="set_character"):
        cache.get(pose(0))
    cache.set_character(character(7), "v")
    for bad in (np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512, 4), np.float32), None):
        with pytest.raises(ValueError, match="frame: expected a uint8"):
            cache.put(pose(0), bad)
    with pytest.raises(ValueError, match="pose: expected shape"):
        cache.get(np.zeros(44, np.float32))
    assert cache.get(pose(0)) is None  # still usable
    cache.close()
    for kw, word in ((dict(cacher_quality=0), "cacher_quality"), (dict(cacher_ram_size=0), "cacher_ram_size"),
                     (dict(cacher_ram_size=float("nan")), "cacher_ram_size"),
                     (dict(cacher_db_path="x"), "cacher_on_database")):
        with pytest.raises(ValueError, match=word):
            create_output_cache(**kw)
    with pytest.raises(ValueError, match="queue_size"):
        OutputCache(RamStore(10), LosslessCodec("raw"), queue_size=0)


def test_queued_frames_are_stored_at_exit_without_close(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom ezvtb.cache import create_output_cache\n"
            "c = create_output_cache(100, 0.01, True, sys.argv[1])\n"
            "c.set_character(np.zeros((8, 8, 4), np.uint8), 'v')\n"
            "for i in range(5):\n    c.put(np.full(45, i / 10, np.float32), np.full((8, 8, 4), i, np.uint8))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "db")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    store = LmdbStore(tmp_path / "db", 8 << 20)
    assert store.stats()["entries"] == 5
    store.close()


def test_cli_pose_quantization_flag():
    import argparse

    from ezvtb.cli.core_options import add_core_arguments
    from ezvtb.options import CoreOptions

    def core_kwargs(args):
        return CoreOptions.from_args(args).as_dict()

    p = argparse.ArgumentParser()
    add_core_arguments(p)
    assert core_kwargs(p.parse_args([]))["pose_quantization"] is None
    assert core_kwargs(p.parse_args(["--pose-quantization", "1/16", "--cache"]))["pose_quantization"] == 1 / 16
    assert core_kwargs(p.parse_args(["--pose-quantization", "0.125"]))["pose_quantization"] == 0.125
    for bad in ("0", "2", "1/0", "fine"):
        with pytest.raises(SystemExit):
            p.parse_args(["--pose-quantization", bad])


def test_the_cache_does_not_import_torch_and_doctor_reports_it(capsys):
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom ezvtb.cache import create_output_cache\n"
            "from ezvtb.cache.lmdb_store import LmdbStore\nfrom ezvtb import traces\n"
            "c = create_output_cache(85, 0.01)\nc.set_character(np.zeros((8, 8, 4), np.uint8), 'v')\n"
            "c.put(np.zeros(45, np.float32), np.zeros((8, 8, 4), np.uint8))\nc.close()\n"
            "traces.realistic_trace(10, 20.0)\nassert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    from ezvtb.cli import main

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "output cache: JPEG via" in out and "lossless (q100) codec" in out
