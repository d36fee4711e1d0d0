"""empiarfs: the EMPIAR archive as a read-only filesystem and a lazy Python API.

``import empiarfs`` works without libfuse: the FUSE layer is imported only
by :mod:`empiarfs.fuse.mount`.
"""

__version__ = "0.1.0"

from empiarfs.errors import (
    BadResponse,
    DeadlineExceeded,
    EmpiarfsError,
    InvalidInput,
    NotFound,
    RemoteError,
    StaleFile,
    UnsupportedFormat,
)

# The typed-loading verbs live in empiarfs.pyapi.api and pull in numpy, mrcfile
# and the network stack; they are imported on first use so that
# ``import empiarfs`` stays light.
_API_NAMES = frozenset({
    "entry", "open", "load", "load_mrc", "load_star", "load_tiff", "load_eer",
    "configure", "default_fs", "close", "EntryView",
})


def __getattr__(name):
    if name in _API_NAMES:
        from empiarfs.pyapi import api

        return getattr(api, name)
    if name == "EmpiarDataset":
        from empiarfs.pyapi.dataset import EmpiarDataset

        return EmpiarDataset
    if name in _EXPORT_NAMES:
        from empiarfs.export import deposition

        return getattr(deposition, name)
    if name == "preview":
        # Pillow is imported by the call.
        from empiarfs.tools.preview import preview

        return preview
    if name == "to_dask":
        # Imports numpy, not dask: dask is optional and loaded by the call.
        from empiarfs.pyapi.arrays import to_dask

        return to_dask
    raise AttributeError(f"module 'empiarfs' has no attribute {name!r}")


# Metadata export: lambda-ber Dataset -> EMPIAR deposition JSON.
_EXPORT_NAMES = frozenset({"deposition_from_lambda_ber", "IncompleteDeposition"})


__all__ = sorted({"BadResponse", "DeadlineExceeded", "EmpiarfsError", "InvalidInput", "NotFound",
                  "RemoteError", "StaleFile", "UnsupportedFormat", "EmpiarDataset", "to_dask",
                  "preview"} | _API_NAMES | _EXPORT_NAMES)


def __dir__():
    return sorted(set(globals()) | _API_NAMES | _EXPORT_NAMES
                  | {"EmpiarDataset", "to_dask", "preview"})
