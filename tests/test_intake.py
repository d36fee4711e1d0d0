"""The intake (2.x reader API) catalog of EMPIAR: entries and image sets of
the sample archive, image sets read as numpy and as Dask, equal to the
source files."""

from __future__ import annotations

import bz2
import glob
import io
import json
import os
import subprocess
import sys

import dask
import mrcfile
import numpy as np
import pytest
import tifffile
from intake.readers.entry import Catalog
from support.archive import movie_set

from empiarfs.archive_server.sample import sample_entries
from empiarfs.errors import InvalidInput, NotFound
from empiarfs.pyapi.intake_catalog import (
    EMPIARArchive,
    EMPIARArchiveReader,
    EMPIAREntry,
    EMPIAREntryReader,
    EMPIARImageSet,
    catalog,
)
from empiarfs.pyapi.workerfs import options_from_settings

IMAGESET = "Movie stacks of 80S ribosomes"


@pytest.fixture(scope="module")
def cat(module_settings):
    return catalog(module_settings)


def api_record(sample_root, accession) -> dict:
    with open(os.path.join(sample_root, "api", f"{accession}.json"), encoding="utf-8") as handle:
        return next(iter(json.load(handle).values()))


def test_catalog_lists_entries_and_imagesets(cat, sample_root):
    assert sorted(cat) == sorted(sample_entries())
    for accession in ("EMPIAR-10002", "EMPIAR-11561"):
        entry = cat[accession].read()
        record = api_record(sample_root, accession)
        assert isinstance(entry, Catalog)
        assert sorted(entry) == sorted(s["name"] for s in record["imagesets"])
        assert entry.metadata["title"] == record["title"]
    tomograms = cat["EMPIAR-11561"].read()["Reconstructed tomograms for dataset 1 (211206)"]
    assert tomograms.metadata["category"] == "reconstructed volumes"
    assert tomograms.metadata["pixel_width"] == 13.7
    assert tomograms.output_instance == "dask.array:Array"


def test_imageset_as_dask_and_numpy_equals_source(cat, sample_root):
    reader = cat["EMPIAR-10002"].read()[IMAGESET]
    lazy = reader.read()
    assert lazy.shape == (96, 256, 256) and lazy.chunks[0] == (1,) * 96
    ref = movie_set(sample_root)
    np.testing.assert_array_equal(dask.compute(lazy, scheduler="threads")[0], ref)
    some = reader.to_reader("numpy").read(frames=slice(10, 15))
    assert isinstance(some, np.ndarray)
    np.testing.assert_array_equal(some, ref[10:15])


def test_depositor_file_pattern_selects_the_movies(cat, sample_root):
    # EMPIAR-10934's image set directory also holds a gain reference; its
    # micrographs_file_pattern selects the four FoilHole movies only.
    entry = cat["EMPIAR-10934"].read()
    name = next(n for n in entry if n.startswith("Multiframe micrographs of human Pol"))
    frames = entry[name].to_reader("numpy").read()
    files = sorted(glob.glob(os.path.join(sample_root, "world_availability", "10934", "data",
                                          "**", "FoilHole_*.tiff.bz2"), recursive=True))
    assert len(files) == 4
    expected = []
    for path in files:
        with open(path, "rb") as handle:
            expected.append(tifffile.imread(io.BytesIO(bz2.decompress(handle.read()))))
    np.testing.assert_array_equal(frames, np.concatenate(expected))


def test_catalog_file_round_trip(cat, sample_root, tmp_path):
    # Options are plain values: the catalog saves as YAML and opens again.
    cat.to_yaml_file(str(tmp_path / "empiar.yaml"))
    again = Catalog.from_yaml_file(str(tmp_path / "empiar.yaml"))
    assert sorted(again) == sorted(cat)
    tomograms = again["EMPIAR-11561"].read()["Reconstructed tomograms for dataset 1 (211206)"]
    got = tomograms.to_reader("numpy").read()
    expected = []
    for ts in ("TS_001", "TS_002"):
        with mrcfile.open(os.path.join(sample_root, "world_availability", "11561", "data",
                                       "211206", "tomograms", f"{ts}.mrc")) as ref:
            expected.append(ref.data.copy())
    np.testing.assert_array_equal(got, np.concatenate(expected))


def test_readers_from_data_types(module_settings, sample_root):
    options = options_from_settings(module_settings)
    some = EMPIARArchiveReader(data=EMPIARArchive(options=options)).read(
        accessions=["10002", 11561])
    assert list(some) == ["EMPIAR-10002", "EMPIAR-11561"]
    source = EMPIARImageSet("empiar://EMPIAR-10002", 0, storage_options=options,
                            pattern="10[01]_*.mrcs")
    assert set(source.possible_outputs.values()) >= {"numpy:ndarray", "dask.array:Array"}
    lazy = source.to_reader("dask").read(frames_per_chunk="file")
    assert lazy.chunks[0] == (12, 12)
    np.testing.assert_array_equal(lazy[11:13].compute(scheduler="threads"),
                                  movie_set(sample_root)[11:13])


def test_bad_input(module_settings):
    options = options_from_settings(module_settings)
    with pytest.raises(NotFound):
        EMPIAREntryReader(data=EMPIAREntry("empiar://EMPIAR-99999", options=options)).read()
    with pytest.raises(InvalidInput, match="not an EMPIAR accession"):
        EMPIAREntryReader(data=EMPIAREntry("empiar://nonsense", options=options)).read()
    with pytest.raises(InvalidInput, match="unknown empiarfs setting"):
        EMPIARArchiveReader(data=EMPIARArchive(options={"no_such_setting": 1})).read()


def test_import_intake_registers_the_readers():
    # The intake.imports entry point: `import intake` alone finds EMPIAR types.
    code = (
        "import sys, intake\n"
        "from intake.readers.datatypes import recommend\n"
        "assert 'empiarfs.pyapi.intake_catalog' in sys.modules\n"
        "print(sorted(c.__name__ for c in recommend('empiar://', head=False)))\n"
        "print(sorted(c.__name__ for c in recommend('empiar://EMPIAR-10002', head=False)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                         capture_output=True, text=True).stdout.split("\n")
    assert out[0] == "['EMPIARArchive']" and out[1] == "['EMPIAREntry']"
