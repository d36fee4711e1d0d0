"""Keeping a cache directory under its byte bound, least recently used out.

The bound is on the bytes of block files (headers included). Every writer,
in every process, reserves a block's bytes in the index *before* creating
its file, in the same transaction that evicts what does not fit (see
``index.py``), so the bound holds at every moment, across processes, and
not after a periodic sweep.

One bound is in force at a time: the largest ``max_bytes`` of the
processes using the directory (each registers its own; a dead one's goes
when it is reaped). Processes normally agree (one config file). When they
do not, the largest wins so that a short-lived process with the default
size (``empiarfs cache info``, a Dask worker) never evicts most of a
mount's larger cache; once the larger process leaves, the next write
evicts down to the bound of those still there.

Never evicted: blocks of pinned files, and reservations (blocks being
written). A block being *read* may be evicted: its reader has the file
open, and an unlinked file keeps its bytes for whoever has it open (POSIX),
so the read completes; the next lookup misses.

Recency: lookups do not touch the index (a read would otherwise cost a
transaction). :class:`Recency` collects the blocks read and writes their
times in batches; a writer saves its own batch before choosing victims,
so this process's reads always count.

Lock order: ``Recency._lock`` is a leaf. ``make_room`` runs inside an index
write transaction (``Index._write_lock`` and SQLite's write lock held).
"""

from __future__ import annotations

import threading
import time

from empiarfs.cache.disk import blockfile
from empiarfs.cache.disk.index import Tx

# Victims fetched per query while making room.
_VICTIMS_PER_QUERY = 64
# Victims per transaction, at most: when a larger bound goes away (its
# process left), the excess is trimmed over several writes instead of one
# transaction unlinking a hundred thousand files under the write lock.
MAX_VICTIMS = 1024
# Recency updates are saved when this many are waiting (or by the store's
# flusher, or before choosing victims).
TOUCH_BATCH = 512


def make_room(tx: Tx, layout: blockfile.Layout, need: int, limit: int,
              most: int = MAX_VICTIMS) -> bool:
    """Evict until ``used + need <= limit``; False if that takes more than
    ``most`` victims or is impossible (everything left is pinned or being
    written). Files are unlinked before their rows are deleted, inside the
    transaction."""
    used = tx.used()
    while used + need > limit and most > 0:
        victims = tx.least_recent(min(_VICTIMS_PER_QUERY, most))
        if not victims:
            return False
        for fid, idx, _size in victims:
            blockfile.remove(layout.path(fid, idx))
            used -= tx.delete_block(fid, idx)
            most -= 1
            if used + need <= limit:
                break
    return used + need <= limit


def trim(index, layout: blockfile.Layout, limit_for) -> None:
    """Evict down to the bound, MAX_VICTIMS per transaction (at open, or
    when a file is unpinned). ``limit_for(tx)`` gives the bound in force."""
    while True:
        with index.write() as tx:
            if make_room(tx, layout, 0, limit_for(tx)) or not tx.least_recent(1):
                return


class Recency:
    """Read times not yet saved in the index."""

    def __init__(self):
        self._lock = threading.Lock()
        self._times: dict[tuple[int, int], float] = {}

    def touch(self, fid: int, idx: int) -> bool:
        """Note a read; True when a batch is due."""
        with self._lock:
            self._times[(fid, idx)] = time.time()
            return len(self._times) >= TOUCH_BATCH

    def pending(self) -> bool:
        return bool(self._times)

    def take(self) -> list[tuple[float, int, int]]:
        with self._lock:
            times, self._times = self._times, {}
        return [(atime, fid, idx) for (fid, idx), atime in times.items()]

    def give_back(self, rows: list[tuple[float, int, int]]) -> None:
        """A batch that could not be saved (index busy): keep it for later."""
        with self._lock:
            for atime, fid, idx in rows:
                self._times.setdefault((fid, idx), atime)

    def save(self, tx: Tx) -> None:
        rows = self.take()
        if rows:
            tx.touch(rows)
