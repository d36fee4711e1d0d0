"""Format readers that take a seekable binary file object.

Each reader touches only the bytes it needs (header, then the requested
frames or pages), so when the file object is backed by range reads over
the network only those bytes are fetched. None of them knows where the
bytes come from: :mod:`empiarfs.pyapi.api` opens the file, these parse it.

=========  =====================================  ==========================
module     reads                                  needs
=========  =====================================  ==========================
``mrc``    MRC, MRCS, ST, ALI, REC, MAP            mrcfile, numpy
``star``   STAR (RELION) tables                    starfile, pandas
``tiff``   TIFF, and EER (TIFF with EER codecs)    tifffile (+ imagecodecs for EER)
``bz2``    bzip2-compressed copies of the above    standard library
=========  =====================================  ==========================
"""

from __future__ import annotations

import os

from empiarfs.errors import UnsupportedFormat

MRC_SUFFIXES = (".mrc", ".mrcs", ".st", ".ali", ".rec", ".map")
STAR_SUFFIXES = (".star",)
TIFF_SUFFIXES = (".tif", ".tiff", ".eer")
COMPRESSED_SUFFIXES = (".bz2",)

SUPPORTED = {
    "mrc": MRC_SUFFIXES,
    "star": STAR_SUFFIXES,
    "tiff": TIFF_SUFFIXES,
}


def supported_text() -> str:
    """One line naming every supported suffix, for error messages."""
    parts = [f"{kind} ({', '.join(s)})" for kind, s in SUPPORTED.items()]
    return "; ".join(parts) + "; any of these compressed as .bz2"


def detect(name: str) -> tuple[str, bool]:
    """Format kind and compression of a file, from its name.

    Parameters
    ----------
    name : str
        File name or path; only the suffixes are looked at.

    Returns
    -------
    tuple of (str, bool)
        ``("mrc" | "star" | "tiff", is_bz2)``.

    Raises
    ------
    UnsupportedFormat
        If the suffix is not one the typed loaders read.
    """
    lower = os.path.basename(str(name)).lower()
    compressed = lower.endswith(".bz2")
    if compressed:
        lower = lower[: -len(".bz2")]
    for kind, suffixes in SUPPORTED.items():
        if lower.endswith(suffixes):
            return kind, compressed
    raise UnsupportedFormat(
        f"cannot load {name!r}: unsupported format. Supported: {supported_text()}. "
        "Use empiarfs.open() to read the raw bytes of any file."
    )
