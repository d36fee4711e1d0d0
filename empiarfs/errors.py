"""The exception tree. Imports nothing internal.

Every exception subclasses a builtin so callers who know nothing about
empiarfs can still catch it (``except FileNotFoundError``), and every one
that can reach the FUSE layer carries an ``errno``.
"""

import errno as _errno


class EmpiarfsError(Exception):
    """Base of every error raised by empiarfs."""

    errno = _errno.EIO


class NotFound(EmpiarfsError, FileNotFoundError):
    """An accession, entry or file does not exist in the archive."""

    errno = _errno.ENOENT

    def __init__(self, message, *, accession=None, path=None):
        super().__init__(message)
        self.accession = accession
        self.path = path

    def __str__(self):
        return self.args[0] if self.args else "not found"


class InvalidInput(EmpiarfsError, ValueError):
    """A value given by the user is malformed (accession, size, pattern...)."""

    errno = _errno.EINVAL


class RemoteError(EmpiarfsError, OSError):
    """The archive could not be reached or answered with an error."""

    errno = _errno.EIO

    def __init__(self, message, *, url=None, status=None):
        super().__init__(message)
        self.url = url
        self.status = status

    def __str__(self):
        return self.args[0] if self.args else "remote error"


class BadResponse(RemoteError):
    """The archive answered, but the answer cannot be trusted (wrong range,
    short body, malformed JSON or listing)."""


class StaleFile(RemoteError):
    """The file changed on the archive while it was being read."""

    errno = _errno.ESTALE


class DeadlineExceeded(RemoteError):
    """A read could not be served within its deadline."""

    errno = _errno.EIO


class UnsupportedFormat(EmpiarfsError, ValueError):
    """A file format the typed loaders do not read."""

    errno = _errno.EINVAL


class ReadOnly(EmpiarfsError, PermissionError):
    """empiarfs never writes to the archive."""

    errno = _errno.EROFS


class BadFile(EmpiarfsError, ValueError):
    """A file's contents cannot be parsed as the format it claims to be
    (corrupt or truncated MRC header, data block shorter than the header
    says, unreadable TIFF)."""

    errno = _errno.EIO

    def __init__(self, message, *, path=None):
        super().__init__(message)
        self.path = path

    def __str__(self):
        return self.args[0] if self.args else "bad file"


class MissingDependency(EmpiarfsError, ImportError):
    """An optional package needed to decode a file is not installed
    (for example ``imagecodecs`` for EER). The message names the package."""

    errno = _errno.ENOSYS
