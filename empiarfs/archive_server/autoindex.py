"""Apache 2.4 ``mod_autoindex`` pages as ftp.ebi.ac.uk serves them.

FancyIndexing + HTMLTable + ``NameWidth=*``, HTML 3.2 DOCTYPE (the markup of
the Apache 2.4 build behind ftp.ebi.ac.uk, docs/empiar.md §4.1), ``?C=N;O=D``
sort links, absolute Parent Directory href, dates in server local time with
minute resolution, sizes by a port of ``apr_strfsize``. Names are escaped
like ``ap_os_escape_path`` (lowercase hex, ``./`` before a name whose first
segment holds ``:``) then ``ap_escape_html``. Rows are ordered by name
(byte-wise ``strcmp`` with a trailing ``/`` on directories, as Apache does
without ``VersionSort``). Icons follow :data:`MIME_TYPES` and :data:`ICONS`,
which the Apache twin in ``tests/support/apache.py`` is configured from, so
the two agree by construction on what EBI's mime configuration leaves open.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass

#: Extension -> content type (also sent as Content-Type for files).
MIME_TYPES = {
    "txt": "text/plain", "md": "text/markdown", "csv": "text/csv",
    "tsv": "text/tab-separated-values", "xml": "application/xml", "json": "application/json",
    "tif": "image/tiff", "tiff": "image/tiff", "png": "image/png", "jpg": "image/jpeg",
    "jpeg": "image/jpeg", "gz": "application/gzip", "bz2": "application/x-bzip2",
    "zip": "application/zip", "tar": "application/x-tar",
}
DEFAULT_TYPE = "application/octet-stream"

#: (alt, icon, content-type pattern) in the order Apache tries them.
ICONS = (
    ("TXT", "/icons/text.gif", "text/*"),
    ("IMG", "/icons/image2.gif", "image/*"),
    ("CMP", "/icons/compressed.gif", "application/x-bzip2"),
    ("CMP", "/icons/compressed.gif", "application/gzip"),
    ("CMP", "/icons/compressed.gif", "application/zip"),
)
DEFAULT_ICON = ("   ", "/icons/unknown.gif")

#: Names hidden from listings (Debian's stock ``IndexIgnore``); the files
#: still answer when requested directly.
INDEX_IGNORE = (".??*", "*~", "*#", "RCS", "CVS", "*,v", "*,t")

# ap_os_escape_path leaves these unescaped (besides ASCII letters/digits).
_PATH_SAFE = frozenset(b"$-_.+!*'(),:;@&=/~")
_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

_HEAD = (
    '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n'
    "<html>\n"
    " <head>\n"
    "  <title>Index of {title}</title>\n"
    " </head>\n"
    " <body>\n"
    "<h1>Index of {title}</h1>\n"
    "  <table>\n"
    '   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th>'
    '<th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th>'
    '<th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>\n'
    '   <tr><th colspan="5"><hr></th></tr>\n'
)
_PARENT = (
    '<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td>'
    '<td><a href="{href}">Parent Directory</a></td><td>&nbsp;</td>'
    '<td align="right">  - </td><td>&nbsp;</td></tr>\n'
)
_ROW = (
    '<tr><td valign="top"><img src="{icon}" alt="[{alt}]"></td>'
    '<td><a href="{href}">{text}</a></td><td align="right">{date}  </td>'
    '<td align="right">{size}</td><td>&nbsp;</td></tr>\n'
)
_FOOT = '   <tr><th colspan="5"><hr></th></tr>\n</table>\n</body></html>\n'
CONTENT_TYPE = "text/html;charset=ISO-8859-1"


@dataclass(frozen=True)
class Item:
    """One directory child as a listing shows it."""

    name: str
    is_dir: bool
    size: int
    mtime: float


def strfsize(size: int) -> str:
    """Port of APR's ``apr_strfsize``: always four characters.

    ``650`` -> ``"650 "``, ``6946`` -> ``"6.8K"``, ``56623104`` -> ``" 54M"``,
    ``0`` -> ``"  0 "``; negative -> ``"  - "``.
    """
    if size < 0:
        return "  - "
    if size < 973:
        return f"{size:3d} "
    units = "KMGTPE"
    index = 0
    while True:
        remain = size & 1023
        size >>= 10
        if size >= 973:
            index += 1
            continue
        if size < 9 or (size == 9 and remain < 973):
            remain = ((remain * 5) + 256) // 512
            if remain >= 10:
                size += 1
                remain = 0
            return f"{size:d}.{remain:d}{units[index]}"
        if remain >= 512:
            size += 1
        return f"{size:3d}{units[index]}"


def escape_path(name: str) -> str:
    """``ap_os_escape_path(name, partial=0)``: percent-encode UTF-8 bytes
    outside the safe set with lowercase hex; prefix ``./`` when a ``:``
    comes before the first ``/`` (so it cannot read as a URL scheme)."""
    out = []
    for byte in name.encode("utf-8", "surrogateescape"):
        if byte in _ALNUM or byte in _PATH_SAFE:
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02x}")
    text = "".join(out)
    first = text.split("/", 1)[0]
    return "./" + text if ":" in first else text


def escape_html(text: str) -> str:
    """``ap_escape_html``: only ``<``, ``>``, ``&`` and ``"``."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def content_type(name: str) -> str:
    """Content type by the last extension (as mod_mime with our table)."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return MIME_TYPES.get(ext, DEFAULT_TYPE)


def _icon(item: Item) -> tuple[str, str]:
    if item.is_dir:
        return "DIR", "/icons/folder.gif"
    ctype = content_type(item.name)
    for alt, icon, pattern in ICONS:
        if fnmatch.fnmatchcase(ctype, pattern):
            return alt, icon
    return DEFAULT_ICON


def ignored(name: str) -> bool:
    """True if :data:`INDEX_IGNORE` hides ``name`` from listings."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in INDEX_IGNORE)


def scan(directory: str) -> list[Item]:
    """The listable children of ``directory`` (stat of each; symlinks
    followed; names that vanish meanwhile are skipped).

    Raises
    ------
    OSError
        If the directory cannot be read.
    """
    items = []
    with os.scandir(directory) as it:
        for ent in it:
            if ignored(ent.name):
                continue
            try:
                st = ent.stat()
            except OSError:
                continue
            is_dir = ent.is_dir()
            items.append(Item(ent.name, is_dir, -1 if is_dir else st.st_size, st.st_mtime))
    return items


def _sort_key(item: Item) -> bytes:
    return (item.name + ("/" if item.is_dir else "")).encode("utf-8", "surrogateescape")


def render(url_path: str, items: list[Item]) -> bytes:
    """The HTML page for directory ``url_path`` (decoded, ending in ``/``).

    Parameters
    ----------
    url_path : str
        Request path of the directory, e.g. ``/empiar/world_availability/10002/``.
    items : list of Item
        Children to show (already filtered).
    """
    title_path = url_path.rstrip("/") or "/"
    title = escape_html(title_path)
    parent = title_path.rsplit("/", 1)[0] + "/"
    parts = [_HEAD.format(title=title), _PARENT.format(href=escape_html(escape_path(parent)))]
    for item in sorted(items, key=_sort_key):
        alt, icon = _icon(item)
        name = item.name + ("/" if item.is_dir else "")
        parts.append(_ROW.format(
            icon=icon, alt=alt, href=escape_html(escape_path(name)), text=escape_html(name),
            date=time.strftime("%Y-%m-%d %H:%M", time.localtime(item.mtime)),
            size=strfsize(item.size)))
    parts.append(_FOOT)
    # Apache writes names as raw bytes under a Latin-1 content type; so do we.
    return "".join(parts).encode("utf-8", "surrogateescape")
