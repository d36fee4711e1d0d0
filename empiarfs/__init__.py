"""empiarfs: the EMPIAR archive as a read-only filesystem and a lazy Python API.

``import empiarfs`` works without libfuse: the FUSE layer is imported only
by :mod:`empiarfs.mount`.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: F401  (re-exported public exception tree)
    EmpiarfsError,
    NotFound,
    RemoteError,
    BadResponse,
    StaleFile,
    DeadlineExceeded,
    UnsupportedFormat,
    InvalidInput,
)
