"""Metadata out: lambda-ber-schema records and EMPIAR deposition JSON.

The lambda-ber schema (no licence) and the deposition schema are read from
../shared/reference at test time, never copied; tests needing them skip
with the reason when that tree is absent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from empiarfs.cli import main
from empiarfs.errors import InvalidInput
from empiarfs.export import tags
from empiarfs.export.deposition import (
    IncompleteDeposition,
    deposition_from_lambda_ber,
    entry_to_deposition,
    split_author_name,
)
from empiarfs.export.lambda_ber import dump, entry_to_lambda_ber, load
from empiarfs.model import FileInfo
from empiarfs.remote import codes
from empiarfs.remote.metadata import parse_entry, unwrap

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
LAMBDA_SCHEMA = REFERENCE / "lambda-ber" / "lambda_ber_schema.yaml"
DEPOSITION_SCHEMA = REFERENCE / "empiar" / "empiar_deposition.schema.json"
WORKING_EXAMPLE = REFERENCE / "empiar" / "empiar_depositor_working_example.json"
REAL_EXAMPLES = sorted((REFERENCE / "empiar").glob("bia-integrator_override_*.json"))
NO_SHARED = f"{REFERENCE} is absent (shared reference tree not mounted)"

# An API-shaped record with everything deposition needs (written for this
# test, modelled on the API fields documented in docs/empiar.md §2.1).
FULL_ENTRY = {
    "EMPIAR-99001": {
        "title": "Cryo-EM of a test complex in two imagesets",
        "status": "REL",
        "experiment_type": "EMDB",
        "scale": "molecule",
        "entry_doi": "10.6019/EMPIAR-99001",
        "dataset_size": "1.2 TB",
        "cross_references": [{"name": "EMD-12602"}],
        "empiar_references": [{"name": "EMPIAR-10002"}],
        "authors": [{"author": {"name": "Lancey C", "author_orcid": "0000-0002-1825-0097"}},
                    {"author": {"name": "van der Berg J-P", "author_orcid": None}}],
        "corresponding_author": {"author": {
            "name": "Lancey C", "first_name": "Claudia", "last_name": "Lancey",
            "organization": "Example Institute", "email": "c.lancey@example.org",
            "country": "United Kingdom", "town_or_city": "Cambridge",
            "author_orcid": "0000-0002-1825-0097"}},
        "principal_investigator": [{
            "name": "Berg J", "first_name": "Jan", "last_name": "Berg",
            "organization": "Example University", "email": "j.berg@example.org",
            "country": "NL"}],
        "citation": [{
            "authors": [{"author": {"name": "Lancey C"}}, {"author": {"name": "Berg J"}}],
            "published": True, "j_or_nj_citation": True,
            "title": "Structure of a test complex", "journal": "Nature Communications",
            "year": "2021", "volume": "12", "first_page": "6179", "doi": "10.1038/s41467-021-26251-6",
            "pubmedid": "34667155"}],
        "imagesets": [
            {"name": "Multiframe movies", "directory": "/data/movies",
             "category": "micrographs - multiframe", "header_format": "TIFF",
             "data_format": "TIFF", "num_images_or_tilt_series": 3889, "frames_per_image": 45,
             "voxel_type": "UNSIGNED BYTE", "pixel_width": 0.543, "pixel_height": 0.543,
             "image_width": "11520", "image_height": "8184",
             "micrographs_file_pattern": "data/movies/*.tiff", "details": "Gain reference included."},
            {"name": "Particle stacks", "directory": "data/particles",
             "category": "picked particles - single frame - processed", "header_format": "IMAGIC",
             "data_format": "IMAGIC", "num_images_or_tilt_series": 250000, "frames_per_image": 1,
             "voxel_type": "32 BIT FLOAT", "pixel_width": 1.086, "pixel_height": 1.1},
            {"name": "Gain references", "directory": "data/gain",
             "category": "gain references", "header_format": "DM4", "data_format": "DM4",
             "num_images_or_tilt_series": 1, "frames_per_image": 1,
             "voxel_type": "16 BIT FLOAT", "pixel_width": None, "pixel_height": None},
        ],
    }
}

PEOPLE = {  # overrides completing the anonymised real examples
    "authors": [{"name": "Test T"}],
    "corresponding_author": {"first_name": "Test", "last_name": "Person",
                             "organization": "EMBL-EBI", "email": "test@example.org",
                             "country": "United Kingdom"},
    "principal_investigator": [{"first_name": "Test", "last_name": "Person",
                                "organization": "EMBL-EBI", "email": "pi@example.org",
                                "country": "GB"}],
    "citation": [{"title": "Unpublished", "authors": [{"name": "Test T"}],
                  "published": False, "j_or_nj_citation": True}],
}


def _entry(payload):
    return parse_entry(*unwrap(payload))


def _real(path):
    with open(path, encoding="utf-8") as handle:
        return _entry(json.load(handle))


@pytest.fixture(scope="module")
def validator():
    if not LAMBDA_SCHEMA.exists():
        pytest.skip(f"lambda-ber schema snapshot: {NO_SHARED}")
    from support.linkml_check import Validator, load_schema
    return Validator(load_schema(LAMBDA_SCHEMA))


@pytest.fixture(scope="module")
def deposition_validator():
    if not DEPOSITION_SCHEMA.exists():
        pytest.skip(f"deposition schema: {NO_SHARED}")
    import jsonschema
    with open(DEPOSITION_SCHEMA, encoding="utf-8") as handle:
        schema = json.load(handle)
    # Its "$schema" is the unversioned "http://json-schema.org/schema#";
    # it uses "definitions" and draft-4..7 keywords only, so Draft 7.
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _schema_errors(validator, doc):
    return sorted(f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc))


@pytest.fixture(scope="module")
def archive_root(request, tmp_path_factory):
    """The shared sample archive when conftest provides it, else our own
    small one from the same generator."""
    try:
        return Path(request.getfixturevalue("sample_root"))
    except pytest.FixtureLookupError:
        from empiarfs.archive_server.sample import make_sample
        root = tmp_path_factory.mktemp("export-sample")
        make_sample(root, many_files=5)
        return root


# --- lambda-ber export --------------------------------------------------

@pytest.mark.skipif(not REAL_EXAMPLES, reason=f"real-shaped examples: {NO_SHARED}")
@pytest.mark.parametrize("path", REAL_EXAMPLES, ids=lambda p: p.stem.rsplit("_", 1)[-1])
def test_real_examples_export_valid_lambda_ber(path, validator):
    entry = _real(path)
    record = entry_to_lambda_ber(entry)
    assert validator.validate(record) == []
    assert record["id"] == f"https://doi.org/10.6019/{entry.accession}"
    assert len(record["experiment_runs"]) == len(entry.imagesets)
    assert [r["title"] for r in record["experiment_runs"]] == [s.name for s in entry.imagesets]
    assert len(record["study_experiment_associations"]) == len(entry.imagesets)


def test_sample_entries_export_valid_lambda_ber(archive_root, validator):
    paths = sorted((archive_root / "api").glob("EMPIAR-*.json"))
    assert paths, f"no entries under {archive_root}/api"
    for path in paths:
        entry = _real(path)
        assert validator.validate(entry_to_lambda_ber(entry)) == [], path.name


def test_full_entry_export_shape(validator):
    record = entry_to_lambda_ber(_entry(FULL_ENTRY))
    assert validator.validate(record) == []
    movies, particles, gain = record["experiment_runs"]
    assert movies["technique"] == "cryo_em"
    assert movies["number_of_images"] == {"numeric_value": 3889.0, "unit": "movies"}
    assert movies["frames_per_movie"] == {"numeric_value": 45.0, "unit": "frames"}
    assert movies["calibrated_pixel_size"] == {"numeric_value": 0.543, "unit": "Å"}
    assert movies["raw_data_location"] == \
        "https://ftp.ebi.ac.uk/empiar/world_availability/99001/data/movies"
    # Width and height differ: no single calibrated size, x and y instead.
    assert "calibrated_pixel_size" not in particles
    assert particles["pixel_size_y"] == {"numeric_value": 1.1, "unit": "Å"}
    assert "frames_per_movie" not in particles
    # TIFF maps to FileFormatEnum; IMAGIC and DM4 have no value -> no DataFile.
    assert [f["file_format"] for f in record["data_files"]] == ["tiff"]
    assert record["data_files"][0]["data_type"] == "movie"
    assert record["images"][0]["dimensions_x"] == {"numeric_value": 11520.0, "unit": "pixels"}
    assert "EMD-12602" in record["keywords"]
    assert "empiar:imagesets[1].voxel_type=32 BIT FLOAT" in record["keywords"]


def test_technique_follows_experiment_type_and_categories(validator):
    data = copy.deepcopy(FULL_ENTRY)
    inner = data["EMPIAR-99001"]
    inner["imagesets"][1]["category"] = "tilt series"
    assert {r["technique"] for r in entry_to_lambda_ber(_entry(data))["experiment_runs"]} \
        == {"cryo_et"}
    inner["experiment_type"] = "FIB-SEM"
    assert {r["technique"] for r in entry_to_lambda_ber(_entry(data))["experiment_runs"]} \
        == {"electron_microscopy"}
    inner["experiment_type"] = "SXT"
    assert {r["technique"] for r in entry_to_lambda_ber(_entry(data))["experiment_runs"]} \
        == {"xray_tomography"}
    inner["experiment_type"] = "MicroED"
    record = entry_to_lambda_ber(_entry(data))
    assert record["experiment_runs"][0]["experimental_method"] == "electron_diffraction"
    assert validator.validate(record) == []


def test_listed_files_become_data_files(validator):
    entry = _entry(FULL_ENTRY)
    files = [
        FileInfo("a b.tiff.bz2", "data/movies/a b.tiff.bz2", False, 1234, True, url=""),
        FileInfo("c.tiff", "data/movies/c.tiff", False, 2000, False),
        FileInfo("x.mdoc", "data/movies/x.mdoc", False, 10, True),
        FileInfo("gain.dm4", "data/gain/gain.dm4", False, 10, True),   # no enum value
        FileInfo("sub", "data/movies/sub", True),
        FileInfo("README.md", "README.md", False, 5, True),
    ]
    record = entry_to_lambda_ber(entry, files=files, data_url="http://127.0.0.1:1/wa/")
    assert validator.validate(record) == []
    by_path = {f["file_path"]: f for f in record["data_files"]}
    assert sorted(by_path) == ["README.md", "data/movies/a b.tiff.bz2", "data/movies/c.tiff",
                               "data/movies/x.mdoc"]
    bz2 = by_path["data/movies/a b.tiff.bz2"]
    assert bz2["file_format"] == "tiff" and "bzip2" in bz2["description"]
    assert bz2["file_size_bytes"] == {"numeric_value": 1234.0, "unit": "bytes"}
    assert bz2["storage_uri"] == "http://127.0.0.1:1/wa/99001/data/movies/a%20b.tiff.bz2"
    assert bz2["data_type"] == "movie"
    assert bz2["related_entity"].endswith("#imageset-0")
    assert "file_size_bytes" not in by_path["data/movies/c.tiff"]      # size was a hint
    assert by_path["data/movies/x.mdoc"]["data_type"] == "metadata"
    assert "related_entity" not in by_path["README.md"]


def test_validator_catches_broken_records(validator):
    record = entry_to_lambda_ber(_entry(FULL_ENTRY))
    broken = copy.deepcopy(record)
    broken["empiar_category"] = "x"                                   # closed Dataset
    del broken["experiment_runs"][0]["technique"]                     # required
    broken["experiment_runs"][1]["technique"] = "volume_em"           # closed enum
    broken["experiment_runs"][0]["number_of_images"] = {"numeric_value": 3}  # unit required
    broken["experiment_runs"][0]["frames_per_movie"] = 45             # QuantityValue shape
    broken["data_files"][0]["metadata"] = {"a": 1}                    # seed doc's mistake
    broken["images"][0]["frames"] = 40                                # Movie slot in Image list
    broken["images"][0]["id"] = "not an id"                           # uriorcurie
    broken["keywords"] = "one"                                        # multivalued
    broken["study_experiment_associations"][0]["experiment_id"] = "https://x.org/none"
    broken["data_files"][0]["file_size_bytes"] = {"numeric_value": "12", "unit": "bytes"}
    errors = validator.validate(broken)
    expected = [
        "$.empiar_category: Dataset has no slot",
        "$.experiment_runs[0].technique: required",
        "$.experiment_runs[1].technique: 'volume_em' is not a permissible value",
        "$.experiment_runs[0].number_of_images.unit: required",
        "$.experiment_runs[0].frames_per_movie: expected a QuantityValue object",
        "$.data_files[0].metadata: DataFile has no slot",
        "$.images[0].frames: Image has no slot",
        "$.images[0].id: 'not an id' is not a valid uriorcurie",
        "$.keywords: multivalued slot needs a list",
        "$.study_experiment_associations[0].experiment_id: reference 'https://x.org/none'",
        "$.data_files[0].file_size_bytes.numeric_value: '12' is not a valid float",
    ]
    for prefix in expected:
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert len(errors) == len(expected), errors


def test_validator_accepts_upstream_examples(validator):
    # Guards against a validator so strict it would reject the schema's own examples.
    examples = sorted((REFERENCE / "lambda-ber" / "examples").glob("Dataset-*.yaml"))
    assert examples
    for path in examples:
        with open(path, encoding="utf-8") as handle:
            assert validator.validate(yaml.safe_load(handle)) == [], path.name


def test_dump_is_deterministic_and_loadable():
    record = entry_to_lambda_ber(_entry(FULL_ENTRY))
    text = dump(record, "yaml")
    assert text == dump(entry_to_lambda_ber(_entry(FULL_ENTRY)), "yaml")
    assert load(text) == record
    assert json.loads(dump(record, "json")) == record
    assert list(json.loads(dump(record, "json"))) == list(record)
    with pytest.raises(InvalidInput):
        dump(record, "xml")
    with pytest.raises(InvalidInput):
        load("- just a list")


def test_tags_round_trip():
    words = [tags.make("authors[1].name", "Smith\nJ"), tags.make("scale", None),
             tags.make("citation[0].published", True), "EMD-1", "empiar:bad path=x"]
    assert words[1] is None
    parsed = tags.parse(words)
    assert parsed == {"authors": [None, {"name": "Smith J"}],
                      "citation": [{"published": "true"}]}


# --- deposition ---------------------------------------------------------

def _kept(entry, doc):
    """The facts the round trip must keep, from both sides."""
    from_entry = {
        "title": entry.title,
        "authors": [split_author_name(a.name) for a in entry.authors],
        "imagesets": [(s.name, s.directory, codes.deposition_code("category", s.category),
                       codes.deposition_code("header_format", s.header_format),
                       codes.deposition_code("data_format", s.data_format),
                       codes.deposition_code("voxel_type", s.voxel_type),
                       s.num_images, s.frames_per_image, s.pixel_width, s.pixel_height)
                      for s in entry.imagesets],
    }
    from_doc = {
        "title": doc["title"],
        "authors": [tuple(a["name"][2:-2].split("', '")) for a in doc["authors"]],
        "imagesets": [(s["name"], s["directory"], s["category"], s["header_format"],
                       s["data_format"], s["voxel_type"], s["num_images_or_tilt_series"],
                       s["frames_per_image"], s.get("pixel_width"), s.get("pixel_height"))
                      for s in doc["imagesets"]],
    }
    return from_entry, from_doc


def test_full_entry_round_trip_validates(deposition_validator):
    entry = _entry(FULL_ENTRY)
    doc = entry_to_deposition(entry)
    assert _schema_errors(deposition_validator, doc) == []
    from_entry, from_doc = _kept(entry, doc)
    assert from_doc == from_entry
    assert doc["experiment_type"] == 3 and doc["scale"] == "1" and doc["release_date"] == "RE"
    assert doc["authors"][1] == {"name": "('van der Berg', 'J-P')", "order_id": 1,
                                 "author_orcid": None}
    assert doc["corresponding_author"]["country"] == "GB"
    assert doc["cross_references"] == [{"name": "EMD-12602"}]
    assert doc["citation"][0]["year"] == 2021 and doc["citation"][0]["published"] is True
    assert doc["imagesets"][2]["category"] == "('OT', 'gain references')"
    assert doc["imagesets"][2]["voxel_type"] == "('OT', '16 BIT FLOAT')"
    assert doc["imagesets"][0]["image_width"] == 11520


def test_round_trip_through_yaml_text(deposition_validator):
    record = load(dump(entry_to_lambda_ber(_entry(FULL_ENTRY)), "yaml"))
    assert deposition_from_lambda_ber(record) == entry_to_deposition(_entry(FULL_ENTRY))


@pytest.mark.skipif(not REAL_EXAMPLES, reason=f"real-shaped examples: {NO_SHARED}")
@pytest.mark.parametrize("path", REAL_EXAMPLES, ids=lambda p: p.stem.rsplit("_", 1)[-1])
def test_real_examples_list_missing_then_overrides_fix(path, deposition_validator):
    entry = _real(path)
    record = entry_to_lambda_ber(entry)
    with pytest.raises(IncompleteDeposition) as caught:
        deposition_from_lambda_ber(record)
    # Anonymised examples: one author without initials, no person details,
    # no PI, no citation. Exactly those, and nothing else.
    author_name = entry.authors[0].name
    assert caught.value.paths == ["authors[0].name", "corresponding_author",
                                  "principal_investigator", "citation"]
    message = str(caught.value)
    assert repr(author_name) in message and "('Surname', 'INITIALS')" in message
    assert "first_name, last_name, organization, email and country" in message
    assert isinstance(caught.value, InvalidInput)

    doc = deposition_from_lambda_ber(record, overrides=PEOPLE)
    assert _schema_errors(deposition_validator, doc) == []
    from_entry, from_doc = _kept(entry, doc)
    assert from_doc["imagesets"] == from_entry["imagesets"]
    assert from_doc["title"] == from_entry["title"]
    assert [(a["name"], a["order_id"]) for a in doc["authors"]] == [("('Test', 'T')", 0)]
    assert doc["authors"][0]["author_orcid"] == entry.authors[0].orcid   # kept from the entry
    assert doc["experiment_type"] == codes.experiment_type_code(entry.experiment_type)
    assert doc["scale"] == str(codes.scale_code(entry.scale))


def test_invalid_values_are_listed_with_paths():
    record = entry_to_lambda_ber(_entry(FULL_ENTRY))
    bad = {"title": "short", "experiment_type": 10, "release_date": "SOON",
           "corresponding_author": {"email": "nobody", "country": "Atlantis"},
           "imagesets": [{"voxel_type": "('T12', '')"}, {"num_images_or_tilt_series": None}],
           "citation": [{"doi": "doi:x", "year": 21}]}
    with pytest.raises(IncompleteDeposition) as caught:
        deposition_from_lambda_ber(record, overrides=bad)
    assert caught.value.paths == [
        "title", "release_date", "experiment_type", "corresponding_author.email",
        "corresponding_author.country", "citation[0].year", "citation[0].doi",
        "imagesets[0].voxel_type", "imagesets[1].num_images_or_tilt_series"]


def test_generic_dataset_without_tags_uses_real_slots():
    record = entry_to_lambda_ber(_entry(FULL_ENTRY))
    record["keywords"] = [k for k in record["keywords"] if not tags.is_tag(k)]
    with pytest.raises(IncompleteDeposition) as caught:
        deposition_from_lambda_ber(record)
    paths = caught.value.paths
    # Movies: category, format and directory recovered from real slots.
    assert not any(p.startswith("imagesets[0].") and not p.endswith("voxel_type") for p in paths)
    assert "imagesets[0].voxel_type" in paths and "authors" in paths
    assert "experiment_type" not in paths            # cryo_em -> 3


def test_overrides_accept_labels_and_bare_codes(deposition_validator):
    data = copy.deepcopy(FULL_ENTRY)
    del data["EMPIAR-99001"]["imagesets"][0]["voxel_type"]
    record = entry_to_lambda_ber(_entry(data))
    with pytest.raises(IncompleteDeposition) as caught:
        deposition_from_lambda_ber(record)
    assert caught.value.paths == ["imagesets[0].voxel_type"]
    doc = deposition_from_lambda_ber(record, overrides={
        "experiment_type": "EMDB", "scale": 2,
        "imagesets": [{"voxel_type": "unsigned 16 bit integer", "category": "T2"}]})
    assert doc["imagesets"][0]["voxel_type"] == "('T3', '')"
    assert doc["imagesets"][0]["category"] == "('T2', '')"
    assert doc["scale"] == "2"
    assert _schema_errors(deposition_validator, doc) == []


def test_author_name_splitting():
    assert split_author_name("Lancey C") == ("Lancey", "C")
    assert split_author_name("Smith, J.W.") == ("Smith", "JW")
    assert split_author_name("van der Berg J-P") == ("van der Berg", "J-P")
    assert split_author_name("Test") is None
    assert split_author_name("Test Author") is None


@pytest.mark.skipif(not WORKING_EXAMPLE.exists(), reason=f"working example: {NO_SHARED}")
def test_working_example_codes_round_trip():
    with open(WORKING_EXAMPLE, encoding="utf-8") as handle:
        example = json.load(handle)
    for imageset in example["imagesets"]:
        for table in ("category", "header_format", "data_format", "voxel_type"):
            value = imageset[table]
            label = codes.deposition_label(table, value)
            assert label, (table, value)
            assert codes.deposition_code(table, label) == value
    kind = example["experiment_type"]
    assert codes.experiment_type_code(codes.EXPERIMENT_TYPE[kind]) == kind
    assert str(codes.scale_code(codes.SCALE[int(example["scale"])])) == example["scale"]
    assert example["release_date"] in codes.RELEASE_DATE
    for author in example["authors"]:
        surname, initials = author["name"][2:-2].split("', '")
        assert split_author_name(f"{surname} {initials}") == (surname, initials)
    assert codes.country_code(example["corresponding_author"]["country"]) == "US"


def test_strict_code_parsing():
    assert codes.parse_tuple_string("('T2', '')") == ("T2", "")
    assert codes.parse_tuple_string("('OT', 'free text')") == ("OT", "free text")
    assert codes.parse_tuple_string("('T2', '')junk") is None       # official regex lets it pass
    assert codes.parse_tuple_string("junk('OT', 'x')") is None
    assert codes.parse_tuple_string("('T15', '')") is None
    assert codes.deposition_code("data_format", "('T8', '')") == "('T8', '')"
    assert codes.deposition_label("data_format", "('T8', '')") == "BIG DATA VIEWER HDF5"
    assert codes.deposition_code("header_format", "hdf5") == "('OT', 'HDF5')"


# --- CLI ------------------------------------------------------------------

def test_cli_deposition(tmp_path, deposition_validator):
    runner = CliRunner()
    source = tmp_path / "full.yaml"
    source.write_text(dump(entry_to_lambda_ber(_entry(FULL_ENTRY)), "yaml"), encoding="utf-8")
    out = tmp_path / "deposition.json"
    result = runner.invoke(main, ["deposition", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert _schema_errors(deposition_validator, doc) == []

    partial = copy.deepcopy(FULL_ENTRY)
    inner = partial["EMPIAR-99001"]
    inner["citation"] = []
    inner["corresponding_author"] = None
    source_json = tmp_path / "partial.json"
    source_json.write_text(dump(entry_to_lambda_ber(_entry(partial)), "json"), encoding="utf-8")
    result = runner.invoke(main, ["deposition", str(source_json)])
    assert result.exit_code == 1
    assert "corresponding_author: missing" in result.output
    assert "citation: missing" in result.output
    assert "Traceback" not in result.output

    overrides = tmp_path / "people.yaml"
    overrides.write_text(yaml.safe_dump({k: PEOPLE[k] for k in
                                         ("corresponding_author", "citation")}), encoding="utf-8")
    result = runner.invoke(main, ["deposition", str(source_json), "--overrides", str(overrides)])
    assert result.exit_code == 0, result.output
    assert _schema_errors(deposition_validator, json.loads(result.output)) == []


def test_cli_deposition_rejects_non_mapping(tmp_path):
    source = tmp_path / "list.yaml"
    source.write_text("- a\n- b\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["deposition", str(source)])
    assert result.exit_code == 1
    assert "must be a mapping" in result.output


def test_cli_export_from_archive_server(archive_root, validator, tmp_path):
    from empiarfs.archive_server import ArchiveServer
    accession = sorted((archive_root / "api").glob("EMPIAR-*.json"))[0].stem
    with ArchiveServer(archive_root) as server:
        urls = ["--api-url", server.api_url, "--data-url", server.data_url, "--ftp-url", ""]
        result = CliRunner().invoke(main, ["export", accession, "--to", "lambda-ber", *urls])
        assert result.exit_code == 0, result.output
        record = yaml.safe_load(result.output)
        assert validator.validate(record) == []
        assert record["id"].endswith(accession)
        assert all(r["raw_data_location"].startswith(server.data_url)
                   for r in record["experiment_runs"] if "raw_data_location" in r)

        out = tmp_path / "files.json"
        result = CliRunner().invoke(main, ["export", accession, "--with-files", "--format",
                                           "json", "-o", str(out), *urls])
        assert result.exit_code == 0, result.output
        record = json.loads(out.read_text(encoding="utf-8"))
        assert validator.validate(record) == []
        listed = [f for f in record.get("data_files", []) if "#file/" in f["id"]]
        assert listed, "no per-file DataFiles from the listing"
        assert all(f["storage_uri"].startswith(server.data_url) for f in listed)

        result = CliRunner().invoke(main, ["export", "EMPIAR-1", *urls])
        assert result.exit_code == 1
        assert "not found" in result.output
