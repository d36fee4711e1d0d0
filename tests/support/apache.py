"""Apache httpd serving a tree like ftp.ebi.ac.uk does: the conformance
twin of :class:`empiarfs.archive_server.ArchiveServer`.

Runs ``apache2 -DFOREGROUND`` with a minimal config of its own in a temp
directory (event MPM, mod_autoindex FancyIndexing + HTMLTable, ``FileETag
MTime Size``). The mime types, icons and ``IndexIgnore`` come from
:mod:`empiarfs.archive_server.autoindex`, because EBI's own mime configuration is
unknown and both servers must agree on it for a row-by-row comparison.
Started as root, the workers run as ``nobody`` (Apache refuses to serve
as root), so the tree must be world-readable.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import requests

from empiarfs.archive_server import autoindex

APACHE = os.environ.get("EMPIARFS_APACHE", "/usr/sbin/apache2")
MODULES = os.environ.get("EMPIARFS_APACHE_MODULES", "/usr/lib/apache2/modules")
_NEEDED = ("mpm_event", "authz_core", "dir", "autoindex", "alias", "mime")


def unavailable_reason() -> str | None:
    """Why Apache cannot run here, or None if it can."""
    if not os.access(APACHE, os.X_OK):
        return f"Apache httpd not installed ({APACHE} missing; scripts/setup installs apache2)"
    for mod in _NEEDED:
        if not os.path.exists(os.path.join(MODULES, f"mod_{mod}.so")):
            return f"Apache module mod_{mod}.so missing in {MODULES}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(conf_dir: str, data_root: str, port: int) -> str:
    lines = [
        f"ServerRoot {conf_dir}", "ServerName 127.0.0.1", f"Listen 127.0.0.1:{port}",
        f"PidFile {conf_dir}/httpd.pid", f"ErrorLog {conf_dir}/error.log", "LogLevel warn",
        *(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in _NEEDED),
        "TypesConfig /dev/null",
        f"DocumentRoot {conf_dir}/htdocs",
        f"Alias /empiar/world_availability {data_root}",
        f'<Directory "{data_root}">', "  Options +Indexes +FollowSymLinks", "  Require all granted",
        "  IndexOptions FancyIndexing HTMLTable NameWidth=*", "</Directory>",
        "FileETag MTime Size", "KeepAlive On", "MaxKeepAliveRequests 0",
        "AddIcon /icons/back.gif ..", "AddIcon /icons/folder.gif ^^DIRECTORY^^",
        "AddIcon /icons/blank.gif ^^BLANKICON^^",
        f"DefaultIcon {autoindex.DEFAULT_ICON[1]}",
        "IndexIgnore " + " ".join(autoindex.INDEX_IGNORE),
    ]
    by_type: dict = {}
    for ext, ctype in autoindex.MIME_TYPES.items():
        by_type.setdefault(ctype, []).append(ext)
    lines += [f"AddType {ctype} {' '.join(exts)}" for ctype, exts in by_type.items()]
    lines += [f"AddIconByType ({alt},{icon}) {pattern}" for alt, icon, pattern in autoindex.ICONS]
    if os.geteuid() == 0:
        # Apache will not serve as root; workers drop to nobody.
        lines += ["User #65534", "Group #65534"]
    return "\n".join(lines) + "\n"


class ApacheTwin:
    """Apache httpd serving ``root/world_availability`` at
    ``/empiar/world_availability`` on loopback.

    Raises
    ------
    RuntimeError
        If Apache does not start or answer within ``startup_timeout``
        (the message includes its error log).
    """

    def __init__(self, root, startup_timeout: float = 15.0):
        self.data_root = os.path.realpath(os.path.join(os.fspath(root), "world_availability"))
        self.startup_timeout = startup_timeout
        self.conf_dir = tempfile.mkdtemp(prefix="empiarfs-apache-")
        os.makedirs(os.path.join(self.conf_dir, "htdocs"))
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_url(self) -> str:
        return self.url + "/empiar/world_availability"

    def _log(self) -> str:
        try:
            with open(os.path.join(self.conf_dir, "error.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()[-3000:]
        except OSError:
            return "(no error log)"

    def start(self) -> "ApacheTwin":
        conf = os.path.join(self.conf_dir, "httpd.conf")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(_config(self.conf_dir, self.data_root, self.port))
        os.chmod(self.conf_dir, 0o755)
        self.proc = subprocess.Popen([APACHE, "-f", conf, "-DFOREGROUND"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                self.stop()
                raise RuntimeError(f"apache2 exited with {self.proc.returncode}: {err}\n{self._log()}")
            try:
                requests.get(self.data_url + "/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"apache2 did not answer on {self.url} within {self.startup_timeout}s\n{self._log()}")

    def stop(self) -> None:
        """Stop the whole process group and remove the config directory."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.conf_dir, ignore_errors=True)

    def __enter__(self) -> "ApacheTwin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
