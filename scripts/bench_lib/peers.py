"""The other filesystems the benchmark runs next to empiarfs, each as a
user would mount it over the same server and files:

* ``rclone``: ``rclone mount :http: --http-url <data> --vfs-cache-mode full
  --cache-dir <fresh> --read-only`` (Debian's ``rclone``; otherwise its
  defaults: HEAD per file for sizes, 4 transfers, 8 checkers);
* ``fsspec``: ``fsspec.fuse.run`` over ``HTTPFileSystem`` (fusepy, its
  defaults: one FUSE thread) through ``fsspec_peer.py``, which changes only
  what stops released fsspec.fuse from walking an autoindex tree at all
  (see there). It runs in its own virtual environment
  (``.bench-venv``, made here on demand, because fusepy loads libfuse 2 and
  must not meet empiarfs's mfusepy).

A peer mount looks like :class:`procs.Mount` to the workloads: ``path``,
``stats`` (empty: the peer has no counters), ``close``, ``kill`` and a peak
RSS. Both mount the data tree, so an entry's files are at
``<mnt>/<number>/<rel>`` instead of ``<mnt>/EMPIAR-<number>/<rel>``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from procs import FUSERMOUNT, BenchError, kill_group, peak_rss

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_VENV = os.path.join(REPO, ".bench-venv")
FSSPEC_PACKAGES = ("fsspec", "aiohttp", "fusepy")
PEERS = ("rclone", "fsspec")


def bench_venv_python(venv: str = BENCH_VENV) -> str:
    """The bench venv's python, creating the venv (``python -m venv`` + pip
    install fsspec aiohttp fusepy) when it is missing or incomplete.

    Raises
    ------
    BenchError
        If the venv cannot be made (no network to PyPI, no venv module).
    """
    python = os.path.join(venv, "bin", "python")
    probe = "import fsspec.fuse, fsspec.implementations.http, aiohttp, fuse"
    if os.path.exists(python) and subprocess.run([python, "-c", probe],
                                                 capture_output=True).returncode == 0:
        return python
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    try:
        subprocess.run([base, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
        subprocess.run([python, "-m", "pip", "install", "-q", *FSSPEC_PACKAGES], check=True,
                       capture_output=True, timeout=900)
        subprocess.run([python, "-c", probe], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        last = detail.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
        raise BenchError(f"cannot make the fsspec venv {venv}: {last[0]}") from exc
    return python


def versions(python: str | None) -> dict:
    """Versions of the peers' software, for the record."""
    out = {}
    if shutil.which("rclone"):
        text = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout
        out["rclone"] = (text.splitlines() or ["?"])[0]
    if python:
        code = ("import fsspec, aiohttp, importlib.metadata as m; "
                "print(fsspec.__version__, aiohttp.__version__, m.version('fusepy'))")
        text = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split()
        if len(text) == 3:
            out["fsspec"] = f"fsspec {text[0]}, aiohttp {text[1]}, fusepy {text[2]}"
    return out


def unavailable(peer: str, python: str | None) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    if peer == "rclone" and not shutil.which("rclone"):
        return "rclone not installed (scripts/setup installs it)"
    if peer == "fsspec" and not python:
        return "no fsspec venv"
    return None


class PeerMount:
    """One peer mounted fresh on ``mountpoint`` over ``data_url``."""

    def __init__(self, peer: str, mountpoint: str, cache_dir: str, data_url: str, *,
                 log_path: str, python: str | None = None, timeout: float = 60,
                 register=None):
        self.peer = peer
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.peak_rss = 0
        self.closed = False
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.makedirs(cache_dir)
        os.makedirs(mountpoint, exist_ok=True)
        if os.path.ismount(mountpoint):
            subprocess.run([FUSERMOUNT, "-u", "-z", mountpoint], capture_output=True)
        url = data_url.rstrip("/") + "/"
        if peer == "rclone":
            cmd = ["rclone", "mount", ":http:", mountpoint, "--http-url", url,
                   "--vfs-cache-mode", "full", "--cache-dir", cache_dir, "--read-only",
                   "--config", os.path.join(cache_dir, "rclone.conf"), "-v"]
        elif peer == "fsspec":
            cmd = [python, os.path.join(HERE, "fsspec_peer.py"), url, mountpoint]
        else:
            raise BenchError(f"unknown peer {peer!r}")
        self.log = open(log_path, "ab")
        self.log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        if register:
            register(self)  # from here on a time limit can kill it
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise BenchError(f"{peer} mount did not come up; see {log_path}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def path(self, entry: str, rel: str) -> str:
        return os.path.join(self.mountpoint, entry.split("-", 1)[1], *rel.split("/"))

    def stats(self) -> dict:
        return {}

    def kill(self) -> None:
        """Kill the peer at once (it hung): its FUSE connection goes with it,
        so readers blocked in it get an error instead of waiting forever."""
        self.peak_rss = max(self.peak_rss, peak_rss(self.proc.pid))
        kill_group(self.proc)
        subprocess.run([FUSERMOUNT, "-u", "-z", self.mountpoint], capture_output=True)
        self._cleanup()

    def close(self) -> None:
        if self.closed:
            return
        self.peak_rss = max(self.peak_rss, peak_rss(self.proc.pid))
        if os.path.ismount(self.mountpoint):
            if subprocess.run([FUSERMOUNT, "-u", self.mountpoint], capture_output=True).returncode:
                subprocess.run([FUSERMOUNT, "-u", "-z", self.mountpoint], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
        self._cleanup()

    def _cleanup(self) -> None:
        if not self.closed:
            self.closed = True
            self.log.close()
            shutil.rmtree(self.cache_dir, ignore_errors=True)
