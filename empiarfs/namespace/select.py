"""Choosing files of an entry: glob/regex patterns and recursive walking.

Patterns are matched against paths *relative to the entry root*
(``data/a b/x.mrcs``), never against URLs (the EMPIARreader pitfall,
docs/empiar.md §7, where ``*.mrc`` had to be written ``.*\\.mrc``).

Glob semantics (documented in the CLI help):

* ``*`` and ``?`` never cross ``/``; ``[abc]`` is a character class;
* ``**`` crosses directories (``data/**/*.tif``; ``**/`` also matches
  no directory at all);
* a pattern without ``/`` is matched against the file *name* at any
  depth (``*.mrcs`` selects every MRCS file), like ``.gitignore``.

Regular expressions use :func:`re.search` on the relative path: anchor
them with ``^...$`` for a full match.
"""

from __future__ import annotations

import logging
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from empiarfs.errors import InvalidInput, NotFound
from empiarfs.model import FileInfo
from empiarfs.paths import clean_relpath

log = logging.getLogger(__name__)

#: Directories listed at once while walking (each listing is one request).
WALK_PARALLEL = 8


def _translate_component(part: str) -> str:
    """Regex for one glob path component (no ``/`` inside)."""
    out = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and part[j] in "!^":
                j += 1
            if j < n and part[j] == "]":
                j += 1
            while j < n and part[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # unmatched "[" is literal
            else:
                body = part[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                body = body.replace("\\", "\\\\")
                out.append(f"(?!/)[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_to_regex(pattern: str) -> re.Pattern:
    """Compile a path glob (see module docstring) to a full-match regex.

    Raises
    ------
    InvalidInput
        If the pattern is empty or compiles to an invalid expression.
    """
    if not pattern or not pattern.strip("/"):
        raise InvalidInput("empty glob pattern (example: --glob 'data/*.mrcs')")
    pattern = pattern.strip("/")
    parts = pattern.split("/")
    pieces = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            # "**/" matches zero or more whole directories; a trailing "**"
            # matches everything below.
            pieces.append(".*" if last else "(?:[^/]+/)*")
        else:
            pieces.append(_translate_component(part) + ("" if last else "/"))
    try:
        return re.compile("".join(pieces), re.DOTALL)
    except re.error as exc:  # e.g. a bad character range "[z-a]"
        raise InvalidInput(f"bad glob pattern {pattern!r}: {exc}") from exc


@dataclass(frozen=True)
class Selector:
    """Which relative paths to keep, and which directories may hold them.

    Build with :meth:`glob`, :meth:`regex` or :meth:`everything`.
    """

    description: str
    _match: Callable[[str], bool]
    # For directory pruning: regexes of the glob's leading components and
    # whether the pattern can go arbitrarily deep. None = no pruning.
    _prefix: tuple | None = None
    _deep: bool = True

    @classmethod
    def everything(cls) -> "Selector":
        return cls("everything", lambda path: True)

    @classmethod
    def glob(cls, pattern: str) -> "Selector":
        """Glob over relative paths; without ``/`` over file names.

        Raises
        ------
        InvalidInput
            If the pattern is empty or malformed.
        """
        compiled = glob_to_regex(pattern)
        stripped = pattern.strip("/")
        if "/" not in stripped:
            return cls(f"glob {pattern!r} (file names)",
                       lambda path: compiled.fullmatch(posixpath.basename(path)) is not None)
        parts = stripped.split("/")
        deep = "**" in parts
        lead = parts[:parts.index("**")] if deep else parts[:-1]
        prefix = tuple(re.compile(_translate_component(p), re.DOTALL) for p in lead)
        return cls(f"glob {pattern!r}",
                   lambda path: compiled.fullmatch(path) is not None, prefix, deep)

    @classmethod
    def regex(cls, expression: str) -> "Selector":
        """``re.search`` over relative paths.

        Raises
        ------
        InvalidInput
            If the expression does not compile.
        """
        try:
            compiled = re.compile(expression)
        except re.error as exc:
            raise InvalidInput(
                f"bad regular expression {expression!r}: {exc} "
                "(example: --regex '^data/.*\\.mrcs$')") from exc
        return cls(f"regex {expression!r}", lambda path: compiled.search(path) is not None)

    @classmethod
    def from_options(cls, glob: str | None = None, regex: str | None = None) -> "Selector":
        """The selector for ``--glob``/``--regex`` (at most one of them).

        Raises
        ------
        InvalidInput
            If both are given or the pattern is malformed.
        """
        if glob and regex:
            raise InvalidInput("give either --glob or --regex, not both")
        if glob:
            return cls.glob(glob)
        if regex:
            return cls.regex(regex)
        return cls.everything()

    def matches(self, relpath: str) -> bool:
        """Is the file at ``relpath`` (relative to the entry root) selected?"""
        return self._match(relpath)

    def may_contain(self, dirpath: str) -> bool:
        """Can a directory at ``dirpath`` hold selected files? (pruning)"""
        if self._prefix is None or not dirpath:
            return True
        parts = dirpath.strip("/").split("/")
        if not self._deep and len(parts) > len(self._prefix):
            return False
        for part, regex in zip(parts, self._prefix):
            if regex.fullmatch(part) is None:
                return False
        return True


def split_target(text: str) -> tuple[str, str]:
    """``"EMPIAR-10002/data/x.mrc"`` -> ``("EMPIAR-10002", "data/x.mrc")``.

    Raises
    ------
    InvalidInput
        If the first component is not an accession.
    """
    from empiarfs.remote.accession import normalize

    text = text.strip()
    head, _, rest = text.lstrip("/").partition("/")
    # EMPIAR's own URLs carry a doubled slash (``10934//data``).
    return normalize(head), clean_relpath(rest.lstrip("/"))


def find(archive, accession: str, relpath: str = "") -> FileInfo | None:
    """The node at ``relpath`` (file or directory), from its parent's
    listing; ``None`` if absent. The entry root is a directory node."""
    relpath = clean_relpath(relpath)
    if not relpath:
        return FileInfo(name=accession, path="", is_dir=True)
    parent, name = posixpath.split(relpath)
    try:
        siblings = archive.listdir(accession, parent)
    except NotFound:
        return None
    for info in siblings:
        if info.name == name:
            return info
    return None


def walk(archive, accession: str, relpath: str = "", selector: Selector | None = None,
         recursive: bool = True, parallel: int = WALK_PARALLEL) -> Iterator[FileInfo]:
    """Files (not directories) under ``relpath`` selected by ``selector``,
    in path order, listing directories level by level in parallel.

    Raises
    ------
    NotFound
        If ``relpath`` does not exist in the entry.
    """
    selector = selector or Selector.everything()
    node = find(archive, accession, relpath)
    if node is None:
        raise NotFound(f"{accession}/{clean_relpath(relpath)}: no such file or directory "
                       f"(try: empiarfs ls {accession})", accession=accession, path=relpath)
    if not node.is_dir:
        if selector.matches(node.path):
            yield node
        return
    found: list[FileInfo] = []
    level = [node.path]
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="walk") as pool:
        while level:
            listings = pool.map(lambda d: archive.listdir(accession, d), level)
            level = []
            for children in listings:
                for child in children:
                    if child.is_dir:
                        if recursive and selector.may_contain(child.path):
                            level.append(child.path)
                    elif selector.matches(child.path):
                        found.append(child)
    found.sort(key=lambda f: f.path)
    yield from found


def select_paths(paths: Iterable[str], selector: Selector) -> list[str]:
    """Pure filter, handy for tests and ``--from-list`` inputs."""
    return sorted(p for p in paths if selector.matches(p))
