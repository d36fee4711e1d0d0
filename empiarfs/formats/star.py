"""STAR (RELION) tables as pandas DataFrames, through starfile.

starfile only parses named files, so a stream is copied to a temporary
file first. STAR files are text tables, small next to the images they
describe, and are always read whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from empiarfs.errors import BadFile

_COPY_CHUNK = 8 * 1024 * 1024


def read_star(fileobj, *, always_dict: bool = False, name: str = "<stream>"):
    """Parse a STAR file into pandas DataFrames.

    Parameters
    ----------
    fileobj : binary file object
        Read from the start to the end.
    always_dict : bool
        Return a dict even when the file has a single data block.
    name : str
        Used in error messages only.

    Returns
    -------
    pandas.DataFrame or dict
        As :func:`starfile.read` returns it: a single loop block comes back
        as one DataFrame; several blocks as ``{block_name: DataFrame or
        dict}`` (simple key/value blocks are dicts).

    Raises
    ------
    BadFile
        If starfile cannot parse the contents.
    """
    import starfile

    fd, tmp = tempfile.mkstemp(suffix=".star", prefix="empiarfs-")
    try:
        with os.fdopen(fd, "wb") as out:
            fileobj.seek(0)
            shutil.copyfileobj(fileobj, out, _COPY_CHUNK)
        try:
            return starfile.read(tmp, always_dict=always_dict)
        except (ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
            raise BadFile(f"{name}: cannot parse STAR file: {exc}", path=name) from exc
    finally:
        os.unlink(tmp)
