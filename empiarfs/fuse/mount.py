"""Mount, unmount and daemonise.

The parent process forks before any thread exists; the child detaches,
mounts in the foreground and builds :class:`EmpiarFS` in FUSE ``init()``.
The parent waits until the mount point is live (or the child dies) so the
user sees startup errors instead of a silent dead mount: the child sends
its error back as one line.

mfusepy is imported only through :func:`load_mfusepy`, which binds it to
libfuse 3 even where libfuse 2 is installed too.
"""

from __future__ import annotations

import ctypes.util
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from empiarfs.errors import EmpiarfsError, InvalidInput
from empiarfs.fuse.kernel_readahead import ReadaheadSteering, tune_kernel_readahead

log = logging.getLogger(__name__)


class MountError(EmpiarfsError, OSError):
    """The filesystem could not be mounted or unmounted."""


LIBFUSE3_MISSING = ("libfuse 3 is not installed (Debian/Ubuntu: apt-get install fuse3 libfuse3-3; "
                    "Fedora/RHEL: dnf install fuse3 fuse3-libs)")


def check_mountpoint(mountpoint: str, nonempty: bool = False) -> str:
    """The absolute path of a usable mount point.

    Raises
    ------
    InvalidInput
        If it is not a directory.
    MountError
        If something is mounted there, or it holds files (which the mount
        would hide) and ``nonempty`` is false.
    """
    path = os.path.abspath(mountpoint)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            # What a daemon that died leaves behind; nothing mounts over it.
            raise MountError(f"{mountpoint} is a dead FUSE mount (its daemon ended); detach "
                             f"it with: fusermount3 -u -z {mountpoint}") from None
    if not os.path.isdir(path):
        raise InvalidInput(f"mount point {mountpoint} is not a directory (create it with mkdir -p)")
    if os.path.ismount(path):
        raise MountError(f"{mountpoint} is already a mount point (unmount it with "
                         f"`empiarfs umount {mountpoint}`)")
    if not nonempty:
        try:
            entries = os.listdir(path)
        except OSError as exc:
            raise MountError(f"cannot list mount point {mountpoint}: {exc.strerror}") from None
        if entries:
            # libfuse 3 mounts over files without a word; users of FUSE
            # tools expect the refusal libfuse 2 gave.
            count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
            raise MountError(f"mount point {mountpoint} is not empty ({count} "
                             "would be hidden while mounted); use an empty directory, or "
                             "--nonempty (-o nonempty) to mount over them")
    return path


# Options of mount(8) and libfuse that mean nothing to a read-only
# network filesystem, or that empiarfs sets itself; mount.fuse3 adds
# ``dev,suid`` to every mount, and fstab lines carry the others.
IGNORED_MOUNT_OPTIONS = frozenset({
    "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto",
    "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "defaults", "async",
    "sync", "atime", "noatime", "relatime", "norelatime", "strictatime", "diratime",
    "nodiratime", "lazytime", "nolazytime", "default_permissions", "fsname", "subtype",
    "comment", "helper", "loud", "silent",
})
# Mount options that are not settings: the mount command's own switches.
MOUNT_FLAGS = ("nonempty", "foreground")


def parse_mount_options(texts, setting_names) -> tuple[dict, dict]:
    """``-o`` option strings -> ``(settings, flags)``.

    Every setting is an option under its config-key name (``cache_size=200G``,
    ``api_url=http://...``; ``-`` and ``_`` alike); a setting without a value
    (``allow_other``, ``offline``) is switched on. ``nonempty`` and
    ``foreground`` go to ``flags``; the generic options of mount(8) and
    fstab (``ro``, ``nodev``, ``noauto``, ``x-systemd.*``...) are accepted
    and ignored. A value may be quoted (``"a,b"``) to hold a comma.

    Raises
    ------
    InvalidInput
        On an option that is none of these.
    """
    names = set(setting_names)
    settings: dict = {}
    flags: dict = {}
    for text in texts or ():
        for item in _split_options(text):
            key, has_value, value = item.partition("=")
            key = key.strip()
            name = key.replace("-", "_")
            if not key or key in IGNORED_MOUNT_OPTIONS or key.startswith("x-"):
                continue
            if name in MOUNT_FLAGS and not has_value:
                flags[name] = True
            elif name in names:
                settings[name] = value if has_value else "true"
            else:
                known = ", ".join(sorted(names | set(MOUNT_FLAGS)))
                raise InvalidInput(f"unknown mount option {key!r}: the options are the "
                                   f"settings ({known}) and mount(8)'s generic ones")
    return settings, flags


def _split_options(text: str) -> list[str]:
    """``a=1,b="x,y",c`` -> ``['a=1', 'b=x,y', 'c']``."""
    items, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise InvalidInput(f"unbalanced quote in mount options {text!r}")
    items.append("".join(current))
    return [i for i in (item.strip() for item in items) if i]


def check_user_mount(mountpoint: str, allow_other: bool, *, uid: int | None = None,
                     fuse_conf: str = "/etc/fuse.conf", device: str = "/dev/fuse") -> None:
    """What an ordinary user's mount needs, checked before it is tried
    (fusermount3 would fail with a line in the daemon's log instead).
    Nothing is checked for root.

    Raises
    ------
    MountError
        If ``/dev/fuse`` cannot be opened, the user cannot write to the
        mount point, or ``allow_other`` is asked without
        ``user_allow_other`` in ``fuse_conf``; the message says what an
        administrator must grant.
    """
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return
    if not os.access(device, os.R_OK | os.W_OK):
        raise MountError(f"{device} cannot be opened by this user: an administrator must "
                         f"make it usable (chmod 0666 {device}, the default of Debian and "
                         "Fedora, or a udev rule)")
    if not shutil.which("fusermount3"):
        raise MountError("fusermount3 is missing: an administrator must install fuse3 "
                         "(it mounts for ordinary users)")
    if not os.access(mountpoint, os.W_OK):
        raise MountError(f"you cannot write to {mountpoint}; mount on a directory you own")
    if allow_other and not _user_allow_other(fuse_conf):
        raise MountError(f"allow_other needs 'user_allow_other' in {fuse_conf} for ordinary "
                         "users: an administrator must add that line (or mount without it)")


def _user_allow_other(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return any(line.strip() == "user_allow_other" for line in handle)
    except OSError:
        return False


def choose_libfuse(environ=None, find=ctypes.util.find_library) -> str:
    """The libfuse that mfusepy must load: ``FUSE_LIBRARY_PATH`` if the user
    set it, else libfuse 3.

    mfusepy loads ``find_library('fuse')`` first, which is libfuse 2
    wherever both are installed (most desktops, many cluster nodes), and
    libfuse 2 refuses libfuse 3's mount options (``unknown option
    'max_threads=64'``). So libfuse 3 is named explicitly.

    Raises
    ------
    MountError
        If neither ``FUSE_LIBRARY_PATH`` nor libfuse 3 is there; the
        message names the packages.
    """
    environ = os.environ if environ is None else environ
    chosen = environ.get("FUSE_LIBRARY_PATH")
    if chosen:
        return chosen
    found = find("fuse3")
    if not found:
        raise MountError(LIBFUSE3_MISSING)
    return found


def load_mfusepy():
    """Import mfusepy bound to libfuse 3 (see :func:`choose_libfuse`).

    The choice travels to mfusepy in ``FUSE_LIBRARY_PATH``, which it reads
    once, at import; the variable is put back afterwards so that programs
    the user starts from the mount's environment do not inherit it.

    Raises
    ------
    MountError
        If libfuse 3 is missing, cannot be loaded, or mfusepy was already
        imported with libfuse 2.
    """
    module = sys.modules.get("mfusepy")
    if module is None:
        path = choose_libfuse()
        before = os.environ.get("FUSE_LIBRARY_PATH")
        os.environ["FUSE_LIBRARY_PATH"] = path
        try:
            import mfusepy as module
        except (ImportError, OSError) as exc:
            raise MountError(f"cannot load {path} ({exc}); {LIBFUSE3_MISSING}") from None
        finally:
            if before is None:
                os.environ.pop("FUSE_LIBRARY_PATH", None)
            else:
                os.environ["FUSE_LIBRARY_PATH"] = before
    if getattr(module, "fuse_version_major", 3) != 3:
        where = os.environ.get("FUSE_LIBRARY_PATH")
        raise MountError(f"libfuse {module.fuse_version_major} was loaded "
                         f"({getattr(module, '_libfuse_path', '?')}"
                         f"{', from FUSE_LIBRARY_PATH' if where else ''}); empiarfs needs "
                         "libfuse 3: unset FUSE_LIBRARY_PATH or point it at libfuse3.so.3")
    return module


def run_fuse(fs_factory, mountpoint: str, settings, *, foreground_debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGTERM/SIGINT unmount
    cleanly: libfuse installs the handlers)."""
    load_mfusepy()   # binds mfusepy to libfuse 3 before operations imports it
    from empiarfs.fuse.operations import EmpiarFUSE, EmpiarOperations

    if not foreground_debug:
        # mfusepy logs every errno a callback returns, with a traceback, at
        # DEBUG; the daemon reports the failures that matter itself, and
        # ENOTSUP for a security label (once per `ls -l`) is no failure.
        logging.getLogger("fuse").setLevel(logging.INFO)   # mfusepy's logger

    max_read = 1024 * 1024
    operations = EmpiarOperations(fs_factory, max_read=max_read,
                                  max_readahead=min(settings.max_request, 8 * 1024 * 1024),
                                  attr_timeout=min(settings.metadata_ttl, 3600.0))
    # libfuse 3 serves at most 10 requests at once by default; every read
    # waiting on the network holds a worker. Workers send no requests of
    # their own (the connection pool, parallel_total, caps what the archive
    # sees), so allow twice the pool: with as many workers as connections,
    # 64 readers under stalls queued for a worker and then waited their own
    # deadline too (reads of 15 s in the soak against an 11 s bound).
    # max_idle_threads as high changes nothing, but libfuse 3.14.0 prints
    # "Ignoring invalid max threads value 4294967295" on every mount when
    # it is left at its default.
    threads = max(64, 2 * settings.parallel_total)
    options = dict(foreground=True, nothreads=False, ro=True, fsname="empiarfs",
                   max_threads=threads, max_idle_threads=threads,
                   subtype="empiarfs", default_permissions=True, max_read=max_read,
                   debug=foreground_debug)
    if settings.allow_other:
        options["allow_other"] = True
    stop_steering = _steer_kernel_readahead(operations, os.path.realpath(mountpoint),
                                            settings.kernel_readahead)
    try:
        EmpiarFUSE(operations, mountpoint, raw_fi=True, **options)
    except RuntimeError as exc:
        if not operations.started:
            raise MountError(f"libfuse could not mount {mountpoint} (status {exc}); is it "
                             "busy or already mounted, and is /dev/fuse usable?") from None
        # libfuse returns non-zero when the session ends abnormally, e.g. a
        # lazy unmount or an aborted connection: the mount is gone either
        # way, which is what was asked for.
        log.warning("FUSE session on %s ended with status %s (aborted or lazily unmounted)",
                    mountpoint, exc)
    finally:
        stop_steering.set()


def _steer_kernel_readahead(operations, mountpoint: str, setting) -> threading.Event:
    """Start the thread that sets the mount's kernel read-ahead: once to a
    fixed size, or (``auto``) following the link, also asked by every
    ``open``; the event stops it."""
    stop = threading.Event()
    if setting == "auto":
        def link_state():
            fs = operations.fs
            return None if fs is None else fs.link_state()

        def record(size):
            if operations.fs is not None:
                operations.fs.mount_state["kernel_readahead"] = size
        steering = ReadaheadSteering(mountpoint, link_state, on_change=record)
        operations.before_open = steering.update
        threading.Thread(target=steering.follow, name="empiarfs-readahead", daemon=True,
                         args=(stop,)).start()
    elif setting:
        threading.Thread(target=tune_kernel_readahead, name="empiarfs-readahead", daemon=True,
                         args=(mountpoint, setting)).start()
    return stop


def daemonize_and_mount(child_main, mountpoint: str, log_file: str, timeout: float = 60.0) -> int:
    """Fork; the child runs ``child_main()`` detached with output to
    ``log_file``; the parent returns the child's pid once the mount is live.

    A child that fails sends its error's message back through a pipe, so
    the user reads the same one line as with a foreground mount; the
    details stay in the log.

    Raises
    ------
    MountError
        If the child exits (with the child's own message) or the mount does
        not appear within ``timeout``.
    """
    try:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise MountError(f"cannot write the mount's log file {log_file}: {exc.strerror}") from None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        code = 1
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            child_main()
            code = 0
        except EmpiarfsError as exc:
            logging.getLogger(__name__).error("mount failed: %s", exc)
            _send(write_end, str(exc))
        except BaseException as exc:  # the child must never return into the CLI
            logging.getLogger(__name__).exception("mount daemon failed")
            _send(write_end, f"the mount daemon failed ({type(exc).__name__}: {exc}); "
                             f"details in {log_file}")
        finally:
            logging.shutdown()
        os._exit(code)
    os.close(fd)
    os.close(write_end)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                message = _receive(read_end)
                if not message:
                    message = (f"the mount daemon exited with status "
                               f"{os.waitstatus_to_exitcode(status)}; see {log_file}")
                raise MountError(message)
            if os.path.ismount(mountpoint):
                return pid
            time.sleep(0.05)
    finally:
        os.close(read_end)
    os.kill(pid, signal.SIGTERM)
    raise MountError(f"mount did not appear within {timeout:.0f} s; see {log_file}")


def _send(fd: int, message: str) -> None:
    # Best effort: once the parent has returned, nobody reads the pipe.
    try:
        os.write(fd, " ".join(message.split()).encode("utf-8", "replace")[:4000])
    except OSError:
        pass


def _receive(fd: int) -> str:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks).decode("utf-8", "replace").strip()
        chunks.append(chunk)


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

