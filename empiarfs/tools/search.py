"""A local search index of entry metadata.

EMPIAR's API has no search and no list-all endpoint (docs/empiar.md §1.3
§1.2), so ``empiarfs index update`` fetches entries with the batch POST
(chunks of at most 500) and keeps one small record per entry in a JSON
file under the cache directory; ``empiarfs search`` reads only that file.

Incremental: by default only accessions not yet in the index are
fetched. The API cannot say "changed since", so finding entries whose
``update_date`` changed needs their records again: ``refresh=True``
re-fetches indexed entries and rewrites only those whose update_date
differs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

from empiarfs.errors import InvalidInput
from empiarfs.model import Entry
from empiarfs.remote.accession import number, parse_spec

log = logging.getLogger(__name__)

INDEX_FILE = "search-index.json"
INDEX_VERSION = 1
#: Largest batch POST, as the NDE crawler does (docs/empiar.md §1.3).
CHUNK = 500


def index_path(settings) -> Path:
    """Where the index lives: ``<cache_dir>/search-index.json``."""
    return Path(settings.cache_dir, INDEX_FILE)


def record_of(entry: Entry) -> dict:
    """The searchable summary of one entry (plain JSON)."""
    return {
        "accession": entry.accession,
        "title": entry.title,
        "authors": [a.name for a in entry.authors],
        "release_date": entry.release_date,
        "update_date": entry.update_date,
        "dataset_size": entry.dataset_size,
        "experiment_type": entry.experiment_type,
        "doi": entry.doi,
        "emdb": list(entry.emdb_refs),
        "pdb": list(entry.related_pdb_entries),
        "empiar": list(entry.empiar_refs),
        "citations": [c.title for c in entry.citations if c.title],
        "imagesets": [
            {"name": s.name, "category": s.category, "data_format": s.data_format,
             "header_format": s.header_format, "details": s.details, "directory": s.directory}
            for s in entry.imagesets
        ],
    }


def compact_spec(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``: the batch POST body."""
    ordered = sorted(set(numbers))
    parts, i = [], 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _haystack(record: dict) -> str:
    words = [record.get("accession") or "", record.get("title") or "",
             record.get("experiment_type") or "", record.get("doi") or ""]
    words += record.get("authors") or []
    words += record.get("emdb") or []
    words += record.get("pdb") or []
    words += record.get("empiar") or []
    words += record.get("citations") or []
    for s in record.get("imagesets") or []:
        words += [s.get("name") or "", s.get("details") or "", s.get("category") or "",
                  s.get("data_format") or "", s.get("header_format") or ""]
    return "\n".join(str(w) for w in words).lower()


class SearchIndex:
    """The index file, loaded in memory.

    Parameters
    ----------
    path
        JSON file; absent means an empty index.

    Raises
    ------
    InvalidInput
        If the file exists but is not an index (delete it and rebuild).
    """

    def __init__(self, path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self.updated: float | None = None
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"search index {self.path} is unreadable ({exc}); delete it "
                                   "and run: empiarfs index update") from exc
            if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
                raise InvalidInput(f"search index {self.path} has an unknown format; delete it "
                                   "and run: empiarfs index update")
            self.records = dict(data.get("entries") or {})
            self.updated = data.get("updated")

    @classmethod
    def from_records(cls, records: Iterable[dict]) -> "SearchIndex":
        """An in-memory index (no file), e.g. over an EMDB lookup's entries."""
        index = cls.__new__(cls)
        index.path = Path(os.devnull)
        index.records = {r["accession"]: r for r in records}
        index.updated = None
        return index

    def __len__(self) -> int:
        return len(self.records)

    def save(self) -> None:
        """Write atomically (a crash leaves the previous index intact)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"version": INDEX_VERSION, "updated": time.time(), "entries": self.records}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".search-index-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(payload, handle)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        self.updated = payload["updated"]

    def update(self, archive, spec: str | None = None, *, refresh: bool = False,
               chunk: int = CHUNK,
               progress: Callable[[int, int], None] | None = None) -> dict:
        """Fetch missing (and with ``refresh`` changed) entries.

        Parameters
        ----------
        archive
            An :class:`empiarfs.remote.archive.Archive`.
        spec
            Accessions/ranges (``"10000-13999"``); default: every accession
            of the data tree (``archive.accessions()``).
        refresh
            Also re-fetch entries already indexed.
        chunk
            Accessions per batch POST (at most 500).
        progress
            Called with ``(done, total)`` accessions after every chunk.

        Returns
        -------
        dict
            ``added``, ``updated``, ``unchanged``, ``absent``, ``requested``, ``total``.

        Raises
        ------
        InvalidInput
            On a malformed ``spec``.
        RemoteError
            If the archive fails; chunks done before are saved.
        """
        chunk = max(1, min(int(chunk), CHUNK))
        if spec:
            numbers = parse_spec(spec)
        else:
            numbers = sorted({number(a) for a in archive.accessions()})
        known = {number(a) for a in self.records}
        wanted = [n for n in numbers if refresh or n not in known]
        counts = {"added": 0, "updated": 0, "unchanged": 0, "absent": 0,
                  "requested": len(wanted)}
        if progress:
            progress(0, len(wanted))
        for begin in range(0, len(wanted), chunk):
            part = wanted[begin:begin + chunk]
            entries = archive.entries(compact_spec(part))
            returned = set()
            for acc, entry in entries.items():
                returned.add(number(entry.accession or acc))
                record = record_of(entry)
                old = self.records.get(entry.accession)
                if old is None:
                    counts["added"] += 1
                elif old.get("update_date") != record["update_date"]:
                    counts["updated"] += 1
                else:
                    counts["unchanged"] += 1
                    continue
                self.records[entry.accession] = record
            counts["absent"] += len(set(part) - returned)
            self.save()  # keep finished chunks if a later one fails
            if progress:
                progress(min(begin + chunk, len(wanted)), len(wanted))
        if not wanted:
            self.save()
        counts["total"] = len(self.records)
        return counts

    def search(self, text: str | None = None, *, category: str | None = None,
               fmt: str | None = None, experiment_type: str | None = None) -> list[dict]:
        """Records matching every word of ``text`` (case-insensitive
        substrings of title, authors, image-set names/details, cross
        references...) and every given filter (substring of an image-set
        category, a data/header format, the experiment type), by accession.
        """
        words = (text or "").lower().split()
        out = []
        for record in self.records.values():
            hay = _haystack(record)
            if any(w not in hay for w in words):
                continue
            sets = record.get("imagesets") or []
            if category and not any(category.lower() in (s.get("category") or "").lower()
                                    for s in sets):
                continue
            if fmt and not any(fmt.lower() in (s.get(k) or "").lower()
                               for s in sets for k in ("data_format", "header_format")):
                continue
            if experiment_type and experiment_type.lower() not in (
                    record.get("experiment_type") or "").lower():
                continue
            out.append(record)
        return sorted(out, key=lambda r: number(r["accession"]))
