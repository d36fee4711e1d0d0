"""What a RELION STAR file references: archive files, and frames of stacks.

RELION names its inputs in STAR tables: ``rlnImageName`` holds
``N@stack.mrcs`` (image ``N``, counted from 1, of an MRC stack), while
``rlnMicrographName`` and ``rlnMicrographMovieName`` name whole files.
Re-processing an entry from one of its STAR files needs only those files,
and of a stack only those frames. This module turns a STAR file into a
:class:`StarPlan` (the files needed whole, the frames needed of each stack,
and every reference that does not resolve, with the reason), gives the
byte ranges of a stack's frames from its header (:class:`StackLayout`), and
reads exactly those ranges into the block cache (:func:`prefetch`).

Where a relative reference points
---------------------------------
With ``root``, against ``root`` only. Otherwise against the STAR file's
own directory, then each directory above it, nearest first, up to the
entry root (archive) or ``/`` (local): the first where the file exists
wins. RELION writes paths relative to its project directory, which is
usually a parent of the STAR file's (``Extract/job012/particles.star``
names ``Extract/job012/Movies/x.mrcs``). ``..`` is resolved lexically; an
archive reference that climbs out of its entry, an absolute one, or one
with control characters is refused by :mod:`empiarfs.paths` (the one path
rule) and listed as unresolvable, as is a file that exists nowhere.

Existence in the archive is checked through a listing callable,
``listdir(accession, relpath) -> [FileInfo]`` (the shape of
:meth:`empiarfs.remote.archive.Archive.listdir`; :func:`listing_of` makes one
from an :class:`~empiarfs.namespace.filesystem.EmpiarFS`, sharing its
metadata cache), each directory listed once; local paths with
:func:`os.path.isfile`.
"""

from __future__ import annotations

import os
import posixpath
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Protocol

from empiarfs import ranges
from empiarfs.errors import BadFile, InvalidInput, NotFound, UnsupportedFormat
from empiarfs.formats import detect
from empiarfs.namespace.catalog import CONTROL_DIR
from empiarfs.namespace.filesystem import CatalogListing
from empiarfs.paths import clean_relpath

#: The columns that name image files, most specific first: without
#: ``columns=``, a plan follows the first of these the STAR file has.
COLUMNS = ("rlnImageName", "rlnMicrographName", "rlnMicrographMovieName")
#: Unresolvable references shown one per line before "... and N more".
SHOWN = 20
_ACCESSION_DIR = re.compile(r"EMPIAR-\d+")
_MALFORMED = "not 'index@stack' (an image number from 1, '@', the stack's path)"

Listdir = Callable[[str, str], Iterable]


@dataclass(frozen=True, order=True)
class Place:
    """A file or directory: in the archive (``accession`` set, ``path``
    relative to the entry root) or local (``accession`` empty, ``path``
    absolute)."""

    accession: str
    path: str

    @classmethod
    def archive(cls, text: str) -> "Place":
        """``"EMPIAR-10002/data/x.mrcs"`` (a mount-relative archive path).

        Raises
        ------
        InvalidInput
            Not an accession, or a path the path rule refuses.
        """
        from empiarfs.namespace.select import split_target

        return cls(*split_target(text))

    @classmethod
    def local(cls, path) -> "Place":
        return cls("", os.path.abspath(os.fspath(path)))

    @property
    def is_archive(self) -> bool:
        return bool(self.accession)

    def __str__(self) -> str:
        if not self.is_archive:
            return self.path
        return f"{self.accession}/{self.path}" if self.path else self.accession

    def parent(self) -> Optional["Place"]:
        """The directory holding this place; ``None`` at the entry root or ``/``."""
        if self.is_archive:
            return None if not self.path else Place(self.accession, posixpath.dirname(self.path))
        up = os.path.dirname(self.path)
        return None if up == self.path else Place("", up)

    def join(self, ref: str) -> "Place":
        """The place ``ref`` names relative to this directory.

        Raises
        ------
        InvalidInput
            In the archive: ``ref`` climbs out of the entry, is absolute or
            has control characters.
        """
        if not self.is_archive:
            return Place("", os.path.normpath(os.path.join(self.path, ref)))
        joined = posixpath.normpath(posixpath.join(self.path, ref))
        if joined == ".." or joined.startswith("../"):
            raise InvalidInput(f"climbs out of {self.accession}")
        return Place(self.accession, clean_relpath("" if joined == "." else joined))


@dataclass(frozen=True, slots=True)   # a STAR file may hold millions
class Ref:
    """One resolved reference: row ``row`` (from 1) of data block ``block``."""

    block: str
    row: int
    column: str
    value: str
    place: Place
    frame: Optional[int]     # 0-based frame of a stack; None: the whole file
    size: int = -1           # from the listing (a hint; -1 unknown or local)
    seq: int = 0             # place among all references read, from 1


@dataclass(frozen=True)
class Unresolved:
    """A reference that names no file (or no frame of its stack), and why."""

    block: str
    row: int
    column: str
    value: str
    reason: str
    broken: bool = False     # the STAR is wrong: not a reference, or a frame its stack lacks
    seq: int = 0             # place among all references read, from 1

    def __str__(self) -> str:
        return f"data_{self.block} row {self.row}: {self.column} {self.value!r}: {self.reason}"

    def as_dict(self) -> dict:
        return {"block": self.block, "row": self.row, "column": self.column,
                "value": self.value, "reason": self.reason}


@dataclass
class StarPlan:
    """A STAR file's references, resolved.

    Attributes
    ----------
    star : Place
        The STAR file.
    columns : tuple of str
        The reference columns followed.
    refs : list of Ref
        Resolved references, block by block, column by column, in row order.
    unresolved : list of Unresolved
        The others, in the same order.
    """

    star: Place
    columns: tuple
    refs: list = field(default_factory=list)
    unresolved: list = field(default_factory=list)

    @property
    def total(self) -> int:
        """References read (resolved or not)."""
        return len(self.refs) + len(self.unresolved)

    @property
    def files(self) -> list:
        """Every file referenced, once, in first-reference order."""
        return list(dict.fromkeys(r.place for r in self.refs))

    @property
    def whole(self) -> list:
        """Files referenced as a whole (a micrograph, a movie)."""
        return list(dict.fromkeys(r.place for r in self.refs if r.frame is None))

    @property
    def frames(self) -> dict:
        """``{stack: sorted 0-based frames}`` of stacks referenced by
        ``N@stack`` only (a file also needed whole is in :attr:`whole`)."""
        whole = set(self.whole)
        out: dict = {}
        for r in self.refs:
            if r.frame is not None and r.place not in whole:
                out.setdefault(r.place, set()).add(r.frame)
        return {place: sorted(frames) for place, frames in out.items()}

    def sizes(self) -> dict:
        """``{file: size from its listing}`` (a hint; -1 unknown or local)."""
        return {r.place: r.size for r in self.refs}

    def check_frames(self, counts: dict) -> None:
        """Move references to frames a stack does not have (``counts``:
        ``{stack: frames in it}``, from headers) to :attr:`unresolved`."""
        kept = []
        for r in self.refs:
            n = counts.get(r.place)
            if r.frame is not None and n is not None and r.frame >= n:
                self.unresolved.append(Unresolved(
                    r.block, r.row, r.column, r.value,
                    f"image {r.frame + 1} of {r.place}, which has {n}", broken=True, seq=r.seq))
            else:
                kept.append(r)
        self.refs = kept
        self.unresolved.sort(key=lambda u: u.seq)   # listed in file order, whatever found them

    def lines(self, limit: int = SHOWN) -> list:
        """The unresolvable references, one line each, at most ``limit``
        then a count of the rest."""
        out = [str(u) for u in self.unresolved[:limit]]
        if len(self.unresolved) > limit:
            out.append(f"... and {len(self.unresolved) - limit} more")
        return out

    def summary(self) -> str:
        """One line: how many references do not resolve."""
        return (f"{len(self.unresolved)} of {self.total} references in {self.star} "
                "do not resolve")

    def raise_unresolved(self) -> None:
        """Raise when any reference does not resolve.

        Raises
        ------
        BadFile
            The STAR file is wrong: a value is not a reference
            (``rlnImageName`` without ``N@``), or names a frame its stack
            lacks. The message names the first few references.
        NotFound
            Otherwise: references to files that exist nowhere.
        """
        if not self.unresolved:
            return
        shown = "; ".join(self.lines(3))
        message = f"{self.summary()}: {shown}"
        if any(u.broken for u in self.unresolved):
            raise BadFile(message, path=str(self.star))
        raise NotFound(message, path=str(self.star))


# ------------------------------------------------------------------ resolving

def plan_star(fileobj, star: Place, *, root: Optional[Place] = None,
              listdir: Optional[Listdir] = None, columns=None) -> StarPlan:
    """Read a STAR file and resolve its image references.

    Parameters
    ----------
    fileobj : binary file object
        The STAR file's bytes (read whole).
    star : Place
        Where the STAR file is: relative references start from its directory.
    root : Place, optional
        The directory references are relative to (RELION's project
        directory); default: the STAR file's directory, then those above it.
    listdir : callable, optional
        ``listdir(accession, relpath) -> [FileInfo]``; needed when the STAR
        file or ``root`` is in the archive.
    columns : iterable of str, optional
        Which of :data:`COLUMNS` to follow; default: the first the file has.

    Returns
    -------
    StarPlan

    Raises
    ------
    BadFile
        The file does not parse, or has none of :data:`COLUMNS`.
    InvalidInput
        ``columns`` names a column that is not a reference column or that
        the file lacks.
    RemoteError
        A listing could not be fetched.
    """
    from empiarfs.formats.star import read_star

    tables = read_star(fileobj, always_dict=True, name=str(star))
    return resolve_tables(tables, star, root=root, listdir=listdir, columns=columns)


def resolve_tables(tables: dict, star: Place, *, root: Optional[Place] = None,
                   listdir: Optional[Listdir] = None, columns=None) -> StarPlan:
    """:func:`plan_star` over already parsed tables (``{block: DataFrame or dict}``)."""
    loops = {name: t for name, t in tables.items() if hasattr(t, "columns")}
    present = [c for c in COLUMNS if any(c in t.columns for t in loops.values())]
    if columns is None or isinstance(columns, str):
        columns = None if columns is None else [columns]
    if columns is None:
        if not present:
            raise BadFile(f"{star}: no column of image references ({', '.join(COLUMNS)})",
                          path=str(star))
        chosen = present[:1]
    else:
        chosen = list(dict.fromkeys(columns))
        for column in chosen:
            if column not in COLUMNS:
                raise InvalidInput(f"{column} is not a column of image references; "
                                   f"choose from {', '.join(COLUMNS)}")
            if column not in present:
                raise InvalidInput(f"{star} has no {column} column "
                                   f"(its reference columns: {', '.join(present) or 'none'})")
    resolver = _Resolver(_bases(star, root), listdir)
    plan = StarPlan(star, tuple(chosen))
    for block, table in loops.items():
        for column in chosen:
            if column not in table.columns:
                continue
            for row, raw in enumerate(table[column].tolist(), 1):
                seq = plan.total + 1
                value = str(raw).strip()
                try:
                    path, frame = _parse(column, value)
                except ValueError as exc:
                    plan.unresolved.append(Unresolved(block, row, column, value, str(exc),
                                                      broken=True, seq=seq))
                    continue
                found = resolver.resolve(path)
                if isinstance(found, str):
                    plan.unresolved.append(Unresolved(block, row, column, value, found, seq=seq))
                else:
                    place, size = found
                    plan.refs.append(Ref(block, row, column, value, place, frame, size, seq))
    return plan


def _parse(column: str, value: str) -> tuple:
    """``(path, 0-based frame or None)`` of one cell.

    Raises
    ------
    ValueError
        Not a reference; the message says why.
    """
    if column == "rlnImageName":
        index, sep, stack = value.partition("@")
        if not sep or not index.strip().isdigit() or int(index) < 1 or not stack.strip():
            raise ValueError(_MALFORMED)
        return stack.strip(), int(index) - 1
    if not value:
        raise ValueError("empty")
    return value, None


def _bases(star: Place, root: Optional[Place]) -> list:
    if root is not None:
        return [root]
    out = []
    here = star.parent()
    while here is not None:
        out.append(here)
        here = here.parent()
    return out


class _Resolver:
    """Relative paths -> existing files, each path and directory looked up once."""

    def __init__(self, bases: list, listdir: Optional[Listdir]):
        self._bases = bases
        self._listdir = listdir
        self._dirs: dict = {}
        self._done: dict = {}

    def resolve(self, ref: str):
        """``(Place, size)``, or the reason (a str) it names no file."""
        if ref not in self._done:
            self._done[ref] = self._resolve(ref)
        return self._done[ref]

    def _resolve(self, ref: str):
        tried, refused = [], []
        for base in self._bases:
            try:
                place = base.join(ref)
            except InvalidInput as exc:
                refused.append(str(exc))
                continue
            if place in tried:
                continue
            tried.append(place)
            found = self._file(place)
            if found is not None:
                return found
        if not tried:
            return refused[0] if refused else "no directory to look in"
        names = ", ".join(str(p) for p in tried[:3]) + (", ..." if len(tried) > 3 else "")
        return f"no such file (looked for {names})"

    def _file(self, place: Place):
        if not place.is_archive:
            try:
                return (place, -1) if os.path.isfile(place.path) else None
            except ValueError:  # a NUL in the path
                return None
        if self._listdir is None:
            raise InvalidInput(f"{place}: archive references need a listing (listdir=)")
        folder, _, name = place.path.rpartition("/")
        key = (place.accession, folder)
        if key not in self._dirs:
            try:
                infos = self._listdir(place.accession, folder)
            except NotFound:
                infos = ()
            self._dirs[key] = {info.name: info for info in infos}
        info = self._dirs[key].get(name)
        if info is None or info.is_dir:
            return None
        return place, int(info.size)


def listing_of(fs) -> Listdir:
    """``listdir(accession, relpath)`` over an EmpiarFS's catalog (its
    metadata cache is shared with mounts and the Python API)."""
    return CatalogListing(fs).listdir


def mount_place(path) -> Optional[Place]:
    """The archive place of a path on an empiarfs mount, else ``None``.

    A mount's root holds the ``.empiarfs`` control directory beside the
    ``EMPIAR-N`` entries, so ``/mnt/empiar/EMPIAR-10002/data/x.star`` is
    ``EMPIAR-10002/data/x.star``.
    """
    head = os.path.abspath(os.fspath(path))
    rest: list = []
    while True:
        parent, name = os.path.split(head)
        if not name:
            return None
        if _ACCESSION_DIR.fullmatch(name) and os.path.isdir(os.path.join(parent, CONTROL_DIR)):
            return Place(name, "/".join(reversed(rest)))
        rest.append(name)
        head = parent


# --------------------------------------------------------------- byte ranges

@dataclass(frozen=True)
class StackLayout:
    """Where an MRC stack's frames are: frame ``k`` is bytes
    ``[header_bytes + k * frame_bytes, header_bytes + (k + 1) * frame_bytes)``."""

    header_bytes: int    # 1024 + the extended header
    frame_bytes: int
    n_frames: int

    def byte_ranges(self, frames: Iterable[int]) -> list:
        """The header and those frames, as merged ``[start, end)`` ranges."""
        spans = [(0, self.header_bytes)]
        spans += [(self.header_bytes + k * self.frame_bytes,
                   self.header_bytes + (k + 1) * self.frame_bytes)
                  for k in frames if 0 <= k < self.n_frames]
        return ranges.merge(spans)


def stack_layout(fileobj, name: str = "<stream>") -> StackLayout:
    """The layout of an MRC file, from its header only.

    Raises
    ------
    BadFile, UnsupportedFormat
        A header that is not MRC, or a mode without a numpy type.
    """
    import numpy as np

    from empiarfs.formats.mrc import HEADER_BYTES, read_mrc

    head = read_mrc(fileobj, header_only=True, name=name)
    frame_shape = head.shape if len(head.shape) == 2 else head.shape[1:]
    return StackLayout(HEADER_BYTES + int(head.header.nsymbt),
                       head.dtype.itemsize * int(np.prod(frame_shape)), head.n_frames)


def frames_addressable(place: Place) -> bool:
    """An uncompressed MRC file: its frames sit at fixed offsets."""
    try:
        kind, compressed = detect(place.path)
    except UnsupportedFormat:
        return False
    return kind == "mrc" and not compressed


def frame_counts(plan: StarPlan, open_file: Callable) -> dict:
    """``{stack: frames it has}`` from the headers of the plan's
    uncompressed MRC stacks, for :meth:`StarPlan.check_frames`.

    ``open_file(place)`` returns a binary file object (closed here), or
    ``None`` to skip the stack (a download that failed).

    Raises
    ------
    BadFile, UnsupportedFormat
        A header that is not MRC.
    """
    counts = {}
    for place in plan.frames:
        if not frames_addressable(place):
            continue
        handle = open_file(place)
        if handle is None:
            continue
        with handle:
            counts[place] = stack_layout(handle, name=str(place)).n_frames
    return counts


# ------------------------------------------------------------------ prefetch

class Progress(Protocol):
    """What :func:`prefetch` reports, per file, from its worker threads."""

    def started(self, place: Place, node, size: int) -> None: ...

    def advanced(self, place: Place, nbytes: int) -> None: ...

    def finished(self, place: Place, size: int, seconds: float) -> None: ...


@dataclass(frozen=True)
class Prefetched:
    """One file read into the cache: ``size`` bytes of its ``file_size``."""

    place: Place
    size: int
    file_size: int
    frames: Optional[int]    # frames read of a stack; None: the whole file
    seconds: float


def prefetch(fs, plan: StarPlan, *, jobs: int = 4,
             progress: Optional[Progress] = None) -> list:
    """Read what ``plan`` needs through ``fs`` (into its memory and disk
    caches): files referenced whole, and of each stack its header and the
    referenced frames only. Frames beyond their stack (known once its
    header is read) join ``plan.unresolved``.

    Parameters
    ----------
    fs : EmpiarFS
    plan : StarPlan
        Of archive files only.
    jobs : int
        Files read at once.
    progress : Progress, optional

    Returns
    -------
    list of Prefetched

    Raises
    ------
    InvalidInput
        The plan names local files.
    NotFound, RemoteError, BadFile
        A file vanished, the archive failed, or a stack's header is not MRC.
    """
    work = [(p, None) for p in plan.whole] + list(plan.frames.items())
    local = [p for p, _ in work if not p.is_archive]
    if local:
        raise InvalidInput(f"{local[0]}: a local file; only archive files are cached")
    step = fs.settings.max_request
    counts: dict = {}

    def one(item) -> Prefetched:
        place, frames = item
        began = time.monotonic()
        node = fs.stat(str(place))
        if frames is not None and frames_addressable(place):
            with fs.open(str(place)) as raw:
                layout = stack_layout(raw, name=str(place))
            counts[place] = layout.n_frames
            spans = layout.byte_ranges(frames)
        else:
            spans = [(0, node.size)]
        # Exactly the named ranges: no read-ahead past what a reference names.
        pieces = [(lo, min(lo + step, end)) for start, end in spans for lo in range(start, end, step)]
        size = ranges.total(spans)
        if progress is not None:
            progress.started(place, node, size)
        for lo, hi in pieces:
            data = fs.read_node(node, lo, hi - lo, readahead=frames is None)
            if progress is not None:
                progress.advanced(place, len(data))
        seconds = time.monotonic() - began
        if progress is not None:
            progress.finished(place, size, seconds)
        read = None if frames is None or place not in counts else \
            sum(1 for k in frames if k < counts[place])
        return Prefetched(place, size, node.size, read, seconds)

    if not work:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(work))),
                            thread_name_prefix="star-prefetch") as pool:
        done = list(pool.map(one, work))
    plan.check_frames(counts)
    return done
