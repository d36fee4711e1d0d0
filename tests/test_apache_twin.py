"""Conformance: Apache httpd on the same tree vs the project's server.

Normalised before comparing, and why:
* the DOCTYPE line: this Apache (2.4.5x+) writes HTML 4.01, the older 2.4
  build at ftp.ebi.ac.uk writes HTML 3.2 (docs/empiar.md §4.1), which the
  project server reproduces; the rest of the page must match byte for byte.
"""

from __future__ import annotations

import re

import pytest
import requests

from empiarfs.archive_server.autoindex import strfsize

pytestmark = pytest.mark.apache
T = 5
DOCTYPE = re.compile(r"^<!DOCTYPE[^>]*>\n")
ROW_RE = re.compile(r'<tr><td valign="top"><img src="[^"]+" alt="\[[^\]]*\]"></td><td><a href="([^"]+)">'
                    r'[^<]*</a></td><td align="right">[^<]*</td><td align="right">(.{4})</td>')

DIRS = ["/", "/10002/data/", "/11419/data/HeLa/", "/11419/data/HeLa/Raw%20SEM%20images/",
        "/10934/data/CL44-1_20201106_111915/Images-Disc1/GridSquare_6089277/Data/",
        "/11561/data/211206/tomograms/", "/11419/data/HeLa/Segmentations/", "/10943/data/Tiff/"]


def _page(base, path):
    r = requests.get(base + path, timeout=T)
    assert r.status_code == 200
    return r.content


@pytest.mark.parametrize("path", DIRS)
def test_listing_identical_but_doctype(apache_twin, archive_server, path):
    ours = _page(archive_server.data_url, path)
    theirs = _page(apache_twin.data_url, path)
    assert ours.startswith(b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n')
    ours_n = DOCTYPE.sub("", ours.decode("utf-8"))
    theirs_n = DOCTYPE.sub("", theirs.decode("utf-8"))
    assert ROW_RE.findall(ours_n) == ROW_RE.findall(theirs_n)
    assert ours_n == theirs_n


def test_sizes_column_is_apr_strfsize(apache_twin, manifest):
    text = _page(apache_twin.data_url, "/10002/data/").decode()
    sizes = {f["path"].split("/")[-1]: f["size"] for f in manifest["files"] if f["entry"] == "EMPIAR-10002"}
    rows = ROW_RE.findall(text)
    assert rows
    for href, size in rows:
        assert size == strfsize(sizes[href])


@pytest.mark.parametrize("path", ["/10002/data/103_movie_gc.mrcs",
                                  "/11419/data/HeLa/Notes%20%231%20&%2050%25%20done.txt"])
def test_same_files_ranges_and_headers(apache_twin, archive_server, path):
    for spec in ("bytes=0-9", "bytes=20-", "bytes=-7"):
        a = requests.get(apache_twin.data_url + path, headers={"Range": spec}, timeout=T)
        b = requests.get(archive_server.data_url + path, headers={"Range": spec}, timeout=T)
        assert a.status_code == b.status_code == 206
        assert a.headers["Content-Range"] == b.headers["Content-Range"]
        assert a.content == b.content
    ha = requests.head(apache_twin.data_url + path, timeout=T).headers
    hb = requests.head(archive_server.data_url + path, timeout=T).headers
    for name in ("ETag", "Last-Modified", "Content-Length", "Accept-Ranges"):
        assert ha[name] == hb[name], name


def test_unsatisfiable_and_redirect(apache_twin, archive_server):
    path = "/10002/data/100_movie_gc.mrcs"
    for base in (apache_twin.data_url, archive_server.data_url):
        assert requests.get(base + path, headers={"Range": "bytes=99999999-"}, timeout=T).status_code == 416
        r = requests.get(base + "/10002/data", allow_redirects=False, timeout=T)
        assert r.status_code == 301 and r.headers["Location"] == base + "/10002/data/"
