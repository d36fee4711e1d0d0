"""`empiarfs info`, `ls`, `search`, `index` against the project's server."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from support.archive import env_for

from empiarfs.cli import main


@pytest.fixture
def run(archive_server, tmp_path, settings_for):
    env = env_for(settings_for(archive_server, tmp_path))

    def invoke(*args, input=None):
        return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)
    return invoke


def _files(manifest, entry):
    return sorted(f["path"] for f in manifest["files"] if f["entry"] == entry)


def test_info_text_and_json(run):
    result = run("info", "10002")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "EMPIAR-10002: Cryo-EM movies of the 80S ribosome" in out
    for text in ("Wong W", "2013-06-21", "10.6019/EMPIAR-10002", "EMD-2275",
                 "Movie stacks of 80S ribosomes", "micrographs - multiframe", "1.77 Å"):
        assert text in out
    data = json.loads(run("info", "EMPIAR-10002", "--json").output)
    assert data["accession"] == "EMPIAR-10002" and data["emdb"] == ["EMD-2275"]
    assert data["imagesets"][0]["directory"] == "data"
    assert data["imagesets"][0]["frames_per_image"] == 12


def test_ls_levels_patterns_and_exact_sizes(run, manifest):
    top = run("ls", "EMPIAR-10002").output.split()
    assert top == ["10002.xml", "data/"]
    data = json.loads(run("ls", "10002", "-R", "-l", "--json").output)
    sizes = {f["path"]: f["size"] for f in manifest["files"] if f["entry"] == "EMPIAR-10002"}
    assert {d["path"]: d["size"] for d in data} == sizes
    assert all(d["size_exact"] for d in data)
    glob = run("ls", "10002", "--glob", "data/*.mrcs").output.split()
    assert glob == [p for p in _files(manifest, "EMPIAR-10002") if p.endswith(".mrcs")]
    regex = run("ls", "11419", "-R", "--regex", r"00[12]\.tif$").output.splitlines()
    assert [p.rsplit("/", 1)[-1] for p in regex] == ["SEM Image - SliceImage - 001.tif",
                                                       "SEM Image - SliceImage - 002.tif"]
    long_ = run("ls", "10002/data", "-l").output
    assert "1573888" in long_ and "files," in long_


def test_ls_urls_are_ready_for_get(run, archive_server, manifest):
    lines = run("ls", "11419", "-R", "--urls", "https").output.splitlines()
    assert len(lines) == len(_files(manifest, "EMPIAR-11419"))
    assert all(line.startswith(archive_server.data_url + "/11419/") for line in lines)
    assert any("%20" in line for line in lines)
    ftp = run("ls", "11419", "-R", "--glob", "*.txt", "--urls", "ftp").output.splitlines()
    assert ftp and all(line.startswith(archive_server.ftp_url) for line in ftp)


def test_bad_input_messages(run):
    unknown = run("ls", "EMPIAR-99999")
    assert unknown.exit_code == 1 and "EMPIAR-99999" in unknown.output
    info = run("info", "99999")
    assert info.exit_code == 1 and "error" in info.output
    bad = run("ls", "10002", "--regex", "(")
    assert bad.exit_code == 1 and "bad regular expression" in bad.output
    missing = run("ls", "10002/data/nothing.mrc")
    assert missing.exit_code == 1 and "no such file" in missing.output
    assert run("ls", "not-an-accession").exit_code == 1
    assert run("ls", "10002", "--urls", "gopher").exit_code == 2


def test_index_and_search(run):
    empty = run("search", "ribosome")
    assert empty.exit_code == 1 and "index update" in empty.output
    first = json.loads(run("index", "update", "--json").output)
    assert first["added"] == 5 and first["total"] == 5
    again = json.loads(run("index", "update", "--json").output)
    assert again["requested"] == 0 and again["total"] == 5
    refresh = json.loads(run("index", "update", "--refresh", "--range", "10002-10010",
                             "--json").output)
    assert refresh["unchanged"] == 1 and refresh["absent"] == 8
    hits = json.loads(run("search", "ribosome", "--json").output)
    assert [h["accession"] for h in hits] == ["EMPIAR-10002"]
    tiff = json.loads(run("search", "--format", "TIFF", "--json").output)
    assert "EMPIAR-10002" not in {h["accession"] for h in tiff} and tiff
    fib = json.loads(run("search", "--experiment-type", "FIB-SEM", "--json").output)
    assert [h["accession"] for h in fib] == ["EMPIAR-11419"]
    emdb = json.loads(run("search", "--emdb", "EMD-2275", "--json").output)
    assert "EMPIAR-10002" in {h["accession"] for h in emdb}
    text = run("search", "wong")
    assert "EMPIAR-10002" in text.output and text.output.endswith("1 entry\n")
    assert json.loads(run("index", "info", "--json").output)["entries"] == 5
