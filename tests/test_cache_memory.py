"""empiarfs.cache.memory.MemoryLRU: byte bound, LRU order, one version per
URL, thread safety."""

import random
import threading

import pytest

from empiarfs.cache.keys import FileVersion
from empiarfs.cache.memory import MemoryLRU
from empiarfs.model import Fingerprint


def v(url, etag="e1", size=1000):
    return FileVersion(url, Fingerprint(size, etag))


A, B, F, G = v("a"), v("b"), v("f"), v("g")


def test_get_put_and_lru_order():
    lru = MemoryLRU(30)
    lru.put(A, 0, b"x" * 10)
    lru.put(A, 1, b"y" * 10)
    lru.put(B, 0, b"z" * 10)
    assert lru.bytes_used == 30
    assert lru.get(A, 0) == b"x" * 10          # refresh a/0
    lru.put(B, 1, b"w" * 10)                    # evicts a/1 (oldest)
    assert lru.get(A, 1) is None
    assert lru.get(A, 0) == b"x" * 10
    assert lru.holds(B, 0) and lru.holds(B, 1)
    assert lru.bytes_used == 30 and lru.max_bytes == 30


def test_replace_same_key_accounts_once():
    lru = MemoryLRU(100)
    lru.put(F, 0, b"a" * 40)
    lru.put(F, 0, b"b" * 60)
    assert lru.bytes_used == 60 and len(lru) == 1
    assert lru.get(F, 0) == b"b" * 60


def test_oversized_block_not_stored():
    lru = MemoryLRU(10)
    assert lru.put(F, 0, b"x" * 11) is False
    assert lru.bytes_used == 0 and lru.get(F, 0) is None


def test_drop_and_indices_and_clear():
    lru = MemoryLRU(1000)
    for i in range(5):
        lru.put(F, i, b"a" * 10)
        lru.put(G, i, b"b" * 10)
    assert lru.indices(F) == [0, 1, 2, 3, 4]
    assert lru.drop("f") == 5
    assert lru.indices(F) == [] and lru.get(F, 2) is None
    assert lru.bytes_used == 50
    lru.clear()
    assert lru.bytes_used == 0 and len(lru) == 0


def test_one_version_per_url_never_mixed():
    lru = MemoryLRU(1000)
    old, new = v("f", "v1"), v("f", "v2")
    lru.put(old, 0, b"old")
    assert lru.get(new, 0) is None            # another version: the old blocks go
    assert lru.get(old, 0) is None and lru.bytes_used == 0
    lru.put(new, 1, b"new")
    assert lru.indices(old) == [] and lru.indices(new) == [1]


def test_a_version_described_by_another_source_is_the_same():
    """The mount knows a file by size and FTP time, ``get`` by size, ETag and
    HTTP date: any validator both sides have agrees, so the blocks are shared."""
    lru = MemoryLRU(1000)
    from_ftp = FileVersion("f", Fingerprint(1000, None, "1764583200"))
    from_head = FileVersion("f", Fingerprint(1000, '"e"', "Mon, 01 Dec 2025 10:00:00 GMT"))
    lru.put(from_ftp, 0, b"x")
    assert lru.get(from_head, 0) == b"x"
    assert lru.get(v("f", '"e"', size=999), 0) is None   # another size: another file


def test_eviction_keeps_per_url_index_consistent():
    lru = MemoryLRU(20)
    for i in range(10):
        lru.put(F, i, b"a" * 10)
    assert lru.indices(F) == [8, 9]


def test_negative_bound_rejected():
    with pytest.raises(ValueError):
        MemoryLRU(-1)


def test_bound_holds_at_every_moment_under_concurrency():
    lru = MemoryLRU(64 * 1024)
    stop = threading.Event()
    seen = []
    versions = [v(str(i)) for i in range(3)]

    def sampler():
        while not stop.is_set():
            seen.append(lru.bytes_used)

    def writer(seed):
        rng = random.Random(seed)
        for _ in range(3000):
            size = rng.randint(1, 8192)
            lru.put(versions[seed % 3], rng.randint(0, 500), bytes(size))
            lru.get(versions[seed % 3], rng.randint(0, 500))
            if rng.random() < 0.01:
                lru.drop(str(seed % 3))

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
    total = sum(len(lru.get(f, i) or b"") for f in versions for i in lru.indices(f))
    assert total == lru.bytes_used
