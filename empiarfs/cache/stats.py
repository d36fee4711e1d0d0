"""Thread-safe counters of the block reader, and the recent errors a
mount shows in ``.empiarfs/stats.json``."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

COUNTERS = (
    "hits_memory",     # blocks served from the memory LRU
    "hits_disk",       # blocks served from the disk store
    "hits_first_bytes",# reads served from a file's probed first bytes
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

    def total(self, *names: str) -> int:
        """The sum of some counters (no copy of the rest)."""
        with self._lock:
            return sum(self._values[name] for name in names)

    def snapshot(self) -> dict:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(COUNTERS, 0)


class RecentErrors:
    """The last few distinct errors a mount met, for people to read.

    A dead network fails every read in the same way, so each distinct
    ``(operation, path, kind)`` is kept once, with a count and the latest
    time and reason; the oldest goes when ``limit`` are kept. :meth:`add`
    also says when a person should be told: the first time an error is
    seen, and at most ``burst`` times per ``window`` seconds, so a
    foreground mount's stderr stays readable while a whole dataset fails.
    """

    def __init__(self, limit: int = 20, burst: int = 5, window: float = 60.0, clock=time.time):
        self._lock = threading.Lock()
        self._limit = limit
        self._burst = burst
        self._window = window
        self._clock = clock
        self._items: OrderedDict = OrderedDict()   # key -> record, oldest first
        self._told: deque = deque()                 # times people were told
        self._held_back = 0                         # new errors not told since the last told

    def add(self, op: str, path: str, kind: str, reason: str, error: str = "EIO") -> int | None:
        """Remember one failure.

        Returns
        -------
        int or None
            None when nobody needs telling (seen before, or the rate is
            used up); otherwise how many new errors were held back since
            the last one told.
        """
        now = self._clock()
        key = (op, path, kind)
        with self._lock:
            record = self._items.pop(key, None)
            new = record is None
            if new:
                record = {"op": op, "path": path, "error": error, "count": 0}
            record.update(time=round(now, 1), reason=reason, count=record["count"] + 1)
            self._items[key] = record
            while len(self._items) > self._limit:
                self._items.popitem(last=False)
            if not new:
                return None
            while self._told and self._told[0] <= now - self._window:
                self._told.popleft()
            if len(self._told) >= self._burst:
                self._held_back += 1
                return None
            self._told.append(now)
            held, self._held_back = self._held_back, 0
            return held

    def snapshot(self) -> list:
        """The kept errors, newest first, as plain dicts (``time`` in
        seconds since the epoch)."""
        with self._lock:
            return [dict(r) for r in reversed(self._items.values())]
