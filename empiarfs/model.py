"""Plain values shared by every layer. Imports nothing internal.

Parsing of the archive's JSON into these values lives in
:mod:`empiarfs.remote.metadata`; these classes only hold data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Optional


@dataclass(frozen=True)
class Author:
    name: str                          # as EMPIAR prints it: "Lancey C"
    orcid: Optional[str] = None
    # Filled for corresponding author / principal investigators only.
    first_name: Optional[str] = None
    middle_name: Optional[str] = None
    last_name: Optional[str] = None
    organization: Optional[str] = None
    email: Optional[str] = None
    country: Optional[str] = None
    street: Optional[str] = None
    town_or_city: Optional[str] = None
    state_or_province: Optional[str] = None
    post_or_zip: Optional[str] = None


@dataclass(frozen=True)
class Citation:
    title: Optional[str] = None
    authors: tuple = ()                # tuple[Author, ...]
    journal: Optional[str] = None
    journal_abbreviation: Optional[str] = None
    year: Optional[int] = None
    volume: Optional[str] = None
    issue: Optional[str] = None
    first_page: Optional[str] = None
    last_page: Optional[str] = None
    doi: Optional[str] = None
    pubmedid: Optional[str] = None
    published: bool = False
    preprint: bool = False
    j_or_nj_citation: bool = True      # True: journal; False: book/thesis/other
    details: Optional[str] = None


@dataclass(frozen=True)
class Grant:
    funding_body: Optional[str] = None
    code: Optional[str] = None
    country: Optional[str] = None


@dataclass(frozen=True)
class ImageSet:
    name: str
    directory: str                     # relative to the entry root, no leading "/"
    category: Optional[str] = None     # human label, e.g. "micrographs - multiframe"
    header_format: Optional[str] = None
    data_format: Optional[str] = None
    num_images: Optional[int] = None   # num_images_or_tilt_series
    frames_per_image: Optional[int] = None
    frame_range_min: Optional[int] = None
    frame_range_max: Optional[int] = None
    voxel_type: Optional[str] = None
    pixel_width: Optional[float] = None    # Å
    pixel_height: Optional[float] = None   # Å
    image_width: Optional[int] = None
    image_height: Optional[int] = None
    micrographs_file_pattern: str = ""
    picked_particles_file_pattern: str = ""
    picked_particles_directory: str = ""
    details: str = ""
    segmentations: tuple = ()

    # Alias matching the API field name.
    @property
    def num_images_or_tilt_series(self) -> Optional[int]:
        return self.num_images


@dataclass(frozen=True)
class Entry:
    accession: str                     # "EMPIAR-10002"
    title: str = ""
    status: Optional[str] = None
    deposition_date: Optional[str] = None   # ISO dates as strings
    release_date: Optional[str] = None
    update_date: Optional[str] = None
    obsolete_date: Optional[str] = None
    authors: tuple = ()                # tuple[Author, ...]
    corresponding_author: Optional[Author] = None
    principal_investigators: tuple = ()
    citations: tuple = ()              # tuple[Citation, ...]
    grants: tuple = ()
    imagesets: tuple = ()              # tuple[ImageSet, ...]
    emdb_refs: tuple = ()              # ("EMD-2275", ...)
    biostudies_refs: tuple = ()
    idr_refs: tuple = ()
    empiar_refs: tuple = ()
    related_pdb_entries: tuple = ()
    dataset_size: Optional[str] = None      # as the archive writes it: "174.2 GB"
    experiment_type: Optional[str] = None   # label: "EMDB", "FIB-SEM", ...
    scale: Optional[str] = None
    doi: Optional[str] = None
    workflow_file: Optional[str] = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def number(self) -> Optional[int]:
        """The numeric part of the accession, or None for odd test keys."""
        tail = self.accession.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class Fingerprint:
    """Identifies one version of a remote file. Cached blocks belong to
    exactly one fingerprint; a different one means the file changed."""

    size: int
    etag: Optional[str] = None
    last_modified: Optional[str] = None

    def key(self) -> str:
        """Stable across metadata sources: FTP listings give size+mtime but
        no ETag, HEAD gives all three, so the key prefers the mtime."""
        stamp = _epoch(self.last_modified)
        return f"{self.size}:{stamp if stamp is not None else (self.etag or '')}"

    def change_from(self, other: "Fingerprint") -> Optional[str]:
        """Why ``other`` is another version of the file than this one, in a
        few words (``"size 15 -> 1560"``), or ``None`` if it may be the same.

        The one rule of version comparison: sizes must agree; ETags are
        compared (weak or strong alike) where both sides have one;
        otherwise Last-Modified is compared at whole seconds where both
        sides have one, except an HTTP date against a time this side took
        from FTP or a listing (an epoch number): another front end may round
        its clock differently, and an unchanged file must not look changed.
        """
        if self.size != other.size:
            return f"size {self.size} -> {other.size}"
        if self.etag and other.etag:
            if _weakless(self.etag) != _weakless(other.etag):
                return f"ETag {self.etag} -> {other.etag}"
            return None
        if self.last_modified and other.last_modified:
            if _is_epoch(self.last_modified) and not _is_epoch(other.last_modified):
                return None
            mine, theirs = _epoch(self.last_modified), _epoch(other.last_modified)
            if mine is not None and theirs is not None and mine != theirs:
                return f"Last-Modified {self.last_modified} -> {other.last_modified}"
        return None

    def matches(self, other: "Fingerprint") -> bool:
        """Same version, by :meth:`change_from`?"""
        return self.change_from(other) is None


def _is_epoch(stamp) -> bool:
    return str(stamp).strip().lstrip("-").isdigit()


def _epoch(stamp: Optional[str]) -> Optional[int]:
    """Last-Modified as whole epoch seconds, whether it arrives as an HTTP
    date (HEAD, range replies) or as a number (FTP MLSD, listings)."""
    if not stamp:
        return None
    text = str(stamp).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def _weakless(etag: str) -> str:
    etag = etag.strip()
    return etag[2:] if etag.startswith("W/") else etag


@dataclass(frozen=True)
class FileInfo:
    """One node of the archive's data tree.

    ``size`` is exact when ``size_exact`` is true; otherwise it is the
    listing's rounded hint (``543M``) and must be resolved before use.
    """

    name: str                          # last path component, decoded
    path: str                          # relative to the entry root: "data/a b.mrc"
    is_dir: bool
    size: int = 0
    size_exact: bool = False
    mtime: float = 0.0                 # seconds since epoch
    url: str = ""                      # HTTP(S) URL of the file or directory
    etag: Optional[str] = None

    @property
    def fingerprint(self) -> Fingerprint:
        stamp = str(int(self.mtime)) if self.mtime else None
        return Fingerprint(self.size, self.etag, stamp)
