"""The one cache key: a version of a remote file.

Every tier (memory, disk) and every user of the cache (the mount, the
Python API, ``get``) names a block by ``(FileVersion, index)``. A tier holds
one version per URL, and a lookup of a version that
:meth:`FileVersion.same_version` says differs is a miss, so two versions of
a file are never mixed. A store of the new version drops the old one's
blocks (the memory tier also drops them on such a lookup; the disk tier,
shared by several processes that may briefly disagree, only on a write).
Nothing outside this package spells a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from empiarfs.model import Fingerprint


@dataclass(frozen=True)
class FileVersion:
    """One version of one remote file: its URL and fingerprint (whose
    ``size`` is the file size)."""

    url: str
    fingerprint: Fingerprint

    @property
    def size(self) -> int:
        return self.fingerprint.size

    def same_version(self, other: Fingerprint) -> bool:
        """Could ``other`` describe the same bytes? Metadata sources differ
        in what they give (FTP: size and time; HEAD: size, ETag and HTTP
        date), so the rule of :meth:`Fingerprint.change_from` is asked both
        ways: any validator both sides have must agree."""
        mine = self.fingerprint
        return mine == other or (mine.change_from(other) is None and other.change_from(mine) is None)


# The block index under which a tier keeps a file's *first bytes*, as a
# size probe brought them with the size (shorter than a block; see
# remote.archive.FIRST_BYTES). Never counted as a cached block.
FIRST_BYTES_INDEX = -1

# The name the block reader has always used.
FileKey = FileVersion
