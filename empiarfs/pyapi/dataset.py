"""An indexable dataset of EMPIAR images for machine learning.

:class:`EmpiarDataset` has ``__len__`` and ``__getitem__``, so it works as
a PyTorch map-style dataset without importing torch. It holds only its
settings and a list of ``(path, frame)`` items; each process (every
DataLoader worker) opens its own :class:`~empiarfs.namespace.filesystem.EmpiarFS` on first
use, so the dataset pickles cheaply and reads lazily: item ``i`` fetches
the bytes of one frame (or one particle image) and nothing more.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from empiarfs.config import Settings
from empiarfs.errors import InvalidInput, UnsupportedFormat
from empiarfs.pyapi.workerfs import ProcessLocalFS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One sample: a file (local or archive path) and a frame of it
    (``None``: the whole file)."""

    path: str
    frame: Optional[int] = None


class EmpiarDataset(ProcessLocalFS):
    """Micrographs, movie frames or particle images, loaded on demand.

    Build one with :meth:`from_files`, :meth:`from_imageset` or
    :meth:`from_star`; or directly from :class:`Item` values.

    Parameters
    ----------
    items : iterable of Item
        What ``dataset[i]`` returns, in order.
    settings : Settings, optional
        For archive paths; :meth:`Settings.load` if omitted. Stored with the
        dataset so worker processes read through the same archive and cache.
    transform : callable, optional
        Applied to each numpy array before it is returned (must be picklable
        for multi-process loading).

    Notes
    -----
    ``dataset[i]`` returns a numpy array (2D for a frame or particle image,
    3D for a whole file). Wrap in ``torch.utils.data.DataLoader`` as is;
    numpy arrays are collated into tensors.
    """

    def __init__(self, items: Iterable[Item], *, settings: Optional[Settings] = None,
                 transform: Optional[Callable] = None):
        self.items = [i if isinstance(i, Item) else Item(*i) for i in items]
        self.settings = settings if settings is not None else Settings.load()
        self.transform = transform
        self._fs = None
        self._fs_pid = None

    # ----------------------------------------------------------- construction

    @classmethod
    def from_files(cls, paths: Iterable[str], *, per_frame: bool = True,
                   settings: Optional[Settings] = None, transform: Optional[Callable] = None,
                   fs=None) -> "EmpiarDataset":
        """One item per frame (or per file) of MRC/MRCS/TIFF/EER files.

        Parameters
        ----------
        paths : iterable of str
            Local/mount paths, ``EMPIAR-N/...`` or ``empiar://...`` paths.
        per_frame : bool
            One item per frame (reads each file's header, or counts TIFF
            pages, once now) or one item per whole file.
        settings, transform
            As for the constructor.
        fs : EmpiarFS, optional
            Used for the header reads done here (not stored).

        Returns
        -------
        EmpiarDataset

        Raises
        ------
        UnsupportedFormat
            A path that is not an image format.
        NotFound, BadFile, RemoteError
            From reading the headers.
        """
        ds = cls([], settings=settings, transform=transform)
        get_fs = (lambda: fs) if fs is not None else ds._open_fs
        items = []
        for path in paths:
            path = str(path)
            if not per_frame:
                items.append(Item(path, None))
                continue
            items.extend(Item(path, k) for k in range(_frame_count(path, get_fs)))
        ds.items = items
        return ds

    @classmethod
    def from_imageset(cls, accession, imageset=0, *, pattern: Optional[str] = None,
                      per_frame: bool = True, settings: Optional[Settings] = None,
                      transform: Optional[Callable] = None, fs=None) -> "EmpiarDataset":
        """The image files of one image set of an entry.

        Parameters
        ----------
        accession : str or int
            ``"EMPIAR-10002"``.
        imageset : int or str
            Index in ``entry.imagesets`` or the image set's name.
        pattern : str, optional
            Glob selecting files under the image set's directory (file names
            when without ``/``); default: every MRC/MRCS/TIFF/EER file there.
        per_frame, settings, transform, fs
            As for :meth:`from_files`.

        Returns
        -------
        EmpiarDataset

        Raises
        ------
        InvalidInput
            No such image set, or it selects no image files.
        NotFound, RemoteError
            From the archive.
        """
        from empiarfs.pyapi import api

        ds = cls([], settings=settings, transform=transform)
        fs = fs or ds._open_fs()  # kept by ds, so its connections are reused
        view = api.entry(accession, fs=fs)
        sets = view.model.imagesets
        if isinstance(imageset, int):
            if not 0 <= imageset < len(sets):
                raise InvalidInput(f"{view.accession} has {len(sets)} image set(s), "
                                   f"not index {imageset}")
            chosen = sets[imageset]
        else:
            matches = [s for s in sets if s.name == imageset]
            if not matches:
                names = "; ".join(s.name for s in sets)
                raise InvalidInput(f"{view.accession} has no image set {imageset!r} "
                                   f"(image sets: {names})")
            chosen = matches[0]
        rels = view.files(pattern, under=chosen.directory.strip("/"))
        images = [r for r in rels if _is_image(r)]
        if not images:
            raise InvalidInput(f"{view.accession}: image set {chosen.name!r} "
                               f"({chosen.directory}) holds no MRC/TIFF files"
                               + (f" matching {pattern!r}" if pattern else ""))
        ds.items = cls.from_files([view.path(r) for r in images], per_frame=per_frame,
                                  settings=ds.settings, fs=fs).items
        return ds

    @classmethod
    def from_star(cls, star_path, *, root: Optional[str] = None, columns=None,
                  settings: Optional[Settings] = None, transform: Optional[Callable] = None,
                  fs=None) -> "EmpiarDataset":
        """The images a RELION STAR file references, in row order.

        Parameters
        ----------
        star_path : str or os.PathLike
            The STAR file: local (a mount's too), ``EMPIAR-N/...`` or
            ``empiar://...``.
        root : str, optional
            The directory references are relative to (RELION writes them
            relative to its project directory). Default: the STAR file's
            directory, then each one above it (up to the entry root in the
            archive), nearest first, wherever the file exists.
        columns : str or list of str, optional
            ``"rlnImageName"`` (``index@stack.mrcs``: one particle image),
            ``"rlnMicrographName"`` or ``"rlnMicrographMovieName"`` (whole
            files). Default: the first of these the file has.
        settings, transform, fs
            As for :meth:`from_files`.

        Returns
        -------
        EmpiarDataset
            One item per reference: ``index@stack.mrcs`` (1-based index)
            becomes frame ``index - 1`` of the stack, a micrograph or movie
            the whole file. Archive files are ``empiar://`` paths.

        Raises
        ------
        BadFile
            No reference column, a malformed ``rlnImageName`` value; the
            message lists the first few.
        NotFound
            References to files that exist nowhere (listed the same way).
        InvalidInput
            ``columns`` names a column that is not a reference column or
            that the file lacks.
        RemoteError
            From reading the STAR file or the listings.
        """
        ds = cls([], settings=settings, transform=transform)
        plan = resolve_star(star_path, root=root, columns=columns,
                            get_fs=lambda: fs or ds._open_fs())
        plan.raise_unresolved()
        ds.items = [Item(place_path(r.place), r.frame) for r in plan.refs]
        return ds

    # ---------------------------------------------------------------- access

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        """The image of item ``index`` as a numpy array (after ``transform``).

        Raises
        ------
        IndexError
            ``index`` out of range.
        """
        from empiarfs.pyapi import api

        item = self.items[index]  # IndexError as a sequence should
        data = api.load(item.path, frames=item.frame, fs=self._open_fs_if_remote(item.path))
        return self.transform(data) if self.transform is not None else data

    def _open_fs(self):
        # Its own EmpiarFS (closed by close()); pickled (ProcessLocalFS),
        # only settings and paths travel to worker processes.
        from empiarfs.namespace.filesystem import EmpiarFS

        return self._fs_here(lambda: EmpiarFS(self.settings, require_disk_cache=False))

    def _open_fs_if_remote(self, path: str):
        from empiarfs.pyapi.api import archive_path

        return self._open_fs() if archive_path(path) is not None else None

    def close(self) -> None:
        """Close this process's EmpiarFS (reopened on the next access)."""
        if self._fs is not None and self._fs_pid == os.getpid():
            self._fs.close()
        self._fs = None

    def __repr__(self):
        return f"EmpiarDataset({len(self.items)} items)"


def _is_image(path: str) -> bool:
    from empiarfs.formats import detect

    try:
        return detect(path)[0] in ("mrc", "tiff")
    except UnsupportedFormat:
        return False


def _frame_count(path: str, get_fs) -> int:
    """Frames of an MRC file (from its header) or pages of a TIFF."""
    from empiarfs.formats import detect
    from empiarfs.pyapi import api

    kind, _ = detect(path)
    remote = get_fs() if api.archive_path(path) is not None else None
    if kind == "mrc":
        return api.load_mrc(path, header_only=True, fs=remote).n_frames
    if kind == "tiff":
        from empiarfs.formats.tiff import count_pages

        with api.open(path, fs=remote) as handle:
            if path.lower().endswith(".bz2"):
                # Through the kept block index (one parallel pass, saved),
                # not a whole decompression thrown away: the items' reads
                # then decompress only their own blocks.
                src = api._Source(handle, remote, path)
                with api._random_bz2(path, remote, src, build=True) as stream:
                    return count_pages(stream.file, path)
            return count_pages(handle, path)
    raise UnsupportedFormat(f"{path}: not an image file (MRC/MRCS/TIFF/EER)")


# ------------------------------------------------------------------ STAR files

def resolve_star(star, *, root=None, columns=None, get_fs: Callable):
    """A STAR file's image references resolved to files and frames.

    The one way the Python API reads STAR references (:meth:`EmpiarDataset.from_star`
    and :func:`empiarfs.to_dask` both use it); the rules are those of
    :mod:`empiarfs.namespace.star_refs`.

    Parameters
    ----------
    star, root, columns
        As for :meth:`EmpiarDataset.from_star`.
    get_fs : callable
        Returns the EmpiarFS for archive paths; called only when the STAR
        file or ``root`` is in the archive.

    Returns
    -------
    empiarfs.namespace.star_refs.StarPlan
        Unresolvable references are in ``plan.unresolved``, not raised.

    Raises
    ------
    BadFile, InvalidInput, NotFound, RemoteError
        The STAR file cannot be read or has no reference column;
        ``columns`` is wrong.
    """
    from empiarfs.namespace.star_refs import listing_of, resolve_tables
    from empiarfs.pyapi import api

    place = _place(star)
    base = _place(root) if root is not None else None
    fs = get_fs() if place.is_archive or (base is not None and base.is_archive) else None
    tables = api.load_star(place_path(place), always_dict=True, fs=fs)
    return resolve_tables(tables, place, root=base, columns=columns,
                          listdir=listing_of(fs) if fs is not None else None)


def _place(path):
    from empiarfs.namespace.star_refs import Place
    from empiarfs.pyapi import api

    text = os.fspath(path)
    text = os.fsdecode(text) if isinstance(text, bytes) else text
    remote = api.archive_path(text)
    return Place.archive(remote) if remote is not None else Place.local(text)


def place_path(place) -> str:
    """``empiar://EMPIAR-N/...`` for an archive place (never mistaken for a
    local file), the absolute path of a local one."""
    from empiarfs.pyapi import api

    return api.ARCHIVE_SCHEME + str(place) if place.is_archive else place.path
