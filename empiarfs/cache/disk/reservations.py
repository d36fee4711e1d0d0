"""This process's reservations: blocks whose bytes it reserved in the index
and whose files it has written, not yet confirmed as blocks.

Confirming costs an index write, so it is batched: the next write
transaction of this process (a store, a drop, a flush every FLUSH_EVERY
seconds by the store's background thread) confirms every finished write
since the last. Until then other processes already read the block (the
file is in place) but cannot evict it. A confirmation finds one of three
things: the reservation (made a block), the reservation of a file version
retired meanwhile (file and row deleted), or nothing (the index was made
afresh under us: the file is deleted, nothing accounts for it).

Lock order: ``Finished._lock`` is a leaf; ``confirm`` runs inside an index
write transaction.
"""

from __future__ import annotations

import threading

from empiarfs.cache.disk import blockfile


class Finished:
    """Finished writes awaiting confirmation, as ``(fid, idx)``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._keys: list[tuple[int, int]] = []

    def add(self, fid: int, idx: int) -> None:
        with self._lock:
            self._keys.append((fid, idx))

    def take(self) -> list[tuple[int, int]]:
        with self._lock:
            keys, self._keys = self._keys, []
        return keys

    def give_back(self, keys: list[tuple[int, int]]) -> None:
        """A batch whose transaction failed: confirm it next time."""
        if keys:
            with self._lock:
                self._keys[:0] = keys

    def indices(self, fid: int) -> list[int]:
        with self._lock:
            return [idx for f, idx in self._keys if f == fid]


def confirm(tx, layout: blockfile.Layout, token: str, keys: list[tuple[int, int]]) -> None:
    """Turn finished reservations of ``token`` into blocks (see module doc)."""
    for fid, idx in keys:
        row = tx.block(fid, idx)
        if row is None:
            blockfile.remove(layout.path(fid, idx))
        elif row[1] == token:
            if tx.is_current(fid):
                tx.mark_written(fid, idx, token)
            else:
                blockfile.remove(layout.path(fid, idx))
                tx.delete_block(fid, idx)


def cancel(tx, layout: blockfile.Layout, token: str, fid: int, idx: int) -> None:
    """Give up a reservation whose write failed."""
    row = tx.block(fid, idx)
    if row is not None and row[1] == token:
        blockfile.remove(layout.path(fid, idx))
        tx.delete_block(fid, idx)
