"""Mount empiarfs for a test: a real FUSE mount in a child process.

``mounted(...)`` waits for the mount, yields the mount point, always
unmounts, and fails the test if the daemon logged a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")


def fuse_available() -> str | None:
    """None when FUSE mounts can work here, else the reason they cannot."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount3 missing (install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"libfuse 3 not loadable: {exc}"
    return None


requires_fuse = pytest.mark.skipif(fuse_available() is not None,
                                   reason=f"FUSE unavailable: {fuse_available()}")


def mount_args(settings) -> list[str]:
    return ["--api-url", settings.api_url, "--data-url", settings.data_url,
            "--ftp-url", settings.ftp_url, "--cache-dir", settings.cache_dir,
            "--cache-size", str(settings.cache_size), "--memory-cache", str(settings.memory_cache),
            "--block-size", str(settings.block_size), "--deadline", str(settings.deadline),
            "--metadata-ttl", str(settings.metadata_ttl)]


@contextlib.contextmanager
def mounted(settings, mountpoint, *extra, env=None, allow_errors=False, timeout=30.0, verbose=1):
    """Run ``empiarfs mount -f`` on ``mountpoint`` with ``settings``
    (``verbose=3`` logs every FUSE request, libfuse's debug output)."""
    os.makedirs(mountpoint, exist_ok=True)
    log_path = os.path.join(os.path.dirname(str(mountpoint)), f"{os.path.basename(str(mountpoint))}.log")
    run_env = dict(os.environ, **(env or {}))
    for key in ("stall_timeout", "connect_timeout", "retries", "hedge_after", "backoff_max"):
        run_env[f"EMPIARFS_{key.upper()}"] = str(getattr(settings, key))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([EMPIARFS, "-" + "v" * verbose, "mount", "-f", str(mountpoint),
                                 *mount_args(settings), *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=run_env)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"mount exited with {proc.returncode}:\n{_read(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"mount did not appear:\n{_read(log_path)}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        unmount(mountpoint, proc)
    text = _read(log_path)
    if not allow_errors and "Traceback" in text:
        pytest.fail(f"the daemon logged a traceback:\n{text}")


def unmount(mountpoint, proc=None) -> None:
    if os.path.ismount(mountpoint):
        tool = shutil.which("fusermount3") or "fusermount"
        result = subprocess.run([tool, "-u", str(mountpoint)], capture_output=True)
        if result.returncode != 0:
            subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True)
    if proc is not None:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def stats(mountpoint) -> dict:
    with open(os.path.join(mountpoint, ".empiarfs", "stats.json")) as handle:
        return json.load(handle)


def sha256_of(path, chunk=1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def _read(path) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.read()[-20000:]
    except OSError:
        return ""
