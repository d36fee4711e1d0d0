"""Format readers on local files written by mrcfile/tifffile/starfile.

The readers take any seekable binary file object; a recording wrapper
checks which bytes they touch (only header + requested frames).
"""

from __future__ import annotations

import bz2
import io
import os
import sys

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import tifffile

import empiarfs
from empiarfs.errors import BadFile, InvalidInput, MissingDependency, UnsupportedFormat
from empiarfs.formats import detect
from empiarfs.formats.mrc import read_mrc
from empiarfs.formats.star import read_star
from empiarfs.formats.tiff import count_pages, read_tiff


class RecordingFile(io.BytesIO):
    """BytesIO that remembers every byte range read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.ranges: list[tuple[int, int]] = []

    def read(self, size=-1):
        start = self.tell()
        data = super().read(size)
        self.ranges.append((start, start + len(data)))
        return data

    def readinto(self, buffer):
        start = self.tell()
        n = super().readinto(buffer)
        self.ranges.append((start, start + n))
        return n

    def touched(self) -> int:
        return sum(end - start for start, end in self.ranges)


def _mrc(path, data, *, stack=True, voxel=1.5, ext=None, volume=False):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack:
            mrc.set_image_stack()
        elif volume:
            mrc.set_volume()
        mrc.voxel_size = voxel
        if ext is not None:
            mrc.set_extended_header(ext)
    return path


@pytest.fixture
def stack(tmp_path):
    data = np.random.default_rng(1).normal(size=(10, 32, 48)).astype(np.float32)
    ext = np.frombuffer(bytes(range(200)) * 3, dtype="V1")  # 600-byte extended header
    return _mrc(tmp_path / "s.mrcs", data, ext=ext), data


def test_mrc_frames_match_mrcfile_and_touch_only_those_bytes(stack):
    path, data = stack
    raw = path.read_bytes()
    frame = 32 * 48 * 4
    for frames, expected in [(None, data), (3, data[3]), (-1, data[-1]),
                             (slice(2, 5), data[2:5]), (slice(1, 9, 3), data[1:9:3]),
                             ([7, 0, 7], data[[7, 0, 7]]), (slice(5, 5), data[5:5])]:
        f = RecordingFile(raw)
        got = read_mrc(f, frames=frames, name="s.mrcs")
        np.testing.assert_array_equal(got.data, expected)
        assert got.data.dtype == np.float32 and got.shape == (10, 32, 48)
        n = len(set(np.atleast_1d(np.arange(10)[frames if frames is not None else slice(None)])))
        assert f.touched() == 1024 + 600 + n * frame, frames
    with mrcfile.open(path) as ref:
        got = read_mrc(RecordingFile(raw), frames=0)
        assert bytes(got.extended_header) == bytes(ref.extended_header)
        assert got.header.tobytes() == ref.header.tobytes()
        assert got.voxel_size.x == pytest.approx(1.5)


def test_mrc_header_only_reads_header_and_extended_header(stack):
    path, _ = stack
    f = RecordingFile(path.read_bytes())
    got = read_mrc(f, header_only=True)
    assert got.data is None and got.n_frames == 10 and got.shape == (10, 32, 48)
    assert f.touched() == 1024 + 600
    assert max(end for _, end in f.ranges) == 1024 + 600


def _big_endian(raw: bytes, dtype: str) -> bytes:
    """The same MRC file with a big-endian header, data and machine stamp
    (mrcfile itself writes native order only)."""
    header = np.frombuffer(raw[:1024], dtype=mrcfile.dtypes.HEADER_DTYPE)
    swapped = header.astype(mrcfile.dtypes.HEADER_DTYPE.newbyteorder(">"))
    swapped["machst"] = np.frombuffer(b"\x11\x11\x00\x00", dtype="u1")
    data = np.frombuffer(raw[1024:], dtype=dtype).astype(np.dtype(dtype).newbyteorder(">"))
    return swapped.tobytes() + data.tobytes()


def test_mrc_big_endian_int16_2d_and_volume(tmp_path):
    values = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    raw = _mrc(tmp_path / "le.mrcs", values).read_bytes()
    (tmp_path / "be.mrcs").write_bytes(_big_endian(raw, "<i2"))
    with open(tmp_path / "be.mrcs", "rb") as f:
        got = read_mrc(f, frames=[1, 3])
    assert got.data.dtype == np.dtype(">i2") and got.header.mode.dtype.byteorder == ">"
    np.testing.assert_array_equal(got.data, values[[1, 3]])
    with mrcfile.open(tmp_path / "be.mrcs") as ref:  # mrcfile agrees it is valid
        np.testing.assert_array_equal(ref.data, values)

    image = np.arange(20, dtype=np.int8).reshape(4, 5)
    path = _mrc(tmp_path / "one.mrc", image, stack=False)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(read_mrc(f).data, image)
        np.testing.assert_array_equal(read_mrc(f, frames=0).data, image)
        assert read_mrc(f, header_only=True).n_frames == 1

    volume = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = _mrc(tmp_path / "vol.mrc", volume, stack=False, volume=True)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(read_mrc(f, frames=slice(1, None)).data, volume[1:])


def test_mrc_bad_input(stack, tmp_path):
    path, _ = stack
    raw = bytearray(path.read_bytes())
    with pytest.raises(BadFile, match="map ID"):
        read_mrc(io.BytesIO(b"\x07" * 4096))
    with pytest.raises(BadFile, match="truncated"):
        read_mrc(io.BytesIO(bytes(raw[:500])))
    with pytest.raises(BadFile, match="truncated"):  # data shorter than the header says
        read_mrc(io.BytesIO(bytes(raw[:-10])), frames=9)
    corrupt = bytearray(raw)
    corrupt[12:16] = (77).to_bytes(4, "little")  # mode 77 does not exist
    with pytest.raises(BadFile, match="mode 77"):
        read_mrc(io.BytesIO(bytes(corrupt)))
    four_bit = bytearray(raw)
    four_bit[12:16] = (101).to_bytes(4, "little")
    with pytest.raises(UnsupportedFormat, match="mode 101"):
        read_mrc(io.BytesIO(bytes(four_bit)))
    with pytest.raises(InvalidInput, match="frame 10 out of range"):
        read_mrc(io.BytesIO(bytes(raw)), frames=10)
    with pytest.raises(InvalidInput):
        read_mrc(io.BytesIO(bytes(raw)), frames="all")
    # The exceptions are catchable as builtins.
    assert issubclass(BadFile, ValueError) and issubclass(MissingDependency, ImportError)


def _tiff(path, pages):
    tifffile.imwrite(path, pages, photometric="minisblack")
    return path


def test_tiff_pages(tmp_path):
    pages = np.random.default_rng(2).integers(0, 1000, size=(6, 16, 20), dtype=np.uint16)
    path = _tiff(tmp_path / "m.tif", pages)
    with open(path, "rb") as f:
        f.read(17)  # tifffile must not take the current position as the start
        np.testing.assert_array_equal(read_tiff(f, pages=4).data, pages[4])
        got = read_tiff(f, pages=slice(1, 4))
        np.testing.assert_array_equal(got.data, pages[1:4])
        assert got.n_pages == 6 and got.pages == (1, 2, 3)
        np.testing.assert_array_equal(read_tiff(f, pages=[5, 0]).data, pages[[5, 0]])
        np.testing.assert_array_equal(read_tiff(f).data, pages)
        assert count_pages(f) == 6
        with pytest.raises(InvalidInput, match="page 6 out of range"):
            read_tiff(f, pages=6)
    with pytest.raises(BadFile):
        read_tiff(io.BytesIO(b"not a tiff at all" * 10))


def test_tiff_single_page_touches_less_than_whole_file(tmp_path):
    pages = np.random.default_rng(3).integers(0, 255, size=(20, 64, 64), dtype=np.uint8)
    raw = _tiff(tmp_path / "m.tif", pages).read_bytes()
    f = RecordingFile(raw)
    np.testing.assert_array_equal(read_tiff(f, pages=2).data, pages[2])
    assert f.touched() < len(raw) / 4


def _as_eer(raw: bytes) -> bytes:
    """A TIFF whose first page claims EER compression (65001)."""
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, order = tag.valueoffset, tif.byteorder
    patched = bytearray(raw)
    patched[offset:offset + 2] = (65001).to_bytes(2, "little" if order == "<" else "big")
    return bytes(patched)


def test_eer_without_imagecodecs_names_the_package(tmp_path, monkeypatch):
    from empiarfs.formats.eer import read_eer

    raw = _tiff(tmp_path / "m.tif", np.zeros((2, 8, 8), np.uint8)).read_bytes()
    eer = _as_eer(raw)
    # imagecodecs is a dependency, so hide it as a machine without it would:
    # a None entry in sys.modules makes `import imagecodecs` raise ImportError.
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    with pytest.raises(MissingDependency, match="pip install imagecodecs") as info:
        read_tiff(io.BytesIO(eer), pages=0, name="movie.eer")
    assert info.value.name == "imagecodecs"
    assert isinstance(info.value, ImportError)
    assert str(info.value).startswith("movie.eer: EER page (TIFF compression 65001)")
    with pytest.raises(MissingDependency, match="pip install imagecodecs"):
        read_eer(io.BytesIO(eer), frames=0, name="movie.eer")
    # Plain TIFF pages never need it.
    assert read_tiff(io.BytesIO(raw), pages=0, name="m.tif").data.shape == (8, 8)
    monkeypatch.undo()
    # With the package back, the same call gets past the check to the
    # decoder (which refuses these strips: zeros are not EER events), so
    # the error above came from the hidden package and nothing else.
    with pytest.raises(BadFile, match="cannot decode TIFF page 0"):
        read_tiff(io.BytesIO(eer), pages=0, name="movie.eer")


def test_star_single_and_multi_block(tmp_path):
    table = pd.DataFrame({"rlnImageName": ["1@a.mrcs", "2@a.mrcs"], "rlnDefocusU": [1.5, 2.5]})
    starfile.write(table, tmp_path / "one.star")
    with open(tmp_path / "one.star", "rb") as f:
        got = read_star(f)
    pd.testing.assert_frame_equal(got, table)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnVoltage": [300.0]})
    starfile.write({"optics": optics, "particles": table}, tmp_path / "two.star")
    with open(tmp_path / "two.star", "rb") as f:
        got = read_star(f)
    assert set(got) == {"optics", "particles"}
    pd.testing.assert_frame_equal(got["particles"], table)
    with open(tmp_path / "one.star", "rb") as f:
        assert set(read_star(f, always_dict=True)) == {""} or len(read_star(f, always_dict=True)) == 1


def test_bz2_through_the_public_verbs(tmp_path):
    data = np.arange(5 * 8 * 8, dtype=np.int16).reshape(5, 8, 8)
    mrc = _mrc(tmp_path / "s.mrcs", data)
    (tmp_path / "s.mrcs.bz2").write_bytes(bz2.compress(mrc.read_bytes()))
    np.testing.assert_array_equal(empiarfs.load(tmp_path / "s.mrcs.bz2", frames=slice(1, 3)),
                                  data[1:3])
    assert empiarfs.load_mrc(tmp_path / "s.mrcs.bz2", header_only=True).shape == (5, 8, 8)

    pages = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    tif = _tiff(tmp_path / "m.tiff", pages)
    (tmp_path / "m.tiff.bz2").write_bytes(bz2.compress(tif.read_bytes()))
    np.testing.assert_array_equal(empiarfs.load(tmp_path / "m.tiff.bz2", frames=2), pages[2])

    table = pd.DataFrame({"rlnX": [1.0, 2.0]})
    starfile.write(table, tmp_path / "t.star")
    (tmp_path / "t.star.bz2").write_bytes(bz2.compress((tmp_path / "t.star").read_bytes()))
    pd.testing.assert_frame_equal(empiarfs.load_star(tmp_path / "t.star.bz2"), table)


FOILHOLE = ("EMPIAR-10934/data/CL44-1_20201106_111915/Images-Disc1/GridSquare_6089277/Data/"
            "FoilHole_6100571_Data_6092346_6092348_20201106_132148_fractions.tiff.bz2")


def test_bz2_tiff_pages_counted_through_a_kept_index_and_cache_clear_drops_it(
        archive_server, settings_for, sample_root, tmp_path):
    from click.testing import CliRunner
    from support.archive import env_for

    from empiarfs.cli import main
    from empiarfs.namespace.filesystem import EmpiarFS
    from empiarfs.pyapi.dataset import EmpiarDataset

    settings = settings_for(archive_server, tmp_path)
    index_dir = os.path.join(settings.cache_dir, "bz2-index")
    acc, rel = FOILHOLE.split("/", 1)
    with open(os.path.join(sample_root, "world_availability", acc.split("-")[1], rel), "rb") as fh:
        truth = tifffile.imread(io.BytesIO(bz2.decompress(fh.read())))
    with EmpiarFS(settings) as fs:
        dataset = EmpiarDataset.from_files([FOILHOLE], fs=fs, settings=settings)
        assert [item.frame for item in dataset.items] == list(range(len(truth))) == list(range(8))
        # Counting built the block index and kept it for the items' reads.
        assert len(os.listdir(index_dir)) == 1
        np.testing.assert_array_equal(empiarfs.load(FOILHOLE, frames=7, fs=fs), truth[7])
    cleared = CliRunner().invoke(main, ["cache", "clear", "--yes"], env=env_for(settings),
                                 catch_exceptions=False)
    assert cleared.exit_code == 0, cleared.output
    assert not os.path.exists(index_dir)
    assert os.path.isdir(os.path.join(settings.cache_dir, "blocks"))   # only what clear owns


@pytest.mark.parametrize("name, kind, compressed", [
    ("a.mrc", "mrc", False), ("A.MRCS", "mrc", False), ("t.st", "mrc", False),
    ("x.mrc.bz2", "mrc", True), ("p.star", "star", False), ("m.tif", "tiff", False),
    ("FoilHole_1_fractions.tiff.bz2", "tiff", True), ("movie.eer", "tiff", False),
])
def test_detect(name, kind, compressed):
    assert detect(name) == (kind, compressed)


@pytest.mark.parametrize("name", ["gain.dm4", "x.bz2", "notes.txt", "mrc"])
def test_detect_unsupported_names_what_is_supported(name):
    with pytest.raises(UnsupportedFormat, match=r"Supported: mrc \(\.mrc"):
        detect(name)
