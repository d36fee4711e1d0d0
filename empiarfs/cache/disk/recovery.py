"""Putting a cache directory right after processes died or data was dropped.

Three jobs, each safe while other processes keep using the directory:

``reap``
    Reservations of dead processes are settled. A block the process had
    finished (renamed into place; it exited before saying so, or was killed
    just after) is checked like any lookup checks it and kept; anything
    else (a temporary file, a block of a dropped file) is unlinked and its
    row deleted, so its bytes count no more. Run at open, by each process's
    flusher every few seconds, and when a write finds no room.
``sweep``
    Blocks of retired fids (a dropped file, an old version, ``clear``) are
    deleted a batch per transaction, so a large drop never holds the
    index's write lock for long.
``Suspects``
    A lookup that misses a block of a file this process knows notes it; the
    store's background thread asks the index whether that block is listed
    as written, and forgets it if its file was removed behind our back (by
    someone else than empiarfs), so ``usage`` stays exact.
``reconcile``
    A full scan of ``blocks/`` against the index: files without a row
    (damage, a lost index) and written rows without a file are removed,
    stray temporary files swept, and ``usage`` recounted. Run when a
    process opens the directory and finds no other process using it.
    Every delete is re-checked inside a write transaction, where no one
    can reserve, evict or finish a block, so a block made meanwhile by
    another process is never taken for debris.

Lock order: runs inside or around ``Index.write`` (see ``index.py``); the
flocks taken on dead owners' token files never wait.
"""

from __future__ import annotations

import logging
import os
import threading

from empiarfs.cache.disk import blockfile, dirlock
from empiarfs.cache.disk.index import Index

log = logging.getLogger(__name__)

# Rows deleted per transaction by sweep and reconcile.
BATCH = 512
# Missed lookups remembered for Suspects.check, at most.
MAX_SUSPECTS = 4096


def reap(index: Index, layout: blockfile.Layout, directory: str, me: str) -> list[str]:
    """Release dead processes' reservations; returns the live other tokens."""
    with index.read() as tx:
        tokens = set(tx.owners()) | set(tx.registered())
    tokens.update(dirlock.listed_tokens(directory))
    tokens.discard(me)
    live, dead = [], []
    for token in sorted(tokens):
        claim = dirlock.claim_if_dead(directory, token)
        if claim is None:
            live.append(token)
        else:
            dead.append(claim)
    if not dead:
        return live
    try:
        freed = kept = 0
        with index.write() as tx:
            for claim in dead:
                for fid, idx, size in tx.reserved_by(claim.token):
                    path = layout.path(fid, idx)
                    length = size - blockfile.HEADER.size
                    if tx.is_current(fid) and _whole(path, fid, idx, length):
                        tx.mark_written(fid, idx, claim.token)
                        kept += 1
                    else:
                        blockfile.remove(path)
                        freed += tx.delete_block(fid, idx)
                tx.unregister(claim.token)
    except BaseException:
        for claim in dead:
            claim.abandon()
        raise
    for claim in dead:
        claim.bury()
    if freed or kept:
        log.info("disk cache %s: of what %d process(es) gone were writing, kept %d finished "
                 "blocks and released %d bytes", directory, len(dead), kept, freed)
    return live


def _whole(path: str, fid: int, idx: int, length: int) -> bool:
    try:
        status, _ = blockfile.read(path, fid, idx, length, length)
    except OSError:
        return False
    return status == blockfile.HIT


def sweep(index: Index, layout: blockfile.Layout, rounds: int = -1) -> int:
    """Delete blocks of retired fids, BATCH rows per transaction; returns
    how many were deleted. Reservations of retired fids are left to their
    writers (who find the fid retired when they finish) or to ``reap``."""
    deleted = 0
    while rounds:
        rounds -= 1
        with index.write() as tx:
            fids = tx.garbage(16)
            done_now = 0
            for fid in fids:
                rows = tx.written(fid, BATCH - done_now)
                for idx, _size in rows:
                    blockfile.remove(layout.path(fid, idx))
                    tx.delete_block(fid, idx)
                done_now += len(rows)
                if not tx.has_rows(fid):
                    tx.forget_garbage(fid)
                if done_now >= BATCH:
                    break
        deleted += done_now
        if not done_now:
            break
    return deleted


class Suspects:
    """Blocks looked up and missing while the index may list them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._keys: set = set()

    def add(self, fid: int, idx: int) -> None:
        with self._lock:
            if len(self._keys) < MAX_SUSPECTS:
                self._keys.add((fid, idx))

    def check(self, index: Index, layout: blockfile.Layout) -> int:
        """Forget written blocks whose file is gone; returns how many. One
        query per suspect on the reading connection, a write only for those."""
        with self._lock:
            keys, self._keys = self._keys, set()
        if not keys:
            return 0
        with index.read() as tx:
            gone = [(fid, idx) for fid, idx in keys
                    if _written(tx, fid, idx) and not os.path.exists(layout.path(fid, idx))]
        if not gone:
            return 0
        with index.write() as tx:
            for fid, idx in gone:
                # Written rows lose their files only inside write transactions.
                if _written(tx, fid, idx) and not os.path.exists(layout.path(fid, idx)):
                    tx.delete_block(fid, idx)
        log.info("disk cache: %d block files were removed by someone else; forgotten", len(gone))
        return len(gone)


def _written(tx, fid: int, idx: int) -> bool:
    row = tx.block(fid, idx)
    return row is not None and row[1] is None


def reconcile(index: Index, layout: blockfile.Layout) -> int:
    """Make ``blocks/`` and the index agree; returns files and rows removed."""
    removed = 0
    seen: set = set()
    for shard in layout.shards():
        found = list(layout.scan(shard))
        for start in range(0, len(found), BATCH):
            with index.write() as tx:
                for path, fid, idx, temporary in found[start:start + BATCH]:
                    row = tx.block(fid, idx)
                    if temporary:
                        # A live writer's temporary file has its reservation.
                        if row is None or row[1] is None:
                            removed += _unlink(path)
                    elif row is None:
                        removed += _unlink(path)
                    else:
                        seen.add((fid, idx))
    with index.read() as tx:
        rows = tx.all_written()
    missing = [key for key in rows if key not in seen]
    for start in range(0, len(missing), BATCH):
        with index.write() as tx:
            for fid, idx in missing[start:start + BATCH]:
                row = tx.block(fid, idx)
                # Written rows change only inside write transactions: if the
                # file is absent now, it is gone for good.
                if row is not None and row[1] is None and not os.path.exists(layout.path(fid, idx)):
                    tx.delete_block(fid, idx)
                    removed += 1
    with index.write() as tx:
        tx.recount()
    return removed


def _unlink(path: str) -> int:
    try:
        os.unlink(path)
        return 1
    except OSError:
        return 0
