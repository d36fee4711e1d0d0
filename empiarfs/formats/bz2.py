"""bzip2-compressed files: random access through a block index.

bzip2 compresses in independent blocks of up to 900 kB, so a reader that
knows where each block starts (its *block index*) can decompress just the
blocks holding the bytes asked for. ``indexed_bzip2`` keeps that index;
building it takes one full decompression, which it can spread over
several cores. :class:`RandomBz2` ties it to a persisted
:class:`~empiarfs.formats.bz2_index.IndexStore`:

* with a stored index, reading frame ``k`` fetches and decompresses only
  the compressed blocks that hold frame ``k``;
* without one, the file is decompressed as a stream up to the bytes asked
  for, as before (frame ``k`` costs everything before it, nothing after);
  when such a pass has gone past half of the file it is finished and the
  index saved, so the next read is random access. TIFFs, whose page
  directories are scattered, get the index first, in one parallel pass.

``empiarfs cache prefetch --index`` builds indexes ahead of time.
:func:`open_bz2` and :func:`decompress_to_spool` are the plain streaming
readers (no index, standard library only).
"""

from __future__ import annotations

import bz2 as _bz2
import io
import logging
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from empiarfs.errors import BadFile, MissingDependency

log = logging.getLogger(__name__)

# Decompressed TIFFs up to this size stay in memory, larger ones spill to disk.
SPOOL_MEMORY = 256 * 1024 * 1024
_COPY_CHUNK = 8 * 1024 * 1024


def open_bz2(fileobj):
    """A forward-streaming decompressing view of a ``.bz2`` file object.

    Parameters
    ----------
    fileobj : binary file object
        The compressed bytes.

    Returns
    -------
    bz2.BZ2File
        Readable and seekable, but a seek costs a decompression of every
        byte before the target (backwards: from the start again).
    """
    return _bz2.BZ2File(fileobj, "rb")


def decompress_to_spool(fileobj, name: str = "<stream>"):
    """Decompress a whole ``.bz2`` file into a seekable temporary file.

    Parameters
    ----------
    fileobj : binary file object
        The compressed bytes, read sequentially from the start.
    name : str
        Used in log messages only.

    Returns
    -------
    tempfile.SpooledTemporaryFile
        Positioned at 0; in memory up to :data:`SPOOL_MEMORY`, on disk beyond.

    Raises
    ------
    OSError
        If the data is not valid bzip2 (raised by the bz2 module).
    """
    log.info("%s: bz2 is not randomly accessible; decompressing the whole file", name)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
    fileobj.seek(0)
    with open_bz2(fileobj) as stream:
        shutil.copyfileobj(stream, spool, _COPY_CHUNK)
    spool.seek(0)
    return spool


# ------------------------------------------------------------ random access

_INDEX_MAGIC = b"BZ2OFFS1"
# Without an index, a pass that has decompressed at least this share of the
# compressed file is finished on close, so its index can be saved.
FINISH_SHARE = 0.5


def encode_offsets(offsets: dict) -> bytes:
    """An ``indexed_bzip2`` block index (``{compressed bit offset:
    decompressed byte offset}``) as bytes: a magic then little-endian
    int64 pairs, sorted."""
    pairs = np.array(sorted(offsets.items()), dtype="<i8").reshape(-1, 2)
    return _INDEX_MAGIC + pairs.tobytes()


def decode_offsets(data: Optional[bytes]) -> Optional[dict]:
    """The block index from :func:`encode_offsets`, or ``None`` if ``data``
    is missing or not one."""
    if not data or not data.startswith(_INDEX_MAGIC) or (len(data) - len(_INDEX_MAGIC)) % 16:
        return None
    pairs = np.frombuffer(data, dtype="<i8", offset=len(_INDEX_MAGIC)).reshape(-1, 2)
    if len(pairs) == 0 or np.any(np.diff(pairs[:, 0]) <= 0) or np.any(np.diff(pairs[:, 1]) < 0):
        return None
    return {int(bit): int(byte) for bit, byte in pairs}


def _module():
    try:
        import indexed_bzip2
    except ImportError as exc:
        raise MissingDependency("random access into .bz2 files needs the 'indexed_bzip2' "
                                "package: pip install indexed_bzip2",
                                name="indexed_bzip2") from exc
    return indexed_bzip2


def parallelism() -> int:
    """Threads for a full decompression pass: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def build_index(fileobj, *, parallelization: Optional[int] = None,
                name: str = "<stream>") -> dict:
    """Decompress a whole ``.bz2`` file once and return its block index.

    Parameters
    ----------
    fileobj : binary file object
        The compressed bytes; read from the start (several times over by
        the parallel decoder, so give it a cached or local file).
    parallelization : int, optional
        Decoder threads; all usable cores by default.
    name : str
        Used in messages only.

    Returns
    -------
    dict
        ``{compressed bit offset: decompressed byte offset}`` of every block.

    Raises
    ------
    BadFile
        If the data is not valid bzip2.
    MissingDependency
        If ``indexed_bzip2`` is not installed.
    """
    ib = _module()
    fileobj = _without_fileno(fileobj)
    fileobj.seek(0)
    try:
        reader = ib.IndexedBzip2File(fileobj, parallelization=parallelization or parallelism())
        try:
            offsets = reader.block_offsets()
        finally:
            reader.close()
    except (ValueError, RuntimeError, OSError) as exc:
        raise BadFile(f"{name}: not a valid bzip2 file: {exc}", path=name) from exc
    if len(offsets) < 2:  # at least one block and the end of the stream
        raise BadFile(f"{name}: not a valid bzip2 file: no complete block", path=name)
    log.info("%s: bz2 block index built (%d blocks)", name, len(offsets))
    return offsets


class RandomBz2:
    """A seekable decompressed view of a ``.bz2`` file, using and keeping
    its block index.

    Parameters
    ----------
    fileobj : binary file object
        The compressed bytes (seekable). Not closed by :meth:`close`.
    store : IndexStore, optional
        Where indexes are kept; without it nothing is loaded or saved.
    key : str, optional
        The file version's key in ``store``
        (:func:`~empiarfs.formats.bz2_index.key_for_remote` /
        :func:`~empiarfs.formats.bz2_index.key_for_local`).
    build : bool
        Without a stored index, build one first in a parallel full pass
        (for formats that read all over the file, such as TIFF).
    name : str
        Used in messages only.

    Attributes
    ----------
    file : indexed_bzip2.IndexedBzip2File
        The decompressed bytes: ``read``, ``seek``, ``tell``.
    indexed : bool
        Whether reads use a block index (stored or just built).

    Raises
    ------
    BadFile
        If the data is not valid bzip2 (while building an index).
    MissingDependency
        If ``indexed_bzip2`` is not installed.
    """

    def __init__(self, fileobj, *, store=None, key: Optional[str] = None, build: bool = False,
                 name: str = "<stream>"):
        ib = _module()
        self.name = name
        fileobj = _without_fileno(fileobj)
        self._raw = fileobj
        self._store = store if key else None
        self._key = key
        self._compressed_size = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(0)
        if fileobj.read(3) != b"BZh":
            raise BadFile(f"{name}: not a valid bzip2 file (no 'BZh' signature)", path=name)
        offsets = decode_offsets(self._store.load_index(key)) if self._store else None
        if offsets is None and build:
            offsets = build_index(fileobj, name=name)
            self._save(offsets)
        self.indexed = offsets is not None
        fileobj.seek(0)
        # One thread: a parallel reader decodes blocks ahead of the one
        # asked for, which is network traffic nobody asked for.
        self._reader = ib.IndexedBzip2File(fileobj, parallelization=1)
        try:
            if offsets is not None:
                self._reader.set_block_offsets(offsets)
        except ValueError as exc:
            self._reader.close()  # a reader left open aborts the interpreter at exit
            raise BadFile(f"{name}: not a valid bzip2 file: {exc}", path=name) from exc
        except BaseException:
            self._reader.close()
            raise
        self.file = _Checked(self._reader, name)

    def _save(self, offsets: dict) -> None:
        if self._store is not None:
            self._store.save_index(self._key, encode_offsets(offsets))

    def close(self, keep_index: bool = True) -> None:
        """Close the view; first, with ``keep_index``, save the index if
        this pass completed it (or finish a pass past :data:`FINISH_SHARE`)."""
        if self._reader.closed:
            return
        try:
            if keep_index and not self.indexed and self._store is not None:
                self._finish_and_save()
        finally:
            self._reader.close()

    def _finish_and_save(self) -> None:
        reader = self._reader
        try:
            if not reader.block_offsets_complete():
                if reader.tell_compressed() < FINISH_SHARE * 8 * self._compressed_size:
                    return
                log.info("%s: finishing the bz2 pass to keep its block index", self.name)
                reader.seek(0, os.SEEK_END)
            self._save(reader.block_offsets())
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("%s: bz2 block index not kept: %s", self.name, exc)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        # A failed read (a corrupt file, an interrupt) is no time to finish
        # decompressing the rest of the file.
        self.close(keep_index=exc_type is None)


class _NoFileno(io.RawIOBase):
    """A file seen without its descriptor. Given a real file, indexed_bzip2
    reads the descriptor itself and holds the GIL while it waits; on a mount
    that wait is network time, and every other thread of the process (a
    data loader's, or the archive server a test runs) would stop with it.
    Through Python's own reads the GIL is released while the kernel works."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw
        self.name = getattr(raw, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._raw.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        # The wrapped file belongs to the caller.
        super().close()


def _without_fileno(fileobj):
    try:
        fileobj.fileno()
    except (AttributeError, OSError, ValueError):
        return fileobj
    return _NoFileno(fileobj)


class _Checked:
    """The decompressed file as readers see it: indexed_bzip2's errors on
    corrupt or truncated data (ValueError, RuntimeError) become BadFile."""

    def __init__(self, reader, name: str):
        self._reader = reader
        self.name = name

    def _call(self, method, *args):
        try:
            return method(*args)
        except (ValueError, RuntimeError) as exc:
            if self._reader.closed:
                raise
            raise BadFile(f"{self.name}: corrupt bzip2 data: {exc}", path=self.name) from exc

    def read(self, size: int = -1) -> bytes:
        return self._call(self._reader.read, size)

    def readinto(self, buffer) -> int:
        return self._call(self._reader.readinto, buffer)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._call(self._reader.seek, offset, whence)

    def tell(self) -> int:
        return self._reader.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._reader.closed
