"""One cached block as one file: its name, header, checksum, atomic write
and verified read.

Layout under the store's directory::

    blocks/<fid % 256, two hex digits>/<fid>-<idx>.blk       a block
    blocks/<fid % 256, two hex digits>/<fid>-<idx>.blk.tmp   being written

A block file is a 32-byte header (magic ``EFSB``, format version, fid,
block index, payload length, crc32 of the payload) and the payload. Readers
trust the header, not the index: a block is served when its header names
the fid and index asked for, its length is the one expected and its crc32
matches. That is what lets a lookup skip the shared index entirely, and
fids are never reused (``index.py``), so a name can never hold another
version's bytes.

A block is written to ``<name>.tmp`` and renamed into place, so a process
killed mid-write leaves at most a temporary file, never a torn block under
a block's name. No fsync: after a power cut a torn file fails its crc32.

Lock order: this module takes no locks; callers may hold any.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterator, Optional

HEADER = struct.Struct("<4sBxxxqqII")  # magic, format version, fid, idx, length, crc32
MAGIC = b"EFSB"
FORMAT = 1
SUFFIX = ".blk"
TMP_SUFFIX = ".blk.tmp"

# What a read found.
HIT, MISSING, CORRUPT = "hit", "missing", "corrupt"


def file_size(payload_length: int) -> int:
    """Bytes a block of ``payload_length`` takes on disk (what the bound counts)."""
    return HEADER.size + payload_length


class Layout:
    """Where block files live under ``directory``."""

    def __init__(self, directory: str):
        self.root = os.path.join(directory, "blocks")
        self._made: set = set()  # shard directories known to exist

    def path(self, fid: int, idx: int) -> str:
        return f"{self.root}{os.sep}{fid % 256:02x}{os.sep}{fid}-{idx}{SUFFIX}"

    def make_shard(self, fid: int) -> None:
        shard = fid % 256
        if shard not in self._made:
            os.makedirs(os.path.join(self.root, f"{shard:02x}"), exist_ok=True)
            self._made.add(shard)

    def forget_shards(self) -> None:
        """After the tree was removed under us: make shards again on demand."""
        self._made.clear()

    def shards(self) -> list[str]:
        """Shard directories present now."""
        try:
            with os.scandir(self.root) as entries:
                return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    @staticmethod
    def scan(shard: str) -> Iterator[tuple[str, int, int, bool]]:
        """``(path, fid, idx, is_temporary)`` of every block-named file in
        one shard; other names are left alone."""
        try:
            with os.scandir(shard) as entries:
                names = [e.name for e in entries]
        except FileNotFoundError:
            return
        for name in names:
            parsed = parse_name(name)
            if parsed is not None:
                yield (os.path.join(shard, name), *parsed)


def parse_name(name: str) -> Optional[tuple[int, int, bool]]:
    """``(fid, idx, is_temporary)`` of a block file name, or ``None``."""
    if name.endswith(TMP_SUFFIX):
        stem, tmp = name[: -len(TMP_SUFFIX)], True
    elif name.endswith(SUFFIX):
        stem, tmp = name[: -len(SUFFIX)], False
    else:
        return None
    fid, sep, idx = stem.partition("-")
    if not sep or not fid.isdigit() or not idx.isdigit():
        return None
    return int(fid), int(idx), tmp


def write(path: str, fid: int, idx: int, data: bytes) -> None:
    """Write a whole block atomically: a temporary file renamed into place.

    Raises
    ------
    OSError
        On any write error (the temporary file is removed).
    """
    header = HEADER.pack(MAGIC, FORMAT, fid, idx, len(data), zlib.crc32(data))
    tmp = path[: -len(SUFFIX)] + TMP_SUFFIX
    try:
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(data)
        os.replace(tmp, path)
    except OSError:
        _unlink(tmp)
        raise


def read(path: str, fid: int, idx: int, expected: Optional[int],
         limit: int) -> tuple[str, Optional[bytes]]:
    """``(HIT, payload)``, ``(MISSING, None)`` or ``(CORRUPT, None)``.

    ``expected`` is the payload length the file version implies (``None``
    when the size is unknown); ``limit`` the largest payload possible.

    Raises
    ------
    OSError
        If the file exists but cannot be read (not ENOENT).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return MISSING, None
    try:
        # The length expected, in one read (a regular file is read whole);
        # unknown: one byte more than the largest, to see a file too long.
        want = HEADER.size + (limit + 1 if expected is None else expected)
        blob = os.read(fd, want)
        if 0 < len(blob) < want:
            rest = _read_more(fd, want - len(blob))
            if rest:
                blob += rest
    finally:
        os.close(fd)
    if len(blob) >= HEADER.size:
        magic, version, h_fid, h_idx, length, crc = HEADER.unpack_from(blob)
        payload = blob[HEADER.size:]
        if (magic == MAGIC and version == FORMAT and h_fid == fid and h_idx == idx
                and length == len(payload) and (expected is None or expected == length)
                and zlib.crc32(payload) == crc):
            return HIT, payload
    return CORRUPT, None


def _read_more(fd: int, count: int) -> bytes:
    parts = []
    while count > 0:
        chunk = os.read(fd, count)
        if not chunk:
            break
        parts.append(chunk)
        count -= len(chunk)
    return b"".join(parts)


def remove(path: str) -> None:
    """Delete a block file and its temporary file, if present."""
    _unlink(path)
    _unlink(path[: -len(SUFFIX)] + TMP_SUFFIX)


def _unlink(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError:  # e.g. the directory was removed: nothing left to free
        pass
