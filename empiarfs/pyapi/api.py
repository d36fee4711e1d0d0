"""The lazy Python API: a few verbs that open EMPIAR data as arrays and tables.

Every verb takes a *path*, which is one of:

* a local path that exists, for example on an empiarfs mount
  (``/mnt/empiar/EMPIAR-10002/data/100_movie_gc.mrcs``): opened with the
  builtin :func:`open`, so the mount's block cache serves the bytes;
* an archive path, ``EMPIAR-10002/data/100_movie_gc.mrcs`` or
  ``empiar://EMPIAR-10002/data/100_movie_gc.mrcs``: read through an
  :class:`~empiarfs.namespace.filesystem.EmpiarFS`, with the same on-disk block cache as the
  mount (``Settings.cache_dir``), so no mount is needed;
* an already open binary file object (then ``name=`` tells the format).

Archive paths use one module-level :class:`EmpiarFS`, created on first use
from :meth:`Settings.load` (or from :func:`configure`); each verb also
takes ``fs=`` to use a specific one. It uses the disk block cache in
``Settings.cache_dir`` when no other process holds it; while a mount owns
that cache, or when the directory cannot be written, it logs one warning
and runs on its memory cache (read through the mount's paths instead to
share the mount's cache). A forked child process (a DataLoader
worker) gets its own, as sockets and threads do not survive a fork.
"""

from __future__ import annotations

import atexit
import builtins
import functools
import io
import logging
import os
import re
import threading
from typing import Optional

from empiarfs.config import Settings
from empiarfs.errors import InvalidInput, NotFound
from empiarfs.formats import detect
from empiarfs.formats.mrc import FrameSpec, MrcData

log = logging.getLogger(__name__)

ARCHIVE_SCHEME = "empiar://"
_ARCHIVE_PATH = re.compile(r"^/?EMPIAR-\d+(/|$)", re.IGNORECASE)
# Read size of the buffered wrapper around remote files: large enough that
# header parsers' many small reads become few block-cache lookups.
_REMOTE_BUFFER = 64 * 1024

# ----------------------------------------------------------- default EmpiarFS

_lock = threading.Lock()
_default = None          # EmpiarFS
_default_pid = None      # process that created it
_settings: Optional[Settings] = None


def configure(settings: Optional[Settings] = None, **overrides) -> Settings:
    """Set the settings used by the default :class:`EmpiarFS`.

    The current default (if any) is closed; the next archive read creates a
    new one with these settings.

    Parameters
    ----------
    settings : Settings, optional
        Base settings; :meth:`Settings.load` (config file, environment) if
        omitted.
    **overrides
        Setting names and values applied on top, e.g. ``cache_dir=...``,
        ``api_url=...``, ``data_url=...``.

    Returns
    -------
    Settings
        The settings now in effect.

    Raises
    ------
    InvalidInput
        For an unknown setting name or a malformed value.
    """
    global _settings
    base = settings if settings is not None else Settings.load()
    try:
        chosen = base.replace(**overrides) if overrides else base
    except TypeError as exc:
        raise InvalidInput(f"unknown setting: {exc}") from exc
    with _lock:
        old = _take_default()
        _settings = chosen
    if old is not None:
        old.close()
    return chosen


def default_fs():
    """The module-level :class:`~empiarfs.namespace.filesystem.EmpiarFS`, created on first use.

    Thread-safe; a process forked after its creation gets a fresh one.

    Returns
    -------
    empiarfs.namespace.filesystem.EmpiarFS

    Raises
    ------
    InvalidInput
        If the settings from the config file or environment are malformed.
    """
    global _default, _default_pid
    with _lock:
        if _default is None or _default_pid != os.getpid():
            from empiarfs.namespace.filesystem import EmpiarFS

            # A default inherited through fork is not closed here: its
            # threads and sockets belong to the parent process.
            _default = EmpiarFS(_settings if _settings is not None else Settings.load(),
                                require_disk_cache=False)
            _default_pid = os.getpid()
        return _default


def close() -> None:
    """Close the default :class:`EmpiarFS` (a later read opens a new one).
    Also run at interpreter exit, so queued disk-cache writes land."""
    with _lock:
        old = _take_default()
    if old is not None:
        old.close()


atexit.register(close)


def _take_default():
    global _default, _default_pid
    old = _default if _default_pid == os.getpid() else None
    _default, _default_pid = None, None
    return old


# ------------------------------------------------------------ path resolution

def archive_path(path) -> Optional[str]:
    """The mount-relative archive path for ``path``, or ``None`` if ``path``
    is a local file.

    ``empiar://EMPIAR-10002/data/x`` and ``EMPIAR-10002/data/x`` (when no
    local file of that name exists) give ``EMPIAR-10002/data/x``.

    Raises
    ------
    InvalidInput
        For an ``empiar://`` path without a valid accession, or with ``..``.
    """
    from empiarfs.namespace.select import split_target

    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith(ARCHIVE_SCHEME):
        rest = text[len(ARCHIVE_SCHEME):]
    elif os.path.exists(text):
        return None
    elif _ARCHIVE_PATH.match(text):
        rest = text
    else:
        return None
    acc, rel = split_target(rest)
    return f"{acc}/{rel}" if rel else acc


def open(path, *, fs=None):  # noqa: A001  (the verb mirrors builtins.open)
    """Open any file, local or in the archive, as a seekable binary file.

    Parameters
    ----------
    path : str, os.PathLike
        A local/mount path, ``EMPIAR-N/...`` or ``empiar://EMPIAR-N/...``.
    fs : EmpiarFS, optional
        Read archive paths through this instead of the default.

    Returns
    -------
    io.BufferedReader
        Read-only and seekable; only the byte ranges read are fetched.
        Compressed files (``.bz2``) are returned as stored, not decompressed.

    Raises
    ------
    NotFound
        No such local file, entry or archive file (a ``FileNotFoundError``).
    IsADirectoryError
        The path is a directory.
    RemoteError
        The archive could not be reached.
    """
    remote = archive_path(path)
    if remote is None:
        local = os.fspath(path)
        if not os.path.exists(local):
            raise NotFound(
                f"{local}: no such local file; archive paths look like "
                "EMPIAR-10002/data/x.mrcs or empiar://EMPIAR-10002/data/x.mrcs",
                path=str(local))
        if os.path.isdir(local):
            raise IsADirectoryError(f"{local}: is a directory")
        return builtins.open(local, "rb")
    raw = (fs or default_fs()).open(remote)
    return io.BufferedReader(raw, buffer_size=_REMOTE_BUFFER)


def _is_file(obj) -> bool:
    return hasattr(obj, "read") and hasattr(obj, "seek")


def _label(path, name) -> str:
    """The name a format is detected from: ``name=``, the path, or a file
    object's ``name``/``path`` attribute (fsspec files carry ``path``)."""
    if name:
        return str(name)
    if not _is_file(path):
        return str(os.fspath(path))
    for attr in ("name", "path"):
        value = getattr(path, attr, None)
        if isinstance(value, str) and value:
            return value
    raise InvalidInput("cannot tell the format of an unnamed file object: pass name='x.mrcs'")


class _Source:
    """An opened input: the file object, its name, and whether we own it.

    ``random_access``: the caller reads selected parts (frames, pages), so a
    file we open ourselves is advised POSIX_FADV_RANDOM: the kernel then
    reads just those bytes instead of reading ahead of them (through a
    mount, read-ahead is network traffic: 4 of 12 frames of a 3 MiB stack
    fetched 1.3 MiB without the advice, 2.8 MiB with kernel_readahead 1M).
    """

    def __init__(self, path, fs, name, random_access: bool = False):
        self.name = _label(path, name)
        if _is_file(path):
            self.file, self.owned = path, False
        else:
            self.file, self.owned = open(path, fs=fs), True
            if random_access:
                _advise_random(self.file)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.owned:
            self.file.close()


def _advise_random(file) -> None:
    try:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass  # archive file objects and platforms without fadvise: no kernel read-ahead anyway


def _kind(path, name, expected: Optional[str] = None) -> tuple[str, bool]:
    label = _label(path, name)
    kind, compressed = detect(label)
    if expected and kind != expected:
        from empiarfs.errors import UnsupportedFormat

        raise UnsupportedFormat(f"{label}: is a {kind.upper()} file, not {expected.upper()} "
                                f"(use empiarfs.load() to pick the reader by suffix)")
    return kind, compressed


# ---------------------------------------------------------------------- verbs

def load_mrc(path, *, frames: FrameSpec = None, header_only: bool = False, fs=None,
             name: Optional[str] = None) -> MrcData:
    """Read an MRC/MRCS file's header and the requested frames only.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        Local/mount path, ``EMPIAR-N/...``, ``empiar://EMPIAR-N/...``, or an
        open seekable file.
    frames : None, int, slice or sequence of int
        Sections along the first axis (movie frames, stack particles); all if
        ``None``. An int drops the frame axis. Only these frames' bytes are read.
    header_only : bool
        Read just the 1024-byte header and the extended header.
    fs : EmpiarFS, optional
        For archive paths; the default EmpiarFS otherwise.
    name : str, optional
        File name used for the format check and messages (file objects).

    Returns
    -------
    empiarfs.formats.mrc.MrcData
        ``.data`` (numpy array in the file's byte order, ``None`` with
        ``header_only``), ``.header`` (numpy record), ``.extended_header``,
        ``.voxel_size``, ``.shape`` (of the whole file), ``.n_frames``.

    Raises
    ------
    NotFound
        No such file or entry.
    UnsupportedFormat
        Not an MRC name, or an MRC mode without a numpy type (3, 101).
    BadFile
        Corrupt or truncated header or data.
    InvalidInput
        A frame index out of range.
    RemoteError
        The archive could not be reached.

    Notes
    -----
    ``x.mrc.bz2``: once the file's bzip2 block index is known (kept in the
    cache directory after a pass that read most of the file, or built by
    ``empiarfs cache prefetch --index``), a frame costs only the bzip2
    blocks that hold it. Before that, reaching frame ``n`` decompresses
    every byte before it, but nothing after the last frame requested.
    """
    from empiarfs.formats.mrc import read_mrc

    return _read_image(path, fs, name, "mrc",
                       functools.partial(read_mrc, frames=frames, header_only=header_only),
                       selective=header_only or frames is not None)


def load_tiff(path, *, pages: FrameSpec = None, fs=None, name: Optional[str] = None):
    """Read selected pages of a TIFF or EER file.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        As for :func:`load_mrc`.
    pages : None, int, slice or sequence of int
        Pages (frames) to decode; all if ``None``. An int returns one 2D page.
    fs : EmpiarFS, optional
        For archive paths.
    name : str, optional
        File name for file objects.

    Returns
    -------
    empiarfs.formats.tiff.TiffData
        ``.data`` (numpy array), ``.pages``, ``.n_pages``, ``.compression``.

    Raises
    ------
    NotFound
        No such file or entry.
    UnsupportedFormat
        Not a TIFF/EER name.
    MissingDependency
        EER pages without the ``imagecodecs`` package (an ``ImportError``).
    BadFile
        tifffile cannot parse the file.
    InvalidInput
        A page index out of range.
    RemoteError
        The archive could not be reached.

    Notes
    -----
    ``x.tiff.bz2``: the first read decompresses the whole file once, in
    parallel, to build its bzip2 block index (kept in the cache directory);
    from then on a page costs only the bzip2 blocks that hold its
    directory and its strips.
    """
    from empiarfs.formats.tiff import read_tiff

    return _read_image(path, fs, name, "tiff", functools.partial(read_tiff, pages=pages),
                       selective=pages is not None, build_index=True)


def load_eer(path, *, frames: FrameSpec = None, grouping: int = 1, upsampling: int = 1,
             fs=None, name: Optional[str] = None):
    """Read selected frames, or fractions of summed frames, of an EER movie.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        As for :func:`load_mrc`; ``.eer`` (or ``.eer.bz2``).
    frames : None, int, slice or sequence of int
        Detector frames (``grouping=1``) or fractions to decode; all if
        ``None``. An int drops the first axis. Only the page directories up
        to the last frame needed and those frames' strips are read.
    grouping : int
        Sum this many consecutive detector frames per fraction, as RELION's
        ``--eer_grouping``; frames after the last whole fraction are dropped.
    upsampling : {1, 2, 4}
        1: events per physical pixel (4K on a Falcon 4); 2 or 4: on the 8K or
        16K super-resolution grid.
    fs : EmpiarFS, optional
        For archive paths.
    name : str, optional
        File name for file objects.

    Returns
    -------
    empiarfs.formats.eer.EerData
        ``.data`` (``uint8`` event counts, or ``uint16`` sums when grouping),
        ``.frames``, ``.detector_frames``, ``.n_frames`` (when counted),
        ``.grouping``, ``.upsampling``, ``.compression``, ``.metadata``.

    Raises
    ------
    NotFound
        No such file or entry.
    UnsupportedFormat
        Not a TIFF/EER name.
    MissingDependency
        ``imagecodecs`` missing, or too old for ``upsampling`` > 1.
    BadFile
        Not an EER movie, or a frame that does not decode.
    InvalidInput
        A frame index out of range, a bad ``grouping`` or ``upsampling``.
    RemoteError
        The archive could not be reached.
    """
    from empiarfs.formats.eer import check_options, read_eer

    check_options(grouping, upsampling)
    return _read_image(path, fs, name, "tiff",
                       functools.partial(read_eer, frames=frames, grouping=grouping,
                                         upsampling=upsampling),
                       selective=frames is not None, build_index=True, unbuffered=True)


def _read_image(path, fs, name, kind: str, read, *, selective: bool, build_index: bool = False,
                unbuffered: bool = False):
    """``read(file, name=...)`` over ``path`` (a ``kind`` file, else
    ``UnsupportedFormat``). ``x.<kind>.bz2`` is read through
    :func:`_random_bz2` (``build_index``: build its block index on the first
    read); a plain file as opened, or under our read buffer (``unbuffered``).
    ``selective``: only parts are read, so a plain file gets random-access
    advice."""
    _, compressed = _kind(path, name, kind)
    with _Source(path, fs, name, random_access=selective and not compressed) as src:
        if compressed:
            with _random_bz2(path, fs, src, build=build_index) as stream:
                return read(stream.file, name=src.name)
        return read(_unbuffered(src) if unbuffered else src.file, name=src.name)


def _unbuffered(src: "_Source"):
    """The archive file under our read buffer: page-directory walks make
    many small reads far apart, and through the buffer each would fetch
    a whole buffer's worth instead of the block(s) it touches."""
    from empiarfs.namespace.filesystem import RemoteFile

    raw = getattr(src.file, "raw", None)
    return raw if src.owned and isinstance(raw, RemoteFile) else src.file


def _random_bz2(path, fs, src: "_Source", build: bool = False):
    """A :class:`~empiarfs.formats.bz2.RandomBz2` over ``src``, with the block
    index kept under the cache directory in effect, keyed by the file's
    URL and version (archive and mount paths) or local path and mtime."""
    from empiarfs.formats.bz2 import RandomBz2
    from empiarfs.formats.bz2_index import IndexStore, key_for_local, key_for_remote

    key = None
    remote = archive_path(path) if not _is_file(path) else None
    if remote is not None:
        efs = fs or default_fs()
        node = efs.stat(remote)
        settings = efs.settings
        if node.info is not None:
            key = key_for_remote(node.info.url, node.info.fingerprint.key())
    else:
        settings = _settings if _settings is not None else Settings.load()
        if not _is_file(path):
            local = os.fspath(path)
            try:
                # On a mount: the archive's URL and version, so the index is
                # shared with empiar:// reads and `cache prefetch --index`.
                url = os.getxattr(local, "user.empiarfs.url").decode()
                st = os.stat(local)
                key = key_for_remote(url, f"{st.st_size}:{int(st.st_mtime)}")
            except (AttributeError, OSError, UnicodeDecodeError):
                try:
                    key = key_for_local(local)
                except OSError:
                    key = None
    store = IndexStore.in_cache_dir(settings.cache_dir)
    return RandomBz2(src.file, store=store, key=key, build=build, name=src.name)


def load_star(path, *, always_dict: bool = False, fs=None, name: Optional[str] = None):
    """Read a STAR file into pandas DataFrames (via starfile).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        As for :func:`load_mrc`.
    always_dict : bool
        Return ``{block_name: DataFrame}`` even for a single block.
    fs : EmpiarFS, optional
        For archive paths.
    name : str, optional
        File name for file objects.

    Returns
    -------
    pandas.DataFrame or dict
        As :func:`starfile.read` returns it: one DataFrame when the file has
        a single data block, else ``{block_name: DataFrame}`` (key/value
        blocks come back as dicts).

    Raises
    ------
    NotFound
        No such file or entry.
    UnsupportedFormat
        Not a STAR name.
    BadFile
        starfile cannot parse the contents.
    RemoteError
        The archive could not be reached.
    """
    from empiarfs.formats.star import read_star

    _, compressed = _kind(path, name, "star")
    with _Source(path, fs, name) as src:
        if compressed:
            from empiarfs.formats.bz2 import open_bz2

            with open_bz2(src.file) as stream:
                return read_star(stream, always_dict=always_dict, name=src.name)
        return read_star(src.file, always_dict=always_dict, name=src.name)


def load(path, *, frames: FrameSpec = None, fs=None, name: Optional[str] = None,
         eer_grouping: int = 1, eer_upsampling: int = 1):
    """Load a file as data, picking the reader from its suffix.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        As for :func:`load_mrc`.
    frames : None, int, slice or sequence of int
        Frames of an MRC/MRCS or EER file (fractions of an EER file when
        ``eer_grouping`` > 1) or pages of a TIFF file; ignored (must be
        ``None``) for STAR.
    fs : EmpiarFS, optional
        For archive paths.
    name : str, optional
        File name for file objects.
    eer_grouping, eer_upsampling : int
        For ``.eer`` files: frames summed per fraction, and 1, 2 or 4 for
        the 4K/8K/16K grid (see :func:`load_eer`).

    Returns
    -------
    numpy.ndarray or pandas.DataFrame or dict
        The array of an MRC/MRCS/TIFF/EER file (use :func:`load_mrc` /
        :func:`load_tiff` for headers and metadata), or what
        :func:`load_star` returns.

    Raises
    ------
    UnsupportedFormat
        Suffix not one of .mrc .mrcs .st .ali .rec .map .star .tif .tiff .eer
        (optionally + .bz2); the message lists them.
    InvalidInput
        ``frames`` given for a STAR file, or out of range; EER options for a
        file that is not EER.
    NotFound, BadFile, MissingDependency, RemoteError
        As for the format's own verb.
    """
    from empiarfs.formats.eer import is_eer_name

    kind, _ = _kind(path, name)
    if kind == "tiff" and is_eer_name(_label(path, name)):
        return load_eer(path, frames=frames, grouping=eer_grouping, upsampling=eer_upsampling,
                        fs=fs, name=name).data
    if (eer_grouping, eer_upsampling) != (1, 1):
        raise InvalidInput("eer_grouping= and eer_upsampling= apply to .eer files only")
    if kind == "mrc":
        return load_mrc(path, frames=frames, fs=fs, name=name).data
    if kind == "tiff":
        return load_tiff(path, pages=frames, fs=fs, name=name).data
    if frames is not None:
        raise InvalidInput("frames= applies to image files, not STAR tables")
    return load_star(path, fs=fs, name=name)


# ---------------------------------------------------------------------- entries

class EntryView:
    """An EMPIAR entry: its metadata plus file selection and loading.

    Attribute access falls through to the :class:`~empiarfs.model.Entry`
    (``title``, ``authors``, ``doi``, ``imagesets``, ``emdb_refs``,
    ``citations``...).
    """

    def __init__(self, model, fs):
        self.model = model
        self._fs = fs

    def __getattr__(self, attr):
        if attr.startswith("_") or attr == "model":
            raise AttributeError(attr)
        return getattr(self.model, attr)

    def __repr__(self):
        return f"EntryView({self.model.accession!r}, title={self.model.title!r})"

    @property
    def cross_references(self) -> dict:
        """Related records by database: ``{"EMDB": (...), "PDB": (...), ...}``."""
        m = self.model
        return {"EMDB": m.emdb_refs, "PDB": m.related_pdb_entries, "EMPIAR": m.empiar_refs,
                "BioStudies": m.biostudies_refs, "IDR": m.idr_refs}

    def path(self, relpath: str) -> str:
        """Archive path of a file of this entry: ``"EMPIAR-N/" + relpath``."""
        return f"{self.model.accession}/{relpath.lstrip('/')}"

    def files(self, pattern: Optional[str] = None, *, regex: Optional[str] = None,
              recursive: bool = True, under: str = "") -> list[str]:
        """Relative paths of the entry's files, selected by glob or regex.

        Parameters
        ----------
        pattern : str, optional
            Glob over paths relative to the entry root (``data/*.mrcs``;
            ``**`` crosses directories); without ``/`` it matches file names
            at any depth (``*.star``). All files if neither this nor
            ``regex`` is given.
        regex : str, optional
            :func:`re.search` over the relative path instead of a glob.
        recursive : bool
            Descend into subdirectories.
        under : str
            Start from this directory (relative to the entry root).

        Returns
        -------
        list of str
            Sorted paths relative to the entry root (``data/100_movie_gc.mrcs``);
            pass them to :meth:`open`/:meth:`load` or prefix with
            :meth:`path`.

        Raises
        ------
        InvalidInput
            Both ``pattern`` and ``regex``, or a malformed pattern.
        NotFound
            ``under`` does not exist.
        RemoteError
            The archive could not be reached.
        """
        from empiarfs.namespace.filesystem import CatalogListing
        from empiarfs.namespace.select import Selector, walk

        if pattern and regex:
            raise InvalidInput("give either a glob pattern or regex=, not both")
        selector = Selector.from_options(glob=pattern, regex=regex)
        listing = CatalogListing(self._fs)
        return [info.path for info in walk(listing, self.model.accession, under, selector,
                                            recursive=recursive)]

    def open(self, relpath: str):
        """:func:`empiarfs.open` of a file of this entry."""
        return open(self.path(relpath), fs=self._fs)

    def load(self, relpath: str, **kwargs):
        """:func:`empiarfs.load` of a file of this entry (same keywords)."""
        return load(self.path(relpath), fs=self._fs, **kwargs)

    def to_lambda_ber(self):
        """The entry as a lambda-ber record (:mod:`empiarfs.export.lambda_ber`).

        Raises
        ------
        MissingDependency
            If the exporter module is not available in this installation.
        """
        try:
            from empiarfs.export.lambda_ber import entry_to_lambda_ber
        except ImportError as exc:
            from empiarfs.errors import MissingDependency

            raise MissingDependency(f"lambda-ber export is unavailable: {exc}") from exc
        return entry_to_lambda_ber(self.model)


def entry(accession, *, fs=None) -> EntryView:
    """Metadata of an EMPIAR entry, with file selection and loading.

    Parameters
    ----------
    accession : str or int
        ``"EMPIAR-10002"``, ``"10002"`` or ``10002``.
    fs : EmpiarFS, optional
        Defaults to the module-level EmpiarFS.

    Returns
    -------
    EntryView
        ``.title``, ``.authors``, ``.doi``, ``.imagesets`` (each with
        ``name``, ``category``, ``directory``, ``pixel_width``...),
        ``.cross_references``, ``.files()``, ``.load()``, ``.to_lambda_ber()``.

    Raises
    ------
    InvalidInput
        Not an accession.
    NotFound
        The archive has no such entry.
    RemoteError
        The archive could not be reached.
    """
    from empiarfs.remote.accession import normalize

    fs = fs or default_fs()
    return EntryView(fs.entry(normalize(accession)), fs)
