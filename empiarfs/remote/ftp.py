"""Exact sizes and modification times of one directory by anonymous FTP
``MLSD`` (the HTTP listing only has rounded sizes; docs/empiar.md).

FTP is an optimisation: when it fails, :class:`FtpUnavailable` tells the
caller why and the caller falls back to HEAD requests. After a failure to
connect, FTP is not tried again for ``RETRY_AFTER`` seconds so that a
blocked port 21 does not cost a connect timeout per directory.

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
from typing import Optional
from urllib.parse import unquote, urlsplit

from empiarfs.errors import RemoteError
from empiarfs.remote.listing import validate_name

log = logging.getLogger(__name__)

RETRY_AFTER = 60.0
MAX_IDLE = 4


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
        self._lock = threading.Lock()
        self._idle: list[ftplib.FTP] = []
        self._down_until = 0.0
        self._down_reason = ""

    def available(self) -> bool:
        """False during the pause after a connection failure."""
        return time.monotonic() >= self._down_until

    def list_dir(self, relpath: str) -> dict:
        """``name -> (size, mtime, is_dir)`` of the children of
        ``root/relpath`` (``size`` is ``None`` for directories).

        Raises
        ------
        FtpUnavailable
            If the server cannot be reached, refuses the login, does not
            support MLSD, or the directory does not exist there.
        """
        if not self.available():
            raise FtpUnavailable(f"FTP {self.host} skipped: {self._down_reason}", url=self.url)
        path = "/".join(p for p in (self.root, relpath.strip("/")) if p) or "/"
        if not path.startswith("/"):
            path = "/" + path
        ftp = self._connection()
        try:
            facts = list(ftp.mlsd(path, facts=["type", "size", "modify"]))
        except (ftplib.Error, OSError, EOFError) as exc:
            self._discard(ftp)
            if isinstance(exc, ftplib.error_perm):
                # 550 (no such directory) or 500 (MLSD unsupported): the
                # server works, this listing does not.
                raise FtpUnavailable(f"FTP MLSD {path} refused: {exc}", url=self.url) from exc
            self._mark_down(f"MLSD failed: {exc}")
            raise FtpUnavailable(f"FTP MLSD {path} failed: {exc}", url=self.url) from exc
        self._release(ftp)
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
        with self._lock:
            idle, self._idle = self._idle, []
        for ftp in idle:
            self._discard(ftp, quit_=True)

    # -- connections ------------------------------------------------------

    def _connection(self) -> ftplib.FTP:
        with self._lock:
            ftp = self._idle.pop() if self._idle else None
        if ftp is not None:
            try:
                ftp.voidcmd("NOOP")
                return ftp
            except (ftplib.Error, OSError, EOFError):
                self._discard(ftp)
        try:
            ftp = ftplib.FTP(timeout=self.timeout, encoding="utf-8")
            ftp.connect(self.host, self.port, timeout=self.timeout)
            ftp.login()  # anonymous
            return ftp
        except (ftplib.Error, OSError, EOFError) as exc:
            self._mark_down(f"cannot connect to ftp://{self.host}:{self.port}: {exc}")
            raise FtpUnavailable(
                f"FTP unavailable ({exc}); using HTTP HEAD for exact sizes", url=self.url
            ) from exc

    def _release(self, ftp: ftplib.FTP) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(ftp)
                return
        self._discard(ftp, quit_=True)

    def _mark_down(self, reason: str) -> None:
        log.warning("%s; falling back to HTTP HEAD for %.0fs", reason, RETRY_AFTER)
        self._down_reason = reason
        self._down_until = time.monotonic() + RETRY_AFTER

    @staticmethod
    def _discard(ftp: ftplib.FTP, quit_: bool = False) -> None:
        try:
            if quit_:
                ftp.quit()
            else:
                ftp.close()
        except (ftplib.Error, OSError, EOFError):
            ftp.close()
