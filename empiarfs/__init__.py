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

# The typed-loading verbs live in empiarfs.api and pull in numpy, mrcfile
# and the network stack; they are imported on first use so that
# ``import empiarfs`` stays light.
_API_NAMES = frozenset({
    "entry", "open", "load", "load_mrc", "load_star", "load_tiff",
    "configure", "default_fs", "EntryView",
})


def __getattr__(name):
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    if name == "EmpiarDataset":
        from .dataset import EmpiarDataset

        return EmpiarDataset
    if name in _EXPORT_NAMES:
        from .export import deposition

        return getattr(deposition, name)
    if name == "to_dask":
        # Imports numpy, not dask: dask is optional and loaded by the call.
        from .pyapi.arrays import to_dask

        return to_dask
    raise AttributeError(f"module 'empiarfs' has no attribute {name!r}")


# Metadata export (issue 8): lambda-ber Dataset -> EMPIAR deposition JSON.
_EXPORT_NAMES = frozenset({"deposition_from_lambda_ber", "IncompleteDeposition"})


def __dir__():
    return sorted(set(globals()) | _API_NAMES | _EXPORT_NAMES | {"EmpiarDataset", "to_dask"})
