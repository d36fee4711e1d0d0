"""The shared index of a cache directory: one SQLite database in WAL mode.

Every process using the directory opens it; SQLite's own file locks make
each write transaction atomic across processes, ``BEGIN IMMEDIATE`` takes
the write lock up front (so a transaction never fails half-way on a lock),
and in WAL mode readers never wait for writers. A process killed inside a
transaction leaves nothing: SQLite rolls it back.

Tables::

    meta(key, value)        schema, block_size, next_fid
    files(url, fid, key, size, etag, modified, structured, pinned)
                            the version of each URL whose blocks are kept
    blocks(fid, idx, size, atime, owner)
                            one row per block file; ``owner`` is the token
                            of the process writing it (a reservation), NULL
                            once written
    garbage(fid)            fids no URL names any more; their blocks are
                            deleted a batch at a time
    usage(bytes)            the sum of ``blocks.size``: kept in the same
                            transactions as the rows, so it is exact
    owners(token, max_bytes)
                            the processes using the directory and the bound
                            each was opened with (``eviction.py``)

Rules every writer keeps (they are what makes the size bound hold across
processes): a block's row (a reservation) is committed before its file is
created, and a row is deleted only after its file is unlinked, inside the
same transaction. So the files on disk are always a subset of the rows,
and ``usage`` (the rows' sizes) bounds the bytes on disk.

Fids start at a random number for each new index and are never reused: a
block file of an earlier index (a directory removed and made again while a
writer was busy) can never pass for a block of a new one.

Lock order: ``Index._write_lock`` -> SQLite's write lock (across
processes) -> leaf locks of the caller (recency, pending marks).
``Index._read_lock`` is a leaf (it guards the pool of reading
connections, which need no SQLite lock in WAL mode). The two are never
nested.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import threading
import time
from typing import Iterator, Optional

from empiarfs.cache.disk.versions import Stored

SCHEMA = "2"
DB_NAME = "index.sqlite"
# A write transaction waits this long for another process's; then the
# put is skipped (the block stays in memory and comes again from the
# network if needed).
WRITE_WAIT = 5.0
# Readers never wait for writers in WAL mode; only SQLite's own recovery
# after a crash or a checkpoint can hold them, briefly. A lookup that
# waits longer is a miss (the block comes from the network).
READ_WAIT = 1.0
# Reading connections per process. One made every cold miss of a header
# scan (16 threads, 260 new files) queue for it: a third of the mount's
# FUSE threads' busy time was spent waiting there.
READERS = 4

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    url TEXT PRIMARY KEY, fid INTEGER UNIQUE NOT NULL, key TEXT, size INTEGER,
    etag TEXT, modified TEXT, structured INTEGER NOT NULL DEFAULT 0,
    pinned INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS blocks (
    fid INTEGER NOT NULL, idx INTEGER NOT NULL, size INTEGER NOT NULL,
    atime REAL NOT NULL, owner TEXT, PRIMARY KEY (fid, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_lru ON blocks (atime) WHERE owner IS NULL;
CREATE INDEX IF NOT EXISTS blocks_owner ON blocks (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS garbage (fid INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS owners (token TEXT PRIMARY KEY, max_bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO usage VALUES (0, 0);
"""
_OLD_TABLES = ("files", "blocks", "garbage", "usage", "owners", "meta")


class Tx:
    """Statements of one transaction (the caller holds the right lock)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    # -- meta ----------------------------------------------------------------
    def meta(self, key: str) -> Optional[str]:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def new_fid(self) -> int:
        fid = int(self.meta("next_fid") or 1)
        self.set_meta("next_fid", fid + 1)
        return fid

    # -- owners --------------------------------------------------------------
    def register(self, token: str, max_bytes: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (token, max_bytes))

    def unregister(self, token: str) -> None:
        self.db.execute("DELETE FROM owners WHERE token=?", (token,))

    def registered(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT token FROM owners")]

    def bound(self, default: int) -> int:
        """The bound in force: the largest of the registered processes'."""
        row = self.db.execute("SELECT MAX(max_bytes) FROM owners").fetchone()
        return row[0] if row and row[0] is not None else default

    # -- usage ---------------------------------------------------------------
    def used(self) -> int:
        return self.db.execute("SELECT bytes FROM usage WHERE id=0").fetchone()[0]

    def _add_used(self, delta: int) -> None:
        self.db.execute("UPDATE usage SET bytes = bytes + ? WHERE id=0", (delta,))

    # -- files ---------------------------------------------------------------
    def file(self, url: str) -> Optional[Stored]:
        row = self.db.execute(
            "SELECT url, fid, key, size, etag, modified, structured, pinned FROM files "
            "WHERE url=?", (url,)).fetchone()
        return _stored(row) if row else None

    def files(self, pinned_only: bool = False) -> list[Stored]:
        where = " WHERE pinned=1" if pinned_only else ""
        rows = self.db.execute("SELECT url, fid, key, size, etag, modified, structured, pinned "
                               "FROM files" + where + " ORDER BY url").fetchall()
        return [_stored(r) for r in rows]

    def save_file(self, stored: Stored) -> None:
        self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (stored.url, stored.fid, stored.key, stored.size, stored.etag,
                         stored.modified, int(stored.structured), int(stored.pinned)))

    def delete_file(self, url: str) -> None:
        self.db.execute("DELETE FROM files WHERE url=?", (url,))

    def is_current(self, fid: int) -> bool:
        return self.db.execute("SELECT 1 FROM files WHERE fid=?", (fid,)).fetchone() is not None

    def retire(self, fid: int) -> None:
        """No URL names ``fid`` any more: its blocks become garbage."""
        self.db.execute("INSERT OR IGNORE INTO garbage VALUES (?)", (fid,))

    def retire_all_unpinned(self) -> None:
        self.db.execute("INSERT OR IGNORE INTO garbage SELECT fid FROM files WHERE pinned=0")
        self.db.execute("DELETE FROM files WHERE pinned=0")

    def garbage(self, limit: int) -> list[int]:
        return [r[0] for r in self.db.execute("SELECT fid FROM garbage LIMIT ?", (limit,))]

    def forget_garbage(self, fid: int) -> None:
        self.db.execute("DELETE FROM garbage WHERE fid=?", (fid,))

    # -- blocks --------------------------------------------------------------
    def block(self, fid: int, idx: int) -> Optional[tuple[int, Optional[str]]]:
        """``(size, owner)`` of a block row (owner None: written)."""
        return self.db.execute("SELECT size, owner FROM blocks WHERE fid=? AND idx=?",
                               (fid, idx)).fetchone()

    def reserve(self, fid: int, idx: int, size: int, owner: str, atime: float) -> None:
        self.db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?)", (fid, idx, size, atime, owner))
        self._add_used(size)

    def mark_written(self, fid: int, idx: int, owner: str) -> bool:
        """The reservation is now a block; False if the row is gone."""
        cur = self.db.execute("UPDATE blocks SET owner=NULL WHERE fid=? AND idx=? AND owner=?",
                              (fid, idx, owner))
        return cur.rowcount == 1

    def delete_block(self, fid: int, idx: int) -> int:
        """Delete one row (its file must be unlinked already); its size."""
        row = self.block(fid, idx)  # (no DELETE ... RETURNING: SQLite 3.35+ only)
        if row is None:
            return 0
        self.db.execute("DELETE FROM blocks WHERE fid=? AND idx=?", (fid, idx))
        self._add_used(-row[0])
        return row[0]

    def written(self, fid: int, limit: int = -1) -> list[tuple[int, int]]:
        """``(idx, size)`` of the written blocks of ``fid``."""
        return self.db.execute("SELECT idx, size FROM blocks WHERE fid=? AND owner IS NULL "
                               "LIMIT ?", (fid, limit)).fetchall()

    def has_rows(self, fid: int) -> bool:
        return self.db.execute("SELECT 1 FROM blocks WHERE fid=? LIMIT 1",
                               (fid,)).fetchone() is not None

    def reserved_by(self, owner: str) -> list[tuple[int, int, int]]:
        """``(fid, idx, size)`` of the reservations of ``owner``."""
        return self.db.execute("SELECT fid, idx, size FROM blocks WHERE owner=?",
                               (owner,)).fetchall()

    def owners(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT owner FROM blocks WHERE owner IS NOT NULL")]

    def least_recent(self, limit: int) -> list[tuple[int, int, int]]:
        """``(fid, idx, size)`` of written blocks of unpinned files (and of
        garbage), least recently used first."""
        return self.db.execute(
            "SELECT b.fid, b.idx, b.size FROM blocks b INDEXED BY blocks_lru "
            "WHERE b.owner IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM files f WHERE f.fid = b.fid AND f.pinned = 1) "
            "ORDER BY b.atime LIMIT ?", (limit,)).fetchall()

    def touch(self, rows: list[tuple[float, int, int]]) -> None:
        self.db.executemany("UPDATE blocks SET atime=? WHERE fid=? AND idx=?", rows)

    def all_written(self) -> list[tuple[int, int]]:
        return self.db.execute("SELECT fid, idx FROM blocks WHERE owner IS NULL").fetchall()

    def recount(self) -> None:
        """Set ``usage`` from the rows (after a recovery deleted many)."""
        self.db.execute("UPDATE usage SET bytes = (SELECT COALESCE(SUM(size), 0) FROM blocks)")

    def retire_everything(self) -> None:
        """Every block becomes garbage, every URL gets a new fid (block size change)."""
        self.db.execute("INSERT OR IGNORE INTO garbage SELECT DISTINCT fid FROM blocks")
        for url, in self.db.execute("SELECT url FROM files").fetchall():
            self.db.execute("UPDATE files SET fid=? WHERE url=?", (self.new_fid(), url))

    # -- summaries -----------------------------------------------------------
    def file_usage(self) -> list[tuple[str, Optional[int], bool, int, int]]:
        """``(url, size, pinned, blocks, bytes)`` per file row, by URL."""
        return [(url, size, bool(pinned), count, total) for url, size, pinned, count, total in
                self.db.execute(
                    "SELECT f.url, f.size, f.pinned, COUNT(b.idx), COALESCE(SUM(b.size), 0) "
                    "FROM files f LEFT JOIN blocks b ON b.fid = f.fid AND b.owner IS NULL "
                    "GROUP BY f.url ORDER BY f.url")]

    def summary(self) -> dict:
        db = self.db
        live = "fid IN (SELECT fid FROM files)"
        return {
            "bytes_used": self.used(),
            "files": db.execute(f"SELECT COUNT(DISTINCT fid) FROM blocks WHERE {live} "
                                "AND owner IS NULL").fetchone()[0],
            "blocks": db.execute(f"SELECT COUNT(*) FROM blocks WHERE {live} "
                                 "AND owner IS NULL").fetchone()[0],
            "pinned_files": db.execute("SELECT COUNT(*) FROM files WHERE pinned=1").fetchone()[0],
            "pinned_bytes": db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM blocks WHERE fid IN "
                "(SELECT fid FROM files WHERE pinned=1)").fetchone()[0],
            "reserved_bytes": db.execute("SELECT COALESCE(SUM(size), 0) FROM blocks "
                                         "WHERE owner IS NOT NULL").fetchone()[0],
        }


def _stored(row) -> Stored:
    url, fid, key, size, etag, modified, structured, pinned = row
    return Stored(url, fid, key, size, etag, modified, bool(structured), bool(pinned))


class Index:
    """The index of ``directory``: a writing and a reading connection.

    Raises
    ------
    sqlite3.DatabaseError
        If the database file is not a readable SQLite database.
    OSError
        If it cannot be created.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, DB_NAME)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Condition(threading.Lock())
        self._writer = self._connect(WRITE_WAIT, wal=True)
        self._idle_readers: list[sqlite3.Connection] = []
        self._opening = 0   # reading connections being opened
        self._readers: list[sqlite3.Connection] = []
        try:
            self.upgraded = self._prepare()
            self._readers.append(self._connect(READ_WAIT))
            self._idle_readers.append(self._readers[0])
            self.inode = os.stat(self.path).st_ino
        except BaseException:
            self.close()
            raise

    def _connect(self, wait: float, wal: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=wait, check_same_thread=False,
                             isolation_level=None)
        try:
            if wal:
                _set_wal(db, wait)
            # WAL + NORMAL: a commit survives any process crash (kill -9);
            # only a power cut may lose the last ones, and block files are
            # checked by their own crc32 anyway.
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _prepare(self) -> bool:
        """Create or upgrade the schema; True if an older one was dropped."""
        with self.write() as tx:
            tables = {r[0] for r in tx.db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            old = "meta" in tables and tx.meta("schema") != SCHEMA
            if old:  # schema 1 (one owner, no reservations): start afresh
                for name in _OLD_TABLES:
                    tx.db.execute(f"DROP TABLE IF EXISTS {name}")
            for statement in _TABLES.split(";"):
                if statement.strip():
                    tx.db.execute(statement)
            if tx.meta("schema") is None:
                tx.set_meta("schema", SCHEMA)
                # Fids of a new index start at a random point (see module doc).
                tx.set_meta("next_fid", secrets.randbelow(1 << 52) + 1)
        return old

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT).

        Raises
        ------
        sqlite3.OperationalError
            If another process holds the write lock for WRITE_WAIT seconds,
            or the disk is full.
        """
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(db)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self, wait: Optional[float] = None) -> Iterator[Optional[Tx]]:
        """A consistent snapshot; ``None`` if another thread of this process
        kept the reading connection for ``wait`` seconds."""
        db = self._take_reader(wait)
        if db is None:
            yield None
            return
        try:
            db.execute("BEGIN")
            try:
                yield Tx(db)
            finally:
                db.execute("COMMIT")
        finally:
            with self._read_lock:
                self._idle_readers.append(db)
                self._read_lock.notify()

    def _take_reader(self, wait: Optional[float]) -> Optional[sqlite3.Connection]:
        """An idle reading connection (a new one while fewer than READERS
        exist), or ``None`` after ``wait`` seconds."""
        deadline = None if wait is None else time.monotonic() + wait
        with self._read_lock:
            while not self._idle_readers:
                if self._opening + len(self._readers) < READERS:
                    self._opening += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._read_lock.wait(left)
            else:
                return self._idle_readers.pop()
        # Opened outside the lock: on a stalled disk only this caller waits.
        try:
            db = self._connect(READ_WAIT)
        finally:
            with self._read_lock:
                self._opening -= 1
        with self._read_lock:
            self._readers.append(db)
        return db

    def replaced(self) -> bool:
        """Was the database file removed or replaced since it was opened?"""
        try:
            return os.stat(self.path).st_ino != self.inode
        except OSError:
            return True

    def close(self) -> None:
        for db in (self._writer, *self._readers):
            if db is not None:
                try:
                    db.close()
                except sqlite3.Error:
                    pass


def _set_wal(db: sqlite3.Connection, wait: float) -> None:
    """WAL mode (kept in the file once set). Switching a new database can
    report "locked" at once, without SQLite's busy wait, while another
    process creates it too: retry until ``wait``."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
