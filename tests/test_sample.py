"""The sample archive: deterministic, real-format files, awkward names."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os

import mrcfile
import starfile
import tifffile

from empiarfs.archive_server.sample import make_sample, sample_entries
from empiarfs.remote.metadata import parse_entry, unwrap


def _wa(root, entry, rel):
    return os.path.join(root, "world_availability", entry.split("-")[1], *rel.split("/"))


def test_same_seed_same_bytes_and_times(tmp_path):
    a = make_sample(tmp_path / "a", seed=3, many_files=20)
    b = make_sample(tmp_path / "b", seed=3, many_files=20)
    assert a == b
    assert make_sample(tmp_path / "c", seed=4, many_files=20)["files"] != a["files"]
    for f in a["files"][:10]:
        st = os.stat(_wa(tmp_path / "b", f["entry"], f["path"]))
        assert int(st.st_mtime) == f["mtime"]


def test_manifest_matches_disk(sample_root, manifest):
    assert manifest["accessions"] == sample_entries()
    assert sum(f["path"].startswith("data/Tiff/") for f in manifest["files"]) == 3000
    for f in manifest["files"]:
        if f["path"].startswith("data/Tiff/") and not f["path"].endswith("0.tif"):
            continue  # sample a tenth of the many small files
        with open(_wa(sample_root, f["entry"], f["path"]), "rb") as fh:
            data = fh.read()
        assert len(data) == f["size"]
        assert hashlib.sha256(data).hexdigest() == f["sha256"]


def test_files_readable_by_their_libraries(sample_root):
    with mrcfile.open(_wa(sample_root, "EMPIAR-10002", "data/103_movie_gc.mrcs")) as mrc:
        assert mrc.data.shape == (12, 256, 256)
        assert mrc.header.nsymbt == 12 * 768 and mrc.header.exttyp == b"FEI1"
        assert abs(float(mrc.voxel_size.x) - 1.77) < 1e-4
    with mrcfile.open(_wa(sample_root, "EMPIAR-10002", "data/100_movie_gc.mrcs")) as mrc:
        assert mrc.header.nsymbt == 0 and mrc.is_image_stack()
    tomo = _wa(sample_root, "EMPIAR-11561", "data/211206/tomograms/TS_001.mrc")
    with mrcfile.open(tomo) as mrc:
        assert mrc.is_volume() and mrc.data.shape == (24, 64, 64)
    star = starfile.read(_wa(sample_root, "EMPIAR-11561", "data/211206/tomograms/211206.star"))
    assert set(star) == {"optics", "particles"} and len(star["particles"]) == 40
    frames = tifffile.imread(_wa(sample_root, "EMPIAR-11561", "data/211206/data/frames/TS_001_000_-30.0.tif"))
    assert frames.shape == (10, 128, 128)
    rel = ("data/CL44-1_20201106_111915/Images-Disc1/GridSquare_6089277/Data/"
           "FoilHole_6100571_Data_6092346_6092348_20201106_132148_fractions.tiff.bz2")
    with open(_wa(sample_root, "EMPIAR-10934", rel), "rb") as fh:
        assert tifffile.imread(io.BytesIO(bz2.decompress(fh.read()))).shape == (8, 128, 128)
    small = tifffile.imread(_wa(sample_root, "EMPIAR-10943", "data/Tiff/FoilHole_10700042_Data_10695405_EER.tif"))
    assert small.shape == (16, 16)


def test_awkward_names_empty_dir_and_zero_byte_file(sample_root, manifest):
    paths = {(f["entry"], f["path"]) for f in manifest["files"]}
    assert ("EMPIAR-11419", "data/HeLa/Raw SEM images/SEM Image - SliceImage - 001.tif") in paths
    assert ("EMPIAR-11419", "data/HeLa/Raw SEM images/SEM Image - SliceImage, overview.tif") in paths
    assert ("EMPIAR-11419", "data/HeLa/Notes #1 & 50% done.txt") in paths
    assert os.listdir(_wa(sample_root, "EMPIAR-11419", "data/HeLa/Segmentations")) == []
    assert any(f["size"] == 0 for f in manifest["files"])


def test_api_json_is_real_shaped_with_quirks(sample_root):
    records = {}
    for acc in sample_entries():
        with open(os.path.join(sample_root, "api", f"{acc}.json"), "rb") as fh:
            key, rec = unwrap(fh.read(), acc)
        assert key == acc and list(rec)[:3] == ["imagesets", "workflow_file", "grant_references"]
        assert rec["authors"][0]["author"].keys() == {"name", "author_orcid"}
        records[acc] = rec
        entry = parse_entry(acc, rec)
        assert entry.imagesets and entry.title
    assert records["EMPIAR-10934"]["imagesets"][0]["directory"].startswith("/")
    assert records["EMPIAR-10934"]["cross_references"] == [{"name": "EMD-12602"}]
    assert records["EMPIAR-10002"]["cross_references"] == ["EMD-2275"]
    assert records["EMPIAR-10002"]["imagesets"][0]["num_images_or_tilt_series"] == "8"
    assert any(s["pixel_height"] is None and s["pixel_width"] for s in records["EMPIAR-11561"]["imagesets"])
    xml = open(_wa(sample_root, "EMPIAR-10934", "10934.xml"), encoding="utf-8").read()
    assert 'xmlns="http://pdbe.org/empiar"' in xml and "<emdbEntry>EMD-12602</emdbEntry>" in xml
    json.loads(open(os.path.join(sample_root, "api", "latest_citations.json"), encoding="utf-8").read())


def test_large_file_is_streamed(tmp_path):
    m = make_sample(tmp_path, many_files=0, large_size=40 * 1024 * 1024)
    (large,) = [f for f in m["files"] if f["path"] == "data/large/stack.mrcs"]
    assert abs(large["size"] - 40 * 1024 * 1024) < 2 * 1024 * 1024
    with mrcfile.mmap(_wa(tmp_path, "EMPIAR-10002", "data/large/stack.mrcs")) as mrc:
        assert mrc.data.shape[1:] == (1024, 1024)
        assert mrc.header.nz * 1024 * 1024 * 2 + 1024 == large["size"]
