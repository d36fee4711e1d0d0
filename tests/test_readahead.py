"""The read-ahead policy (empiarfs.cache.readahead), as pure values, and
the fetch scheduler's per-item limits (empiarfs.cache.scheduler)."""

import threading
import time

import pytest

from empiarfs.cache.readahead import ReadAhead, ReadAheadConfig
from empiarfs.cache.scheduler import FetchScheduler
from empiarfs.errors import RemoteError

KiB, MiB = 1024, 1024 * 1024
CFG = ReadAheadConfig(block_size=128 * KiB, max_window=64 * MiB, max_request=8 * MiB, connections=16)


def stream_reads(policy, start, size, count):
    plans = []
    for i in range(count):
        offset = start + i * size
        plans.append(policy.on_read(offset, offset + size))
    return plans


def test_random_reads_never_read_ahead():
    policy = ReadAhead(CFG, 1 << 30)
    for offset in (5 * MiB, 100 * MiB, 7 * MiB, 300 * MiB, 42 * MiB):
        assert policy.on_read(offset, offset + 128 * KiB) is None


def test_read_ahead_starts_at_the_second_continuation():
    plans = stream_reads(ReadAhead(CFG, 1 << 30), 0, 128 * KiB, 3)
    assert plans[0] is None and plans[1] is None and plans[2] is not None
    assert plans[2].start == 3 * 128 * KiB


def test_window_stays_within_eight_times_what_the_stream_read():
    policy = ReadAhead(CFG, 1 << 30)
    plans = [p for p in stream_reads(policy, 0, 128 * KiB, 16) if p is not None]
    read = 16 * 128 * KiB
    assert policy.largest_window <= 8 * read
    assert max(p.stop for p in plans) - read <= 8 * read


def test_window_doubles_up_to_its_bound():
    policy = ReadAhead(CFG, 1 << 33)
    stream_reads(policy, 0, 1 * MiB, 200)
    assert policy.largest_window == CFG.max_window


def test_pieces_keep_every_connection_busy():
    assert CFG.piece(64 * MiB) == 2 * MiB            # 64 MiB / (2 x 16)
    assert CFG.piece(1 * MiB) == 128 * KiB           # at least one block
    assert CFG.piece(1 << 40) == CFG.max_request     # at most max_request
    assert CFG.piece(3 * MiB) % CFG.block_size == 0  # whole blocks


def test_plans_never_pass_the_end_of_the_file():
    size = 3 * MiB + 5
    policy = ReadAhead(CFG, size)
    plans = [p for p in stream_reads(policy, 0, 128 * KiB, 30) if p is not None]
    assert plans and all(p.stop <= size for p in plans)


def test_a_slightly_out_of_order_read_continues_the_stream():
    policy = ReadAhead(CFG, 1 << 30)
    policy.on_read(0, 128 * KiB)
    policy.on_read(256 * KiB, 384 * KiB)   # skipped one read (the kernel reordered)
    assert policy.on_read(384 * KiB, 512 * KiB) is not None


def test_interleaved_streams_are_tracked_apart_and_forgotten():
    policy = ReadAhead(CFG, 1 << 30)
    for i in range(4):
        for base in (0, 500 * MiB):
            policy.on_read(base + i * MiB, base + (i + 1) * MiB)
    assert len(policy.streams) == 2 and all(s.window for s in policy.streams)
    policy.forget()
    assert policy.streams == []


def _recording_scheduler(per_item):
    started, active, peak = [], [0], [0]
    lock = threading.Lock()
    gate = threading.Event()

    def run(item, job):
        with lock:
            started.append(job)
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        gate.wait(5)
        with lock:
            active[0] -= 1

    return FetchScheduler(run, workers=8, per_item=per_item), started, peak, gate


def _settle(sched, item):
    deadline = time.monotonic() + 5
    while sched.busy(item) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not sched.busy(item)


def test_scheduler_limits_each_item():
    sched, started, peak, gate = _recording_scheduler(per_item=2)
    for job in range(6):
        sched.submit("a", job, urgent=False)
    time.sleep(0.2)
    assert len(started) == 2          # two slots, the rest queued
    gate.set()
    _settle(sched, "a")
    assert peak[0] == 2 and sorted(started) == list(range(6))
    sched.close()
    with pytest.raises(RemoteError):
        sched.submit("a", "late", urgent=True)


def test_scheduler_runs_demand_before_read_ahead_and_promotes():
    sched, started, _, gate = _recording_scheduler(per_item=1)
    sched.submit("a", "running", urgent=False)
    for job in ("bg1", "bg2", "bg3"):
        sched.submit("a", job, urgent=False)
    sched.submit("a", "demand", urgent=True)
    sched.promote("a", lambda job: job == "bg3")   # a reader now waits for bg3
    gate.set()
    _settle(sched, "a")
    assert started == ["running", "demand", "bg3", "bg1", "bg2"]
    sched.close()


def test_scheduler_hands_back_queued_jobs_on_cancel_and_close():
    gate = threading.Event()
    sched = FetchScheduler(lambda item, job: gate.wait(5), workers=1, per_item=1)
    sched.submit("f", "running", urgent=True)
    sched.submit("f", "ahead", urgent=False)
    sched.submit("f", "wanted", urgent=True)
    assert sched.cancel_background("f") == ["ahead"]
    # Closed while "running" still runs: the queued demand is handed back.
    assert sched.close(timeout=0.1) == [("f", "wanted")]
    gate.set()


def test_a_fast_link_uses_few_connections_per_file():
    from empiarfs.cache.readahead import FAST_LINK_CONNECTIONS, FAST_LINK_TTFB, connections_for_link

    assert connections_for_link(None, 16) == 16              # not timed yet: a long path
    assert connections_for_link(0.2, 16) == 16               # EMPIAR-like
    assert connections_for_link(FAST_LINK_TTFB / 10, 16) == FAST_LINK_CONNECTIONS
    assert connections_for_link(FAST_LINK_TTFB / 10, 1) == 1  # never more than asked
    assert connections_for_link(0.0005, 0) == 1


def test_fewer_connections_mean_larger_pieces():
    from empiarfs.cache.readahead import ReadAheadConfig

    class S:
        block_size, readahead, max_request, parallel_per_file = 128 * 1024, 64 * MiB, 8 * MiB, 16

    slow = ReadAheadConfig.from_settings(S, 1024 * MiB)
    fast = ReadAheadConfig.from_settings(S, 1024 * MiB, connections=2)
    assert slow.piece(64 * MiB) == 2 * MiB and fast.piece(64 * MiB) == 8 * MiB
