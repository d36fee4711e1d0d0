"""Parse HTML directory listings (autoindex pages) into rows.

Three shapes are understood (docs/empiar.md §4.1-4.2):

* Apache ``mod_autoindex`` as ftp.ebi.ac.uk serves it: an HTML table with
  ``?C=`` sort links, an absolute Parent Directory link, a
  ``YYYY-MM-DD HH:MM`` date cell and a rounded ``apr_strfsize`` size cell
  (``543M``, ``6.8K``, ``650``, ``-``);
* nginx ``autoindex``: a ``<pre>`` block, ``DD-Mon-YYYY HH:MM`` dates and
  byte counts;
* a bare ``<ul><li><a>`` list (Python's ``http.server``).

Names come from the ``href`` (never the link text, which Apache truncates),
percent-decoded and validated; anything that could escape the directory
is skipped and counted. The scan is one linear pass of regular expressions
with bounded look-ahead, so 100,000 rows or broken markup cost linear
time. Imports only errors.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

from empiarfs.errors import BadResponse

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255
# How far after a link its date and size may be (one table row).
_TAIL = 600

_ANCHOR_RE = re.compile(r"""<a\s[^<>]*?href\s*=\s*(?:"([^"<>]*)"|'([^'<>]*)'|([^\s"'<>]+))[^<>]*>""", re.I)
_TAG_RE = re.compile(r"<[^<>]*>")
_ROW_END_RE = re.compile(r"\n|</tr|<tr|</li|<li", re.I)
_ISO_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")
_NGINX_DATE_RE = re.compile(r"(\d{2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2})(?::(\d{2}))?")
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)$", re.I)
_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_LISTING_MARK_RE = re.compile(r"<\s*(html|body|a|pre|table|ul|title|h1)\b|index of", re.I)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# A plain relative href ("a%20b.mrc", "sub/"): decoded without urljoin,
# which is the expensive part on 100k-row pages.
_SIMPLE_HREF_RE = re.compile(r"^[^/:?#\\\x00-\x1f\x7f]+/?$")
# Warn about at most this many unsafe links per page, then summarise.
_MAX_WARNINGS = 5


@dataclass(frozen=True)
class ListingRow:
    """One child of a listed directory. ``size_hint`` is the listing's
    (rounded) size in bytes, ``None`` for directories or ``-``."""

    name: str
    is_dir: bool
    size_hint: Optional[int] = None
    mtime: Optional[float] = None


class Listing(list):
    """The rows of a listing; ``rejected`` counts links refused as unsafe."""

    rejected: int = 0


def parse_size_hint(text: str) -> Optional[int]:
    """``"543M"`` -> 569376768, ``"6.8K"`` -> 6963, ``"650"`` -> 650,
    ``"-"`` -> ``None`` (1024-based, as Apache's ``apr_strfsize``)."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        return None
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def parse_listing_date(text: str) -> Optional[float]:
    """Epoch seconds (read as UTC) of the first ``YYYY-MM-DD HH:MM`` or
    ``DD-Mon-YYYY HH:MM`` date in ``text``; ``None`` if there is none."""
    match = _ISO_DATE_RE.search(text)
    if match:
        year, month, day, hour, minute, second = match.groups()
    else:
        match = _NGINX_DATE_RE.search(text)
        if not match:
            return None
        day, mon, year, hour, minute, second = match.groups()
        month = _MONTHS.get(mon.lower())
        if month is None:
            return None
    try:
        when = datetime(int(year), int(month), int(day), int(hour), int(minute),
                        int(second or 0), tzinfo=timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None
    return when.timestamp()


def validate_name(name: str) -> Optional[str]:
    """Why ``name`` cannot be a directory entry, or ``None`` if it is fine."""
    if name in ("", ".", ".."):
        return "empty or dot name"
    if "/" in name:
        return "contains a slash"
    if _CONTROL_RE.search(name):
        return "contains a control character"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    return None


_END_RE = re.compile(r"</(html|body)\s*>\s*$", re.I)


def listing_looks_complete(text: str) -> bool:
    """Does the page end as an autoindex page ends (``</body></html>``)?
    Only asked of a body delimited by the connection closing, where a cut
    page cannot be told from a whole one by its framing."""
    return bool(_END_RE.search(text[-4096:]))


def parse_listing(text: str, base_url: str) -> Listing:
    """Rows of a directory listing page.

    Parameters
    ----------
    text : str
        The HTML of the page.
    base_url : str
        The URL the page was fetched from (a directory URL; a missing
        trailing ``/`` is added). Links are resolved against it and only
        direct children are kept.

    Returns
    -------
    Listing
        A list of :class:`ListingRow` in page order, without duplicates;
        its ``rejected`` attribute counts links skipped as unsafe.

    Raises
    ------
    BadResponse
        If the text is clearly not an HTML listing (no markup at all).
    """
    if not base_url.endswith("/"):
        base_url += "/"
    if not _LISTING_MARK_RE.search(text[:65536]) and not _ANCHOR_RE.search(text):
        raise BadResponse(f"{base_url} did not return a directory listing", url=base_url)
    base = urlsplit(base_url)
    rows = Listing()
    seen: set[str] = set()
    matches = list(_ANCHOR_RE.finditer(text))
    for index, match in enumerate(matches):
        raw_href = match.group(1) or match.group(2) or match.group(3) or ""
        href = html.unescape(raw_href).strip()
        verdict = _child_name(href, base_url, base)
        if verdict is None:
            continue  # navigation (sort links, parent, self): not a child
        name, is_dir, problem = verdict
        if problem:
            rows.rejected += 1
            if rows.rejected <= _MAX_WARNINGS:
                log.warning("skipping unsafe listing entry %r in %s: %s", href[:100], base_url, problem)
            continue
        if name in seen:
            continue
        seen.add(name)
        # The row's tail: from the end of the link to the end of its row,
        # never past the next link and never more than _TAIL characters.
        stop = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        tail = text[match.end(): min(stop, match.end() + _TAIL)]
        close = tail.lower().find("</a>")
        if close >= 0:
            tail = tail[close + 4:]
        cut = _ROW_END_RE.search(tail)
        if cut:
            tail = tail[: cut.start()]
        rows.append(_row(name, is_dir, tail))
    if rows.rejected > _MAX_WARNINGS:
        log.warning("skipped %d unsafe listing entries in %s", rows.rejected, base_url)
    return rows


def _child_name(href: str, base_url: str, base):
    """``None`` for navigation links; else ``(name, is_dir, problem)``."""
    if not href or href.startswith("#"):
        return None
    if _SIMPLE_HREF_RE.match(href) and href not in (".", "./", "..", "../"):
        is_dir = href.endswith("/")
        return _decode(href[:-1] if is_dir else href, is_dir)
    parts = urlsplit(href)
    if parts.query and not parts.path:
        return None  # "?C=N;O=D": a sort link
    target = urlsplit(urljoin(base_url, href))
    if target.scheme != base.scheme or target.netloc != base.netloc:
        return ("", False, "link to another site")
    if target.query:
        return ("", False, "link with a query")
    path = target.path
    if not path.startswith(base.path) or path == base.path:
        # The parent (Apache writes it absolute) or the directory itself.
        if base.path.startswith(path) or path.rstrip("/") in ("", base.path.rstrip("/")):
            return None
        return ("", False, "link outside the directory")
    rest = path[len(base.path):]
    is_dir = rest.endswith("/")
    encoded = rest[:-1] if is_dir else rest
    if "/" in encoded:
        return ("", False, "link below a subdirectory")
    if _CONTROL_RE.search(href):
        return ("", False, "control character in link")
    # Check the raw href too: urljoin already folded "a/../b".
    if ".." in parts.path.split("/"):
        return ("", False, "dot-dot segment in link")
    return _decode(encoded, is_dir)


def _decode(encoded: str, is_dir: bool):
    if "%2f" in encoded.lower() or "%00" in encoded:
        return ("", False, "encoded slash or NUL")
    try:
        name = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        return ("", False, "name is not UTF-8")
    problem = validate_name(name)
    return (name, is_dir, problem)


def _row(name: str, is_dir: bool, tail: str) -> ListingRow:
    text = html.unescape(_TAG_RE.sub(" ", tail)).replace("\xa0", " ")
    mtime = parse_listing_date(text)
    size = None
    if not is_dir:
        date = _ISO_DATE_RE.search(text) or _NGINX_DATE_RE.search(text)
        after = text[date.end():] if date else text
        token = after.split(None, 1)[0] if after.split() else ""
        size = parse_size_hint(token)
    return ListingRow(name=name, is_dir=is_dir, size_hint=size, mtime=mtime)
