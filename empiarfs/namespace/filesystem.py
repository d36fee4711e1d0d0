"""The facade: catalog + block cache, with no FUSE in sight.

The FUSE operations, the Python API, fsspec and the CLI all go through
:class:`EmpiarFS`, so every path is read the same way: metadata from the
catalog, bytes from the block reader (memory, then disk, then one checked
range request per run of missing blocks).
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import tempfile
import threading
import time

from empiarfs.cache.disk import CacheLocked, DiskStore
from empiarfs.cache.memory import MemoryLRU
from empiarfs.cache.readahead import connections_for_link
from empiarfs.cache.reader import BlockReader, FileKey, Part, join_parts, part_of
from empiarfs.cache.stats import RecentErrors
from empiarfs.config import Settings
from empiarfs.errors import EmpiarfsError, InvalidInput, NotFound, RemoteError
from empiarfs.namespace.catalog import Catalog, Node
from empiarfs.namespace.metastore import MetaStore
from empiarfs.remote.archive import Archive
from empiarfs.remote.transport import Transport

log = logging.getLogger(__name__)


class CacheUnavailable(EmpiarfsError, OSError):
    """The cache directory cannot be created or written (a path under a
    regular file, a read-only filesystem, no permission)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cache directory {path} cannot be used ({reason}); choose another: "
                         "EMPIARFS_CACHE_DIR, cache_dir in the config file, or "
                         "--cache-dir of mount")
        self.path = path
        self.reason = reason

    def __str__(self):
        return self.args[0]


def check_cache_dir(path: str) -> None:
    """Create ``path`` if needed and prove that files can be made in it.

    A probe file rather than ``os.access``: root passes every mode check,
    yet still cannot write under a regular file or on a read-only mount.

    Raises
    ------
    CacheUnavailable
        If the directory cannot be created or written.
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CacheUnavailable(path, exc.strerror or str(exc)) from None


def _memory_only(exc: Exception) -> None:
    why = f"{exc.path} cannot be used ({exc.reason})" if isinstance(exc, CacheUnavailable) \
        else str(exc)
    log.warning("not using the disk cache: %s; reading through the memory cache only", why)


class EmpiarFS:
    """The whole archive as a read-only tree of :class:`~empiarfs.namespace.catalog.Node`.

    Parameters
    ----------
    settings : Settings, optional
        Defaults to :meth:`Settings.load` (config file and environment).
    require_disk_cache : bool
        Whether the disk cache is required (a cache directory is shared by
        every process on the node: the mount, Python API processes, Dask
        workers and the ``cache`` commands at once). When true (the mount, the CLI), a cache that cannot be used
        (not writable, held exclusively by another process, or used with
        another block size) is an error; when false (the Python API), this
        instance warns and runs with the memory cache only.
    previewer : callable, optional
        ``previewer(fs, directory) -> bytes``: a PNG of the mount-relative
        image-set directory ``directory`` (``EMPIAR-10002/data``), read
        through ``fs``. When given, every entry has ``previews/<image
        set>.png`` (the mount passes
        :func:`empiarfs.tools.preview.imageset_png`, which this layer may
        not import).

    Raises
    ------
    CacheLocked
        ``require_disk_cache`` is true and another process holds the cache
        exclusively or uses it with another block size.
    CacheUnavailable
        ``require_disk_cache`` is true and the cache directory cannot be
        created or written.
    """

    def __init__(self, settings: Settings | None = None, *, transport=None, archive=None,
                 require_disk_cache: bool = True, previewer=None):
        self.settings = settings or Settings.load()
        self.started = time.time()
        cache_dir = self.settings.cache_dir
        if cache_dir:
            # Checked first, so an unusable directory is one message, not a
            # warning from the metadata store and then a traceback.
            try:
                check_cache_dir(cache_dir)
            except CacheUnavailable as exc:
                if require_disk_cache:
                    raise
                _memory_only(exc)
                cache_dir = ""
        self.transport = transport or Transport(self.settings)
        self.archive = archive or Archive(self.settings, self.transport)
        self.meta = MetaStore(os.path.join(cache_dir, "metadata") if cache_dir else None)
        self.memory = MemoryLRU(self.settings.memory_cache)
        self.disk = None
        # The last distinct errors of FUSE operations, for stats.json.
        self.errors = RecentErrors()
        if cache_dir and self.settings.cache_size > 0:
            try:
                self.disk = self._open_disk(os.path.join(cache_dir, "blocks"))
            except (CacheLocked, CacheUnavailable) as exc:
                if require_disk_cache:
                    self.meta.close()
                    if archive is None:
                        self.archive.close()
                    if transport is None:
                        self.transport.close()
                    raise
                _memory_only(exc)
        self.reader = BlockReader(
            self._fetch, self.settings, self.memory, self.disk,
            connections=lambda: connections_for_link(self.transport.quickest_ttfb,
                                                     self.settings.parallel_per_file))
        render_preview = (lambda directory: previewer(self, directory)) if previewer else None
        self.catalog = Catalog(self.settings, self.archive, self.meta, stats_provider=self.stats,
                               render_preview=render_preview,
                               on_first_bytes=lambda info, data: self.reader.keep_first_bytes(
                                   FileKey(info.url, info.fingerprint), data))
        self._closed = False
        self._lock = threading.Lock()
        # What the mount layer set on the kernel's side, for stats.json.
        self.mount_state: dict = {}

    def _open_disk(self, directory: str) -> DiskStore:
        # Shared: other processes on this node may use the directory too.
        try:
            return DiskStore(directory, self.settings.cache_size,
                             block_size=self.settings.block_size)
        except CacheLocked:
            raise
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise CacheUnavailable(directory, reason) from None

    # ------------------------------------------------------------ namespace

    def stat(self, path: str) -> Node:
        """The node at ``path`` (mount-relative, e.g. ``EMPIAR-10002/data/x.mrcs``).

        Raises
        ------
        NotFound
            Nothing is at ``path``.
        RemoteError
            The archive had to be asked and could not answer.
        """
        node = self.catalog.lookup(path)
        if node is None:
            raise NotFound(f"{path}: no such file or directory in EMPIAR", path=path)
        return node

    def exists(self, path: str) -> bool:
        try:
            return self.catalog.lookup(path) is not None
        except InvalidInput:
            return False

    def listdir(self, path: str) -> list[Node]:
        """Children of a directory.

        Raises
        ------
        NotFound
            ``path`` is not a directory.
        """
        return self.catalog.listdir(path)

    def readlink(self, path: str) -> str:
        node = self.stat(path)
        if node.kind != "link":
            raise InvalidInput(f"{path}: not a symbolic link")
        return node.target

    def entry(self, accession):
        """The :class:`~empiarfs.model.Entry` of an accession."""
        return self.catalog.entry(accession)

    # ------------------------------------------------------------------ data

    def read(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the file at ``path`` (short at EOF)."""
        return self.read_node(self.stat(path), offset, size)

    def read_node(self, node: Node, offset: int, size: int, *, readahead: bool = True) -> bytes:
        """Bytes ``[offset, offset + size)`` of a file node; ``readahead=False``
        for reads that know exactly what they want (a prefetch of named
        frames) and must not start a sequential stream."""
        return join_parts(self.read_node_parts(node, offset, size, readahead=readahead))

    def read_node_parts(self, node: Node, offset: int, size: int, *,
                        readahead: bool = True) -> list[Part]:
        """:meth:`read_node` as ``(block, lo, hi)`` parts, no byte copied
        (see :meth:`BlockReader.read_parts`)."""
        if offset < 0 or size < 0:
            raise InvalidInput("negative offset or size")
        if node.kind == "virtual":
            data = self.catalog.content(node)
            return [part_of(data, offset, size)]
        if node.kind != "file":
            raise IsADirectoryError(f"{node.path}: not a regular file")
        if offset >= node.size or size == 0:
            return []
        return self.reader.read_parts(self.file_key(node), offset, min(size, node.size - offset),
                                      readahead=readahead)

    def file_key(self, node: Node) -> FileKey:
        return FileKey(node.info.url, node.info.fingerprint)

    def open(self, path: str) -> "RemoteFile":
        """A seekable read-only binary file object over ``path``."""
        node = self.stat(path)
        if node.is_dir:
            raise IsADirectoryError(f"{path}: is a directory")
        if node.kind == "link":
            base = path.rstrip("/").rsplit("/", 1)[0]
            return self.open(os.path.normpath(f"{base}/{node.target}"))
        return RemoteFile(self, node)

    def _fetch(self, url: str, start: int, end: int, fingerprint) -> bytes:
        if self.settings.offline:
            raise RemoteError(f"offline: {url} bytes {start}-{end} are not cached", url=url)
        # A fetch never outlives a read's deadline: abandoned fetches would
        # otherwise hold pool threads and connections (a 1 byte/s server).
        return self.transport.fetch_range(url, start, end, expect=fingerprint, buffer=True,
                                          deadline=time.monotonic() + self.settings.deadline)

    # ------------------------------------------------------------- metadata

    def xattr(self, node: Node, name: str) -> bytes | None:
        """One extended attribute, computing only what it needs."""
        if node.kind == "link":
            return None   # see xattr_names
        if name == "user.empiarfs.cache":
            return self._cache_state(node).encode() if node.kind == "file" else None
        if name.startswith("user.empiar.") and name != "user.empiar.accession":
            return self._imageset_xattrs(node).get(name)
        return self._basic_xattrs(node).get(name)

    def xattr_names(self, node: Node) -> list[str]:
        """The names of a node's extended attributes, without their values.

        Links (the image-set symlinks) have none: Linux answers ``user.*``
        reads on a symlink with "No such attribute" itself, so any name
        listed would be one that cannot be read (``getfattr -h -d``). The
        link's target has them.
        """
        if node.kind == "link":
            return []
        names = list(self._basic_xattrs(node))
        if node.kind == "file":
            names.append("user.empiarfs.cache")
        return names + list(self._imageset_xattrs(node))

    def _basic_xattrs(self, node: Node) -> dict[str, bytes]:
        attrs: dict[str, str] = {}
        if node.accession:
            attrs["user.empiar.accession"] = node.accession
        if node.info is not None:
            attrs["user.empiarfs.url"] = node.info.url
            attrs["user.empiarfs.ftp_url"] = self.archive.file_url(
                node.accession, node.info.path, scheme="ftp")
        return {k: v.encode() for k, v in attrs.items()}

    def _imageset_xattrs(self, node: Node) -> dict[str, bytes]:
        imageset = self._imageset_of(node)
        if imageset is None:
            return {}
        attrs = {"user.empiar.imageset": imageset.name}
        for key in ("category", "data_format", "header_format", "voxel_type",
                    "pixel_width", "pixel_height", "frames_per_image"):
            value = getattr(imageset, key)
            if value is not None and value != "":
                attrs[f"user.empiar.{key}"] = str(value)
        return {k: v.encode() for k, v in attrs.items()}

    def _imageset_of(self, node: Node):
        if not node.accession or node.info is None:
            return None
        try:
            entry = self.catalog.entry(node.accession)
        except (NotFound, RemoteError):
            return None
        best = None
        for imageset in entry.imagesets:
            d = imageset.directory
            if d and (node.info.path == d or node.info.path.startswith(d + "/")):
                if best is None or len(d) > len(best.directory):
                    best = imageset
        return best

    def _cache_state(self, node: Node) -> str:
        if self.disk is None or node.size == 0:
            return "none"
        ranges = self.disk.cached_ranges(node.info.url)
        cached = sum(end - start for start, end in ranges)
        cached = min(cached, node.size)
        return f"{cached}/{node.size} bytes cached"

    def link_state(self) -> tuple:
        """``(quickest_ttfb, faults)``: how soon replies can start (None
        before the first) and a running count of what went wrong on the way
        (stalls, retries, hedges, reads that failed or hit the deadline)."""
        faults = (self.transport.stats.total("stalls", "retries", "hedges")
                  + self.reader.stats.total("errors", "deadlines"))
        return self.transport.quickest_ttfb, faults

    def stats(self) -> dict:
        """Counters: requests, bytes fetched, hits, cache usage."""
        disk = self.disk.info() if self.disk is not None else {}
        return {
            "uptime": round(time.time() - self.started, 1),
            "settings": {
                "api_url": self.settings.api_url,
                "data_url": self.settings.data_url,
                "ftp_url": self.settings.ftp_url,
                "cache_dir": self.settings.cache_dir,
                "block_size": self.settings.block_size,
                "offline": self.settings.offline,
            },
            "network": self.transport.stats.snapshot(),
            "reader": self.reader.stats.snapshot(),
            "memory_cache": {"bytes_used": self.memory.bytes_used,
                             "max_bytes": self.memory.max_bytes},
            "disk_cache": disk,
            "mount": dict(self.mount_state),
            "last_errors": self.errors.snapshot(),
        }

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.reader.close()
        self.archive.close()
        self.transport.close()
        self.meta.close()
        if self.disk is not None:
            self.disk.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CatalogListing:
    """An :class:`EmpiarFS`'s catalog as the ``listdir(accession, relpath)``
    of :meth:`empiarfs.remote.archive.Archive.listdir`, so selection walks
    and STAR resolution share the mount's persisted listing cache."""

    def __init__(self, fs: "EmpiarFS"):
        self._fs = fs

    def listdir(self, accession: str, relpath: str = "") -> list:
        path = f"{accession}/{relpath}" if relpath else accession
        return [n.info for n in self._fs.listdir(path)
                if n.info is not None and n.kind in ("file", "dir")]


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file object over one archive file."""

    def __init__(self, fs: EmpiarFS, node: Node):
        super().__init__()
        self._fs = fs
        self._node = node
        self._pos = 0
        self.name = node.path
        self.size = node.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence: {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._fs.read_node(self._node, self._pos, len(view))
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._fs.read_node(self._node, self._pos, max(0, self.size - self._pos))
        self._pos += len(data)
        return data
