"""fsspec protocol ``empiar://``: the archive for dask, xarray, zarr, pandas...

Registered through the ``fsspec.specs`` entry point, so without any import::

    import fsspec
    with fsspec.open("empiar://EMPIAR-10002/data/100_movie_gc.mrcs") as f:
        header = f.read(1024)

Paths are those of the mount (``EMPIAR-10002/data/...``, ``EMPIAR-10002/entry.json``);
bytes come through an :class:`~empiarfs.namespace.filesystem.EmpiarFS`, so they share the
block cache on disk with the mount and the Python API.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Optional

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from empiarfs.config import Settings
from empiarfs.errors import InvalidInput, NotFound, ReadOnly

log = logging.getLogger(__name__)

_TYPES = {"dir": "directory", "file": "file", "virtual": "file", "link": "link"}


class EmpiarFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over the EMPIAR archive.

    Parameters
    ----------
    settings : Settings, optional
        Archive URLs, cache directory, timeouts... Without it and without
        ``**options``, the default EmpiarFS of :mod:`empiarfs.pyapi.api` is used
        (one connection pool and cache per process).
    **options
        Settings overrides (``api_url``, ``data_url``, ``cache_dir``...),
        as fsspec storage options.

    Notes
    -----
    Links (``EMPIAR-N/imagesets/<name>``) are listed with ``type="link"``
    and ``destination``; walks do not follow them.
    """

    protocol = "empiar"
    root_marker = ""
    # EmpiarFS is thread-safe; one instance may serve every thread.
    async_impl = False

    def __init__(self, settings: Optional[Settings] = None, **options):
        storage = {k: v for k, v in options.items()
                   if k not in ("skip_instance_cache", "use_listings_cache",
                                "listings_expiry_time", "max_paths")}
        super().__init__(settings=settings, **options)
        self._settings = settings
        self._options = storage
        self._efs = None
        self._owned = False

    # ------------------------------------------------------------ internals

    @property
    def efs(self):
        """The :class:`~empiarfs.namespace.filesystem.EmpiarFS` behind this filesystem."""
        if self._efs is None:
            if self._settings is None and not self._options:
                from empiarfs.pyapi.api import default_fs

                self._efs = default_fs()
            else:
                from empiarfs.namespace.filesystem import EmpiarFS

                base = self._settings if self._settings is not None else Settings.load()
                try:
                    settings = base.replace(**self._options)
                except TypeError as exc:
                    raise InvalidInput(f"unknown empiar storage option: {exc}") from exc
                self._efs = EmpiarFS(settings, require_disk_cache=False)
                self._owned = True
        return self._efs

    def close(self) -> None:
        """Close the EmpiarFS this filesystem created (not a shared default)."""
        if self._efs is not None and self._owned:
            self._efs.close()
        self._efs = None

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("empiar://"):
            path = path[len("empiar://"):]
        elif path.startswith("empiar::"):
            path = path[len("empiar::"):]
        path = path.strip("/")
        head, sep, rest = path.partition("/")
        if head and head != ".empiarfs" and any(c.isdigit() for c in head):
            from empiarfs.remote.accession import normalize

            try:
                head = normalize(head)
            except InvalidInput:
                pass  # not an accession: left for the catalog to reject
        return head + sep + rest

    def _details(self, node) -> dict:
        info = {
            "name": node.path,
            "size": int(node.size),
            "type": _TYPES.get(node.kind, "other"),
            "mtime": node.mtime,
        }
        if node.info is not None:
            info["url"] = node.info.url
            if node.info.etag:
                info["etag"] = node.info.etag
        if node.kind == "link":
            info["destination"] = node.target
        return info

    def _follow(self, node, hops: int = 8):
        """The node a link points to (links are relative, within an entry)."""
        while node.kind == "link" and hops:
            base = node.path.rsplit("/", 1)[0]
            node = self.efs.stat(posixpath.normpath(f"{base}/{node.target}"))
            hops -= 1
        return node

    # ------------------------------------------------------------ interface

    def ls(self, path, detail=True, **kwargs):
        """List a directory (or a single file), fsspec style.

        Raises
        ------
        FileNotFoundError
            Nothing at ``path``.
        """
        path = self._strip_protocol(path)
        node = self.efs.stat(path)
        children = self.efs.listdir(path) if node.is_dir else [node]
        entries = [self._details(child) for child in children]
        entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def info(self, path, **kwargs):
        """Details of one path: name, size, type, mtime (, url, etag).

        Raises
        ------
        FileNotFoundError
            Nothing at ``path``.
        """
        return self._details(self.efs.stat(self._strip_protocol(path)))

    def exists(self, path, **kwargs):
        try:
            return self.efs.exists(self._strip_protocol(path))
        except (InvalidInput, NotFound):
            return False

    def cat_file(self, path, start=None, end=None, **kwargs):
        """Bytes ``[start, end)`` of a file (negative values count from the end).

        Raises
        ------
        FileNotFoundError
            Nothing at ``path``.
        IsADirectoryError
            ``path`` is a directory.
        """
        path = self._strip_protocol(path)
        node = self._follow(self.efs.stat(path))
        if node.is_dir:
            raise IsADirectoryError(f"{path}: is a directory")
        size = int(node.size)
        start = 0 if start is None else (max(0, size + start) if start < 0 else start)
        end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        if end <= start:
            return b""
        return self.efs.read_node(node, start, end - start)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        if mode != "rb":
            raise ReadOnly(f"empiar:// is read-only: cannot open {path} with mode {mode!r}")
        path = self._strip_protocol(path)
        node = self._follow(self.efs.stat(path))
        if node.is_dir:
            raise IsADirectoryError(f"{path}: is a directory")
        # The EmpiarFS block cache already caches and reads ahead, so by
        # default fsspec adds no second cache layer on top.
        return EmpiarFile(self, path, node, block_size=block_size or "default",
                          cache_type=kwargs.pop("cache_type", "none"),
                          cache_options=cache_options)

    def ukey(self, path):
        info = self.info(path)
        return f"{info['name']}:{info['size']}:{info.get('etag') or info['mtime']}"

    # Writes are refused, as on the mount.
    def _refuse(self, *args, **kwargs):
        raise ReadOnly("empiar:// is read-only")

    mkdir = makedirs = rm = rm_file = rmdir = mv = cp_file = put_file = touch = _refuse


class EmpiarFile(AbstractBufferedFile):
    """A file of :class:`EmpiarFileSystem`; ranges come from EmpiarFS."""

    def __init__(self, fs, path, node, **kwargs):
        self._node = node
        super().__init__(fs, path, mode="rb", size=int(node.size), **kwargs)

    def _fetch_range(self, start, end):
        return self.fs.efs.read_node(self._node, start, end - start)
