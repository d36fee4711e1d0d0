"""Memory over disk: the one cache the block reader, the mount, the Python
API and ``get`` all use, keyed by :class:`~empiarfs.cache.keys.FileVersion`
and block index.

``in_memory`` then ``on_disk`` (a disk hit is kept in memory too); ``put``
stores in memory at once and hands the block to one background writer for
disk: writing on the fetch thread capped cold reads at the disk's speed.
When the writer falls more than ``DISK_QUEUE_BYTES`` behind, blocks skip the
disk (they are still in memory) instead of slowing reads down.

Lock order: ``_lock`` (the write queue's accounting) is a leaf; the tiers'
own locks are never taken while it is held.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Optional

from empiarfs import ranges
from empiarfs.cache.keys import FIRST_BYTES_INDEX, FileVersion
from empiarfs.cache.memory import MemoryLRU
from empiarfs.config import MiB

log = logging.getLogger(__name__)

# Bytes of blocks waiting for the disk writer, at most.
DISK_QUEUE_BYTES = 64 * MiB


class TieredCache:
    """A memory tier and an optional disk tier behind one set of lookups and ``put``.

    Parameters
    ----------
    memory : MemoryLRU
    disk : DiskStore or None
        Its ``get/put/has/drop_file/cached_ranges(url, fingerprint, ...)``
        are used; ``None`` for memory only.
    block_size : int
    """

    def __init__(self, memory: MemoryLRU, disk=None, block_size: int = 128 * 1024):
        self.memory = memory
        self.disk = disk
        self.block_size = block_size
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0
        self._writer: Optional[threading.Thread] = None
        self._stopped = False
        self.skipped = 0  # blocks that did not reach the disk: the writer was behind

    # -- lookups -----------------------------------------------------------
    def in_memory(self, version: FileVersion, index: int) -> Optional[bytes]:
        return self.memory.get(version, index)

    def memory_holds(self, version: FileVersion, index: int) -> bool:
        return self.memory.holds(version, index)

    def first_bytes(self, version: FileVersion) -> Optional[bytes]:
        """The file's first bytes as a size probe brought them, or ``None``."""
        return self.memory.get(version, FIRST_BYTES_INDEX)

    def keep_first_bytes(self, version: FileVersion, data: bytes) -> None:
        """Keep a file's first bytes (memory only: they are a few KiB, and
        a block of the disk tier is whole)."""
        if data:
            self.memory.put(version, FIRST_BYTES_INDEX, data)

    def on_disk(self, version: FileVersion, index: int) -> Optional[bytes]:
        """A verified block from disk (also kept in memory), or ``None``;
        a broken disk cache never breaks a read."""
        if self.disk is None:
            return None
        try:
            data = self.disk.get(version.url, version.fingerprint, index)
        except Exception as exc:
            log.warning("disk cache read failed (%s); reading from the network", exc)
            return None
        if data is not None:
            self.memory.put(version, index, data)
        return data

    def cached_ranges(self, version: FileVersion) -> list[tuple[int, int]]:
        """Byte ranges of this version held in memory or on disk."""
        spans = ranges.of_blocks(self.memory.indices(version), self.block_size, version.size)
        if self.disk is not None:
            try:
                spans = ranges.merge(spans + self.disk.cached_ranges(version.url,
                                                                     version.fingerprint))
            except Exception as exc:
                log.warning("disk cache index unreadable (%s)", exc)
        return spans

    # -- stores --------------------------------------------------------------
    def put(self, version: FileVersion, blocks: list[tuple[int, bytes]], *,
            memory: bool = True, persist: bool = True) -> int:
        """Store fetched blocks: in memory now, on disk by the writer.
        Returns how many blocks skipped the disk (the writer was behind)."""
        skipped = 0
        if persist and self.disk is not None:
            skipped = self._queue_for_disk(version, blocks)
        if memory:
            for index, data in blocks:
                self.memory.put(version, index, data)
        return skipped

    def drop(self, url: str) -> None:
        """Forget every block of ``url``, all versions, in both tiers."""
        self.memory.drop(url)
        if self.disk is not None:
            try:
                self.disk.drop_file(url)
            except Exception as exc:
                log.warning("cannot drop %s from the disk cache: %s", url, exc)

    def _queue_for_disk(self, version: FileVersion, blocks: list) -> int:
        size = sum(len(block) for _, block in blocks)
        with self._lock:
            if self._stopped or self._queued + size > DISK_QUEUE_BYTES:
                self.skipped += len(blocks)
                return len(blocks)
            self._queued += size
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="empiarfs-disk",
                                                daemon=True)
                self._writer.start()
        self._jobs.put((version, blocks, size))
        return 0

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            version, blocks, size = job
            try:
                for index, block in blocks:
                    self.disk.put(version.url, version.fingerprint, index, block)
            except Exception as exc:
                log.warning("disk cache write failed (%s); continuing without it", exc)
            finally:
                with self._lock:
                    self._queued -= size

    def close(self, timeout: float = 5.0) -> None:
        """Finish the queued disk writes (a remount should find them);
        later puts go to memory only. Does not close the disk store."""
        with self._lock:
            self._stopped = True
            writer = self._writer
        if writer is not None:
            self._jobs.put(None)
            writer.join(timeout)
