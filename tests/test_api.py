"""The Python API against the sample archive through the project's server:
arrays equal the source files, frame reads fetch only their blocks, bad
input raises the documented exceptions."""

from __future__ import annotations

import bz2
import io
import json
import os

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile
from support.archive import blocks_covering, counting_fs, fetched, source

import empiarfs
from empiarfs.archive_server import ArchiveServer
from empiarfs.errors import BadFile, InvalidInput, NotFound, UnsupportedFormat
from empiarfs.namespace.filesystem import EmpiarFS
from empiarfs.pyapi import api

BLOCK = 64 * 1024
STACK = "EMPIAR-10002/data/102_movie_gc.mrcs"      # float32, no extended header
FEI_STACK = "EMPIAR-10002/data/103_movie_gc.mrcs"  # int16 with an FEI1 extended header


@pytest.fixture
def efs(archive_server, tmp_path):
    with counting_fs(archive_server, tmp_path, BLOCK) as fs:
        yield fs


def test_entry_metadata_and_file_selection(efs):
    entry = empiarfs.entry("EMPIAR-10002", fs=efs)
    assert entry.accession == "EMPIAR-10002"
    assert "80S ribosome" in entry.title
    assert [a.name for a in entry.authors][:2] == ["Wong W", "Bai XC"]
    (imageset,) = entry.imagesets
    assert (imageset.category, imageset.pixel_width) == ("micrographs - multiframe", 1.77)
    assert entry.cross_references["EMDB"] == ("EMD-2275",)
    stacks = entry.files("data/*.mrcs")
    assert stacks == [f"data/{n}_movie_gc.mrcs" for n in range(100, 108)]
    assert entry.files(regex=r"10[57]_movie") == ["data/105_movie_gc.mrcs", "data/107_movie_gc.mrcs"]
    assert entry.files("*.md5") == ["data/checksums.md5"]
    assert entry.files("*.xml", recursive=False) == ["10002.xml"]
    assert empiarfs.entry(10002, fs=efs).title == entry.title
    deep = empiarfs.entry("EMPIAR-10934", fs=efs)
    assert len(deep.files("**/FoilHole_*.tiff.bz2")) == 4
    with pytest.raises(InvalidInput):
        entry.files("*.mrcs", regex="x")


@pytest.mark.parametrize("path, frames", [
    (STACK, slice(0, 4)), (STACK, 7), (FEI_STACK, [11, 2]), (FEI_STACK, slice(3, 12, 4)),
])
def test_frames_equal_source_and_fetch_only_their_blocks(efs, sample_root, path, frames):
    with mrcfile.open(source(sample_root, path)) as ref:
        expected = ref.data[frames]
        header_end = 1024 + int(ref.header.nsymbt)
        frame_bytes = ref.data[0].nbytes
    got = empiarfs.load("empiar://" + path, frames=frames, fs=efs)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
    indices = np.atleast_1d(np.arange(12)[frames])
    needed = blocks_covering(BLOCK, (0, header_end), *[(header_end + i * frame_bytes,
                                                 header_end + (i + 1) * frame_bytes)
                                                for i in indices])
    assert 0 < fetched(efs) <= needed
    assert fetched(efs) < os.path.getsize(source(sample_root, path)) / 2


def test_header_only_fetches_the_first_block(efs, sample_root):
    result = empiarfs.load_mrc(FEI_STACK, header_only=True, fs=efs)
    with mrcfile.open(source(sample_root, FEI_STACK), header_only=True) as ref:
        assert result.header.tobytes() == ref.header.tobytes()
        assert bytes(result.extended_header) == bytes(ref.extended_header)
        assert result.voxel_size.x == pytest.approx(float(ref.voxel_size.x))
    assert result.data is None and result.shape == (12, 256, 256) and result.n_frames == 12
    assert fetched(efs) == BLOCK  # header + FEI1 extended header fit in one block


def test_local_path_empiar_url_and_bare_path_agree(efs, sample_root):
    local = empiarfs.load(source(sample_root, STACK), frames=slice(2, 5))
    assert isinstance(local, np.ndarray)
    np.testing.assert_array_equal(empiarfs.load(STACK, frames=slice(2, 5), fs=efs), local)
    np.testing.assert_array_equal(empiarfs.load("empiar://10002/data/102_movie_gc.mrcs",
                                                frames=slice(2, 5), fs=efs), local)


def test_default_fs_from_configure(archive_server, tmp_path, settings_for, sample_root):
    settings = api.configure(settings_for(archive_server, tmp_path))
    try:
        assert settings.api_url == archive_server.api_url
        first = api.default_fs()
        assert api.default_fs() is first
        with mrcfile.open(source(sample_root, STACK)) as ref:
            np.testing.assert_array_equal(empiarfs.load(STACK, frames=1), ref.data[1])
        assert empiarfs.entry("EMPIAR-10002").accession == "EMPIAR-10002"
    finally:
        api.close()
    assert api._default is None


def test_open_returns_a_seekable_file_for_any_file(efs, sample_root):
    rel = "EMPIAR-10934/data/CL44-1_20201106_111915/Images-Disc1/GridSquare_6089277/Data/" \
          "FoilHole_6100571_Data_6092346_6092348_20201106_132148_fractions.tiff.bz2"
    with open(source(sample_root, rel), "rb") as fh:
        truth = fh.read()
    with empiarfs.open(rel, fs=efs) as f:
        assert f.seekable() and f.readable()
        f.seek(100)
        assert f.read(50) == truth[100:150]
        f.seek(-10, io.SEEK_END)
        assert f.read() == truth[-10:]
        assert f.tell() == len(truth)
    with empiarfs.open("EMPIAR-10002/entry.json", fs=efs) as f:
        assert json.loads(f.read())  # virtual files read the same way
    with pytest.raises(IsADirectoryError):
        empiarfs.open("EMPIAR-10002/data", fs=efs)


def test_tiff_bz2_star_and_tiff_pages(efs, sample_root):
    entry = empiarfs.entry("EMPIAR-10934", fs=efs)
    rel = entry.files("*.tiff.bz2")[0]
    with open(source(sample_root, entry.path(rel)), "rb") as fh:
        movie = tifffile.imread(io.BytesIO(bz2.decompress(fh.read())))
    np.testing.assert_array_equal(entry.load(rel, frames=slice(2, 4)), movie[2:4])

    tomo = empiarfs.entry("EMPIAR-11561", fs=efs)
    (star,) = tomo.files("*.star")
    got = empiarfs.load_star(tomo.path(star), fs=efs)
    expected = starfile.read(source(sample_root, tomo.path(star)))
    assert set(got) == set(expected) == {"optics", "particles"}
    pd.testing.assert_frame_equal(got["particles"], expected["particles"])

    tif = sorted(tomo.files("**/frames/*.tif"))[0]
    pages = tifffile.imread(source(sample_root, tomo.path(tif)))
    result = empiarfs.load_tiff(tomo.path(tif), pages=[1, 0], fs=efs)
    np.testing.assert_array_equal(result.data, pages[[1, 0]])


def test_bad_input_raises_documented_exceptions(efs):
    with pytest.raises(NotFound):
        empiarfs.entry("EMPIAR-99999", fs=efs)
    with pytest.raises(FileNotFoundError):  # NotFound is a FileNotFoundError
        empiarfs.load("EMPIAR-99999/data/x.mrcs", fs=efs)
    with pytest.raises(NotFound):
        empiarfs.load("EMPIAR-10002/data/missing.mrcs", fs=efs)
    with pytest.raises(NotFound, match="no such local file"):
        empiarfs.load("/nonexistent/dir/x.mrc")
    with pytest.raises(UnsupportedFormat, match="Supported: mrc"):
        empiarfs.load("EMPIAR-10002/data/checksums.md5", fs=efs)
    with pytest.raises(UnsupportedFormat):
        empiarfs.load_star(STACK, fs=efs)
    with pytest.raises(InvalidInput):
        empiarfs.entry("not-an-accession", fs=efs)
    with pytest.raises(InvalidInput, match="frame 12 out of range"):
        empiarfs.load(STACK, frames=12, fs=efs)


def test_corrupt_mrc_header_in_the_archive(sample_root, tmp_path, settings_for):
    """A corrupt file served by its own server (a copy of one entry plus one
    bad file), so the shared sample stays pristine."""
    root = tmp_path / "root"
    (root / "api").mkdir(parents=True)
    os.symlink(os.path.join(sample_root, "api", "EMPIAR-10002.json"), root / "api" / "EMPIAR-10002.json")
    data = root / "world_availability" / "10002" / "data"
    data.mkdir(parents=True)
    with open(source(sample_root, STACK), "rb") as fh:
        good = bytearray(fh.read())
    good[208:212] = b"JUNK"
    (data / "corrupt.mrcs").write_bytes(bytes(good))
    (data / "short.mrcs").write_bytes(bytes(good[:600]))
    with ArchiveServer(str(root)) as server:
        fs = EmpiarFS(settings_for(server, tmp_path, ftp_url=""))
        try:
            with pytest.raises(BadFile, match="map ID") as info:
                empiarfs.load_mrc("EMPIAR-10002/data/corrupt.mrcs", fs=fs)
            assert isinstance(info.value, ValueError)
            assert "corrupt.mrcs" in str(info.value)
            with pytest.raises(BadFile, match="truncated"):
                empiarfs.load_mrc("EMPIAR-10002/data/short.mrcs", header_only=True, fs=fs)
        finally:
            fs.close()


def test_to_lambda_ber_and_back_to_deposition_json(efs):
    entry = empiarfs.entry("EMPIAR-10002", fs=efs)
    record = entry.to_lambda_ber()
    assert record["title"] == entry.title
    people = {"corresponding_author": {"first_name": "Ann", "last_name": "Wong",
                                       "organization": "Lab", "email": "a@example.org",
                                       "country": "GB"}}
    people["principal_investigator"] = [people["corresponding_author"]]
    deposition = empiarfs.deposition_from_lambda_ber(record, overrides=people)
    assert deposition["title"] == entry.title
    assert [s["name"] for s in deposition["imagesets"]] == [s.name for s in entry.imagesets]
    assert deposition["imagesets"][0]["category"] == "('T2', '')"   # micrographs - multiframe
    with pytest.raises(empiarfs.IncompleteDeposition) as info:
        empiarfs.deposition_from_lambda_ber(record)
    assert "corresponding_author" in str(info.value)


def test_import_empiarfs_stays_light():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, empiarfs; "
                          "print(sorted({'numpy', 'mrcfile', 'requests', 'mfusepy'} "
                          "& set(sys.modules)))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert callable(empiarfs.load_mrc) and "load" in dir(empiarfs)


@pytest.mark.fuse
def test_load_through_a_real_mount(archive_server, tmp_path, settings_for, sample_root):
    from support.mounting import fuse_available, mounted, stats

    reason = fuse_available()
    if reason:
        pytest.skip(f"FUSE unavailable: {reason}")
    settings = settings_for(archive_server, tmp_path, block_size=BLOCK)
    # Read-ahead off, so the counter shows what the loader asked for.
    with mounted(settings, tmp_path / "mnt", env={"EMPIARFS_READAHEAD": "0"}) as mnt:
        path = os.path.join(mnt, STACK)
        with mrcfile.open(source(sample_root, STACK)) as ref:
            np.testing.assert_array_equal(empiarfs.load(path, frames=slice(0, 4)), ref.data[:4])
            header = empiarfs.load_mrc(path, header_only=True)
            assert header.header.tobytes() == ref.header.tobytes()
        fetched_bytes = stats(mnt)["reader"]["bytes_fetched"]
    # Four 256 KiB frames of a 3 MiB file and the header, whole blocks: the
    # loader advises POSIX_FADV_RANDOM, so the kernel reads nothing ahead
    # (without the advice: 1.3 MiB here, 2.8 MiB with a 1 MiB read-ahead).
    assert 4 * 256 * 1024 <= fetched_bytes <= 4 * 256 * 1024 + 2 * BLOCK
