"""Load with faults (short CI version of scripts/soak): 64 concurrent
readers over the 3,000-file directory and the MRCS stacks while the server
stalls, truncates, resets and answers 503 bursts.

Every byte is checked; the daemon's memory stays bounded and its open file
descriptors do not leak; no read() call outlives the deadline bound.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from support.faultproxy import daemon_pid, proc_sample, run_load
from support.mounting import mounted, requires_fuse, stats

pytestmark = [requires_fuse, pytest.mark.fuse, pytest.mark.slow]

DEADLINE = 8.0
# Two deadlines: see READ_BOUND in test_faults_network.py.
BOUND = DEADLINE + 3.0  # one deadline per read() (see READ_BOUND in test_faults_network.py)
MEMORY_CACHE = 64 * 1024 * 1024


def load_truths(sample_root, manifest):
    truths = {}
    for f in manifest["files"]:
        if f["entry"] in ("EMPIAR-10943", "EMPIAR-10002") and f["path"].startswith("data/"):
            path = os.path.join(sample_root, "world_availability", f["entry"].split("-")[1], f["path"])
            with open(path, "rb") as fh:
                truths[f"{f['entry']}/{f['path']}"] = fh.read()
    return truths


def test_64_readers_with_faults(archive_server, faults, manifest, sample_root, settings_for, tmp_path):
    truths = load_truths(sample_root, manifest)
    assert len(truths) > 3000
    settings = settings_for(archive_server, tmp_path, deadline=DEADLINE, stall_timeout=1.0,
                            hedge_after=0.5, retries=4, backoff_max=0.2,
                            memory_cache=MEMORY_CACHE, cache_size=32 * 1024 * 1024)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        for d in ("EMPIAR-10943/data/Tiff", "EMPIAR-10002/data"):
            os.listdir(os.path.join(mnt, d))
        pid = daemon_pid(settings.cache_dir)
        rss_before, fds_before = proc_sample(pid)
        faults.set(paths="data", stall_probability=0.01, stall_seconds=3.0,
                   truncate_probability=0.03, reset_probability=0.02)

        def bursts(elapsed):
            if int(elapsed * 5) % 25 == 0:  # a 503 burst every ~5 s
                faults.error_burst(503, count=3)

        # Two rounds: descriptors held per worker thread or pooled connection
        # are bounded by concurrency; a leak grows with the work done.
        first = run_load(mnt, truths, readers=64, seconds=10, pid=pid, bound=BOUND, on_tick=bursts)
        time.sleep(4.0)  # stalled requests (3 s) end
        _, fds_mid = proc_sample(pid)
        result = run_load(mnt, truths, readers=64, seconds=10, pid=pid, bound=BOUND, seed=1,
                          on_tick=bursts)
        injected = {k: v for k, v in archive_server.stats.snapshot().items() if k.startswith("faults.")}
        faults.reset()
        time.sleep(4.0)
        _, fds_after = proc_sample(pid)
        open_files = Counter(os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}"))
                             for fd in os.listdir(f"/proc/{pid}/fd"))
        counters = stats(mnt)
    for r in (first, result):
        assert r.daemon_alive
        assert r.wrong_bytes == 0
        assert r.unclear == 0, r.errnos
        assert r.late_calls == 0, f"slowest read() {r.slowest_call:.1f} s"
        assert r.reads > 300 and r.whole >= 0.95 * r.reads, r
        # Memory: the memory cache plus a bounded working set of threads and buffers.
        assert r.peak_rss_kib < rss_before + (MEMORY_CACHE + 256 * 1024 * 1024) // 1024, r
    assert injected.get("faults.stall") and injected.get("faults.truncate") and injected.get("faults.error")
    # Descriptors other than the metadata store's stay flat (the store itself is
    # held to that by test_open_descriptors_do_not_grow_with_work).
    others = fds_after - open_files["cache.db"] - open_files["cache.db-wal"] - open_files["cache.db-shm"]
    assert others <= fds_before + settings.parallel_total + 16, open_files.most_common(8)
    assert counters["disk_cache"]["bytes_used"] <= 32 * 1024 * 1024


def test_open_descriptors_do_not_grow_with_work(archive_server, manifest, sample_root, settings_for,
                                                tmp_path):
    truths = load_truths(sample_root, manifest)
    settings = settings_for(archive_server, tmp_path, deadline=DEADLINE)
    with mounted(settings, tmp_path / "mnt") as mnt:
        os.listdir(os.path.join(mnt, "EMPIAR-10943/data/Tiff"))
        pid = daemon_pid(settings.cache_dir)
        run_load(mnt, truths, readers=64, seconds=5, pid=pid, bound=BOUND)
        time.sleep(1.0)
        _, fds_mid = proc_sample(pid)
        for seed in (1, 2):
            run_load(mnt, truths, readers=64, seconds=5, pid=pid, bound=BOUND, seed=seed)
        time.sleep(1.0)
        _, fds_after = proc_sample(pid)
    assert fds_after <= fds_mid + 16, (fds_mid, fds_after)
