"""Thread-safe counters of the block reader."""

from __future__ import annotations

import threading

COUNTERS = (
    "hits_memory",     # blocks served from the memory LRU
    "hits_disk",       # blocks served from the disk store
    "misses",          # blocks a read had to fetch from the network
    "bytes_fetched",   # bytes returned by fetch()
    "requests",        # fetch() calls
    "readahead_bytes", # part of bytes_fetched fetched ahead of the reader
    "waits",           # blocks a read waited for because another fetch had them
    "errors",          # fetch() calls that failed
    "deadlines",       # reads that gave up at the deadline
    "disk_skipped",    # blocks not written to disk: the writer was too far behind
)


class ReaderStats:
    """Counters named in :data:`COUNTERS`, readable as attributes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """Increase one counter.

        Raises
        ------
        KeyError
            If ``name`` is not a known counter.
        """
        with self._lock:
            self._values[name] += amount

    def __getattr__(self, name: str) -> int:
        values = self.__dict__.get("_values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)

    def snapshot(self) -> dict:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(COUNTERS, 0)
