"""LMDB output cache: the cost per hit of surviving a truncated data file, same process, same store.

`LmdbStore.get` now fstat()s its own descriptor of data.mdb before each transaction (a file shorter than it was
is damage, not a SIGBUS) and compares the SIGBUS guard's fault count of its map before and after (a page that
vanished mid-read is read as zeros and the result discarded). The same store, with its descriptor and guard
registration detached, runs exactly the code it ran before the guard. Both serve the same keys in the same random
order, alternating round by round; the table shows per-hit times and their ratio, plus the fstat alone.

    python benchmarks/bench_cache_guard.py [--entries 200] [--size 48000] [--hits 4000] [--rounds 8] [--append]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import pct, publish, table  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=200)
    ap.add_argument("--size", type=int, default=48000, help="bytes per entry (a q85 512x512 frame is ~40-60 KB)")
    ap.add_argument("--hits", type=int, default=4000, help="hits per round and variant")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)

    from ezvtb.cache.lmdb_store import LmdbStore
    from ezvtb.cache.mapguard import guard

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = LmdbStore(os.path.join(tmp, "cache"), 256 << 20)
        keys = [i.to_bytes(20, "big") for i in range(args.entries)]
        store.put_many((k, rng.bytes(args.size)) for k in keys)
        fd, reg = store._fd, store._guarded
        assert fd >= 0 and (reg is not None or not guard().supported)
        times: dict[str, list[float]] = {"guarded": [], "unguarded": [], "fstat": []}
        for r in range(args.rounds):
            order = [keys[i] for i in rng.integers(0, len(keys), args.hits)]
            for variant in (("guarded", "unguarded") if r % 2 == 0 else ("unguarded", "guarded")):
                store._fd, store._guarded = (fd, reg) if variant == "guarded" else (-1, None)
                t0 = time.perf_counter()
                for k in order:
                    store.get(k)
                times[variant].append((time.perf_counter() - t0) / args.hits * 1e6)
            t0 = time.perf_counter()
            for _ in range(args.hits):
                os.fstat(fd)
            times["fstat"].append((time.perf_counter() - t0) / args.hits * 1e6)
        store._fd, store._guarded = fd, reg
        store.close()

    g, u = np.median(times["guarded"]), np.median(times["unguarded"])
    rows = [["get, unguarded (the read before the guard)", u, pct(times["unguarded"], 90), "1.00"],
            ["get, guarded (fstat + fault count)", g, pct(times["guarded"], 90), f"{g / u:.3f}"],
            ["os.fstat alone", float(np.median(times["fstat"])), pct(times["fstat"], 90), "-"]]
    text = table(["per hit", "median us", "p90 us", "vs unguarded"], rows)
    note = (f"{args.entries} entries of {args.size} B (checksum verified and copied on each hit), {args.hits} random "
            f"hits x {args.rounds} alternating rounds per variant, one process, one thread. Guarded - unguarded = "
            f"{g - u:+.2f} us per hit. SIGBUS guard installed: {guard().installed}. The machine is shared (about 8 "
            "concurrent jobs on 2 cores while measured); the ratio compares the two variants in the same loop.")
    publish("LMDB cache: cost of the truncation guard per hit (bench_cache_guard.py)", text, note, args.append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
