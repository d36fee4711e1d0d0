"""The read-ahead policy, as a value with no I/O and no locks.

A file's reads are matched to sequential *streams*; a stream that keeps
going earns a window of bytes to fetch ahead of the reader. The policy
only answers "what range should be fetched now, in pieces of what size";
the block reader claims the blocks and the scheduler fetches them.

Rules (each with a unit test in tests/test_readahead.py):

* a read continues a stream if it starts where the stream ended, or at
  most one read further (a kernel may deliver its own read-ahead requests
  slightly out of order); up to ``streams_per_file`` streams per file
  (interleaved readers);
* read-ahead starts at the second continuation (a random reader that
  lands just after an earlier read by chance must not pay for one);
* the window starts at ``initial_window``, doubles with each read, and
  stays within ``per_byte_read`` times the bytes the stream has read (the
  waste when a reader stops is bounded by what it read) and within
  ``max_window``;
* the window is fetched in pieces of window / (2 x connections) whole
  blocks, between one block and ``max_request``, and topped up as soon as
  one piece's worth is free, so every connection stays busy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from empiarfs.config import MiB

# A link whose replies start within this many seconds is fast (loopback, a
# LAN, a site cache next door): one connection already carries hundreds of
# MB/s, and the daemon's own CPU, not the network, is the limit.
FAST_LINK_TTFB = 0.010
FAST_LINK_CONNECTIONS = 2


def connections_for_link(link_ttfb: Optional[float], per_file: int) -> int:
    """Connections one file's reads should use at once.

    A long path (EMPIAR: ~1 s per request, ~1.5 MB/s per connection) needs
    ``per_file`` of them to fill the link. On a fast one they only add
    threads that contend for the GIL: a cold 512 MiB read through the
    mount from Apache on loopback ran at 242-257 MB/s with 16 connections
    and 308-379 MB/s with 1 or 2 (docs/performance.md). ``link_ttfb`` is
    the link's quickest recent time to headers; until a reply was timed
    (None) the link counts as long."""
    per_file = max(1, per_file)
    if link_ttfb is not None and link_ttfb < FAST_LINK_TTFB:
        return min(per_file, FAST_LINK_CONNECTIONS)
    return per_file


@dataclass(frozen=True)
class ReadAheadConfig:
    block_size: int
    max_window: int
    max_request: int
    connections: int
    initial_window: int = 1 * MiB
    per_byte_read: int = 8
    streams_per_file: int = 8

    @classmethod
    def from_settings(cls, settings, memory_bytes: int,
                      connections: Optional[int] = None) -> "ReadAheadConfig":
        """The window never exceeds a quarter of the memory cache, so blocks
        fetched ahead are not evicted before they are read. ``connections``
        defaults to ``parallel_per_file``."""
        bs = settings.block_size
        if connections is None:
            connections = settings.parallel_per_file
        return cls(block_size=bs, max_window=max(bs, min(settings.readahead, memory_bytes // 4)),
                   max_request=settings.max_request, connections=max(1, connections))

    def piece(self, window: int) -> int:
        """Request size for a window: window / (2 x connections), in whole
        blocks, between one block and ``max_request``."""
        share = window // (2 * self.connections)
        share -= share % self.block_size
        return max(self.block_size, min(self.max_request, share))


@dataclass
class Stream:
    start: int       # where the stream began
    end: int         # where the next sequential read starts
    last_size: int   # size of the last read
    hits: int = 0    # reads that continued this stream
    window: int = 0  # read-ahead window (0: not sequential yet)
    ahead: int = 0   # fetched (or claimed) up to here

    def __post_init__(self):
        self.ahead = self.ahead or self.end


@dataclass(frozen=True)
class Plan:
    """Fetch bytes ``[start, stop)`` ahead of the reader, in ``piece``-byte requests."""

    start: int
    stop: int
    piece: int


@dataclass
class ReadAhead:
    """The read-ahead state of one file version."""

    config: ReadAheadConfig
    file_size: int
    streams: list = field(default_factory=list)

    def on_read(self, offset: int, end: int) -> Optional[Plan]:
        """Record a read of ``[offset, end)``; the range to fetch ahead now,
        if any."""
        cfg = self.config
        match = None
        for stream in self.streams:
            if stream.end <= offset <= stream.end + stream.last_size:
                match = stream
                break
        if match is None:
            self.streams.insert(0, Stream(start=offset, end=end, last_size=end - offset))
            del self.streams[cfg.streams_per_file:]
            return None
        self.streams.remove(match)
        self.streams.insert(0, match)
        match.end = max(match.end, end)
        match.last_size = end - offset
        match.hits += 1
        if match.hits < 2:
            return None
        match.window = max(cfg.block_size, min(max(2 * match.window, cfg.initial_window),
                                               cfg.per_byte_read * (match.end - match.start),
                                               cfg.max_window))
        unit = cfg.piece(match.window)
        if match.ahead - end > match.window - unit or match.ahead >= self.file_size:
            return None
        start = max(match.ahead, end)
        span = end + match.window - start
        if span >= unit:  # whole pieces, so refills do not leave small requests
            span -= span % unit
        stop = min(start + span, self.file_size)
        match.ahead = stop
        return Plan(start, stop, unit) if stop > start else None

    def forget(self) -> None:
        """The file is not being served (a read gave up): stop reading ahead."""
        self.streams.clear()

    @property
    def largest_window(self) -> int:
        return max((s.window for s in self.streams), default=0)
