"""The empiar:// fsspec protocol, exercised with fsspec's own operations
against the sample archive through the project's server."""

from __future__ import annotations

import json
import os
import pickle

import fsspec
import mrcfile
import pytest

import empiarfs
from empiarfs.errors import ReadOnly
from empiarfs.pyapi.protocol import EmpiarFileSystem

STACK = "EMPIAR-10002/data/100_movie_gc.mrcs"


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path)


@pytest.fixture
def efs(settings):
    fs = fsspec.filesystem("empiar", settings=settings)
    yield fs
    fs.close()
    EmpiarFileSystem.clear_instance_cache()


def truth(sample_root, path):
    acc, rel = path.split("/", 1)
    with open(os.path.join(sample_root, "world_availability", acc.split("-")[1], rel), "rb") as fh:
        return fh.read()


def test_protocol_is_registered_by_entry_point(efs):
    assert fsspec.get_filesystem_class("empiar") is EmpiarFileSystem
    assert isinstance(efs, EmpiarFileSystem)


def test_open_read_seek(efs, settings, sample_root):
    data = truth(sample_root, STACK)
    with fsspec.open(f"empiar://{STACK}", settings=settings) as f:
        assert f.read(1024) == data[:1024]
        f.seek(500_000)
        assert f.tell() == 500_000
        assert f.read(10_000) == data[500_000:510_000]
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
    with efs.open(STACK) as f:  # the typed loaders accept fsspec file objects
        got = empiarfs.load_mrc(f, frames=1)
    with mrcfile.open(os.path.join(sample_root, "world_availability", "10002",
                                   "data", "100_movie_gc.mrcs")) as ref:
        assert (got.data == ref.data[1]).all()
    EmpiarFileSystem.clear_instance_cache()


def test_ls_info_exists_isdir(efs, manifest):
    names = efs.ls("empiar://EMPIAR-10002/data", detail=False)
    expected = sorted(f"EMPIAR-10002/{f['path']}" for f in manifest["files"]
                      if f["entry"] == "EMPIAR-10002" and f["path"].startswith("data/"))
    assert [n for n in names if efs.isfile(n)] == expected
    details = {d["name"]: d for d in efs.ls("EMPIAR-10002/data")}
    sizes = {f"EMPIAR-10002/{f['path']}": f["size"] for f in manifest["files"]}
    assert details[STACK]["size"] == sizes[STACK] and details[STACK]["type"] == "file"
    info = efs.info(f"empiar://{STACK}")
    assert info["size"] == sizes[STACK] and info["name"] == STACK
    assert efs.isdir("EMPIAR-10002") and efs.isdir("empiar://EMPIAR-10002/data")
    assert not efs.isdir(STACK) and efs.isfile(STACK)
    assert efs.exists(STACK) and efs.exists("EMPIAR-10002/entry.json")
    assert not efs.exists("EMPIAR-10002/data/nope.mrcs") and not efs.exists("EMPIAR-99999")
    assert "EMPIAR-10002" in efs.ls("", detail=False)
    assert efs.info("empiar://10002/data")["type"] == "directory"  # accession normalised
    with pytest.raises(FileNotFoundError):
        efs.info("EMPIAR-10002/data/nope.mrcs")
    links = [d for d in efs.ls("EMPIAR-10002/imagesets") if d["type"] == "link"]
    assert links and links[0]["destination"] == "../data"


def test_cat_file_ranges(efs, sample_root):
    data = truth(sample_root, STACK)
    assert efs.cat_file(STACK, 0, 1024) == data[:1024]
    assert efs.cat_file(STACK, 300_000, 300_016) == data[300_000:300_016]
    assert efs.cat_file(STACK, -64) == data[-64:]
    assert efs.cat_file(STACK, 10, -10) == data[10:-10]
    assert efs.cat_file(STACK, len(data) + 5) == b""
    assert efs.cat(STACK) == data
    assert json.loads(efs.cat_file("EMPIAR-10002/entry.json"))
    with pytest.raises(IsADirectoryError):
        efs.cat_file("EMPIAR-10002/data")


def test_walk_glob_find(efs, manifest):
    expected = sorted(f"EMPIAR-10934/{f['path']}" for f in manifest["files"]
                      if f["entry"] == "EMPIAR-10934" and f["path"].startswith("data/"))
    assert efs.find("EMPIAR-10934/data") == expected
    walked = [os.path.join(root, name) for root, _, files in efs.walk("EMPIAR-10934/data")
              for name in files]
    assert sorted(walked) == expected
    assert efs.glob("empiar://EMPIAR-10002/data/10[0-2]_movie_gc.mrcs") == [
        f"EMPIAR-10002/data/10{i}_movie_gc.mrcs" for i in range(3)]
    assert len(efs.glob("EMPIAR-10934/**/*.tiff.bz2")) == 4


def test_read_only_and_pickle(efs, settings):
    with pytest.raises(ReadOnly):
        efs.open(STACK, "wb")
    with pytest.raises(PermissionError):
        efs.rm(STACK)
    clone = pickle.loads(pickle.dumps(efs))
    assert clone.info(STACK)["size"] == efs.info(STACK)["size"]
    clone.close()
