"""Persisted bzip2 block indexes: one small file per remote file version.

A ``.bz2`` file's block index (where each bzip2 block starts, in
compressed bits and decompressed bytes) takes a full decompression to
build and a few bytes per 900 kB block to keep. It is stored here, under
``<cache_dir>/bz2-index/``, keyed by a string that names one version of
one file: ``"<url>\\n<fingerprint key>"`` for archive files (the same
URL and fingerprint that name the file's cached blocks), ``"file:<real
path>\\n<size>:<mtime ns>"`` for other local files. A new version of the
file has another key, so a stale index is never used.

The store is deliberately small and self-contained (``load_index`` /
``save_index`` over bytes) so that it can move into the block cache
later. It is best effort: an unwritable directory or a corrupt file
means "no index" (the file is then decompressed as a stream), never an
error. Its size is bounded by :data:`MAX_BYTES` (oldest files removed
first); a 1 GB ``.bz2`` needs about 20 kB.

File layout: ``magic (8) | key length (4) | key | payload | crc32 (4)``,
written to a temporary name and renamed, so readers (a mount, the Python
API, ``cache prefetch --index`` in other processes) never see half a file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import zlib
from typing import Optional

log = logging.getLogger(__name__)

SUBDIR = "bz2-index"
MAX_BYTES = 64 * 1024 * 1024
_MAGIC = b"EFSBZIX1"


def key_for_remote(url: str, fingerprint_key: str) -> str:
    """The key of one version of an archive file."""
    return f"{url}\n{fingerprint_key}"


def key_for_local(path: str) -> str:
    """The key of a local file: its real path, size and mtime.

    Raises
    ------
    OSError
        If the file cannot be stat()ed.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"file:{real}\n{st.st_size}:{st.st_mtime_ns}"


class IndexStore:
    """Block indexes of ``.bz2`` files under one directory.

    Parameters
    ----------
    directory : str
        Where the index files live (created on first save).
    max_bytes : int
        Bound on the files' total size; the least recently written go first.
    """

    def __init__(self, directory: str, max_bytes: int = MAX_BYTES):
        self.directory = os.fspath(directory)
        self.max_bytes = int(max_bytes)

    @classmethod
    def in_cache_dir(cls, cache_dir: str) -> Optional["IndexStore"]:
        """The store of a cache directory, or ``None`` when there is none."""
        return cls(os.path.join(cache_dir, SUBDIR)) if cache_dir else None

    def _path(self, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.directory, digest[:40] + ".idx")

    def load_index(self, key: str) -> Optional[bytes]:
        """The payload saved under ``key``, or ``None``."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except OSError:
            return None
        raw_key = key.encode("utf-8", "surrogateescape")
        head = len(_MAGIC) + 4
        if (len(blob) < head + 4 or blob[:len(_MAGIC)] != _MAGIC
                or zlib.crc32(blob[:-4]) != struct.unpack("<I", blob[-4:])[0]):
            log.warning("%s: corrupt bz2 index, removed", path)
            self._remove(path)
            return None
        (n,) = struct.unpack_from("<I", blob, len(_MAGIC))
        if blob[head:head + n] != raw_key:
            return None  # another key with the same digest prefix: not ours
        return blob[head + n:-4]

    def save_index(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` (replacing any older payload)."""
        raw_key = key.encode("utf-8", "surrogateescape")
        body = _MAGIC + struct.pack("<I", len(raw_key)) + raw_key + bytes(data)
        blob = body + struct.pack("<I", zlib.crc32(body))
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, self._path(key))
            except BaseException:
                self._remove(tmp)
                raise
        except OSError as exc:
            log.warning("bz2 index not saved in %s: %s", self.directory, exc)
            return
        self._trim()

    def _trim(self) -> None:
        try:
            files = [(e.stat().st_mtime_ns, e.stat().st_size, e.path)
                     for e in os.scandir(self.directory) if e.name.endswith(".idx")]
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            self._remove(path)
            total -= size

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
