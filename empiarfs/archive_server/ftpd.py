"""Anonymous read-only FTP over the same tree (pyftpdlib).

The data tree appears at ``/empiar/world_availability`` as on
ftp.ebi.ac.uk; MLSD gives exact sizes and UTC modify times. ``/`` and
``/empiar`` come from an empty skeleton directory so clients can walk down.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

log = logging.getLogger(__name__)

# pyftpdlib configures logging to stderr on first use unless its logger has
# a handler; a NullHandler keeps library code from touching logging setup.
_pyftpdlib_log = logging.getLogger("pyftpdlib")
if not _pyftpdlib_log.handlers:
    _pyftpdlib_log.addHandler(logging.NullHandler())

FTP_PREFIX = "/empiar/world_availability"


class _MappedFS(AbstractedFS):
    """Maps ``/empiar/world_availability/...`` onto the data root."""

    data_root = ""  # set on a per-server subclass

    def ftp2fs(self, ftppath):
        norm = self.ftpnorm(ftppath)
        if norm == FTP_PREFIX or norm.startswith(FTP_PREFIX + "/"):
            rest = norm[len(FTP_PREFIX):].lstrip("/")
            return os.path.normpath(os.path.join(self.data_root, rest))
        return super().ftp2fs(ftppath)

    def fs2ftp(self, fspath):
        if fspath == self.data_root or fspath.startswith(self.data_root + os.sep):
            rest = os.path.relpath(fspath, self.data_root)
            return FTP_PREFIX if rest == "." else FTP_PREFIX + "/" + rest.replace(os.sep, "/")
        return super().fs2ftp(fspath)

    def validpath(self, path):
        real = os.path.realpath(path)
        for base in (os.path.realpath(self.root), os.path.realpath(self.data_root)):
            if real == base or real.startswith(base + os.sep):
                return True
        return False


class FtpFrontend:
    """A pyftpdlib server on ``host:port`` in its own thread."""

    def __init__(self, data_root: str, host: str = "127.0.0.1", port: int = 0):
        self.skeleton = tempfile.mkdtemp(prefix="empiarfs-ftp-")
        os.makedirs(os.path.join(self.skeleton, "empiar", "world_availability"))
        authorizer = DummyAuthorizer()
        authorizer.add_anonymous(self.skeleton, perm="elr")
        fs_class = type("MappedFS", (_MappedFS,), {"data_root": os.path.realpath(data_root)})
        handler = type("Handler", (FTPHandler,), {
            "authorizer": authorizer, "abstracted_fs": fs_class,
            "banner": "empiarfs test FTP (read-only, anonymous)", "timeout": 120,
            "passive_ports": None,
        })
        handler.log_prefix = "[%(username)s]@%(remote_ip)s"
        # Its own I/O loop: pyftpdlib's default is one loop per process, and
        # stopping any server closes every socket in it (a test's private
        # server took the shared one's listener down with it).
        self.server = FTPServer((host, port), handler, ioloop=IOLoop())
        self.server.max_cons = 256
        self.host = host
        self.port = self.server.address[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="empiarfs-ftp", daemon=True)

    def _run(self) -> None:
        # pyftpdlib's IO loop is not thread-safe: poll it here and close it
        # from this same thread when asked to stop.
        try:
            # (ioloop.loop directly: serve_forever would log a start
            # banner and configure logging on every call.)
            while not self._stop.is_set():
                try:
                    self.server.ioloop.loop(timeout=0.05, blocking=False)
                except Exception:
                    # An error raised out of one session's handler must not
                    # end the loop, and with it the listener, for every
                    # later client.
                    log.warning("FTP server: error in the I/O loop; serving on", exc_info=True)
                    time.sleep(0.05)
        finally:
            self.server.close_all()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        shutil.rmtree(self.skeleton, ignore_errors=True)
