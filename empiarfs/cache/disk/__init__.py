"""The persistent block cache on local disk, shared by every process on a node.

One module per job (each starts with its lock order):

``blockfile``     one block, one file: header, crc32, atomic write, verified read
``dirlock``       who uses the directory: the shared/exclusive lock, per-process tokens
``index``         the shared SQLite index (WAL): schema, transactions, rows
``versions``      which version of a URL is kept; this process's url -> fid memory
``eviction``      the byte bound across processes, LRU choice, batched recency
``reservations``  this process's finished writes, confirmed in batches
``recovery``      dead processes' reservations, dropped blocks, files removed
                  behind our back, the full reconcile
``session``       one process's time on a directory: open (with recovery), close
``store``         :class:`DiskStore`, composing them

Imports point one way: ``store`` -> ``session`` -> ``recovery``,
``eviction`` -> ``index`` -> ``versions``; ``reservations``, ``blockfile``
and ``dirlock`` import nothing of the package but ``blockfile``.
"""

from empiarfs.cache.disk.dirlock import CacheLocked
from empiarfs.cache.disk.store import LOOKUP_WAIT, WRITE_BACKOFF, DiskStore

__all__ = ["CacheLocked", "DiskStore", "LOOKUP_WAIT", "WRITE_BACKOFF"]
