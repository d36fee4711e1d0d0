"""Persistent metadata cache: listings and entry records that survive remounts.

Every value is stored with the time it was fetched. Fresh values (younger
than the TTL) are served without asking the archive; stale values are
refreshed, but still served when the archive cannot be reached, so a mount
keeps working offline with everything it has seen. Imports only errors.

One sqlite connection shared under a lock, not ``diskcache``: diskcache
opens a connection per thread, and libfuse keeps starting and ending worker
threads, so a daemon's open descriptors grew with the work done (measured
19 -> 81 -> 161 over two 10 s rounds of 64 readers).
"""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import threading
import time

import cachetools

from empiarfs.errors import NotFound, RemoteError

log = logging.getLogger(__name__)

# Metadata is small next to data blocks; this bound only keeps a runaway
# crawl (millions of directories) from filling the disk.
DEFAULT_LIMIT = 2 * 1024**3


class MetaStore:
    """Key -> (fetched_at, value) on disk, plus a bounded in-memory front.

    Lock order: ``_lock`` is a leaf; it guards the memory front and the
    sqlite connection.
    """

    def __init__(self, directory: str | None, size_limit: int = DEFAULT_LIMIT,
                 memory_items: int = 2048):
        self._lock = threading.Lock()
        # Bounded by count: listings are the big items, a few MB at most each.
        self._memory = cachetools.LRUCache(maxsize=memory_items)
        self._limit = size_limit
        self._total = 0
        self._db = None
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
                self._db = sqlite3.connect(os.path.join(directory, "metadata.sqlite"),
                                           check_same_thread=False, timeout=10,
                                           isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, "
                                 "fetched REAL NOT NULL, size INTEGER NOT NULL, value BLOB NOT NULL)")
                self._total = self._db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM meta").fetchone()[0]
            except (OSError, sqlite3.Error) as exc:
                log.warning("metadata cache on disk disabled (%s): %s", directory, exc)
                self._db = None

    def get(self, key: str):
        """``(fetched_at, value)`` or ``None``."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None or self._db is None:
                return hit
            try:
                row = self._db.execute("SELECT fetched, value FROM meta WHERE key = ?",
                                       (key,)).fetchone()
            except sqlite3.Error as exc:  # a damaged cache must not break lookups
                log.warning("metadata cache read failed for %s: %s", key, exc)
                return None
            if row is None:
                return None
            try:
                hit = (row[0], pickle.loads(row[1]))
            except Exception as exc:  # written by another version: refetch
                log.info("ignoring unreadable metadata for %s: %s", key, exc)
                return None
            self._memory[key] = hit
            return hit

    def put(self, key: str, value, fetched_at: float | None = None) -> None:
        item = (time.time() if fetched_at is None else fetched_at, value)
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._memory[key] = item
            if self._db is None:
                return
            try:
                old = self._db.execute("SELECT size FROM meta WHERE key = ?", (key,)).fetchone()
                self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?)",
                                 (key, item[0], len(blob), blob))
                self._total += len(blob) - (old[0] if old else 0)
                self._trim()
            except sqlite3.Error as exc:  # ENOSPC, removed directory: keep serving
                log.warning("metadata cache write failed for %s: %s", key, exc)

    def _trim(self) -> None:
        """Drop the oldest records while over the bound (lock held)."""
        while self._total > self._limit:
            row = self._db.execute("SELECT key, size FROM meta ORDER BY fetched LIMIT 1").fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM meta WHERE key = ?", (row[0],))
            self._memory.pop(row[0], None)
            self._total -= row[1]

    def forget(self, key: str) -> None:
        with self._lock:
            self._memory.pop(key, None)
            if self._db is not None:
                try:
                    self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
                except sqlite3.Error:  # pragma: no cover
                    pass

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()
            if self._db is not None:
                self._db.execute("DELETE FROM meta")
                self._total = 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class FreshOrStale:
    """Values of a :class:`MetaStore`, fetched once however many threads
    ask: a fresh stored value is served as is; a missing or stale one is
    fetched by one thread while the others wait for it; a stale one is
    still served when the archive cannot be reached.

    Lock order: ``_table_lock`` is held only to find a key's lock; a key's
    lock is held while that key is fetched and never while taking another
    key's lock.
    """

    def __init__(self, store: MetaStore, settings):
        """``settings()`` gives the settings in force (their ``metadata_ttl``
        and ``offline``), read at every call so a change applies at once."""
        self.store = store
        self._settings = settings
        self._table_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def key_lock(self, key: str) -> threading.Lock:
        """The lock held while ``key`` is fetched (for callers that update
        a stored value in place, such as a listing whose sizes were resolved)."""
        with self._table_lock:
            lock = self._locks.get(key)
            if lock is None:
                if len(self._locks) > 10000:
                    self._locks.clear()
                lock = self._locks[key] = threading.Lock()
            return lock

    def get(self, key: str, fetch, merge=None):
        """The value of ``key``: stored and fresh, or ``fetch()``-ed now.

        ``merge(old, new)``, when given, combines a stale stored value with
        the fresh one before it is stored. ``NotFound`` from ``fetch``
        forgets the key; ``RemoteError`` serves the stale value if any.
        """
        settings = self._settings()
        ttl, offline = settings.metadata_ttl, settings.offline
        hit = self.store.get(key)
        if hit is not None and (offline or time.time() - hit[0] < ttl):
            return hit[1]
        if offline:
            raise RemoteError(f"offline and not cached: {key.split(':', 1)[-1]}")
        with self.key_lock(key):
            again = self.store.get(key)
            if again is not None and time.time() - again[0] < ttl:
                return again[1]
            try:
                value = fetch()
            except NotFound:
                self.store.forget(key)
                raise
            except RemoteError as exc:
                if again is not None:
                    log.warning("serving cached %s: archive unreachable (%s)", key, exc)
                    return again[1]
                raise
            if merge is not None and again is not None:
                value = merge(again[1], value)
            self.store.put(key, value)
            return value
