"""``Archive``: EMPIAR's REST metadata and data tree behind one object.

Metadata comes from the entry API (``{api_url}/entry/...``), the tree from
the HTTP autoindex pages under ``data_url`` with exact sizes from FTP MLSD
(when ``ftp_url`` is set and reachable) or from HEAD requests. Every network
call goes through :class:`empiarfs.remote.transport.Transport`. Imports http, model,
errors, config and the other archive modules.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable, Iterable, Optional
from urllib.parse import quote

from cachetools import TTLCache

from empiarfs.config import DEFAULT_FTP_URL, Settings
from empiarfs.errors import BadResponse, InvalidInput, NotFound
from empiarfs.model import Entry, FileInfo
from empiarfs.paths import clean_relpath
from empiarfs.remote import accession as accessions
from empiarfs.remote.ftp import FtpLister, FtpUnavailable
from empiarfs.remote.listing import listing_looks_complete, parse_listing
from empiarfs.remote.metadata import parse_entry, unwrap
from empiarfs.remote.transport import Transport

log = logging.getLogger(__name__)

BATCH_CHUNK = 500
MAX_LISTING_BYTES = 64 * 1024 * 1024
# Bytes a size probe asks for with the size: an MRC header (1 KiB), a TIFF
# or EER header and first IFD, the start of a STAR file. 16 KiB because the
# kernel's first read of a file through the mount is 16 KiB (page-cache
# read-ahead of 4 pages for a small read): fewer would not spare the read
# its request. On a warm connection it costs one round trip, like a HEAD
# (a fresh one sends TCP's first 14.6 KB window, then the rest: two);
# 3,000 files cost the archive 48 MiB.
FIRST_BYTES = 16 * 1024
_SAFE = "-._~,"  # kept as is in URL path segments; everything else is %-encoded


def compress_spec(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"`` (the batch API's syntax)."""
    out = []
    run: list[int] = []
    for n in sorted(set(numbers)):
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [n]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


class Archive:
    """The EMPIAR archive: entry metadata and the file tree.

    Parameters
    ----------
    settings : Settings
        ``api_url``, ``data_url``, ``ftp_url`` (empty disables FTP),
        ``metadata_ttl`` and the transport's timeouts.
    transport : Transport, optional
        Shared transport; one is created (and closed by :meth:`close`)
        when omitted.
    """

    def __init__(self, settings: Settings, transport: Optional[Transport] = None):
        self.settings = settings
        self._owns_transport = transport is None
        self.transport = transport or Transport(settings)
        self.api_url = settings.api_url.rstrip("/")
        self.data_url = settings.data_url.rstrip("/")
        self._ftp = None
        if settings.ftp_url and not settings.offline:
            try:
                self._ftp = FtpLister(settings.ftp_url, timeout=settings.connect_timeout)
            except ValueError as exc:
                log.warning("ignoring ftp_url: %s", exc)
        self._stat_lock = threading.Lock()
        self._stats: TTLCache = TTLCache(maxsize=200_000, ttl=max(1.0, settings.metadata_ttl))

    # -- metadata -----------------------------------------------------------

    def entry_json(self, acc) -> dict:
        """The inner record of ``GET {api_url}/entry/EMPIAR-N/``.

        Raises
        ------
        InvalidInput
            If ``acc`` is not an accession.
        NotFound
            If the archive has no such entry.
        BadResponse
            If the answer is not an entry record.
        RemoteError
            If the API cannot be reached.
        """
        acc = accessions.normalize(acc)
        try:
            payload = self.transport.get_json(f"{self.api_url}/entry/{acc}/")
        except NotFound as exc:
            raise NotFound(f"{acc} not found in the archive", accession=acc) from exc
        if isinstance(payload, dict) and not payload:
            raise NotFound(f"{acc} not found in the archive", accession=acc)
        return unwrap(payload, acc)[1]

    def entry(self, acc) -> Entry:
        """The entry as an :class:`Entry` value.

        Raises
        ------
        InvalidInput, NotFound, BadResponse, RemoteError
            As :meth:`entry_json`.
        """
        acc = accessions.normalize(acc)
        return parse_entry(acc, self.entry_json(acc))

    def entries(self, spec) -> dict[str, Entry]:
        """Several entries by batch POST: ``"10050,10054,10060-10072"`` or an
        iterable of accessions. Unknown accessions are simply absent.

        Raises
        ------
        InvalidInput
            On a malformed spec (see :func:`accession.parse_spec`).
        BadResponse, RemoteError
            If the API answers wrongly or cannot be reached.
        """
        numbers = accessions.parse_spec(spec)
        out: dict[str, Entry] = {}
        for i in range(0, len(numbers), BATCH_CHUNK):
            chunk = numbers[i: i + BATCH_CHUNK]
            try:
                payload = self.transport.get_json(
                    f"{self.api_url}/entry/", method="POST", data=compress_spec(chunk),
                    idempotent=True,
                )
            except NotFound:
                continue
            if not isinstance(payload, dict):
                raise BadResponse(f"batch entry answer is not an object keyed by accession ({type(payload).__name__})")
            for key, record in payload.items():
                try:
                    acc = accessions.normalize(key)
                except InvalidInput:
                    log.warning("ignoring batch record with odd key %r", key)
                    continue
                if isinstance(record, dict):
                    out[acc] = parse_entry(acc, record)
        return dict(sorted(out.items(), key=lambda kv: accessions.number(kv[0])))

    def emdb_entries(self, emd) -> list[Entry]:
        """EMPIAR entries related to an EMDB map (``EMD-2275``); ``[]`` when
        there are none.

        Raises
        ------
        InvalidInput
            If ``emd`` is not an EMDB accession.
        BadResponse, RemoteError
            If the API answers wrongly or cannot be reached.
        """
        emd = accessions.normalize_emdb(emd)
        try:
            payload = self.transport.get_json(f"{self.api_url}/emdb_ref/{emd}/")
        except NotFound:
            return []
        records: list[tuple[str, dict]] = []
        if isinstance(payload, dict):
            inner = payload.get(emd)
            if isinstance(inner, (list, dict)) and len(payload) == 1:
                payload = inner  # {"EMD-N": [...]} or {"EMD-N": {acc: record}}
        if isinstance(payload, dict):
            records = [(k, v) for k, v in payload.items() if isinstance(v, dict)]
        elif isinstance(payload, list):
            for item in payload:
                if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict):
                    records.append(next(iter(item.items())))
        elif payload is not None:
            raise BadResponse(f"emdb_ref answer for {emd} is neither an object nor a list")
        out = []
        for key, record in records:
            try:
                acc = accessions.normalize(key)
            except InvalidInput:
                continue
            out.append(parse_entry(acc, record))
        return sorted(out, key=lambda e: e.number or 0)

    def latest_citations(self) -> list[dict]:
        """The API's latest citations of EMPIAR (``pmid``, ``title``...).

        Raises
        ------
        BadResponse, RemoteError
            If the API answers wrongly or cannot be reached.
        """
        payload = self.transport.get_json(f"{self.api_url}/latest_citations/")
        if isinstance(payload, dict):
            lists = [v for v in payload.values() if isinstance(v, list)]
            payload = lists[0] if len(lists) == 1 else [payload]
        if not isinstance(payload, list):
            raise BadResponse("latest_citations answer is not a list")
        return [c for c in payload if isinstance(c, dict)]

    def accessions(self) -> list[str]:
        """Every entry directory of the data tree, ``["EMPIAR-10002", ...]``
        in numeric order.

        Raises
        ------
        BadResponse, RemoteError
            If the top listing cannot be read.
        """
        url = self.data_url + "/"
        rows = self._listing(url)
        numbers = sorted({int(r.name) for r in rows if r.is_dir and r.name.isdigit()})
        return [f"EMPIAR-{n}" for n in numbers]

    def header_xml(self, acc) -> bytes:
        """The entry's XML header, ``{data_url}/N/N.xml``.

        Raises
        ------
        NotFound
            If the entry (or its header) does not exist.
        RemoteError
            If the archive cannot be reached.
        """
        acc = accessions.normalize(acc)
        n = accessions.number(acc)
        try:
            return self.transport.get_bytes(f"{self.data_url}/{n}/{n}.xml")
        except NotFound as exc:
            raise NotFound(f"{acc}: no XML header {n}.xml in the archive", accession=acc) from exc

    # -- the tree -------------------------------------------------------------

    def file_url(self, acc, relpath: str = "", scheme: str = "https") -> str:
        """URL of a file or directory of an entry, each segment
        percent-encoded (spaces ``%20``, ``#``/``%``/``?`` encoded, commas
        kept). ``scheme="ftp"`` uses ``ftp_url`` (or EMPIAR's default).

        Raises
        ------
        InvalidInput
            On a bad accession or path.
        """
        acc = accessions.normalize(acc)
        rel = clean_relpath(relpath)
        if scheme == "ftp":
            base = (self.settings.ftp_url or DEFAULT_FTP_URL).rstrip("/")
        elif scheme in ("https", "http"):
            base = self.data_url
        else:
            raise InvalidInput(f"unknown URL scheme {scheme!r} (use https or ftp)")
        segments = [str(accessions.number(acc))] + (rel.split("/") if rel else [])
        return base + "/" + "/".join(quote(s, safe=_SAFE) for s in segments)

    def listdir(self, acc, relpath: str = "") -> list[FileInfo]:
        """Children of one directory of an entry, sorted by name.

        Sizes are exact (``size_exact=True``) when FTP answered for this
        directory; otherwise they are the listing's rounded hints. Names
        from both sources are kept (a load-balanced backend may omit one).

        Raises
        ------
        InvalidInput
            On a bad accession or path.
        NotFound
            If the entry or directory does not exist.
        BadResponse, RemoteError
            If the listing cannot be read.
        """
        acc = accessions.normalize(acc)
        rel = clean_relpath(relpath)
        dir_url = self.file_url(acc, rel) + "/"
        try:
            rows = self._listing(dir_url)
        except NotFound as exc:
            where = f"{acc}/{rel}" if rel else acc
            raise NotFound(f"{where} not found in the archive", accession=acc, path=rel) from exc
        exact = self._ftp_sizes(acc, rel)
        infos: dict[str, FileInfo] = {}
        for row in rows:
            fact = exact.get(row.name) if exact else None
            if fact is not None:
                infos[row.name] = self._info(acc, rel, row.name, fact[2], fact[0], fact[1])
            else:
                infos[row.name] = self._info(acc, rel, row.name, row.is_dir, row.size_hint, row.mtime,
                                             exact=False)
        for name, (size, mtime, is_dir) in (exact or {}).items():
            if name not in infos:
                log.info("%s/%s: %r is on FTP but missing from the HTTP listing", acc, rel, name)
                infos[name] = self._info(acc, rel, name, is_dir, size, mtime)
        return [infos[name] for name in sorted(infos)]

    def _listing(self, dir_url: str):
        """The rows of one listing page. A page that does not parse, or that
        ended early, is fetched again: a proxy cutting a reply is not a
        verdict on the directory."""
        return self.transport.get_text(
            dir_url, MAX_LISTING_BYTES, complete=listing_looks_complete,
            parse=lambda text: parse_listing(text, dir_url))

    def resolve_sizes(self, infos: Iterable[FileInfo], *,
                      on_first_bytes: Optional[Callable[[FileInfo, bytes], None]] = None
                      ) -> list[FileInfo]:
        """``infos`` with exact sizes, ETags and mtimes filled in by HEAD
        (files whose size is not exact; at most ``parallel_total`` HEADs at a time; each
        result remembered for ``metadata_ttl``). Order is kept; a file that
        vanished (404) is returned unchanged.

        With ``on_first_bytes``, each file is asked for its first
        ``FIRST_BYTES`` bytes instead of a HEAD (same round trip, see
        :meth:`Transport.probe`), and ``on_first_bytes(resolved_info,
        data)`` gets them: a header scan after ``ls`` then needs no second
        request per file.

        Raises
        ------
        RemoteError
            If a HEAD fails for another reason (after retries).
        """
        infos = list(infos)
        todo = [i for i, info in enumerate(infos) if not info.is_dir and not info.size_exact]
        if not todo:
            return infos
        out = list(infos)
        # As many HEADs as the pool has connections (parallel_total caps
        # what one host sees; a hedge waits for a free one). At 3/4 of the
        # pool, 3,000 HEADs through the tcp-wan proxy took 15.2 s, at the
        # whole pool 12.2 s (the floor is 3,000 / 32 round trips, 9.4 s).
        workers = max(1, int(self.settings.parallel_total))
        with ThreadPoolExecutor(max_workers=min(workers, len(todo)),
                                thread_name_prefix="empiarfs-head") as pool:
            if on_first_bytes is None:
                results = list(pool.map(lambda i: (self._head_cached(infos[i].url), None), todo))
            else:
                results = list(pool.map(lambda i: self._probe(infos[i].url), todo))
        for i, (stat, first) in zip(todo, results):
            if stat is None or stat.size is None:
                continue
            out[i] = replace(
                infos[i], size=stat.size, size_exact=True, etag=stat.etag,
                mtime=stat.mtime if stat.mtime is not None else infos[i].mtime,
            )
            if first is not None:
                on_first_bytes(out[i], first)
        return out

    def stat(self, acc, relpath: str) -> FileInfo:
        """One file (or directory) by HEAD, with its exact size.

        Raises
        ------
        InvalidInput
            On a bad accession or path.
        NotFound
            If it does not exist.
        RemoteError
            If the archive cannot be reached.
        """
        acc = accessions.normalize(acc)
        rel = clean_relpath(relpath)
        url = self.file_url(acc, rel) + ("/" if not rel else "")
        try:
            stat = self.transport.head(url)
        except NotFound as exc:
            raise NotFound(f"{acc}/{rel} not found in the archive", accession=acc, path=rel) from exc
        name = rel.rsplit("/", 1)[-1] if rel else acc
        is_dir = not rel or stat.url.endswith("/")
        return FileInfo(
            name=name, path=rel, is_dir=is_dir, size=0 if is_dir else (stat.size or 0),
            size_exact=not is_dir and stat.size is not None, mtime=stat.mtime or 0.0,
            url=url if not is_dir else url.rstrip("/") + "/", etag=None if is_dir else stat.etag,
        )

    def close(self) -> None:
        """Close FTP connections and the transport if this object made it."""
        if self._ftp is not None:
            self._ftp.close()
        if self._owns_transport:
            self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- helpers --------------------------------------------------------------

    def _info(self, acc, rel, name, is_dir, size, mtime, exact=True) -> FileInfo:
        path = posixpath.join(rel, name) if rel else name
        url = self.file_url(acc, path) + ("/" if is_dir else "")
        return FileInfo(
            name=name, path=path, is_dir=is_dir, size=0 if is_dir else (size or 0),
            size_exact=bool(exact and not is_dir and size is not None),
            mtime=mtime or 0.0, url=url,
        )

    def _ftp_sizes(self, acc, rel) -> Optional[dict]:
        if self._ftp is None or not self._ftp.available():
            return None
        try:
            return self._ftp.list_dir("/".join(p for p in (str(accessions.number(acc)), rel) if p))
        except FtpUnavailable as exc:
            log.info("exact sizes of %s/%s not from FTP: %s", acc, rel, exc)
            return None

    def _probe(self, url):
        """``(RemoteStat, first bytes)`` by a range probe (see ``_remembered``)."""
        return self._remembered(url, lambda: self.transport.probe(url, FIRST_BYTES))

    def _head_cached(self, url):
        """``RemoteStat`` by HEAD (see ``_remembered``)."""
        return self._remembered(url, lambda: (self.transport.head(url), None))[0]

    def _remembered(self, url, ask):
        """``(RemoteStat, first bytes or None)`` from ``ask()``, remembered
        for ``metadata_ttl``; a remembered answer comes without bytes.
        ``(None, None)`` for a listed file that answers 404."""
        with self._stat_lock:
            hit = self._stats.get(url)
        if hit is not None:
            return hit, None
        try:
            stat, first = ask()
        except NotFound:
            log.warning("%s is listed but answers 404; keeping the listing's size hint", url)
            return None, None
        with self._stat_lock:
            self._stats[url] = stat
        return stat, first
