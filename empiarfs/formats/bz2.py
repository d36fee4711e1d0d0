"""bzip2-compressed files, by streaming decompression.

A ``.bz2`` file is **not randomly accessible**: to reach byte ``n`` of
the decompressed stream every compressed byte before it must be fetched
and decompressed, and seeking backwards starts again from the beginning.
So reading frame 10 of ``movie.mrcs.bz2`` fetches and decompresses
everything up to frame 10 (but nothing after it), and TIFFs, whose page
directories are scattered, are decompressed whole into a spooled
temporary file before tifffile parses them.
"""

from __future__ import annotations

import bz2 as _bz2
import logging
import shutil
import tempfile

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
