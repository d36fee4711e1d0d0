"""The block cache: the read path between the filesystem and the network.

``blocks`` (pure arithmetic), ``memory`` (byte-bounded LRU), ``disk``
(persistent checksummed byte-bounded store), ``reader`` (``BlockReader``:
single-flight, coalescing, read-ahead, deadline). This package never
imports ``http`` or ``archive``: the reader reaches the network only
through the ``fetch`` callable it is given.
"""

from .disk import CacheLocked, DiskStore
from .memory import MemoryLRU
from .reader import BlockReader, FileKey
from .stats import ReaderStats

__all__ = ["BlockReader", "CacheLocked", "DiskStore", "FileKey", "MemoryLRU", "ReaderStats"]
