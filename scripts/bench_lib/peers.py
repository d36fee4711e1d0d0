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

from procs import BenchError, FuseProcess

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


class PeerMount(FuseProcess):
    """One peer mounted fresh on ``mountpoint`` over ``data_url``."""

    def __init__(self, peer: str, mountpoint: str, cache_dir: str, data_url: str, *,
                 log_path: str, python: str | None = None, timeout: float = 60,
                 register=None):
        self.peer = peer
        url = data_url.rstrip("/") + "/"
        if peer == "rclone":
            cmd = ["rclone", "mount", ":http:", mountpoint, "--http-url", url,
                   "--vfs-cache-mode", "full", "--cache-dir", cache_dir, "--read-only",
                   "--config", os.path.join(cache_dir, "rclone.conf"), "-v"]
        elif peer == "fsspec":
            cmd = [python, os.path.join(HERE, "fsspec_peer.py"), url, mountpoint]
        else:
            raise BenchError(f"unknown peer {peer!r}")
        super().__init__(mountpoint, cache_dir)
        self._start(cmd, log_path, peer, register=register, timeout=timeout,
                    on_failure=self.kill)

    def path(self, entry: str, rel: str) -> str:
        return os.path.join(self.mountpoint, entry.split("-", 1)[1], *rel.split("/"))

    def stats(self) -> dict:
        return {}
