"""A persistent, checksummed, byte-bounded block store on local disk.

Layout of ``directory``::

    lock                 flock()ed by the owning process; holds its PID
    index.sqlite         files (url, fid, fingerprint, pinned) and blocks
                         (fid, idx, size, state, atime); WAL mode
    blocks/<xx>/<fid>-<idx>.blk
                         one block: a 32-byte header (magic, fid, index,
                         length, crc32) followed by the payload

Why this design rather than ``diskcache``
-----------------------------------------
The requirement is a bound that holds *at every moment*, including while
many threads write at once. ``diskcache`` culls after a write, so the
directory can overshoot its limit by the blocks in flight. Here every write
first *reserves* its bytes under one lock: least recently used blocks are
deleted (file unlinked, row removed) until ``used + new <= max_bytes``, and
the reservation is recorded as a ``pending`` row before a single byte is
written. So the sum of block files on disk never exceeds the bound, even if
the process is killed between the reservation and the write.

Crash safety: a block is written to ``<name>.tmp`` and renamed into place,
then its row turns from ``pending`` to ``ready``. On start, every pending
row's files (final and temporary) are deleted, and the ``blocks/`` tree is
scanned once so that rows without a file and files without a row (a kill
between an unlink and its row delete) are removed too. Every read verifies the
header and the crc32 of the payload; a block failing verification is
deleted and reported missing, never served. No fsync is needed: a torn file
after a power cut fails the checksum.

Versions: each URL maps to a file id (``fid``) together with the
fingerprint key of the version whose blocks are stored. A caller presenting
a different fingerprint gets a *new* fid and every block of the old one is
deleted, so blocks of two versions are never mixed (and, because the fid
is in the file name and the header, an old block cannot be mistaken for a
new one).

Sharing: one process owns a directory. A second ``DiskStore`` on the same
directory (another process, or another instance in this process) raises
:class:`CacheLocked` naming the owner's PID, instead of silently
corrupting the accounting.

Lock order: ``DiskStore._lock`` is a leaf lock (nothing else is acquired
while holding it). Payload reads and writes happen outside it; only
unlinks of evicted blocks happen inside, which is what keeps the bound
strict.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import logging
import os
import shutil
import sqlite3
import struct
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Union

from empiarfs import ranges
from empiarfs.errors import EmpiarfsError
from empiarfs.model import Fingerprint

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<4sBxxxqqII")  # magic, version, fid, idx, length, crc32
_MAGIC = b"EFSB"
_VERSION = 1
_PENDING, _READY = 0, 1
# How long writes stay off after an I/O error (disk full, directory gone).
WRITE_BACKOFF = 60.0
# Recency updates are kept in memory and written in batches of this size.
_TOUCH_BATCH = 512
# A lookup waits at most this long for the store (held by a write or an
# index commit on a stalled disk); then it is a miss and the block comes
# from the network: a read must not wait on the disk past its deadline.
LOOKUP_WAIT = 0.5
# Rows of newly written blocks are saved in batches of this size, or when
# the oldest unsaved row is this old (a kill loses at most that much).
_ROW_BATCH = 64
_ROW_MAX_AGE = 0.1

FingerprintLike = Union[Fingerprint, str]


class CacheLocked(EmpiarfsError, BlockingIOError):
    """Another process (or another DiskStore) owns the cache directory."""

    errno = _errno.EBUSY


@dataclass
class _File:
    fid: int
    fpkey: Optional[str]
    size: Optional[int]
    pinned: bool


def _fpkey(fingerprint: FingerprintLike) -> str:
    return fingerprint if isinstance(fingerprint, str) else fingerprint.key()


def _fpsize(fpkey: Optional[str]) -> Optional[int]:
    if not fpkey:
        return None
    head = fpkey.split(":", 1)[0]
    return int(head) if head.isdigit() else None


class DiskStore:
    """Persistent block store bounded by ``max_bytes``.

    Parameters
    ----------
    directory : str
        Cache directory; created if missing.
    max_bytes : int
        Hard bound on the bytes of block files (header included). The
        sqlite index (a few MB) is not counted.
    block_size : int
        Block granule; blocks stored with another granule are discarded on
        open.

    Raises
    ------
    CacheLocked
        If another process or instance holds the directory.
    OSError
        If the directory cannot be created or opened.
    """

    def __init__(self, directory: str, max_bytes: int, block_size: int = 256 * 1024):
        self.directory = os.path.abspath(directory)
        self._max = int(max_bytes)
        self.block_size = int(block_size)
        self._lock = threading.RLock()
        self.busy_misses = 0   # lookups that gave up waiting for the store
        self._lock_fd: Optional[int] = None
        self._db: Optional[sqlite3.Connection] = None
        self._writes_off_until = 0.0
        self._closed = False
        self._open()

    # ------------------------------------------------------------------ setup
    @property
    def _db_path(self) -> str:
        return os.path.join(self.directory, "index.sqlite")

    def _reset_memory(self) -> None:
        self._files: dict[str, _File] = {}
        self._fid_url: dict[int, str] = {}
        self._lru: OrderedDict = OrderedDict()   # (fid, idx) -> size, unpinned, ready
        self._held: dict = {}                    # (fid, idx) -> size, pinned files, ready
        self._by_fid: dict[int, set] = {}        # fid -> ready indices
        self._pending: dict = {}                 # (fid, idx) -> size, being written
        self._orphans: set = set()               # pending keys whose file was dropped
        self._in_use: dict = {}                  # (fid, idx) -> readers
        self._touched: dict = {}                 # (fid, idx) -> atime not yet saved
        self._new_rows: list = []                # rows of written blocks not yet saved
        self._rows_saved_at = time.monotonic()
        self._used = 0

    def _open(self) -> None:
        self._reset_memory()
        os.makedirs(os.path.join(self.directory, "blocks"), exist_ok=True)
        self._take_lock()
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            log.warning("cache index %s is unreadable (%s); starting an empty cache",
                        self._db_path, exc)
            self._wipe_files()
            self._connect()
        self._recover()

    def _take_lock(self) -> None:
        path = os.path.join(self.directory, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                owner = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise CacheLocked(
                f"cache directory {self.directory} is in use by process {owner}; "
                "stop that empiarfs process (or unmount) first, or use another --cache-dir"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _connect(self) -> None:
        db = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS files (
                    url TEXT PRIMARY KEY, fid INTEGER UNIQUE NOT NULL,
                    fpkey TEXT, pinned INTEGER NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS blocks (
                    fid INTEGER NOT NULL, idx INTEGER NOT NULL, size INTEGER NOT NULL,
                    state INTEGER NOT NULL, atime REAL NOT NULL,
                    PRIMARY KEY (fid, idx));
                """
            )
        except sqlite3.DatabaseError:
            db.close()
            raise
        self._db = db
        self._db_ino = os.stat(self._db_path).st_ino

    def _wipe_files(self) -> None:
        for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
        shutil.rmtree(os.path.join(self.directory, "blocks"), ignore_errors=True)
        os.makedirs(os.path.join(self.directory, "blocks"), exist_ok=True)

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _recover(self) -> None:
        """Load the index; delete what a crash left half-written."""
        db = self._db
        stored_bs = self._meta("block_size")
        if stored_bs is not None and int(stored_bs) != self.block_size:
            log.info("cache %s used block size %s, now %s: discarding its blocks",
                     self.directory, stored_bs, self.block_size)
            for fid, idx in db.execute("SELECT fid, idx FROM blocks").fetchall():
                self._unlink_block(fid, idx)
            db.execute("DELETE FROM blocks")
        self._set_meta("block_size", self.block_size)
        self._set_meta("version", _VERSION)
        self._next_fid = int(self._meta("next_fid") or "1")
        for fid, idx in db.execute(
                "SELECT fid, idx FROM blocks WHERE state=?", (_PENDING,)).fetchall():
            self._unlink_block(fid, idx)
        db.execute("DELETE FROM blocks WHERE state=?", (_PENDING,))
        for url, fid, fpkey, pinned in db.execute("SELECT url, fid, fpkey, pinned FROM files"):
            self._files[url] = _File(fid, fpkey, _fpsize(fpkey), bool(pinned))
            self._fid_url[fid] = url
        on_disk = self._scan_block_files()
        orphan_rows = []
        for fid, idx, size in db.execute(
                "SELECT fid, idx, size FROM blocks ORDER BY atime").fetchall():
            url = self._fid_url.get(fid)
            path = self._path(fid, idx)
            if url is None or path not in on_disk:
                # A kill between unlinking a block and deleting its row.
                orphan_rows.append((fid, idx))
                continue
            on_disk.discard(path)
            target = self._held if self._files[url].pinned else self._lru
            target[(fid, idx)] = size
            self._by_fid.setdefault(fid, set()).add(idx)
            self._used += size
        for fid, idx in orphan_rows:
            self._unlink_block(fid, idx)
            db.execute("DELETE FROM blocks WHERE fid=? AND idx=?", (fid, idx))
        # Files without a row (temporary files, blocks of dropped rows) are
        # not accounted: delete them so the directory matches the index.
        for path in on_disk:
            try:
                os.unlink(path)
            except OSError:  # pragma: no cover
                pass
        # The bound may have been lowered since the last run.
        if self._used > self._max:
            self._evict_for(0)

    def _scan_block_files(self) -> set:
        """Every file under ``blocks/`` (one scandir per shard directory)."""
        found = set()
        root = os.path.join(self.directory, "blocks")
        with os.scandir(root) as shards:
            for shard in shards:
                if shard.is_dir(follow_symlinks=False):
                    with os.scandir(shard.path) as entries:
                        found.update(entry.path for entry in entries)
        return found

    # --------------------------------------------------------------- helpers
    def _path(self, fid: int, idx: int) -> str:
        return os.path.join(self.directory, "blocks", f"{fid % 256:02x}", f"{fid}-{idx}.blk")

    def _unlink_block(self, fid: int, idx: int) -> None:
        path = self._path(fid, idx)
        for name in (path, path + ".tmp"):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # pragma: no cover - e.g. directory removed
                log.debug("cannot delete %s: %s", name, exc)

    def _sql(self, statement: str, params=()) -> None:
        """Execute, tolerating a failing index (disk full, directory gone):
        the in-memory accounting stays authoritative for this process."""
        try:
            self._db.execute(statement, params)
        except sqlite3.Error as exc:
            self._writes_failed(exc)

    @contextlib.contextmanager
    def _batch(self):
        """One sqlite transaction for many statements (lock held): dropping
        a large file must not cost one commit per block."""
        if self._db.in_transaction:
            yield
            return
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            self._writes_failed(exc)
            yield
            return
        try:
            yield
        finally:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._writes_failed(exc)

    def _writes_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now >= self._writes_off_until:
            log.warning(
                "disk cache %s: write failed (%s); caching to disk is off for %.0f s, "
                "reads continue from the network", self.directory, exc, WRITE_BACKOFF)
        self._writes_off_until = now + WRITE_BACKOFF

    def _new_fid(self) -> int:
        # Never reuse a fid: an old block file can then never pass for a
        # block of a newer version (the fid is in its name and header).
        current = self._next_fid
        self._next_fid += 1
        self._sql("INSERT OR REPLACE INTO meta VALUES ('next_fid', ?)", (str(self._next_fid),))
        return current

    def _file_for(self, url: str, fingerprint: FingerprintLike) -> _File:
        """The file record for ``url`` at this version (lock held)."""
        key = _fpkey(fingerprint)
        record = self._files.get(url)
        if record is not None and record.fpkey == key:
            return record
        if record is not None and record.fpkey is None:
            record.fpkey, record.size = key, _fpsize(key)
            self._sql("UPDATE files SET fpkey=? WHERE url=?", (key, url))
            return record
        pinned = False
        if record is not None:
            log.info("%s changed (%s -> %s): dropping its cached blocks", url, record.fpkey, key)
            pinned = record.pinned
            self._drop_blocks(record.fid)
            self._fid_url.pop(record.fid, None)
        fid = self._new_fid()
        record = _File(fid, key, _fpsize(key), pinned)
        self._files[url] = record
        self._fid_url[fid] = url
        self._sql("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (url, fid, key, int(pinned)))
        return record

    def _remove_block(self, key) -> None:
        """Delete one ready block (lock held)."""
        size = self._lru.pop(key, None)
        if size is None:
            size = self._held.pop(key, None)
        if size is None:
            return
        fid, idx = key
        self._unlink_block(fid, idx)
        self._used -= size
        indices = self._by_fid.get(fid)
        if indices is not None:
            indices.discard(idx)
            if not indices:
                del self._by_fid[fid]
        self._touched.pop(key, None)
        self._sql("DELETE FROM blocks WHERE fid=? AND idx=?", (fid, idx))

    def _drop_blocks(self, fid: int) -> int:
        """Delete every block of one fid; pending ones become orphans that
        their writer deletes (they stay counted until then)."""
        indices = list(self._by_fid.get(fid, ()))
        with self._batch():
            for idx in indices:
                self._remove_block((fid, idx))
        for key in self._pending:
            if key[0] == fid:
                self._orphans.add(key)
        return len(indices)

    def _evict_for(self, size: int) -> bool:
        """Free space so ``used + size <= max`` (lock held). Pinned files,
        blocks being read and blocks being written are never evicted."""
        if self._used + size <= self._max:
            return True
        skipped = []
        while self._used + size > self._max and self._lru:
            key, _ = next(iter(self._lru.items()))
            if self._in_use.get(key):
                self._lru.move_to_end(key)
                skipped.append(key)
                if len(skipped) > len(self._lru):
                    break
                continue
            self._remove_block(key)
        return self._used + size <= self._max

    def _reopen_if_replaced(self) -> None:
        """Recreate the cache if its directory was removed under us."""
        try:
            if os.stat(self._db_path).st_ino == self._db_ino:
                return
        except OSError:
            pass
        log.warning("cache directory %s vanished or was replaced; starting an empty cache",
                    self.directory)
        self._release()
        pending, orphans = self._pending, self._orphans
        self._open()
        # Writers in progress still own their reservations.
        self._pending = pending
        self._orphans = orphans | set(pending)
        self._used += sum(pending.values())

    # ------------------------------------------------------------------- API
    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._used

    def open(self, url: str, fingerprint: FingerprintLike) -> None:
        """Declare the version of ``url`` about to be read: if it differs
        from the stored one, the old blocks are deleted."""
        with self._lock:
            self._check_open()
            self._file_for(url, fingerprint)

    def get(self, url: str, fingerprint: FingerprintLike, index: int) -> Optional[bytes]:
        """The verified payload of one block, or ``None`` if absent or
        corrupt (a corrupt block is deleted), or when the store stays busy
        for LOOKUP_WAIT seconds."""
        if not self._lock.acquire(timeout=LOOKUP_WAIT):
            self.busy_misses += 1
            log.debug("disk cache busy for %.1f s; reading block %d of %s from the network",
                     LOOKUP_WAIT, index, url)
            return None
        try:
            if self._closed:
                return None
            record = self._file_for(url, fingerprint)
            key = (record.fid, index)
            if key in self._lru:
                self._lru.move_to_end(key)
            elif key not in self._held:
                return None
            self._in_use[key] = self._in_use.get(key, 0) + 1
            self._touched[key] = time.time()
            if len(self._touched) >= _TOUCH_BATCH:
                self._flush_touches()
            expected = self._expected_length(record, index)
        finally:
            self._lock.release()
        data = None
        try:
            data = self._read_verified(record.fid, index, expected)
        finally:
            with self._lock:
                count = self._in_use.pop(key, 1) - 1
                if count:
                    self._in_use[key] = count
                if data is None and self._fid_url.get(record.fid) == url:
                    self._remove_block(key)
        return data

    def _expected_length(self, record: _File, index: int) -> Optional[int]:
        if record.size is None:
            return None
        start = index * self.block_size
        return min(self.block_size, record.size - start) if start < record.size else -1

    def _read_verified(self, fid: int, idx: int, expected: Optional[int]) -> Optional[bytes]:
        path = self._path(fid, idx)
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except OSError as exc:
            log.warning("cached block %s unreadable (%s); refetching", path, exc)
            return None
        if len(blob) >= _HEADER.size:
            magic, version, h_fid, h_idx, length, crc = _HEADER.unpack_from(blob)
            payload = blob[_HEADER.size:]
            if (magic == _MAGIC and version == _VERSION and h_fid == fid and h_idx == idx
                    and length == len(payload)
                    and (expected is None or expected == length)
                    and zlib.crc32(payload) == crc):
                return payload
        log.warning("cached block %s failed verification; deleted, will refetch", path)
        return None

    def put(self, url: str, fingerprint: FingerprintLike, index: int, data: bytes) -> bool:
        """Store one whole block.

        Returns
        -------
        bool
            True if stored (or already present); False if the cache refused
            (full of pinned blocks, writes off after an error, closed).

        Raises
        ------
        ValueError
            If ``data`` is not exactly the block (``block_size`` bytes, or
            the tail of the file).
        """
        if self._closed or time.monotonic() < self._writes_off_until:
            return False
        size = _HEADER.size + len(data)
        with self._lock:
            if self._closed:
                return False
            try:
                self._reopen_if_replaced()
            except (OSError, sqlite3.Error) as exc:
                self._writes_failed(exc)
                return False
            record = self._file_for(url, fingerprint)
            expected = self._expected_length(record, index)
            if expected is not None and expected != len(data):
                raise ValueError(
                    f"block {index} of {url} must be {expected} bytes, got {len(data)}")
            key = (record.fid, index)
            if key in self._lru or key in self._held or key in self._pending:
                return True
            if not self._evict_for(size):
                return False
            # Reserved in memory only: the bound holds because every writer
            # reserves here first. A kill before the row is saved leaves a
            # block file without a row, which recovery deletes.
            self._pending[key] = size
            self._used += size
        path = self._path(*key)
        header = _HEADER.pack(_MAGIC, _VERSION, key[0], index, len(data), zlib.crc32(data))
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "wb") as handle:
                handle.write(header)
                handle.write(data)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            with self._lock:
                self._unlink_block(*key)
                self._pending.pop(key, None)
                self._orphans.discard(key)
                self._used -= size
                self._writes_failed(exc)
            return False
        with self._lock:
            self._pending.pop(key, None)
            if key in self._orphans or self._closed:
                self._orphans.discard(key)
                self._unlink_block(*key)
                self._used -= size
                return False
            pinned = self._files[self._fid_url[key[0]]].pinned
            (self._held if pinned else self._lru)[key] = size
            self._by_fid.setdefault(key[0], set()).add(index)
            # Rows are saved in batches: one transaction per block halved
            # cold sequential throughput on loopback.
            self._new_rows.append((key[0], index, size, _READY, time.time()))
            if (len(self._new_rows) >= _ROW_BATCH
                    or time.monotonic() - self._rows_saved_at >= _ROW_MAX_AGE):
                self._flush_rows()
        return True

    def has(self, url: str, fingerprint: FingerprintLike, index: int) -> bool:
        """Whether the block is indexed (without reading or verifying it)."""
        with self._lock:
            record = self._files.get(url)
            if record is None or record.fpkey != _fpkey(fingerprint):
                return False
            key = (record.fid, index)
            return key in self._lru or key in self._held

    def fingerprint_key(self, url: str) -> Optional[str]:
        """Fingerprint key of the stored version of ``url`` (None if unknown)."""
        with self._lock:
            record = self._files.get(url)
            return record.fpkey if record is not None else None

    def cached_ranges(self, url: str) -> list[tuple[int, int]]:
        """Byte ranges of ``url`` (its stored version) present on disk."""
        with self._lock:
            record = self._files.get(url)
            if record is None or record.size is None:
                return []
            indices = list(self._by_fid.get(record.fid, ()))
            return ranges.of_blocks(indices, self.block_size, record.size)

    def drop_file(self, url: str) -> int:
        """Delete every block of ``url``; returns how many were deleted.
        A pin on the URL survives."""
        with self._lock:
            record = self._files.get(url)
            if record is None:
                return 0
            count = self._drop_blocks(record.fid)
            if not record.pinned:
                del self._files[url]
                self._fid_url.pop(record.fid, None)
                self._sql("DELETE FROM files WHERE url=?", (url,))
            return count

    def pin(self, url: str) -> None:
        """Never evict blocks of ``url`` (persistent across restarts)."""
        self._set_pinned(url, True)

    def unpin(self, url: str) -> None:
        """Make blocks of ``url`` evictable again."""
        self._set_pinned(url, False)

    def _set_pinned(self, url: str, pinned: bool) -> None:
        with self._lock:
            self._check_open()
            record = self._files.get(url)
            if record is None:
                if not pinned:
                    return
                fid = self._new_fid()
                record = _File(fid, None, None, True)
                self._files[url] = record
                self._fid_url[fid] = url
                self._sql("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (url, fid, None, 1))
                return
            if record.pinned == pinned:
                return
            record.pinned = pinned
            source, target = (self._lru, self._held) if pinned else (self._held, self._lru)
            for idx in self._by_fid.get(record.fid, ()):
                key = (record.fid, idx)
                if key in source:
                    target[key] = source.pop(key)
            self._sql("UPDATE files SET pinned=? WHERE url=?", (int(pinned), url))
            if not pinned:
                self._evict_for(0)

    def pinned(self) -> list[str]:
        """URLs currently pinned."""
        with self._lock:
            return sorted(url for url, rec in self._files.items() if rec.pinned)

    def files(self) -> list[dict]:
        """One record per file with blocks or a pin, by URL: ``url``,
        ``size`` (None if unknown), ``cached`` (bytes present) and ``pinned``."""
        with self._lock:
            out = []
            for url, rec in self._files.items():
                present = self._by_fid.get(rec.fid, ())
                if not present and not rec.pinned:
                    continue
                spans = ranges.of_blocks(present, self.block_size, rec.size) \
                    if rec.size is not None else []
                out.append({"url": url, "size": rec.size, "cached": ranges.total(spans),
                            "pinned": rec.pinned})
            return sorted(out, key=lambda f: f["url"])

    def info(self) -> dict:
        """Usage summary: ``bytes_used``, ``max_bytes``, ``files`` (with at
        least one block), ``blocks``, ``pinned_files``, ``pinned_bytes``,
        ``directory``, ``writes_enabled``, ``busy_misses`` (lookups that
        gave up waiting for a busy store)."""
        with self._lock:
            return {
                "busy_misses": self.busy_misses,
                "directory": self.directory,
                "bytes_used": self._used,
                "max_bytes": self._max,
                "files": sum(1 for v in self._by_fid.values() if v),
                "blocks": len(self._lru) + len(self._held),
                "pinned_files": sum(1 for r in self._files.values() if r.pinned),
                "pinned_bytes": sum(self._held.values()),
                "writes_enabled": time.monotonic() >= self._writes_off_until,
            }

    def clear(self) -> None:
        """Delete every block (pins are kept; blocks being read or written
        are finished by their readers/writers and then deleted)."""
        with self._lock:
            for fid in list(self._by_fid):
                self._drop_blocks(fid)
            for url in [u for u, r in self._files.items() if not r.pinned]:
                self._fid_url.pop(self._files.pop(url).fid, None)
            self._sql("DELETE FROM files WHERE pinned=0")
            self._orphans.update(self._pending)

    def _flush_rows(self) -> None:
        """Save the rows of newly written blocks (lock held). If that fails
        the blocks stay usable in this process, and a later run's recovery
        deletes their files because they have no rows."""
        rows, self._new_rows = self._new_rows, []
        self._rows_saved_at = time.monotonic()
        self._save_batch("INSERT OR REPLACE INTO blocks VALUES (?, ?, ?, ?, ?)", rows, "block rows")

    def _flush_touches(self) -> None:
        rows = [(atime, fid, idx) for (fid, idx), atime in self._touched.items()]
        self._touched.clear()
        self._save_batch("UPDATE blocks SET atime=? WHERE fid=? AND idx=?", rows, "block recency")

    def _save_batch(self, statement: str, rows: list, what: str) -> None:
        """Run ``statement`` for every row in one transaction (lock held)."""
        if not rows:
            return
        try:
            with self._batch():
                self._db.executemany(statement, rows)
        except sqlite3.Error as exc:
            log.debug("cannot save %s: %s", what, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"disk cache {self.directory} is closed")

    def close(self) -> None:
        """Save recency, close the index and release the directory lock."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._flush_rows()
            self._flush_touches()
            self._release()

    def _release(self) -> None:
        """Close the index and give up the directory lock (lock held)."""
        try:
            self._db.close()
        except sqlite3.Error:  # pragma: no cover
            pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "DiskStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r}, max_bytes={self._max})"

