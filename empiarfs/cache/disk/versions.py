"""Which version of a URL the store holds, and this process's memory of it.

Each URL maps to one *fid* (a number never reused) and the fingerprint of
the version whose blocks are stored under it. Two fingerprints describe the
same version when :meth:`empiarfs.model.Fingerprint.change_from` finds no
change either way: the mount (size and FTP time), the Python API (size,
ETag, HTTP date) and ``get`` see one file through different metadata and
must share its blocks. Fingerprints may also be given as their ``key()``
strings; those compare by equality.

:class:`FileMap` remembers url -> version for lookups, so a block read
costs no index query: a remembered fid is safe to use even when stale,
because a fid names exactly one version's bytes (a stale fid can only miss).

Lock order: ``FileMap`` takes no lock (single dict operations are atomic
under the GIL); callers may hold any.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Optional, Union

from empiarfs.model import Fingerprint

log = logging.getLogger(__name__)

FingerprintLike = Union[Fingerprint, str]

# A remembered mapping is re-read from the index after this long, when a
# lookup misses or presents another version (another process may have
# stored a newer version, cleared or dropped the file meanwhile).
REVALIDATE_AFTER = 1.0


@dataclass(frozen=True)
class Stored:
    """One row of the index's ``files`` table."""

    url: str
    fid: int
    key: Optional[str]            # Fingerprint.key(), None: pinned before any read
    size: Optional[int]
    etag: Optional[str] = None
    modified: Optional[str] = None
    structured: bool = False      # given as a Fingerprint (not as a key string)
    pinned: bool = False

    def __post_init__(self):
        # Built once: every lookup compares against it.
        fp = Fingerprint(self.size, self.etag, self.modified) \
            if self.structured and self.size is not None else None
        object.__setattr__(self, "_fingerprint", fp)

    def fingerprint(self) -> Optional[Fingerprint]:
        return self._fingerprint


def key_of(fingerprint: FingerprintLike) -> str:
    return fingerprint if isinstance(fingerprint, str) else fingerprint.key()


def size_of(fingerprint: FingerprintLike) -> Optional[int]:
    if isinstance(fingerprint, Fingerprint):
        return fingerprint.size
    head = fingerprint.split(":", 1)[0]
    return int(head) if head.isdigit() else None


def same_version(stored: Stored, fingerprint: FingerprintLike) -> bool:
    """Does ``fingerprint`` describe the version ``stored`` holds?"""
    if stored.key is None:
        return False
    mine = stored.fingerprint()
    if mine is not None and isinstance(fingerprint, Fingerprint):
        return mine == fingerprint or (mine.change_from(fingerprint) is None
                                       and fingerprint.change_from(mine) is None)
    return stored.key == key_of(fingerprint)


def adopt(stored: Stored, fingerprint: FingerprintLike) -> Stored:
    """``stored`` taking on ``fingerprint`` (a pin placeholder getting its
    first version), or learning the validators it lacked: once one writer
    has told the ETag, a fingerprint with another ETag is another version,
    even if both agree with a time-only fingerprint."""
    if stored.key is None:
        if isinstance(fingerprint, Fingerprint):
            return replace(stored, key=fingerprint.key(), size=fingerprint.size,
                           etag=fingerprint.etag, modified=fingerprint.last_modified,
                           structured=True)
        return replace(stored, key=fingerprint, size=size_of(fingerprint), structured=False)
    if stored.structured and isinstance(fingerprint, Fingerprint):
        etag = stored.etag or fingerprint.etag
        modified = stored.modified or fingerprint.last_modified
        if (etag, modified) != (stored.etag, stored.modified):
            return replace(stored, etag=etag, modified=modified)
    return stored


def fresh(url: str, fid: int, fingerprint: FingerprintLike, pinned: bool) -> Stored:
    """A new row for ``url`` at ``fingerprint``."""
    return adopt(Stored(url, fid, None, None, pinned=pinned), fingerprint)


def settle(tx, url: str, fingerprint: FingerprintLike) -> tuple[Stored, bool]:
    """The row of ``url`` at this version, made or switched to inside an
    index write transaction ``tx``; and whether an old version was retired
    (its blocks are then garbage: ``recovery.sweep``). Writers call this:
    a lookup of another version only misses."""
    stored = tx.file(url)
    if stored is None:
        new = fresh(url, tx.new_fid(), fingerprint, pinned=False)
    elif stored.key is None or same_version(stored, fingerprint):
        new = adopt(stored, fingerprint)
        if new == stored:
            return stored, False
    else:
        log.info("%s changed (%s -> %s): dropping its cached blocks", url, stored.key,
                 key_of(fingerprint))
        tx.retire(stored.fid)
        new = fresh(url, tx.new_fid(), fingerprint, pinned=stored.pinned)
        tx.save_file(new)
        return new, True
    tx.save_file(new)
    return new, False


class FileMap:
    """url -> (Stored or None, when it was read from the index)."""

    def __init__(self):
        self._known: dict[str, tuple[Optional[Stored], float]] = {}

    def get(self, url: str) -> tuple[Optional[Stored], bool, bool]:
        """``(stored, known, fresh)``."""
        hit = self._known.get(url)
        if hit is None:
            return None, False, False
        return hit[0], True, time.monotonic() - hit[1] < REVALIDATE_AFTER

    def remember(self, url: str, stored: Optional[Stored]) -> None:
        if len(self._known) > 100_000:
            self._known.clear()  # a crawl of millions of files must not grow this forever
        self._known[url] = (stored, time.monotonic())

    def forget(self, url: str) -> None:
        self._known.pop(url, None)

    def clear(self) -> None:
        self._known.clear()
