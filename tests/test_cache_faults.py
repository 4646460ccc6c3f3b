"""Fault injection on the LMDB output cache: real cache files truncated and corrupted at many offsets,
opened and served through `ezvtb.core.Core.inference` in child processes (a SIGBUS or SIGSEGV fails the
test instead of killing the run).

Asserted for every fault: no signal, no exception out of `inference`, and every frame served equals a
fresh render (PSNR >= the JPEG q85 bound), on a first pass over the damaged file and on a second pass
after the cache has repaired itself. Plus the single cases: a truncated file is moved aside (kept, named)
with one warning; a checksum mismatch is a counted miss and the entry is removed; an older entry format
is cleared; MDB_MAP_RESIZED between open and the first transaction is recovered.

The "renderer" is `ReplayTha`: the THA stage's interface over one small set of frames rendered once per
test session (a deterministic character-like picture per pose), so that the many re-renders after a
fault cost nothing; what is under test is the cache between the core and THA, all of it real.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import lmdb
import numpy as np
import pytest

from cache_frames import CHILD_HEADER, ReplayTha, character, psnr, render
from cache_frames import signed_pose as pose
from ezvtb.cache import create_output_cache
from ezvtb.cache.lmdb_store import FORMAT, OLDER_FORMATS, LmdbStore, entry_checksum
from ezvtb.core import Core

MiB = 1 << 20
PSNR_BOUND = 38.0  # JPEG q85 on these frames: 40+ dB; a damaged frame measured 10 dB
N_FRAMES = 6

SHARED = CHILD_HEADER + "from cache_frames import ReplayTha, character, psnr, render, signed_pose as pose\n"


CHILD = """
import json, logging, sys, time
from ezvtb.cache import create_output_cache
from ezvtb.core import Core

logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
d = np.load(sys.argv[1])
poses, frames, img = d["poses"], d["frames"], d["character"]
for path in json.loads(sys.argv[2]):
    print(json.dumps({"start": path}), flush=True)
    res = {"path": path}
    t0 = time.perf_counter()
    try:
        tha = ReplayTha(poses, frames)
        core = Core(tha, create_output_cache(85, 0.05, True, path))
        core.setImage(img)
        res["worst"] = []
        for _ in range(2):  # the damaged file, then the repaired cache
            res["worst"].append(min(psnr(core.inference(poses[i])[0], frames[i]) for i in range(len(poses))))
            core.cache.flush()
        s = core.stats()["cache"]
        res.update({k: s.get(k) for k in ("hits", "misses", "corrupt_entries", "read_errors", "write_errors",
                                          "checksum_failures", "set_aside", "damaged", "entries")}, runs=tha.runs)
        core.close()
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
    res["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(res), flush=True)
"""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The small set of rendered frames, saved once for the children, and a pristine 6-frame cache."""
    root = tmp_path_factory.mktemp("faults")
    poses = np.stack([pose(i) for i in range(N_FRAMES)])
    frames = np.stack([render(i) for i in range(N_FRAMES)])
    np.savez(root / "set.npz", poses=poses, frames=frames, character=character())
    core = Core(ReplayTha(poses, frames), create_output_cache(85, 0.05, True, root / "pristine"))
    core.setImage(character())
    for p in poses:
        core.inference(p)
    core.close()
    return root, poses, frames


def pages(data: bytes) -> list[tuple[int, str]]:
    """(page number, kind) of every page of an LMDB data file: meta, branch, leaf, overflow-head,
    overflow (the data pages of a long value), free."""
    psize = struct.unpack_from("<I", data, 40)[0]
    out, pg, n = [], 0, len(data) // psize
    while pg < n:
        flags = struct.unpack_from("<H", data, pg * psize + 10)[0]
        if flags & 0x08:
            out.append((pg, "meta"))
        elif flags & 0x04:
            count = struct.unpack_from("<I", data, pg * psize + 12)[0]
            out.append((pg, "overflow-head"))
            out += [(pg + k, "overflow") for k in range(1, count)]
            pg += max(count, 1)
            continue
        elif flags & 0x01:
            out.append((pg, "branch"))
        elif flags & 0x02:
            out.append((pg, "leaf"))
        else:
            out.append((pg, "free"))
        pg += 1
    return out


def run_children(root, dirs: list[str], groups: int = 2) -> list[dict]:
    """Serve every damaged cache in `dirs` through a Core, in `groups` child processes."""
    results = []
    for k in range(groups):
        chunk = dirs[k::groups]
        if not chunk:
            continue
        r = subprocess.run([sys.executable, "-c", SHARED + textwrap.dedent(CHILD), str(root / "set.npz"),
                            json.dumps(chunk)], capture_output=True, text=True, timeout=300)
        lines = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
        done = [x for x in lines if "start" not in x]
        started = [x["start"] for x in lines if "start" in x]
        assert r.returncode == 0, (f"child died (returncode {r.returncode}) on {started[-1] if started else '?'}"
                                   f"\n{r.stderr[-3000:]}")
        assert len(done) == len(chunk), r.stderr[-3000:]
        results += done
    return results


def check(results: list[dict]) -> None:
    for res in results:
        assert "error" not in res, res
        assert min(res["worst"]) >= PSNR_BOUND, res  # every frame served equals a fresh render
        assert res["write_errors"] == 0 and res["read_errors"] == 0, res


def damaged_copy(root, name: str, change) -> str:
    d = root / name
    shutil.copytree(root / "pristine", d)
    with open(d / "data.mdb", "r+b") as f:
        change(f)
    return str(d)


def test_truncated_cache_files_are_set_aside_and_never_kill_the_process(recorded):
    root, _, _ = recorded
    size = os.path.getsize(root / "pristine" / "data.mdb")
    psize = 4096
    offsets = sorted({0, 100, psize, 2 * psize, 3 * psize + 7, size // 4, size // 2, 3 * size // 4,
                      size - psize, size - 1} - {size})
    dirs = [damaged_copy(root, f"trunc-{o}", lambda f, o=o: f.truncate(o)) for o in offsets]
    results = run_children(root, dirs)
    check(results)
    for o, res in zip(offsets, sorted(results, key=lambda r: int(r["path"].rsplit("-", 1)[1]))):
        aside = [n for n in os.listdir(res["path"]) if n.startswith("data.mdb.damaged-")]
        if o == 0:  # an empty file is a new cache, nothing to set aside
            assert not aside and res["runs"] == N_FRAMES, res
        else:
            assert res["set_aside"] == 1 and len(aside) == 1, res
            assert os.path.getsize(os.path.join(res["path"], aside[0])) == o  # kept as it was
            assert res["runs"] == N_FRAMES and res["hits"] == N_FRAMES, res  # rendered once, then served


def test_corrupted_pages_never_serve_a_wrong_frame(recorded):
    """Every structural page (meta, branch, leaf, free, overflow headers) overwritten with random bytes, or
    24 bytes among its nodes changed, and some pages in the middle of frame data: the damage is caught
    (checksum, LMDB, or the open-time check), the frame is rendered again, and the cache repairs itself
    (the second pass hits)."""
    root, _, _ = recorded
    data = (root / "pristine" / "data.mdb").read_bytes()
    layout = pages(data)
    kinds = {k for _, k in layout}
    assert {"meta", "leaf", "overflow-head", "overflow"} <= kinds, kinds
    rng = np.random.default_rng(16)
    faults = []
    for pg, kind in layout:
        if kind != "overflow":
            faults.append((pg, "page"))  # the whole page replaced by random bytes
            faults.append((pg, "bytes"))  # 24 bytes inside the page changed
    data_pages = [pg for pg, k in layout if k == "overflow"]
    faults += [(int(pg), "page") for pg in rng.choice(data_pages, 8, replace=False)]

    def corrupt(f, pg, how, seed):
        r = np.random.default_rng(seed)
        if how == "page":
            f.seek(pg * 4096)
            f.write(r.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        else:  # 24 bytes among the page's nodes (keys, sizes, page numbers: from `upper` to the end)
            f.seek(pg * 4096 + 14)
            upper = int.from_bytes(f.read(2), "little")
            f.seek(pg * 4096 + int(r.integers(upper if 16 <= upper < 4096 - 24 else 16, 4096 - 24)))
            f.write(r.integers(0, 256, 24, dtype=np.uint8).tobytes())

    dirs = [damaged_copy(root, f"corrupt-{pg}-{how}", lambda f, pg=pg, how=how, s=s: corrupt(f, pg, how, s))
            for s, (pg, how) in enumerate(faults)]
    results = run_children(root, dirs)
    check(results)
    by_path = {r["path"]: r for r in results}
    for (pg, how), d in zip(faults, dirs):
        res = by_path[d]
        if dict(layout)[pg] in ("overflow", "overflow-head"):
            # frame data hit: the checksum (or LMDB) catches it, the frame is rendered again and stored again
            assert res["corrupt_entries"] + res["set_aside"] >= 1 and res["runs"] >= 1, res
        assert res["worst"][1] >= PSNR_BOUND and res["hits"] >= N_FRAMES, res  # repaired: the 2nd pass hits


def test_a_truncated_file_is_moved_aside_with_one_warning(recorded, tmp_path, caplog):
    root, poses, frames = recorded
    db = tmp_path / "cut"
    shutil.copytree(root / "pristine", db)
    os.truncate(db / "data.mdb", 151552 if os.path.getsize(db / "data.mdb") > 151552 else 8192)
    cut = os.path.getsize(db / "data.mdb")
    with caplog.at_level(logging.WARNING, logger="ezvtb.cache.lmdb"):
        store = LmdbStore(db, 64 * MiB)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "truncated" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    aside = [p for p in db.iterdir() if p.name.startswith("data.mdb.damaged-")]
    assert len(aside) == 1 and aside[0].stat().st_size == cut and aside[0].name in warnings[0].getMessage()
    assert store.stats()["entries"] == 0 and store.stats()["set_aside"] == 1
    store.put_many([(b"k" * 20, b"fresh")])
    assert store.get(b"k" * 20) == b"fresh"
    store.close()
    # a file that never was an LMDB database is still refused, and left alone
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "data.mdb").write_bytes(b"\x00" * 8192)
    with pytest.raises(ValueError, match="not an LMDB database"):
        LmdbStore(junk, 8 * MiB)
    assert (junk / "data.mdb").read_bytes() == b"\x00" * 8192


def test_a_checksum_mismatch_is_a_counted_miss_and_the_entry_is_removed(recorded, tmp_path):
    root, poses, frames = recorded
    db = tmp_path / "flipped"
    shutil.copytree(root / "pristine", db)
    env = lmdb.open(str(db), max_dbs=5, readonly=True, lock=False)
    with env.begin() as txn:
        key, value = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=env.open_db(b"frames", txn=txn))][2]
    env.close()
    # the entry's bytes are in the file verbatim (overflow pages): change four in the middle
    data = bytearray((db / "data.mdb").read_bytes())
    at = data.find(value[1000:1064])
    assert at > 0
    data[at + 10:at + 14] = bytes(4 * [data[at + 10] ^ 0xFF])
    (db / "data.mdb").write_bytes(bytes(data))

    tha = ReplayTha(poses, frames)
    core = Core(tha, create_output_cache(85, 0.05, True, db))
    core.setImage(character())
    served = [psnr(core.inference(p)[0], f) for p, f in zip(poses, frames)]
    s = core.stats()["cache"]
    assert min(served) >= PSNR_BOUND and tha.runs == 1  # the damaged one was rendered again
    assert s["corrupt_entries"] == 1 and s["checksum_failures"] == 1 and s["misses"] == 1 and s["hits"] == 5
    assert core.cache.flush()
    core.cache.store.flush_access()
    with core.cache.store._env.begin() as txn:  # removed, then stored again (fresh) by the writer
        fresh = bytes(txn.get(key, db=core.cache.store._frames))
    assert fresh == value and fresh[:16] == entry_checksum(key, fresh[16:])  # the undamaged entry again
    assert min(psnr(core.inference(p)[0], f) for p, f in zip(poses, frames)) >= PSNR_BOUND and tha.runs == 1
    core.close()


def test_a_cache_of_the_older_entry_format_is_cleared_not_misread(tmp_path, caplog):
    db = tmp_path / "old"
    store = LmdbStore(db, 8 * MiB)
    store.close()
    env = lmdb.open(str(db), max_dbs=5)
    with env.begin(write=True) as txn:  # what format 1 wrote: the bare blob, no checksum
        txn.put(b"format", OLDER_FORMATS[0], db=env.open_db(b"meta", txn=txn))
        txn.put(b"k" * 20, b"EZVF old blob", db=env.open_db(b"frames", txn=txn))
    env.close()
    with caplog.at_level(logging.WARNING, logger="ezvtb.cache.lmdb"):
        store = LmdbStore(db, 8 * MiB)
    assert any("no checksums; cleared its 1 frame" in r.getMessage() for r in caplog.records)
    assert store.get(b"k" * 20) is None and store.stats()["entries"] == 0
    store.put_many([(b"k" * 20, b"new")])
    assert store.get(b"k" * 20) == b"new"
    store.close()
    env = lmdb.open(str(db), max_dbs=5, readonly=True, lock=False)
    with env.begin() as txn:
        assert bytes(txn.get(b"format", db=env.open_db(b"meta", txn=txn))) == FORMAT
    env.close()


def test_the_map_grown_by_another_process_between_open_and_first_transaction(tmp_path, monkeypatch):
    """Issue 16 item 4: MDB_MAP_RESIZED on opening (1 in 7 runs by chance; here every time)."""
    db = tmp_path / "grown"
    LmdbStore(db, 2 * MiB).close()
    real_open = lmdb.open

    def open_then_another_process_grows_it(*a, **k):
        env = real_open(*a, **k)
        code = ("import sys; from ezvtb.cache.lmdb_store import LmdbStore; s = LmdbStore(sys.argv[1], 32 << 20); "
                "s.put_many([(b'b' * 20, bytes(3 << 20))]); s.close()")
        subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=120)
        return env

    monkeypatch.setattr(lmdb, "open", open_then_another_process_grows_it)
    store = LmdbStore(db, 2 * MiB)
    monkeypatch.setattr(lmdb, "open", real_open)
    assert store.stats()["map_resized"] >= 1
    assert store.get(b"b" * 20) == bytes(3 << 20)
    store.close()


# --- a data file truncated while processes have it open ------------------------------------------------------
WHILE_OPEN = textwrap.dedent("""
    import json, logging, os, sys, time
    import numpy as np
    from ezvtb.cache.lmdb_store import LmdbStore
    from ezvtb.cache.mapguard import guard

    logging.basicConfig(level=logging.WARNING, format="%(process)d %(message)s")
    path, name, keys, after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    marker = os.path.join(os.path.dirname(path), "truncated")

    def blob(k):
        return bytes([k % 251]) * (3000 + 41 * k)  # 3 KB .. 15 KB: leaf and overflow pages all over the file

    store = LmdbStore(path, 32 << 20)
    store.put_many([(k.to_bytes(20, "big"), blob(k)) for k in range(keys)])
    open(os.path.join(os.path.dirname(path), name + ".ready"), "w").close()
    rng = np.random.default_rng(len(name))
    res = {"wrong": 0, "hits_after": 0, "misses_after": 0, "errors": []}
    done_after, deadline = 0, time.monotonic() + 120
    while done_after < after and time.monotonic() < deadline:
        k = int(rng.integers(0, keys))
        key = k.to_bytes(20, "big")
        seen = os.path.exists(marker)
        try:
            got = store.get(key)
        except Exception as e:  # a CorruptEntryError is a miss; anything else is reported
            if type(e).__name__ != "CorruptEntryError":
                res["errors"].append(f"{type(e).__name__}: {e}")
            got = None
        if got is not None and got != blob(k):
            res["wrong"] += 1
        if got is None:
            store.put_many([(key, blob(k))])
        if seen:
            done_after += 1
            res["hits_after" if got is not None else "misses_after"] += 1
    s = store.stats()
    res.update({k: s[k] for k in ("file_lost", "set_aside", "checksum_failures", "damaged")},
               absorbed=guard().absorbed, done_after=done_after)
    store.close()
    print(json.dumps(res), flush=True)
""")


def test_a_file_truncated_while_two_processes_use_it_never_kills_them(tmp_path):
    """Two processes read and write one cache; a third truncates data.mdb to a quarter while both are busy.
    Before the guard both died of SIGBUS (exit -7 / 135); now neither does, no wrong blob is ever served,
    the damage is noticed (file_lost / set_aside) and both keep serving hits from the replacement cache."""
    path = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", WHILE_OPEN, str(path), name, "200", "3000"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for name in ("a", "b")]
    deadline = __import__("time").monotonic() + 120
    while not all((tmp_path / f"{n}.ready").exists() for n in ("a", "b")):
        assert __import__("time").monotonic() < deadline and all(c.poll() is None for c in children), \
            [c.communicate() for c in children]
        __import__("time").sleep(0.02)
    data = path / "data.mdb"
    truncate = f"import os; os.truncate({str(data)!r}, os.path.getsize({str(data)!r}) // 4)"
    subprocess.run([sys.executable, "-c", truncate], check=True)
    (tmp_path / "truncated").touch()
    results, logs = [], []
    for c in children:
        out, err = c.communicate(timeout=300)
        assert c.returncode == 0, (c.returncode, err[-3000:])  # -7: killed by SIGBUS
        results.append(json.loads(out.strip().splitlines()[-1]))
        logs.append(err[-3000:])
    for res in results:
        assert res["wrong"] == 0 and not res["errors"], res
        assert res["done_after"] == 3000 and res["hits_after"] > 1000, res  # the replacement cache serves again
    assert sum(r["file_lost"] + r["set_aside"] for r in results) >= 1, results  # the truncation was noticed
    aside = {n: os.path.getsize(path / n) for n in os.listdir(path) if n.startswith("data.mdb.damaged-")}
    assert len(aside) == 1, (aside, logs)  # kept for inspection


SIGBUS_READ = textwrap.dedent("""
    import json, os, sys
    from ezvtb.cache.lmdb_store import LmdbStore
    from ezvtb.cache.mapguard import guard

    path = sys.argv[1]
    store = LmdbStore(path, 32 << 20)
    blobs = {k.to_bytes(20, "big"): bytes([k]) * (5000 + 97 * k) for k in range(120)}
    store.put_many(blobs.items())
    store._check_file = lambda: None  # the fstat check off: the read itself meets the missing pages
    data = os.path.join(path, "data.mdb")
    os.truncate(data, 2 * 4096)  # only the meta pages remain
    served = [store.get(k) for k in blobs]
    wrong = sum(1 for k, b in zip(blobs, served) if b is not None and b != blobs[k])
    stored = store.put_many(list(blobs.items())[:10])  # the writer replaces the damaged file
    again = [store.get(k) == blobs[k] for k in list(blobs)[:10]]
    print(json.dumps({"absorbed": guard().absorbed, "served": sum(b is not None for b in served), "wrong": wrong,
                      "stats": {k: v for k, v in store.stats().items() if k in ("file_lost", "set_aside", "damaged")},
                      "stored": stored, "again": all(again)}), flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the SIGBUS guard is Linux-only")
def test_a_read_that_meets_a_truncated_page_is_a_miss_not_sigbus(tmp_path):
    """The guard itself: with the size check disabled, reads run into pages past the new end of the file.
    The SIGBUS is absorbed (zero pages mapped in), the reads are misses, and the next write starts a new file."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", SIGBUS_READ, str(tmp_path / "cache")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr[-3000:])  # -7 before the guard
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["absorbed"] >= 1 and res["served"] == 0 and res["wrong"] == 0, res
    assert res["stats"]["file_lost"] >= 1 and res["stats"]["set_aside"] == 1, res
    assert res["stored"] == 10 and res["again"], res
