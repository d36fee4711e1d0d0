"""EER movies for tests: random electron events, written with the sample's
EER writer, and the frames those events must decode to.

The expected frames are computed here from the events themselves (which
pixel, which sub-pixel), so a test can check both the writer (through
tifffile + imagecodecs) and empiarfs' reader (against tifffile) on files
whose content is known exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from empiarfs.archive_server.sample import (
    EER_CODINGS,
    eer_frame_bytes,
    eer_metadata_xml,
    eer_tiff_bytes,
)


@dataclass
class EerMovie:
    """A movie's events: per frame, pixel indices and sub-pixel positions."""

    height: int
    width: int
    positions: list       # per frame: sorted unique pixel indices
    sub_x: list           # per frame: sub-pixel x, 0 .. 2**horzbits - 1
    sub_y: list
    compression: int = 65001
    bits: tuple = (7, 2, 2)   # run length, horizontal, vertical sub-pixel bits

    @property
    def n_frames(self) -> int:
        return len(self.positions)

    def strips(self) -> list[bytes]:
        rle, horz, vert = self.bits
        return [eer_frame_bytes(p, x, y, self.height * self.width, rlebits=rle,
                                horzbits=horz, vertbits=vert)
                for p, x, y in zip(self.positions, self.sub_x, self.sub_y)]

    def tiff_bytes(self) -> bytes:
        meta = eer_metadata_xml({"numberOfFrames": self.n_frames,
                                 "sensorImageWidth": (self.width, "pixels"),
                                 "sensorImageHeight": (self.height, "pixels")})
        bits = self.bits if self.compression == 65002 else None
        return eer_tiff_bytes(self.strips(), self.width, self.height,
                              compression=self.compression, metadata=meta, bits=bits)

    def write(self, path) -> str:
        with open(path, "wb") as fh:
            fh.write(self.tiff_bytes())
        return os.fspath(path)

    def expected(self, frames=None, upsampling: int = 1) -> np.ndarray:
        """``(n, height * fy, width * fx)`` uint8 event counts placed from the
        events, where ``f = min(upsampling, 2**bits)`` per axis: an event's
        row is ``y * fy + (sub_y >> (vertbits - log2 fy))``."""
        _, horz, vert = self.bits
        level = {1: 0, 2: 1, 4: 2}[upsampling]
        ly, lx = min(level, vert), min(level, horz)
        indices = range(self.n_frames) if frames is None else frames
        out = np.zeros((len(indices), self.height << ly, self.width << lx), np.uint8)
        for k, i in enumerate(indices):
            y, x = np.divmod(np.asarray(self.positions[i]), self.width)
            yy = (y << ly) + (np.asarray(self.sub_y[i]) >> (vert - ly))
            xx = (x << lx) + (np.asarray(self.sub_x[i]) >> (horz - lx))
            np.add.at(out[k], (yy, xx), 1)
        return out


def random_movie(seed: int, n_frames: int, height: int, width: int, *, density: float = 0.03,
                 compression: int = 65001, bits: tuple | None = None,
                 empty_frames: tuple = ()) -> EerMovie:
    """Random events (``density`` per pixel per frame); frames listed in
    ``empty_frames`` get none, and frame 0 gets one on the first and the
    last pixel, so both ends of the run-length coding are exercised."""
    rng = np.random.default_rng(seed)
    bits = bits or EER_CODINGS[compression]
    _, horz, vert = bits
    n = height * width
    positions, sub_x, sub_y = [], [], []
    for i in range(n_frames):
        if i in empty_frames:
            p = np.zeros(0, np.int64)
        else:
            p = np.flatnonzero(rng.random(n) < density)
            if i == 0:
                p = np.union1d(p, [0, n - 1])
        positions.append(p)
        sub_x.append(rng.integers(0, 1 << horz, size=len(p)))
        sub_y.append(rng.integers(0, 1 << vert, size=len(p)))
    return EerMovie(height, width, positions, sub_x, sub_y, compression, tuple(bits))
