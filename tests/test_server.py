"""The project's archive server, spoken to by plain requests/socket/ftplib
clients on loopback."""

from __future__ import annotations

import ftplib
import hashlib
import http.client
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from empiarfs.archive_server import ArchiveServer, Faults
from empiarfs.archive_server.autoindex import strfsize
from empiarfs.archive_server.sample import make_sample

T = 5  # seconds; every request has a timeout
MOVIE = "/10002/data/100_movie_gc.mrcs"
ROW_RE = re.compile(
    r'<tr><td valign="top"><img src="(/icons/[^"]+)" alt="\[([^\]]*)\]"></td>'
    r'<td><a href="([^"]+)">([^<]*)</a></td><td align="right">(\d{4}-\d\d-\d\d \d\d:\d\d)  </td>'
    r'<td align="right">(.{4})</td><td>&nbsp;</td></tr>')


def _truth(manifest, entry, path):
    return next(f for f in manifest["files"] if f["entry"] == entry and f["path"] == path)


def _local(sample_root, path):
    with open(os.path.join(sample_root, "world_availability", *path.strip("/").split("/")), "rb") as fh:
        return fh.read()


# ------------------------------------------------------------------ API

@pytest.mark.parametrize("ident", ["10002", "EMPIAR-10002", "empiar-10002", "10002/", "EMPIAR-10002/"])
def test_entry_by_every_id_form(archive_server, sample_root, ident):
    r = requests.get(f"{archive_server.api_url}/entry/{ident}", timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    with open(os.path.join(sample_root, "api", "EMPIAR-10002.json"), "rb") as fh:
        assert r.content == fh.read()
    assert list(r.json()) == ["EMPIAR-10002"]


@pytest.mark.parametrize("ident", ["99999", "EMPIAR-10003/", "nonsense"])
def test_unknown_entry_is_404_json(archive_server, ident):
    r = requests.get(f"{archive_server.api_url}/entry/{ident}", timeout=T)
    assert r.status_code == 404 and r.json() == {"detail": "Not found."}


@pytest.mark.parametrize("body", ["10002,10934,11000-11500", '"10002, 10934 , 11000-11500"', "EMPIAR-10002,10934,11419-11561"])
def test_batch_post(archive_server, body):
    r = requests.post(f"{archive_server.api_url}/entry/", data=body, timeout=T,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    got = r.json()
    assert set(got) == {"EMPIAR-10002", "EMPIAR-10934", "EMPIAR-11419", "EMPIAR-11561"} - (
        {"EMPIAR-11561"} if "11500" in body else set())
    assert got["EMPIAR-10002"]["cross_references"] == ["EMD-2275"]


def test_batch_post_on_entry_path_and_bad_spec(archive_server):
    r = requests.post(f"{archive_server.api_url}/entry/10050/", data="10943", timeout=T)
    assert list(r.json()) == ["EMPIAR-10943"]
    assert requests.post(f"{archive_server.api_url}/entry/", data="10100-10050", timeout=T).status_code == 400


def test_emdb_ref_matches_strings_and_name_objects(archive_server):
    r = requests.get(f"{archive_server.api_url}/emdb_ref/EMD-2275/", timeout=T)
    assert sorted(r.json()) == ["EMPIAR-10002", "EMPIAR-11561"]
    r = requests.get(f"{archive_server.api_url}/emdb_ref/EMD-12602", timeout=T)
    assert list(r.json()) == ["EMPIAR-10934"]
    assert requests.get(f"{archive_server.api_url}/emdb_ref/EMD-1", timeout=T).status_code == 404


def test_latest_citations(archive_server):
    for suffix in ("", "/"):
        got = requests.get(f"{archive_server.api_url}/latest_citations{suffix}", timeout=T).json()
        assert got and set(got[0]) == {"pmid", "pub_year", "author_string", "title"}


# ------------------------------------------------------------------ files

def test_head_and_get_whole_file(archive_server, manifest, sample_root):
    truth = _truth(manifest, "EMPIAR-10002", "data/100_movie_gc.mrcs")
    h = requests.head(archive_server.data_url + MOVIE, timeout=T)
    assert h.status_code == 200 and int(h.headers["Content-Length"]) == truth["size"]
    assert h.headers["Accept-Ranges"] == "bytes"
    st = os.stat(os.path.join(sample_root, "world_availability", "10002", "data", "100_movie_gc.mrcs"))
    assert h.headers["ETag"] == f'"{st.st_size:x}-{st.st_mtime_ns // 1000:x}"'
    assert h.headers["Last-Modified"].endswith(" GMT")
    g = requests.get(archive_server.data_url + MOVIE, timeout=T)
    assert hashlib.sha256(g.content).hexdigest() == truth["sha256"]


@pytest.mark.parametrize("spec,start,end", [("0-1023", 0, 1023), ("1000-", 1000, None),
                                             ("-500", -500, None), ("10-99999999", 10, None)])
def test_ranges(archive_server, sample_root, spec, start, end):
    data = _local(sample_root, MOVIE)
    size = len(data)
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": f"bytes={spec}"}, timeout=T)
    first = start % size
    last = size - 1 if end is None else end
    assert r.status_code == 206
    assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    assert r.content == data[first:last + 1]


def test_unsatisfiable_range_and_multirange(archive_server, sample_root):
    size = len(_local(sample_root, MOVIE))
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": f"bytes={size}-"}, timeout=T)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-1,5-6"}, timeout=T)
    assert r.status_code == 200 and len(r.content) == size  # documented: multi-range -> whole file


def test_if_range_and_if_none_match(archive_server):
    url = archive_server.data_url + MOVIE
    etag = requests.head(url, timeout=T).headers["ETag"]
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=T).status_code == 304
    r = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'}, timeout=T)
    assert r.status_code == 200
    r = requests.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}, timeout=T)
    assert r.status_code == 206


def test_rewritten_file_changes_etag_size_and_bytes(tmp_path):
    make_sample(tmp_path, many_files=0)
    path = tmp_path / "world_availability" / "11419" / "data" / "HeLa" / "Notes #1 & 50% done.txt"
    with ArchiveServer(tmp_path) as server:
        url = server.data_url + "/11419/data/HeLa/Notes%20%231%20&%2050%25%20done.txt"
        before = requests.head(url, timeout=T).headers
        path.write_bytes(b"replaced, and longer than before: " * 4)
        os.utime(path, (1700000000, 1700000000))
        after = requests.head(url, timeout=T).headers
        assert after["ETag"] != before["ETag"] and after["Last-Modified"] != before["Last-Modified"]
        assert int(after["Content-Length"]) == len(path.read_bytes())
        assert requests.get(url, timeout=T).content == path.read_bytes()


def test_xml_header_is_a_file(archive_server, manifest):
    r = requests.get(archive_server.data_url + "/10934/10934.xml", timeout=T)
    assert hashlib.sha256(r.content).hexdigest() == _truth(manifest, "EMPIAR-10934", "10934.xml")["sha256"]


def test_64_concurrent_range_requests(archive_server, sample_root):
    data = _local(sample_root, "/10002/data/102_movie_gc.mrcs")
    url = archive_server.data_url + "/10002/data/102_movie_gc.mrcs"
    step = len(data) // 64

    def fetch(i):
        with requests.get(url, headers={"Range": f"bytes={i * step}-{i * step + step - 1}"}, timeout=T) as r:
            return r.status_code, r.content

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(fetch, range(64)))
    for i, (status, body) in enumerate(results):
        assert status == 206 and body == data[i * step:(i + 1) * step]


# ------------------------------------------------------------------ listings

def test_listing_markup(archive_server, manifest):
    r = requests.get(archive_server.data_url + "/11419/data/HeLa/Raw%20SEM%20images/", timeout=T)
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html;charset=ISO-8859-1"
    text = r.text
    assert text.startswith('<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n')
    assert "<title>Index of /empiar/world_availability/11419/data/HeLa/Raw SEM images</title>" in text
    assert '<a href="?C=N;O=D">Name</a>' in text
    assert '<a href="/empiar/world_availability/11419/data/HeLa/">Parent Directory</a>' in text
    rows = ROW_RE.findall(text)
    names = [row[3] for row in rows]
    assert names == sorted(names) and len(rows) == 6
    for icon, alt, href, name, _date, size in rows:
        assert (icon, alt) == ("/icons/image2.gif", "IMG")
        assert href == name.replace(" ", "%20")
        truth = _truth(manifest, "EMPIAR-11419", f"data/HeLa/Raw SEM images/{name}")
        expected = "4.2K" if "overview" in name else " 12K"
        assert size == strfsize(truth["size"]) == expected


def test_listing_escapes_and_dirs(archive_server):
    text = requests.get(archive_server.data_url + "/11419/data/HeLa/", timeout=T).text
    assert ('<a href="Notes%20%231%20&amp;%2050%25%20done.txt">Notes #1 &amp; 50% done.txt</a>') in text
    assert '<td><a href="Raw%20SEM%20images/">Raw SEM images/</a></td><td align="right">' in text
    assert '<td align="right">  - </td>' in text
    assert 'href="Stack%20%5baligned%5d%20(b%c3%a9ta).txt"' in text


def test_many_file_listing_and_sizes(archive_server, manifest):
    rows = ROW_RE.findall(requests.get(archive_server.data_url + "/10943/data/Tiff/", timeout=T).text)
    assert len(rows) == 3000
    sizes = {f["path"].rsplit("/", 1)[-1]: f["size"] for f in manifest["files"] if f["entry"] == "EMPIAR-10943"}
    assert all(size == strfsize(sizes[name]) for *_, name, _d, size in rows)


def test_directory_without_slash_redirects(archive_server):
    r = requests.get(archive_server.data_url + "/10002/data", timeout=T, allow_redirects=False)
    assert r.status_code == 301 and r.headers["Location"] == archive_server.data_url + "/10002/data/"


def test_top_listing_names_entries(archive_server):
    rows = ROW_RE.findall(requests.get(archive_server.data_url + "/", timeout=T).text)
    assert [r[2] for r in rows] == ["10002/", "10934/", "10943/", "11419/", "11561/"]


@pytest.mark.parametrize("raw", [
    "/empiar/world_availability/../api/EMPIAR-10002.json",
    "/empiar/world_availability/%2e%2e/manifest.json",
    "/empiar/world_availability/10002%2f..%2f..%2fmanifest.json",
    "/empiar/world_availability/10002/%00",
    "/empiar/world_availability/10002/data/../../../../../etc/passwd",
])
def test_path_traversal_refused(archive_server, raw):
    conn = http.client.HTTPConnection("127.0.0.1", archive_server.port, timeout=T)
    try:
        conn.request("GET", raw)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status in (400, 404)
    assert b"EMPIAR-10002" not in body and b"root:" not in body


# ------------------------------------------------------------------ faults

def test_rate_limit(archive_server, faults):
    faults.rate = 200_000
    t0 = time.monotonic()
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-99999"}, timeout=T)
    assert len(r.content) == 100_000
    assert 0.4 < time.monotonic() - t0 < 3


def test_latency(archive_server, faults):
    faults.latency = 0.5
    t0 = time.monotonic()
    requests.get(archive_server.api_url + "/entry/10002", timeout=T)
    assert time.monotonic() - t0 >= 0.5


def test_stall_then_stop_is_prompt(tmp_path):
    make_sample(tmp_path, many_files=0)
    server = ArchiveServer(tmp_path, faults=Faults(stall_probability=1.0)).start()
    try:
        with pytest.raises(requests.ReadTimeout):
            requests.get(server.data_url + MOVIE, timeout=(T, 0.5))
        assert server.stats.get("faults.stall") == 1
    finally:
        t0 = time.monotonic()
        server.stop()
    assert time.monotonic() - t0 < 3


def test_stall_seconds_then_close(archive_server, faults):
    faults.set(stall_probability=1.0, stall_seconds=0.3)
    with pytest.raises(requests.ConnectionError):
        requests.get(archive_server.data_url + MOVIE, timeout=T)


def test_truncate(archive_server, faults):
    faults.truncate_probability = 1.0
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-99999"}, timeout=T)
    assert faults.applies("data") and archive_server.stats.get("faults.truncate") == 1


def test_reset(archive_server, faults):
    faults.reset_probability = 1.0
    sock = socket.create_connection(("127.0.0.1", archive_server.port), timeout=T)
    try:
        sock.sendall(f"GET /empiar/world_availability{MOVIE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        assert b"200 OK" in got
    finally:
        sock.close()


@pytest.mark.parametrize("status,retry_after", [(503, 2), (429, None)])
def test_error_burst(archive_server, faults, status, retry_after):
    faults.error_burst(status, count=2, retry_after=retry_after)
    url = archive_server.api_url + "/entry/10002"
    first, second, third = (requests.get(url, timeout=T) for _ in range(3))
    assert first.status_code == second.status_code == status and third.status_code == 200
    assert first.headers.get("Retry-After") == (str(retry_after) if retry_after else None)


def test_ignore_range(archive_server, faults, sample_root):
    faults.ignore_range = True
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=100-199"}, timeout=T)
    assert r.status_code == 200 and r.content == _local(sample_root, MOVIE)


def test_wrong_content_range(archive_server, faults):
    faults.wrong_content_range = True
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=100-199"}, timeout=T)
    assert r.status_code == 206 and r.headers["Content-Range"].startswith("bytes 101-200/")


def test_drip(archive_server, faults):
    faults.drip = True
    got = b""
    with requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-9"},
                      timeout=T, stream=True) as r:
        assert r.status_code == 206
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.2 and len(got) < 10:
            got += r.raw.read(1)
    # One byte a second: a read timeout never fires, yet 10 bytes take 10 s.
    assert 2 <= len(got) <= 4 and archive_server.stats.get("faults.drip") == 1


def test_omit_from_listing(archive_server, faults):
    faults.omit_from_listing = {"101_movie_gc.mrcs"}
    text = requests.get(archive_server.data_url + "/10002/data/", timeout=T).text
    assert "101_movie_gc.mrcs" not in text and "102_movie_gc.mrcs" in text
    assert requests.head(archive_server.data_url + "/10002/data/101_movie_gc.mrcs", timeout=T).status_code == 200
    faults.omit_from_listing = 1.0
    assert not ROW_RE.findall(requests.get(archive_server.data_url + "/10002/data/", timeout=T).text)


def test_redirect_to(archive_server, faults):
    faults.redirect_to = "http://127.0.0.1:9"
    r = requests.get(archive_server.data_url + MOVIE, timeout=T, allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == "http://127.0.0.1:9/empiar/world_availability" + MOVIE


def test_paths_scope(archive_server, faults):
    faults.set(paths="api", ignore_range=True)
    faults.error_burst(503, count=1)
    r = requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-9"}, timeout=T)
    assert r.status_code == 206
    assert requests.get(archive_server.api_url + "/entry/10002", timeout=T).status_code == 503
    with pytest.raises(AttributeError):
        faults.stall_prob = 1  # a typo is an error, not a silent no-op


def test_stats(archive_server, faults):
    requests.get(archive_server.data_url + MOVIE, headers={"Range": "bytes=0-9"}, timeout=T)
    # The handler counts sent bytes after the body has left, so the client
    # may see the reply a moment before the counter moves.
    deadline = time.monotonic() + 2
    while archive_server.stats.get("bytes_sent") < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    snap = archive_server.stats.snapshot()
    # (bytes_sent may also count a slow body of an earlier test still draining)
    assert snap["ranges"] == 1 and snap["requests.file"] == 1 and snap["bytes_sent"] >= 10
    archive_server.stats.reset()
    assert archive_server.stats.get("ranges") == 0


# ------------------------------------------------------------------ FTP

def test_ftp_mlsd_exact_sizes(archive_server, manifest):
    assert archive_server.ftp_url == f"ftp://127.0.0.1:{archive_server.ftp_port}/empiar/world_availability"
    ftp = ftplib.FTP()
    ftp.connect("127.0.0.1", archive_server.ftp_port, timeout=T)
    try:
        ftp.login()
        listing = dict(ftp.mlsd("/empiar/world_availability/11419/data/HeLa/Raw SEM images", facts=["size", "modify", "type"]))
        top = {name for name, _ in ftp.mlsd("/empiar/world_availability")}
        data = bytearray()
        ftp.retrbinary("RETR /empiar/world_availability/11419/data/HeLa/Notes #1 & 50% done.txt", data.extend)
        with pytest.raises(ftplib.error_perm):
            ftp.mkd("/empiar/world_availability/new")
    finally:
        ftp.close()
    assert {"10002", "10934", "10943", "11419", "11561"} <= top
    for f in manifest["files"]:
        if f["entry"] == "EMPIAR-11419" and f["path"].startswith("data/HeLa/Raw SEM images/"):
            facts = listing[f["path"].rsplit("/", 1)[1]]
            assert int(facts["size"]) == f["size"]
            assert facts["modify"] == time.strftime("%Y%m%d%H%M%S", time.gmtime(f["mtime"]))
    assert hashlib.sha256(data).hexdigest() == _truth(manifest, "EMPIAR-11419", "data/HeLa/Notes #1 & 50% done.txt")["sha256"]


def test_stopping_one_ftp_server_leaves_another_serving(sample_root):
    """pyftpdlib shares one I/O loop per process by default, and stopping a
    server closed every socket in it: a test's private server took the
    session server's FTP listener down for the rest of the run."""
    with ArchiveServer(sample_root, ftp=True) as first:
        with ArchiveServer(sample_root, ftp=True):
            pass  # started and stopped
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", first.ftp_port, timeout=T)
        try:
            ftp.login()
            assert "10002" in {name for name, _ in ftp.mlsd("/empiar/world_availability")}
        finally:
            ftp.close()
