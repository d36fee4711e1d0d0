"""The block reader: memory -> disk -> network, single-flight, read-ahead.

The reader reaches the network only through ``fetch(url, start, end,
fingerprint) -> bytes`` (bytes ``[start, end)``, clipped at end of file);
it never imports ``http`` or ``archive``.

How a read works
----------------
1. Under the reader lock, each block of the request is looked up in the
   memory LRU; a block another read is already loading is *waited for*
   (its ``_Flight``); every other block is *claimed* (a new flight), so a
   block is loaded by exactly one thread (single-flight).
2. Outside the lock, claimed blocks are looked up on disk; the rest are
   coalesced into range requests of at most ``max_request`` bytes and run
   on a shared thread pool (``parallel_total`` threads), at most
   ``parallel_per_file`` at a time per file (further jobs queue per file,
   demand before read-ahead).
3. The read waits for its flights until ``settings.deadline`` and raises
   :class:`DeadlineExceeded` if they are not done; the fetch may go on and
   still fills the caches. Flights it gave up on are forgotten so the next
   read of those blocks starts a new fetch instead of waiting on a hung one.
4. A fetch error is delivered, as the same exception object, to every
   read waiting on its blocks; nothing is cached. ``StaleFile`` also drops
   every cached block of the file.

Sequential reads (each starting where a previous read of the file ended,
or up to one read later; read-ahead starts at the third such read) get a
read-ahead window from 1 MiB, doubling with each read but never above
8 times the bytes the stream has read so far, up to ``settings.readahead``
(and at most a quarter of the memory cache, so prefetched blocks are not
evicted before they are read): a reader of one 2 MiB frame is not sent
64 MiB of the next ones, while a long stream soon keeps every connection
busy. Random reads fetch only the blocks they touch.

Lock order
----------
``BlockReader._lock`` -> ``MemoryLRU._lock`` / ``DiskStore._lock`` /
``ReaderStats._lock`` / the executor's internal lock. The last four are
leaves. The reader lock is never held while calling ``fetch``, reading or
writing block payloads on disk, or waiting on a flight.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from empiarfs import ranges
from empiarfs.cache.blocks import Request, blocks_for, coalesce
from empiarfs.cache.disk import DiskStore
from empiarfs.cache.memory import MemoryLRU
from empiarfs.cache.stats import ReaderStats
from empiarfs.config import MiB
from empiarfs.errors import BadResponse, DeadlineExceeded, RemoteError, StaleFile
from empiarfs.model import Fingerprint

log = logging.getLogger(__name__)

Fetch = Callable[[str, int, int, Fingerprint], bytes]

# First read-ahead window of a sequential stream.
INITIAL_WINDOW = 1 * MiB
# The window doubles per read but stays within this many times the bytes
# the stream has read, so the waste when a reader stops (at a frame's or a
# region's end) is bounded by what it read; a smaller factor ramps up too
# slowly on a slow link (docs/performance.md, "Tuning").
WINDOW_PER_BYTE_READ = 8
# A read's own missing blocks go out in at most this many requests, each
# at least MIN_URGENT_PIECE: before read-ahead starts, a stream's first
# reads would otherwise come at one connection's speed.
URGENT_PIECES = 4
MIN_URGENT_PIECE = 256 * 1024
# Sequential streams remembered per file (interleaved readers of one file).
STREAMS_PER_FILE = 8
# Idle per-file states kept before pruning.
MAX_IDLE_STATES = 4096
# Bytes of fetched blocks waiting for the disk writer, at most.
DISK_QUEUE_BYTES = 64 * MiB


@dataclass(frozen=True)
class FileKey:
    """One version of one remote file: its URL and fingerprint (whose
    ``size`` is the file size)."""

    url: str
    fingerprint: Fingerprint

    @property
    def size(self) -> int:
        return self.fingerprint.size


class _Flight:
    """One block being loaded; readers wait on ``event``."""

    __slots__ = ("event", "data", "error", "started")

    def __init__(self):
        self.event = threading.Event()
        self.data: Optional[bytes] = None
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()


class _Stream:
    __slots__ = ("start", "end", "last_size", "hits", "window", "ahead")

    def __init__(self, end: int, last_size: int):
        self.start = end - last_size  # where the stream began
        self.end = end              # where the next sequential read starts
        self.last_size = last_size  # size of the last read of this stream
        self.hits = 0               # reads that continued this stream
        self.window = 0             # read-ahead window (0: not sequential yet)
        self.ahead = end            # read-ahead was issued up to here


class _FileState:
    """Reader state of one file version (all fields guarded by the reader
    lock)."""

    def __init__(self, key: FileKey):
        self.key = key
        self.fid = (key.url, key.fingerprint.key())
        self.flights: dict[int, _Flight] = {}
        self.streams: list[_Stream] = []
        self.active = 0
        self.urgent: deque = deque()
        self.background: deque = deque()

    def idle(self) -> bool:
        return not (self.flights or self.active or self.urgent or self.background)


class BlockReader:
    """Serve byte ranges of remote files from memory, disk or network.

    Parameters
    ----------
    fetch : callable
        ``fetch(url, start, end, fingerprint) -> bytes``; may raise
        ``RemoteError``, ``StaleFile``, ``DeadlineExceeded`` or any
        ``OSError``.
    settings : empiarfs.config.Settings
        Uses ``block_size``, ``max_request``, ``readahead``,
        ``parallel_per_file``, ``parallel_total`` and ``deadline``.
    memory : MemoryLRU
        The memory cache (shared by all files).
    disk : DiskStore or None
        The persistent cache; ``None`` for memory only.
    stats : ReaderStats, optional
        Counters; a new one is made if omitted (``reader.stats``).

    Raises
    ------
    ValueError
        If the disk store uses another block size than ``settings``.
    """

    def __init__(self, fetch: Fetch, settings, memory: MemoryLRU,
                 disk: Optional[DiskStore] = None, stats: Optional[ReaderStats] = None):
        if disk is not None and disk.block_size != settings.block_size:
            raise ValueError(
                f"disk cache block size {disk.block_size} differs from settings.block_size "
                f"{settings.block_size}; open the DiskStore with block_size=settings.block_size")
        self._fetch = fetch
        self.settings = settings
        self.memory = memory
        self.disk = disk
        self.stats = stats if stats is not None else ReaderStats()
        self._bs = settings.block_size
        self._max_window = max(self._bs, min(settings.readahead, memory.max_bytes // 4))
        self._lock = threading.Lock()
        self._files: dict[tuple, _FileState] = {}
        self._url_fids: dict[str, set] = {}
        self._futures: set = set()
        self._closed = False
        self._disk_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._disk_queued = 0
        self._disk_thread: Optional[threading.Thread] = None
        # Set by close() once the writer is told to stop; fetches finishing
        # during close() still queue their blocks until then.
        self._disk_stopped = False
        # Threads are created lazily on the first submit, i.e. after a
        # daemon has forked.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, settings.parallel_total), thread_name_prefix="empiarfs-fetch")

    # ------------------------------------------------------------------ read
    def read(self, key: FileKey, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of the file, short only at the
        end of the file (``b""`` past it).

        Raises
        ------
        ValueError
            If ``offset`` or ``size`` is negative, or the reader is closed.
        DeadlineExceeded
            If the data is not there within ``settings.deadline`` seconds.
        RemoteError, StaleFile, OSError
            As raised by ``fetch`` for a block of this read.
        """
        if offset < 0 or size < 0:
            raise ValueError(f"negative offset or size: offset={offset} size={size}")
        if self._closed:
            raise ValueError("block reader is closed")
        file_size = key.fingerprint.size
        indices = blocks_for(offset, size, self._bs, file_size)
        if not indices:
            return b""
        end = min(offset + size, file_size)
        deadline = time.monotonic() + self.settings.deadline
        found: dict[int, bytes] = {}
        waiting: dict[int, _Flight] = {}
        claimed: dict[int, _Flight] = {}
        with self._lock:
            state = self._state(key)
            for idx in indices:
                data = self.memory.get(state.fid, idx)
                if data is not None:
                    found[idx] = data
                    continue
                flight = state.flights.get(idx)
                if flight is None:
                    flight = state.flights[idx] = _Flight()
                    claimed[idx] = flight
                else:
                    self.stats.add("waits")
                    self._promote(state, idx)
                waiting[idx] = flight
            prefetch, piece = self._plan_readahead(state, offset, end)
        if found:
            self.stats.add("hits_memory", len(found))
        try:
            self._load(state, claimed, urgent=True)
        finally:
            if prefetch:
                self._submit_background(state, prefetch, piece)
        for idx, flight in waiting.items():
            remaining = deadline - time.monotonic()
            if not flight.event.wait(max(0.0, remaining)):
                self._give_up(state, waiting)
                self.stats.add("deadlines")
                raise DeadlineExceeded(
                    f"read of {key.url} [{offset}, {end}) not served within "
                    f"{self.settings.deadline:g} s (archive slow or unreachable)", url=key.url)
            if flight.error is not None:
                raise flight.error
            found[idx] = flight.data
        first = indices.start
        if len(indices) == 1:
            block = found[first]
        else:
            block = b"".join(found[i] for i in indices)
        lo = offset - first * self._bs
        return block[lo:lo + (end - offset)]

    # ------------------------------------------------------------- internals
    def _state(self, key: FileKey) -> _FileState:
        """Per-file state (reader lock held)."""
        fid = (key.url, key.fingerprint.key())
        state = self._files.get(fid)
        if state is not None:
            return state
        fids = self._url_fids.setdefault(key.url, set())
        # A new version of the URL: blocks of older versions are stale.
        for old in list(fids):
            if old != fid:
                self.memory.drop_file(old)
                fids.discard(old)
                old_state = self._files.get(old)
                if old_state is not None and old_state.idle():
                    del self._files[old]
        fids.add(fid)
        if len(self._files) > MAX_IDLE_STATES:
            for other, st in list(self._files.items()):
                if st.idle():
                    del self._files[other]
        state = self._files[fid] = _FileState(key)
        return state

    def _plan_readahead(self, state: _FileState, offset: int,
                        end: int) -> tuple[dict[int, _Flight], int]:
        """Update the sequential streams and claim read-ahead blocks
        (reader lock held); also the request size to fetch them in."""
        # A read continues a stream if it starts where the stream ended, or
        # at most one read further (a kernel may deliver its own read-ahead
        # requests slightly out of order).
        match = None
        for stream in state.streams:
            if stream.end <= offset <= stream.end + stream.last_size:
                match = stream
                break
        if match is None:
            state.streams.insert(0, _Stream(end, end - offset))
            del state.streams[STREAMS_PER_FILE:]
            return {}, 0
        state.streams.remove(match)
        state.streams.insert(0, match)
        match.end = max(match.end, end)
        match.last_size = end - offset
        match.hits += 1
        # Two continuations in a row before any read-ahead: a random reader
        # landing by chance just after an earlier read must not pay for one.
        if match.hits < 2:
            return {}, 0
        match.window = max(self._bs, min(max(2 * match.window, INITIAL_WINDOW),
                                         WINDOW_PER_BYTE_READ * (match.end - match.start),
                                         self._max_window))
        file_size = state.key.fingerprint.size
        # Spread the window over parallel_per_file requests: on a slow link
        # throughput is connections x per-connection rate, and a stalled
        # request then costs a small piece, not max_request. Top the window
        # up as soon as one request's worth is free, so all connections stay
        # busy (refilling at half-window left a quarter of them idle).
        unit = self._request_size(match.window)
        if match.ahead - end > match.window - unit or match.ahead >= file_size:
            return {}, 0
        start = max(match.ahead, end)
        span = end + match.window - start
        # Whole units, so refills do not leave small requests.
        if span >= unit:
            span -= span % unit
        stop = min(start + span, file_size)
        match.ahead = stop
        claimed: dict[int, _Flight] = {}
        for idx in blocks_for(start, stop - start, self._bs, file_size):
            if idx in state.flights or (state.fid, idx) in self.memory:
                continue
            claimed[idx] = state.flights[idx] = _Flight()
        return claimed, unit

    def _promote(self, state: _FileState, idx: int) -> None:
        """A reader now waits for a block queued as read-ahead: move its job
        to the front (reader lock held)."""
        for job in state.background:
            if idx in job[1]:
                state.background.remove(job)
                state.urgent.append(job)
                return

    def _load(self, state: _FileState, claimed: dict[int, _Flight], urgent: bool) -> None:
        """Serve claimed blocks from disk, fetch the rest (caller thread)."""
        if not claimed:
            return
        remaining = dict(claimed)
        try:
            if self.disk is not None:
                for idx in sorted(claimed):
                    data = self._disk_get(state, idx)
                    if data is not None:
                        self.stats.add("hits_disk")
                        self._complete(state, idx, claimed[idx], data)
                        del remaining[idx]
            if remaining:
                self.stats.add("misses", len(remaining))
                for request in coalesce(remaining, self._bs, self._urgent_request_size(len(remaining)),
                                        state.key.fingerprint.size):
                    flights = {i: remaining.pop(i) for i in request.blocks}
                    self._submit(state, request, flights, urgent=urgent, check_disk=False)
        except BaseException as exc:
            for idx, flight in remaining.items():
                self._fail(state, idx, flight, exc)
            raise

    def _urgent_request_size(self, blocks: int) -> int:
        """Request size for a read's own missing blocks: a large read is
        split over up to URGENT_PIECES connections (one EMPIAR connection
        is slow, docs/empiar.md), in
        pieces of at least MIN_URGENT_PIECE (every request may stall, and
        the read waits for all of them)."""
        share = -(-blocks // URGENT_PIECES) * self._bs
        return max(self._bs, min(self.settings.max_request, max(MIN_URGENT_PIECE, share)))

    def _request_size(self, window: int) -> int:
        """Read-ahead request size for a window: window / (2 x
        parallel_per_file), in whole blocks, between one block and
        ``max_request``. Two requests per connection in the window keep the
        connections busy, and smaller pieces shorten the tail at the end of
        a file, where fewer connections are left working."""
        share = window // (2 * max(1, self.settings.parallel_per_file))
        share -= share % self._bs
        return max(self._bs, min(self.settings.max_request, share))

    def _submit_background(self, state: _FileState, claimed: dict[int, _Flight],
                           piece: int) -> None:
        """Queue read-ahead: disk lookups and fetches happen on the pool."""
        requests = coalesce(claimed, self._bs, piece,
                            state.key.fingerprint.size)
        for request in requests:
            flights = {i: claimed[i] for i in request.blocks}
            try:
                self._submit(state, request, flights, urgent=False, check_disk=True)
            except BaseException as exc:
                for idx, flight in flights.items():
                    self._fail(state, idx, flight, exc)

    def _submit(self, state: _FileState, request: Request, flights: dict,
                urgent: bool, check_disk: bool) -> None:
        job = (request, flights, not urgent, check_disk)
        with self._lock:
            if self._closed:
                raise RemoteError("block reader is closed", url=state.key.url)
            if state.active < self.settings.parallel_per_file:
                state.active += 1
                self._start(state, job)
            else:
                (state.urgent if urgent else state.background).append(job)

    def _start(self, state: _FileState, job) -> None:
        """Hand one job to the pool (reader lock held)."""
        future = self._pool.submit(self._runner, state, job)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def _runner(self, state: _FileState, job) -> None:
        try:
            self._run(state, *job)
        except BaseException as exc:  # pragma: no cover - _run handles its errors
            log.exception("block fetch job failed: %s", exc)
        finally:
            with self._lock:
                queue = state.urgent or state.background
                if queue and not self._closed:
                    self._start(state, queue.popleft())
                else:
                    state.active -= 1

    def _run(self, state: _FileState, request: Request, flights: dict,
             readahead: bool, check_disk: bool) -> None:
        """Load one coalesced request on a pool thread."""
        key = state.key
        with self._lock:
            # Blocks whose readers gave up at their deadline while this job
            # waited for a thread are not fetched: under a dripping or
            # stalled archive they would keep the pool busy long after
            # anyone wanted them.
            for idx in [i for i, f in flights.items() if state.flights.get(i) is not f]:
                flights.pop(idx)
        if not flights:
            return
        try:
            if check_disk and self.disk is not None:
                for idx in list(flights):
                    data = self._disk_get(state, idx)
                    if data is not None:
                        self.stats.add("hits_disk")
                        self._complete(state, idx, flights.pop(idx), data)
            for sub in coalesce(flights, self._bs, self.settings.max_request, key.size):
                data = self._fetch_checked(key, sub.start, sub.end)
                self.stats.add("bytes_fetched", len(data))
                if readahead:
                    self.stats.add("readahead_bytes", len(data))
                fetched = []
                for idx in sub.blocks:
                    lo = (idx - sub.first) * self._bs
                    fetched.append((idx, data[lo:lo + self._bs]))
                # Queue the disk write before waking readers: a reader that
                # returns and closes the cache must find its blocks saved.
                self._store_on_disk(state, fetched)
                for idx, block in fetched:
                    self._complete(state, idx, flights.pop(idx), block)
        except Exception as exc:
            self.stats.add("errors")
            if isinstance(exc, StaleFile):
                log.info("%s changed on the archive: dropping its cached blocks", key.url)
                self.invalidate(key.url)
            else:
                log.debug("fetch of %s failed: %s", key.url, exc)
            for idx, flight in flights.items():
                self._fail(state, idx, flight, exc)

    def _fetch_checked(self, key: FileKey, start: int, end: int) -> bytes:
        self.stats.add("requests")
        data = self._fetch(key.url, start, end, key.fingerprint)
        if not isinstance(data, bytes):
            data = bytes(data)
        if len(data) != end - start:
            raise BadResponse(
                f"fetch of {key.url} [{start}, {end}) returned {len(data)} bytes, "
                f"expected {end - start}", url=key.url)
        return data

    def _disk_get(self, state: _FileState, idx: int) -> Optional[bytes]:
        try:
            return self.disk.get(state.key.url, state.key.fingerprint, idx)
        except Exception as exc:  # a broken cache must not break reads
            log.warning("disk cache read failed (%s); reading from the network", exc)
            return None

    def _store_on_disk(self, state: _FileState, blocks: list) -> None:
        """Hand fetched blocks to the disk writer. Writing on the fetch
        thread capped cold reads at the disk's speed; when the writer falls
        more than DISK_QUEUE_BYTES behind, blocks skip the disk cache
        (they are still in memory) instead of slowing reads down."""
        if self.disk is None:
            return
        size = sum(len(block) for _, block in blocks)
        with self._lock:
            if self._files.get(state.fid) is not state:
                return  # invalidated while fetching
            if self._disk_stopped or self._disk_queued + size > DISK_QUEUE_BYTES:
                self.stats.add("disk_skipped", len(blocks))
                return
            self._disk_queued += size
            if self._disk_thread is None:
                self._disk_thread = threading.Thread(target=self._disk_writer,
                                                     name="empiarfs-disk", daemon=True)
                self._disk_thread.start()
        self._disk_jobs.put((state, blocks, size))

    def _disk_writer(self) -> None:
        while True:
            job = self._disk_jobs.get()
            if job is None:
                return
            state, blocks, size = job
            try:
                self._write_blocks(state, blocks)
            finally:
                with self._lock:
                    self._disk_queued -= size

    def _write_blocks(self, state: _FileState, blocks: list) -> None:
        with self._lock:
            if self._files.get(state.fid) is not state:
                return  # invalidated while queued
        for idx, block in blocks:
            try:
                self.disk.put(state.key.url, state.key.fingerprint, idx, block)
            except Exception as exc:
                log.warning("disk cache write failed (%s); continuing without it", exc)
                return

    def _complete(self, state: _FileState, idx: int, flight: _Flight, data: bytes) -> None:
        """Deliver a block to its readers and the memory cache."""
        with self._lock:
            if self._files.get(state.fid) is state:
                self.memory.put(state.fid, idx, data)
            if state.flights.get(idx) is flight:
                del state.flights[idx]
            flight.data = data
            flight.event.set()

    def _fail(self, state: _FileState, idx: int, flight: _Flight, exc: BaseException) -> None:
        with self._lock:
            if state.flights.get(idx) is flight:
                del state.flights[idx]
            flight.error = exc
            flight.event.set()

    def _give_up(self, state: _FileState, waiting: dict) -> None:
        """After a deadline: forget unfinished flights so that the next read
        starts a fresh fetch rather than waiting on a hung one."""
        with self._lock:
            for idx, flight in waiting.items():
                if not flight.event.is_set() and state.flights.get(idx) is flight:
                    del state.flights[idx]
            # The file is not being served: stop reading ahead of it.
            cancelled = DeadlineExceeded(f"read-ahead of {state.key.url} cancelled",
                                         url=state.key.url)
            while state.background:
                _, flights, _, _ = state.background.popleft()
                for idx, flight in flights.items():
                    if state.flights.get(idx) is flight:
                        del state.flights[idx]
                    flight.error = cancelled
                    flight.event.set()
            state.streams.clear()

    # ------------------------------------------------------------------- API
    def invalidate(self, url: str) -> None:
        """Drop every cached block of ``url`` (all versions), in memory and
        on disk; fetches in progress still answer their readers but no
        longer fill the caches."""
        with self._lock:
            for fid in self._url_fids.pop(url, set()):
                self.memory.drop_file(fid)
                self._files.pop(fid, None)
        if self.disk is not None:
            try:
                self.disk.drop_file(url)
            except Exception as exc:
                log.warning("cannot drop %s from the disk cache: %s", url, exc)

    def cached_ranges(self, key: FileKey) -> list[tuple[int, int]]:
        """Byte ranges of this file version held in memory or on disk."""
        fid = (key.url, key.fingerprint.key())
        indices = set(self.memory.indices(fid))
        spans = ranges.of_blocks(indices, self._bs, key.size)
        if self.disk is not None and self.disk.fingerprint_key(key.url) == fid[1]:
            spans = ranges.merge(spans + self.disk.cached_ranges(key.url))
        return spans

    def close(self, timeout: float = 5.0) -> None:
        """Stop the pool: queued jobs are cancelled and their readers fail;
        running fetches get ``timeout`` seconds to finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            states = list(self._files.values())
            futures = list(self._futures)
        self._pool.shutdown(wait=False, cancel_futures=True)
        error = RemoteError("block reader closed")
        for state in states:
            with self._lock:
                queued = list(state.urgent) + list(state.background)
                state.urgent.clear()
                state.background.clear()
            for _request, flights, _ra, _cd in queued:
                for idx, flight in flights.items():
                    self._fail(state, idx, flight, error)
        _done, not_done = concurrent.futures.wait(futures, timeout=timeout)
        if not_done:
            log.warning("%d fetches still running after close()", len(not_done))
        # Finish the queued disk writes: a remount should find them.
        with self._lock:
            self._disk_stopped = True
            writer = self._disk_thread
        if writer is not None:
            self._disk_jobs.put(None)
            writer.join(timeout)
        # Flights of cancelled jobs never complete otherwise.
        for state in states:
            with self._lock:
                pending = list(state.flights.items())
            for idx, flight in pending:
                if not flight.event.is_set():
                    self._fail(state, idx, flight, error)

    def __enter__(self) -> "BlockReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
