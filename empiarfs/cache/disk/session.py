"""One process's session on a cache directory: the directory lock, its
liveness token, the index, its registered bound; opened with the recovery
a fresh session owes the directory, closed leaving nothing behind.

Opening, in order: hold the directory (shared, or exclusive), make a token,
open the index (an unreadable one is started afresh, but only by a process
alone on the directory), register this process's bound, reap dead
processes' reservations, check the block size (a lone process with another
one discards the blocks; otherwise it is refused), and if no other process
is alive, reconcile the files with the index. Then retired blocks are
swept and the directory trimmed to the bound in force.

Lock order: a session is opened and closed by one thread; it takes the
index's write lock (``index.py``) and the flocks of ``dirlock.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3

from empiarfs.cache.disk import blockfile, dirlock, eviction, recovery
from empiarfs.cache.disk.dirlock import CacheLocked
from empiarfs.cache.disk.index import DB_NAME, Index

log = logging.getLogger(__name__)


class Session:
    """Open with :meth:`open`; ``.index``, ``.token``; :meth:`close`."""

    def __init__(self, directory: str, lock: dirlock.DirectoryLock, owner: dirlock.Owner,
                 index: Index):
        self.directory = directory
        self.lock = lock
        self.owner = owner
        self.index = index
        self.token = owner.token

    @classmethod
    def open(cls, directory: str, layout: blockfile.Layout, max_bytes: int, block_size: int,
             exclusive: bool) -> "Session":
        """
        Raises
        ------
        CacheLocked
            Held exclusively by another process; or, exclusive, used by
            another; or used by another with another block size.
        OSError, sqlite3.Error
            The directory or its index cannot be used.
        """
        os.makedirs(layout.root, exist_ok=True)
        lock = dirlock.DirectoryLock(directory, exclusive)
        owner = index = None
        try:
            owner = dirlock.Owner(directory)
            index = _open_index(directory, layout, owner)
            with index.write() as tx:
                tx.register(owner.token, max_bytes)
            live = recovery.reap(index, layout, directory, owner.token)
            _check_block_size(directory, index, block_size, live)
            if not live:
                if not exclusive:
                    lock.note_pid()
                removed = recovery.reconcile(index, layout)
                if removed:
                    log.info("disk cache %s: removed %d leftover files or rows", directory,
                             removed)
            recovery.sweep(index, layout)
            # The bound may have been lowered since the last run.
            eviction.trim(index, layout, lambda tx: tx.bound(max_bytes))
        except BaseException:
            if index is not None:
                index.close()
            if owner is not None:
                owner.release()
            lock.release()
            raise
        return cls(directory, lock, owner, index)

    def live_others(self) -> int:
        """Other processes using the directory now."""
        count = 0
        for token in dirlock.listed_tokens(self.directory):
            if token != self.token:
                claim = dirlock.claim_if_dead(self.directory, token)
                if claim is None:
                    count += 1
                else:
                    claim.abandon()
        return count

    def close(self, layout: blockfile.Layout) -> None:
        """Release this process's reservations still open (writes that did
        not finish), unregister, leave the directory."""
        try:
            with self.index.write() as tx:
                for fid, idx, _size in tx.reserved_by(self.token):
                    blockfile.remove(layout.path(fid, idx))
                    tx.delete_block(fid, idx)
                tx.unregister(self.token)
        except sqlite3.Error as exc:
            log.debug("disk cache %s: leaving without unregistering (%s)", self.directory, exc)
        self.index.close()
        self.leave()

    def leave(self) -> None:
        """Give up the token and the directory lock (the index stays open:
        after the directory was removed, other threads may still use it)."""
        self.owner.release()
        self.lock.release()


def _open_index(directory: str, layout: blockfile.Layout, owner: dirlock.Owner) -> Index:
    try:
        index = Index(directory)
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError as exc:
        if _others_alive(directory, owner):
            raise
        log.warning("cache index %s is unreadable (%s); starting an empty cache",
                    os.path.join(directory, DB_NAME), exc)
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(os.path.join(directory, DB_NAME + suffix))
            except FileNotFoundError:
                pass
        shutil.rmtree(layout.root, ignore_errors=True)
        os.makedirs(layout.root, exist_ok=True)
        layout.forget_shards()
        index = Index(directory)
    if index.upgraded:
        log.info("disk cache %s: index from an older empiarfs; starting an empty cache",
                 directory)
    return index


def _others_alive(directory: str, owner: dirlock.Owner) -> bool:
    for token in dirlock.listed_tokens(directory):
        if token == owner.token:
            continue
        claim = dirlock.claim_if_dead(directory, token)
        if claim is None:
            return True
        claim.abandon()
    return False


def _check_block_size(directory: str, index: Index, block_size: int, live: list[str]) -> None:
    with index.write() as tx:
        stored = tx.meta("block_size")
        if stored is not None and int(stored) != block_size:
            if live:
                pids = ", ".join(str(dirlock.token_pid(t)) for t in live)
                raise CacheLocked(
                    f"cache directory {directory} is in use by process {pids} with "
                    f"block size {stored}, not {block_size}; use the same block size "
                    "or another --cache-dir")
            log.info("cache %s used block size %s, now %s: discarding its blocks",
                     directory, stored, block_size)
            tx.retire_everything()
        tx.set_meta("block_size", block_size)
