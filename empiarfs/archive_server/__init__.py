"""An EMPIAR-compatible archive server for tests, demos and local mirrors.

Serves a tree made by :func:`empiarfs.archive_server.sample.make_sample` (or any tree of the
same shape) on loopback::

    root/api/EMPIAR-N.json              -> /empiar/api/entry/N
    root/world_availability/N/...       -> /empiar/world_availability/N/...
                                           (and ftp://.../empiar/world_availability/N/...)

with run-time fault knobs (:class:`~empiarfs.archive_server.faults.Faults`).
Stands alone: imports nothing from the client side of empiarfs.

Example
-------
>>> with ArchiveServer(root, ftp=True) as server:          # doctest: +SKIP
...     server.faults.stall_probability = 0.03
...     requests.get(server.api_url + "/entry/10002/", timeout=5)
"""

from __future__ import annotations

import logging
import os
import threading

from empiarfs.archive_server.entry_api import Api
from empiarfs.archive_server.faults import Decision, Faults, Stats
from empiarfs.archive_server.httpd import API_PREFIX, DATA_PREFIX, HttpFrontend

log = logging.getLogger(__name__)

__all__ = ["ArchiveServer", "Faults", "Stats", "Decision"]


class ArchiveServer:
    """EMPIAR's API, data tree (HTTP) and optionally FTP on loopback.

    Parameters
    ----------
    root : str or os.PathLike
        Tree with ``api/`` and ``world_availability/``.
    host : str
        Address to bind (keep it on loopback).
    port : int
        HTTP port; 0 picks a free one.
    faults : Faults, optional
        Shared fault knobs; a fresh all-off one by default.
    ftp : bool
        Also serve anonymous read-only FTP.
    ftp_port : int
        FTP port when ``ftp`` is on; 0 picks a free one.

    Raises
    ------
    FileNotFoundError
        If ``root/world_availability`` does not exist.
    """

    def __init__(self, root, host: str = "127.0.0.1", port: int = 0,
                 faults: Faults | None = None, ftp: bool = False, ftp_port: int = 0):
        self.root = os.path.abspath(os.fspath(root))
        self.data_root = os.path.join(self.root, "world_availability")
        if not os.path.isdir(self.data_root):
            raise FileNotFoundError(
                f"{self.data_root} does not exist; create a sample tree with `empiarfs sample DIR`")
        self.data_root_real = os.path.realpath(self.data_root)
        self.host = host
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.api = Api(self.root)
        self.stopping = threading.Event()
        self._want_ftp = ftp
        self._ftp_port = ftp_port
        self._http = HttpFrontend(self, host, port)
        self.port = self._http.port
        self._ftp = None
        self._started = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "ArchiveServer":
        """Start serving (idempotent); returns self."""
        if self._started:
            return self
        if self._want_ftp:
            from empiarfs.archive_server.ftpd import FtpFrontend

            self._ftp = FtpFrontend(self.data_root, self.host, self._ftp_port)
            self._ftp.start()
        self._http.start()
        self._started = True
        log.info("archive server on %s (ftp: %s)", self.url, self.ftp_url or "off")
        return self

    def stop(self) -> None:
        """Stop everything; wakes stalled and throttled handlers so no
        thread keeps a connection open afterwards."""
        if not self._started:
            self._http.httpd.server_close()
            return
        self.stopping.set()
        self._http.stop()
        if self._ftp is not None:
            self._ftp.stop()
        self._started = False

    def __enter__(self) -> "ArchiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """Base of the REST API (``url + "/empiar/api"``)."""
        return self.url + API_PREFIX

    @property
    def data_url(self) -> str:
        """Base of the data tree (``url + "/empiar/world_availability"``)."""
        return self.url + DATA_PREFIX

    @property
    def ftp_url(self) -> str:
        """``ftp://127.0.0.1:PORT/empiar/world_availability``, or ``""``
        when FTP is off."""
        if self._ftp is None:
            return ""
        return f"ftp://{self.host}:{self._ftp.port}{DATA_PREFIX}"

    @property
    def ftp_port(self) -> int | None:
        """The FTP port, or None when FTP is off."""
        return self._ftp.port if self._ftp is not None else None
