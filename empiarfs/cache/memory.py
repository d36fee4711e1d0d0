"""The memory tier: a thread-safe LRU of blocks bounded in bytes.

Blocks are keyed by ``(FileVersion, index)`` (see :mod:`.keys`; index
``FIRST_BYTES_INDEX`` holds a file's probed first bytes). The tier
holds one version per URL: asking for another version drops the old one's
blocks. The bound holds at every moment: :meth:`MemoryLRU.put` evicts
*before* inserting, under the same lock, so no reader ever observes
``bytes_used > max_bytes``.

An ``OrderedDict`` rather than ``cachetools.LRUCache`` because we also keep
a per-URL index (dropping a file must not scan every key) and we want the
eviction and the insert in one critical section.

Lock order: ``_lock`` is a leaf.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

from empiarfs.cache.keys import FileVersion


class MemoryLRU:
    """Byte-bounded LRU of blocks.

    Parameters
    ----------
    max_bytes : int
        Hard bound on the sum of the lengths of the stored blocks. A block
        larger than the bound is never stored.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative: {max_bytes}")
        self._max = int(max_bytes)
        self._lock = threading.Lock()
        self._data: OrderedDict = OrderedDict()     # (url, index) -> bytes
        self._versions: dict[str, FileVersion] = {}  # url -> the version held
        self._by_url: dict[str, set[int]] = {}
        self._used = 0

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._used

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def holds(self, version: FileVersion, index: int) -> bool:
        """Presence test that does not refresh the block's recency."""
        with self._lock:
            return self._held(version, drop=False) and (version.url, index) in self._data

    def get(self, version: FileVersion, index: int) -> Optional[bytes]:
        """The block, or ``None``; a hit makes it most recently used."""
        key = (version.url, index)
        with self._lock:
            if not self._held(version):
                return None
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, version: FileVersion, index: int, data: bytes) -> bool:
        """Store a block, evicting least recently used blocks first.

        Returns
        -------
        bool
            False if the block is larger than the whole cache (not stored).
        """
        size = len(data)
        if size > self._max:
            return False
        key = (version.url, index)
        with self._lock:
            if not self._held(version) or version.url not in self._versions:
                self._versions[version.url] = version
            old = self._data.pop(key, None)
            if old is not None:
                self._used -= len(old)
            while self._used + size > self._max and self._data:
                (ev_url, ev_index), ev_data = self._data.popitem(last=False)
                self._used -= len(ev_data)
                self._forget(ev_url, ev_index)
            self._data[key] = data if isinstance(data, bytes) else bytes(data)
            self._used += size
            self._by_url.setdefault(version.url, set()).add(index)
        return True

    def indices(self, version: FileVersion) -> list[int]:
        """Block indices held for this version (no recency change)."""
        with self._lock:
            if self._versions.get(version.url) is None or not self._held(version, drop=False):
                return []
            return sorted(i for i in self._by_url.get(version.url, ()) if i >= 0)

    def drop(self, url: str) -> int:
        """Forget every block of ``url``; returns the number dropped."""
        with self._lock:
            return self._drop(url)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._by_url.clear()
            self._versions.clear()
            self._used = 0

    # -- lock held ------------------------------------------------------------
    def _held(self, version: FileVersion, drop: bool = True) -> bool:
        """Is no other version of the URL held? A get or put of a new
        version drops the old one (``drop``); a query leaves it."""
        current = self._versions.get(version.url)
        if current is None or current is version or current == version:
            return True
        if current.same_version(version.fingerprint):
            return True
        if drop:
            self._drop(version.url)
        return False

    def _drop(self, url: str) -> int:
        self._versions.pop(url, None)
        indices = self._by_url.pop(url, set())
        for index in indices:
            data = self._data.pop((url, index), None)
            if data is not None:
                self._used -= len(data)
        return len(indices)

    def _forget(self, url, index) -> None:
        indices = self._by_url.get(url)
        if indices is not None:
            indices.discard(index)
            if not indices:
                del self._by_url[url]
                self._versions.pop(url, None)
