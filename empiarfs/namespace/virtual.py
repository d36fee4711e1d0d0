"""The virtual files of an entry directory, rendered from its API record:
``entry.json`` (the record as the API gave it), ``README.txt`` (a human
summary) and ``lambda-ber.yaml`` (a lambda-ber-schema Dataset record), and
the mount's live ``.empiarfs/stats.json``.

They are a layer over the archive's own tree (the catalog asks here before
it asks the remote listing), in the way a compositing mount source wraps
another one. Rendered bytes are kept, bounded, so that ``ls -l`` (which
needs their sizes) and a later read render once.
"""

from __future__ import annotations

import json
import threading

from empiarfs.errors import NotFound
from empiarfs.export.lambda_ber import dump, entry_to_lambda_ber
from empiarfs.model import Entry
from empiarfs.namespace.summary import render_summary

ENTRY_JSON = "entry.json"
README = "README.txt"
LAMBDA_BER = "lambda-ber.yaml"
ENTRY_FILES = (ENTRY_JSON, README, LAMBDA_BER)
MAX_KEPT = 1024


class VirtualFiles:
    """Renders and keeps the bytes of the per-entry virtual files.

    Lock order: ``_lock`` is a leaf guarding the kept bytes only.
    """

    def __init__(self, data_url: str):
        self.data_url = data_url
        self._lock = threading.Lock()
        self._kept: dict[tuple, bytes] = {}

    def content(self, acc: str, name: str, raw: dict, entry: Entry) -> bytes:
        """The bytes of ``name`` for entry ``acc`` (record ``raw``, parsed
        as ``entry``)."""
        key = (acc, name)
        with self._lock:
            kept = self._kept.get(key)
        if kept is None:
            kept = self._render(acc, name, raw, entry)
            with self._lock:
                if len(self._kept) >= MAX_KEPT:
                    self._kept.clear()
                self._kept[key] = kept
        return kept

    def _render(self, acc: str, name: str, raw: dict, entry: Entry) -> bytes:
        if name == ENTRY_JSON:
            return (json.dumps({acc: raw}, indent=2, ensure_ascii=False) + "\n").encode()
        if name == README:
            return render_summary(entry).encode()
        if name == LAMBDA_BER:
            return dump(entry_to_lambda_ber(entry, data_url=self.data_url), format="yaml").encode()
        raise NotFound(f"{acc}/{name}: no such virtual file", accession=acc)


def render_stats(stats: dict) -> bytes:
    """``.empiarfs/stats.json``: the live counters, sorted, one per line."""
    return (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode()
