"""The virtual files of an entry directory, rendered from its API record:
``entry.json`` (the record as the API gave it), ``README.txt`` (a human
summary) and ``lambda-ber.yaml`` (a lambda-ber-schema Dataset record), and
the mount's live ``.empiarfs/stats.json``; and the image sets' preview
pictures (:class:`Previews`), rendered from the data on first open.

They are a layer over the archive's own tree (the catalog asks here before
it asks the remote listing), in the way a compositing mount source wraps
another one. Rendered bytes are kept, bounded, so that ``ls -l`` (which
needs their sizes) and a later read render once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import cachetools

from empiarfs.errors import EmpiarfsError, NotFound
from empiarfs.export.lambda_ber import dump, entry_to_lambda_ber
from empiarfs.model import Entry
from empiarfs.namespace.summary import render_summary

ENTRY_JSON = "entry.json"
README = "README.txt"
LAMBDA_BER = "lambda-ber.yaml"
ENTRY_FILES = (ENTRY_JSON, README, LAMBDA_BER)
MAX_KEPT = 1024
# Rendered previews kept in memory. A 512-pixel-wide grey PNG of a
# micrograph is 100-300 kB, so this keeps a few hundred; one evicted is
# rendered again from blocks the disk cache still holds (no network).
MAX_PREVIEW_BYTES = 64 * 1024 * 1024

log = logging.getLogger(__name__)


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


class PreviewFailed(EmpiarfsError, OSError):
    """A preview picture could not be rendered (no image files in the
    image set, a file that does not parse, the archive unreachable). Read
    through the mount as EIO, whatever the cause's own errno: the cause is
    in the data, not in the caller's request."""


class Previews:
    """Preview pictures of image sets: rendered on first ask, then kept.

    Parameters
    ----------
    render : callable
        ``render(directory) -> bytes``: the PNG of a mount-relative
        image-set directory (``EMPIAR-10002/data``). Injected, because the
        picture code (frame choice, readers, contrast, Pillow) lives in
        ``tools/`` above this layer and reads through the facade that
        assembles this one.
    max_bytes : int
        Bound on the kept pictures' total size (least recently used go).

    A picture's size is not known until it is rendered: :meth:`size` says
    0 until then and never renders, so listing (``ls -l``, ``stat``) costs
    nothing; :meth:`content` renders once however many threads ask.

    Lock order: a key's render lock, then ``_lock``; ``_lock`` is a leaf
    guarding the kept pictures and the table of render locks, and is
    never held while rendering.
    """

    def __init__(self, render: Callable[[str], bytes], max_bytes: int = MAX_PREVIEW_BYTES):
        self._render = render
        self._lock = threading.Lock()
        self._kept = cachetools.LRUCache(maxsize=max_bytes, getsizeof=len)
        self._rendering: dict[tuple, threading.Lock] = {}

    def size(self, key: tuple) -> int:
        """The kept picture's size, 0 when it has not been rendered."""
        with self._lock:
            kept = self._kept.get(key)
        return len(kept) if kept is not None else 0

    def content(self, key: tuple, directory: str, label: str) -> bytes:
        """The picture of ``directory`` kept under ``key``, rendered now if
        need be (``label`` names it in messages).

        Raises
        ------
        PreviewFailed
            If it cannot be rendered; not kept, so the next open tries again.
        """
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                return kept
            gate = self._rendering.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                kept = self._kept.get(key)
            if kept is not None:
                return kept
            started = time.monotonic()
            try:
                data = bytes(self._render(directory))
                with self._lock:  # kept before the gate goes: no second render
                    if len(data) <= self._kept.maxsize:
                        self._kept[key] = data
            except Exception as exc:  # any failure of the renderer reads as EIO
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise PreviewFailed(f"{label}: cannot render the preview: {reason}") from exc
            finally:
                with self._lock:
                    self._rendering.pop(key, None)
            log.info("%s: rendered (%d bytes) in %.2f s", label, len(data),
                     time.monotonic() - started)
            return data


def render_stats(stats: dict) -> bytes:
    """``.empiarfs/stats.json``: the live counters, sorted, one per line."""
    return (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode()
