"""Hostile input from the archive, served through :mod:`support.faultproxy`
(canned answers for chosen paths, everything else from the real archive
server): listings with escaping names, a 100,000-row listing, entry JSON
of the wrong shape, redirects to other hosts.

None may escape the entry's directory, crash the daemon, or exhaust its
memory; the rest of the mount keeps working.
"""

from __future__ import annotations

import errno
import os
import types

import pytest
from support.faultproxy import FaultProxy, Rule, check_read, read_in_thread
from support.mounting import mounted, requires_fuse

pytestmark = [requires_fuse, pytest.mark.fuse]

DATA = "/empiar/world_availability/10002/data/"
GOOD = "100_movie_gc.mrcs"

#: (label, href as written in the listing). Each must be refused.
HOSTILE_HREFS = [
    ("dot-dot", "../"), ("dot-dot file", ".."), ("dot", "./"), ("dot file", "."),
    ("encoded dot-dot", "%2e%2e/"), ("dot-dot escape", "../../../etc/passwd"),
    ("slash inside", "a/b.mrc"), ("encoded slash", "..%2F..%2Fetc%2Fpasswd"),
    ("encoded slash 2", "x%2fy.mrc"), ("NUL", "evil%00.mrc"), ("newline", "evil%0a.mrc"),
    ("escape char", "evil%1b%5b31m.mrc"), ("DEL", "evil%7f.mrc"),
    ("4 KiB name", "A" * 4096 + ".mrc"), ("absolute", "/etc/passwd"),
    ("other host", "http://evil.example/x.mrc"), ("query", "?x=/etc/passwd"),
    ("not UTF-8", "%ff%fe.mrc"),
]


def hostile_listing(hrefs) -> bytes:
    rows = "".join(f'<tr><td><a href="{h}">x</a></td><td align="right">2021-03-04 05:06  </td>'
                   f'<td align="right">1.5M</td></tr>\n' for h in hrefs)
    return (f"<html><head><title>Index of {DATA}</title></head><body><h1>Index of {DATA}</h1>"
            f'<table><tr><th><a href="?C=N;O=D">Name</a></th></tr>'
            f'<tr><td><a href="/empiar/world_availability/10002/">Parent Directory</a></td></tr>\n'
            f"{rows}</table></body></html>").encode()


def via(proxy):
    return types.SimpleNamespace(api_url=proxy.url + "/empiar/api",
                                 data_url=proxy.url + "/empiar/world_availability", ftp_url="")


def vm_rss_kib(cache_dir) -> int:
    with open(os.path.join(cache_dir, "blocks", "lock")) as fh:
        pid = int(fh.read())
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.fixture
def proxy(archive_server):
    with FaultProxy(archive_server.url) as p:
        yield p


def test_hostile_listing_names_never_escape(proxy, archive_server, sample_root, settings_for, tmp_path):
    hrefs = [h for _, h in HOSTILE_HREFS] + [GOOD]
    proxy.add(Rule("canned", path=DATA + "$", method="GET", body=hostile_listing(hrefs),
                   headers=(("Content-Type", "text/html;charset=UTF-8"),)))
    settings = settings_for(via(proxy), tmp_path)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        data = os.path.join(mnt, "EMPIAR-10002", "data")
        names = os.listdir(data)
        assert names == [GOOD], names  # every hostile row refused, the good one kept
        for name in names:
            assert "/" not in name and name not in (".", "..") and len(name.encode()) <= 255
            assert not any(ord(c) < 32 or ord(c) == 127 for c in name)
        # Nothing outside the mount is reachable through it.
        for probe in ("..%2F..%2Fetc%2Fpasswd", "evil\x1b.mrc", "x%2fy.mrc", "A" * 255):
            with pytest.raises(FileNotFoundError):
                os.stat(os.path.join(data, probe))
        truth = open(os.path.join(sample_root, "world_availability", "10002", "data", GOOD), "rb").read()
        assert read_in_thread(check_read, os.path.join(data, GOOD), truth, limit=30).ok
        assert proxy.counts["canned"] >= 1
    log = open(tmp_path / "mnt.log").read()
    assert "skipping unsafe listing entry" in log or "unsafe listing entries" in log
    assert "Traceback" not in log, log[-3000:]


def test_listing_with_100000_rows(proxy, archive_server, settings_for, tmp_path):
    hrefs = [f"FoilHole_{i:07d}_Data.tif" for i in range(100_000)]
    proxy.add(Rule("canned", path=DATA + "$", method="GET", body=hostile_listing(hrefs),
                   headers=(("Content-Type", "text/html;charset=UTF-8"),)))
    settings = settings_for(via(proxy), tmp_path, deadline=30.0)
    with mounted(settings, tmp_path / "mnt") as mnt:
        before = vm_rss_kib(settings.cache_dir)
        names = read_in_thread(os.listdir, os.path.join(mnt, "EMPIAR-10002", "data"), limit=60)
        assert len(names) == 100_000 and names[0] == hrefs[0]
        grown = vm_rss_kib(settings.cache_dir) - before
        # ~10 MiB of HTML and 100k rows: bounded, far from exhausting memory.
        assert grown < 400 * 1024, f"daemon grew by {grown // 1024} MiB"
        os.listdir(os.path.join(mnt, "EMPIAR-10002"))


BAD_ENTRIES = {
    "wrong types": b'{"EMPIAR-10002": {"title": 5, "imagesets": "x", "authors": {"a": 1}, '
                   b'"cross_references": 7, "release_date": [], "dataset_size": null}}',
    "missing keys": b'{"EMPIAR-10002": {}}',
    "not an object": b'[1, 2, 3]',
    "wrong accession": b'{"EMPIAR-99999": {"title": "other"}}',
    "not JSON": b'<html>oops</html>',
    "deep nesting": b'{"EMPIAR-10002": ' + b'[' * 5000 + b']' * 5000 + b'}',
}


@pytest.mark.parametrize("label", sorted(BAD_ENTRIES))
def test_entry_json_of_the_wrong_shape(label, proxy, archive_server, sample_root, settings_for,
                                       tmp_path):
    proxy.add(Rule("canned", path=r"/empiar/api/entry/EMPIAR-10002/?$", body=BAD_ENTRIES[label],
                   headers=(("Content-Type", "application/json"),)))
    settings = settings_for(via(proxy), tmp_path)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        entry = os.path.join(mnt, "EMPIAR-10002")
        names = os.listdir(entry)
        assert "data" in names
        for virtual in ("entry.json", "README.txt", "lambda-ber.yaml"):
            path = os.path.join(entry, virtual)
            try:
                with open(path, "rb") as fh:
                    fh.read()
            except OSError as exc:
                assert exc.errno in (errno.ENOENT, errno.EIO), (virtual, exc)
        truth = open(os.path.join(sample_root, "world_availability", "10002", "data", GOOD), "rb").read()
        assert read_in_thread(check_read, os.path.join(entry, "data", GOOD), truth, limit=30).ok
        assert os.listdir(os.path.join(mnt, "EMPIAR-11419"))  # other entries unaffected
    log = open(tmp_path / "mnt.log").read()
    assert "Traceback" not in log, log[-3000:]


def test_redirect_to_another_host_is_refused(proxy, archive_server, sample_root, settings_for,
                                             tmp_path):
    target = f"http://evil.example:{archive_server.port}/empiar/world_availability/10002/data/{GOOD}"
    proxy.add(Rule("canned", path=DATA + GOOD + "$", method="GET", status=302,
                   headers=(("Location", target),)))
    settings = settings_for(via(proxy), tmp_path, deadline=5.0)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        path = os.path.join(mnt, "EMPIAR-10002", "data", GOOD)
        truth = open(os.path.join(sample_root, "world_availability", "10002", "data", GOOD), "rb").read()
        out = read_in_thread(check_read, path, truth, limit=30)
        assert out.errno == errno.EIO and out.verified == 0
    assert "refusing redirect to other host" in open(tmp_path / "mnt.log").read()


def test_redirect_to_a_configured_host_is_followed(proxy, archive_server, sample_root,
                                                   settings_for, tmp_path):
    target = f"http://localhost:{archive_server.port}/empiar/world_availability/10002/data/{GOOD}"
    proxy.add(Rule("canned", path=DATA + GOOD + "$", method="GET", status=302,
                   headers=(("Location", target),)))
    settings = settings_for(via(proxy), tmp_path)
    with mounted(settings, tmp_path / "mnt", env={"EMPIARFS_ALLOWED_REDIRECT_HOSTS": "localhost"}) as mnt:
        path = os.path.join(mnt, "EMPIAR-10002", "data", GOOD)
        truth = open(os.path.join(sample_root, "world_availability", "10002", "data", GOOD), "rb").read()
        assert read_in_thread(check_read, path, truth, limit=30).ok
