"""A thread-safe LRU of blocks bounded in bytes.

Keys are ``(file_id, block_index)``; values are ``bytes``. The bound holds
at every moment: :meth:`MemoryLRU.put` evicts *before* inserting, under the
same lock, so no reader ever observes ``bytes_used > max_bytes``.

An ``OrderedDict`` rather than ``cachetools.LRUCache`` because we also keep
a per-file index (``drop_file`` must not scan every key) and we want the
eviction and the insert in one critical section.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Optional


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
        self._data: OrderedDict = OrderedDict()
        self._by_file: dict[Hashable, set[int]] = {}
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

    def __contains__(self, key) -> bool:
        """Presence test that does not refresh the entry's recency."""
        with self._lock:
            return key in self._data

    def get(self, file_id: Hashable, index: int) -> Optional[bytes]:
        """The block, or ``None``; a hit makes it most recently used."""
        key = (file_id, index)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, file_id: Hashable, index: int, data: bytes) -> bool:
        """Store a block, evicting least recently used blocks first.

        Returns
        -------
        bool
            False if the block is larger than the whole cache (not stored).
        """
        size = len(data)
        if size > self._max:
            return False
        key = (file_id, index)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._used -= len(old)
            while self._used + size > self._max and self._data:
                (ev_file, ev_index), ev_data = self._data.popitem(last=False)
                self._used -= len(ev_data)
                self._forget(ev_file, ev_index)
            self._data[key] = bytes(data)
            self._used += size
            self._by_file.setdefault(file_id, set()).add(index)
        return True

    def indices(self, file_id: Hashable) -> list[int]:
        """Block indices held for one file (no recency change)."""
        with self._lock:
            return sorted(self._by_file.get(file_id, ()))

    def drop_file(self, file_id: Hashable) -> int:
        """Forget every block of one file; returns the number dropped."""
        with self._lock:
            indices = self._by_file.pop(file_id, set())
            for index in indices:
                data = self._data.pop((file_id, index), None)
                if data is not None:
                    self._used -= len(data)
            return len(indices)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._by_file.clear()
            self._used = 0

    def _forget(self, file_id, index) -> None:
        indices = self._by_file.get(file_id)
        if indices is not None:
            indices.discard(index)
            if not indices:
                del self._by_file[file_id]
