"""``Archive`` against the project's archive server (HTTP + FTP) and the
Apache twin, compared with the sample's manifest."""

import json
import logging
import os
import posixpath
import socket

import pytest

from empiarfs.archive_server import ArchiveServer
from empiarfs.errors import BadResponse, InvalidInput, NotFound
from empiarfs.remote.archive import Archive, compress_spec


def expected_tree(manifest):
    """``{(acc, dir): {name: (is_dir, size, mtime)}}`` from the manifest."""
    tree = {}
    for entry in manifest["accessions"]:
        tree[(entry, "")] = {}
    for d in manifest["dirs"]:
        tree.setdefault((d["entry"], d["path"]), {})
    for f in manifest["files"]:
        parts = f["path"].split("/")
        for depth in range(len(parts) - 1):  # every ancestor is a directory
            parent, name = "/".join(parts[:depth]), parts[depth]
            tree.setdefault((f["entry"], parent), {})[name] = (True, None, None)
            tree.setdefault((f["entry"], "/".join(parts[: depth + 1])), {})
        parent = "/".join(parts[:-1])
        tree.setdefault((f["entry"], parent), {})[parts[-1]] = (False, f["size"], f["mtime"])
    for (entry, path) in list(tree):
        if path:
            parent, name = posixpath.split(path)
            tree[(entry, parent)].setdefault(name, (True, None, None))
    return tree


@pytest.fixture(params=["server+ftp", "server+head", "apache+head"])
def backend(request, archive_server, settings_for, tmp_path):
    """An Archive on each data backend; the API always from archive_server."""
    if request.param == "apache+head":
        twin = request.getfixturevalue("apache_twin")
        settings = settings_for(archive_server, tmp_path, data_url=twin.data_url, ftp_url="")
    elif request.param == "server+head":
        settings = settings_for(archive_server, tmp_path, ftp_url="")
    else:
        settings = settings_for(archive_server, tmp_path)
        assert settings.ftp_url.startswith("ftp://127.0.0.1:")
    with Archive(settings) as archive:
        archive.kind = request.param
        yield archive


@pytest.fixture
def archive(archive_server, settings_for, tmp_path):
    with Archive(settings_for(archive_server, tmp_path)) as arch:
        yield arch


def stored(sample_root, acc):
    with open(os.path.join(sample_root, "api", f"{acc}.json"), encoding="utf-8") as fh:
        return json.load(fh)[acc]


# -- metadata ------------------------------------------------------------------


@pytest.mark.parametrize("form", [10002, "10002", "EMPIAR-10002", "empiar-10002", "EMPIAR_010002"])
def test_entry_id_forms(archive, sample_root, form):
    entry = archive.entry(form)
    record = stored(sample_root, "EMPIAR-10002")
    assert entry.accession == "EMPIAR-10002" and entry.title == record["title"]
    assert entry.imagesets and entry.imagesets[0].directory == "data"
    assert archive.entry_json(form) == record


def test_unknown_entry_names_accession(archive):
    with pytest.raises(NotFound, match="EMPIAR-99999 not found in the archive") as info:
        archive.entry("99999")
    assert info.value.accession == "EMPIAR-99999"
    with pytest.raises(InvalidInput):
        archive.entry("not-an-id")


def test_entries_batch(archive, manifest, faults, archive_server):
    got = archive.entries("10002, 10934-10943, 99999")
    assert list(got) == ["EMPIAR-10002", "EMPIAR-10934", "EMPIAR-10943"]
    for acc, entry in got.items():
        assert entry == archive.entry(acc)
    archive_server.stats.reset()
    everything = archive.entries("10000-11600")  # 1601 ids: four POSTs of <= 500
    assert list(everything) == manifest["accessions"]
    assert archive_server.stats.get("requests.api_batch") == 4


def test_entries_batch_retried_after_503(archive, faults):
    faults.error_burst(503, count=1)
    assert list(archive.entries(["EMPIAR-10002"])) == ["EMPIAR-10002"]


def test_emdb_entries(archive, manifest):
    with_refs = [(acc, archive.entry(acc).emdb_refs) for acc in manifest["accessions"]]
    acc, refs = next((a, r) for a, r in with_refs if r)
    related = archive.emdb_entries(refs[0].lower().replace("-", "_"))
    assert acc in [e.accession for e in related]
    assert all(refs[0] in e.emdb_refs for e in related)
    assert archive.emdb_entries("EMD-99999") == []


def test_latest_citations(archive, sample_root):
    with open(os.path.join(sample_root, "api", "latest_citations.json"), encoding="utf-8") as fh:
        assert archive.latest_citations() == json.load(fh)


def test_accessions_and_header(backend, manifest, sample_root):
    assert backend.accessions() == manifest["accessions"]
    with open(os.path.join(sample_root, "world_availability", "10002", "10002.xml"), "rb") as fh:
        assert backend.header_xml("EMPIAR-10002") == fh.read()
    with pytest.raises(NotFound, match="EMPIAR-99999"):
        backend.header_xml(99999)


def test_malformed_json_is_bad_response(tmp_path, settings_for):
    root = tmp_path / "archive"
    (root / "world_availability" / "5").mkdir(parents=True)
    (root / "api").mkdir()
    (root / "api" / "EMPIAR-5.json").write_text('{"EMPIAR-5": {"title": ')
    (root / "api" / "EMPIAR-6.json").write_text('["not", "an", "object"]')
    with ArchiveServer(root) as server, Archive(settings_for(server, tmp_path)) as archive:
        with pytest.raises(BadResponse, match="valid JSON"):
            archive.entry("EMPIAR-5")
        with pytest.raises(BadResponse, match="not an object"):
            archive.entry("EMPIAR-6")


# -- the tree ------------------------------------------------------------------


def test_listdir_every_directory_matches_manifest(backend, manifest):
    tree = expected_tree(manifest)
    exact_from_listing = backend.kind == "server+ftp"
    for (acc, rel), children in sorted(tree.items()):
        infos = backend.listdir(acc, rel)
        assert [i.name for i in infos] == sorted(children), (acc, rel)
        if not exact_from_listing:
            assert all(not i.size_exact for i in infos if not i.is_dir)
            infos = backend.resolve_sizes(infos)
        for info in infos:
            is_dir, size, mtime = children[info.name]
            assert info.is_dir == is_dir, (acc, rel, info.name)
            assert info.path == posixpath.join(rel, info.name) if rel else info.name
            assert info.url.startswith(backend.data_url + "/" + acc.split("-")[1] + "/")
            if is_dir:
                assert info.url.endswith("/") and info.size == 0
            else:
                assert info.size_exact and info.size == size, (acc, info.path)
                assert info.mtime == pytest.approx(mtime, abs=1), (acc, info.path)


def test_backends_give_identical_listings(archive_server, settings_for, tmp_path, request):
    """FTP sizes, HEAD sizes and the Apache twin's listing agree exactly."""
    twin = request.getfixturevalue("apache_twin")
    variants = [settings_for(archive_server, tmp_path),
                settings_for(archive_server, tmp_path, ftp_url=""),
                settings_for(archive_server, tmp_path, data_url=twin.data_url, ftp_url="")]
    results = []
    for settings in variants:
        with Archive(settings) as archive:
            infos = archive.resolve_sizes(archive.listdir("EMPIAR-11419", "data/HeLa/Raw SEM images"))
            results.append([(i.name, i.path, i.is_dir, i.size, i.size_exact, int(i.mtime)) for i in infos])
    assert results[0] == results[1] == results[2]
    assert any("," in name for name, *_ in results[0])


def test_resolve_sizes_is_memoised(archive_server, settings_for, tmp_path, faults):
    with Archive(settings_for(archive_server, tmp_path, ftp_url="")) as archive:
        infos = archive.listdir("EMPIAR-10002", "data")
        first = archive.resolve_sizes(infos)
        heads = archive_server.stats.get("requests")
        assert archive.resolve_sizes(infos) == first
        assert archive_server.stats.get("requests") == heads
        assert all(i.etag for i in first if not i.is_dir)


def test_unreachable_ftp_falls_back_to_head(archive_server, settings_for, tmp_path, manifest, caplog):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = settings_for(archive_server, tmp_path, ftp_url=f"ftp://127.0.0.1:{port}/empiar/world_availability")
    with caplog.at_level(logging.INFO), Archive(settings) as archive:
        infos = archive.listdir("EMPIAR-10002", "data")
        assert "falling back to HTTP HEAD" in caplog.text
        assert not any(i.size_exact for i in infos)
        resolved = {i.name: i.size for i in archive.resolve_sizes(infos)}
        archive.listdir("EMPIAR-10934")  # FTP not retried during its pause
    sizes = {f["path"].split("/")[-1]: f["size"] for f in manifest["files"]
             if f["entry"] == "EMPIAR-10002" and f["path"].startswith("data/") and f["path"].count("/") == 1}
    assert resolved == sizes
    assert caplog.text.count("cannot connect to ftp://") == 1


def test_listing_backend_that_omits_a_file(archive, faults, manifest):
    """A load-balanced backend may leave a file out of its listing; FTP's
    names are merged in."""
    faults.omit_from_listing = {"101_movie_gc.mrcs"}
    names = [i.name for i in archive.listdir("EMPIAR-10002", "data")]
    assert "101_movie_gc.mrcs" in names
    info = next(i for i in archive.listdir("EMPIAR-10002", "data") if i.name == "101_movie_gc.mrcs")
    assert info.size_exact and info.url.endswith("/10002/data/101_movie_gc.mrcs")


def test_listdir_errors(archive):
    with pytest.raises(NotFound, match="EMPIAR-10002/data/nope"):
        archive.listdir("EMPIAR-10002", "data/nope")
    with pytest.raises(NotFound, match="EMPIAR-99999"):
        archive.listdir("EMPIAR-99999")
    for bad in ("../10934", "/data", "data/../../x", "data\x00"):
        with pytest.raises(InvalidInput):
            archive.listdir("EMPIAR-10002", bad)


def test_stat(backend, manifest):
    f = next(f for f in manifest["files"] if " " in f["path"] and "," in f["path"])
    info = backend.stat(f["entry"], f["path"])
    assert (info.size, info.size_exact, info.is_dir) == (f["size"], True, False)
    assert info.mtime == pytest.approx(f["mtime"], abs=1) and info.etag
    folder = backend.stat(f["entry"], posixpath.dirname(f["path"]))
    assert folder.is_dir and folder.url.endswith("/")
    with pytest.raises(NotFound, match=f"{f['entry']}/data/missing.bin"):
        backend.stat(f["entry"], "data/missing.bin")


def test_server_without_range_support(archive, faults, manifest):
    """Listing and stat do not depend on ranges; range reads at an offset
    are refused as BadResponse instead of returning wrong bytes."""
    faults.ignore_range = True
    f = next(f for f in manifest["files"] if f["entry"] == "EMPIAR-10002" and f["size"] > 1000)
    info = archive.stat(f["entry"], f["path"])
    assert info.size == f["size"]
    head = archive.transport.fetch_range(info.url, 0, 100, expect=info.fingerprint)
    assert len(head) == 100
    with pytest.raises(BadResponse, match="does not support ranges"):
        archive.transport.fetch_range(info.url, 100, 200)


# -- URLs and paths ----------------------------------------------------------------


def test_file_url_encoding(archive, archive_server):
    base = archive_server.data_url
    assert archive.file_url("EMPIAR-11419", "data/HeLa/Raw SEM images/SEM Image - SliceImage, overview.tif") \
        == f"{base}/11419/data/HeLa/Raw%20SEM%20images/SEM%20Image%20-%20SliceImage,%20overview.tif"
    assert archive.file_url(11419, "data/Notes #1 & 50% done?.txt") \
        == f"{base}/11419/data/Notes%20%231%20%26%2050%25%20done%3F.txt"
    assert archive.file_url("EMPIAR-10002") == f"{base}/10002"
    assert archive.file_url("EMPIAR-10002", "data/été.mrc", scheme="ftp") \
        == archive_server.ftp_url + "/10002/data/%C3%A9t%C3%A9.mrc"
    with pytest.raises(InvalidInput):
        archive.file_url("EMPIAR-10002", "x", scheme="gopher")


def test_file_url_is_fetchable(archive, manifest):
    f = next(f for f in manifest["files"] if "#" in f["path"] and "%" in f["path"])
    url = archive.file_url(f["entry"], f["path"])
    assert archive.transport.head(url).size == f["size"]


def test_ftp_url_default(tmp_path, settings_for, archive_server):
    with Archive(settings_for(archive_server, tmp_path, ftp_url="")) as archive:
        assert archive.file_url("EMPIAR-10002", "data/a b", scheme="ftp") \
            == "ftp://ftp.ebi.ac.uk/empiar/world_availability/10002/data/a%20b"


def test_compress_spec():
    assert compress_spec([10060, 10050, 10061, 10062, 10054, 10050]) == "10050,10054,10060-10062"
    assert compress_spec([]) == ""
