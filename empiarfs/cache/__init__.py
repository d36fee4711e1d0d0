"""Layer 2, the block cache: the read path between the filesystem and the network.

``blocks`` (pure arithmetic), ``memory`` (byte-bounded LRU), ``disk``
(persistent checksummed byte-bounded store), ``reader`` (``BlockReader``:
single-flight, coalescing, read-ahead, deadline). This package never
imports :mod:`empiarfs.remote`: the reader reaches the network only
through the ``fetch`` callable it is given.
"""

from empiarfs.cache.disk import CacheLocked, DiskStore
from empiarfs.cache.memory import MemoryLRU
from empiarfs.cache.reader import BlockReader, FileKey
from empiarfs.cache.stats import ReaderStats

__all__ = ["BlockReader", "CacheLocked", "DiskStore", "FileKey", "MemoryLRU", "ReaderStats"]
