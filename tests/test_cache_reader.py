"""empiarfs.cache.reader.BlockReader driven by a deterministic in-process
fetcher (pure logic: no network). The fetcher is a plain function over
bytes held in memory, with counters and injectable delays, hangs and
errors."""

import ast
import errno
import os
import pathlib
import random
import shutil
import subprocess
import threading
import time

import pytest
from support.diskcache import disk_bytes, held_elsewhere

import empiarfs.cache
from empiarfs.cache.disk import DiskStore
from empiarfs.cache.memory import MemoryLRU
from empiarfs.cache.reader import BlockReader, FileKey
from empiarfs.config import KiB, MiB, Settings
from empiarfs.errors import BadResponse, DeadlineExceeded, RemoteError, StaleFile
from empiarfs.model import Fingerprint


class FakeArchive:
    """``fetch(url, start, end, fingerprint)`` over in-memory files.

    Records every request, the highest concurrency per URL and overall,
    and can delay, hang or fail requests.
    """

    def __init__(self, files=None, delay=0.0):
        self.files = dict(files or {})
        self.delay = delay
        self.requests = []
        self.lock = threading.Lock()
        self.active = {}
        self.active_total = 0
        self.max_active = {}
        self.max_active_total = 0
        self.hang = threading.Event()      # set: requests block until released
        self.release = threading.Event()
        self.fail_next = []                # exceptions raised by the next calls
        self.short = False

    def add(self, url, size, seed=0, etag="e1"):
        self.files[url] = random.Random(seed).randbytes(size)
        return FileKey(url, Fingerprint(size, etag))

    def __call__(self, url, start, end, fingerprint):
        with self.lock:
            self.requests.append((url, start, end))
            self.active[url] = self.active.get(url, 0) + 1
            self.active_total += 1
            self.max_active[url] = max(self.max_active.get(url, 0), self.active[url])
            self.max_active_total = max(self.max_active_total, self.active_total)
            error = self.fail_next.pop(0) if self.fail_next else None
        try:
            if self.hang.is_set():
                self.release.wait(30)
            if self.delay:
                time.sleep(self.delay)
            if error is not None:
                raise error
            data = self.files[url]
            assert fingerprint.size == len(data)
            body = data[start:min(end, len(data))]
            return body[:-1] if self.short else body
        finally:
            with self.lock:
                self.active[url] -= 1
                self.active_total -= 1

    def fetched_bytes(self, url=None):
        return sum(e - s for u, s, e in self.requests if url is None or u == url)


def make_settings(**changes):
    base = dict(block_size=4 * KiB, max_request=64 * KiB, readahead=1 * MiB,
                memory_cache=4 * MiB, deadline=5.0, parallel_per_file=4, parallel_total=8)
    base.update(changes)
    return Settings().replace(**base)


@pytest.fixture
def archive():
    fake = FakeArchive()
    yield fake
    fake.release.set()          # never leave a pool thread hanging


@pytest.fixture
def open_reader(archive, tmp_path):
    made = []

    def factory(settings=None, disk=False, disk_bytes=16 * MiB, directory=None, memory=None):
        settings = settings or make_settings()
        store = None
        if disk:
            store = DiskStore(str(directory or tmp_path / "cache"), disk_bytes,
                              block_size=settings.block_size)
        reader = BlockReader(archive, settings, memory or MemoryLRU(settings.memory_cache), store)
        made.append(reader)
        return reader

    yield factory
    archive.release.set()
    for reader in made:
        reader.close()
        if reader.disk is not None:
            reader.disk.close()


def close(reader):
    """Close a reader (waits for its fetch threads) and its disk store."""
    reader.close()
    if reader.disk is not None:
        reader.disk.close()


def wait_until(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


# ------------------------------------------------------------ correctness

def test_byte_exact_at_every_alignment_and_eof(archive, open_reader):
    bs = 4 * KiB
    key = archive.add("f", 5 * bs + 123)
    data = archive.files["f"]
    reader = open_reader(disk=True)
    offsets = sorted({0, 1, bs - 1, bs, bs + 1, 2 * bs - 7, 5 * bs - 1, 5 * bs,
                      5 * bs + 1, 5 * bs + 122, 5 * bs + 123, 5 * bs + 200, 10 * bs})
    sizes = [0, 1, 7, bs - 1, bs, bs + 1, 3 * bs, 100 * bs]
    for offset in offsets:
        for size in sizes:
            assert reader.read(key, offset, size) == data[offset:offset + size], (offset, size)
    assert reader.read(key, len(data), 10) == b""
    assert reader.read(key, len(data) + 5000, 10) == b""
    # Every request is block aligned and ends at a block boundary or EOF.
    for _url, start, end in archive.requests:
        assert start % bs == 0 and (end % bs == 0 or end == len(data))


def test_parts_are_the_bytes_without_a_copy(archive, open_reader):
    """read_parts hands out the cached blocks themselves, trimmed by
    offsets; in order they are exactly what read returns, and copy_parts
    (what the mount's read callback does) lays them out alike."""
    import ctypes

    from empiarfs.fuse.operations import copy_parts

    bs = 4 * KiB
    key = archive.add("p", 5 * bs + 123)
    data = archive.files["p"]
    reader = open_reader(disk=True)
    for offset, size in [(0, bs), (1, bs), (bs - 7, 3 * bs), (5 * bs, 500), (3, 100 * bs),
                         (len(data), 10)]:
        parts = reader.read_parts(key, offset, size)
        expected = data[offset:offset + size]
        assert b"".join(block[lo:hi] for block, lo, hi in parts) == expected
        end = min(offset + size, len(data))
        assert len(parts) == (len(range(offset // bs, -(-end // bs))) if offset < end else 0)
        out = ctypes.create_string_buffer(size or 1)
        assert copy_parts(ctypes.addressof(out), size, parts) == len(expected)
        assert out.raw[:len(expected)] == expected
    whole = reader.read_parts(key, bs, bs)
    assert whole[0][0] is reader.read_parts(key, bs, bs)[0][0]     # the cached block itself
    with pytest.raises(ValueError):
        copy_parts(ctypes.addressof(ctypes.create_string_buffer(10)), 10,
                   reader.read_parts(key, 0, 100))


def test_random_reads_match_through_all_layers(archive, open_reader):
    key = archive.add("g", 300 * KiB + 17, seed=5)
    data = archive.files["g"]
    settings = make_settings(memory_cache=64 * KiB)      # small: forces disk hits
    reader = open_reader(settings, disk=True)
    rng = random.Random(1)
    for _ in range(400):
        offset = rng.randrange(len(data) + 100)
        size = rng.choice([1, 100, 4096, 5000, 20000])
        assert reader.read(key, offset, size) == data[offset:offset + size]
    snap = reader.stats.snapshot()
    assert snap["hits_memory"] > 0 and snap["hits_disk"] > 0


def test_cached_blocks_are_whole_blocks(archive, open_reader):
    bs = 4 * KiB
    key = archive.add("f", 7 * bs + 5)
    reader = open_reader(disk=True)
    reader.read(key, 3, 100)
    reader.read(key, 7 * bs, 3)
    reader.read(key, 2 * bs + 10, 3 * bs)
    indices = reader.memory.indices(key)
    assert indices == [0, 2, 3, 4, 5, 7]
    for idx in indices:
        expected = min(bs, key.size - idx * bs)
        assert reader.memory.get(key, idx) == archive.files["f"][idx * bs:idx * bs + expected]
    assert wait_until(lambda: reader.disk.info()["blocks"] == 6)
    assert reader.cached_ranges(key) == [(0, bs), (2 * bs, 6 * bs), (7 * bs, 7 * bs + 5)]


def test_negative_arguments_rejected(archive, open_reader):
    key = archive.add("f", 100)
    reader = open_reader()
    with pytest.raises(ValueError):
        reader.read(key, -1, 10)
    with pytest.raises(ValueError):
        reader.read(key, 0, -10)


def test_disk_block_size_must_match_settings(archive, tmp_path):
    with DiskStore(str(tmp_path / "c"), MiB, block_size=8 * KiB) as disk:
        with pytest.raises(ValueError, match="block size"):
            BlockReader(archive, make_settings(), MemoryLRU(MiB), disk)


# ------------------------------------------------------------ single flight

def test_single_flight_sixteen_readers_one_fetch(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    archive.delay = 0.2
    reader = open_reader()
    barrier = threading.Barrier(16)
    results = []

    def worker():
        barrier.wait()
        results.append(reader.read(key, 4096 + 10, 100))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [archive.files["f"][4106:4206]] * 16
    assert archive.requests == [("f", 4096, 8192)]
    snap = reader.stats.snapshot()
    assert snap["requests"] == 1 and snap["waits"] + snap["hits_memory"] == 15


# ------------------------------------------------------- read-ahead, bounds

def test_sequential_reads_trigger_coalesced_parallel_readahead(archive, open_reader):
    settings = make_settings(block_size=64 * KiB, max_request=1 * MiB, readahead=4 * MiB,
                             memory_cache=64 * MiB, parallel_per_file=4)
    key = archive.add("big", 16 * MiB, seed=3)
    archive.delay = 0.02
    reader = open_reader(settings)
    chunk = 128 * KiB
    out = bytearray()
    for offset in range(0, key.size, chunk):
        out += reader.read(key, offset, chunk)
    assert bytes(out) == archive.files["big"]
    snap = reader.stats.snapshot()
    assert snap["readahead_bytes"] > key.size // 2
    sizes = [e - s for _u, s, e in archive.requests]
    # Read-ahead is coalesced into pieces of window / (2 x parallel_per_file),
    # here 4 MiB / 8 = 512 KiB: several blocks each, never above max_request.
    piece = settings.readahead // (2 * settings.parallel_per_file)
    assert max(sizes) == piece <= settings.max_request
    assert len(sizes) <= key.size // piece + 16                 # not one request per block
    assert archive.fetched_bytes() == key.size                  # nothing fetched twice
    assert 1 < archive.max_active["big"] <= settings.parallel_per_file


def test_a_large_read_is_split_over_a_few_connections(archive, open_reader):
    """One connection to EMPIAR gives ~1.5 MB/s: a read's own blocks go out
    as up to 4 parallel requests of at least 256 KiB."""
    settings = make_settings(block_size=128 * KiB, max_request=8 * MiB, readahead=64 * MiB,
                             memory_cache=256 * MiB, parallel_per_file=16)
    key = archive.add("f", 32 * MiB, seed=7)
    archive.delay = 0.05
    reader = open_reader(settings)
    assert reader.read(key, 0, 1 * MiB) == archive.files["f"][:1 * MiB]
    assert sorted(archive.requests) == [("f", o, o + 256 * KiB) for o in range(0, MiB, 256 * KiB)]
    assert archive.max_active["f"] == 4
    archive.requests.clear()
    assert reader.read(key, 20 * MiB, 300 * KiB) == archive.files["f"][20 * MiB:20 * MiB + 300 * KiB]
    # 3 blocks: pieces of 2 blocks (the 256 KiB minimum), not 3 of one.
    assert sorted(e - s for _u, s, e in archive.requests) == [128 * KiB, 256 * KiB]


def test_readahead_waste_is_bounded_by_bytes_read(archive, open_reader):
    """A reader of one 2 MiB frame in 128 KiB reads (mmap, or a mount
    whose kernel read-ahead is 128 KiB) must not be sent the 64 MiB window
    that 16 reads in a row would earn by doubling alone."""
    settings = make_settings(block_size=128 * KiB, max_request=8 * MiB, readahead=64 * MiB,
                             memory_cache=512 * MiB, parallel_per_file=16)
    key = archive.add("stack", 128 * MiB, seed=4)
    reader = open_reader(settings)
    frame = 2 * MiB
    start = 40 * MiB
    for offset in range(start, start + frame, 128 * KiB):
        assert reader.read(key, offset, 128 * KiB) == archive.files["stack"][offset:offset + 128 * KiB]
    state = reader._files[key]
    assert wait_until(lambda: not state.flights, timeout=20)   # read-ahead done
    # Read-ahead stays within 8 x the 2 MiB read (plus one window step).
    assert archive.fetched_bytes() <= frame + 8 * frame + 2 * MiB
    # A long stream still reaches the full window.
    reader2 = open_reader(settings)
    key2 = archive.add("movie", 128 * MiB, seed=5)
    for offset in range(0, 40 * MiB, 1 * MiB):
        reader2.read(key2, offset, 1 * MiB)
    assert max(s.window for s in reader2.streams(key2)) == settings.readahead


def test_parallel_limits_per_file_and_total(archive, open_reader):
    settings = make_settings(block_size=16 * KiB, max_request=64 * KiB, readahead=1 * MiB,
                             memory_cache=32 * MiB, parallel_per_file=2, parallel_total=3)
    keys = [archive.add(f"f{n}", 2 * MiB, seed=n) for n in range(3)]
    archive.delay = 0.01
    reader = open_reader(settings)

    def stream(key):
        for offset in range(0, key.size, 64 * KiB):
            assert reader.read(key, offset, 64 * KiB) == archive.files[key.url][offset:offset + 64 * KiB]

    threads = [threading.Thread(target=stream, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(archive.max_active.values()) <= 2
    assert archive.max_active_total <= 3


def test_random_reads_fetch_at_most_four_times_what_they_read(archive, open_reader):
    settings = make_settings(block_size=256 * KiB, max_request=8 * MiB, readahead=64 * MiB,
                             memory_cache=256 * MiB)
    key = archive.add("r", 64 * MiB, seed=4)
    reader = open_reader(settings)
    rng = random.Random(7)
    read = 0
    for _ in range(200):
        offset = rng.randrange(key.size // (64 * KiB)) * 64 * KiB
        assert reader.read(key, offset, 64 * KiB) == archive.files["r"][offset:offset + 64 * KiB]
        read += 64 * KiB
    assert archive.fetched_bytes() <= 4 * read
    assert reader.stats.readahead_bytes == 0
    assert max(e - s for _u, s, e in archive.requests) == settings.block_size


def test_memory_and_disk_bounds_hold_while_reading_three_times_their_size(
        archive, open_reader, tmp_path):
    settings = make_settings(block_size=16 * KiB, max_request=128 * KiB, readahead=1 * MiB,
                             memory_cache=1 * MiB)
    disk_bound = 2 * MiB
    key = archive.add("big", 6 * MiB, seed=8)
    reader = open_reader(settings, disk=True, disk_bytes=disk_bound)
    directory = reader.disk.directory
    stop = threading.Event()
    samples = []

    def sampler():
        while not stop.is_set():
            samples.append((reader.memory.bytes_used, reader.disk.bytes_used, disk_bytes(directory)))

    watcher = threading.Thread(target=sampler)
    watcher.start()
    try:
        for offset in range(0, key.size, 48 * KiB):          # sequential pass
            assert reader.read(key, offset, 48 * KiB) == archive.files["big"][offset:offset + 48 * KiB]
        rng = random.Random(2)
        for _ in range(200):                                   # plus random reads
            offset = rng.randrange(key.size)
            assert reader.read(key, offset, 20000) == archive.files["big"][offset:offset + 20000]
    finally:
        stop.set()
        watcher.join()
    assert len(samples) > 10
    assert max(m for m, _, _ in samples) <= reader.memory.max_bytes
    assert max(d for _, d, _ in samples) <= disk_bound
    assert max(f for _, _, f in samples) <= disk_bound


# ------------------------------------------------------- versions, disk

def test_fingerprint_change_drops_old_blocks(archive, open_reader):
    key1 = archive.add("f", 20 * KiB, seed=1, etag="v1")
    reader = open_reader(disk=True)
    assert reader.read(key1, 0, 20 * KiB) == archive.files["f"]
    assert wait_until(lambda: reader.disk.info()["blocks"] == 5)
    key2 = archive.add("f", 20 * KiB, seed=2, etag="v2")   # same size, new content
    assert reader.read(key2, 0, 20 * KiB) == archive.files["f"]
    assert reader.memory.indices(key1) == []
    # The disk learns the new version with its first write (asynchronous).
    assert wait_until(lambda: reader.disk.fingerprint_key("f") == key2.fingerprint.key())
    assert wait_until(lambda: reader.disk.info()["blocks"] == 5)
    for idx in range(5):
        got = reader.disk.get("f", key2.fingerprint, idx)
        assert got == archive.files["f"][idx * 4096:(idx + 1) * 4096]


def test_reopened_disk_store_serves_with_zero_fetches(archive, open_reader, tmp_path):
    key = archive.add("f", 100 * KiB + 3, seed=6)
    directory = tmp_path / "persist"
    first = open_reader(disk=True, directory=directory)
    assert first.read(key, 0, key.size) == archive.files["f"]
    close(first)
    fetched = len(archive.requests)
    second = open_reader(disk=True, directory=directory)
    assert second.read(key, 0, key.size) == archive.files["f"]
    assert len(archive.requests) == fetched
    assert second.stats.hits_disk == 26 and second.stats.requests == 0


def test_a_busy_disk_store_is_a_miss_not_a_wait(archive, open_reader, tmp_path):
    """An index held by another process's write or commit on a stalled disk:
    the lookup gives up after LOOKUP_WAIT and the block comes from the
    network instead of the read waiting on the disk (past its deadline,
    unbounded)."""
    from empiarfs.cache import disk as disk_module

    key = archive.add("f", 8 * KiB, seed=9)
    directory = tmp_path / "busy"
    first = open_reader(disk=True, directory=directory)
    first.read(key, 0, key.size)
    close(first)
    second = open_reader(make_settings(deadline=5.0), disk=True, directory=directory)
    before = len(archive.requests)
    import contextlib

    from empiarfs.cache.disk import index as index_module

    with contextlib.ExitStack() as held:
        for _ in range(index_module.READERS):   # every reading connection
            held.enter_context(held_elsewhere(second.disk._index.read))
        started = time.monotonic()
        assert second.read(key, 0, key.size) == archive.files["f"]
        assert time.monotonic() - started < disk_module.LOOKUP_WAIT + 2.0
        assert len(archive.requests) > before
        assert second.disk.busy_misses >= 1
    assert second.disk.info()["busy_misses"] >= 1


def test_corrupt_block_on_disk_is_refetched(archive, open_reader, tmp_path):
    key = archive.add("f", 8 * KiB, seed=6)
    directory = tmp_path / "corrupt"
    first = open_reader(disk=True, directory=directory)
    first.read(key, 0, key.size)
    close(first)
    files = sorted(str(p) for p in (directory / "blocks").rglob("*.blk"))
    assert len(files) == 2
    with open(files[0], "r+b") as handle:
        handle.seek(40)
        value = handle.read(1)[0]
        handle.seek(40)
        handle.write(bytes([value ^ 1]))
    before = len(archive.requests)
    second = open_reader(disk=True, directory=directory)
    assert second.read(key, 0, key.size) == archive.files["f"]
    assert len(archive.requests) == before + 1
    assert second.stats.hits_disk == 1


# -------------------------------------------------------- deadline, errors

def test_hanging_fetch_raises_deadline_exceeded_in_time(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    reader = open_reader(make_settings(deadline=0.5))
    archive.hang.set()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as info:
        reader.read(key, 0, 100)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 2.0   # deadline 0.5 s; slack for a loaded CI machine
    assert info.value.errno == errno.EIO
    # Once the archive answers again, a new read starts a fresh fetch.
    archive.hang.clear()
    archive.release.set()
    assert reader.read(key, 0, 100) == archive.files["f"][:100]
    assert reader.stats.deadlines == 1


def test_fetch_error_reaches_every_waiter_and_is_not_cached(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    archive.hang.set()
    archive.fail_next = [RemoteError("archive down", url="f", status=503)]
    reader = open_reader()
    errors = []

    def worker():
        try:
            reader.read(key, 0, 10)
        except Exception as exc:   # noqa: BLE001 - the test inspects the type
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    # All four are waiting on the one (hung) request before it fails.
    assert wait_until(lambda: reader.stats.waits == 3)
    archive.hang.clear()
    archive.release.set()
    for t in threads:
        t.join()
    assert len(errors) == 4 and all(type(e) is RemoteError for e in errors)
    assert len(archive.requests) == 1
    assert reader.memory.indices(key) == []
    assert reader.read(key, 0, 10) == archive.files["f"][:10]
    assert len(archive.requests) == 2 and reader.stats.errors == 1


@pytest.mark.parametrize("error", [ConnectionResetError(104, "reset"),
                                   BadResponse("short body"), DeadlineExceeded("stalled")])
def test_fetch_error_types_are_preserved(archive, open_reader, error):
    key = archive.add("f", 64 * KiB)
    archive.fail_next = [error]
    reader = open_reader()
    with pytest.raises(type(error)):
        reader.read(key, 0, 10)
    assert reader.read(key, 0, 10) == archive.files["f"][:10]


def test_stale_file_drops_cached_blocks(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    reader = open_reader(disk=True)
    reader.read(key, 0, 10)
    assert wait_until(lambda: reader.disk.info()["blocks"] == 1)
    archive.fail_next = [StaleFile("changed", url="f")]
    with pytest.raises(StaleFile):
        reader.read(key, 40 * KiB, 10)
    assert reader.memory.indices(key) == []
    assert reader.disk.info()["blocks"] == 0
    assert reader.cached_ranges(key) == []


def test_wrong_length_reply_is_an_error_and_not_cached(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    archive.short = True
    reader = open_reader(disk=True)
    with pytest.raises(BadResponse, match="expected 4096"):
        reader.read(key, 0, 10)
    assert reader.cached_ranges(key) == []
    archive.short = False
    assert reader.read(key, 0, 10) == archive.files["f"][:10]


def test_invalidate_and_close(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    reader = open_reader(disk=True)
    reader.read(key, 0, 64 * KiB)
    assert wait_until(lambda: reader.disk.info()["blocks"] == 16)
    reader.invalidate("f")
    assert reader.cached_ranges(key) == [] and reader.disk.info()["blocks"] == 0
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(key, 0, 10)


def test_close_fails_waiting_readers(archive, open_reader):
    key = archive.add("f", 64 * KiB)
    reader = open_reader(make_settings(parallel_per_file=1))
    archive.hang.set()
    errors = []

    def worker(offset):
        try:
            reader.read(key, offset, 10)
        except Exception as exc:   # noqa: BLE001 - the test inspects the type
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(o,)) for o in (0, 32 * KiB)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(archive.requests) == 1)
    # The second read's job waits in the per-file queue (limit 1).
    assert wait_until(lambda: reader.stats.misses == 2)
    started = time.monotonic()
    reader.close(timeout=0.1)          # the hung fetch is left behind
    assert time.monotonic() - started < 2
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2
    assert all(type(e) is RemoteError and "closed" in str(e) for e in errors)
    assert len(archive.requests) == 1  # the queued job never ran


# ------------------------------------------------------------- disk faults

def test_enospc_keeps_reads_working(archive, open_reader, tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot mount a 1 MiB tmpfs here (needs root and mount permission)")
    try:
        key = archive.add("f", 4 * MiB, seed=9)
        reader = open_reader(make_settings(block_size=64 * KiB, max_request=512 * KiB),
                             disk=True, disk_bytes=64 * MiB, directory=mnt / "cache")
        for offset in range(0, key.size, 256 * KiB):
            assert reader.read(key, offset, 256 * KiB) == archive.files["f"][offset:offset + 256 * KiB]
        assert wait_until(lambda: not reader.disk.info()["writes_enabled"])
        close(reader)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_cache_dir_removed_under_reader(archive, open_reader, tmp_path):
    key = archive.add("f", 64 * KiB)
    reader = open_reader(disk=True, directory=tmp_path / "gone")
    reader.read(key, 0, 10)
    assert wait_until(lambda: reader.disk.info()["blocks"] == 1)
    shutil.rmtree(tmp_path / "gone")
    reader.memory.clear()
    assert reader.read(key, 0, 64 * KiB) == archive.files["f"]
    # The store starts over in a recreated directory and caches again.
    assert wait_until(lambda: reader.disk.info()["blocks"] == 16)
    assert (tmp_path / "gone" / "index.sqlite").exists()


# ------------------------------------------------------------ layering

def test_cache_package_never_imports_http_or_archive():
    root = pathlib.Path(empiarfs.cache.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for name in names:
                assert not any(bad in name for bad in ("http", "archive", "requests", "urllib")), (
                    f"{path.name} imports {name}")
