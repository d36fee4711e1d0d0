"""empiarfs.cache.memory.MemoryLRU: byte bound, LRU order, thread safety."""

import random
import threading

import pytest

from empiarfs.cache.memory import MemoryLRU


def test_get_put_and_lru_order():
    lru = MemoryLRU(30)
    lru.put("a", 0, b"x" * 10)
    lru.put("a", 1, b"y" * 10)
    lru.put("b", 0, b"z" * 10)
    assert lru.bytes_used == 30
    assert lru.get("a", 0) == b"x" * 10          # refresh a/0
    lru.put("b", 1, b"w" * 10)                    # evicts a/1 (oldest)
    assert lru.get("a", 1) is None
    assert lru.get("a", 0) == b"x" * 10
    assert ("b", 0) in lru and ("b", 1) in lru
    assert lru.bytes_used == 30 and lru.max_bytes == 30


def test_replace_same_key_accounts_once():
    lru = MemoryLRU(100)
    lru.put("f", 0, b"a" * 40)
    lru.put("f", 0, b"b" * 60)
    assert lru.bytes_used == 60 and len(lru) == 1
    assert lru.get("f", 0) == b"b" * 60


def test_oversized_block_not_stored():
    lru = MemoryLRU(10)
    assert lru.put("f", 0, b"x" * 11) is False
    assert lru.bytes_used == 0 and lru.get("f", 0) is None


def test_drop_file_and_indices_and_clear():
    lru = MemoryLRU(1000)
    for i in range(5):
        lru.put("f", i, b"a" * 10)
        lru.put("g", i, b"b" * 10)
    assert lru.indices("f") == [0, 1, 2, 3, 4]
    assert lru.drop_file("f") == 5
    assert lru.indices("f") == [] and lru.get("f", 2) is None
    assert lru.bytes_used == 50
    lru.clear()
    assert lru.bytes_used == 0 and len(lru) == 0


def test_eviction_keeps_per_file_index_consistent():
    lru = MemoryLRU(20)
    for i in range(10):
        lru.put("f", i, b"a" * 10)
    assert lru.indices("f") == [8, 9]


def test_negative_bound_rejected():
    with pytest.raises(ValueError):
        MemoryLRU(-1)


def test_bound_holds_at_every_moment_under_concurrency():
    lru = MemoryLRU(64 * 1024)
    stop = threading.Event()
    seen = []

    def sampler():
        while not stop.is_set():
            seen.append(lru.bytes_used)

    def writer(seed):
        rng = random.Random(seed)
        for _ in range(3000):
            size = rng.randint(1, 8192)
            lru.put(seed % 3, rng.randint(0, 500), bytes(size))
            lru.get(seed % 3, rng.randint(0, 500))
            if rng.random() < 0.01:
                lru.drop_file(seed % 3)

    watcher = threading.Thread(target=sampler)
    watcher.start()
    writers = [threading.Thread(target=writer, args=(s,)) for s in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    watcher.join()
    assert seen and max(seen) <= lru.max_bytes
    # The running total agrees with the contents.
    total = sum(len(lru.get(f, i) or b"") for f in range(3) for i in lru.indices(f))
    assert total == lru.bytes_used
