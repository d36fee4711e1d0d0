"""Pictures of the data: one frame, or a montage of frames, as a PNG.

:func:`preview` reads only the frames it shows (through
:func:`empiarfs.load`, so through the block cache and, for a local path on
a mount, the mount's), scales each down by area averaging (noise in
electron micrographs averages out instead of aliasing), sets the contrast
from robust percentiles of all the tiles together (1st-99th by default,
so a few hot pixels or a dark grid bar do not flatten everything else),
and lays the tiles out in a grid. Pillow does the resampling and encodes
the PNG.

What is a frame: a section of an MRC/MRCS stack or volume, a page of a
TIFF, a detector frame (or fraction, with ``eer_grouping``) of an EER
movie; for a directory (an image set), the first frame of each file (of
its first folder that has image files, when it has none of its own).

:func:`imageset_png` is the renderer a mount injects into its namespace
for the ``EMPIAR-N/previews/<image set>.png`` files (the namespace, a lower
layer, cannot import this module).
"""

from __future__ import annotations

import io
import logging
import math
import os
from typing import Optional, Sequence, Union

import numpy as np

from empiarfs.errors import InvalidInput, UnsupportedFormat

log = logging.getLogger(__name__)

DEFAULT_SIZE = 512
DEFAULT_PERCENTILES = (1.0, 99.0)
# Tiles are apart by this many pixels of the background grey.
_GAP = 2
_BACKGROUND = 32

Frames = Union[None, int, slice, Sequence[int]]


def spread(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last
    included (all of them when ``count >= total``)."""
    if count < 1:
        raise InvalidInput(f"the number of frames to show must be at least 1, not {count}")
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def _plane(array: np.ndarray, label: str) -> np.ndarray:
    """A displayable 2D float32 plane of one frame."""
    data = np.asarray(array)
    if np.iscomplexobj(data):
        data = np.abs(data)  # MRC mode 4 (Fourier transforms): show the amplitude
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = data[..., :3].mean(axis=-1)  # RGB(A) TIFF pages: luminance-ish grey
    if data.ndim != 2:
        raise UnsupportedFormat(f"{label}: cannot show an array of shape {data.shape} "
                                "as a picture (expected one 2D frame)")
    return data.astype(np.float32, copy=False)


def _frame_count(path, fs) -> int:
    from empiarfs.formats import detect
    from empiarfs.formats.eer import is_eer_name
    from empiarfs.pyapi import api

    kind, compressed = detect(api._label(path, None))
    if kind == "mrc":
        return api.load_mrc(path, header_only=True, fs=fs).n_frames
    if kind == "tiff":
        with api.open(path, fs=fs) as fh:
            if compressed:
                from empiarfs.formats.bz2 import decompress_to_spool
                from empiarfs.formats.tiff import count_pages

                with decompress_to_spool(fh, str(path)) as plain:
                    return count_pages(plain, str(path))
            if is_eer_name(str(path)):
                from empiarfs.formats.eer import count_frames

                return count_frames(fh, str(path))
            from empiarfs.formats.tiff import count_pages

            return count_pages(fh, str(path))
    raise UnsupportedFormat(f"{path}: not an image file (MRC, MRCS, TIFF, EER)")


def _files_of(directory, fs) -> list[str]:
    """Image files of a directory (local, on a mount, or in the archive),
    sorted by name."""
    return _entries(directory, fs)[0]


def _entries(directory, fs) -> tuple[list[str], list[str]]:
    """``(image files, subdirectories)`` of a directory, each sorted by name."""
    from empiarfs.formats import detect
    from empiarfs.pyapi import api

    def is_image(name: str) -> bool:
        try:
            return detect(name)[0] in ("mrc", "tiff")
        except UnsupportedFormat:
            return False

    remote = api.archive_path(directory)
    if remote is None:
        paths = [os.path.join(directory, n) for n in sorted(os.listdir(directory))]
        return ([p for p in paths if is_image(p) and os.path.isfile(p)],
                [p for p in paths if os.path.isdir(p)])
    efs = fs or api.default_fs()
    nodes = sorted(efs.listdir(remote), key=lambda n: n.name)
    # Subdirectories keep the scheme: a bare EMPIAR-N/... is a local path first.
    return ([f"{remote}/{n.name}" for n in nodes if n.kind == "file" and is_image(n.name)],
            [f"{api.ARCHIVE_SCHEME}{remote}/{n.name}" for n in nodes if n.kind == "dir"])


# An image set's files often sit in folders of their own (per grid square,
# per sample): a directory without image files shows those of its first
# folder that has some, looked for depth first by name, this many levels
# down and this many folders listed at most (each listing is a request).
SEARCH_DEPTH = 3
SEARCH_LISTINGS = 16


def _files_below(directory, fs) -> list[str]:
    """Image files of the first folder under ``directory`` that has any
    (see :data:`SEARCH_DEPTH`), or ``[]``. Each folder is listed once."""
    budget = SEARCH_LISTINGS

    def walk(folders, depth) -> list[str]:
        nonlocal budget
        for folder in folders:
            if budget <= 0:
                return []
            budget -= 1
            files, deeper = _entries(folder, fs)
            if files:
                return files
            if depth < SEARCH_DEPTH:
                found = walk(deeper, depth + 1)
                if found:
                    return found
        return []

    return walk(_entries(directory, fs)[1], 1)


def _is_dir(path, fs) -> bool:
    from empiarfs.pyapi import api

    remote = api.archive_path(path)
    if remote is None:
        return os.path.isdir(path)
    node = (fs or api.default_fs()).stat(remote)
    if node.kind == "link":
        node = (fs or api.default_fs()).stat(
            os.path.normpath(f"{remote.rstrip('/').rsplit('/', 1)[0]}/{node.target}"))
    return node.is_dir


def collect(path, *, frames: Frames = None, count: Optional[int] = None, fs=None,
            eer_grouping: int = 1) -> list[np.ndarray]:
    """The frames a preview shows (2D float32 arrays), read and nothing else.

    Parameters
    ----------
    path : str or os.PathLike
        A file, or a directory (image set) whose files each give one tile.
    frames : None, int, slice or sequence of int
        Frames of the file (or files of the directory, in name order) to
        show; the first one if neither this nor ``count`` is given.
    count : int, optional
        Show this many frames (files) spread evenly from first to last.
    fs : EmpiarFS, optional
        For archive paths.
    eer_grouping : int
        For EER movies: show fractions of this many frames summed.

    Raises
    ------
    InvalidInput
        Both ``frames`` and ``count``; an index out of range; no images in a
        directory.
    UnsupportedFormat, NotFound, BadFile, RemoteError
        As :func:`empiarfs.load` raises them.
    """
    from empiarfs.formats.mrc import frame_indices
    from empiarfs.pyapi import api

    if frames is not None and count is not None:
        raise InvalidInput("give either frames or a count of frames to show, not both")
    if _is_dir(path, fs):
        files = _files_of(path, fs) or _files_below(path, fs)
        if not files:
            raise InvalidInput(f"{path}: no image files (MRC, MRCS, TIFF, EER) to show, here "
                               f"or in its folders {SEARCH_DEPTH} levels down")
        if count is not None:
            chosen = spread(count, len(files))
        else:
            chosen, _ = frame_indices(0 if frames is None else frames, len(files), "file")
        tiles = []
        for i in chosen:
            options = {"eer_grouping": eer_grouping} if _eer(files[i]) else {}
            tiles.append(_plane(api.load(files[i], frames=0, fs=fs, **options), files[i]))
        return tiles
    options = {"eer_grouping": eer_grouping} if _eer(path) else {}
    if count is not None:
        total = _frame_count(path, fs)
        if _eer(path):
            total //= eer_grouping
        frames = spread(count, total)
    elif frames is None:
        frames = 0
    data = api.load(path, frames=frames, fs=fs, **options)
    if isinstance(frames, (int, np.integer)):
        data = data[None]  # an int drops the frame axis
    return [_plane(frame, str(path)) for frame in data]


def _eer(path) -> bool:
    from empiarfs.formats.eer import is_eer_name

    return is_eer_name(str(path))


def _layout(n: int, columns: Optional[int]) -> tuple[int, int]:
    cols = columns if columns else max(1, math.ceil(math.sqrt(n)))
    if cols < 1:
        raise InvalidInput(f"columns must be at least 1, not {columns}")
    return cols, math.ceil(n / cols)


def render(tiles: list[np.ndarray], *, size: int = DEFAULT_SIZE, columns: Optional[int] = None,
           percentiles: tuple = DEFAULT_PERCENTILES):
    """Lay tiles out in a grid as an 8-bit grey Pillow image.

    Parameters
    ----------
    tiles : list of numpy.ndarray
        2D frames; each cell has the first one's aspect ratio, and frames of
        another shape are fitted inside their cell.
    size : int
        Width of the picture in pixels (tiles are scaled to fit, aspect
        kept).
    columns : int, optional
        Tiles per row; a near-square grid by default.
    percentiles : (float, float)
        The pixel values at these percentiles of all tiles become black and
        white.

    Returns
    -------
    PIL.Image.Image
        Mode ``"L"``; ``size`` wide at most (whole cells and the gaps between).

    Raises
    ------
    InvalidInput
        No tiles, a bad size, columns or percentiles.
    """
    from PIL import Image

    if not tiles:
        raise InvalidInput("nothing to show: no frames selected")
    low, high = (float(p) for p in percentiles)
    if not 0 <= low < high <= 100:
        raise InvalidInput(f"percentiles must satisfy 0 <= low < high <= 100, not {percentiles}")
    if size < 16:
        raise InvalidInput(f"the picture must be at least 16 pixels wide, not {size}")
    cols, rows = _layout(len(tiles), columns)
    # Cells take the first frame's aspect; other frames fit inside, centred.
    h, w = tiles[0].shape
    cell_w = max(1, (size - _GAP * (cols - 1)) // cols)
    cell_h = max(1, round(cell_w * h / w))
    scaled = []
    for t in tiles:
        fit = min(cell_w / t.shape[1], cell_h / t.shape[0])
        box = (max(1, round(t.shape[1] * fit)), max(1, round(t.shape[0] * fit)))
        scaled.append(np.asarray(Image.fromarray(np.ascontiguousarray(t, np.float32)).resize(box, Image.Resampling.BOX)))
    values = np.concatenate([s.ravel() for s in scaled])
    values = values[np.isfinite(values)]
    lo, hi = np.percentile(values, [low, high]) if values.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0  # a flat picture: mid-grey rather than a division by zero
    canvas = np.full((rows * cell_h + _GAP * (rows - 1), cols * cell_w + _GAP * (cols - 1)),
                     _BACKGROUND, np.uint8)
    for k, s in enumerate(scaled):
        r, c = divmod(k, cols)
        y = r * (cell_h + _GAP) + (cell_h - s.shape[0]) // 2
        x = c * (cell_w + _GAP) + (cell_w - s.shape[1]) // 2
        grey = np.clip((np.nan_to_num(s, nan=lo) - lo) / (hi - lo) * 255.0, 0, 255)
        canvas[y:y + s.shape[0], x:x + s.shape[1]] = (grey + 0.5).astype(np.uint8)
    return Image.fromarray(canvas)  # uint8: mode "L"


def preview(path, *, frames: Frames = None, count: Optional[int] = None, out=None,
            size: int = DEFAULT_SIZE, columns: Optional[int] = None,
            percentiles: tuple = DEFAULT_PERCENTILES, eer_grouping: int = 1, fs=None):
    """Render a frame, or a montage of frames, of a file or image set.

    Parameters
    ----------
    path : str or os.PathLike
        A local/mount path, ``EMPIAR-N/...`` or ``empiar://EMPIAR-N/...``;
        a file (MRC/MRCS/TIFF/EER, optionally .bz2) or a directory of them.
    frames : None, int, slice or sequence of int
        Which frames (files, for a directory) to show; the first if neither
        this nor ``count`` is given.
    count : int, optional
        Show this many, spread evenly from the first to the last.
    out : str or os.PathLike, optional
        Write the picture here (PNG, or the format its suffix names).
    size : int
        Width of the picture in pixels.
    columns : int, optional
        Tiles per row of a montage.
    percentiles : (float, float)
        Contrast: these percentiles of the shown pixels become black, white.
    eer_grouping : int
        EER movies: show fractions of this many detector frames summed
        (single EER frames are sparse 0/1 events).
    fs : EmpiarFS, optional
        For archive paths.

    Returns
    -------
    PIL.Image.Image
        The picture (mode ``"L"``).

    Raises
    ------
    InvalidInput
        Bad frames, count, size, columns or percentiles; nothing to show.
    NotFound, UnsupportedFormat, BadFile, MissingDependency, RemoteError
        As :func:`empiarfs.load` raises them.
    OSError
        ``out`` cannot be written.
    """
    tiles = collect(path, frames=frames, count=count, fs=fs, eer_grouping=eer_grouping)
    image = render(tiles, size=size, columns=columns, percentiles=percentiles)
    if out is not None:
        out = os.fspath(out)
        try:
            image.save(out, format=None if os.path.splitext(out)[1] else "PNG")
        except (KeyError, ValueError) as exc:  # Pillow: unknown extension
            raise InvalidInput(f"{out}: cannot write a picture in that format ({exc}); "
                               "use .png") from exc
        log.info("preview of %d frame(s) written to %s", len(tiles), out)
    return image


def png_bytes(image) -> bytes:
    """A Pillow image encoded as PNG."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def imageset_png(fs, directory: str) -> bytes:
    """The picture a mount shows as ``EMPIAR-N/previews/<image set>.png``.

    What ``empiarfs preview EMPIAR-N/<directory> -o x.png`` writes with its
    defaults (the first frame of the set's first image file, by name,
    :data:`DEFAULT_SIZE` pixels wide), read through ``fs``'s block cache
    and nothing else.

    Parameters
    ----------
    fs : EmpiarFS
        The mount's facade.
    directory : str
        Mount-relative image-set directory, ``EMPIAR-10002/data``.

    Raises
    ------
    InvalidInput
        No image files in the directory nor in its first folders.
    NotFound, UnsupportedFormat, BadFile, MissingDependency, RemoteError
        As :func:`empiarfs.load` raises them.
    """
    from empiarfs.pyapi.api import ARCHIVE_SCHEME

    # The scheme, not a bare EMPIAR-N/... path: a bare one is a local path
    # first, and the daemon's working directory may be anywhere.
    return png_bytes(preview(ARCHIVE_SCHEME + directory, fs=fs))
