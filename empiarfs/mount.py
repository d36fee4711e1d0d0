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
import threading
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
    if settings.kernel_readahead:
        threading.Thread(target=tune_kernel_readahead, name="empiarfs-readahead", daemon=True,
                         args=(os.path.realpath(mountpoint), settings.kernel_readahead)).start()
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


def mount_device(mountpoint: str, mountinfo: str) -> str | None:
    """The ``major:minor`` of the newest FUSE mount at ``mountpoint`` in
    the text of ``/proc/<pid>/mountinfo``, or None.

    Read from the mount table rather than by ``stat()``, which would ask the
    FUSE daemon itself and wait for it while it is still starting.
    """
    found = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) <= separator + 1 or not fields[separator + 1].startswith("fuse"):
            continue
        if _unescape_mountinfo(fields[4]) == mountpoint:
            found = fields[2]
    return found


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def tune_kernel_readahead(mountpoint: str, size: int, timeout: float = 30.0) -> bool:
    """Set the kernel's read-ahead for the mount at ``mountpoint`` (a
    resolved path: resolving it once mounted would ask the daemon) to
    ``size`` bytes once the mount appears; True if it was set.

    At the kernel's default (128 KiB) every FUSE read is 128 KiB and the
    per-request cost of the Python data path caps sequential reads. Needs
    root (the sysfs file is root's); without it the default stays.
    """
    deadline = time.monotonic() + timeout
    device = None
    while device is None:
        try:
            with open("/proc/self/mountinfo") as handle:
                device = mount_device(mountpoint, handle.read())
        except OSError as exc:
            log.info("cannot read the mount table (%s); kernel read-ahead left as is", exc)
            return False
        if device is None:
            if time.monotonic() > deadline:
                log.info("mount %s not seen in the mount table; kernel read-ahead left as is",
                         mountpoint)
                return False
            time.sleep(0.05)
    knob = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        with open(knob, "w") as handle:
            handle.write(str(max(4, size // 1024)))
    except OSError as exc:
        log.info("cannot set %s (%s); kernel read-ahead left at its default", knob, exc)
        return False
    log.debug("kernel read-ahead of %s set to %d KiB", mountpoint, size // 1024)
    return True


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
