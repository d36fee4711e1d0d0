"""EER movies (Falcon 4/4i/C electron events) frame by frame.

An EER file is a BigTIFF with one page per detector frame; each page is
one strip of run-length-coded electron events (TIFF compression 65000,
65001 or 65002) and the first page carries the acquisition metadata (tag
65001, XML). tifffile walks the page directories and reads only the
strips of the pages asked for; imagecodecs decodes them.

Cost of reaching frame ``k``: TIFF chains its page directories, so the
directories of frames ``0..k`` are read (a few hundred bytes each, but
each one touches a cache block), plus the strips of the frames decoded.
Counting the frames (``frames=None``, negative indices, or an open-ended
slice) walks every directory.

Frames and fractions
--------------------
With ``grouping=1`` the frames are the detector frames, as ``uint8`` event
counts (0 or 1). With ``grouping=N`` the movie is read as fractions of N
consecutive frames summed (``uint16``), the way RELION's
``--eer_grouping`` makes them: fraction ``j`` sums frames ``j*N ..
j*N+N-1``, and the frames left over after the last whole fraction are
dropped. ``frames=`` then selects fractions, and only their frames are
read.

Upsampling
----------
Each event carries its position inside the pixel (2 bits per axis on
Falcon 4). ``upsampling=1`` counts events per physical pixel (4096 x 4096
on Falcon 4); 2 and 4 place them on a grid 2 or 4 times finer (8K and 16K,
RELION's ``--eer_upsampling 2`` and ``3``), using 1 or 2 of the sub-pixel
bits, as tifffile's ``superres`` levels 1 and 2.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from empiarfs.errors import BadFile, InvalidInput, MissingDependency
from empiarfs.formats.mrc import FrameSpec, frame_indices

log = logging.getLogger(__name__)

EER_COMPRESSIONS = frozenset({65000, 65001, 65002})
#: Allowed ``upsampling`` factors and the tifffile ``superres`` level of each.
UPSAMPLING = {1: 0, 2: 1, 4: 2}
# Sub-pixel decoding changed meaning in these releases (tifffile #313);
# earlier ones decode it differently, so upsampling is refused with them.
_SUPERRES_TIFFFILE = (2025, 10, 16)
_SUPERRES_IMAGECODECS = (2025, 11, 11)


@dataclass(frozen=True)
class EerData:
    """What :func:`read_eer` returns.

    Attributes
    ----------
    data : numpy.ndarray
        ``(n, height, width)`` frames (``uint8`` event counts) or fractions
        (``uint16`` sums); 2D when ``frames`` was a single int. ``height``
        and ``width`` are the physical size times ``upsampling``.
    frames : tuple of int
        Indices of the frames (``grouping=1``) or fractions in ``data``.
    detector_frames : tuple of int
        The detector frames decoded, in order.
    n_frames : int or None
        Detector frames in the file, when they were counted (counting walks
        every page directory, so it is skipped when not needed).
    grouping : int
        Detector frames summed per fraction (1: no grouping).
    upsampling : int
        1, 2 or 4.
    compression : int
        TIFF compression code of the frames (65000, 65001 or 65002).
    metadata : dict
        The acquisition metadata of tag 65001 (``numberOfFrames``,
        ``exposureTime``, ``sensorPixelSize.width``...), as tifffile parses
        it; empty when absent or not parseable.
    """

    data: np.ndarray
    frames: tuple
    detector_frames: tuple
    n_frames: Optional[int]
    grouping: int
    upsampling: int
    compression: int
    metadata: dict = field(default_factory=dict)

    @property
    def n_fractions(self) -> Optional[int]:
        """Whole fractions in the file (``n_frames // grouping``), if counted."""
        return None if self.n_frames is None else self.n_frames // self.grouping


def is_eer_name(name: str) -> bool:
    """Whether a file name says EER (``.eer``, optionally ``.eer.bz2``)."""
    lower = str(name).lower()
    return lower.endswith(".eer") or lower.endswith(".eer.bz2")


def check_options(grouping, upsampling) -> tuple[int, int]:
    """Validate ``grouping`` and ``upsampling``; returns them as ints.

    Raises
    ------
    InvalidInput
        ``grouping`` not a positive int, or ``upsampling`` not 1, 2 or 4.
    """
    if isinstance(grouping, bool) or not isinstance(grouping, (int, np.integer)) or grouping < 1:
        raise InvalidInput(f"EER grouping must be a positive number of frames, not {grouping!r}")
    if isinstance(upsampling, bool) or upsampling not in UPSAMPLING:
        raise InvalidInput(f"EER upsampling must be 1, 2 or 4 (4K, 8K or 16K on a Falcon 4), "
                           f"not {upsampling!r}")
    return int(grouping), int(upsampling)


def _version(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", str(text))[:3])


def _require_codecs(upsampling: int, name: str) -> None:
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is None or not hasattr(imagecodecs, "eer_decode"):
        raise MissingDependency(f"{name}: EER frames need the 'imagecodecs' package to decode: "
                                "pip install imagecodecs", name="imagecodecs")
    if upsampling > 1:
        import tifffile

        if (_version(tifffile.__version__) < _SUPERRES_TIFFFILE
                or _version(imagecodecs.__version__) < _SUPERRES_IMAGECODECS):
            raise MissingDependency(
                f"{name}: EER upsampling needs tifffile >= 2025.10.16 and imagecodecs >= "
                f"2025.11.11 (installed: {tifffile.__version__}, {imagecodecs.__version__}): "
                "pip install -U tifffile imagecodecs", name="imagecodecs")


def _plain_indices(frames: FrameSpec) -> Optional[list[int]]:
    """The indices ``frames`` names when that needs no frame count (non-
    negative ints, bounded forward slices), else ``None``."""
    if frames is None or isinstance(frames, bool):
        return None
    if isinstance(frames, (int, np.integer)):
        return [int(frames)] if frames >= 0 else None
    if isinstance(frames, slice):
        start, stop, step = frames.start or 0, frames.stop, frames.step or 1
        if stop is None or start < 0 or stop < 0 or step < 1:
            return None
        return list(range(start, stop, step))
    if isinstance(frames, (str, bytes)):
        return None
    try:
        indices = [int(i) for i in frames]
    except (TypeError, ValueError):
        return None  # frame_indices gives the type error
    return indices if all(i >= 0 for i in indices) else None


class _Movie:
    """The pages of an open EER TiffFile, counted only when needed."""

    def __init__(self, tif, name: str):
        self.tif = tif
        self.name = name
        first = tif.pages.first
        # Some writers put an integrated image (uncompressed) first.
        self.base = 1 if int(first.compression) == 1 else 0
        self._count: Optional[int] = None

    def page(self, index: int):
        """Detector frame ``index`` (IndexError past the end)."""
        page = self.tif.pages[self.base + index]
        compression = int(page.compression)
        if compression not in EER_COMPRESSIONS:
            raise BadFile(f"{self.name}: page {self.base + index} is not an EER frame "
                          f"(TIFF compression {compression})", path=self.name)
        return page

    def has(self, index: int) -> bool:
        if self._count is not None:
            return index < self._count
        try:
            self.tif.pages[self.base + index]
            return True
        except IndexError:
            return False

    def count(self) -> int:
        if self._count is None:
            self._count = len(self.tif.pages) - self.base
        return self._count


def _select(movie: _Movie, frames: FrameSpec, grouping: int) -> tuple[list[int], bool]:
    what = "fraction" if grouping > 1 else "frame"
    plain = _plain_indices(frames)
    if plain is not None and (not plain or movie.has((max(plain) + 1) * grouping - 1)):
        return plain, not isinstance(frames, (int, np.integer))
    return frame_indices(frames, movie.count() // grouping, what)


def read_eer(fileobj, *, frames: FrameSpec = None, grouping: int = 1, upsampling: int = 1,
             name: str = "<stream>") -> EerData:
    """Read selected frames (or fractions) of an EER movie.

    Parameters
    ----------
    fileobj : binary file object
        Seekable; only the page directories up to the last frame needed and
        the strips of the frames decoded are read.
    frames : None, int, slice or sequence of int
        Detector frames (``grouping=1``) or fractions to return; all if
        ``None``. An int drops the first axis.
    grouping : int
        Sum this many consecutive detector frames into each fraction
        (RELION's ``--eer_grouping``); left-over frames are dropped.
    upsampling : {1, 2, 4}
        Grid per physical pixel: 1 (4K on a Falcon 4), 2 (8K) or 4 (16K).
    name : str
        Used in error messages only.

    Returns
    -------
    EerData

    Raises
    ------
    BadFile
        Not a TIFF, not an EER movie, or a frame that does not decode.
    MissingDependency
        ``imagecodecs`` is missing (or too old for ``upsampling`` > 1).
    InvalidInput
        A frame index out of range, a bad ``grouping`` or ``upsampling``.
    """
    import tifffile

    grouping, upsampling = check_options(grouping, upsampling)
    _require_codecs(upsampling, name)
    kwargs = {"superres": UPSAMPLING[upsampling]} if upsampling > 1 else {}
    fileobj.seek(0)
    try:
        tif = tifffile.TiffFile(fileobj, name=name, **kwargs)
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise BadFile(f"{name}: not a readable TIFF/EER file: {exc}", path=name) from exc
    with tif:
        if not tif.is_eer:
            raise BadFile(f"{name}: not an EER movie: the first page has no EER acquisition "
                          "metadata (TIFF tag 65001)", path=name)
        movie = _Movie(tif, name)
        indices, keep_axis = _select(movie, frames, grouping)
        metadata = _metadata(tif, name)
        if not indices:
            first = movie.page(0)
            data = np.zeros((0,) + tuple(first.shape), np.uint16 if grouping > 1 else np.uint8)
            return EerData(data, (), (), movie._count, grouping, upsampling,
                           int(first.compression), metadata)
        detector: list[int] = []
        out = None
        compression = 0
        for k, unit in enumerate(indices):
            for i in range(unit * grouping, (unit + 1) * grouping):
                page = movie.page(i)
                compression = int(page.compression)
                try:
                    events = page.asarray()
                except Exception as exc:  # imagecodecs raises its own error classes
                    raise BadFile(f"{name}: cannot decode EER frame {i}: {exc}",
                                  path=name) from exc
                if out is None:
                    dtype = np.uint16 if grouping > 1 else np.uint8
                    out = np.zeros((len(indices),) + events.shape, dtype)
                if events.shape != out.shape[1:]:
                    raise BadFile(f"{name}: EER frame {i} is {events.shape}, frame "
                                  f"{detector[0]} was {out.shape[1:]}", path=name)
                out[k] += events
                detector.append(i)
        log.debug("%s: decoded %d EER frame(s) into %d", name, len(detector), len(indices))
    data = out if keep_axis else out[0]
    return EerData(data, tuple(indices), tuple(detector), movie._count, grouping, upsampling,
                   compression, metadata)


def _metadata(tif, name: str) -> dict:
    try:
        meta = getattr(tif, "eer_metadata", None)
    except Exception as exc:  # a malformed XML block must not hide the frames
        log.warning("%s: EER metadata not readable: %s", name, exc)
        return {}
    return dict(meta) if isinstance(meta, dict) else {}


def count_frames(fileobj, name: str = "<stream>") -> int:
    """Detector frames in an EER movie (walks every page directory).

    Raises
    ------
    BadFile
        Not a TIFF/EER file.
    """
    import tifffile

    fileobj.seek(0)
    try:
        with tifffile.TiffFile(fileobj, name=name) as tif:
            return _Movie(tif, name).count()
    except (tifffile.TiffFileError, ValueError, OSError) as exc:
        raise BadFile(f"{name}: not a readable TIFF/EER file: {exc}", path=name) from exc
