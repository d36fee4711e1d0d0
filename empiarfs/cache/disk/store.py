"""``DiskStore``: the persistent block cache of one directory, shared by
every process on the node (the mount, Python API processes, Dask workers,
the ``cache`` commands).

It composes the parts of this package: ``dirlock`` (who uses the
directory), ``index`` (the shared SQLite index), ``blockfile`` (one block,
one checksummed file), ``eviction`` (the byte bound, LRU, recency),
``versions`` (which version of a URL is kept) and ``recovery`` (what dead
processes and dropped files leave behind).

A lookup (``get``, ``has``) costs no index query once this process knows
the URL's fid: it opens ``blocks/<shard>/<fid>-<idx>.blk`` and trusts the
file's own header and crc32. A store (``put``) is one index transaction:
settle the URL's version, evict least recently used blocks until the new
one fits under the bound, and reserve its bytes; then the block is written
to a temporary file and renamed into place, and its reservation becomes a
block in a later transaction (batched). A process killed at any point
leaves at most a reservation and a temporary file, which ``recovery.reap``
releases as soon as any other process notices the death (within a few
seconds) or the next one opens the directory; blocks it had finished are
kept.

Lock order: ``DiskStore._state`` (closing and writes in flight) ->
``DiskStore._reopen_lock`` -> ``Index._write_lock`` -> SQLite's write lock
-> leaves (``DiskStore._marks_lock``, ``Recency._lock``). Lookups take
only ``Index._read_lock`` (a leaf, with a LOOKUP_WAIT timeout), and only
for a URL this process has not met in the last second. Payloads are read
and written with no lock held.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sqlite3
import threading
import time
from typing import Optional

from empiarfs import ranges
from empiarfs.cache.disk import blockfile, dirlock, eviction, recovery, versions
from empiarfs.cache.disk.dirlock import CacheLocked
from empiarfs.cache.disk.index import DB_NAME, Index
from empiarfs.cache.disk.versions import FingerprintLike, Stored

log = logging.getLogger(__name__)

# How long writes stay off after an I/O error (disk full, directory gone).
WRITE_BACKOFF = 60.0
# A lookup that must ask the index waits at most this long for this
# process's reading connection; then it is a miss and the block comes
# from the network: a read must not wait on the disk past its deadline.
LOOKUP_WAIT = 0.5
# Reservations written and recency are saved this often by a background
# thread (and by every write transaction); dead processes are looked for
# every REAP_EVERY seconds.
FLUSH_EVERY = 0.5
REAP_EVERY = 2.0
# Missed lookups of known files remembered for the flusher to check, at most.
MAX_SUSPECTS = 4096
# When the index vanishes but the directory is still there (someone is
# removing it), writes pause this long before it is made again: recreating
# it at once would make the removal fail. A directory already gone is made
# again at once.
REOPEN_PAUSE = 1.0
# close() waits this long for writes in flight.
CLOSE_WAIT = 5.0


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
        self._marks_lock = threading.Lock()
        self._marks: list[tuple[int, int]] = []   # written, reservation not yet turned into a block
        self._recency = eviction.Recency()
        self._suspects: set = set()   # (fid, idx) looked up and missing; see _suspect
        self._files = versions.FileMap()
        self._layout = blockfile.Layout(self.directory)
        self._flusher: Optional[threading.Thread] = None
        self._wake = threading.Event()
        self._retired: list[Index] = []   # indexes of a directory removed under us
        self._gone_since: Optional[float] = None
        self._open()

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        self._dirlock, self._owner, self._index = self._open_parts()

    def _open_parts(self) -> tuple[dirlock.DirectoryLock, dirlock.Owner, Index]:
        """Take the directory, register, recover; the parts, not yet in use."""
        os.makedirs(self._layout.root, exist_ok=True)
        lock = dirlock.DirectoryLock(self.directory, self.exclusive)
        owner = index = None
        try:
            owner = dirlock.Owner(self.directory)
            index = self._open_index(owner)
            with index.write() as tx:
                tx.register(owner.token, self._max)
            live = recovery.reap(index, self._layout, self.directory, owner.token)
            self._check_block_size(index, live)
            if not live:
                if not self.exclusive:
                    lock.note_pid()
                removed = recovery.reconcile(index, self._layout)
                if removed:
                    log.info("disk cache %s: removed %d leftover files or rows", self.directory,
                             removed)
            recovery.sweep(index, self._layout)
            # The bound may have been lowered since the last run.
            eviction.trim(index, self._layout, lambda tx: tx.bound(self._max))
        except BaseException:
            if index is not None:
                index.close()
            if owner is not None:
                owner.release()
            lock.release()
            raise
        return lock, owner, index

    def _open_index(self, owner: dirlock.Owner) -> Index:
        try:
            index = Index(self.directory)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            if self._others_alive(owner):
                raise
            log.warning("cache index %s is unreadable (%s); starting an empty cache",
                        os.path.join(self.directory, DB_NAME), exc)
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(os.path.join(self.directory, DB_NAME + suffix))
                except FileNotFoundError:
                    pass
            shutil.rmtree(self._layout.root, ignore_errors=True)
            os.makedirs(self._layout.root, exist_ok=True)
            self._layout.forget_shards()
            index = Index(self.directory)
        if index.upgraded:
            log.info("disk cache %s: index from an older empiarfs; starting an empty cache",
                     self.directory)
        return index

    def _others_alive(self, owner: dirlock.Owner) -> bool:
        for token in dirlock.listed_tokens(self.directory):
            if token == owner.token:
                continue
            claim = dirlock.claim_if_dead(self.directory, token)
            if claim is None:
                return True
            claim.abandon()
        return False

    def _check_block_size(self, index: Index, live: list[str]) -> None:
        with index.write() as tx:
            stored = tx.meta("block_size")
            if stored is not None and int(stored) != self.block_size:
                if live:
                    pids = ", ".join(str(dirlock.token_pid(t)) for t in live)
                    raise CacheLocked(
                        f"cache directory {self.directory} is in use by process {pids} with "
                        f"block size {stored}, not {self.block_size}; use the same block size "
                        "or another --cache-dir")
                log.info("cache %s used block size %s, now %s: discarding its blocks",
                         self.directory, stored, self.block_size)
                tx.retire_everything()
            tx.set_meta("block_size", self.block_size)

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
            parts = self._open_parts()
            old_lock, old_owner, old_index = self._dirlock, self._owner, self._index
            self._dirlock, self._owner, self._index = parts
            self._files.clear()
            old_owner.release()
            old_lock.release()
            # Other threads may be inside a transaction on the old index:
            # it is closed with the store, not now.
            self._retired.append(old_index)
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
            self._suspect(stored.fid, index)
        if status == blockfile.CORRUPT:
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
        expected = self._expected(stored.size, index)
        path = self._layout.path(stored.fid, index)
        try:
            return blockfile.read(path, stored.fid, index, expected, self.block_size)
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
        marks = self._take_marks()
        try:
            with self._index.write() as tx:
                self._apply_marks(tx, marks)
                row = tx.block(fid, index)
                if row is None or row[1] is None:
                    blockfile.remove(self._layout.path(fid, index))
                    tx.delete_block(fid, index)
        except sqlite3.Error as exc:
            self._give_back(marks, [])
            log.debug("cannot delete corrupt block now (%s)", exc)

    def _suspect(self, fid: int, index: int) -> None:
        """A lookup missed a block of a known file: if the index still has
        it, its file was removed behind our back; the flusher checks."""
        if len(self._suspects) < MAX_SUSPECTS:
            self._suspects.add((fid, index))
            self._start_flusher()

    def _check_suspects(self) -> None:
        """Delete rows of written blocks whose file is gone (outside the
        read path: one query per suspect, on the reading connection)."""
        suspects, self._suspects = self._suspects, set()
        if not suspects:
            return
        with self._index.read() as tx:
            gone = [(fid, idx) for fid, idx in suspects
                    if (row := tx.block(fid, idx)) is not None and row[1] is None
                    and not os.path.exists(self._layout.path(fid, idx))]
        if not gone:
            return
        with self._index.write() as tx:
            for fid, idx in gone:
                row = tx.block(fid, idx)
                # Written rows lose their files only inside write transactions.
                if row is not None and row[1] is None and \
                        not os.path.exists(self._layout.path(fid, idx)):
                    tx.delete_block(fid, idx)
        log.info("disk cache %s: %d block files were removed by someone else; forgotten",
                 self.directory, len(gone))

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
        size = blockfile.file_size(len(data))
        try:
            if not self._reopen_if_replaced():
                return False
        except (OSError, sqlite3.Error) as exc:
            self._writes_failed(exc)
            return False
        token = self._owner.token
        for attempt in (1, 2):
            marks, touches = self._take_marks(), self._recency.take()
            try:
                with self._index.write() as tx:
                    stored, switched = self._settle(tx, url, fingerprint)
                    expected = self._expected(stored.size, index)
                    if expected is not None and expected != len(data):
                        raise ValueError(f"block {index} of {url} must be "
                                         f"{max(expected, 0)} bytes, got {len(data)}")
                    self._apply_marks(tx, marks)
                    if touches:
                        tx.touch(touches)
                    present = tx.block(stored.fid, index) is not None
                    fits = present or eviction.make_room(tx, self._layout, size,
                                                         tx.bound(self._max))
                    if fits and not present:
                        tx.reserve(stored.fid, index, size, token, time.time())
            except ValueError:
                self._give_back(marks, touches)
                raise
            except sqlite3.Error as exc:
                self._give_back(marks, touches)
                self._index_failed(exc)
                return False
            self._files.remember(url, stored)
            if switched:
                self._sweep()
            if present:
                return True
            if fits:
                break
            if attempt == 1 and not self._reap():
                return False   # full of pinned blocks and blocks being written
        else:
            return False
        path = self._layout.path(stored.fid, index)
        try:
            self._layout.make_shard(stored.fid)
            blockfile.write(path, stored.fid, index, data)
        except OSError as exc:
            self._unreserve(stored.fid, index)
            self._writes_failed(exc)
            return False
        with self._marks_lock:
            self._marks.append((stored.fid, index))
        self._start_flusher()
        return True

    def _settle(self, tx, url: str, fingerprint: FingerprintLike) -> tuple[Stored, bool]:
        """The row of ``url`` at this version, made or switched to in ``tx``;
        and whether an old version was retired."""
        stored = tx.file(url)
        if stored is None:
            new = versions.fresh(url, tx.new_fid(), fingerprint, pinned=False)
        elif stored.key is None or versions.same_version(stored, fingerprint):
            new = versions.adopt(stored, fingerprint)
            if new == stored:
                return stored, False
        else:
            log.info("%s changed (%s -> %s): dropping its cached blocks", url, stored.key,
                     versions.key_of(fingerprint))
            tx.retire(stored.fid)
            new = versions.fresh(url, tx.new_fid(), fingerprint, pinned=stored.pinned)
            tx.save_file(new)
            return new, True
        tx.save_file(new)
        return new, False

    def _apply_marks(self, tx, marks: list[tuple[int, int]]) -> None:
        """Turn this process's written reservations into blocks (or delete
        them if their file was dropped meanwhile)."""
        token = self._owner.token
        for fid, idx in marks:
            row = tx.block(fid, idx)
            if row is None:
                # The reservation is gone (the index was replaced): nothing
                # accounts for the file.
                blockfile.remove(self._layout.path(fid, idx))
            elif row[1] == token:
                if tx.is_current(fid):
                    tx.mark_written(fid, idx, token)
                else:
                    blockfile.remove(self._layout.path(fid, idx))
                    tx.delete_block(fid, idx)

    def _take_marks(self) -> list[tuple[int, int]]:
        with self._marks_lock:
            marks, self._marks = self._marks, []
        return marks

    def _give_back(self, marks, touches) -> None:
        if marks:
            with self._marks_lock:
                self._marks[:0] = marks
        if touches:
            self._recency.give_back(touches)

    def _unreserve(self, fid: int, idx: int) -> None:
        try:
            with self._index.write() as tx:
                row = tx.block(fid, idx)
                if row is not None and row[1] == self._owner.token:
                    blockfile.remove(self._layout.path(fid, idx))
                    tx.delete_block(fid, idx)
        except sqlite3.Error as exc:
            log.debug("cannot release a reservation now (%s); it is released at close", exc)

    def _reap(self) -> bool:
        """Release dead processes' reservations; True if any bytes came free."""
        try:
            before = self.bytes_used
            recovery.reap(self._index, self._layout, self.directory, self._owner.token)
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

    def flush(self) -> None:
        """Save this process's finished writes and read times in the index
        now (a background thread does it every FLUSH_EVERY seconds; until
        then other processes see the blocks but not in their summaries)."""
        marks, touches = self._take_marks(), self._recency.take()
        if not marks and not touches:
            return
        try:
            with self._index.write() as tx:
                self._apply_marks(tx, marks)
                if touches:
                    tx.touch(touches)
        except BaseException:
            self._give_back(marks, touches)
            raise

    def _flush_quietly(self) -> None:
        """Before a summary: this process's finished writes count."""
        try:
            self.flush()
            self._check_suspects()
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
                self._check_suspects()
                if time.monotonic() - last_reap >= REAP_EVERY:
                    last_reap = time.monotonic()
                    recovery.reap(self._index, self._layout, self.directory, self._owner.token)
            except (sqlite3.Error, OSError) as exc:
                log.debug("disk cache index maintenance skipped (%s)", exc)

    # ------------------------------------------------------- files and versions
    def open(self, url: str, fingerprint: FingerprintLike) -> None:
        """Declare the version of ``url`` about to be read: if it differs
        from the stored one, the old blocks are deleted."""
        self._check_open()
        with self._index.write() as tx:
            stored, switched = self._settle(tx, url, fingerprint)
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
        with self._marks_lock:
            indices += [idx for fid, idx in self._marks if fid == stored.fid]
        return ranges.of_blocks(indices, self.block_size, stored.size)

    def drop_file(self, url: str) -> int:
        """Delete every block of ``url``; returns how many were deleted.
        A pin on the URL survives."""
        self._check_open()
        marks = self._take_marks()
        try:
            with self._index.write() as tx:
                self._apply_marks(tx, marks)
                stored = tx.file(url)
                if stored is None:
                    return 0
                count = len(tx.written(stored.fid))
                tx.retire(stored.fid)
                if stored.pinned:
                    tx.save_file(dataclasses.replace(stored, fid=tx.new_fid()))
                else:
                    tx.delete_file(url)
        except BaseException:
            self._give_back(marks, [])
            raise
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
        force), ``own_max_bytes`` (this store's), ``files`` (with at
        least one block), ``blocks``, ``pinned_files``, ``pinned_bytes``,
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
        others = 0
        for token in dirlock.listed_tokens(self.directory):
            if token != self._owner.token:
                claim = dirlock.claim_if_dead(self.directory, token)
                if claim is None:
                    others += 1
                else:
                    claim.abandon()
        data.update({
            "busy_misses": self.busy_misses,
            "directory": self.directory,
            "max_bytes": bound,
            "own_max_bytes": self._max,
            "processes": others + 1,
            "writes_enabled": time.monotonic() >= self._writes_off_until,
        })
        return data

    def clear(self) -> None:
        """Delete every block (pins are kept; blocks being written are
        deleted by their writers when they finish)."""
        self._check_open()
        marks = self._take_marks()
        try:
            with self._index.write() as tx:
                self._apply_marks(tx, marks)
                for stored in tx.files(pinned_only=True):
                    tx.retire(stored.fid)
                    tx.save_file(dataclasses.replace(stored, fid=tx.new_fid()))
                tx.retire_all_unpinned()
        except BaseException:
            self._give_back(marks, [])
            raise
        self._files.clear()
        self._sweep()

    # ------------------------------------------------------------------ closing
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"disk cache {self.directory} is closed")

    def close(self) -> None:
        """Finish writes in flight, save recency, close the index and
        leave the directory."""
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
            with self._index.write() as tx:   # writes that did not finish in time
                for fid, idx, _size in tx.reserved_by(self._owner.token):
                    blockfile.remove(self._layout.path(fid, idx))
                    tx.delete_block(fid, idx)
                tx.unregister(self._owner.token)
        except (sqlite3.Error, OSError) as exc:
            log.debug("disk cache %s: closing without saving (%s)", self.directory, exc)
        for index in self._retired:
            index.close()
        self._index.close()
        self._owner.release()
        self._dirlock.release()

    def __enter__(self) -> "DiskStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r}, max_bytes={self._max})"
