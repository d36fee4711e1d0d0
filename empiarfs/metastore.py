"""Persistent metadata cache: listings and entry records that survive remounts.

Every value is stored with the time it was fetched. Fresh values (younger
than the TTL) are served without asking the archive; stale values are
refreshed, but still served when the archive cannot be reached, so a mount
keeps working offline with everything it has seen. Imports nothing internal.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import cachetools
import diskcache

log = logging.getLogger(__name__)

# Metadata is small next to data blocks; this bound only keeps a runaway
# crawl (millions of directories) from filling the disk.
DEFAULT_LIMIT = 2 * 1024**3


class MetaStore:
    """Key -> (fetched_at, value) on disk, plus an in-memory front."""

    def __init__(self, directory: str | None, size_limit: int = DEFAULT_LIMIT, memory_items: int = 2048):
        self._lock = threading.Lock()
        # Bounded by count: listings are the big items, a few MB at most each.
        self._memory = cachetools.LRUCache(maxsize=memory_items)
        self._disk = None
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
                self._disk = diskcache.Cache(
                    directory, size_limit=size_limit, eviction_policy="least-recently-stored"
                )
            except (OSError, diskcache.core.Timeout) as exc:  # pragma: no cover - env specific
                log.warning("metadata cache disabled (%s): %s", directory, exc)

    def get(self, key: str):
        """``(fetched_at, value)`` or ``None``."""
        with self._lock:
            hit = self._memory.get(key)
        if hit is not None:
            return hit
        if self._disk is None:
            return None
        try:
            hit = self._disk.get(key)
        except Exception as exc:  # a damaged cache must not break lookups
            log.warning("metadata cache read failed for %s: %s", key, exc)
            return None
        if hit is not None:
            with self._lock:
                self._memory[key] = hit
        return hit

    def put(self, key: str, value, fetched_at: float | None = None) -> None:
        item = (time.time() if fetched_at is None else fetched_at, value)
        with self._lock:
            self._memory[key] = item
        if self._disk is not None:
            try:
                self._disk.set(key, item)
            except Exception as exc:  # ENOSPC, removed directory: keep serving
                log.warning("metadata cache write failed for %s: %s", key, exc)

    def forget(self, key: str) -> None:
        with self._lock:
            self._memory.pop(key, None)
        if self._disk is not None:
            try:
                self._disk.delete(key)
            except Exception:  # pragma: no cover
                pass

    def clear(self) -> None:
        with self._lock:
            self._memory.clear()
        if self._disk is not None:
            self._disk.clear()

    def close(self) -> None:
        if self._disk is not None:
            self._disk.close()
