"""``DiskStore``: the persistent block cache of one directory, shared by
every process on the node (the mount, Python API processes, Dask workers,
the ``cache`` commands). It composes the parts of this package and adds
only the order of their steps.

A lookup (``get``, ``has``) costs no index query once this process knows
the URL's fid (``versions.FileMap``): it opens the block file and trusts
its own header and crc32 (``blockfile``). A store (``put``) is one index
transaction: settle the URL's version (``versions.settle``), confirm this
process's finished writes (``reservations``), evict until the block fits
under the bound (``eviction``) and reserve its bytes; then the file is
written to a temporary name and renamed into place. A process killed at
any point leaves at most a reservation and a temporary file, which any
other process settles within seconds (``recovery.reap``).

Lock order: ``DiskStore._state`` (closing, writes in flight) ->
``DiskStore._reopen_lock`` -> ``Index._write_lock`` -> SQLite's write lock
-> leaves (``reservations.Finished``, ``eviction.Recency``,
``recovery.Suspects``). Lookups take only ``Index._read_lock`` (a leaf,
with a LOOKUP_WAIT timeout), and only for a URL this process has not met
in the last second. Payloads are read and written with no lock held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from typing import Iterator, Optional

from empiarfs import ranges
from empiarfs.cache.disk import blockfile, eviction, recovery, reservations, versions
from empiarfs.cache.disk.index import Index
from empiarfs.cache.disk.session import Session
from empiarfs.cache.disk.versions import FingerprintLike, Stored

log = logging.getLogger(__name__)

# How long writes stay off after an I/O error (disk full, directory gone).
WRITE_BACKOFF = 60.0
# A lookup that must ask the index waits at most this long for this
# process's reading connection; then it is a miss and the block comes
# from the network: a read must not wait on the disk past its deadline.
LOOKUP_WAIT = 0.5
# Finished writes and recency are saved this often by a background thread
# (and by every write transaction); dead processes are looked for every
# REAP_EVERY seconds.
FLUSH_EVERY = 0.5
REAP_EVERY = 2.0
# When the index vanishes but the directory is still there (someone is
# removing it), writes pause this long before it is made again: recreating
# it at once would make the removal fail. A directory already gone is made
# again at once.
REOPEN_PAUSE = 1.0
# close() waits this long for writes in flight.
CLOSE_WAIT = 5.0

_RESERVED, _PRESENT, _REFUSED = "reserved", "present", "refused"


class DiskStore:
    """Persistent block store bounded by ``max_bytes``, shared across processes.

    Parameters
    ----------
    directory : str
        Cache directory; created if missing.
    max_bytes : int
        Hard bound on the bytes of block files (headers included), held at
        every moment across every process using the directory; when those
        processes were given different bounds, the largest is in force
        (``eviction.py``). The index (a few MB) is not counted.
    block_size : int
        Block granule. Every process on a directory must use the same; a
        lone opener with another one discards the old blocks.
    exclusive : bool
        Hold the directory alone (maintenance, tests); the default shares it.

    Raises
    ------
    CacheLocked
        If another process holds the directory exclusively, or (with
        ``exclusive``) uses it at all, or uses it with another block size.
    OSError, sqlite3.Error
        If the directory or its index cannot be created or opened.
    """

    def __init__(self, directory: str, max_bytes: int, block_size: int = 256 * 1024, *,
                 exclusive: bool = False):
        self.directory = os.path.abspath(directory)
        self._max = int(max_bytes)
        self.block_size = int(block_size)
        self.exclusive = exclusive
        self.busy_misses = 0   # lookups that gave up waiting for the index
        self._writes_off_until = 0.0
        self._closed = False
        self._state = threading.Condition()
        self._writing = 0
        self._reopen_lock = threading.Lock()
        self._gone_since: Optional[float] = None
        self._retired: list[Index] = []   # indexes of a directory removed under us
        self._finished = reservations.Finished()
        self._recency = eviction.Recency()
        self._suspects = recovery.Suspects()
        self._files = versions.FileMap()
        self._layout = blockfile.Layout(self.directory)
        self._flusher: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._session = self._open_session()

    def _open_session(self) -> Session:
        return Session.open(self.directory, self._layout, self._max, self.block_size,
                            self.exclusive)

    @property
    def _index(self) -> Index:
        return self._session.index

    def _reopen_if_replaced(self) -> bool:
        """Recreate the cache if its directory was removed under us (at
        once, or after REOPEN_PAUSE if the removal may still be going on);
        False while writes must wait."""
        if not self._index.replaced():
            self._gone_since = None
            return True
        with self._reopen_lock:
            if not self._index.replaced():
                return True
            now = time.monotonic()
            if self._gone_since is None:
                self._gone_since = now
            if now - self._gone_since < REOPEN_PAUSE and os.path.isdir(self.directory):
                return False
            log.warning("cache directory %s vanished or was replaced; starting an empty cache",
                        self.directory)
            self._layout.forget_shards()
            old, self._session = self._session, self._open_session()
            self._files.clear()
            old.leave()
            # Other threads may be inside a transaction on the old index:
            # it is closed with the store, not now.
            self._retired.append(old.index)
            self._gone_since = None
            return True

    # ------------------------------------------------------------------ lookups
    @property
    def max_bytes(self) -> int:
        """The bound this store was opened with (``info()["max_bytes"]`` is
        the one in force: the largest of the processes using the directory)."""
        return self._max

    @property
    def bytes_used(self) -> int:
        """Bytes of block files and reservations, all processes together."""
        self._check_open()
        with self._index.read() as tx:
            return tx.used()

    def get(self, url: str, fingerprint: FingerprintLike, index: int) -> Optional[bytes]:
        """The verified payload of one block, or ``None`` if absent, of
        another version, corrupt (then it is deleted), or when the index
        stays busy for LOOKUP_WAIT seconds. Never writes the index."""
        if self._closed:
            return None
        stored, fresh = self._lookup(url, fingerprint)
        if stored is None or self._expected(stored.size, index) == -1:
            return None
        status, data = self._read(stored, index)
        if status == blockfile.MISSING and not fresh:
            # Another process may have stored a new fid for this version.
            again, _ = self._lookup(url, fingerprint, reread=True)
            if again is not None and again.fid != stored.fid:
                stored = again
                status, data = self._read(stored, index)
        if status == blockfile.HIT:
            if self._recency.touch(stored.fid, index):
                self._wake.set()
            self._start_flusher()
            return data
        if status == blockfile.MISSING:
            self._suspects.add(stored.fid, index)
            self._start_flusher()
        else:
            log.warning("cached block %s failed verification; deleted, will refetch",
                        self._layout.path(stored.fid, index))
            self._discard(stored.fid, index)
        return None

    def has(self, url: str, fingerprint: FingerprintLike, index: int) -> bool:
        """Whether the block's file is present (without reading or verifying it)."""
        if self._closed:
            return False
        stored, fresh = self._lookup(url, fingerprint)
        if stored is None or self._expected(stored.size, index) == -1:
            return False
        if os.path.exists(self._layout.path(stored.fid, index)):
            return True
        if not fresh:
            again, _ = self._lookup(url, fingerprint, reread=True)
            if again is not None and again.fid != stored.fid:
                return os.path.exists(self._layout.path(again.fid, index))
        return False

    def _lookup(self, url: str, fingerprint: FingerprintLike,
                reread: bool = False) -> tuple[Optional[Stored], bool]:
        """``(stored version if it is this fingerprint's, fresh)``."""
        if not reread:
            stored, known, fresh = self._files.get(url)
            if known:
                if stored is not None and versions.same_version(stored, fingerprint):
                    return stored, fresh
                if fresh:
                    return None, True
        try:
            with self._index.read(wait=LOOKUP_WAIT) as tx:
                if tx is None:
                    self._busy(url)
                    return None, True
                stored = tx.file(url)
        except sqlite3.Error as exc:
            log.debug("disk cache index unreadable (%s)", exc)
            self._busy(url)
            return None, True
        self._files.remember(url, stored)
        if stored is not None and versions.same_version(stored, fingerprint):
            return stored, True
        return None, True

    def _busy(self, url: str) -> None:
        self.busy_misses += 1
        log.debug("disk cache index busy for %.1f s; reading %s from the network",
                  LOOKUP_WAIT, url)

    def _read(self, stored: Stored, index: int) -> tuple[str, Optional[bytes]]:
        path = self._layout.path(stored.fid, index)
        try:
            return blockfile.read(path, stored.fid, index, self._expected(stored.size, index),
                                  self.block_size)
        except OSError as exc:
            log.warning("cached block %s unreadable (%s); refetching", path, exc)
            return blockfile.MISSING, None

    def _expected(self, size: Optional[int], index: int) -> Optional[int]:
        """Payload length of block ``index`` of a file of ``size`` (-1: past the end)."""
        if size is None:
            return None
        start = index * self.block_size
        return min(self.block_size, size - start) if start < size else -1

    def _discard(self, fid: int, index: int) -> None:
        """Delete a corrupt block, unless another process is writing it anew."""
        try:
            with self._transaction() as tx:
                row = tx.block(fid, index)
                if row is None or row[1] is None:
                    blockfile.remove(self._layout.path(fid, index))
                    tx.delete_block(fid, index)
        except sqlite3.Error as exc:
            log.debug("cannot delete corrupt block now (%s)", exc)

    # ------------------------------------------------------------------- stores
    def put(self, url: str, fingerprint: FingerprintLike, index: int, data: bytes) -> bool:
        """Store one whole block.

        Returns
        -------
        bool
            True if stored (or already present); False if the cache refused
            (full of pinned or in-flight blocks, index busy, writes off
            after an error, closed).

        Raises
        ------
        ValueError
            If ``data`` is not exactly the block (``block_size`` bytes, or
            the tail of the file).
        """
        if self._closed or time.monotonic() < self._writes_off_until:
            return False
        with self._state:
            if self._closed:
                return False
            self._writing += 1
        try:
            return self._put(url, fingerprint, index, data)
        finally:
            with self._state:
                self._writing -= 1
                self._state.notify_all()

    def _put(self, url: str, fingerprint: FingerprintLike, index: int, data: bytes) -> bool:
        try:
            if not self._reopen_if_replaced():
                return False
        except (OSError, sqlite3.Error) as exc:
            self._writes_failed(exc)
            return False
        outcome, stored = self._reserve(url, fingerprint, index, len(data))
        if outcome != _RESERVED:
            return outcome == _PRESENT
        path = self._layout.path(stored.fid, index)
        try:
            self._layout.make_shard(stored.fid)
            blockfile.write(path, stored.fid, index, data)
        except OSError as exc:
            try:
                with self._index.write() as tx:
                    reservations.cancel(tx, self._layout, self._session.token, stored.fid, index)
            except sqlite3.Error as db_exc:
                log.debug("cannot cancel a reservation now (%s); it goes at close", db_exc)
            self._writes_failed(exc)
            return False
        self._finished.add(stored.fid, index)
        self._start_flusher()
        return True

    def _reserve(self, url: str, fingerprint: FingerprintLike, index: int, length: int,
                 reaped: bool = False) -> tuple[str, Optional[Stored]]:
        """One transaction: the version, room under the bound, the
        reservation; ``(_RESERVED, row to write under)``, ``(_PRESENT, row)``
        or ``(_REFUSED, None)``."""
        size = blockfile.file_size(length)
        try:
            with self._transaction() as tx:
                stored, switched = versions.settle(tx, url, fingerprint)
                expected = self._expected(stored.size, index)
                if expected is not None and expected != length:
                    raise ValueError(f"block {index} of {url} must be {max(expected, 0)} "
                                     f"bytes, got {length}")
                present = tx.block(stored.fid, index) is not None
                fits = present or eviction.make_room(tx, self._layout, size,
                                                     tx.bound(self._max))
                if fits and not present:
                    tx.reserve(stored.fid, index, size, self._session.token, time.time())
        except sqlite3.Error as exc:
            self._index_failed(exc)
            return _REFUSED, None
        self._files.remember(url, stored)
        if switched:
            self._sweep()
        if present:
            return _PRESENT, stored
        if fits:
            return _RESERVED, stored
        # Full of pinned blocks and blocks being written, unless some of
        # those belong to a process that died.
        if not reaped and self._reap():
            return self._reserve(url, fingerprint, index, length, reaped=True)
        return _REFUSED, None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator:
        """A write transaction that first confirms this process's finished
        writes and saves its read times (kept for later if it fails)."""
        finished, touches = self._finished.take(), self._recency.take()
        try:
            with self._index.write() as tx:
                reservations.confirm(tx, self._layout, self._session.token, finished)
                if touches:
                    tx.touch(touches)
                yield tx
        except BaseException:
            self._finished.give_back(finished)
            self._recency.give_back(touches)
            raise

    def _reap(self) -> bool:
        """Settle dead processes' reservations; True if any bytes came free."""
        try:
            before = self.bytes_used
            recovery.reap(self._index, self._layout, self.directory, self._session.token)
            return self.bytes_used < before
        except sqlite3.Error as exc:
            log.debug("cannot look for dead processes now (%s)", exc)
            return False

    def _sweep(self) -> None:
        try:
            recovery.sweep(self._index, self._layout)
        except sqlite3.Error as exc:
            log.debug("cannot delete dropped blocks now (%s); the next sweep will", exc)

    def _index_failed(self, exc: sqlite3.Error) -> None:
        if isinstance(exc, sqlite3.ProgrammingError):
            return   # the index was closed under this write (directory replaced, closing)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            log.debug("disk cache index busy; block not stored (%s)", exc)
            return
        self._writes_failed(exc)

    def _writes_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now >= self._writes_off_until:
            log.warning(
                "disk cache %s: write failed (%s); caching to disk is off for %.0f s, "
                "reads continue from the network", self.directory, exc, WRITE_BACKOFF)
        self._writes_off_until = now + WRITE_BACKOFF

    # ------------------------------------------------------------- maintenance
    def flush(self) -> None:
        """Confirm this process's finished writes and save its read times
        now (a background thread does it every FLUSH_EVERY seconds; until
        then other processes read those blocks but do not count them)."""
        with self._transaction():
            pass

    def _flush_quietly(self) -> None:
        """Before a summary: this process's finished writes count."""
        try:
            self.flush()
            self._suspects.check(self._index, self._layout)
        except sqlite3.Error as exc:
            log.debug("cannot save finished writes now (%s)", exc)

    def _start_flusher(self) -> None:
        # Started on first use, not in __init__: the mount's daemon forks
        # after building its store, and threads do not survive a fork.
        if self._flusher is None:
            with self._state:
                if self._flusher is None and not self._closed:
                    self._flusher = threading.Thread(target=self._flush_loop,
                                                     name="empiarfs-disk-index", daemon=True)
                    self._flusher.start()

    def _flush_loop(self) -> None:
        last_reap = time.monotonic()
        while not self._closed:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.flush()
                self._suspects.check(self._index, self._layout)
                if time.monotonic() - last_reap >= REAP_EVERY:
                    last_reap = time.monotonic()
                    recovery.reap(self._index, self._layout, self.directory,
                                  self._session.token)
            except (sqlite3.Error, OSError) as exc:
                log.debug("disk cache index maintenance skipped (%s)", exc)

    # ------------------------------------------------------- files and versions
    def open(self, url: str, fingerprint: FingerprintLike) -> None:
        """Declare the version of ``url`` about to be read: if it differs
        from the stored one, the old blocks are deleted."""
        self._check_open()
        with self._index.write() as tx:
            stored, switched = versions.settle(tx, url, fingerprint)
        self._files.remember(url, stored)
        if switched:
            self._sweep()

    def fingerprint_key(self, url: str) -> Optional[str]:
        """Fingerprint key of the stored version of ``url`` (None if unknown)."""
        self._check_open()
        with self._index.read() as tx:
            stored = tx.file(url)
        return stored.key if stored is not None else None

    def cached_ranges(self, url: str,
                      fingerprint: Optional[FingerprintLike] = None) -> list[tuple[int, int]]:
        """Byte ranges of ``url``'s stored version present on disk; with
        ``fingerprint``, empty unless that is the stored version."""
        self._check_open()
        with self._index.read() as tx:
            stored = tx.file(url)
            if stored is None or stored.size is None:
                return []
            if fingerprint is not None and not versions.same_version(stored, fingerprint):
                return []
            indices = [idx for idx, _size in tx.written(stored.fid)]
        indices += self._finished.indices(stored.fid)
        return ranges.of_blocks(indices, self.block_size, stored.size)

    def drop_file(self, url: str) -> int:
        """Delete every block of ``url``; returns how many were deleted.
        A pin on the URL survives."""
        self._check_open()
        with self._transaction() as tx:
            stored = tx.file(url)
            if stored is None:
                return 0
            count = len(tx.written(stored.fid))
            tx.retire(stored.fid)
            if stored.pinned:
                tx.save_file(dataclasses.replace(stored, fid=tx.new_fid()))
            else:
                tx.delete_file(url)
        self._files.forget(url)
        self._sweep()
        return count

    def pin(self, url: str) -> None:
        """Never evict blocks of ``url`` (persistent, for every process)."""
        self._set_pinned(url, True)

    def unpin(self, url: str) -> None:
        """Make blocks of ``url`` evictable again."""
        self._set_pinned(url, False)

    def _set_pinned(self, url: str, pinned: bool) -> None:
        self._check_open()
        with self._index.write() as tx:
            stored = tx.file(url)
            if stored is None:
                if pinned:
                    tx.save_file(Stored(url, tx.new_fid(), None, None, pinned=True))
                return
            if stored.pinned == pinned:
                return
            tx.save_file(dataclasses.replace(stored, pinned=pinned))
        if not pinned:
            eviction.trim(self._index, self._layout, lambda tx: tx.bound(self._max))

    def pinned(self) -> list[str]:
        """URLs currently pinned."""
        self._check_open()
        with self._index.read() as tx:
            return [s.url for s in tx.files(pinned_only=True)]

    def files(self) -> list[dict]:
        """One record per file with blocks or a pin, by URL: ``url``,
        ``size`` (None if unknown), ``cached`` (bytes present) and ``pinned``."""
        self._check_open()
        self._flush_quietly()
        with self._index.read() as tx:
            rows = tx.file_usage()
        return [{"url": url, "size": size,
                 "cached": total - count * blockfile.HEADER.size if size is not None else 0,
                 "pinned": pinned}
                for url, size, pinned, count, total in rows if count or pinned]

    def info(self) -> dict:
        """Usage summary: ``bytes_used``, ``max_bytes`` (the bound in
        force), ``own_max_bytes`` (this store's), ``files`` (with at least
        one block), ``blocks``, ``pinned_files``, ``pinned_bytes``,
        ``reserved_bytes`` (blocks being written), ``processes`` (using the
        directory now), ``directory``, ``writes_enabled``, ``busy_misses``
        (lookups that gave up waiting for a busy index).

        Raises
        ------
        ValueError
            After :meth:`close` (as do the other queries of the index).
        """
        self._check_open()
        self._flush_quietly()
        with self._index.read() as tx:
            data = tx.summary()
            bound = tx.bound(self._max)
        data.update({
            "busy_misses": self.busy_misses,
            "directory": self.directory,
            "max_bytes": bound,
            "own_max_bytes": self._max,
            "processes": self._session.live_others() + 1,
            "writes_enabled": time.monotonic() >= self._writes_off_until,
        })
        return data

    def clear(self) -> None:
        """Delete every block (pins are kept; blocks being written are
        deleted by their writers when they finish)."""
        self._check_open()
        with self._transaction() as tx:
            for stored in tx.files(pinned_only=True):
                tx.retire(stored.fid)
                tx.save_file(dataclasses.replace(stored, fid=tx.new_fid()))
            tx.retire_all_unpinned()
        self._files.clear()
        self._sweep()

    # ------------------------------------------------------------------ closing
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"disk cache {self.directory} is closed")

    def close(self) -> None:
        """Finish writes in flight, save recency, leave the directory."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            deadline = time.monotonic() + CLOSE_WAIT
            while self._writing and time.monotonic() < deadline:
                self._state.wait(deadline - time.monotonic())
            flusher = self._flusher
        self._wake.set()
        if flusher is not None:
            flusher.join(CLOSE_WAIT)
        try:
            self.flush()
        except sqlite3.Error as exc:
            log.debug("disk cache %s: closing without saving (%s)", self.directory, exc)
        for index in self._retired:
            index.close()
        self._session.close(self._layout)

    def __enter__(self) -> "DiskStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r}, max_bytes={self._max})"
