"""The one rule for paths inside the archive: no path climbs out of its
entry.

Every path a user, a STAR file, the API or the kernel hands to empiarfs
passes through here before it becomes a URL, a mount node or a file name
on disk: empty and ``.`` segments are dropped (EMPIAR's own URLs carry
``10934//data``), and ``..`` segments, NUL and other control characters are
refused (no EMPIAR name has them, and a listing that offers one is skipped
as unsafe by :mod:`empiarfs.remote.listing`).

A leaf module: imports only :mod:`empiarfs.errors`.
"""

from __future__ import annotations

from empiarfs.errors import InvalidInput


def path_parts(path) -> list[str]:
    """The segments of a slash-separated path: ``"/EMPIAR-1//data/./x"``
    -> ``["EMPIAR-1", "data", "x"]``. A leading ``/`` is allowed (mount
    paths are absolute); see :func:`clean_relpath` for entry-relative paths.

    Raises
    ------
    InvalidInput
        On ``..`` segments, NUL or other control characters.
    """
    text = "" if path is None else str(path)
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidInput(f"path contains a NUL or control character: {text!r}")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidInput(f"'..' is not allowed in archive paths: {text!r}")
    return parts


def clean_relpath(relpath) -> str:
    """Validate a path relative to an entry root: ``"data//a b/"`` ->
    ``"data/a b"``; ``""`` is the entry root.

    Raises
    ------
    InvalidInput
        On absolute paths (a caller holding EMPIAR's ``/data``-style
        directory fields strips the slash on purpose), ``..`` segments, NUL
        or other control characters.
    """
    text = "" if relpath is None else str(relpath)
    if text.startswith("/"):
        raise InvalidInput(f"path must be relative to the entry root, not absolute: {text!r}")
    return "/".join(path_parts(text))
