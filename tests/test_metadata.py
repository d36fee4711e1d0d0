"""Accession ids and entry JSON parsing (pure logic)."""

import json
import os

import pytest

from empiarfs.errors import BadResponse, InvalidInput
from empiarfs.remote import accession as acc
from empiarfs.remote.metadata import clean_directory, parse_entry, unwrap

REFERENCE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference", "empiar")


@pytest.mark.parametrize(
    "text", [10002, "10002", "EMPIAR-10002", "empiar-10002", "EMPIAR_10002", "empiar 10002",
             " EMPIAR-10002/ ", "0010002", "EMPIAR-010002"],
)
def test_normalize_forms(text):
    assert acc.normalize(text) == "EMPIAR-10002"
    assert acc.number(text) == 10002


@pytest.mark.parametrize("text", ["", "EMPIAR-", "EMD-2275", "10002a", "EMPIAR-12345678", "1.5", None,
                                  "../10002", "10002/x"])
def test_normalize_rejects(text):
    with pytest.raises(InvalidInput, match="not an EMPIAR accession"):
        acc.normalize(text)


@pytest.mark.parametrize("text", ["EMD-2275", "emd_2275", "2275", "EMDB-2275", "emd 2275"])
def test_normalize_emdb(text):
    assert acc.normalize_emdb(text) == "EMD-2275"


@pytest.mark.parametrize("text", ["EMPIAR-10002", "EMD-22", "x", ""])
def test_normalize_emdb_rejects(text):
    with pytest.raises(InvalidInput):
        acc.normalize_emdb(text)


def test_parse_spec():
    assert acc.parse_spec("10050, 10054,10060-10063") == [10050, 10054, 10060, 10061, 10062, 10063]
    assert acc.parse_spec("EMPIAR-10060-EMPIAR-10062,10060") == [10060, 10061, 10062]
    assert acc.parse_spec(["EMPIAR-2", 1, "3"]) == [1, 2, 3]
    assert acc.parse_spec(" , ") == []


@pytest.mark.parametrize("spec,message", [("10072-10060", "reversed"), ("1-6000", "too large"),
                                          ("1-2-3", "not an EMPIAR"), ("abc", "not an EMPIAR")])
def test_parse_spec_rejects(spec, message):
    with pytest.raises(InvalidInput, match=message):
        acc.parse_spec(spec)


def test_parse_spec_total_limit():
    with pytest.raises(InvalidInput, match="more than"):
        acc.parse_spec("1-4000,10001-14000")


def test_unwrap():
    assert unwrap({"EMPIAR-1": {"title": "t"}}, "EMPIAR-1") == ("EMPIAR-1", {"title": "t"})
    assert unwrap(b'{"EMPIAR-1": {"title": "t"}}') == ("EMPIAR-1", {"title": "t"})
    for bad in (b"{not json", b"\xff\xfe", "[]", "{}", '{"EMPIAR-1": [1]}', "42"):
        with pytest.raises(BadResponse):
            unwrap(bad, "EMPIAR-1")


def test_parse_entry_tolerates_odd_types():
    record = {
        "title": "  A title ",
        "status": "REL",
        "release_date": "2023-02-28",
        "authors": [{"author": {"name": "Lancey C", "author_orcid": "0000-0001"}}, "Plain Name", 5, None],
        "corresponding_author": {"author": {"first_name": "Ann", "last_name": "Lee", "email": "a [at] b"}},
        "principal_investigator": [{"author": {"name": "PI One"}}],
        "cross_references": ["EMD-2275", {"name": "EMD-3233"}, {"other": 1}, ""],
        "biostudies_references": [{"name": "S-BSST1"}],
        "related_pdb_entries": ["1abc"],
        "imagesets": {
            "0": {"name": "movies", "directory": "/data/movies/", "num_images_or_tilt_series": "46",
                  "image_width": "4096", "pixel_width": "1.1", "pixel_height": "inf", "frames_per_image": "inf",
                  "voxel_type": "UNSIGNED BYTE"},
            "1": {"directory": "../../etc"},
            "2": "junk",
            "3": {},
        },
        "citation": [{"title": "Paper", "year": "2020", "published": "false", "preprint": True,
                      "j_or_nj_citation": False, "authors": [{"name": "X Y"}]}, "junk"],
        "grant_references": [{"funding_body": "Wellcome Trust", "code": "1", "country": "UK"}, "x"],
        "workflow_file": {"path": "path=/data/workflow.json"},
        "dataset_size": "174.2 GB",
        "entry_doi": "10.6019/EMPIAR-10002",
    }
    entry = parse_entry("EMPIAR-10002", record)
    assert entry.title == "A title" and entry.number == 10002
    assert [a.name for a in entry.authors] == ["Lancey C", "Plain Name"]
    assert entry.authors[0].orcid == "0000-0001"
    assert entry.corresponding_author.name == "Ann Lee"
    assert [a.name for a in entry.principal_investigators] == ["PI One"]
    assert entry.emdb_refs == ("EMD-2275", "EMD-3233")
    assert entry.biostudies_refs == ("S-BSST1",) and entry.related_pdb_entries == ("1abc",)
    movies, escaped = entry.imagesets
    assert (movies.directory, movies.num_images, movies.image_width) == ("data/movies", 46, 4096)
    assert movies.pixel_width == 1.1 and movies.pixel_height is None and movies.frames_per_image is None
    assert escaped.directory == "etc" and escaped.name == "etc"
    (paper,) = entry.citations
    assert paper.year == 2020 and paper.published is False and paper.preprint is True
    assert paper.j_or_nj_citation is False
    assert entry.grants[0].funding_body == "Wellcome Trust" and len(entry.grants) == 1
    assert entry.workflow_file == "/data/workflow.json"
    assert entry.doi == "10.6019/EMPIAR-10002" and entry.dataset_size == "174.2 GB"


def test_parse_entry_of_empty_record():
    entry = parse_entry("EMPIAR-1", {})
    assert entry.title == "" and entry.imagesets == () and entry.authors == ()
    with pytest.raises(BadResponse):
        parse_entry("EMPIAR-1", [])


@pytest.mark.parametrize("value,expected", [("/data/x/", "data/x"), ("data", "data"), ("", ""), (None, ""),
                                            ("/", ""), ("a/../../b", "b"), ("./a//b", "a/b")])
def test_clean_directory(value, expected):
    assert clean_directory(value) == expected


def test_real_shaped_fixtures():
    """The bia-integrator fixtures modelled on real API answers
    (docs/empiar.md §2.1) all parse."""
    names = [n for n in os.listdir(REFERENCE) if n.startswith("bia-integrator_override_")] \
        if os.path.isdir(REFERENCE) else []
    if not names:
        pytest.skip(f"reference fixtures not present at {REFERENCE}")
    for name in names:
        with open(os.path.join(REFERENCE, name), "rb") as fh:
            key, record = unwrap(fh.read())
        entry = parse_entry(key, record)
        assert entry.accession == key and entry.title
        assert entry.imagesets, name
        for imageset in entry.imagesets:
            assert not imageset.directory.startswith("/")


def test_pattern_fixture_values():
    path = os.path.join(REFERENCE, "bia-integrator_override_EMPIAR-IMAGEPATTERNTEST.json")
    if not os.path.exists(path):
        pytest.skip(f"reference fixture not present: {path}")
    with open(path) as fh:
        key, record = unwrap(json.load(fh))
    entry = parse_entry(key, record)
    assert entry.experiment_type == "FIB-SEM" and entry.dataset_size == "6.7 GB"
    assert entry.imagesets[0].directory == "data/HeLa" and entry.imagesets[0].num_images == 46
    assert entry.grants[0].code == "220526/Z/20/Z"
