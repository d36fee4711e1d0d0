"""TIFF and EER pages through tifffile, reading only the pages asked for.

tifffile seeks to each page's IFD and strips/tiles on the file object it
is given, so on a range-backed file only those bytes are fetched. EER
files are TIFFs whose pages use compression 65000-65002; decoding them
needs the optional ``imagecodecs`` package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from empiarfs.errors import BadFile, MissingDependency
from empiarfs.formats.mrc import FrameSpec, frame_indices

EER_COMPRESSIONS = frozenset({65000, 65001, 65002})


@dataclass(frozen=True)
class TiffData:
    """What :func:`read_tiff` returns.

    Attributes
    ----------
    data : numpy.ndarray
        The requested pages, stacked along a new first axis (dropped when
        ``pages`` was a single int).
    pages : tuple of int
        Indices of the pages in ``data``.
    n_pages : int or None
        Number of pages in the file, when it had to be counted (counting
        walks every page directory, so it is skipped for plain int reads).
    compression : int
        TIFF compression code of the first page read (65000-65002: EER).
    """

    data: np.ndarray
    pages: tuple
    n_pages: Optional[int]
    compression: int


def _check_codec(page, name: str) -> None:
    if int(page.compression) in EER_COMPRESSIONS:
        try:
            import imagecodecs
        except ImportError:
            imagecodecs = None
        if imagecodecs is None or not hasattr(imagecodecs, "eer_decode"):
            raise MissingDependency(
                f"{name}: EER page (TIFF compression {int(page.compression)}) needs the "
                "'imagecodecs' package to decode: pip install imagecodecs",
                name="imagecodecs",
            )


def read_tiff(fileobj, *, pages: FrameSpec = None, name: str = "<stream>") -> TiffData:
    """Read selected pages of a TIFF or EER file.

    Parameters
    ----------
    fileobj : binary file object
        Seekable; only the page directories walked and the requested pages'
        strips or tiles are read.
    pages : None, int, slice or sequence of int
        Pages to read; ``None`` reads all. An int returns one 2D page.
    name : str
        Used in error messages only.

    Returns
    -------
    TiffData

    Raises
    ------
    BadFile
        If tifffile cannot parse the file.
    MissingDependency
        For EER pages when ``imagecodecs`` is not installed.
    InvalidInput
        A page index out of range or of the wrong type.
    """
    import tifffile

    # tifffile treats the current position as the start of the TIFF.
    fileobj.seek(0)
    try:
        tif = tifffile.TiffFile(fileobj, name=name)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise BadFile(f"{name}: not a readable TIFF file: {exc}", path=name) from exc
    with tif:
        n_pages = None
        if isinstance(pages, (int, np.integer)) and not isinstance(pages, bool) and pages >= 0:
            # Reach page i without counting every page of a long movie.
            try:
                tif.pages[int(pages)]
                indices, keep_axis = [int(pages)], False
            except IndexError:
                n_pages = len(tif.pages)
                indices, keep_axis = frame_indices(pages, n_pages, "page")  # raises InvalidInput
        else:
            n_pages = len(tif.pages)
            indices, keep_axis = frame_indices(pages, n_pages, "page")
        arrays = []
        compression = 1
        for i in indices:
            page = tif.pages[i]
            _check_codec(page, name)
            compression = int(page.compression)
            try:
                arrays.append(page.asarray())
            except (ValueError, OSError) as exc:
                raise BadFile(f"{name}: cannot decode TIFF page {i}: {exc}", path=name) from exc
    if not arrays:
        data = np.zeros((0, 0, 0))
    elif keep_axis:
        data = np.stack(arrays)
    else:
        data = arrays[0]
    return TiffData(data, tuple(indices), n_pages, compression)


def count_pages(fileobj, name: str = "<stream>") -> int:
    """Number of pages of a TIFF (walks every page directory, no pixel data).

    Raises
    ------
    BadFile
        If tifffile cannot parse the file.
    """
    import tifffile

    fileobj.seek(0)
    try:
        with tifffile.TiffFile(fileobj, name=name) as tif:
            return len(tif.pages)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise BadFile(f"{name}: not a readable TIFF file: {exc}", path=name) from exc
