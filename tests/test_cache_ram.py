"""RAM backend: byte-budget LRU invariants against a reference model (hypothesis), thread safety."""
from __future__ import annotations

import threading
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezvtb.cache.ram import RamStore

ops = st.lists(st.tuples(st.sampled_from(["put", "get", "discard"]), st.integers(0, 11), st.integers(0, 70)),
               max_size=80)


@settings(max_examples=250, deadline=None)
@given(budget=st.integers(0, 200), ops=ops)
def test_ram_store_is_an_exact_byte_budget_lru(budget, ops):
    store = RamStore(budget)
    model: OrderedDict[bytes, int] = OrderedDict()
    evictions = 0
    for op, k, size in ops:
        key = bytes([k]) * 20
        if op == "put":
            blob = bytes([k]) * size
            store.put_many([(key, blob)])
            model.pop(key, None)
            if size <= budget:
                while model and sum(model.values()) + size > budget:
                    model.popitem(last=False)
                    evictions += 1
                model[key] = size
        elif op == "get":
            got = store.get(key)
            if key in model:
                assert got == bytes([k]) * model[key]
                model.move_to_end(key)
            else:
                assert got is None
        else:
            store.discard(key)
            model.pop(key, None)
        s = store.stats()
        assert s["stored_bytes"] == sum(model.values()) <= budget
        assert s["entries"] == len(model) and s["evictions"] == evictions
        assert [key for key in model] == list(store._lru.keys())  # same recency order


def test_budget_holds_under_concurrent_readers_and_writers():
    store = RamStore(50_000)
    errors = []

    def writer(t: int) -> None:
        for i in range(400):
            store.put_many([(bytes([t, i % 256]) * 10, bytes(1000 + 37 * (i % 50)))])

    def reader(t: int) -> None:
        for i in range(2000):
            b = store.get(bytes([t % 2, i % 256]) * 10)
            if b is not None and len(b) < 1000:
                errors.append(len(b))
            if store.stats()["stored_bytes"] > 50_000:
                errors.append("over budget")

    threads = [threading.Thread(target=f, args=(t,)) for t in range(2) for f in (writer, reader)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert 0 < store.stats()["stored_bytes"] <= 50_000


def test_bad_budget_is_refused():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="budget_bytes"):
            RamStore(bad)
