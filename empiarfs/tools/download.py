"""Parallel, resumable downloads that keep the archive's layout.

Layout: ``OUTDIR/EMPIAR-N/<path relative to the entry>``.

Guarantees, per file:

* data is written to ``NAME.part``; a sidecar ``NAME.part.json`` records
  the server's fingerprint (size, ETag, Last-Modified) and the byte
  ranges already on disk (only after they were flushed);
* a resume first checks the fingerprint with a HEAD: a changed file
  restarts from zero instead of mixing two versions; every range read
  also carries the fingerprint (``expect=``), so a change during the
  download is caught too (:class:`~empiarfs.errors.StaleFile`);
* ``NAME.part`` is renamed to ``NAME`` only when its size is exactly the
  server's; nothing truncated ever sits under the final name;
* a file already present with the server's size is skipped;
* pieces already in the shared disk cache are copied from it instead of
  fetched (see :class:`CacheSource`).

Concurrency: ``jobs`` files at once; a file with several missing pieces
is fetched by up to ``split`` threads. Lock order: ``_PartState.lock``
is a leaf (never held while calling out).

Local write errors (disk full, permission denied, read-only filesystem)
are fatal for the whole run (:class:`OutputError`): every other file would
fail the same way. Remote errors fail only their file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol

from empiarfs import ranges
from empiarfs.errors import (
    BadResponse,
    EmpiarfsError,
    InvalidInput,
    RemoteError,
    StaleFile,
)
from empiarfs.model import Fingerprint
from empiarfs.namespace.select import split_target
from empiarfs.paths import clean_relpath

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
_SIDECAR_VERSION = 1
# Persist progress at most this often (and always at the end); pieces
# written but not yet recorded are simply fetched again after a crash.
_PERSIST_EVERY = 0.25
_LOCAL_FATAL = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class OutputError(EmpiarfsError, OSError):
    """The output directory cannot be written (full, read-only, no
    permission). Fatal for the whole run."""

    def __init__(self, message, *, code=errno.EIO):
        super().__init__(message)
        self.errno = code

    def __str__(self):
        return self.args[0]


def _output_error(exc: OSError, path) -> OutputError:
    code = exc.errno or errno.EIO
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space or choose another directory with -o"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a writable directory with -o"
    else:
        advice = "check the output directory"
    return OutputError(f"cannot write {path}: {os.strerror(code)}; {advice}", code=code)


# -- what to download -----------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One archive file to download."""

    accession: str        # "EMPIAR-10002"
    relpath: str          # "data/a b.mrc", relative to the entry root
    url: str              # HTTP(S) URL: range reads and the disk-cache key
    size_hint: int = -1   # from the listing (may be rounded); -1 unknown

    @property
    def label(self) -> str:
        return f"{self.accession}/{self.relpath}"


def destination(outdir, target: Target) -> Path:
    """Where ``target`` lands: ``outdir/EMPIAR-N/relpath``."""
    return Path(outdir, target.accession, *clean_relpath(target.relpath).split("/"))


def parse_list_line(line: str, settings) -> tuple[str, str] | None:
    """One line of a ``--from-list`` file -> ``(accession, relpath)``.

    Accepts HTTP(S) or FTP URLs under the configured data/FTP bases (or
    any URL whose path contains ``/world_availability/``, so lists made
    against the public archive work with a mirror), and
    ``ACCESSION/PATH``. Blank lines and ``#`` comments give ``None``.

    Raises
    ------
    InvalidInput
        If the line is neither.
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if "://" not in text:
        accession, relpath = split_target(text)
        if not relpath:
            raise InvalidInput(f"list line {text!r} names an entry, not a file "
                               "(expected ACCESSION/PATH or a URL)")
        return accession, relpath
    rest = None
    for base in (settings.data_url, settings.ftp_url):
        if base and text.startswith(base.rstrip("/") + "/"):
            rest = text[len(base.rstrip("/")) + 1:]
            break
    if rest is None:
        path = urllib.parse.urlsplit(text).path
        marker = "/world_availability/"
        if marker not in path:
            raise InvalidInput(
                f"URL {text!r} is not under the archive's data URL ({settings.data_url}); "
                "use --data-url/--ftp-url to name the archive it comes from")
        rest = path.split(marker, 1)[1]
    rest = urllib.parse.unquote(urllib.parse.urlsplit(rest).path if "?" in rest else rest)
    number, _, relpath = rest.lstrip("/").partition("/")
    from empiarfs.remote.accession import normalize

    relpath = clean_relpath(relpath.lstrip("/"))  # EMPIAR's URLs carry ``10934//x``
    if not relpath:
        raise InvalidInput(f"URL {text!r} names an entry directory, not a file")
    return normalize(number), relpath


# -- the disk cache, seen as a source of bytes ------------------------------


class CacheSource(Protocol):
    """Bytes ``[start, end)`` of a file version if the cache holds all of
    them, else ``None``. Must not touch the network."""

    def read(self, url: str, fingerprint: Fingerprint, start: int, end: int) -> bytes | None:
        ...


class DiskCacheSource:
    """:class:`CacheSource` over the shared :class:`empiarfs.cache.disk.DiskStore`.

    The mount keys blocks by the catalog's fingerprint, which may lack the
    ETag (FTP listings) and never carries Last-Modified, so several keys
    are tried. Only :meth:`DiskStore.has` is used to probe: ``get`` with a
    different fingerprint would make the store drop the other version.
    """

    def __init__(self, store):
        self.store = store

    def read(self, url: str, fingerprint: Fingerprint, start: int, end: int) -> bytes | None:
        if end <= start:
            return b""
        size = self.store.block_size
        first, last = start // size, (end - 1) // size
        candidates = []
        for cand in (Fingerprint(fingerprint.size, fingerprint.etag, None),
                     Fingerprint(fingerprint.size, None, None), fingerprint):
            if cand not in candidates:
                candidates.append(cand)
        for cand in candidates:
            if not all(self.store.has(url, cand, i) for i in range(first, last + 1)):
                continue
            blocks = [self.store.get(url, cand, i) for i in range(first, last + 1)]
            if any(b is None for b in blocks):
                return None
            blob = b"".join(blocks)
            offset = start - first * size
            data = blob[offset:offset + (end - start)]
            return data if len(data) == end - start else None
        return None


# -- progress events ------------------------------------------------------


class Listener:
    """Receives progress events, from worker threads. No-op by default."""

    def planned(self, count: int, total_bytes: int) -> None:
        """Called once, before the first file starts (total may be a hint)."""

    def started(self, target: Target, size: int, present: int) -> None:
        """A file begins; ``present`` bytes are already on disk (resume)."""

    def advanced(self, target: Target, nbytes: int) -> None:
        """``nbytes`` more bytes of ``target`` are on disk."""

    def finished(self, result: "FileResult") -> None:
        """A file is done (any status)."""


@dataclass
class FileResult:
    target: Target
    path: Path
    status: str                 # downloaded | resumed | skipped | failed
    size: int = 0
    fetched: int = 0            # bytes from the network
    from_cache: int = 0         # bytes copied from the disk cache
    restarted: bool = False     # the server file changed; started over
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Summary:
    results: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list:
        return [r for r in self.results if r.status == "failed"]

    @property
    def fetched(self) -> int:
        return sum(r.fetched for r in self.results)

    @property
    def from_cache(self) -> int:
        return sum(r.from_cache for r in self.results)

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.results if r.status != "failed")

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def as_dict(self) -> dict:
        return {
            "files": len(self.results),
            "downloaded": self.count("downloaded"),
            "resumed": self.count("resumed"),
            "skipped": self.count("skipped"),
            "failed": len(self.failures),
            "bytes": self.total_bytes,
            "bytes_fetched": self.fetched,
            "bytes_from_cache": self.from_cache,
            "seconds": round(self.seconds, 3),
            "rate": round(self.fetched / self.seconds) if self.seconds > 0 else 0,
            "failures": [{"file": r.target.label, "error": r.error} for r in self.failures],
        }


@dataclass(frozen=True)
class PlanItem:
    target: Target
    path: Path
    size: int
    status: str                 # new | resume | skip | error
    present: int = 0
    error: str | None = None


# -- sidecar --------------------------------------------------------------


def _fp_dict(fp: Fingerprint) -> dict:
    return {"size": fp.size, "etag": fp.etag, "last_modified": fp.last_modified}


def read_sidecar(path: Path) -> dict | None:
    """The sidecar of a ``.part`` file, or ``None`` if absent/unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != _SIDECAR_VERSION:
        return None
    return data


def _write_sidecar(path: Path, url: str, fp: Fingerprint, done: list) -> None:
    # Atomic replace: a crash leaves either the old or the new record.
    tmp = path.with_name(path.name + ".tmp")
    payload = {"version": _SIDECAR_VERSION, "url": url, "fingerprint": _fp_dict(fp),
               "done": [list(r) for r in ranges.merge(done)]}
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
    os.replace(tmp, path)


def _sidecar_matches(data: dict | None, fp: Fingerprint) -> bool:
    if not data:
        return False
    stored = data.get("fingerprint") or {}
    try:
        old = Fingerprint(int(stored["size"]), stored.get("etag"), stored.get("last_modified"))
    except (KeyError, TypeError, ValueError):
        return False
    return old.matches(fp)


def _present_bytes(data: dict | None) -> int:
    if not data:
        return 0
    return ranges.total(data.get("done") or [])


# -- the downloader -----------------------------------------------------------


class _Aborted(Exception):
    """Internal: another file hit a fatal error; stop quietly."""


@dataclass
class _PartState:
    done: list
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_persist: float = 0.0
    fetched: int = 0
    from_cache: int = 0


class Downloader:
    """Downloads :class:`Target` files under ``outdir``.

    Parameters
    ----------
    transport
        An :class:`empiarfs.remote.transport.Transport` (``head``, ``fetch_range``).
    outdir
        Root of the output tree; created if missing.
    jobs
        Files downloaded at once.
    split
        Parallel range requests per file (files with several missing pieces).
    piece_size
        Bytes per range request and granularity of resume.
    cache
        Optional :class:`CacheSource` consulted before the network.
    listener
        Optional :class:`Listener` for progress.
    """

    def __init__(self, transport, outdir, *, jobs: int = 4, split: int = 4,
                 piece_size: int = 8 * 1024 * 1024, cache: CacheSource | None = None,
                 listener: Listener | None = None):
        if jobs < 1 or split < 1 or piece_size < 1:
            raise InvalidInput("--jobs, --split and the piece size must be at least 1")
        self.transport = transport
        self.outdir = Path(outdir)
        self.jobs = jobs
        self.split = split
        self.piece_size = piece_size
        self.cache = cache
        self.listener = listener or Listener()
        self._abort = threading.Event()

    # -- public -------------------------------------------------------------

    def check_outdir(self) -> None:
        """Create ``outdir`` and prove it is writable, before any download.

        Raises
        ------
        OutputError
            If it cannot be created or written.
        """
        try:
            self.outdir.mkdir(parents=True, exist_ok=True)
            probe = self.outdir / f".empiarfs-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise _output_error(exc, self.outdir) from exc

    def plan(self, targets: list[Target]) -> list[PlanItem]:
        """What :meth:`run` would do, without writing (one HEAD per file)."""
        def one(target: Target) -> PlanItem:
            path = destination(self.outdir, target)
            try:
                fp = self._fingerprint(target)
            except RemoteError as exc:
                return PlanItem(target, path, max(target.size_hint, 0), "error", error=str(exc))
            if _complete(path, fp.size):
                return PlanItem(target, path, fp.size, "skip", fp.size)
            side = read_sidecar(_sidecar(path))
            if _sidecar_matches(side, fp) and _part(path).exists():
                return PlanItem(target, path, fp.size, "resume", _present_bytes(side))
            return PlanItem(target, path, fp.size, "new")

        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="plan") as pool:
            return list(pool.map(one, targets))

    def run(self, targets: list[Target]) -> Summary:
        """Download every target; return a :class:`Summary`.

        Raises
        ------
        OutputError
            On a local write error (disk full, permissions); files finished
            before it are complete, others keep their resumable ``.part``.
        """
        self.check_outdir()
        started = time.monotonic()
        summary = Summary()
        self.listener.planned(len(targets), sum(max(t.size_hint, 0) for t in targets))
        fatal: OutputError | None = None
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="get") as pool:
            futures = [pool.submit(self._one, t) for t in targets]
            try:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except OutputError as exc:
                        fatal = fatal or exc
                        self._abort.set()
                        continue
                    except _Aborted:
                        continue
                    summary.results.append(result)
            except KeyboardInterrupt:
                self._abort.set()
                for future in futures:
                    future.cancel()
                raise
            finally:
                if self._abort.is_set():
                    for future in futures:
                        future.cancel()
        summary.seconds = time.monotonic() - started
        summary.results.sort(key=lambda r: r.target.label)
        if fatal is not None:
            raise fatal
        return summary

    # -- one file -------------------------------------------------------------

    def _fingerprint(self, target: Target) -> Fingerprint:
        stat = self.transport.head(target.url)
        return Fingerprint(int(stat.size), stat.etag, stat.last_modified)

    def _one(self, target: Target) -> FileResult:
        if self._abort.is_set():
            raise _Aborted()
        path = destination(self.outdir, target)
        began = time.monotonic()
        restarted = False
        for attempt in range(2):
            try:
                result = self._attempt(target, path, fresh=attempt > 0)
                result.restarted = result.restarted or restarted
                result.seconds = time.monotonic() - began
                self.listener.finished(result)
                return result
            except StaleFile as exc:
                if attempt == 0:
                    log.info("%s changed on the server during download; starting over: %s",
                             target.label, exc)
                    restarted = True
                    continue
                error = f"the file keeps changing on the server: {exc}"
            except (OutputError, _Aborted):
                raise
            except (RemoteError, InvalidInput) as exc:
                error = str(exc)
            except OSError as exc:
                if exc.errno in _LOCAL_FATAL:
                    raise _output_error(exc, path) from exc
                error = f"{type(exc).__name__}: {exc}"
            break
        result = FileResult(target, path, "failed", max(target.size_hint, 0), error=error,
                            restarted=restarted, seconds=time.monotonic() - began)
        self.listener.finished(result)
        return result

    def _attempt(self, target: Target, path: Path, fresh: bool) -> FileResult:
        fp = self._fingerprint(target)
        part, side_path = _part(path), _sidecar(path)
        if _complete(path, fp.size):
            _discard(part, side_path)
            self.listener.started(target, fp.size, fp.size)
            return FileResult(target, path, "skipped", fp.size)
        side = None if fresh else read_sidecar(side_path)
        resumable = _sidecar_matches(side, fp) and part.exists()
        restarted = bool(side) and not resumable
        if restarted:
            log.info("%s changed on the server since the .part was started; starting over",
                     target.label)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not resumable:
                _discard(part, side_path)
            fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _output_error(exc, part) from exc
        created_now = not resumable
        state = _PartState(done=ranges.merge(side.get("done") or []) if resumable else [])
        try:
            try:
                if os.fstat(fd).st_size != fp.size:
                    os.ftruncate(fd, fp.size)
                _reserve(fd, fp.size)
                if not resumable:
                    _write_sidecar(side_path, target.url, fp, [])
            except OSError as exc:
                raise _output_error(exc, part) from exc
            present = sum(e - s for s, e in state.done)
            self.listener.started(target, fp.size, present)
            pieces = ranges.gaps(fp.size, state.done, self.piece_size)
            self._fetch_pieces(target, fp, fd, pieces, state, side_path)
            try:
                os.fsync(fd)
                if os.fstat(fd).st_size != fp.size:
                    raise BadResponse(f"{target.label}: wrote {os.fstat(fd).st_size} bytes, "
                                      f"the server has {fp.size}")
            except OSError as exc:
                raise _output_error(exc, part) from exc
        except OutputError:
            os.close(fd)
            if created_now and not state.done:
                _discard(part, side_path)  # nothing worth keeping for a resume
            raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        try:
            os.replace(part, path)
            _discard(side_path)
        except OSError as exc:
            raise _output_error(exc, path) from exc
        return FileResult(target, path, "resumed" if resumable and present else "downloaded",
                          fp.size, fetched=state.fetched, from_cache=state.from_cache,
                          restarted=restarted)

    def _fetch_pieces(self, target, fp, fd, pieces, state: _PartState, side_path) -> None:
        if not pieces:
            return

        def fetch(piece):
            if self._abort.is_set():
                raise _Aborted()
            start, end = piece
            data = None
            if self.cache is not None:
                try:
                    data = self.cache.read(target.url, fp, start, end)
                except Exception as exc:  # a broken cache must not break downloads
                    log.warning("disk cache read failed for %s: %s", target.label, exc)
                    data = None
                from_cache = data is not None
            if data is None:
                from_cache = False
                data = self.transport.fetch_range(target.url, start, end, expect=fp)
            if len(data) != end - start:
                raise BadResponse(f"{target.label}: asked for bytes {start}-{end - 1}, "
                                  f"got {len(data)} bytes")
            try:
                os.pwrite(fd, data, start)
            except OSError as exc:
                raise _output_error(exc, side_path.with_suffix("")) from exc
            with state.lock:
                state.done = ranges.merge(state.done + [(start, end)])
                if from_cache:
                    state.from_cache += len(data)
                else:
                    state.fetched += len(data)
                due = time.monotonic() - state.last_persist >= _PERSIST_EVERY
                if due:
                    state.last_persist = time.monotonic()
                    snapshot = list(state.done)
            self.listener.advanced(target, len(data))
            if due:
                self._persist(fd, side_path, target, fp, snapshot)

        try:
            if len(pieces) == 1 or self.split == 1:
                for piece in pieces:
                    fetch(piece)
            else:
                with ThreadPoolExecutor(max_workers=min(self.split, len(pieces)),
                                        thread_name_prefix="piece") as pool:
                    futures = [pool.submit(fetch, p) for p in pieces]
                    try:
                        for future in as_completed(futures):
                            future.result()
                    finally:
                        for future in futures:
                            future.cancel()
        finally:
            # Record what is really on disk, whatever happened.
            with state.lock:
                snapshot = list(state.done)
            try:
                self._persist(fd, side_path, target, fp, snapshot)
            except OutputError:
                log.warning("could not record progress of %s", target.label)

    def _persist(self, fd, side_path, target, fp, done) -> None:
        try:
            os.fdatasync(fd)  # data first, then the record that claims it
            _write_sidecar(side_path, target.url, fp, done)
        except OSError as exc:
            raise _output_error(exc, side_path) from exc


def _part(path: Path) -> Path:
    return path.with_name(path.name + PART_SUFFIX)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _complete(path: Path, size: int) -> bool:
    try:
        return path.is_file() and path.stat().st_size == size
    except OSError:
        return False


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _reserve(fd: int, size: int) -> None:
    """Reserve the blocks now, so a full disk fails at once rather than
    mid-file. Filesystems without fallocate just skip this."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise


def targets_for(archive, accession: str, relpath: str = "", selector=None) -> list[Target]:
    """Every file under ``accession/relpath`` chosen by ``selector``.

    Raises
    ------
    NotFound
        If the entry or path does not exist.
    """
    from empiarfs.namespace.select import walk

    out = []
    for info in walk(archive, accession, relpath, selector):
        url = info.url or archive.file_url(accession, info.path, "https")
        out.append(Target(accession, info.path, url, info.size))
    return out


def targets_from_lines(lines: Iterable[str], archive, settings) -> list[Target]:
    """Targets for the lines of a ``--from-list`` file (duplicates dropped).

    Raises
    ------
    InvalidInput
        On a line that is neither a URL of the archive nor ACCESSION/PATH.
    """
    seen, out = set(), []
    for number, line in enumerate(lines, 1):
        try:
            parsed = parse_list_line(line, settings)
        except InvalidInput as exc:
            raise InvalidInput(f"line {number}: {exc}") from exc
        if parsed is None or parsed in seen:
            continue
        seen.add(parsed)
        accession, relpath = parsed
        out.append(Target(accession, relpath, archive.file_url(accession, relpath, "https")))
    return out


__all__ = [
    "Downloader", "DiskCacheSource", "Target", "FileResult", "Summary", "PlanItem", "Listener", "CacheSource",
    "OutputError", "destination", "parse_list_line", "targets_for", "targets_from_lines",
    "read_sidecar",
]
