"""The persistent block cache on local disk, shared by every process on a node.

One module per job (each starts with its lock order):

``blockfile``  one block, one file: header, crc32, atomic write, verified read
``dirlock``    who uses the directory: the shared/exclusive lock, per-process tokens
``index``      the shared SQLite index (WAL): schema, transactions, rows
``versions``   which version of a URL is kept; this process's url -> fid memory
``eviction``   the byte bound across processes, LRU choice, batched recency
``recovery``   reservations of dead processes, dropped blocks, full reconcile
``store``      :class:`DiskStore`, composing them
"""

from empiarfs.cache.disk.dirlock import CacheLocked
from empiarfs.cache.disk.store import LOOKUP_WAIT, WRITE_BACKOFF, DiskStore

__all__ = ["CacheLocked", "DiskStore", "LOOKUP_WAIT", "WRITE_BACKOFF"]
