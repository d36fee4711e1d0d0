"""MRC / MRCS reading that touches only the requested frames.

An MRC file is a 1024-byte header, an extended header of ``nsymbt``
bytes, then the data block: ``nz`` sections (frames of a movie or
particles of a stack) of ``ny * nx`` voxels each, stored contiguously.
So frame ``i`` lives at ``1024 + nsymbt + i * frame_bytes`` and a reader
can seek straight to it. mrcfile validates the header; the offsets are
computed here so that mrcfile never reads the data block.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from empiarfs.errors import BadFile, InvalidInput, UnsupportedFormat

log = logging.getLogger(__name__)

HEADER_BYTES = 1024
# Byte offset of NSYMBT in the MRC2014 header (word 24).
_NSYMBT_OFFSET = 92
# Byte offset of the map ID "MAP " (word 53).
_MAP_OFFSET = 208
# Byte offset of the machine stamp (word 54).
_MACHST_OFFSET = 212

FrameSpec = Union[None, int, slice, Sequence[int]]


@dataclass(frozen=True)
class MrcData:
    """What :func:`read_mrc` returns.

    Attributes
    ----------
    header : numpy.recarray
        The 1024-byte header as a record (``header.nx``, ``header.mode``...),
        in the file's byte order.
    extended_header : numpy.ndarray
        The extended header as raw bytes (dtype ``V1``); empty if none.
    voxel_size : numpy.recarray
        Å per voxel along x, y, z (``voxel_size.x``...).
    data : numpy.ndarray or None
        The requested frames, ``None`` when only the header was read.
    shape : tuple of int
        Shape of the whole data block as the header describes it.
    dtype : numpy.dtype
        Data type of the voxels, with the file's byte order.
    frames : tuple of int
        Indices (along the first axis) of the frames in ``data``.
    """

    header: np.recarray
    extended_header: np.ndarray
    voxel_size: np.recarray
    data: Optional[np.ndarray]
    shape: tuple
    dtype: np.dtype
    frames: tuple = ()

    @property
    def n_frames(self) -> int:
        """Number of frames (sections) in the file."""
        return frame_count(self.shape)


def frame_count(shape: tuple) -> int:
    """Frames along the first axis; a single 2D image counts as one."""
    return 1 if len(shape) == 2 else int(shape[0])


# Larger reads grow their buffer chunk by chunk, so a corrupt size field
# fails at end of file instead of allocating gigabytes up front.
_PREALLOCATE_MAX = 64 * 1024 * 1024


def _read_exact(fileobj, offset: int, size: int, what: str, name: str) -> bytearray:
    """Read exactly ``size`` bytes at ``offset`` or fail with BadFile."""
    fileobj.seek(offset)
    if size <= _PREALLOCATE_MAX and hasattr(fileobj, "readinto"):
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = fileobj.readinto(view[got:])  # no extra copy of large frames
            if not n:
                break
            got += n
        del view
    else:
        buf = bytearray()
        while len(buf) < size:
            chunk = fileobj.read(min(size - len(buf), _PREALLOCATE_MAX))
            if not chunk:
                break
            buf += chunk
        got = len(buf)
    if got < size:
        raise BadFile(
            f"{name}: truncated MRC file: expected {size} bytes of {what} at offset "
            f"{offset}, got {got}",
            path=name,
        )
    return buf


def read_header(fileobj, name: str = "<stream>"):
    """Read and validate the header and extended header.

    Parameters
    ----------
    fileobj : binary file object
        Seekable, positioned anywhere.
    name : str
        Used in error messages only.

    Returns
    -------
    mrcfile.mrcinterpreter.MrcInterpreter
        Holding ``header``, ``extended_header`` and ``voxel_size``, with no data.

    Raises
    ------
    BadFile
        If the header is missing, corrupt or truncated.
    """
    import mrcfile.mrcinterpreter
    import mrcfile.utils

    head = _read_exact(fileobj, 0, HEADER_BYTES, "header", name)
    if bytes(head[_MAP_OFFSET:_MAP_OFFSET + 3]) != b"MAP":
        # Checked before trusting any size field in the header.
        raise BadFile(f"{name}: not a valid MRC file: map ID 'MAP' not found at byte "
                      f"{_MAP_OFFSET} (not an MRC file, or the header is corrupt)", path=name)
    # nsymbt must be known before mrcfile can be given the whole header
    # region; its byte order comes from the machine stamp.
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(
            np.frombuffer(head, dtype="u1", count=4, offset=_MACHST_OFFSET)
        )
    except ValueError:
        order = "<"  # mrcfile will give the precise complaint below
    nsymbt = int(np.frombuffer(head, dtype=order + "i4", count=1, offset=_NSYMBT_OFFSET)[0])
    if nsymbt < 0:
        raise BadFile(f"{name}: corrupt MRC header: negative extended header size {nsymbt}",
                      path=name)
    ext = _read_exact(fileobj, HEADER_BYTES, nsymbt, "extended header", name) if nsymbt else b""
    try:
        interp = mrcfile.mrcinterpreter.MrcInterpreter(
            iostream=io.BytesIO(bytes(head) + bytes(ext)), header_only=True
        )
    except ValueError as exc:
        raise BadFile(f"{name}: not a valid MRC file: {exc}", path=name) from exc
    return interp


def _layout(interp, name: str):
    import mrcfile.utils

    header = interp.header
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as exc:
        mode = int(header.mode)
        if mode in (3, 101):  # defined by MRC2014 but with no numpy type
            raise UnsupportedFormat(
                f"{name}: MRC mode {mode} is not supported (supported modes: 0, 1, 2, 4, 6, 12)"
            ) from exc
        raise BadFile(f"{name}: corrupt MRC header: unknown mode {mode}", path=name) from exc
    shape = mrcfile.utils.data_shape_from_header(header)
    if any(int(n) <= 0 for n in shape):
        raise BadFile(f"{name}: corrupt MRC header: dimensions {shape}", path=name)
    return dtype, tuple(int(n) for n in shape)


def frame_indices(frames: FrameSpec, count: int, what: str = "frame") -> tuple[list[int], bool]:
    """Turn a frame spec into a list of indices and whether to keep the axis.

    Returns
    -------
    tuple of (list of int, bool)
        Indices in the caller's order, and ``False`` when a single int was
        given (the frame axis is then dropped, as numpy indexing does).

    Raises
    ------
    InvalidInput
        For an index out of range or a spec of the wrong type.
    """
    if frames is None:
        return list(range(count)), True
    if isinstance(frames, (int, np.integer)) and not isinstance(frames, bool):
        index = int(frames)
        if not -count <= index < count:
            raise InvalidInput(f"{what} {index} out of range: the file has {count} {what}(s)")
        return [index % count], False
    if isinstance(frames, slice):
        return list(range(*frames.indices(count))), True
    if isinstance(frames, (str, bytes)):
        frames = None  # fall through to the type error below
    try:
        indices = [int(i) for i in frames]
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"{what}s must be None, an int, a slice or a list of ints, not {frames!r}"
        ) from exc
    for i in indices:
        if not -count <= i < count:
            raise InvalidInput(f"{what} {i} out of range: the file has {count} {what}(s)")
    return [i % count for i in indices], True


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Coalesce sorted unique indices into ``(first, length)`` runs so that
    adjacent frames are read with one request."""
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


def read_mrc(fileobj, *, frames: FrameSpec = None, header_only: bool = False,
             name: str = "<stream>") -> MrcData:
    """Read an MRC/MRCS file's header and, optionally, some of its frames.

    Parameters
    ----------
    fileobj : binary file object
        Seekable; only the header, extended header and requested frames are
        read from it.
    frames : None, int, slice or sequence of int
        Sections along the first axis to read (movie frames, stack
        particles, volume slices; whole volumes for a volume stack).
        ``None`` reads all. An int drops the first axis, like numpy.
    header_only : bool
        Read the header and extended header only; ``data`` is ``None``.
    name : str
        Used in error messages only.

    Returns
    -------
    MrcData

    Raises
    ------
    BadFile
        Corrupt or truncated header, or data shorter than the header says.
    UnsupportedFormat
        An MRC mode with no numpy type (3: complex int16, 101: 4-bit).
    InvalidInput
        A frame index out of range or of the wrong type.
    """
    interp = read_header(fileobj, name)
    header = interp.header
    dtype, shape = _layout(interp, name)
    ext = interp.extended_header if interp.extended_header is not None else np.zeros(0, "V1")
    if header_only:
        return MrcData(header, ext, interp.voxel_size, None, shape, dtype, ())

    count = frame_count(shape)
    frame_shape = shape if len(shape) == 2 else shape[1:]
    frame_bytes = dtype.itemsize * int(np.prod(frame_shape))
    data_offset = HEADER_BYTES + int(header.nsymbt)
    indices, keep_axis = frame_indices(frames, count)

    blocks: list[tuple[int, np.ndarray]] = []
    for first, length in _runs(indices):
        raw = _read_exact(fileobj, data_offset + first * frame_bytes, length * frame_bytes,
                          f"data (frames {first}..{first + length - 1})", name)
        blocks.append((first, np.frombuffer(raw, dtype=dtype).reshape((length,) + frame_shape)))
    if len(blocks) == 1 and indices == list(range(blocks[0][0], blocks[0][0] + len(indices))):
        data = blocks[0][1]  # one run in order: no copy
    elif not indices:
        data = np.zeros((0,) + frame_shape, dtype)
    else:
        where = {first + k: block[k] for first, block in blocks for k in range(len(block))}
        # Filled by assignment: np.stack would convert to native byte order.
        data = np.empty((len(indices),) + frame_shape, dtype)
        for k, i in enumerate(indices):
            data[k] = where[i]
    if not keep_axis:
        data = data[0]
    elif len(shape) == 2 and frames is None:
        data = data[0]  # a single 2D image stays 2D, as mrcfile returns it
    log.debug("%s: read %d frame(s) of %d bytes", name, len(indices), frame_bytes)
    return MrcData(header, ext, interp.voxel_size, data, shape, dtype, tuple(indices))
