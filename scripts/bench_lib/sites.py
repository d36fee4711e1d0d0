"""What the clients talk to in one profile: the servers, the URLs they see,
and one set of counters over whatever is in front.

* ``project``: the project's ``ArchiveServer`` (``serve.py``) answers API,
  data and FTP, with the profile's server-side fault knobs.
* ``apache``: Apache httpd serves the data tree (as ftp.ebi.ac.uk does);
  the project server answers the API and FTP. Counters come from Apache's
  access log plus the project server's own.
* ``tcp-wan``: either of the above behind :mod:`wanproxy` (one listener for
  the API host, one for the data host); FTP points at a closed port
  (unreachable, as from most networks that reach EMPIAR over HTTPS only).
  Counters come from the proxy, which sees every request, the never
  answered ones included, and how many were in flight per host.

A site's ``stats()`` uses the archive server's counter names
(``requests``, ``requests.file``, ``requests.head``, ``bytes_sent``,
``faults.stall``) so the workloads need not know which site they measure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from procs import BenchError, ServerProcess

from empiarfs.archive_server import autoindex

HERE = os.path.dirname(os.path.abspath(__file__))
APACHE = os.environ.get("EMPIARFS_APACHE", "/usr/sbin/apache2")
APACHE_MODULES = os.environ.get("EMPIARFS_APACHE_MODULES", "/usr/lib/apache2/modules")
_APACHE_MODS = ("mpm_event", "authz_core", "dir", "autoindex", "alias", "mime")
DATA_PATH = "/empiar/world_availability"


def apache_missing() -> str | None:
    """Why Apache cannot run here, or None."""
    if not os.access(APACHE, os.X_OK):
        return f"{APACHE} missing (scripts/setup installs apache2)"
    for mod in _APACHE_MODS:
        if not os.path.exists(os.path.join(APACHE_MODULES, f"mod_{mod}.so")):
            return f"mod_{mod}.so missing in {APACHE_MODULES}"
    return None


def _check_world_readable(path: str) -> None:
    """Apache's workers run as nobody: every directory up to the tree must
    let others through."""
    here = path
    while True:
        if not os.stat(here).st_mode & 0o001:
            raise BenchError(f"Apache's workers (user nobody) cannot enter {here}: use a "
                             f"--workdir whose parent directories are world-readable")
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _merge(*stats: dict) -> dict:
    out: dict = {}
    for s in stats:
        for key, value in s.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
    return out


class ApacheProcess:
    """Apache httpd serving ``root/world_availability`` at ``DATA_PATH`` on
    loopback, with an access log the counters are read from. Workers run as
    ``nobody`` when started as root (Apache will not serve as root)."""

    def __init__(self, root: str, workdir: str):
        missing = apache_missing()
        if missing:
            raise BenchError(f"Apache httpd cannot run: {missing}")
        self.data_root = os.path.realpath(os.path.join(root, "world_availability"))
        if os.geteuid() == 0:
            _check_world_readable(self.data_root)
        self.conf_dir = os.path.join(workdir, "apache")
        shutil.rmtree(self.conf_dir, ignore_errors=True)
        os.makedirs(os.path.join(self.conf_dir, "htdocs"))
        os.chmod(self.conf_dir, 0o755)
        self.port = closed_port()
        self.access_log = os.path.join(self.conf_dir, "access.log")
        conf = os.path.join(self.conf_dir, "httpd.conf")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(self._config())
        self.proc = subprocess.Popen([APACHE, "-f", conf, "-DFOREGROUND"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.offset = 0
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.data_url + "/", timeout=1).read()
                break
            except urllib.error.HTTPError as exc:
                self.stop()
                raise BenchError(f"Apache answers {exc.code} for {self.data_url}/; see "
                                 f"{self.conf_dir}/error.log") from exc
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"Apache did not start; see {self.conf_dir}/error.log") from exc
                time.sleep(0.05)
        self.reset()

    @property
    def data_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{DATA_PATH}"

    def _config(self) -> str:
        d = self.conf_dir
        lines = [
            f"ServerRoot {d}", "ServerName 127.0.0.1", f"Listen 127.0.0.1:{self.port}",
            f"PidFile {d}/httpd.pid", f"ErrorLog {d}/error.log", "LogLevel warn",
            *(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in _APACHE_MODS),
            "TypesConfig /dev/null", f"DocumentRoot {d}/htdocs",
            f"Alias {DATA_PATH} {self.data_root}",
            f'<Directory "{self.data_root}">', "  Options +Indexes +FollowSymLinks",
            "  Require all granted", "  IndexOptions FancyIndexing HTMLTable NameWidth=*",
            "</Directory>",
            "FileETag MTime Size", "KeepAlive On", "MaxKeepAliveRequests 0",
            # Longer than the default 5 s so an idle keep-alive connection of
            # a client in a pause between reads is still there (the WAN proxy
            # re-opens upstream connections anyway).
            "KeepAliveTimeout 60",
            # Enough workers for 64 connections of empiarfs plus peers.
            "ServerLimit 16", "ThreadsPerChild 32", "MaxRequestWorkers 512",
            'LogFormat "%m %U %>s %B" bench', f"CustomLog {self.access_log} bench",
            "IndexIgnore " + " ".join(autoindex.INDEX_IGNORE),
        ]
        by_type: dict = {}
        for ext, ctype in autoindex.MIME_TYPES.items():
            by_type.setdefault(ctype, []).append(ext)
        lines += [f"AddType {ctype} {' '.join(exts)}" for ctype, exts in by_type.items()]
        if os.geteuid() == 0:
            lines += ["User #65534", "Group #65534"]
        return "\n".join(lines) + "\n"

    def reset(self) -> None:
        try:
            self.offset = os.path.getsize(self.access_log)
        except OSError:
            self.offset = 0

    def stats(self) -> dict:
        out = {"requests": 0, "requests.file": 0, "requests.head": 0, "requests.listing": 0,
               "bytes_sent": 0}
        try:
            with open(self.access_log, "rb") as fh:
                fh.seek(self.offset)
                lines = fh.read().decode("latin-1").splitlines()
        except OSError:
            return out
        for line in lines:
            parts = line.split()
            if len(parts) < 4:
                continue
            method, path, _status, size = parts[:4]
            out["requests"] += 1
            if method == "HEAD":
                out["requests.head"] += 1
            elif path.endswith("/"):
                out["requests.listing"] += 1
            else:
                out["requests.file"] += 1
            out["bytes_sent"] += int(size) if size.isdigit() else 0
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass


class WanProxyProcess:
    """``wanproxy.py`` in a child process, steered over stdin."""

    def __init__(self, upstreams: dict, knobs: dict, log_path: str):
        self.log = open(log_path, "ab")
        cmd = [sys.executable, os.path.join(HERE, "wanproxy.py"),
               "--rtt", str(knobs["rtt"]), "--window", str(int(knobs["window"])),
               "--initial-window", str(int(knobs["initial_window"])),
               "--stall", str(knobs["stall"]), "--seed", str(int(knobs.get("seed", 0)))]
        if knobs.get("restart_after") is not None:
            cmd += ["--restart-after", str(knobs["restart_after"])]
        for name, url in upstreams.items():
            cmd += ["--upstream", f"{name}={url}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.urls = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the WAN proxy exited (code {self.proc.poll()}); see {self.log.name}")
        return json.loads(line)

    def command(self, text: str) -> dict:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def stop(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


class Site:
    """The servers of one profile; a context manager.

    ``urls`` (``api_url``, ``data_url``, ``ftp_url``) are what every client
    is given; ``stats()``/``reset()`` count what reached the servers;
    ``set_stall(p)`` turns never-answered requests on or off (the
    references run without them)."""

    def __init__(self, profile: str, knobs: dict, server: str, root: str, workdir: str,
                 child_env: dict):
        self.profile, self.knobs, self.kind = profile, knobs, server
        logs = os.path.join(workdir, "logs")
        os.makedirs(logs, exist_ok=True)
        self.server = self.apache = self.proxy = None
        tcp = profile == "tcp-wan"
        try:
            # Server-side faults only where the profile has them; behind the
            # proxy the server is plain and the proxy does the rest.
            faulty = not tcp
            self.server = ServerProcess(root, knobs.get("rate", 0.0) if faulty else 0.0,
                                        knobs.get("latency", 0.0) if faulty else 0.0,
                                        knobs.get("stall", 0.0) if faulty else 0.0,
                                        os.path.join(logs, f"server-{profile}.log"), child_env)
            urls = dict(self.server.urls)
            if server == "apache":
                self.apache = ApacheProcess(root, workdir)
                urls["data_url"] = self.apache.data_url
            if tcp:
                api, data = urls["api_url"], urls["data_url"]
                self.proxy = WanProxyProcess({"api": _origin(api), "data": _origin(data)}, knobs,
                                             os.path.join(logs, f"wanproxy-{profile}.log"))
                urls["api_url"] = self.proxy.urls["api"] + _path(api)
                urls["data_url"] = self.proxy.urls["data"] + _path(data)
                urls["ftp_url"] = f"ftp://127.0.0.1:{closed_port()}{_path(urls['ftp_url'])}"
            self.urls = urls
        except BaseException:
            self.stop()
            raise

    def stats(self) -> dict:
        if self.proxy:
            per_host = self.proxy.command("stats")
            out = _merge(*per_host.values())
            for host, s in per_host.items():
                out[f"max_in_flight.{host}"] = s["max_in_flight"]
                out[f"max_connections.{host}"] = s["max_connections"]
            out["max_in_flight"] = max(s["max_in_flight"] for s in per_host.values())
            return out
        return _merge(self.server.stats(), self.apache.stats() if self.apache else {})

    def reset(self) -> None:
        if self.proxy:
            self.proxy.command("reset")
            return
        self.server.reset()
        if self.apache:
            self.apache.reset()

    def set_stall(self, p: float) -> None:
        if self.proxy:
            self.proxy.command(f"set stall={p}")
        else:
            self.server.command(f"faults stall_probability={p}")

    def describe(self) -> str:
        data = "Apache httpd" if self.apache else "the project's archive server"
        if self.proxy:
            return f"{data} behind the TCP-level WAN proxy; FTP unreachable"
        return data

    def stop(self) -> None:
        for part in (self.proxy, self.apache, self.server):
            if part is not None:
                try:
                    part.stop()
                except (OSError, BenchError):
                    pass

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _origin(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _path(url: str) -> str:
    rest = url.split("://", 1)[1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else ""
