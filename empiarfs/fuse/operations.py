"""Thin mfusepy Operations: translate FUSE calls into :class:`EmpiarFS` calls.

Nothing here knows about HTTP or caches. Every callback goes through
:func:`_translate`, the one place exceptions become errno values (EIO by
default), so no exception can reach mfusepy, which would turn it into
EINVAL, and no error ends the mount. Failures are remembered in the
facade's ``errors`` (shown by ``empiarfs stats``) and logged once each.

Imported only by ``mount.run_fuse``, after ``mount.load_mfusepy`` has bound
mfusepy to libfuse 3: importing this module first would let mfusepy pick
libfuse 2.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import stat
import threading
import time

import mfusepy

from empiarfs.cache.reader import part_of
from empiarfs.errors import EmpiarfsError

log = logging.getLogger(__name__)

# st_blksize: Python's buffered open() (mrcfile, numpy) reads this much at
# a time, and the kernel's first read-ahead is twice a first read of this
# size, up to the mount's read-ahead. With kernel_readahead 1 MiB, 128 KiB
# made a 1 KiB header read cost two 128 KiB blocks (206 headers/s) and
# 64 KiB one (248/s); at the kernel's 128 KiB both cost one. At 1 MiB it
# cost four 256 KiB blocks.
BLKSIZE = 64 * 1024
FUSE_CAP_POSIX_ACL = 1 << 19   # libfuse 3 fuse_common.h
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
ENOATTR = getattr(errno, "ENOATTR", errno.ENODATA)
# When a read of a range fails, reads of that range on the same handle fail
# at once for this long. The kernel retries a failed read-ahead page
# synchronously, straight away; without this a read() would wait a second
# whole deadline before it sees EIO. A new open() is never held.
FAILURE_HOLD = 1.0


def errno_of(exc: BaseException) -> int:
    """The errno a failed operation reports: the exception's own when it
    has one, EIO otherwise."""
    if isinstance(exc, EmpiarfsError):
        return exc.errno
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return exc.errno
    return errno.EIO


# Answers that are part of normal use, not failures worth reporting.
_EXPECTED = (errno.ENOENT, ENOATTR, errno.EROFS, errno.ENOTDIR, errno.EISDIR)


def reason_of(exc: BaseException) -> str:
    """What went wrong, in the words a person reads in ``empiarfs stats``."""
    if isinstance(exc, EmpiarfsError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename is not None else "")
    else:
        text = f"unexpected {type(exc).__name__}: {exc}"
    return " ".join(text.split())


def _translate(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except Exception as exc:  # one mapping for everything below FUSE
            code = errno_of(exc)
            if code not in _EXPECTED:
                self._report(method.__name__, args[0] if args else "", exc, code)
            raise mfusepy.FuseOSError(code) from None
    return wrapper


def _read_only(self, *args, **kwargs):
    raise mfusepy.FuseOSError(errno.EROFS)


class EmpiarOperations(mfusepy.Operations):
    """FUSE callbacks. ``fs_factory`` builds the :class:`EmpiarFS` inside
    ``init()``, after libfuse has daemonised, so its threads survive."""

    use_ns = True

    def __init__(self, fs_factory, *, max_readahead: int = 8 * 1024 * 1024,
                 max_read: int = 1024 * 1024, attr_timeout: float = 60.0):
        self._fs_factory = fs_factory
        self.fs = None
        self.started = False  # set once the kernel has initialised the session
        self._max_readahead = max_readahead
        self._max_read = max_read
        self._attr_timeout = attr_timeout
        self._handles: dict[int, object] = {}
        self._handle_lock = threading.Lock()
        self._next_handle = 1
        self._uid = os.getuid()
        self._gid = os.getgid()
        # Called before each open() is answered (the kernel read-ahead
        # steering: the kernel copies the mount's value into the file then).
        self.before_open = None

    def _report(self, op: str, path, exc: BaseException, code: int) -> None:
        """Remember a failure for ``empiarfs stats`` and log it when a person
        should hear of it: once per distinct error, rate-limited (a dead
        network fails every read alike)."""
        name = errno.errorcode.get(code, str(code))
        path = path if isinstance(path, str) else repr(path)
        reason = reason_of(exc)
        held = None
        errors = getattr(self.fs, "errors", None)
        if errors is not None:
            held = errors.add(op, path, type(exc).__name__, reason, name)
        if errors is None or held is not None:
            more = f" ({held} more errors not shown; see `empiarfs stats`)" if held else ""
            log.warning("%s %s failed (%s): %s%s", op, path, name, reason, more)
        else:
            log.debug("%s %s failed (%s): %s", op, path, name, reason)

    # -------------------------------------------------------------- lifecycle

    def init_with_config(self, conn, config):
        if self.fs is None:
            self.fs = self._fs_factory()
        self.started = True
        if conn is not None:
            # Must agree with the max_read mount option or libfuse refuses.
            conn.max_read = self._max_read
            conn.max_readahead = min(conn.max_readahead or self._max_readahead,
                                     self._max_readahead) or self._max_readahead
            # With POSIX ACLs negotiated the kernel keeps each file's "no
            # ACL" answer instead of asking again on every `ls -l` (warm
            # `ls -l` of 3,000 files: 6,000 -> 3,000 requests, 0.35-0.48 ->
            # 0.17-0.28 s). Safe: default_permissions is on and we answer
            # ENODATA, so permissions stay the mode bits.
            if conn.capable & FUSE_CAP_POSIX_ACL:
                conn.want |= FUSE_CAP_POSIX_ACL
        if config is not None:
            # The archive is read-only and versioned by fingerprint: kernel
            # attribute caching is safe for the TTL; auto_cache drops the
            # page cache when a file's size or mtime changes.
            config.entry_timeout = self._attr_timeout
            config.attr_timeout = self._attr_timeout
            config.negative_timeout = 5.0
            config.auto_cache = 1
            config.kernel_cache = 0

    def destroy(self, path):
        if self.fs is not None:
            self.fs.close()

    # -------------------------------------------------------------- metadata

    def _attrs(self, node) -> dict:
        mtime_ns = int((node.mtime or 0) * 1e9)
        attrs = {
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_mtime": mtime_ns,
            "st_ctime": mtime_ns,
            "st_atime": mtime_ns,
            "st_blksize": BLKSIZE,
        }
        if node.kind == "dir":
            attrs.update(st_mode=stat.S_IFDIR | 0o555, st_nlink=2, st_size=0)
        elif node.kind == "link":
            attrs.update(st_mode=stat.S_IFLNK | 0o444, st_nlink=1, st_size=len(node.target))
        else:
            attrs.update(st_mode=stat.S_IFREG | 0o444, st_nlink=1, st_size=node.size,
                         st_blocks=(node.size + 511) // 512)
        return attrs

    @_translate
    def getattr(self, path, fh=None):
        return self._attrs(self.fs.stat(path))

    @_translate
    def readdir(self, path, fh):
        entries = [(".", {"st_mode": stat.S_IFDIR}, 0), ("..", {"st_mode": stat.S_IFDIR}, 0)]
        for node in self.fs.listdir(path):
            mode = {"dir": stat.S_IFDIR, "link": stat.S_IFLNK}.get(node.kind, stat.S_IFREG)
            entries.append((node.name, {"st_mode": mode}, 0))
        return entries

    @_translate
    def readlink(self, path):
        return self.fs.readlink(path)

    @_translate
    def access(self, path, amode):
        self.fs.stat(path)
        if amode & os.W_OK:
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    @_translate
    def statfs(self, path):
        return {"f_bsize": BLKSIZE, "f_frsize": BLKSIZE, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_favail": 0,
                "f_namemax": 255, "f_flag": os.ST_RDONLY}

    @_translate
    def getxattr(self, path, name, position=0):
        # `ls -l` asks every file for its security label and its ACL. Labels
        # are not supported here at all (ENOTSUP), and ls then stops asking
        # for the rest of the mount (coreutils remembers a device that does
        # not support them): a warm `ls -l` of 3,000 files made 3,000 round
        # trips into Python for them, 0.10-0.12 s of its 0.16. ACL names get
        # "no such attribute", which the kernel needs to keep its "no ACL"
        # answer (with ENOTSUP it would fail the lookup instead).
        if name.startswith("security."):
            raise mfusepy.FuseOSError(errno.ENOTSUP)
        if not name.startswith("user."):
            raise mfusepy.FuseOSError(ENOATTR)
        value = self.fs.xattr(self.fs.stat(path), name)
        if value is None:
            raise mfusepy.FuseOSError(ENOATTR)
        return value

    @_translate
    def listxattr(self, path):
        # Names only: `ls -l` lists every file's attributes to find ACLs.
        return self.fs.xattr_names(self.fs.stat(path))

    # ------------------------------------------------------------------ data

    @_translate
    def open(self, path, fi):
        if fi.flags & WRITE_FLAGS:
            raise mfusepy.FuseOSError(errno.EROFS)
        if self.before_open is not None:
            try:
                self.before_open()
            except Exception as exc:   # tuning must never fail an open
                log.debug("kernel read-ahead not updated: %s", exc)
        node = self.fs.stat(path)
        if node.is_dir:
            raise mfusepy.FuseOSError(errno.EISDIR)
        if node.kind == "virtual":
            # Generated once per open so every reader sees a whole snapshot
            # (a preview is rendered here, on its first open, not in getattr).
            seen = node.size
            node = _Snapshot(node, self.fs.read_node(node, 0, 1 << 62))   # all of it
            if node.dynamic or node.node.preview is not None:
                # The size getattr gave may be stale (stats) or 0 (a preview
                # not yet rendered): with direct I/O the kernel passes reads
                # through to EOF instead of cutting them at that size.
                fi.direct_io = 1
            if node.node.preview is not None and len(node.data) != seen:
                # Just rendered: the kernel may hold size 0 for attr_timeout,
                # and sendfile/splice (shutil.copyfile) stop at the size the
                # kernel holds, direct I/O or not. Drop it now, before this
                # open returns, so the opener's fstat() sees the real size.
                _invalidate_attrs(path)
        with self._handle_lock:
            number = self._next_handle
            self._next_handle += 1
            self._handles[number] = node if isinstance(node, _Snapshot) else _Handle(node)
        fi.fh = number
        return 0

    @_translate
    def read(self, path, size, offset, fi):
        """The bytes as ``(block, lo, hi)`` parts, for :class:`EmpiarFUSE`."""
        with self._handle_lock:
            handle = self._handles.get(fi.fh)
        if handle is None:
            raise mfusepy.FuseOSError(errno.EBADF)
        if isinstance(handle, _Snapshot):
            return [part_of(handle.data, offset, size)]
        failure = handle.failure
        if failure is not None:
            until, start, end, code = failure
            if time.monotonic() < until and offset < end and offset + size > start:
                raise mfusepy.FuseOSError(code)
        try:
            return self.fs.read_node_parts(handle.node, offset, size)
        except Exception as exc:
            hold = min(FAILURE_HOLD, self.fs.settings.deadline / 5)
            handle.failure = (time.monotonic() + hold, offset, offset + size, errno_of(exc))
            raise

    @_translate
    def release(self, path, fi):
        with self._handle_lock:
            self._handles.pop(fi.fh, None)
        return 0

    # Every write operation: the archive is read-only.
    write = create = truncate = unlink = mkdir = rmdir = rename = symlink = link = \
        chmod = chown = utimens = setxattr = removexattr = mknod = fallocate = _read_only


class EmpiarFUSE(mfusepy.FUSE):
    """mfusepy's FUSE whose ``read`` copies the parts
    :meth:`EmpiarOperations.read` returns straight into libfuse's buffer:
    mfusepy's wants one ``bytes``, and joining the blocks of a 1 MiB read
    copied every byte once more."""

    def read(self, path, buf, size, offset, fip):
        name = None if path is None else path.decode(self.encoding, self.errors)
        parts = self.operations.read(name, size, offset, fip.contents)
        return copy_parts(ctypes.cast(buf, ctypes.c_void_p).value, size, parts)


def copy_parts(destination: int, size: int, parts) -> int:
    """Copy ``block[lo:hi]`` of each part to consecutive bytes from address
    ``destination`` (at most ``size``); returns the bytes copied."""
    done = 0
    for block, lo, hi in parts:
        n = hi - lo
        if n <= 0:
            continue
        if done + n > size:
            raise ValueError(f"read returned more than the {size} bytes asked for")
        ctypes.memmove(destination + done, _address(block) + lo, n)
        done += n
    return done


def _address(block) -> int:
    """Where ``block``'s bytes are in memory (no copy; the caller holds it)."""
    if type(block) is bytes:
        return ctypes.cast(ctypes.c_char_p(block), ctypes.c_void_p).value
    return ctypes.addressof((ctypes.c_char * len(block)).from_buffer(block))


def _invalidate_attrs(path: str) -> None:
    """Make the kernel ask for ``path``'s attributes again (libfuse's
    ``fuse_invalidate_path``, libfuse >= 3.1; called from a FUSE handler
    thread, which is where libfuse's context names the session). Best
    effort: without it the size shows up after ``attr_timeout``."""
    lib = getattr(mfusepy, "_libfuse", None)
    invalidate = getattr(lib, "fuse_invalidate_path", None)
    if invalidate is None:
        return
    try:
        context = lib.fuse_get_context()
        session = context.contents.fuse if context else None
        if not session:
            return
        invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        invalidate.restype = ctypes.c_int
        invalidate(ctypes.c_void_p(session), os.fsencode(path))
    except (AttributeError, ValueError, OSError) as exc:
        log.debug("cannot invalidate the attributes of %s: %s", path, exc)


class _Handle:
    """An open remote file and its last failed range (handle lock not
    needed: a tuple is replaced whole)."""

    __slots__ = ("node", "failure")

    def __init__(self, node):
        self.node = node
        self.failure = None


class _Snapshot:
    """Bytes of a virtual file frozen at open()."""

    kind = "virtual"

    def __init__(self, node, data: bytes):
        self.node = node
        self.data = data
        self.dynamic = node.dynamic
