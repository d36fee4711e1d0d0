"""EER movies: the test writer's files decode (through tifffile and
imagecodecs) to the events written; empiarfs.load returns the same frames,
fractions and super-resolution grids as tifffile, and through empiar://
fetches only the page directories on the way and the asked frames' strips."""

from __future__ import annotations

import bz2
import os

import numpy as np
import pytest
import tifffile
from support.archive import counting_fs, fetched, source
from support.eer import random_movie

import empiarfs
from empiarfs.archive_server.sample import EER_FRAMES, EER_MOVIE, EER_SIZE
from empiarfs.errors import BadFile, InvalidInput
from empiarfs.pyapi import api

BLOCK = 4096
MOVIE = f"EMPIAR-10934/{EER_MOVIE}"
SUPERRES = {1: 0, 2: 1, 4: 2}


def tifffile_frames(path, key, upsampling=1) -> np.ndarray:
    """The oracle: tifffile + imagecodecs on the file on disk, as uint8."""
    with tifffile.TiffFile(path, superres=SUPERRES[upsampling]) as tif:
        return np.stack([tif.pages[i].asarray() for i in key]).astype(np.uint8)


@pytest.fixture
def efs(archive_server, tmp_path):
    # Smallest blocks: the byte counter shows what a read needed at 4 KiB granularity.
    with counting_fs(archive_server, tmp_path, BLOCK) as fs:
        yield fs


def needed_blocks(path, last_frame, frames) -> tuple[int, int]:
    """Bytes of the 4 KiB blocks holding the header, the page directories
    of frames 0..last_frame (with out-of-line tag values) and the strips of
    ``frames``; and the strips' own bytes.

    The header and each directory parsed in full (pages 0 and ``frames``)
    are read in a few consecutive small reads, after which the block reader
    reads one block ahead even with ``readahead=0``: that block counts too.
    """
    touched, strip_bytes = {0, 1}, 0
    with tifffile.TiffFile(path) as tif:
        for i in range(last_frame + 1):
            page = tif.pages[i]
            n = len(page.tags)
            end = page.offset + 8 + 20 * n + 8
            spans = [(page.offset, end)]
            spans += [(t.valueoffset, t.valueoffset + t.count) for t in page.tags
                      if t.count > 8 and t.dtype in (1, 2, 7)]
            if i == 0 or i in frames:
                touched.add(end // BLOCK + 1)
            if i in frames:
                start, count = page.dataoffsets[0], page.databytecounts[0]
                spans.append((start, start + count))
                strip_bytes += count
            for start, end in spans:
                touched.update(range(start // BLOCK, (end - 1) // BLOCK + 1))
    return len(touched) * BLOCK, strip_bytes


# ------------------------------------------------------------ the writer

@pytest.mark.parametrize("compression, bits", [
    (65000, None), (65001, None), (65002, (10, 2, 2)), (65002, (8, 1, 3)),
])
def test_writer_round_trips_through_tifffile_at_every_grid(tmp_path, compression, bits):
    movie = random_movie(1, 4, 48, 80, compression=compression, bits=bits, empty_frames=(2,))
    path = movie.write(tmp_path / "m.eer")
    for up in (1, 2, 4):
        np.testing.assert_array_equal(tifffile_frames(path, range(4), up),
                                      movie.expected(upsampling=up))
        np.testing.assert_array_equal(empiarfs.load(path, eer_upsampling=up),
                                      movie.expected(upsampling=up))
    assert movie.expected()[2].sum() == 0 and movie.expected()[0][0, 0] == 1


def test_long_runs_and_dense_frames(tmp_path):
    # Runs longer than 2 continuation codes (sparse) and runs of 0 (dense).
    for density in (0.0005, 0.9):
        movie = random_movie(5, 2, 64, 64, density=density)
        path = movie.write(tmp_path / f"d{density}.eer")
        np.testing.assert_array_equal(empiarfs.load(path), movie.expected())


# ------------------------------------------------------------ the reader

def test_sample_movie_frames_fractions_and_grids_equal_tifffile(sample_root):
    path = source(sample_root, MOVIE)
    data = api.load_eer(path, frames=[7, 2])
    np.testing.assert_array_equal(data.data, tifffile_frames(path, [7, 2]))
    assert data.data.dtype == np.uint8 and data.data.shape == (2, EER_SIZE, EER_SIZE)
    assert data.n_frames is None  # explicit frames: the pages were not counted
    assert data.metadata["numberOfFrames"] == EER_FRAMES and data.compression == 65001

    grouped = api.load_eer(path, grouping=6)   # 40 frames -> 6 fractions, 4 left over
    assert grouped.data.shape == (6, EER_SIZE, EER_SIZE) and grouped.data.dtype == np.uint16
    assert grouped.n_frames == EER_FRAMES and grouped.n_fractions == 6
    assert grouped.detector_frames == tuple(range(36))
    np.testing.assert_array_equal(grouped.data[5],
                                  tifffile_frames(path, range(30, 36)).sum(axis=0))

    one = empiarfs.load(path, frames=-1, eer_grouping=6, eer_upsampling=2)
    assert one.shape == (2 * EER_SIZE, 2 * EER_SIZE)
    np.testing.assert_array_equal(one, tifffile_frames(path, range(30, 36), 2).sum(axis=0))


def test_only_the_page_directories_and_asked_strips_cross_the_network(efs, sample_root):
    path = source(sample_root, MOVIE)
    frames = [30, 31]
    got = empiarfs.load("empiar://" + MOVIE, frames=slice(30, 32), fs=efs)
    np.testing.assert_array_equal(got, tifffile_frames(path, frames))
    bound, strips = needed_blocks(path, 31, frames)
    assert strips <= fetched(efs) <= bound
    assert fetched(efs) < os.path.getsize(path) / 4

    # Fractions: fraction 2 of 8 frames each is detector frames 16..23.
    before = fetched(efs)
    fraction = api.load_eer(MOVIE, frames=2, grouping=8, fs=efs)
    assert fraction.detector_frames == tuple(range(16, 24))
    np.testing.assert_array_equal(fraction.data,
                                  tifffile_frames(path, range(16, 24)).sum(axis=0))
    bound, strips = needed_blocks(path, 23, range(16, 24))
    assert 0 < fetched(efs) - before <= bound   # pages 0..31 were walked already


def test_eer_inside_bz2(tmp_path):
    movie = random_movie(3, 6, 32, 32)
    raw = movie.tiff_bytes()
    (tmp_path / "m.eer.bz2").write_bytes(bz2.compress(raw))
    np.testing.assert_array_equal(empiarfs.load(tmp_path / "m.eer.bz2", frames=[5, 0]),
                                  movie.expected([5, 0]))


# ------------------------------------------------------------ bad input

def test_bad_options_and_files_are_one_clear_error(tmp_path, sample_root):
    path = source(sample_root, MOVIE)
    with pytest.raises(InvalidInput, match="upsampling must be 1, 2 or 4"):
        empiarfs.load(path, eer_upsampling=3)
    with pytest.raises(InvalidInput, match="grouping must be a positive"):
        api.load_eer(path, grouping=0)
    with pytest.raises(InvalidInput, match="fraction 10 out of range: the file has 10"):
        api.load_eer(path, frames=10, grouping=4)
    with pytest.raises(InvalidInput, match="frame 40 out of range"):
        empiarfs.load(path, frames=[0, 40])
    tif = source(sample_root, "EMPIAR-11561/data/211206/data/frames/TS_001_000_-30.0.tif")
    with pytest.raises(InvalidInput, match="apply to .eer files only"):
        empiarfs.load(tif, eer_grouping=2)
    (tmp_path / "plain.eer").write_bytes(open(tif, "rb").read())
    with pytest.raises(BadFile, match="not an EER movie"):
        empiarfs.load(tmp_path / "plain.eer")
    (tmp_path / "junk.eer").write_bytes(b"II*\0" + b"\0" * 60)
    with pytest.raises(BadFile, match="junk.eer"):
        empiarfs.load(tmp_path / "junk.eer")
