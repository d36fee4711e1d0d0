"""Mount, unmount and daemonise.

The parent process forks before any thread exists; the child detaches,
mounts in the foreground and builds :class:`EmpiarFS` in FUSE ``init()``.
The parent waits until the mount point is live (or the child dies) so the
user sees startup errors instead of a silent dead mount.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time

from .errors import EmpiarfsError, InvalidInput

log = logging.getLogger(__name__)


class MountError(EmpiarfsError, OSError):
    """The filesystem could not be mounted or unmounted."""


def check_mountpoint(mountpoint: str) -> str:
    path = os.path.abspath(mountpoint)
    if not os.path.isdir(path):
        raise InvalidInput(f"mount point {mountpoint} is not a directory (create it with mkdir -p)")
    if os.path.ismount(path):
        raise MountError(f"{mountpoint} is already a mount point (unmount it with "
                         f"`empiarfs umount {mountpoint}`)")
    return path


def run_fuse(fs_factory, mountpoint: str, settings, *, foreground_debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGTERM/SIGINT unmount
    cleanly: libfuse installs the handlers)."""
    try:
        import mfusepy
    except (ImportError, OSError, EnvironmentError) as exc:
        raise MountError(f"FUSE is not available ({exc}); install libfuse 3 "
                         "(Debian: apt-get install fuse3)") from exc
    from .fuse_ops import EmpiarOperations

    max_read = 1024 * 1024
    operations = EmpiarOperations(fs_factory, max_read=max_read,
                                  max_readahead=min(settings.max_request, 8 * 1024 * 1024),
                                  attr_timeout=min(settings.metadata_ttl, 3600.0))
    # libfuse 3 serves at most 10 requests at once by default; every read
    # waiting on the network holds a worker, so allow as many as the fetch
    # pool can use.
    options = dict(foreground=True, nothreads=False, ro=True, fsname="empiarfs",
                   max_threads=max(16, settings.parallel_total),
                   subtype="empiarfs", default_permissions=True, max_read=max_read,
                   debug=foreground_debug)
    if settings.allow_other:
        options["allow_other"] = True
    try:
        mfusepy.FUSE(operations, mountpoint, raw_fi=True, **options)
    except RuntimeError as exc:
        if not operations.started:
            raise MountError(f"libfuse could not mount {mountpoint} (status {exc}); is it "
                             "busy or already mounted, and is /dev/fuse usable?") from None
        # libfuse returns non-zero when the session ends abnormally, e.g. a
        # lazy unmount or an aborted connection: the mount is gone either
        # way, which is what was asked for.
        log.warning("FUSE session on %s ended with status %s (aborted or lazily unmounted)",
                    mountpoint, exc)


def daemonize_and_mount(child_main, mountpoint: str, log_file: str, timeout: float = 60.0) -> int:
    """Fork; the child runs ``child_main()`` detached with output to
    ``log_file``; the parent returns the child's pid once the mount is live.

    Raises
    ------
    MountError
        If the child exits or the mount does not appear within ``timeout``.
    """
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            os.setsid()
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(write_end)
            child_main()
            code = 0
        except BaseException:  # the child must never return into the CLI
            logging.getLogger(__name__).exception("mount daemon failed")
            code = 1
        finally:
            logging.shutdown()
        os._exit(code)
    os.close(write_end)
    os.close(read_end)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            raise MountError(f"mount failed (exit status {os.waitstatus_to_exitcode(status)}); "
                             f"see {log_file}:\n{_tail(log_file)}")
        if os.path.ismount(mountpoint):
            return pid
        time.sleep(0.05)
    os.kill(pid, signal.SIGTERM)
    raise MountError(f"mount did not appear within {timeout:.0f} s; see {log_file}")


def unmount(mountpoint: str, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount with fusermount3 (or umount), then wait until it is gone."""
    path = os.path.abspath(mountpoint)
    if not os.path.ismount(path):
        raise MountError(f"{mountpoint} is not mounted")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u"] + (["-z"] if lazy else []) + [path]
    else:
        cmd = ["umount"] + (["-l"] if lazy else []) + [path]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise MountError(f"cannot unmount {mountpoint}: {result.stderr.strip() or result.stdout.strip()}"
                         " (is a process still using it? try --lazy)")
    deadline = time.monotonic() + timeout
    while os.path.ismount(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""
