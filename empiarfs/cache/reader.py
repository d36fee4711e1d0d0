"""The block reader: memory -> disk -> network, single-flight, read-ahead.

Its parts: the one cache (:class:`~empiarfs.cache.tiered.TieredCache`,
keyed by :class:`~empiarfs.cache.keys.FileVersion`), the read-ahead policy
(:class:`~empiarfs.cache.readahead.ReadAhead`, a pure value) and the fetch
scheduler (:class:`~empiarfs.cache.scheduler.FetchScheduler`). This module
only claims blocks, waits for them and runs fetch jobs (:class:`FetchJob`).

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
   ``parallel_per_file`` at a time per file (2 on a fast link: see
   :func:`~empiarfs.cache.readahead.connections_for_link`; further jobs
   queue per file, demand before read-ahead).
3. The read waits for its flights until ``settings.deadline`` and raises
   :class:`DeadlineExceeded` if they are not done; the fetch may go on and
   still fills the caches. Flights it gave up on are forgotten so the next
   read of those blocks starts a new fetch instead of waiting on a hung one.
4. A fetch error is delivered, as the same exception object, to every
   read waiting on its blocks; nothing is cached. ``StaleFile`` also drops
   every cached block of the file.

Sequential reads get a read-ahead window (the rules are in
:mod:`empiarfs.cache.readahead`); random reads fetch only the blocks they
touch.

Lock order
----------
``BlockReader._lock`` -> ``MemoryLRU._lock`` / ``FetchScheduler._lock`` /
``ReaderStats._lock``, all leaves. ``DiskStore._lock`` is never taken
with the reader lock held. The reader lock is never held while calling ``fetch``, reading or
writing block payloads on disk, or waiting on a flight.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from empiarfs.cache.blocks import Request, blocks_for, coalesce
from empiarfs.cache.disk import DiskStore
from empiarfs.cache.keys import FileKey, FileVersion
from empiarfs.cache.memory import MemoryLRU
from empiarfs.cache.readahead import ReadAhead, ReadAheadConfig
from empiarfs.cache.scheduler import FetchScheduler
from empiarfs.cache.stats import ReaderStats
from empiarfs.cache.tiered import TieredCache
from empiarfs.errors import BadResponse, DeadlineExceeded, RemoteError, StaleFile
from empiarfs.model import Fingerprint

log = logging.getLogger(__name__)

Fetch = Callable[[str, int, int, Fingerprint], "bytes | bytearray"]

# A read's own missing blocks go out in at most this many requests, each
# at least MIN_URGENT_PIECE: before read-ahead starts, a stream's first
# reads would otherwise come at one connection's speed.
URGENT_PIECES = 4
MIN_URGENT_PIECE = 256 * 1024
# Idle per-file states kept before pruning.
MAX_IDLE_STATES = 4096

__all__ = ["BlockReader", "FetchJob", "FileKey", "FileVersion"]


class _Flight:
    """One block being loaded; readers wait on ``event``."""

    __slots__ = ("event", "data", "error", "started")

    def __init__(self):
        self.event = threading.Event()
        self.data: Optional[bytes] = None
        self.error: Optional[BaseException] = None
        self.started = time.monotonic()


@dataclass
class FetchJob:
    """One coalesced range request and the flights it will complete."""

    request: Request
    flights: dict            # block index -> _Flight
    readahead: bool          # fetched ahead of any reader (counted apart)
    check_disk: bool         # look on disk first (read-ahead jobs do it on the pool)


# A piece of a read: ``block[lo:hi]``.
Part = tuple[bytes, int, int]


def part_of(data: bytes, offset: int, size: int) -> Part:
    """``data[offset:offset + size]`` as a part (clipped to ``data``)."""
    return (data, min(offset, len(data)), min(offset + size, len(data)))


def join_parts(parts: list[Part]) -> bytes:
    """The bytes of ``parts`` as one ``bytes`` (no copy for one whole block)."""
    if len(parts) == 1:
        block, lo, hi = parts[0]
        if lo == 0 and hi == len(block) and type(block) is bytes:
            return block
    return b"".join(memoryview(block)[lo:hi] for block, lo, hi in parts)


class _FileState:
    """Reader state of one file version (guarded by the reader lock)."""

    __slots__ = ("key", "flights", "readahead")

    def __init__(self, key: FileVersion, config: ReadAheadConfig):
        self.key = key
        self.flights: dict[int, _Flight] = {}
        self.readahead = ReadAhead(config, key.size)


class BlockReader:
    """Serve byte ranges of remote files from memory, disk or network.

    Parameters
    ----------
    fetch : callable
        ``fetch(url, start, end, fingerprint) -> bytes`` (or a bytearray); may raise
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
    connections : callable, optional
        ``connections() -> int``: requests one file may have in flight now
        (see :func:`~empiarfs.cache.readahead.connections_for_link`);
        ``settings.parallel_per_file`` if omitted.

    Raises
    ------
    ValueError
        If the disk store uses another block size than ``settings``.
    """

    def __init__(self, fetch: Fetch, settings, memory: MemoryLRU,
                 disk: Optional[DiskStore] = None, stats: Optional[ReaderStats] = None,
                 connections: Optional[Callable[[], int]] = None):
        if disk is not None and disk.block_size != settings.block_size:
            raise ValueError(
                f"disk cache block size {disk.block_size} differs from settings.block_size "
                f"{settings.block_size}; open the DiskStore with block_size=settings.block_size")
        self._fetch = fetch
        self.settings = settings
        self.cache = TieredCache(memory, disk, settings.block_size)
        self.stats = stats if stats is not None else ReaderStats()
        self._bs = settings.block_size
        self._connections = connections or (lambda: settings.parallel_per_file)
        self._memory_bytes = memory.max_bytes
        self._lock = threading.Lock()
        self._files: dict[FileVersion, _FileState] = {}
        self._url_versions: dict[str, set] = {}
        self._closed = False
        self._scheduler = FetchScheduler(self._run, settings.parallel_total, self._connections)

    @property
    def memory(self) -> MemoryLRU:
        return self.cache.memory

    @property
    def disk(self) -> Optional[DiskStore]:
        return self.cache.disk

    # ------------------------------------------------------------------ read
    def read(self, key: FileVersion, offset: int, size: int, *, readahead: bool = True) -> bytes:
        """Bytes ``[offset, offset + size)`` of the file, short only at the
        end of the file (``b""`` past it). With ``readahead=False`` the read
        neither joins nor starts a sequential stream (a caller that names
        exactly the ranges it wants). Raises as :meth:`read_parts`."""
        return join_parts(self.read_parts(key, offset, size, readahead=readahead))

    def read_parts(self, key: FileVersion, offset: int, size: int, *,
                   readahead: bool = True) -> list[Part]:
        """:meth:`read` without the copy: ``(block, lo, hi)`` parts whose
        ``block[lo:hi]`` in order are the bytes (``[]`` past the end). The
        FUSE layer copies them straight into the kernel's buffer; joining
        a 1 MiB read first cost a copy of every byte.

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
        file_size = key.size
        indices = blocks_for(offset, size, self._bs, file_size)
        if not indices:
            return []
        end = min(offset + size, file_size)
        if end <= self._bs:   # within block 0: the probed first bytes may hold it
            first = self.cache.first_bytes(key)
            if first is not None and end <= len(first):
                # A header read after a size probe: no request at all.
                self.stats.add("hits_first_bytes")
                return [(first, offset, end)]
        deadline = time.monotonic() + self.settings.deadline
        found: dict[int, bytes] = {}
        waiting: dict[int, _Flight] = {}
        claimed: dict[int, _Flight] = {}
        with self._lock:
            state = self._state(key)
            for idx in indices:
                data = self.cache.in_memory(key, idx)
                if data is not None:
                    found[idx] = data
                    continue
                flight = state.flights.get(idx)
                if flight is None:
                    flight = state.flights[idx] = _Flight()
                    claimed[idx] = flight
                else:
                    self.stats.add("waits")
                    self._scheduler.promote(state, lambda job, idx=idx: idx in job.flights)
                waiting[idx] = flight
            plan = state.readahead.on_read(offset, end) if readahead else None
            prefetch = self._claim(state, plan) if plan is not None else {}
        if found:
            self.stats.add("hits_memory", len(found))
        try:
            self._load(state, claimed)
        finally:
            if prefetch:
                self._submit_background(state, prefetch, plan.piece)
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
        parts = []
        for idx in indices:
            block = found[idx]
            base = idx * self._bs
            parts.append((block, max(offset, base) - base, min(end, base + len(block)) - base))
        return parts

    # ------------------------------------------------------------- internals
    def _state(self, key: FileVersion) -> _FileState:
        """Per-file state (reader lock held)."""
        state = self._files.get(key)
        if state is not None:
            return state
        versions = self._url_versions.setdefault(key.url, set())
        # A new version of the URL: states of older ones are stale (the
        # cache tiers drop their blocks themselves when asked for this one).
        for old in list(versions):
            if old != key:
                versions.discard(old)
                old_state = self._files.get(old)
                if old_state is not None and self._idle(old_state):
                    del self._files[old]
        versions.add(key)
        if len(self._files) > MAX_IDLE_STATES:
            for other, st in list(self._files.items()):
                if self._idle(st):
                    del self._files[other]
        policy = ReadAheadConfig.from_settings(self.settings, self._memory_bytes,
                                               connections=self._connections())
        state = self._files[key] = _FileState(key, policy)
        return state

    def _idle(self, state: _FileState) -> bool:
        return not state.flights and not self._scheduler.busy(state)

    def _claim(self, state: _FileState, plan) -> dict[int, _Flight]:
        """Claim the blocks of a read-ahead plan that no one has or loads
        (reader lock held)."""
        claimed: dict[int, _Flight] = {}
        for idx in blocks_for(plan.start, plan.stop - plan.start, self._bs, state.key.size):
            if idx in state.flights or self.cache.memory_holds(state.key, idx):
                continue
            claimed[idx] = state.flights[idx] = _Flight()
        return claimed

    def _load(self, state: _FileState, claimed: dict[int, _Flight]) -> None:
        """Serve a read's claimed blocks from disk, fetch the rest (caller thread)."""
        if not claimed:
            return
        remaining = dict(claimed)
        try:
            if self.cache.disk is not None:
                for idx in sorted(claimed):
                    data = self.cache.on_disk(state.key, idx)
                    if data is not None:
                        self.stats.add("hits_disk")
                        self._complete(state, idx, claimed[idx], data)
                        del remaining[idx]
            if remaining:
                self.stats.add("misses", len(remaining))
                for request in coalesce(remaining, self._bs, self._urgent_request_size(len(remaining)),
                                        state.key.size):
                    flights = {i: remaining.pop(i) for i in request.blocks}
                    self._scheduler.submit(state, FetchJob(request, flights, readahead=False,
                                                           check_disk=False), urgent=True)
        except BaseException as exc:
            for idx, flight in remaining.items():
                self._fail(state, idx, flight, exc)
            raise

    def _urgent_request_size(self, blocks: int) -> int:
        """Request size for a read's own missing blocks: a large read is
        split over up to URGENT_PIECES connections (one EMPIAR connection
        is slow, docs/empiar.md §6.1), in pieces of at least MIN_URGENT_PIECE
        (every request may stall, and the read waits for all of them)."""
        share = -(-blocks // URGENT_PIECES) * self._bs
        return max(self._bs, min(self.settings.max_request, max(MIN_URGENT_PIECE, share)))

    def _submit_background(self, state: _FileState, claimed: dict[int, _Flight],
                           piece: int) -> None:
        """Queue read-ahead: disk lookups and fetches happen on the pool."""
        for request in coalesce(claimed, self._bs, piece, state.key.size):
            flights = {i: claimed[i] for i in request.blocks}
            try:
                self._scheduler.submit(state, FetchJob(request, flights, readahead=True,
                                                       check_disk=True), urgent=False)
            except BaseException as exc:
                for idx, flight in flights.items():
                    self._fail(state, idx, flight, exc)

    def _run(self, state: _FileState, job: FetchJob) -> None:
        """Load one coalesced request on a pool thread."""
        key = state.key
        flights = job.flights
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
            if job.check_disk and self.cache.disk is not None:
                for idx in list(flights):
                    data = self.cache.on_disk(key, idx)
                    if data is not None:
                        self.stats.add("hits_disk")
                        self._complete(state, idx, flights.pop(idx), data)
            for sub in coalesce(flights, self._bs, self.settings.max_request, key.size):
                data = self._fetch_checked(key, sub.start, sub.end)
                self.stats.add("bytes_fetched", len(data))
                if job.readahead:
                    self.stats.add("readahead_bytes", len(data))
                view = memoryview(data)
                fetched = []
                for idx in sub.blocks:
                    lo = (idx - sub.first) * self._bs
                    fetched.append((idx, bytes(view[lo:lo + self._bs])))
                # Queue the disk write before waking readers: a reader that
                # returns and closes the cache must find its blocks saved.
                with self._lock:
                    current = self._files.get(key) is state
                if current:
                    skipped = self.cache.put(key, fetched, memory=False)
                    if skipped:
                        self.stats.add("disk_skipped", skipped)
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

    def _fetch_checked(self, key: FileVersion, start: int, end: int) -> bytes:
        self.stats.add("requests")
        data = self._fetch(key.url, start, end, key.fingerprint)
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        if len(data) != end - start:
            raise BadResponse(
                f"fetch of {key.url} [{start}, {end}) returned {len(data)} bytes, "
                f"expected {end - start}", url=key.url)
        return data

    def _complete(self, state: _FileState, idx: int, flight: _Flight, data: bytes) -> None:
        """Deliver a block to its readers and the memory cache."""
        with self._lock:
            if self._files.get(state.key) is state:
                self.cache.memory.put(state.key, idx, data)
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
        cancelled = DeadlineExceeded(f"read-ahead of {state.key.url} cancelled",
                                     url=state.key.url)
        with self._lock:
            for idx, flight in waiting.items():
                if not flight.event.is_set() and state.flights.get(idx) is flight:
                    del state.flights[idx]
            # The file is not being served: stop reading ahead of it.
            for job in self._scheduler.cancel_background(state):
                for idx, flight in job.flights.items():
                    if state.flights.get(idx) is flight:
                        del state.flights[idx]
                    flight.error = cancelled
                    flight.event.set()
            state.readahead.forget()

    # ------------------------------------------------------------------- API
    def keep_first_bytes(self, key: FileVersion, data: bytes) -> None:
        """Keep the first bytes of a file version that a size probe brought
        (``data`` starts at offset 0; at most the file's size). A file they
        hold whole is its block 0 and goes to both tiers, so it is there
        offline after a remount; the first bytes of a larger file stay in
        memory (a block on disk is whole)."""
        if len(data) > key.size:
            return
        data = bytes(data)
        if len(data) == key.size and 0 < key.size <= self._bs:
            self.cache.put(key, [(0, data)])
        else:
            self.cache.keep_first_bytes(key, data)

    def invalidate(self, url: str) -> None:
        """Drop every cached block of ``url`` (all versions), in memory and
        on disk; fetches in progress still answer their readers but no
        longer fill the caches."""
        with self._lock:
            for version in self._url_versions.pop(url, set()):
                self._files.pop(version, None)
        self.cache.drop(url)

    def cached_ranges(self, key: FileVersion) -> list[tuple[int, int]]:
        """Byte ranges of this file version held in memory or on disk."""
        return self.cache.cached_ranges(key)

    def streams(self, key: FileVersion):
        """The read-ahead streams of a file version (for tests and stats)."""
        with self._lock:
            state = self._files.get(key)
            return list(state.readahead.streams) if state is not None else []

    def close(self, timeout: float = 5.0) -> None:
        """Stop the pool: queued jobs are cancelled and their readers fail;
        running fetches get ``timeout`` seconds to finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            states = list(self._files.values())
        error = RemoteError("block reader closed")
        for state, job in self._scheduler.close(timeout):
            for idx, flight in job.flights.items():
                self._fail(state, idx, flight, error)
        # Finish the queued disk writes: a remount should find them.
        self.cache.close(timeout)
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
