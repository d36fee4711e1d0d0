"""The fsspec peer: ``fsspec.fuse.run`` over ``HTTPFileSystem`` with its
defaults (foreground, one FUSE thread). Run by the bench venv's python
(fsspec, aiohttp, fusepy), never by empiarfs's:
``python fsspec_peer.py <data URL>/ <mount point>``.

``fsspec.fuse.FUSEr`` as released cannot walk an HTTP autoindex tree, so
two things are changed here and nothing else (reads, sizes by HEAD,
fsspec's block cache all stay as released):

* a path is a directory when its parent's listing links it with a trailing
  slash (``HTTPFileSystem.info`` calls every URL a file, and a directory's
  page has no length, so ``stat`` of any directory failed with EIO);
* the listing's column-sort links (``?C=N;O=D``) are not entries.

The file system is made with fsspec's own ``use_listings_cache=True``
(off by default for HTTP): the first change asks for the parent's listing on
every ``stat``, and without the cache that would be one page download per
file. Listings are asked for with ``detail=True`` only, because
``HTTPFileSystem`` caches whichever form it was first asked for.

Threads stay off, as ``run`` defaults ("more stable"): with them on
(``python -m fsspec.fuse``'s default) the kernel's concurrent read-ahead
reads of one handle share one file object's seek and read, and ``cat`` of
an 8 MiB file returned wrong bytes from byte 5,636,097 on.
"""

from __future__ import annotations

import stat
import sys
import time
from errno import ENOENT

import fsspec
from fsspec.fuse import FUSEr, run
from fuse import FuseOSError


class HTTPTree(FUSEr):
    def _url(self, path: str) -> str:
        return "".join([self.root, path.lstrip("/")])

    def _entries(self, path: str) -> dict:
        try:
            listing = self.fs.ls(self._url(path), detail=True)
        except FileNotFoundError as exc:
            raise FuseOSError(ENOENT) from exc
        out = {}
        for entry in listing:
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name and not name.startswith("?"):
                out[name] = entry["type"]
        return out

    def _dir(self) -> dict:
        now = time.time()
        return {"st_mode": stat.S_IFDIR | 0o755, "st_size": 0, "st_nlink": 2, "st_uid": 0,
                "st_gid": 0, "st_atime": now, "st_mtime": now, "st_ctime": now}

    def getattr(self, path, fh=None):
        if path.strip("/") == "":
            return self._dir()
        parent, _, name = path.rstrip("/").rpartition("/")
        kind = self._entries(parent or "/").get(name)
        if kind is None:
            raise FuseOSError(ENOENT)
        if kind == "directory":
            return self._dir()
        return super().getattr(path, fh)

    def readdir(self, path, fh):
        return [".", ".."] + list(self._entries(path))


def main(argv: list[str]) -> int:
    url, mountpoint = argv
    fs = fsspec.filesystem("http", use_listings_cache=True)
    run(fs, url, mountpoint, foreground=True, threads=False, ops_class=HTTPTree)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
