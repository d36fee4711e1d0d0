"""Anonymous FTP: exact sizes and modification times of one directory by
``MLSD`` (the HTTP listing only has rounded sizes; docs/empiar.md §5.3), and
downloads by ``RETR`` resumed with ``REST`` (how EMPIARreader's users
download; ``empiarfs get --via ftp``).

FTP is an optimisation: when it fails, :class:`FtpUnavailable` tells the
caller why and the caller falls back to HTTP. After a failure to connect,
FTP is not tried again for ``RETRY_AFTER`` seconds so that a blocked port
21 does not cost a connect timeout per directory or per file.

A few idle logged-in connections are kept for reuse (EMPIAR directories are
listed one at a time while a tree is walked). Imports errors and
listing (name validation) only.
"""

from __future__ import annotations

import calendar
import ftplib
import logging
import threading
import time
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit

from empiarfs.errors import BadResponse, NotFound, RemoteError
from empiarfs.remote.listing import validate_name

log = logging.getLogger(__name__)

RETRY_AFTER = 60.0
MAX_IDLE = 4
# Bytes per recv() of a download: a stopped transfer ends within one.
CHUNK = 64 * 1024


class FtpUnavailable(RemoteError):
    """FTP could not answer; the message says why. Callers fall back."""


def parse_mlsd_time(value) -> Optional[float]:
    """``"20250207194912"`` or ``"20250207194912.123"`` (UTC) -> epoch."""
    if not value or len(value) < 14 or not value[:14].isdigit():
        return None
    try:
        parts = (int(value[0:4]), int(value[4:6]), int(value[6:8]),
                 int(value[8:10]), int(value[10:12]), int(value[12:14]))
        seconds = float(calendar.timegm(parts))
    except (ValueError, OverflowError):
        return None
    if len(value) > 15 and value[14] == "." and value[15:].isdigit():
        seconds += float("0." + value[15:])
    return seconds


class _Connections:
    """Logged-in anonymous connections to one server: a few idle ones kept
    for reuse, and a pause of ``RETRY_AFTER`` after a failure to connect.

    Lock order: ``_lock`` is a leaf (guards the idle list).
    """

    def __init__(self, host: str, port: int, timeout: float, fallback: str):
        self.host, self.port, self.timeout = host, port, timeout
        self._fallback = fallback       # what callers do instead, for the log
        self._lock = threading.Lock()
        self._idle: list[ftplib.FTP] = []
        self._down_until = 0.0
        self._down_reason = ""

    def available(self) -> bool:
        """False during the pause after a connection failure."""
        return time.monotonic() >= self._down_until

    def get(self, url: str) -> ftplib.FTP:
        """An idle connection that still answers, or a new one.

        Raises
        ------
        FtpUnavailable
            During the pause, or if the server cannot be reached or
            refuses the anonymous login.
        """
        if not self.available():
            raise FtpUnavailable(f"FTP {self.host} skipped: {self._down_reason}", url=url)
        with self._lock:
            ftp = self._idle.pop() if self._idle else None
        if ftp is not None:
            try:
                ftp.voidcmd("NOOP")
                return ftp
            except (ftplib.Error, OSError, EOFError):
                self.discard(ftp)
        try:
            ftp = ftplib.FTP(timeout=self.timeout, encoding="utf-8")
            ftp.connect(self.host, self.port, timeout=self.timeout)
            ftp.login()  # anonymous
            return ftp
        except (ftplib.Error, OSError, EOFError) as exc:
            self.mark_down(f"cannot connect to ftp://{self.host}:{self.port}: {exc}")
            raise FtpUnavailable(f"FTP unavailable ({exc}); {self._fallback}", url=url) from exc

    def release(self, ftp: ftplib.FTP) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(ftp)
                return
        self.discard(ftp, quit_=True)

    def mark_down(self, reason: str) -> None:
        log.warning("%s; %s for %.0fs", reason, self._fallback, RETRY_AFTER)
        self._down_reason = reason
        self._down_until = time.monotonic() + RETRY_AFTER

    def close(self) -> None:
        """Log out of every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for ftp in idle:
            self.discard(ftp, quit_=True)

    @staticmethod
    def discard(ftp: ftplib.FTP, quit_: bool = False) -> None:
        try:
            if quit_:
                ftp.quit()
            else:
                ftp.close()
        except (ftplib.Error, OSError, EOFError):
            ftp.close()


class FtpLister:
    """MLSD listings below one ``ftp://host[:port]/root`` URL.

    Parameters
    ----------
    ftp_url : str
        ``ftp://host[:port]/path`` of the data tree's root.
    timeout : float
        Connect and per-operation socket timeout.
    """

    def __init__(self, ftp_url: str, timeout: float = 10.0):
        parts = urlsplit(ftp_url)
        if parts.scheme != "ftp" or not parts.hostname:
            raise ValueError(f"not an ftp:// URL: {ftp_url!r}")
        self.url = ftp_url.rstrip("/")
        self.host = parts.hostname
        self.port = parts.port or 21
        self.root = unquote(parts.path).rstrip("/")
        self.timeout = timeout
        self._conns = _Connections(self.host, self.port, timeout,
                                   "falling back to HTTP HEAD")

    def available(self) -> bool:
        """False during the pause after a connection failure."""
        return self._conns.available()

    def list_dir(self, relpath: str) -> dict:
        """``name -> (size, mtime, is_dir)`` of the children of
        ``root/relpath`` (``size`` is ``None`` for directories).

        Raises
        ------
        FtpUnavailable
            If the server cannot be reached, refuses the login, does not
            support MLSD, or the directory does not exist there.
        """
        path = "/".join(p for p in (self.root, relpath.strip("/")) if p) or "/"
        if not path.startswith("/"):
            path = "/" + path
        ftp = self._conns.get(self.url)
        try:
            facts = list(ftp.mlsd(path, facts=["type", "size", "modify"]))
        except (ftplib.Error, OSError, EOFError) as exc:
            self._conns.discard(ftp)
            if isinstance(exc, ftplib.error_perm):
                # 550 (no such directory) or 500 (MLSD unsupported): the
                # server works, this listing does not.
                raise FtpUnavailable(f"FTP MLSD {path} refused: {exc}", url=self.url) from exc
            self._conns.mark_down(f"MLSD failed: {exc}")
            raise FtpUnavailable(f"FTP MLSD {path} failed: {exc}", url=self.url) from exc
        self._conns.release(ftp)
        out = {}
        for name, info in facts:
            kind = info.get("type", "").lower()
            if kind in ("cdir", "pdir") or name in (".", ".."):
                continue
            if validate_name(name):
                log.warning("skipping unsafe FTP name %r in %s", name[:100], path)
                continue
            is_dir = kind == "dir"
            size = None
            if not is_dir and info.get("size", "").isdigit():
                size = int(info["size"])
            out[name] = (size, parse_mlsd_time(info.get("modify")), is_dir)
        return out

    def close(self) -> None:
        """Log out of every idle connection."""
        self._conns.close()


class FtpReader:
    """Downloads from ``ftp://`` URLs by ``RETR``, resumed with ``REST``.

    Parameters
    ----------
    timeout : float
        Connect and per-operation socket timeout (a transfer that sends
        nothing for this long breaks off).
    """

    def __init__(self, timeout: float = 10.0):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._servers: dict[tuple, _Connections] = {}

    def available(self, url: str) -> bool:
        """False during the pause after a failure to connect to ``url``'s server."""
        return self._server(url)[0].available()

    def stat(self, url: str) -> tuple[int, Optional[float]]:
        """``(size, mtime)`` of the file at ``url`` by ``SIZE`` and ``MDTM``
        (``mtime`` is ``None`` when the server has no ``MDTM``).

        Raises
        ------
        FtpUnavailable
            If the server cannot be reached or refuses the login.
        NotFound
            If there is no such file.
        RemoteError
            If the server fails in another way.
        """
        conns, path = self._server(url)
        ftp = conns.get(url)
        try:
            ftp.voidcmd("TYPE I")   # servers refuse SIZE in ASCII mode
            size = ftp.size(path)
            try:
                mtime = parse_mlsd_time(ftp.sendcmd(f"MDTM {path}")[4:].strip())
            except ftplib.error_perm:
                mtime = None
        except ftplib.error_perm as exc:
            conns.release(ftp)
            raise NotFound(f"not found on the FTP server: {url} ({exc})", path=url) from None
        except (ftplib.Error, OSError, EOFError) as exc:
            conns.discard(ftp)
            raise RemoteError(f"FTP SIZE/MDTM of {url} failed: {exc}", url=url) from exc
        conns.release(ftp)
        if size is None:
            raise BadResponse(f"the FTP server gave no size for {url}", url=url)
        return int(size), mtime

    def retrieve(self, url: str, start: int, end: int,
                 on_data: Callable[[int, bytes], None]) -> int:
        """Stream bytes ``[start, end)`` of ``url`` to ``on_data(offset,
        chunk)``: ``REST start``, ``RETR``, read until ``end``. Whatever
        ``on_data`` raises ends the transfer and is re-raised. Returns the
        offset reached (``end`` unless the file is shorter).

        Raises
        ------
        FtpUnavailable
            If the server cannot be reached.
        NotFound
            If there is no such file.
        RemoteError
            If the transfer breaks off or the server reports an error.
        """
        conns, path = self._server(url)
        ftp = conns.get(url)
        pos = start
        reusable = False
        try:
            ftp.voidcmd("TYPE I")
            conn = ftp.transfercmd(f"RETR {path}", rest=start or None)
            try:
                conn.settimeout(self.timeout)
                while pos < end:
                    chunk = conn.recv(min(CHUNK, end - pos))
                    if not chunk:
                        break
                    on_data(pos, chunk)
                    pos += len(chunk)
                # At end of file the server has finished too (226 follows);
                # stopped before it, the server answers the cut with 426
                # and the connection is not worth keeping.
                reusable = pos < end or not conn.recv(1)
            finally:
                conn.close()
            if reusable:
                ftp.voidresp()
        except ftplib.error_perm as exc:
            conns.discard(ftp)
            raise NotFound(f"not found on the FTP server: {url} ({exc})", path=url) from None
        except (ftplib.Error, OSError, EOFError) as exc:
            conns.discard(ftp)
            raise RemoteError(f"FTP transfer of {url} broke off at byte {pos}: {exc}",
                              url=url) from exc
        except BaseException:
            conns.discard(ftp)    # the caller stopped the transfer
            raise
        if reusable:
            conns.release(ftp)
        else:
            conns.discard(ftp)
        return pos

    def close(self) -> None:
        """Log out of every idle connection."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for conns in servers:
            conns.close()

    def _server(self, url: str) -> tuple[_Connections, str]:
        parts = urlsplit(url)
        if parts.scheme != "ftp" or not parts.hostname:
            raise ValueError(f"not an ftp:// URL: {url!r}")
        key = (parts.hostname, parts.port or 21)
        with self._lock:
            conns = self._servers.get(key)
            if conns is None:
                conns = self._servers[key] = _Connections(
                    key[0], key[1], self.timeout, "downloading over HTTPS")
        return conns, unquote(parts.path)
