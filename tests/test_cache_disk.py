"""empiarfs.cache.disk.DiskStore: persistence, checksums, versions, hard
byte bound, pins, error handling, crash safety, the shared and exclusive
directory modes. Many processes at once: tests/test_cache_shared.py."""

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from support.diskcache import block_files, disk_bytes, held_elsewhere

from empiarfs.cache.disk import CacheLocked, DiskStore
from empiarfs.model import Fingerprint

BS = 4096
HEADER = 32  # bytes of header per block file
URL = "https://example.invalid/data/a.mrc"
FP = Fingerprint(100 * BS + 100, "etag-1")


def payload(index, size=BS, seed=0):
    return random.Random(seed * 1_000_003 + index).randbytes(size)


@pytest.fixture
def store(tmp_path):
    s = DiskStore(str(tmp_path / "cache"), 1024 * 1024, block_size=BS)
    yield s
    s.close()


def test_roundtrip_info_ranges_drop(store):
    for i in (0, 1, 2, 7):
        assert store.put(URL, FP, i, payload(i))
    assert store.put(URL, FP, 100, payload(100, 100))   # the tail block
    assert store.get(URL, FP, 1) == payload(1)
    assert store.get(URL, FP, 100) == payload(100, 100)
    assert store.get(URL, FP, 3) is None
    assert store.has(URL, FP, 7) and not store.has(URL, FP, 8)
    info = store.info()
    assert info["blocks"] == 5 and info["files"] == 1
    assert info["bytes_used"] == 4 * (BS + HEADER) + 100 + HEADER
    assert info["bytes_used"] == disk_bytes(store.directory)
    assert store.cached_ranges(URL) == [(0, 3 * BS), (7 * BS, 8 * BS), (100 * BS, 100 * BS + 100)]
    assert store.drop_file(URL) == 5
    assert store.get(URL, FP, 1) is None
    assert store.info()["bytes_used"] == 0 and block_files(store.directory) == []


def test_partial_block_refused(store):
    with pytest.raises(ValueError, match="must be 4096 bytes"):
        store.put(URL, FP, 0, payload(0, BS - 1))
    with pytest.raises(ValueError):
        store.put(URL, FP, 100, payload(100, BS))      # tail is 100 bytes
    assert store.info()["blocks"] == 0


def test_storing_a_new_version_drops_old_blocks(store):
    store.put(URL, FP, 0, payload(0))
    store.put(URL, FP, 1, payload(1))
    store.put("other", FP, 0, payload(0, seed=9))
    new = Fingerprint(FP.size, "etag-2")
    assert store.get(URL, new, 0) is None             # another version is never served
    assert store.get(URL, FP, 0) == payload(0)        # a lookup alone changes nothing
    assert store.put(URL, new, 0, payload(0, seed=2))  # a writer stores the new version:
    assert store.get(URL, FP, 0) is None              # the old one's blocks are gone
    assert store.get(URL, FP, 1) is None and not store.has(URL, new, 1)
    assert store.get(URL, new, 0) == payload(0, seed=2)
    assert store.get("other", FP, 0) == payload(0, seed=9)
    assert store.info()["blocks"] == 2
    assert len(block_files(store.directory)) == 2
    store.open(URL, FP)                               # declaring a version switches too
    assert store.get(URL, new, 0) is None and store.info()["blocks"] == 1


def test_one_version_seen_through_other_metadata_shares_blocks(store):
    ftp = Fingerprint(FP.size, None, "1700000000")                          # size, FTP time
    head = Fingerprint(FP.size, '"abc"', "Tue, 14 Nov 2023 22:13:20 GMT")  # ETag, HTTP date
    store.put(URL, ftp, 0, payload(0))
    assert store.get(URL, head, 0) == payload(0)      # the same version, by change_from
    assert store.put(URL, head, 1, payload(1))        # no drop; the ETag is learnt
    assert store.get(URL, ftp, 0) == payload(0) and store.get(URL, ftp, 1) == payload(1)
    assert store.cached_ranges(URL, head) == [(0, 2 * BS)]
    other = Fingerprint(FP.size, '"def"')
    assert store.get(URL, other, 0) is None           # another ETag is another version
    assert store.cached_ranges(URL, other) == []
    assert store.get(URL, Fingerprint(FP.size + 1, None, "1700000000"), 0) is None


def test_corrupt_block_is_deleted_not_served(store):
    store.put(URL, FP, 3, payload(3))
    (path,) = block_files(store.directory)
    with open(path, "r+b") as handle:
        handle.seek(HEADER + 1000)
        byte = handle.read(1)
        handle.seek(HEADER + 1000)
        handle.write(bytes([byte[0] ^ 0x40]))
    assert store.get(URL, FP, 3) is None
    assert not os.path.exists(path)
    assert store.info()["blocks"] == 0 and store.info()["bytes_used"] == 0


def test_truncated_or_missing_block_file_is_missing(store):
    store.put(URL, FP, 0, payload(0))
    store.put(URL, FP, 1, payload(1))
    first, second = sorted(block_files(store.directory))
    os.truncate(first, 100)
    os.unlink(second)
    assert store.get(URL, FP, 0) is None
    assert store.get(URL, FP, 1) is None
    assert store.info()["blocks"] == 0


def test_reopen_serves_blocks_and_keeps_pins(tmp_path):
    directory = str(tmp_path / "c")
    with DiskStore(directory, 1 << 20, block_size=BS) as s:
        for i in range(5):
            s.put(URL, FP, i, payload(i))
        s.pin("pinned-url")
        s.get(URL, FP, 0)
    with DiskStore(directory, 1 << 20, block_size=BS) as s:
        assert all(s.get(URL, FP, i) == payload(i) for i in range(5))
        assert s.pinned() == ["pinned-url"]
        assert s.info()["bytes_used"] == 5 * (BS + HEADER)


def test_reopen_with_other_block_size_discards(tmp_path):
    directory = str(tmp_path / "c")
    with DiskStore(directory, 1 << 20, block_size=BS) as s:
        s.put(URL, FP, 0, payload(0))
    with DiskStore(directory, 1 << 20, block_size=2 * BS) as s:
        assert s.info()["blocks"] == 0 and block_files(directory) == []


def test_reopen_with_lower_bound_evicts(tmp_path):
    directory = str(tmp_path / "c")
    with DiskStore(directory, 1 << 20, block_size=BS) as s:
        for i in range(20):
            s.put(URL, FP, i, payload(i))
    with DiskStore(directory, 5 * (BS + HEADER), block_size=BS) as s:
        assert s.info()["blocks"] == 5
        assert disk_bytes(directory) <= s.max_bytes
        assert [i for i in range(20) if s.has(URL, FP, i)] == [15, 16, 17, 18, 19]


def test_lru_eviction_order(tmp_path):
    with DiskStore(str(tmp_path / "c"), 3 * (BS + HEADER), block_size=BS) as s:
        for i in range(3):
            s.put(URL, FP, i, payload(i))
        assert s.get(URL, FP, 0) is not None          # 0 is now most recent
        s.put(URL, FP, 3, payload(3))                  # evicts 1
        assert [i for i in range(4) if s.has(URL, FP, i)] == [0, 2, 3]


def test_pinned_files_never_evicted(tmp_path):
    with DiskStore(str(tmp_path / "c"), 4 * (BS + HEADER), block_size=BS) as s:
        s.pin(URL)
        for i in range(3):
            assert s.put(URL, FP, i, payload(i))
        for i in range(10):
            s.put("other", FP, i, payload(i))
        assert all(s.has(URL, FP, i) for i in range(3))
        assert s.info()["pinned_bytes"] == 3 * (BS + HEADER)
        s.put(URL, FP, 3, payload(3))
        assert s.put("other", FP, 50, payload(50)) is False   # full of pinned blocks
        assert s.info()["bytes_used"] <= s.max_bytes
        s.unpin(URL)
        assert s.put("other", FP, 50, payload(50))
        assert not s.has(URL, FP, 0)


def test_block_evicted_while_being_read_is_still_served(tmp_path, monkeypatch):
    """Another process cannot know which blocks this one is reading, so
    eviction may unlink a block file a reader has open: the reader still
    gets every byte (an unlinked file lives on for whoever has it open),
    and the bound holds."""
    from empiarfs.cache.disk import blockfile

    s = DiskStore(str(tmp_path / "c"), 2 * (BS + HEADER), block_size=BS)
    s.put(URL, FP, 0, payload(0))
    s.put(URL, FP, 1, payload(1))                # 0 is now the least recent
    opened, release = threading.Event(), threading.Event()
    real_read = os.read

    def paused_read(fd, n):
        if threading.current_thread().name == "block-reader" and not opened.is_set():
            opened.set()                          # the file is open: pause mid-read
            assert release.wait(5)
        return real_read(fd, n)

    monkeypatch.setattr(blockfile.os, "read", paused_read)
    result = []
    reader = threading.Thread(target=lambda: result.append(s.get(URL, FP, 0)), name="block-reader")
    reader.start()
    try:
        assert opened.wait(5)
        assert s.put(URL, FP, 2, payload(2))      # evicts 0, open in the reader
        assert not s.has(URL, FP, 0) and s.has(URL, FP, 1)
        assert s.bytes_used == disk_bytes(s.directory) <= s.max_bytes
    finally:
        release.set()
        reader.join()
        s.close()
    assert result == [payload(0)]


def test_bound_holds_during_concurrent_writes(tmp_path):
    bound = 40 * (BS + HEADER)
    s = DiskStore(str(tmp_path / "c"), bound, block_size=BS)
    stop = threading.Event()
    samples = []

    def sampler():
        while not stop.is_set():
            samples.append((s.bytes_used, disk_bytes(s.directory)))

    def writer(seed):
        rng = random.Random(seed)
        for _ in range(60):                       # 8 x 60 blocks = 12x the bound
            idx = rng.randrange(100)
            s.put(f"url-{seed % 3}", FP, idx, payload(idx, seed=seed % 3))
            got = s.get(f"url-{seed % 3}", FP, rng.randrange(100))
            assert got is None or len(got) == BS

    watcher = threading.Thread(target=sampler)
    watcher.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    s.close()
    assert len(samples) > 5
    assert max(used for used, _ in samples) <= bound
    assert max(on_disk for _, on_disk in samples) <= bound
    with DiskStore(s.directory, bound, block_size=BS) as again:
        assert again.bytes_used == disk_bytes(s.directory) <= bound
        for n in range(3):
            for idx in range(100):
                got = again.get(f"url-{n}", FP, idx)
                assert got is None or got == payload(idx, seed=n)


def test_bound_in_force_is_the_largest_of_the_processes_using_the_directory(tmp_path):
    directory = str(tmp_path / "c")
    big = DiskStore(directory, 20 * (BS + HEADER), block_size=BS)
    for i in range(20):
        assert big.put(URL, FP, i, payload(i))
    # A store opened with a smaller bound (a default-sized `cache info`, a
    # Dask worker) does not trim the larger one's cache...
    with DiskStore(directory, 5 * (BS + HEADER), block_size=BS) as small:
        assert small.bytes_used == 20 * (BS + HEADER)
        assert small.info()["max_bytes"] == 20 * (BS + HEADER)
        assert small.info()["own_max_bytes"] == 5 * (BS + HEADER)
        assert small.put(URL, FP, 20, payload(20))          # evicts one, not fifteen
        assert small.bytes_used == 20 * (BS + HEADER)
        big.close()
        # ...until the larger one leaves: then its own bound is in force.
        assert small.put(URL, FP, 21, payload(21))
        assert small.bytes_used == disk_bytes(directory) == 5 * (BS + HEADER)
        assert [i for i in range(22) if small.has(URL, FP, i)] == [17, 18, 19, 20, 21]


def test_a_new_version_stored_by_another_process_is_seen(tmp_path, monkeypatch):
    from empiarfs.cache.disk import versions

    monkeypatch.setattr(versions, "REVALIDATE_AFTER", 0.05)
    directory = str(tmp_path / "c")
    new = Fingerprint(FP.size, "etag-2")
    with DiskStore(directory, 1 << 20, block_size=BS) as a, \
            DiskStore(directory, 1 << 20, block_size=BS) as b:
        assert a.put(URL, FP, 0, payload(0))
        assert b.get(URL, FP, 0) == payload(0)             # b learns url -> a's fid
        assert a.put(URL, new, 0, payload(0, seed=2))      # a stores a new version
        assert b.get(URL, FP, 0) is None                   # the old one's file is gone
        time.sleep(0.1)
        assert b.get(URL, new, 0) == payload(0, seed=2)    # b asks the index again
        assert b.fingerprint_key(URL) == new.key()
        a.flush()       # what a finished counts for b's summaries (within FLUSH_EVERY)
        assert b.cached_ranges(URL, new) == [(0, BS)] and b.cached_ranges(URL, FP) == []


def test_one_held_reading_connection_does_not_stop_other_lookups(store):
    # Threads of one process read the index through a small pool: a cold
    # header scan (16 threads, new files) queued behind a single one.
    store.put(URL, FP, 0, payload(0))
    other = DiskStore(store.directory, 1 << 20, block_size=BS)
    with held_elsewhere(other._index.read):
        started = time.monotonic()
        assert other.get(URL, FP, 0) == payload(0)
        assert time.monotonic() - started < 0.5 and other.busy_misses == 0
    other.close()


def test_a_busy_index_is_a_miss_not_a_wait(store):
    """A lookup that must ask the index (a URL not met in the last second)
    gives up after LOOKUP_WAIT if every reading connection of this process
    is held (a stalled disk), and the block comes from the network instead."""
    import contextlib

    from empiarfs.cache.disk import index as index_module
    from empiarfs.cache.disk import store as store_module

    store.put(URL, FP, 0, payload(0))
    other = DiskStore(store.directory, 1 << 20, block_size=BS)
    with contextlib.ExitStack() as held:
        for _ in range(index_module.READERS):
            held.enter_context(held_elsewhere(other._index.read))
        started = time.monotonic()
        assert other.get(URL, FP, 0) is None
        assert store_module.LOOKUP_WAIT <= time.monotonic() - started < store_module.LOOKUP_WAIT + 1
        assert other.busy_misses == 1
    assert other.get(URL, FP, 0) == payload(0)             # and once free, a hit
    assert other.info()["busy_misses"] == 1
    other.close()


def test_files_lists_what_is_cached_and_pinned(store):
    store.put(URL, FP, 0, payload(0))
    store.put(URL, FP, 100, payload(100, 100))
    store.pin("https://example.invalid/pinned")
    assert store.files() == [
        {"url": URL, "size": FP.size, "cached": BS + 100, "pinned": False},
        {"url": "https://example.invalid/pinned", "size": None, "cached": 0, "pinned": True},
    ]


def test_clear_keeps_pins(store):
    store.pin(URL)
    store.put(URL, FP, 0, payload(0))
    store.put("b", FP, 0, payload(0))
    store.clear()
    info = store.info()
    assert info["blocks"] == 0 and info["bytes_used"] == 0
    assert block_files(store.directory) == []
    assert store.pinned() == [URL]


def test_shared_by_default_exclusive_on_request(tmp_path):
    directory = str(tmp_path / "c")
    with DiskStore(directory, 1 << 20, block_size=BS) as a, \
            DiskStore(directory, 1 << 20, block_size=BS) as b:
        assert a.put(URL, FP, 0, payload(0))
        assert b.get(URL, FP, 0) == payload(0)            # one cache, two stores
        assert b.info()["processes"] == 2
        with pytest.raises(CacheLocked, match=f"in use by process {os.getpid()}"):
            DiskStore(directory, 1 << 20, block_size=BS, exclusive=True)
        with pytest.raises(CacheLocked, match=f"block size {BS}, not {2 * BS}"):
            DiskStore(directory, 1 << 20, block_size=2 * BS)
    with DiskStore(directory, 1 << 20, block_size=BS, exclusive=True) as alone:
        assert alone.get(URL, FP, 0) == payload(0)
        code = (
            "import sys\n"
            "from empiarfs.cache.disk import DiskStore, CacheLocked\n"
            "try:\n"
            f"    DiskStore({directory!r}, 1 << 20, block_size={BS})\n"
            "except CacheLocked as exc:\n"
            "    print(exc); sys.exit(3)\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 3, proc.stderr
        assert f"process {os.getpid()}, which holds it exclusively" in proc.stdout
    with DiskStore(directory, 1 << 20, block_size=BS):   # released on close
        pass


def test_blocks_of_a_process_that_exited_without_closing_are_kept(tmp_path):
    """A Python process that ends without closing its store has finished
    blocks it never confirmed in the index: the next one keeps them (they
    are whole: a block file only appears by a rename)."""
    import sqlite3

    directory = str(tmp_path / "c")
    code = textwrap.dedent(f"""
        import os, random
        from empiarfs.cache.disk import DiskStore
        from empiarfs.model import Fingerprint
        s = DiskStore({directory!r}, 1 << 20, block_size={BS})
        for i in range(5):
            assert s.put({URL!r}, Fingerprint({FP.size}, {FP.etag!r}), i,
                         random.Random(i).randbytes({BS}))
        os._exit(0)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(os.path.join(directory, "index.sqlite")) as db:
        assert db.execute("SELECT COUNT(*) FROM blocks WHERE owner IS NOT NULL").fetchone()[0] >= 1
    with DiskStore(directory, 1 << 20, block_size=BS) as s:
        assert [s.get(URL, FP, i) == payload(i) for i in range(5)] == [True] * 5
        assert s.info()["blocks"] == 5 and s.info()["reserved_bytes"] == 0
        assert s.bytes_used == disk_bytes(directory) == 5 * (BS + HEADER)


def test_directory_removed_while_running(store):
    from empiarfs.cache.disk import store as store_module

    store.put(URL, FP, 0, payload(0))
    shutil.rmtree(store.directory)
    assert store.get(URL, FP, 0) is None              # no crash, just missing
    assert store.put(URL, FP, 1, payload(1))          # cache made again at once
    assert store.get(URL, FP, 1) == payload(1)
    assert os.path.exists(os.path.join(store.directory, "index.sqlite"))
    assert store.info()["writes_enabled"] and store.bytes_used == BS + HEADER
    # Emptied but still there: a removal may be going on; writes pause.
    for name in os.listdir(store.directory):
        path = os.path.join(store.directory, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    assert store.put(URL, FP, 2, payload(2)) is False
    assert os.listdir(store.directory) == []
    time.sleep(store_module.REOPEN_PAUSE)
    assert store.put(URL, FP, 2, payload(2))          # then it is made again
    assert store.get(URL, FP, 2) == payload(2)


def test_unwritable_store_keeps_working(tmp_path, monkeypatch):
    s = DiskStore(str(tmp_path / "c"), 1 << 20, block_size=BS)
    s.put(URL, FP, 0, payload(0))
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if str(path).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    import builtins
    monkeypatch.setattr(builtins, "open", failing_open)
    try:
        assert s.put(URL, FP, 1, payload(1)) is False
        assert s.info()["writes_enabled"] is False
        assert s.put(URL, FP, 2, payload(2)) is False     # off for a while, no retry storm
        assert s.get(URL, FP, 0) == payload(0)            # reads still served
        assert s.info()["bytes_used"] == BS + HEADER      # reservation released
    finally:
        monkeypatch.undo()
        s.close()


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, timeout=30)
    return proc.returncode == 0


def test_enospc_on_tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        s = DiskStore(str(mnt / "cache"), 64 * 1024 * 1024, block_size=BS)
        stored = []
        big = Fingerprint(400 * BS, "etag-big")
        for i in range(400):                       # 1.6 MiB into a 1 MiB filesystem
            if s.put(URL, big, i, payload(i)):
                stored.append(i)
        assert s.info()["writes_enabled"] is False
        assert len(stored) < 400
        for i in stored:                            # what was stored is still served
            got = s.get(URL, big, i)
            assert got is None or got == payload(i)
        s.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


CRASH_WRITER = textwrap.dedent(
    """
    import random, sys, threading
    from empiarfs.cache.disk import DiskStore
    from empiarfs.model import Fingerprint
    directory, ready = sys.argv[1], sys.argv[2]
    BS = 4096
    FP = Fingerprint(100 * BS + 100, "etag-1")
    s = DiskStore(directory, 60 * (BS + 32), block_size=BS)
    def payload(index):
        return random.Random(index).randbytes(BS)
    def work(seed):
        rng = random.Random(seed)
        n = 0
        while True:
            idx = rng.randrange(100)
            s.put("u", FP, idx, payload(idx))
            n += 1
            if n == 50 and seed == 0:
                open(ready, "w").close()
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    threads[0].join()
    """
)


def test_sigkill_mid_write_leaves_only_verified_blocks(tmp_path):
    directory = str(tmp_path / "c")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, directory, str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "writer died early"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.01)
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Simulate a torn write on top of the kill: corrupt one stored block.
    files = [f for f in block_files(directory) if f.endswith(".blk")]
    assert files
    with open(files[0], "r+b") as handle:
        handle.seek(HEADER + 5)
        handle.write(b"\x00\xff\x00")
    with DiskStore(directory, 60 * (BS + HEADER), block_size=BS) as s:
        assert not [f for f in block_files(directory) if f.endswith(".tmp")]
        assert s.bytes_used == disk_bytes(directory) <= s.max_bytes
        served = 0
        for idx in range(100):
            got = s.get("u", FP, idx)
            if got is not None:
                assert got == random.Random(idx).randbytes(BS)
                served += 1
        assert served >= 1
        assert s.info()["blocks"] == served
