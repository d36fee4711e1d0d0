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
  fetched (see :class:`CacheSource`);
* bytes are written as they arrive and recorded at least every quarter
  second, so progress moves with the bytes and an interruption (Ctrl-C)
  stops within about a second, losing at most the last quarter second;
* the finished file carries the archive's modification time.

Over HTTPS (the default) a file's missing pieces are range requests, up
to ``split`` at once. Over FTP (``via="ftp"``) a file is one ``RETR`` per
missing run, resumed with ``REST``, its size and time checked by ``SIZE``
and ``MDTM`` before and after; ``via="auto"`` tries FTP first and falls
back to HTTPS when FTP is blocked or breaks off (EMPIARreader's order).

Concurrency: ``jobs`` files at once; a file with several missing pieces
is fetched by up to ``split`` threads. Lock order: ``_Part.lock`` is a
leaf (held only around one write and its bookkeeping).

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
from concurrent.futures import wait as wait_futures
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
#: How ``get`` may download: ``https`` (range requests), ``ftp`` (RETR with
#: REST) or ``auto`` (FTP first, HTTPS when FTP is blocked).
VIA = ("https", "ftp", "auto")


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
    ftp_url: str = ""     # the same file over FTP ("" if unknown)

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
    """:class:`CacheSource` over the shared :class:`empiarfs.cache.disk.DiskStore`:
    the blocks the mount (or any process) stored for the same file version
    (:class:`empiarfs.cache.keys.FileVersion`; the store decides what "same
    version" means, by :meth:`Fingerprint.change_from`). ``has`` is asked
    first so that a probe never drops blocks of another version.
    """

    def __init__(self, store):
        self.store = store

    def read(self, url: str, fingerprint: Fingerprint, start: int, end: int) -> bytes | None:
        if end <= start:
            return b""
        size = self.store.block_size
        first, last = start // size, (end - 1) // size
        if not all(self.store.has(url, fingerprint, i) for i in range(first, last + 1)):
            return None
        blocks = [self.store.get(url, fingerprint, i) for i in range(first, last + 1)]
        if any(b is None for b in blocks):
            return None
        blob = b"".join(blocks)
        offset = start - first * size
        data = blob[offset:offset + (end - start)]
        return data if len(data) == end - start else None


# -- progress events ------------------------------------------------------


class Listener:
    """Receives progress events, from worker threads. No-op by default."""

    def planned(self, count: int, total_bytes: int, unknown: int = 0) -> None:
        """Called once, before the first file starts: ``total_bytes`` adds
        up the listing's size hints, ``unknown`` files have none."""

    def started(self, target: Target, size: int, present: int) -> None:
        """A file begins; ``present`` bytes are already on disk (resume)."""

    def advanced(self, target: Target, nbytes: int) -> None:
        """``nbytes`` more bytes of ``target`` are on disk (called as they
        arrive, every few tens of KiB)."""

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
    via: str = ""               # "https" or "ftp": how the bytes came


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
            "via": {via: sum(1 for r in self.results if r.via == via and r.fetched)
                    for via in ("https", "ftp")},
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
    """Internal: the run is stopping (a fatal error elsewhere, or Ctrl-C)."""


class _FtpFailed(Exception):
    """Internal: FTP failed for one file under ``via="auto"``; the file
    goes on over HTTPS (its .part is kept)."""

    def __init__(self, cause: RemoteError):
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Remote:
    """One file as a source sees it: its version and modification time."""

    via: str                    # "https" or "ftp"
    fingerprint: Fingerprint
    mtime: float | None


class _Part:
    """The ``.part`` file being written and what of it is on disk.

    Writes come from the threads reading replies, possibly two for the
    same bytes (a hedged request); ``lock`` (a leaf) keeps each write and
    its bookkeeping whole, and ``closed`` turns away a write that arrives
    after the file was closed, so a late hedge cannot write into a reused
    descriptor.
    """

    def __init__(self, fd: int, done: list, path: Path, target: Target,
                 fingerprint: Fingerprint):
        self.fd = fd
        self.done = done
        self.part_path, self.side_path = _part(path), _sidecar(path)
        self.target = target
        self.fingerprint = fingerprint
        self.lock = threading.Lock()
        self.closed = False
        self.fetched = 0
        self.from_cache = 0
        self.last_persist = time.monotonic()

    def add(self, offset: int, data, from_cache: bool = False) -> int:
        """Write ``data`` at ``offset``; the number of bytes new to the file."""
        end = offset + len(data)
        with self.lock:
            if self.closed:
                raise _Aborted()
            try:
                os.pwrite(self.fd, data, offset)
            except OSError as exc:
                raise _output_error(exc, self.part_path) from exc
            before = ranges.total(self.done)
            self.done = ranges.merge(self.done + [(offset, end)])
            new = ranges.total(self.done) - before
            if from_cache:
                self.from_cache += new
            else:
                self.fetched += new
        return new

    def covers(self, start: int, end: int) -> bool:
        with self.lock:
            return not ranges.gaps(end, [(0, start)] + self.done)

    def persist(self, force: bool = False) -> None:
        """Record what is on disk: data first (fdatasync), then the sidecar
        that claims it. Unless ``force``, at most every ``_PERSIST_EVERY``."""
        with self.lock:
            if self.closed:
                return
            if not force and time.monotonic() - self.last_persist < _PERSIST_EVERY:
                return
            self.last_persist = time.monotonic()
            try:
                os.fdatasync(self.fd)
                _write_sidecar(self.side_path, self.target.url, self.fingerprint, self.done)
            except OSError as exc:
                raise _output_error(exc, self.side_path) from exc

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)


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
        Parallel range requests per file (files with several missing
        pieces; HTTPS only).
    piece_size
        Bytes per range request.
    cache
        Optional :class:`CacheSource` consulted before the network.
    listener
        Optional :class:`Listener` for progress.
    via
        ``"https"``, ``"ftp"`` or ``"auto"`` (:data:`VIA`).
    ftp
        An :class:`empiarfs.remote.ftp.FtpReader`; needed unless ``via``
        is ``"https"``.
    grace
        Seconds an interrupted run waits for transfers to record their
        progress before it gives up on them.
    """

    def __init__(self, transport, outdir, *, jobs: int = 4, split: int = 4,
                 piece_size: int = 8 * 1024 * 1024, cache: CacheSource | None = None,
                 listener: Listener | None = None, via: str = "https", ftp=None,
                 grace: float = 1.0):
        if jobs < 1 or split < 1 or piece_size < 1:
            raise InvalidInput("--jobs, --split and the piece size must be at least 1")
        if via not in VIA:
            raise InvalidInput(f"--via must be one of {', '.join(VIA)}, not {via!r}")
        if via != "https" and ftp is None:
            raise InvalidInput(f"--via {via} needs an FTP server: set --ftp-url "
                               "(or EMPIARFS_FTP_URL)")
        self.transport = transport
        self.outdir = Path(outdir)
        self.jobs = jobs
        self.split = split
        self.piece_size = piece_size
        self.cache = cache
        self.listener = listener or Listener()
        self.via = via
        self.ftp = ftp
        self.grace = grace
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
        """What :meth:`run` would do, without writing (one HEAD, or FTP
        ``SIZE``, per file)."""
        def one(target: Target) -> PlanItem:
            path = destination(self.outdir, target)
            try:
                fp = self._remote(target, self._first_via(target)).fingerprint
            except _FtpFailed:
                try:
                    fp = self._remote(target, "https").fingerprint
                except RemoteError as exc:
                    return PlanItem(target, path, max(target.size_hint, 0), "error",
                                    error=str(exc))
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
        KeyboardInterrupt
            Re-raised once every transfer has recorded its progress (or
            after ``grace`` seconds): the ``.part`` files resume.
        """
        self.check_outdir()
        started = time.monotonic()
        summary = Summary()
        self.listener.planned(len(targets), sum(max(t.size_hint, 0) for t in targets),
                              sum(1 for t in targets if t.size_hint < 0))
        fatal: OutputError | None = None
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="get")
        futures = [pool.submit(self._one, t) for t in targets]
        interrupted = False
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
            # Transfers see the flag at their next chunk and record what
            # they wrote; one that hears nothing from its server is left
            # behind (what it wrote so far is recorded already).
            interrupted = True
            self._abort.set()
            wait_futures(futures, timeout=self.grace)
            raise
        finally:
            if self._abort.is_set():
                for future in futures:
                    future.cancel()
            pool.shutdown(wait=not interrupted, cancel_futures=True)
        summary.seconds = time.monotonic() - started
        summary.results.sort(key=lambda r: r.target.label)
        if fatal is not None:
            raise fatal
        return summary

    # -- one file -------------------------------------------------------------

    def _first_via(self, target: Target) -> str:
        if self.via == "https" or (self.via == "auto" and not target.ftp_url):
            return "https"
        if not target.ftp_url:
            raise InvalidInput(f"{target.label}: no FTP URL to download it from")
        return "ftp"

    def _remote(self, target: Target, via: str) -> _Remote:
        """The file's version and time, by HEAD or by FTP ``SIZE``/``MDTM``.

        Raises
        ------
        _FtpFailed
            Under ``via="auto"``, if FTP cannot answer.
        """
        if via == "https":
            stat = self.transport.head(target.url)
            if stat.size is None:
                raise BadResponse(f"{target.url} gives no size", url=target.url)
            return _Remote("https", Fingerprint(int(stat.size), stat.etag, stat.last_modified),
                           stat.mtime)
        try:
            size, mtime = self.ftp.stat(target.ftp_url)
        except RemoteError as exc:
            # Under auto a file FTP cannot give (blocked, broken, or absent
            # from a mirror's FTP tree) is asked of HTTPS, which has the
            # last word.
            if self.via == "auto":
                raise _FtpFailed(exc) from exc
            raise
        # An epoch number: the version rule compares it with nothing but
        # sizes (FTP clocks round differently from HTTP's).
        stamp = str(int(mtime)) if mtime is not None else None
        return _Remote("ftp", Fingerprint(size, None, stamp), mtime)

    def _one(self, target: Target) -> FileResult:
        if self._abort.is_set():
            raise _Aborted()
        path = destination(self.outdir, target)
        began = time.monotonic()
        restarted = False
        attempt = 0
        try:
            via = self._first_via(target)
        except InvalidInput as exc:
            via, attempt, error = None, 2, str(exc)
        while attempt < 2:
            try:
                result = self._attempt(target, path, fresh=attempt > 0, via=via)
                result.restarted = result.restarted or restarted
                result.seconds = time.monotonic() - began
                self.listener.finished(result)
                return result
            except _FtpFailed as exc:
                log.info("%s: FTP failed (%s); going on over HTTPS", target.label, exc)
                via = "https"
                continue
            except StaleFile as exc:
                if attempt == 0:
                    log.info("%s changed on the server during download; starting over: %s",
                             target.label, exc)
                    restarted = True
                    attempt += 1
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

    def _attempt(self, target: Target, path: Path, fresh: bool, via: str) -> FileResult:
        remote = self._remote(target, via)
        fp = remote.fingerprint
        part_path, side_path = _part(path), _sidecar(path)
        if _complete(path, fp.size):
            _discard(part_path, side_path)
            self.listener.started(target, fp.size, fp.size)
            return FileResult(target, path, "skipped", fp.size)
        side = None if fresh else read_sidecar(side_path)
        resumable = _sidecar_matches(side, fp) and part_path.exists()
        restarted = bool(side) and not resumable
        if restarted:
            log.info("%s changed on the server since the .part was started; starting over",
                     target.label)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not resumable:
                _discard(part_path, side_path)
            fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _output_error(exc, part_path) from exc
        created_now = not resumable
        part = _Part(fd, ranges.merge(side.get("done") or []) if resumable else [], path,
                     target, fp)
        try:
            try:
                if os.fstat(fd).st_size != fp.size:
                    os.ftruncate(fd, fp.size)
                _reserve(fd, fp.size)
                if not resumable:
                    _write_sidecar(side_path, target.url, fp, [])
            except OSError as exc:
                raise _output_error(exc, part_path) from exc
            present = ranges.total(part.done)
            self.listener.started(target, fp.size, present)
            self._fill(target, remote, part)
            try:
                os.fsync(fd)
                if os.fstat(fd).st_size != fp.size:
                    raise BadResponse(f"{target.label}: wrote {os.fstat(fd).st_size} bytes, "
                                      f"the server has {fp.size}")
                if remote.mtime is not None:
                    # Before the rename: the final name never shows the
                    # download time.
                    os.utime(fd, (time.time(), remote.mtime))
            except OSError as exc:
                raise _output_error(exc, part_path) from exc
        except OutputError:
            part.close()
            if created_now and not part.done:
                _discard(part_path, side_path)  # nothing worth keeping for a resume
            raise
        except BaseException:
            part.close()
            raise
        part.close()
        try:
            os.replace(part_path, path)
            _discard(side_path)
        except OSError as exc:
            raise _output_error(exc, path) from exc
        return FileResult(target, path, "resumed" if resumable and present else "downloaded",
                          fp.size, fetched=part.fetched, from_cache=part.from_cache,
                          restarted=restarted, via=remote.via)

    def _fill(self, target: Target, remote: _Remote, part: _Part) -> None:
        """Fetch every byte the ``.part`` lacks: the disk cache first, then
        the network; the sidecar is brought up to date whatever happens."""
        try:
            if self.cache is not None:
                self._from_cache(target, part)
            missing = ranges.gaps(remote.fingerprint.size, part.done)
            if remote.via == "ftp":
                self._from_ftp(target, remote, part, missing)
            else:
                pieces = [p for start, end in missing
                          for p in ranges.gaps(end, [(0, start)], self.piece_size)]
                self._from_https(target, part, pieces)
        finally:
            try:
                part.persist(force=True)
            except OutputError:
                log.warning("could not record progress of %s", target.label)

    def _on_data(self, target: Target, part: _Part):
        """The sink of a transfer: write, report, persist now and then, and
        stop the transfer when the run is stopping."""
        def on_data(offset, chunk):
            if self._abort.is_set():
                raise _Aborted()
            new = part.add(offset, chunk)
            if new:
                self.listener.advanced(target, new)
            part.persist()
        return on_data

    def _from_cache(self, target: Target, part: _Part) -> None:
        for start, end in ranges.gaps(part.fingerprint.size, part.done, self.piece_size):
            if self._abort.is_set():
                raise _Aborted()
            try:
                data = self.cache.read(target.url, part.fingerprint, start, end)
            except Exception as exc:  # a broken cache must not break downloads
                log.warning("disk cache read failed for %s: %s", target.label, exc)
                return
            if data is not None and len(data) == end - start:
                new = part.add(start, data, from_cache=True)
                if new:
                    self.listener.advanced(target, new)
                part.persist()

    def _from_https(self, target: Target, part: _Part, pieces: list) -> None:
        on_data = self._on_data(target, part)

        def fetch(piece):
            if self._abort.is_set():
                raise _Aborted()
            start, end = piece
            data = self.transport.fetch_range(target.url, start, end, expect=part.fingerprint,
                                              on_data=on_data)
            if len(data) != end - start:
                raise BadResponse(f"{target.label}: asked for bytes {start}-{end - 1}, "
                                  f"got {len(data)} bytes")
            if not part.covers(start, end):  # a transport that streams nothing
                on_data(start, data)

        if not pieces:
            return
        if len(pieces) == 1 or self.split == 1:
            for piece in pieces:
                fetch(piece)
            return
        with ThreadPoolExecutor(max_workers=min(self.split, len(pieces)),
                                thread_name_prefix="piece") as pool:
            futures = [pool.submit(fetch, p) for p in pieces]
            try:
                for future in as_completed(futures):
                    future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _from_ftp(self, target: Target, remote: _Remote, part: _Part, missing: list) -> None:
        on_data = self._on_data(target, part)
        try:
            for start, end in missing:
                reached = self.ftp.retrieve(target.ftp_url, start, end, on_data)
                if reached < end:
                    raise StaleFile(f"{target.label} is shorter on the FTP server than "
                                    f"its size ({reached} < {remote.fingerprint.size})",
                                    url=target.ftp_url)
            # FTP has no version check per transfer: the file must be the
            # same after it as before it.
            size, mtime = self.ftp.stat(target.ftp_url)
        except StaleFile:
            raise
        except RemoteError as exc:
            if self.via == "auto":
                raise _FtpFailed(exc) from exc
            raise
        if (size, mtime) != (remote.fingerprint.size, remote.mtime):
            raise StaleFile(f"{target.label} changed on the FTP server during the download",
                            url=target.ftp_url)


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
        out.append(Target(accession, info.path, url, info.size,
                          ftp_url=archive.file_url(accession, info.path, "ftp")))
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
        out.append(Target(accession, relpath, archive.file_url(accession, relpath, "https"),
                          ftp_url=archive.file_url(accession, relpath, "ftp")))
    return out


__all__ = [
    "Downloader", "DiskCacheSource", "Target", "FileResult", "Summary", "PlanItem", "Listener", "CacheSource",
    "OutputError", "destination", "parse_list_line", "targets_for", "targets_from_lines",
    "read_sidecar", "VIA",
]
