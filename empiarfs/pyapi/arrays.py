"""Frames of many files as one lazy array: :func:`to_dask` and :class:`FrameStack`.

An image set is hundreds to thousands of MRC stacks or TIFF movies; a STAR
file names particles as ``N@stack.mrcs``. Both are a sequence of 2D frames
(sections along each file's first axis). :class:`FrameStack` is that
sequence as a numpy-like object (``shape``, ``dtype``, ``__getitem__``)
built from file headers only; :func:`to_dask` wraps it in a ``dask.array``
with one chunk per frame (or per few frames, or per file).

The stack holds paths, frame numbers and a :class:`~empiarfs.config.Settings`
value, nothing live: pickled into a Dask worker, it opens that process's
own EmpiarFS (:mod:`.workerfs`) on its first read, so the settings the user
gave (a mirror's URLs, a site cache directory) reach every worker. Local
paths (a node's mount) are read with the builtin ``open``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from empiarfs.config import Settings
from empiarfs.errors import (
    BadFile,
    InvalidInput,
    MissingDependency,
    NotFound,
    UnsupportedFormat,
)
from empiarfs.formats import detect
from empiarfs.pyapi import api, workerfs

log = logging.getLogger(__name__)

# Header reads at build time run in parallel: an image set of 3000 movies
# over a 100 ms link is 5 minutes one by one, 20 s sixteen at a time.
_HEADER_THREADS = 16

ChunkSpec = Union[int, str]


@dataclass(frozen=True)
class FileLayout:
    """What a file's header says about its frames."""

    path: str               # empiar://... or an absolute local path
    n_frames: int
    frame_shape: tuple
    dtype: np.dtype


class FrameStack(workerfs.ProcessLocalFS):
    """Frames of many image files as one read-only array-like object.

    ``stack[i]`` is frame ``i`` (a numpy array of ``frame_shape``);
    ``stack[a:b]`` reads frames ``a..b-1``, each file's frames in one
    :func:`empiarfs.load` call. Build one with :func:`frame_stack`.

    Attributes
    ----------
    paths : tuple of str
        The files, ``empiar://EMPIAR-N/...`` or absolute local paths.
    file_of, frame_of : numpy.ndarray
        For each frame of the stack, its file (index into ``paths``) and its
        frame number in that file.
    frame_shape : tuple of int
    dtype : numpy.dtype
        Native byte order; files of narrower types are cast to it
        (``numpy.result_type`` of all files).
    settings : Settings
        Used by every process that reads archive paths from this stack.
    """

    def __init__(self, layouts: Sequence[FileLayout], file_of, frame_of, settings: Settings,
                 fs=None):
        self.paths = tuple(f.path for f in layouts)
        self.file_of = np.asarray(file_of, dtype=np.int64)
        self.frame_of = np.asarray(frame_of, dtype=np.int64)
        self.frame_shape = tuple(layouts[0].frame_shape)
        self.dtype = np.result_type(*(f.dtype.newbyteorder("=") for f in layouts))
        self.settings = settings
        self._remote = tuple(p.startswith(api.ARCHIVE_SCHEME) for p in self.paths)
        self._fs = fs
        self._fs_pid = os.getpid() if fs is not None else None

    # ------------------------------------------------------------ array-like

    @property
    def shape(self) -> tuple:
        return (len(self.file_of),) + self.frame_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self.frame_shape)

    def __len__(self) -> int:
        return len(self.file_of)

    def __repr__(self):
        return (f"FrameStack({len(self)} frames of {self.frame_shape} {self.dtype} "
                f"from {len(self.paths)} file(s))")

    def __getitem__(self, key):
        """Frames selected by a numpy index (int, slice, list, boolean mask),
        then the rest of ``key`` applied to each frame.

        Raises
        ------
        IndexError
            An index out of range (as numpy raises it).
        NotFound, BadFile, RemoteError
            From reading the files.
        """
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (self.ndim - (len(key) - 1))
            key = key[:at] + fill + key[at + 1:]
        first, rest = (key[0], key[1:]) if key else (slice(None), ())
        indices, drop_axis = self._frames(first)
        block = self._read(indices)
        if drop_axis:
            return block[0][rest] if rest else block[0]
        return block[(slice(None),) + rest] if rest else block

    def _frames(self, first) -> tuple:
        """Frame indices selected by one numpy index, and whether it drops the axis."""
        n = len(self)
        if isinstance(first, slice):  # the common case: no n-sized index array per chunk
            return list(range(*first.indices(n))), False
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            if not -n <= first < n:
                raise IndexError(f"frame {first} out of range for {n} frames")
            return [int(first) % n], True
        picked = np.arange(n)[first]
        return np.atleast_1d(picked).tolist(), picked.ndim == 0

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __dask_tokenize__(self):
        digest = hashlib.sha256()
        for part in (repr(self.paths), self.file_of.tobytes(), self.frame_of.tobytes(),
                     repr(self.frame_shape), str(self.dtype), repr(self.settings)):
            digest.update(part.encode() if isinstance(part, str) else part)
        return digest.hexdigest()

    # -------------------------------------------------------------- reading

    def _efs(self):
        # Pickled (ProcessLocalFS), only paths, frame numbers and settings
        # travel: a worker shares one EmpiarFS per settings among its tasks.
        return self._fs_here(lambda: workerfs.fs_for(self.settings))

    def _read(self, indices: list) -> np.ndarray:
        out = np.empty((len(indices),) + self.frame_shape, self.dtype)
        runs = itertools.groupby(enumerate(indices), key=lambda pair: int(self.file_of[pair[1]]))
        for file_no, run in runs:
            run = list(run)
            start = run[0][0]
            frames = [int(self.frame_of[i]) for _, i in run]
            path = self.paths[file_no]
            data = api.load(path, frames=frames,
                            fs=self._efs() if self._remote[file_no] else None)
            if data.shape[1:] != self.frame_shape:
                raise BadFile(f"{path}: frames of shape {data.shape[1:]}, but its header said "
                              f"{self.frame_shape}", path=path)
            out[start:start + len(run)] = data  # casts to the stack's dtype and byte order
        return out

    def chunks(self, frames_per_chunk: ChunkSpec = 1) -> tuple:
        """Frame counts per chunk: ``frames_per_chunk`` at a time, or
        ``"file"``: each file's consecutive frames together.

        Raises
        ------
        InvalidInput
            Not a positive int or ``"file"``.
        """
        if frames_per_chunk == "file":
            return tuple(len(list(run)) for _, run in itertools.groupby(self.file_of.tolist()))
        if (not isinstance(frames_per_chunk, (int, np.integer)) or isinstance(frames_per_chunk, bool)
                or frames_per_chunk < 1):
            raise InvalidInput(f"frames_per_chunk must be a positive int or 'file', "
                               f"not {frames_per_chunk!r}")
        full, tail = divmod(len(self), int(frames_per_chunk))
        return (int(frames_per_chunk),) * full + ((tail,) if tail else ())


# ------------------------------------------------------------------ building

def frame_stack(source, imageset=None, *, pattern: Optional[str] = None,
                root: Optional[str] = None, settings: Optional[Settings] = None) -> FrameStack:
    """A :class:`FrameStack` over an image set, a folder, files or a STAR file.

    Reads only headers (MRC header, TIFF page directories); no pixel data.
    Parameters are those of :func:`to_dask`.

    Raises
    ------
    As for :func:`to_dask`.
    """
    fs = workerfs.fs_for(settings)
    settings = fs.settings
    if isinstance(source, (list, tuple)):
        if pattern is not None or root is not None or imageset is not None:
            raise InvalidInput("pattern=, root= and imageset= apply to an image set, a folder "
                               "or a STAR file, not to a list of files")
        return _from_files([_canonical(p) for p in source], settings, fs)
    if isinstance(source, (int, np.integer)) or imageset is not None:
        if root is not None:
            raise InvalidInput("root= applies to STAR files only")
        if imageset is None:
            from empiarfs.remote.accession import normalize

            return _from_folder(normalize(source), "", pattern, settings, fs)
        return _from_imageset(source, imageset, pattern, settings, fs)
    text = os.fspath(source)
    text = os.fsdecode(text) if isinstance(text, bytes) else text
    try:
        kind, _ = detect(text)
    except UnsupportedFormat:
        kind = None
    if kind == "star":
        if pattern is not None:
            raise InvalidInput("pattern= selects files of an image set or folder, not STAR rows")
        return _from_star(text, root, settings, fs)
    if root is not None:
        raise InvalidInput("root= applies to STAR files only")
    if kind is not None:
        if pattern is not None:
            raise InvalidInput("pattern= selects files of an image set or folder, not of one file")
        return _from_files([_canonical(text)], settings, fs)
    remote = api.archive_path(text)
    if remote is not None:
        acc, _, rel = remote.partition("/")
        return _from_folder(acc, rel.strip("/"), pattern, settings, fs)
    if os.path.isdir(text):
        return _from_local_folder(text, pattern, settings, fs)
    if os.path.exists(text):
        detect(text)  # raises UnsupportedFormat, naming the supported suffixes
    raise NotFound(f"{text}: no such file or folder; give an image set "
                   "('EMPIAR-10002', 0), an empiar://EMPIAR-N/<folder> path, image files "
                   "or a STAR file", path=text)


def _canonical(path) -> str:
    """``empiar://EMPIAR-N/...`` for archive paths, an absolute path for local
    ones: the same file on every worker, whatever its working directory."""
    remote = api.archive_path(path)
    if remote is not None:
        return api.ARCHIVE_SCHEME + remote
    return os.path.abspath(os.fspath(path))


def _is_image(path: str) -> bool:
    try:
        return detect(path)[0] in ("mrc", "tiff")
    except UnsupportedFormat:
        return False


def _from_imageset(accession, imageset, pattern, settings, fs) -> FrameStack:
    """The image files of an image set: ``pattern`` if given, else the
    depositor's ``micrographs_file_pattern`` when it selects any image file,
    else every MRC/TIFF file in the image set's directory."""
    from empiarfs.pyapi.dataset import EmpiarDataset

    if isinstance(accession, str) and accession.startswith(api.ARCHIVE_SCHEME):
        accession = accession[len(api.ARCHIVE_SCHEME):].strip("/")
    choices = [pattern]
    if pattern is None:
        own = _deposited_pattern(api.entry(accession, fs=fs).imagesets, imageset)
        choices = [own, None] if own else [None]
    for k, choice in enumerate(choices):
        try:
            files = EmpiarDataset.from_imageset(accession, imageset, pattern=choice,
                                                per_frame=False, settings=settings, fs=fs)
            break
        except InvalidInput as exc:
            if k + 1 == len(choices):
                raise
            # Free text in some entries: fall back to the whole directory.
            log.info("image set %r of %s: micrographs_file_pattern %r selects nothing (%s); "
                     "using every image file of its directory", imageset, accession, choice, exc)
    return _from_files([_canonical(item.path) for item in files.items], settings, fs)


def _deposited_pattern(imagesets, imageset) -> Optional[str]:
    """The ``micrographs_file_pattern`` of the image set chosen by index or
    name (``None`` when empty or no such image set: from_imageset says why)."""
    if isinstance(imageset, (int, np.integer)) and not isinstance(imageset, bool):
        chosen = imagesets[imageset] if 0 <= imageset < len(imagesets) else None
    else:
        chosen = next((s for s in imagesets if s.name == imageset), None)
    text = (chosen.micrographs_file_pattern or "").strip() if chosen is not None else ""
    return text.lstrip("/") or None


def _from_folder(accession: str, rel: str, pattern, settings, fs) -> FrameStack:
    view = api.entry(accession, fs=fs)
    parts = rel.split("/") if rel else []
    if parts[:1] == ["imagesets"] and len(parts) == 2:
        if parts[1] in {s.name for s in view.imagesets}:
            return _from_imageset(view.accession, parts[1], pattern, settings, fs)
        # A link name made unique or file-safe by the catalog: follow it.
        link = fs.stat(f"{view.accession}/{rel}")
        rel = posixpath.normpath(posixpath.join("imagesets", link.target or ".")).strip("/")
        rel = "" if rel == "." else rel
    elif not rel:
        sets = "; ".join(f"{i}: {s.name} ({s.directory})" for i, s in enumerate(view.imagesets))
        raise InvalidInput(f"{view.accession}: say which image set, by index or name "
                           f"(image sets: {sets or 'none'}), or give a folder "
                           f"empiar://{view.accession}/<folder>")
    images = [r for r in view.files(pattern, under=rel) if _is_image(r)]
    if not images:
        raise InvalidInput(f"{view.accession}/{rel} holds no MRC/TIFF files"
                           + (f" matching {pattern!r}" if pattern else ""))
    return _from_files([api.ARCHIVE_SCHEME + view.path(r) for r in images], settings, fs)


def _from_local_folder(folder: str, pattern, settings, fs) -> FrameStack:
    from empiarfs.namespace.select import Selector, select_paths

    folder = os.path.abspath(folder)
    rels = []
    for top, dirs, names in os.walk(folder):
        dirs.sort()
        rels.extend(os.path.relpath(os.path.join(top, n), folder).replace(os.sep, "/")
                    for n in names)
    chosen = select_paths(sorted(r for r in rels if _is_image(r)),
                          Selector.from_options(glob=pattern))
    if not chosen:
        raise InvalidInput(f"{folder} holds no MRC/TIFF files"
                           + (f" matching {pattern!r}" if pattern else ""))
    return _from_files([os.path.join(folder, r) for r in chosen], settings, fs)


def _from_files(paths: list, settings, fs) -> FrameStack:
    if not paths:
        raise InvalidInput("no files given")
    for path in paths:
        # Before any network traffic: detect() names the supported suffixes.
        if detect(path)[0] not in ("mrc", "tiff"):
            raise UnsupportedFormat(f"{path}: not an image file (MRC/MRCS/TIFF/EER)")
    layouts = _layouts(paths, fs)
    file_of = np.repeat(np.arange(len(layouts)), [f.n_frames for f in layouts])
    frame_of = np.concatenate([np.arange(f.n_frames) for f in layouts])
    return FrameStack(layouts, file_of, frame_of, settings, fs)


def _from_star(star: str, root, settings, fs) -> FrameStack:
    """The images a STAR file references (:func:`~empiarfs.pyapi.dataset.resolve_star`):
    particles ``N@stack`` as frames, micrographs or movies as all their frames."""
    from empiarfs.pyapi.dataset import place_path, resolve_star

    plan = resolve_star(star, root=root, get_fs=lambda: fs)
    plan.raise_unresolved()
    if not plan.refs:
        raise InvalidInput(f"{star}: no images (its {plan.columns[0]} column is empty)")
    paths = [place_path(r.place) for r in plan.refs]
    if all(r.frame is None for r in plan.refs):
        return _from_files(list(dict.fromkeys(paths)), settings, fs)
    order = {}
    for path in paths:
        order.setdefault(path, len(order))
    layouts = _layouts(list(order), fs)
    # Rows beyond their stack are known once the headers are read: named
    # as unresolvable references, as everywhere else.
    plan.check_frames({r.place: layouts[order[p]].n_frames for r, p in zip(plan.refs, paths)})
    plan.raise_unresolved()
    file_of = [order[place_path(r.place)] for r in plan.refs]
    frame_of = [r.frame for r in plan.refs]
    return FrameStack(layouts, file_of, frame_of, settings, fs)


def _layouts(paths: list, fs) -> list:
    """Each file's frame count, frame shape and dtype, from headers read in
    parallel; all files must have frames of one shape."""
    if len(paths) == 1:
        layouts = [_layout(paths[0], fs)]
    else:
        with ThreadPoolExecutor(min(_HEADER_THREADS, len(paths))) as pool:
            layouts = list(pool.map(lambda p: _layout(p, fs), paths))
    first = layouts[0]
    for other in layouts[1:]:
        if other.frame_shape != first.frame_shape:
            raise InvalidInput(f"frames differ in shape: {first.frame_shape} in {first.path}, "
                               f"{other.frame_shape} in {other.path}; select files of one "
                               "shape (pattern=, or a list of files)")
    return layouts


def _layout(path: str, fs) -> FileLayout:
    kind, compressed = detect(path)
    remote = fs if path.startswith(api.ARCHIVE_SCHEME) else None
    if kind == "mrc":
        head = api.load_mrc(path, header_only=True, fs=remote)
        shape = tuple(head.shape)
        frame_shape = shape if len(shape) == 2 else shape[1:]
        return FileLayout(path, head.n_frames, frame_shape, head.dtype)
    with api.open(path, fs=remote) as handle:
        if compressed:
            from empiarfs.formats.bz2 import decompress_to_spool

            with decompress_to_spool(handle, path) as plain:
                return _tiff_layout(plain, path)
        return _tiff_layout(handle, path)


def _tiff_layout(handle, path: str) -> FileLayout:
    # Page directories only: tifffile reads no strips until asarray().
    import tifffile

    handle.seek(0)
    try:
        with tifffile.TiffFile(handle, name=path) as tif:
            page = tif.pages[0]
            return FileLayout(path, len(tif.pages), tuple(page.shape), np.dtype(page.dtype))
    except (tifffile.TiffFileError, ValueError, OSError, IndexError) as exc:
        raise BadFile(f"{path}: not a readable TIFF file: {exc}", path=path) from exc


# ------------------------------------------------------------------- dask

def to_dask(source, imageset=None, *, pattern: Optional[str] = None,
            root: Optional[str] = None, frames_per_chunk: ChunkSpec = 1,
            settings: Optional[Settings] = None):
    """A lazy ``dask.array`` of frames: an image set, a folder, files or STAR particles.

    Parameters
    ----------
    source : str, int, os.PathLike or list
        One of:

        * an accession (``"EMPIAR-10002"``, ``10002``) with ``imageset``;
        * a folder: ``empiar://EMPIAR-10002/data`` (every MRC/TIFF file under
          it), ``empiar://EMPIAR-10002/imagesets/<name>``, or a local folder
          (a mount's);
        * one image file, or a list of them (local, ``EMPIAR-N/...`` or
          ``empiar://...`` paths);
        * a STAR file (local or archive) whose ``rlnImageName`` values
          ``N@stack.mrcs`` name particles: frame ``N - 1`` of each stack
          (a STAR file of micrographs or movies: all frames of each file).
    imageset : int or str, optional
        With an accession: the image set's index in ``entry.imagesets`` or
        its name.
    pattern : str, optional
        Glob selecting files of an image set or folder (file names when
        without ``/``; else paths relative to the entry root, or to a local
        folder).
    root : str, optional
        STAR files only: the directory its references are relative to
        (default: the STAR file's directory, then each one above it,
        nearest first, wherever the file exists; see
        :meth:`EmpiarDataset.from_star <empiarfs.pyapi.dataset.EmpiarDataset.from_star>`).
    frames_per_chunk : int or "file"
        Frames per Dask chunk (1: one task per frame), or ``"file"``: one
        chunk per file (best for ``.bz2`` files, which are decompressed
        from their start on every read, and for many small particles).
    settings : Settings, optional
        Archive URLs, cache directory, timeouts; default: those of
        :func:`empiarfs.configure` / :meth:`Settings.load`. Carried in the
        graph, so every worker process reads with the same settings.

    Returns
    -------
    dask.array.Array
        Shape ``(frames, ny, nx)`` (frames of volume stacks keep their 3
        axes), dtype the ``numpy.result_type`` of the files' dtypes in
        native byte order. Only headers have been read; each chunk reads
        its frames with :func:`empiarfs.load` when computed, through the
        worker's own EmpiarFS (or the builtin ``open`` for local paths).

    Raises
    ------
    MissingDependency
        dask is not installed (``pip install 'empiarfs[dask]'``).
    InvalidInput
        No files selected, frames of different shapes, an accession
        without an image set, or options that do not apply to the source.
    UnsupportedFormat
        A file that is not MRC/MRCS/TIFF/EER.
    NotFound, BadFile, RemoteError
        From listing the files or reading their headers; for a STAR file,
        also references that do not resolve (``BadFile`` when a value is
        malformed or names an image beyond its stack), listed in the message.
    """
    try:
        import dask.array as da
    except ImportError as exc:
        raise MissingDependency("empiarfs.to_dask needs dask: pip install 'empiarfs[dask]' "
                                "(dask[array] and distributed)", name="dask") from exc
    stack = frame_stack(source, imageset, pattern=pattern, root=root, settings=settings)
    chunks = (stack.chunks(frames_per_chunk),) + tuple((n,) for n in stack.frame_shape)
    return da.from_array(stack, chunks=chunks, name="empiar-frames-" + stack.__dask_tokenize__(),
                         meta=np.empty((0,) * stack.ndim, stack.dtype), asarray=False,
                         fancy=False, lock=False)
