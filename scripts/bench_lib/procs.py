"""Processes the benchmark runs: the archive server and empiarfs mounts.

Both run as child processes so neither competes with the driver's GIL.
A mount is a context manager: fresh cache directory, waits until the
mount point is live, reads ``.empiarfs/stats.json``, records the daemon's
peak RSS (``VmHWM``) and always unmounts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


class BenchError(RuntimeError):
    """A benchmark step could not run (mount failed, server died...)."""


class ServerProcess:
    """``serve.py`` in a child process with one profile's fault knobs."""

    def __init__(self, root: str, rate: float, latency: float, stall: float, log_path: str,
                 env: dict | None = None):
        self.log = open(log_path, "ab")
        cmd = [sys.executable, os.path.join(HERE, "serve.py"), root, "--rate", str(rate),
               "--latency", str(latency), "--stall", str(stall)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1,
                                     env=dict(os.environ, **(env or {})))
        self.urls = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError(f"the archive server exited (code {self.proc.poll()}); "
                             f"see {self.log.name}")
        return json.loads(line)

    def command(self, text: str) -> dict:
        """Send one command (``stats``, ``reset``, ``faults k=v``) and return the answer."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def stats(self) -> dict:
        return self.command("stats")

    def reset(self) -> None:
        self.command("reset")

    def stop(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class FuseProcess:
    """A FUSE daemon in its own session on a fresh cache directory: started,
    waited for until its mount point is live, unmounted and stopped (or
    killed when a workload hangs). empiarfs and the peers share this."""

    def __init__(self, mountpoint: str, cache_dir: str):
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.peak_rss = 0
        self.closed = False
        shutil.rmtree(cache_dir, ignore_errors=True)
        os.makedirs(cache_dir)
        os.makedirs(mountpoint, exist_ok=True)
        if os.path.ismount(mountpoint):
            subprocess.run([FUSERMOUNT, "-u", "-z", mountpoint], capture_output=True)

    def _start(self, cmd: list, log_path: str, what: str, *, env: dict | None = None,
               register=None, timeout: float = 60, on_failure=None) -> None:
        self.log = open(log_path, "ab")
        self.log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, **(env or {})))
        if register:
            register(self)  # from here on a time limit can kill it
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                (on_failure or self.close)()
                raise BenchError(f"{what} mount did not come up; see {log_path}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

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

    def kill(self) -> None:
        """Kill the daemon at once (a workload hung): the kernel ends its
        FUSE connection, so readers blocked in it get an error instead of
        waiting forever."""
        self.peak_rss = max(self.peak_rss, peak_rss(self.proc.pid))
        kill_group(self.proc)
        subprocess.run([FUSERMOUNT, "-u", "-z", self.mountpoint], capture_output=True)
        self._cleanup()

    def _cleanup(self) -> None:
        if not self.closed:
            self.closed = True
            self.log.close()
            shutil.rmtree(self.cache_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Mount(FuseProcess):
    """``empiarfs -v mount -f`` on a fresh cache directory."""

    def __init__(self, mountpoint: str, cache_dir: str, urls: dict, *, memory_cache: str,
                 block_size: str, log_path: str, env: dict | None = None,
                 cache_size: str = "8G", register=None):
        super().__init__(mountpoint, cache_dir)
        cmd = [EMPIARFS, "-v", "mount", "-f", mountpoint, "--api-url", urls["api_url"],
               "--data-url", urls["data_url"], "--ftp-url", urls["ftp_url"],
               "--cache-dir", cache_dir, "--cache-size", cache_size,
               "--memory-cache", memory_cache, "--block-size", block_size]
        self._start(cmd, log_path, "empiarfs", env=env, register=register)

    def path(self, entry: str, rel: str) -> str:
        return os.path.join(self.mountpoint, entry, *rel.split("/"))

    def stats(self) -> dict:
        with open(os.path.join(self.mountpoint, ".empiarfs", "stats.json"), encoding="utf-8") as fh:
            return json.load(fh)


def snapshot_tree(repo: str, workdir: str, rev: str = "HEAD") -> tuple[str, str]:
    """Extract ``empiarfs/`` at ``rev`` into ``workdir`` and return
    ``(directory, commit)``: put the directory on PYTHONPATH so the server
    and the daemon run that commit, not files other people are editing.

    Raises
    ------
    BenchError
        If git cannot export the tree.
    """
    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], check=True,
                                capture_output=True, text=True).stdout.strip()
        target = os.path.join(workdir, f"src-{commit}")
        if not os.path.isdir(os.path.join(target, "empiarfs")):
            os.makedirs(target, exist_ok=True)
            archive = subprocess.run(["git", "-C", repo, "archive", commit, "empiarfs"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"cannot export empiarfs at {rev} from {repo}: {exc}") from exc
    return target, commit


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a child started with ``start_new_session`` and its children."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def peak_rss(pid: int) -> int:
    """Peak resident set (``VmHWM``) of a live process in bytes, 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def drop_page_cache(*paths: str, level: int = 1) -> str:
    """Evict the kernel's caches so the next read measures the filesystem
    (or the disk), not the kernel. As root: ``drop_caches`` ``level`` (1 the
    page cache; 3 dentries and inodes too, before cold runs); otherwise
    ``posix_fadvise(DONTNEED)`` on ``paths``. Returns the method used."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write(f"{level}\n")
        return "drop_caches"
    except OSError:
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"
