"""LMDB backend with real environments and real processes: cross-process reads, SIGKILL in the middle
of writing, eviction when the map is full, map resizing by another process, fork, and bad paths."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import lmdb
import numpy as np
import pytest

from ezvtb.cache import OutputCache, create_output_cache
from ezvtb.cache.codec import JpegCodec, LosslessCodec, decode_blob
from cache_frames import CHILD_HEADER, character, frame, pose
from ezvtb.cache.lmdb_store import FORMAT, LmdbStore

MiB = 1 << 20

FRAMES = CHILD_HEADER + "from cache_frames import character, frame, pose\n"  # what the children use


def _run(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-c", FRAMES + textwrap.dedent(code), *args], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_a_second_process_reads_the_first_ones_frames_while_it_runs(tmp_path):
    db = tmp_path / "cache"
    cache = create_output_cache(85, 0.05, True, db)
    cache.set_character(character(), "tha3/test")
    for i in range(6):
        assert cache.get(pose(i)) is None
        cache.put(pose(i), frame(i))
    assert cache.flush()
    r = _run("""
        import sys, json
        from ezvtb.cache import create_output_cache
        c = create_output_cache(85, 0.05, True, sys.argv[1])
        c.set_character(character(), "tha3/test")
        out = []
        for i in range(8):
            f = c.get(pose(i))
            out.append(None if f is None else float(np.abs(f.astype(int) - frame(i)).mean()))
        c.set_character(character(), "tha3/other-variant")
        out.append(c.get(pose(0)) is None)
        print(json.dumps([out, c.stats()["hits"]]))
        c.close()
    """, str(db))
    import json

    errs, hits = json.loads(r.stdout)
    assert hits == 6 and errs[6] is None and errs[7] is None and errs[8] is True
    assert all(e is not None and e < 3.0 for e in errs[:6])
    # and the first process reads frames that the second one writes
    _run("""
        import sys
        from ezvtb.cache import create_output_cache
        c = create_output_cache(85, 0.05, True, sys.argv[1])
        c.set_character(character(), "tha3/test")
        c.put(pose(100), frame(100))
        c.close()
    """, str(db))
    got = cache.get(pose(100))
    assert got is not None and psnr(got[..., :3], frame(100)[..., :3]) > 38
    cache.close()


KILL_CHILD = """
import sys
from ezvtb.cache.lmdb_store import LmdbStore
from ezvtb.cache.codec import LosslessCodec
store = LmdbStore(sys.argv[1], 1 << 30)
codec = LosslessCodec("raw")
base = [frame(j) for j in range(8)]
def blob(i):
    f = base[i % 8].copy()
    f[0, 0] = np.frombuffer(int(i).to_bytes(4, "little"), np.uint8)
    return codec.encode(f)
i = int(sys.argv[2])
while i < int(sys.argv[2]) + 4000:
    batch = [(i.to_bytes(20, "big"), blob(i)) for i in range(i, i + 8)]
    print("begin", i, flush=True)
    store.put_many(batch)
    print("commit", i, i + 8, flush=True)
    i += 8
"""


def _expected(i: int) -> np.ndarray:
    f = frame(i % 8)
    f[0, 0] = np.frombuffer(int(i).to_bytes(4, "little"), np.uint8)
    return f


def test_sigkill_in_the_middle_of_writing_keeps_every_committed_frame(tmp_path):
    db = tmp_path / "killed"
    start, mid_write_kills, rng = 0, 0, np.random.default_rng(7)
    out = np.empty((512, 512, 4), np.uint8)
    for attempt in range(6):
        p = subprocess.Popen([sys.executable, "-c", FRAMES + KILL_CHILD, str(db), str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        commits = 0
        lines = []
        while commits < 3:
            line = p.stdout.readline()
            assert line, p.stderr.read()[-3000:]
            lines.append(line.split())
            commits += lines[-1][0] == "commit"
        time.sleep(float(rng.uniform(0.0, 0.05)))
        p.send_signal(signal.SIGKILL)
        rest = p.stdout.read()
        p.wait()
        assert p.returncode == -signal.SIGKILL
        lines += [ln.split() for ln in rest.splitlines() if ln.strip()]
        committed = [int(w[1]) for w in lines if w[0] == "commit"]
        last = lines[-1]
        mid_write_kills += last[0] == "begin"
        # the database opens and serves every committed frame, exactly
        store = LmdbStore(db, 1 << 30)
        for b in committed:
            for i in range(b, b + 8):
                blob = store.get(i.to_bytes(20, "big"))
                assert blob is not None, f"committed frame {i} lost (attempt {attempt})"
                assert np.array_equal(decode_blob(blob, out), _expected(i))
        # the batch being written when the process died is all there or not there at all
        if last[0] == "begin":
            b = int(last[1])
            present = [store.get(i.to_bytes(20, "big")) is not None for i in range(b, b + 8)]
            assert all(present) or not any(present), present
        assert store.stats()["entries"] >= 8 * len(committed)
        store.close()
        start = max(committed) + 16
        if mid_write_kills >= 2:
            break
    assert mid_write_kills >= 1, "no kill landed inside put_many; the test did not exercise its case"


def test_a_full_map_evicts_the_oldest_entries_and_never_raises(tmp_path):
    db = tmp_path / "small"
    budget = 4 * MiB
    store = LmdbStore(db, budget)
    rng = np.random.default_rng(3)
    keys = [i.to_bytes(20, "big") for i in range(400)]
    sizes = rng.integers(30_000, 70_000, 400)
    hot = keys[5]
    for i in range(0, 400, 4):
        store.put_many([(keys[j], bytes([j % 256]) * int(sizes[j])) for j in range(i, i + 4)])
        if store.get(hot) is not None:
            store.note_access(hot)  # kept recently used: must survive eviction
    s = store.stats()
    assert s["evictions"] > 300 and s["map_full_retries"] >= 1  # both eviction paths ran
    assert s["stored_bytes"] <= budget and s["map_size"] <= budget and s["map_grown"] == 0
    assert os.path.getsize(db / "data.mdb") <= budget
    assert all(store.get(k) == bytes([j % 256]) * int(sizes[j]) for j, k in enumerate(keys[-20:], 380))
    assert store.get(keys[0]) is None and store.get(keys[6]) is None
    assert store.get(hot) == bytes([5]) * int(sizes[5])
    # indexes agree with the frames; the counters are persisted across a restart
    with store._env.begin() as txn:
        n = {name: txn.stat(db_)["entries"] for name, db_ in zip(("frames", "access", "order"), store._dbs)}
        total = sum(len(v) for _, v in txn.cursor(db=store._frames))
    assert n["frames"] == n["access"] == n["order"] == s["entries"] and total == s["stored_bytes"]
    store.close()
    again = LmdbStore(db, budget)
    assert again.stats()["entries"] == s["entries"] and again.stats()["stored_bytes"] == s["stored_bytes"]
    assert again.get(hot) is not None
    # a blob larger than the whole budget is refused, counted, and nothing else is lost
    assert again.put_many([(b"x" * 20, bytes(5 * MiB))]) == 0 and again.stats()["rejected"] == 1
    assert again.stats()["entries"] == s["entries"]
    again.close()


def test_a_reader_recovers_when_another_process_grows_the_map(tmp_path):
    db = tmp_path / "resized"
    store = LmdbStore(db, 2 * MiB)
    store.put_many([(b"a" * 20, b"first")])
    _run("""
        import sys
        from ezvtb.cache.lmdb_store import LmdbStore
        s = LmdbStore(sys.argv[1], 32 << 20)
        assert s.get(b"a" * 20) == b"first"
        s.put_many([(b"b" * 20, bytes(3 << 20))])  # more than the first process's map
        s.close()
    """, str(db))
    assert store.get(b"b" * 20) == bytes(3 << 20)  # MapResizedError inside, handled
    assert store.stats()["map_resized"] == 1
    store.put_many([(b"c" * 20, b"third")])  # and it writes again (evicting to its own budget)
    assert store.get(b"c" * 20) == b"third"
    store.close()


def _forked_read(store: LmdbStore, conn) -> None:
    conn.send([store.get(b"k" * 20), store.put_many([(b"child" * 4, b"from the child")])])


def test_a_forked_child_reopens_the_environment(tmp_path):
    store = LmdbStore(tmp_path / "forked", 8 * MiB)
    store.put_many([(b"k" * 20, b"parent value")])
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_forked_read, args=(store, b))
    p.start()
    got = a.recv()
    p.join(30)
    assert got == [b"parent value", 1] and p.exitcode == 0
    assert store.get(b"child" * 4) == b"from the child"
    store.close()


def test_bad_paths_give_clear_errors_naming_the_path(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a database, just text that is long enough to have a header\n" * 4)
    with pytest.raises(ValueError, match=r"cacher_db_path: .*notes\.txt.* not an LMDB database"):
        LmdbStore(afile, 8 * MiB)
    assert afile.read_text().startswith("not a database")  # untouched
    with pytest.raises(ValueError, match=r"cacher_db_path: cannot create .*notes\.txt/db"):
        LmdbStore(afile / "db", 8 * MiB)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "data.mdb").write_bytes(os.urandom(8192))
    with pytest.raises(ValueError, match=r"cacher_db_path: .*junk.* not an LMDB database"):
        LmdbStore(junk, 8 * MiB)
    foreign = tmp_path / "foreign"
    env = lmdb.open(str(foreign), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"user-key", b"user data")
    env.close()
    with pytest.raises(ValueError, match=r"cacher_db_path: .*foreign.* not an ezvtb output cache"):
        LmdbStore(foreign, 8 * MiB)
    newer = tmp_path / "newer"
    LmdbStore(newer, 8 * MiB).close()
    env = lmdb.open(str(newer), max_dbs=5)
    with env.begin(write=True) as txn:
        txn.put(b"format", FORMAT[:-1] + b"9", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(ValueError, match=r"cacher_db_path: .*newer.* another format"):
        LmdbStore(newer, 8 * MiB)
    with pytest.raises(ValueError, match="1 MiB"):
        LmdbStore(tmp_path / "tiny", 1000)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"cacher_db_path: .*ro.* not writable"):
            LmdbStore(ro, 8 * MiB)
    finally:
        ro.chmod(0o700)


def test_get_core_checks_the_database_path_before_any_export(tmp_path, monkeypatch):
    import ezvtb.export

    def no_export(*a, **k):
        raise AssertionError("exported before checking the cacher options")

    monkeypatch.setattr(ezvtb.export, "tha3_graphs", no_export)
    from ezvtb import get_core

    bad = tmp_path / "file"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match="cacher_db_path: .*file/sub"):
        get_core(backend="cpu", cacher_on_database=True, cacher_db_path=bad / "sub")
    with pytest.raises(ValueError, match="not an LMDB database"):
        get_core(backend="cpu", cacher_on_database=True, cacher_db_path=bad)
    for kw, word in ((dict(cacher_quality=101), "cacher_quality"), (dict(cacher_ram_size=-1), "cacher_ram_size"),
                     (dict(cacher_ram_size="big"), "cacher_ram_size"), (dict(cacher_on_database="yes"),
                                                                         "cacher_on_database"),
                     (dict(cacher_db_path=tmp_path), "cacher_on_database=True"),
                     (dict(cacher_on_database=True, cacher_db_path=3), "cacher_db_path"),
                     (dict(pose_quantization=0), "pose_quantization"),
                     (dict(pose_quantization="fine"), "pose_quantization"),
                     (dict(use_cacher=False, cacher_on_database=True), "use_cacher")):
        with pytest.raises(ValueError, match=word):
            get_core(backend="cpu", **kw)


def test_writes_are_dropped_not_waited_for_while_the_database_is_locked(tmp_path):
    """Another process holds LMDB's write lock: puts return at once, the full queue drops (counted),
    hits keep being served, and everything not dropped is stored once the lock is released."""
    db = tmp_path / "locked"
    cache = OutputCache(LmdbStore(db, 64 * MiB), JpegCodec(85, "cv2"), queue_size=3, batch=2)
    cache.set_character(character(), "v")
    cache.put(pose(0), frame(0))
    assert cache.flush()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, lmdb
        env = lmdb.open(sys.argv[1], max_dbs=5)
        txn = env.begin(write=True)
        print("locked", flush=True)
        sys.stdin.readline()
        txn.abort()
    """), str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for i in range(1, 13):
            cache.put(pose(i), frame(i))  # returns although the writer thread is blocked
        assert cache.get(pose(0)) is not None  # reads need no write lock
        s = cache.stats()
        assert s["dropped_writes"] >= 12 - 3 - 2 and s["writes"] == 1
        queued = [i for i in range(1, 13) if cache.get(pose(i)) is not None]
        assert len(queued) == 12 - s["dropped_writes"]  # still-queued frames are served (pending hits)
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    assert cache.flush()
    s = cache.stats()
    assert s["writes"] + s["dropped_writes"] == 13 and s["write_errors"] == 0
    cache.close()
    check = LmdbStore(db, 64 * MiB)
    assert check.stats()["entries"] == s["writes"]
    check.close()


def test_q100_database_frames_are_exact(tmp_path):
    cache = OutputCache(LmdbStore(tmp_path / "exact", 32 * MiB), LosslessCodec("raw"))
    cache.set_character(character(), "v")
    cache.put(pose(1), frame(1))
    cache.close()
    again = create_output_cache(100, 0.03, True, tmp_path / "exact")
    again.set_character(character(), "v")
    got = again.get(pose(1))  # written raw, read by the preferred lossless codec: the blob names its codec
    assert got is not None and np.array_equal(got, frame(1))
    again.close()
