"""Who uses a cache directory: the directory lock and one liveness token
per process.

``<dir>/lock`` is flock()ed *shared* by every process using the directory
and *exclusively* by a store opened with ``exclusive=True`` (which then
excludes everyone else, and is excluded by anyone there). It holds the
PID of the exclusive owner, or of the first process of the current sharing
session, for people and scripts looking for "the" cache process.

``<dir>/owners/<pid>-<random>.lock`` is created and flock()ed exclusively
by each process while its store is open; its name (the *token*) is written
on every block reservation the process makes. A token whose file can be
flock()ed by someone else, or has no file, belongs to a dead process: the
kernel drops flocks on exit, kill -9 included, so this needs no PID
probing and is immune to PID reuse and PID namespaces. The token file is
created and locked *before* any row names it, so a live owner is never
mistaken for a dead one.

Lock order: the flocks taken here are held for the life of a store (its
own) or briefly while its dead owner's rows are reaped (someone else's);
neither waits (``LOCK_NB``), so they never deadlock with the index or
threading locks.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import secrets
from typing import Optional

from empiarfs.errors import EmpiarfsError

OWNERS = "owners"
_LOCK_SUFFIX = ".lock"


class CacheLocked(EmpiarfsError, BlockingIOError):
    """The cache directory is held exclusively by another process (or is
    shared by others when an exclusive hold was asked for)."""

    errno = _errno.EBUSY


class _Held:
    """An open file descriptor we hold a flock on (``_fd``, ``None`` once
    let go) and its ``path``. Closing it drops the flock."""

    path: str
    _fd: Optional[int] = None

    def _let_go(self, delete: bool) -> None:
        """Close the descriptor once; with ``delete``, first remove the file
        (a file already gone is fine)."""
        if self._fd is not None:
            if delete:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = None


def _token_path(directory: str, token: str) -> str:
    return os.path.join(directory, OWNERS, token + _LOCK_SUFFIX)


class DirectoryLock(_Held):
    """The shared (or exclusive) hold on ``directory``.

    Raises
    ------
    CacheLocked
        Shared: another process holds the directory exclusively.
        Exclusive: any other process uses it.
    """

    def __init__(self, directory: str, exclusive: bool = False):
        self.directory = directory
        self.exclusive = exclusive
        self.path = path = os.path.join(directory, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (_errno.EAGAIN, _errno.EWOULDBLOCK):
                os.close(fd)   # no flock here (some network filesystems): not "in use"
                raise
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            if exclusive:
                pids = sorted({token_pid(t) for t in listed_tokens(directory)}) or [holder]
                who = ", ".join(str(p) for p in pids)
                raise CacheLocked(
                    f"cache directory {directory} is in use by process {who}; an exclusive "
                    "hold needs every other empiarfs process on it stopped") from exc
            raise CacheLocked(
                f"cache directory {directory} is in use by process {holder}, which holds it "
                "exclusively; wait for it to finish, or use another --cache-dir") from exc
        self._fd: Optional[int] = fd
        if exclusive:
            self.note_pid()

    def note_pid(self) -> None:
        """Record this process as the one to name (exclusive owner, or the
        first of a sharing session)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        self._let_go(delete=False)


class Owner(_Held):
    """This process's liveness token in ``directory``, held until released."""

    def __init__(self, directory: str):
        os.makedirs(os.path.join(directory, OWNERS), exist_ok=True)
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.path = _token_path(directory, self.token)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: cannot fail
        self._fd: Optional[int] = fd

    def release(self) -> None:
        self._let_go(delete=True)


def token_pid(token: str) -> int:
    head = token.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


def listed_tokens(directory: str) -> list[str]:
    """Tokens with a file under ``owners/`` (live or not)."""
    try:
        names = os.listdir(os.path.join(directory, OWNERS))
    except FileNotFoundError:
        return []
    return [n[: -len(_LOCK_SUFFIX)] for n in names if n.endswith(_LOCK_SUFFIX)]


class Claim(_Held):
    """A dead owner's token, locked by us so that only one reaper buries it
    (``fd`` ``None``: its file is gone already)."""

    def __init__(self, directory: str, token: str, fd: Optional[int]):
        self.path = _token_path(directory, token)
        self.token = token
        self._fd = fd

    def bury(self) -> None:
        """Delete the token file (its rows are reaped by now) and let go."""
        self._let_go(delete=True)

    def abandon(self) -> None:
        """Let go without deleting (reaping failed; someone will retry)."""
        self._let_go(delete=False)


def claim_if_dead(directory: str, token: str) -> Optional[Claim]:
    """A :class:`Claim` on ``token`` if its process is gone, else ``None``."""
    try:
        fd = os.open(_token_path(directory, token), os.O_RDWR)
    except FileNotFoundError:
        return Claim(directory, token, None)
    except OSError:
        return None  # cannot tell: treat as alive, which only delays reaping
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return Claim(directory, token, fd)
