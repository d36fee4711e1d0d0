"""Wire faults (issue 11): replies cut anywhere -- inside the status line,
at a line boundary of the header block, inside a validator's value, after
the headers, inside the body -- and whole replies that lie (malformed or
duplicated ETags, a malformed Content-Length, a Content-Range that
disagrees with Content-Length, an HTTP/1.0 close-delimited body, a 200 with
the whole file to a range request).

Part 1 proves on raw sockets that each knob of the archive server and each
action of the fault proxy sends exactly the fault it claims. Part 2 reads
through the public client and through real mounts while each fault
happens, with sizes from HEAD (FTP unreachable), from FTP, from the listing
and from Content-Range: no wrong size, no wrong byte, no failed read, no
ESTALE. Part 3 is the issue's "done when": every file of a sample through a
mount behind a proxy that cuts 1 reply in 20 at any byte and stalls 1 in 30.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.apache import ApacheTwin, unavailable_reason
from support.archive import closed_ftp_url, injected, settings_for
from support.faultproxy import FaultProxy, Rule, check_read, read_in_thread
from support.mounting import mounted, requires_fuse

from empiarfs.archive_server import ArchiveServer
from empiarfs.archive_server.faults import CUT_PLACES, FAULT_KINDS, LIE_KINDS, Faults
from empiarfs.archive_server.sample import make_sample
from empiarfs.errors import StaleFile
from empiarfs.remote.archive import Archive

T = 5.0
MOVIE = "/10002/data/100_movie_gc.mrcs"
DATA = "/empiar/world_availability"
ENTITY_TAG = re.compile(rb'^(W/)?"[\x21\x23-\x7e\x80-\xff]*"$')

# The four kinds of reply a fault can hit: (method, path, extra headers).
REPLIES = {
    "file_get": ("GET", DATA + MOVIE, {"Range": "bytes=100-4195"}),
    "file_head": ("HEAD", DATA + MOVIE, {}),
    "listing": ("GET", DATA + "/10002/data/", {}),
    "json": ("GET", "/empiar/api/entry/10002/", {}),
}
WITH_BODY = ("file_get", "listing", "json")


# --------------------------------------------------------------------------
# Raw HTTP on a socket


def exchange(port: int, method: str, path: str, headers=None) -> tuple[bytes, bool]:
    """Send one request asking for ``Connection: close``; everything the
    server sent until it closed, and whether it ended with a reset."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    got, reset = b"", False
    with socket.create_connection(("127.0.0.1", port), timeout=T) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                got += data
        except ConnectionResetError:
            reset = True
    return got, reset


def parse(raw: bytes):
    """``(status line, [(name, value)], body)`` of a reply whose header
    block is complete."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no blank line after the headers: {raw[:300]!r}"
    status, *lines = head.split(b"\r\n")
    fields = [(n.strip().decode("latin-1"), v.strip()) for n, _, v in (ln.partition(b":") for ln in lines)]
    return status, fields, body


def values(fields, name: str) -> list[bytes]:
    return [v for n, v in fields if n.lower() == name.lower()]


def reference(port: int, reply: str):
    """The undamaged reply (status line, fields, body) of ``reply``."""
    method, path, headers = REPLIES[reply]
    raw, _ = exchange(port, method, path, headers)
    return parse(raw)


def local(sample_root, path: str) -> bytes:
    return Path(sample_root, "world_availability", *path.strip("/").split("/")).read_bytes()


def faulted(server, faults, kind: str, reply: str):
    """The undamaged reply (status line, fields, body) of ``reply``; then the
    raw bytes of the same request with ``kind`` injected, counted once."""
    undamaged = reference(server.port, reply)
    faults.inject(kind)
    raw, _ = exchange(server.port, *REPLIES[reply])
    assert injected(server) == {kind: 1}
    return undamaged, raw


# --------------------------------------------------------------------------
# Part 1a: the archive server's knobs, on raw sockets


@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_cut_inside_the_status_line(archive_server, faults, reply):
    (status, _, _), raw = faulted(archive_server, faults, "cut_status", reply)
    assert raw and b"\n" not in raw, raw
    assert (status + b"\r").startswith(raw) and len(raw) <= len(status) + 1


@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_cut_at_a_header_line_boundary(archive_server, faults, reply):
    (status, fields, _), raw = faulted(archive_server, faults, "cut_header_line", reply)
    assert raw.endswith(b"\r\n") and b"\r\n\r\n" not in raw, "the header block must have no blank line"
    got_status, *lines = raw[:-2].split(b"\r\n")
    assert got_status == status
    names = [n for n, _ in fields]
    got = [ln.partition(b":")[0].decode() for ln in lines]
    assert got == names[:len(got)]  # all of them, perhaps, but never the blank line


VALUE_CUTS = [("file_get", "ETag"), ("file_get", "Content-Length"), ("file_get", "Content-Range"),
              ("file_get", "Last-Modified"), ("file_head", "ETag"), ("file_head", "Content-Length"),
              ("file_head", "Last-Modified"), ("listing", "Content-Length"), ("json", "Content-Length")]


@pytest.mark.parametrize("reply,header", VALUE_CUTS)
def test_cut_inside_a_header_value(archive_server, faults, reply, header):
    faults.set(cut_headers=(header,))
    (_, fields, _), raw = faulted(archive_server, faults, "cut_header_value", reply)
    (truth,) = values(fields, header)
    assert not raw.endswith(b"\n") and b"\r\n\r\n" not in raw
    last = raw.rsplit(b"\r\n", 1)[-1]
    name, _, partial = last.partition(b": ")
    assert name.decode() == header
    assert truth.startswith(partial) and 0 < len(partial) < len(truth), (partial, truth)


@pytest.mark.parametrize("reply", WITH_BODY)
def test_cut_after_the_headers(archive_server, faults, reply):
    (_, _, body), raw = faulted(archive_server, faults, "cut_after_headers", reply)
    _, got_fields, got_body = parse(raw)
    assert got_body == b"" and int(values(got_fields, "Content-Length")[0]) == len(body) > 0


@pytest.mark.parametrize("reply", WITH_BODY)
def test_cut_inside_the_body(archive_server, faults, reply):
    (_, _, body), raw = faulted(archive_server, faults, "cut_body", reply)
    _, fields, got = parse(raw)
    assert 0 < len(got) < len(body) and body.startswith(got)
    assert int(values(fields, "Content-Length")[0]) == len(body)


def test_a_cut_may_end_with_a_reset(archive_server, faults):
    faults.set(cut_reset=1.0)
    faults.inject("cut_body")
    _, reset = exchange(archive_server.port, *REPLIES["file_get"])
    assert reset and injected(archive_server) == {"cut_body": 1}


def test_an_injection_waits_for_a_reply_it_fits(archive_server, faults, sample_root):
    """A body cut cannot happen to a HEAD: the HEAD goes out whole and the
    next GET takes the cut."""
    faults.inject("cut_body")
    raw, _ = exchange(archive_server.port, *REPLIES["file_head"])
    parse(raw)
    assert injected(archive_server) == {}
    raw, _ = exchange(archive_server.port, *REPLIES["file_get"])
    assert len(parse(raw)[2]) < 4096 and injected(archive_server) == {"cut_body": 1}


@pytest.mark.parametrize("reply", ["file_get", "file_head"])
def test_malformed_etag(archive_server, faults, sample_root, reply):
    (_, fields, body), raw = faulted(archive_server, faults, "malformed_etag", reply)
    _, got_fields, got_body = parse(raw)
    (etag,) = values(got_fields, "ETag")
    assert not ENTITY_TAG.match(etag), etag
    assert ENTITY_TAG.match(values(fields, "ETag")[0])
    assert got_body == body


@pytest.mark.parametrize("reply", ["file_get", "file_head"])
def test_duplicate_etag(archive_server, faults, reply):
    (_, fields, _), raw = faulted(archive_server, faults, "duplicate_etag", reply)
    tags = values(parse(raw)[1], "ETag")
    assert len(tags) == 2 and tags[0] != tags[1] and values(fields, "ETag")[0] in tags
    assert all(ENTITY_TAG.match(t) for t in tags)


@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_malformed_length_body_ends_at_close(archive_server, faults, reply):
    (_, _, body), raw = faulted(archive_server, faults, "malformed_length", reply)
    _, fields, got = parse(raw)
    (length,) = values(fields, "Content-Length")
    assert not length.isdigit(), length
    assert got == body


def test_content_range_and_content_length_disagree(archive_server, faults, sample_root):
    faults.inject("range_length_mismatch")
    raw, _ = exchange(archive_server.port, *REPLIES["file_get"])
    status, fields, body = parse(raw)
    first, last, _ = map(int, re.match(rb"bytes (\d+)-(\d+)/(\d+)", values(fields, "Content-Range")[0]).groups())
    assert b" 206 " in status and (first, last) == (100, 4195)
    assert int(values(fields, "Content-Length")[0]) != last - first + 1
    assert body == local(sample_root, MOVIE)[100:4196], "the body is the range; the length lies"
    assert injected(archive_server) == {"range_length_mismatch": 1}


@pytest.mark.parametrize("reply", sorted(REPLIES))
def test_http10_close_delimited(archive_server, faults, reply):
    (_, fields, body), raw = faulted(archive_server, faults, "http10_close", reply)
    status, got_fields, got = parse(raw)
    assert status.startswith(b"HTTP/1.0 ") and not values(got_fields, "Content-Length")
    assert values(got_fields, "Connection") == [b"close"] and got == body
    assert values(got_fields, "Content-Range") == values(fields, "Content-Range")


def test_whole_200_to_a_range_request(archive_server, faults, sample_root):
    faults.inject("whole_200")
    raw, _ = exchange(archive_server.port, *REPLIES["file_get"])
    status, fields, body = parse(raw)
    assert b" 200 " in status and not values(fields, "Content-Range")
    assert body == local(sample_root, MOVIE) and injected(archive_server) == {"whole_200": 1}


def test_probabilities_only_where_they_fit_and_paths_respected(archive_server, faults):
    faults.set(cut_probability=1.0, cut_where=("after_headers", "body"), paths="api")
    raw, _ = exchange(archive_server.port, *REPLIES["file_get"])
    assert len(parse(raw)[2]) == 4096  # data untouched
    raw, _ = exchange(archive_server.port, *REPLIES["json"])
    _, fields, body = parse(raw)
    assert len(body) < int(values(fields, "Content-Length")[0])
    faults.set(paths="all", cut_where=("body",), lie_probability=1.0, lie_kinds=("whole_200",))
    raw, _ = exchange(archive_server.port, *REPLIES["file_head"])
    parse(raw)  # no body to cut, no range to ignore: a whole HEAD
    counts = injected(archive_server)
    assert sum(counts.values()) == 1 and counts.get("cut_body", 0) + counts.get("cut_after_headers", 0) == 1


def test_same_seed_same_faults(archive_server, faults):
    def run():
        faults.set(seed=7, cut_probability=0.5, lie_probability=0.3)
        return [len(exchange(archive_server.port, *REPLIES[r])[0]) for r in sorted(REPLIES) * 4]
    first = run()
    archive_server.stats.reset()
    second = run()
    assert first == second
    kinds = set(injected(archive_server))
    assert len(kinds) >= 3, kinds


def test_knobs_refuse_unknown_names():
    with pytest.raises(ValueError, match="nowhere"):
        Faults(cut_where=("status", "nowhere"))
    with pytest.raises(ValueError, match="unknown fault kind"):
        Faults().inject("cut_everything")
    assert Faults(cut_where="body,status").cut_where == ("status", "body")
    assert set(FAULT_KINDS) == {f"cut_{p}" for p in CUT_PLACES} | set(LIE_KINDS)


def test_serve_exposes_the_knobs(sample_root):
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "empiarfs"), "serve",
                             sample_root, "--port", "0", "--cut", "1", "--cut-where", "status"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", line).group(1))
        raw, _ = exchange(port, *REPLIES["json"])
        assert raw and b"\n" not in raw and b"HTTP/1.1 200 OK".startswith(raw.rstrip(b"\r"))
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    bad = subprocess.run([os.path.join(os.path.dirname(sys.executable), "empiarfs"), "serve", sample_root,
                          "--lie-kinds", "fib"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "fib" in bad.stderr and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------
# Part 1b: the fault proxy's actions, on raw sockets


@pytest.fixture(params=["server", pytest.param("apache", marks=pytest.mark.apache)])
def upstream(request, archive_server):
    """The project server, or Apache on the same tree."""
    if request.param == "server":
        return archive_server
    return request.getfixturevalue("apache_twin")


@pytest.mark.parametrize("where", CUT_PLACES)
def test_proxy_cut_at(upstream, where, sample_root):
    path, headers = DATA + MOVIE, {"Range": "bytes=100-4195"}
    with FaultProxy(upstream.url) as proxy:
        status, fields, body = parse(exchange(proxy.port, "GET", path, headers)[0])
        proxy.add(Rule("cut_at", where=where, cut_headers=("ETag", "Content-Range")))
        raw, _ = exchange(proxy.port, "GET", path, headers)
        (event,) = proxy.events
    assert event["place"] == where and event["at"] == len(raw) < event["of"]
    assert proxy.counts == {"cut_at": 1, f"cut_at:{where}": 1}
    if where == "status":
        assert b"\n" not in raw and status.startswith(raw.rstrip(b"\r"))
    elif where == "header_line":
        assert raw.endswith(b"\r\n") and b"\r\n\r\n" not in raw
    elif where == "header_value":
        name, _, partial = raw.rsplit(b"\r\n", 1)[-1].partition(b": ")
        (truth,) = values(fields, name.decode())
        assert name in (b"ETag", b"Content-Range") and truth.startswith(partial) and len(partial) < len(truth)
    else:
        _, _, got = parse(raw)
        assert body == local(sample_root, MOVIE)[100:4196] and body.startswith(got)
        assert (got == b"") == (where == "after_headers") and len(got) < len(body)


def test_proxy_random_cut_falls_anywhere(archive_server):
    """Uniform over the whole reply: over small replies (a HEAD's headers,
    a short JSON) some cuts land inside the header block."""
    with FaultProxy(archive_server.url, seed=3) as proxy:
        proxy.add(Rule("random_cut"))
        for _ in range(100):
            raw, _ = exchange(proxy.port, *REPLIES["file_head"])
            event = proxy.events[-1]
            assert event["at"] == len(raw) < event["of"]
    places = {k.split(":")[1] for k in proxy.counts if ":" in k}
    assert {"status", "header_value"} <= places and proxy.counts["random_cut"] == 100


def test_proxy_probability_is_seeded(archive_server):
    def run():
        with FaultProxy(archive_server.url, seed=11) as proxy:
            proxy.add(Rule("cut", probability=0.3))
            lengths = [len(exchange(proxy.port, *REPLIES["file_get"])[0]) for _ in range(20)]
        return lengths, proxy.counts["cut"]
    first, cuts = run()
    assert run() == (first, cuts) and 0 < cuts < 20


def test_proxy_passes_close_delimited_bodies_on_and_closes(archive_server, faults, sample_root):
    faults.inject("http10_close")
    with FaultProxy(archive_server.url) as proxy:
        lines = f"GET {DATA}{MOVIE} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=T) as sock:
            sock.sendall(lines.encode())  # keep-alive asked: the proxy must close anyway
            raw = b""
            while data := sock.recv(1 << 16):
                raw += data
    status, fields, body = parse(raw)
    assert status.startswith(b"HTTP/1.0") and body == local(sample_root, MOVIE)[:100]
    assert values(fields, "Connection") == [b"close"]


# --------------------------------------------------------------------------
# Part 2a: the public client, one fault kind at a time

HEAD_KINDS = ["cut_status", "cut_header_line", "cut_header_value", "malformed_etag", "duplicate_etag",
              "malformed_length", "http10_close"]
GET_KINDS = list(FAULT_KINDS)
TEXT_KINDS = ["cut_status", "cut_header_line", "cut_header_value", "cut_after_headers", "cut_body",
              "malformed_length", "http10_close"]


def client_settings(server, tmp_path, **extra):
    values_ = dict(ftp_url=closed_ftp_url(), stall_timeout=1.0, hedge_after=0.5, retries=4,
                   backoff_max=0.05, connect_timeout=1.0, deadline=10.0)
    values_.update(extra)
    return settings_for(server, tmp_path, **values_)


def true_stat(sample_root, rel):
    from empiarfs.archive_server.httpd import etag_for

    st = os.stat(os.path.join(sample_root, "world_availability", "10002", rel))
    return st.st_size, etag_for(st), st.st_mtime


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_client_size_and_version_from_head(kind, archive_server, faults, sample_root, tmp_path):
    """Sizes from HEAD (FTP unreachable): a damaged HEAD is never believed."""
    rel = "data/101_movie_gc.mrcs"
    size, etag, mtime = true_stat(sample_root, rel)
    faults.set(paths="data")
    with Archive(client_settings(archive_server, tmp_path)) as archive:
        faults.inject(kind)
        info = archive.stat("EMPIAR-10002", rel)
        assert injected(archive_server) == {kind: 1}
        assert info.size == size and info.size_exact
        assert info.etag in (etag, None), info.etag
        assert info.mtime == pytest.approx(mtime, abs=1)
        got = archive.transport.fetch_range(info.url, 0, info.size, expect=_fingerprint(info))
    assert got == local(sample_root, "/10002/" + rel)


def _fingerprint(info):
    from empiarfs.model import Fingerprint

    return Fingerprint(info.size, info.etag, None)


@pytest.mark.parametrize("kind", GET_KINDS)
def test_client_range_reads(kind, archive_server, faults, sample_root, tmp_path):
    """A damaged range reply is retried: the right bytes, never StaleFile."""
    rel = "data/103_movie_gc.mrcs"
    truth = local(sample_root, "/10002/" + rel)
    faults.set(paths="data")
    with Archive(client_settings(archive_server, tmp_path)) as archive:
        info = archive.stat("EMPIAR-10002", rel)
        faults.inject(kind)
        try:
            got = archive.transport.fetch_range(info.url, 4096, 4096 + 300_000, expect=_fingerprint(info))
        except StaleFile as exc:
            pytest.fail(f"{kind}: one damaged reply declared the file stale: {exc}")
    assert injected(archive_server) == {kind: 1}
    assert got == truth[4096:4096 + 300_000]


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_client_listing_then_sizes(kind, archive_server, faults, manifest, tmp_path):
    """Names from a damaged listing are never believed; sizes then come
    from HEAD and must be exact."""
    faults.set(paths="data")
    with Archive(client_settings(archive_server, tmp_path)) as archive:
        faults.inject(kind)
        infos = archive.listdir("EMPIAR-10002", "data")
        assert injected(archive_server) == {kind: 1}
        sizes = {i.name: i.size for i in archive.resolve_sizes(infos)}
    truth = {f["path"][len("data/"):]: f["size"] for f in manifest["files"]
             if f["entry"] == "EMPIAR-10002" and f["path"].startswith("data/")}
    assert sizes == truth


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_client_entry_json(kind, archive_server, faults, sample_root, tmp_path):
    faults.set(paths="api")
    with Archive(client_settings(archive_server, tmp_path)) as archive:
        faults.inject(kind)
        record = archive.entry_json("EMPIAR-10002")
    assert injected(archive_server) == {kind: 1}
    assert record == json.loads(Path(sample_root, "api", "EMPIAR-10002.json").read_text())["EMPIAR-10002"]


@pytest.mark.parametrize("probe_fault", ["cut_header_value", "cut_header_line"])
def test_client_size_from_content_range_probe(probe_fault, archive_server, faults, sample_root,
                                              tmp_path):
    """A HEAD without Content-Length (HTTP/1.0) sends the client to a
    one-byte range GET for the size (its Content-Range total); that reply
    cut inside Content-Range, or before it, must not become the size."""
    rel = "data/102_movie_gc.mrcs"
    size, _, _ = true_stat(sample_root, rel)
    faults.set(paths="data", cut_headers=("Content-Range",))
    with Archive(client_settings(archive_server, tmp_path)) as archive:
        faults.inject("http10_close")  # taken by the HEAD: no Content-Length
        faults.inject(probe_fault)     # then by the probe
        info = archive.stat("EMPIAR-10002", rel)
    counts = injected(archive_server)
    assert counts.get("http10_close") == 1 and counts.get(probe_fault) == 1, counts
    assert info.size == size and info.size_exact


# --------------------------------------------------------------------------
# Part 2b: real mounts, one fault kind at a time, every file of one entry

MOUNT_DIRS = ["EMPIAR-10002/data", "EMPIAR-11419/data/HeLa/Raw SEM images"]


def _truths(manifest, sample_root):
    out = {}
    for f in manifest["files"]:
        key = f"{f['entry']}/{f['path']}"
        if os.path.dirname(key) in MOUNT_DIRS:
            out[key] = Path(sample_root, "world_availability", f["entry"].split("-")[1], f["path"]).read_bytes()
    return out


def _knobs_for(kind: str) -> dict:
    """1 reply in 10 (seeded; 6 attempts leave a request 1 chance in a
    million of meeting the fault every time)."""
    if kind.startswith("cut_"):
        return dict(cut_probability=0.1, cut_where=(kind[4:],))
    return dict(lie_probability=0.1, lie_kinds=(kind,))


def wrong_sizes_of(mnt, truths) -> list:
    """Files whose ``stat`` fails or disagrees with the source."""
    wrong = []
    for key, data in truths.items():
        try:
            size = os.stat(os.path.join(mnt, key)).st_size
        except OSError as exc:
            wrong.append((key, errno.errorcode.get(exc.errno, exc.errno)))
            continue
        if size != len(data):
            wrong.append((key, size, len(data)))
    return wrong


def read_every_file(mnt, truths, workers=8, limit=60.0):
    """``(wrong sizes, outcomes)`` of stat and checked whole reads of every
    file; a hung read raises TimeoutError."""
    wrong_sizes = wrong_sizes_of(mnt, truths)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(
            lambda k: read_in_thread(check_read, os.path.join(mnt, k), truths[k], limit=limit), truths))
    return wrong_sizes, outcomes


def assert_perfect(wrong_sizes, outcomes):
    assert not wrong_sizes, f"wrong sizes: {wrong_sizes[:5]}"
    wrong = [(o.path, o.wrong_bytes) for o in outcomes if o.wrong_bytes]
    assert not wrong, f"wrong bytes: {wrong[:5]}"
    failed = [(o.path, errno.errorcode.get(o.errno, o.errno)) for o in outcomes if not o.ok]
    assert not failed, f"{len(failed)} failed reads: {failed[:5]}"


@requires_fuse
@pytest.mark.fuse
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_mount_sizes_from_head(kind, archive_server, faults, manifest, sample_root, tmp_path):
    """FTP unreachable: names from the listing, sizes from HEAD (and the
    range probe), bytes from range GETs, all under one fault kind."""
    truths = _truths(manifest, sample_root)
    settings = settings_for(archive_server, tmp_path, ftp_url=closed_ftp_url(), stall_timeout=1.0,
                            hedge_after=0.5, retries=5, backoff_max=0.05, deadline=10.0)
    faults.set(seed=1, **_knobs_for(kind))
    faults.inject(kind)  # the first reply it fits, whatever the draws
    with mounted(settings, tmp_path / "mnt") as mnt:
        wrong_sizes, outcomes = read_every_file(mnt, truths)
    assert injected(archive_server).get(kind, 0) >= 1, "the fault never happened: the test proved nothing"
    assert_perfect(wrong_sizes, outcomes)


@requires_fuse
@pytest.mark.fuse
def test_mount_sizes_from_ftp_under_every_kind(archive_server, faults, manifest, sample_root, tmp_path):
    """FTP up: exact sizes from MLSD, names from listings that may be cut
    or lie, bytes from replies that may be cut or lie."""
    truths = _truths(manifest, sample_root)
    settings = settings_for(archive_server, tmp_path, stall_timeout=1.0, hedge_after=0.5, retries=5,
                            backoff_max=0.05, deadline=10.0)
    faults.set(seed=2, cut_probability=0.05, lie_probability=0.05)
    keys = sorted(truths)
    with mounted(settings, tmp_path / "mnt") as mnt:
        faults.inject("cut_body")  # the entry JSON or a listing
        wrong_sizes = wrong_sizes_of(mnt, truths)
        outcomes = []
        # One sure fault of each kind per file read, in turn (all at once
        # would meet the first request's every retry).
        for i, key in enumerate(keys):
            faults.inject(FAULT_KINDS[i % len(FAULT_KINDS)])
            outcomes.append(read_in_thread(check_read, os.path.join(mnt, key), truths[key], limit=60))
    assert set(injected(archive_server)) == set(FAULT_KINDS), injected(archive_server)
    assert_perfect(wrong_sizes, outcomes)


# --------------------------------------------------------------------------
# Part 3: the "done when"


@pytest.fixture(scope="module")
def flaky_archive():
    """A sample (1,000 small TIFFs and every other kind of file) served by
    Apache for the data tree and the project server for the API, each
    behind a proxy that cuts 1 reply in 20 at any byte and stalls 1 in 30."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    root = tempfile.mkdtemp(prefix="empiarfs-flaky-")
    os.chmod(root, 0o755)
    manifest = make_sample(root, seed=0, many_files=1000)
    try:
        with ApacheTwin(root) as apache, ArchiveServer(root) as server, \
                FaultProxy(apache.url, seed=20) as data_proxy, FaultProxy(server.url, seed=30) as api_proxy:
            for proxy in (data_proxy, api_proxy):
                proxy.add(Rule("stall", probability=1 / 30))
                proxy.add(Rule("random_cut", probability=1 / 20))
            yield types.SimpleNamespace(root=root, manifest=manifest, data=data_proxy, api=api_proxy,
                                        api_url=api_proxy.url + "/empiar/api",
                                        data_url=data_proxy.url + DATA, ftp_url=closed_ftp_url())
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@requires_fuse
@pytest.mark.fuse
@pytest.mark.apache
def test_every_file_through_a_flaky_proxy_before_apache(flaky_archive, tmp_path):
    fa = flaky_archive
    truths = {f"{f['entry']}/{f['path']}": Path(fa.root, "world_availability", f["entry"].split("-")[1],
                                                 f["path"]).read_bytes()
              for f in fa.manifest["files"]}
    settings = settings_for(fa, tmp_path, stall_timeout=1.0, hedge_after=0.5, retries=6,
                            backoff_max=0.05, connect_timeout=1.0, deadline=10.0)
    began = time.monotonic()
    with mounted(settings, tmp_path / "mnt") as mnt:
        wrong_sizes, outcomes = read_every_file(mnt, truths, workers=16)
    took = time.monotonic() - began
    cuts = fa.data.counts["random_cut"] + fa.api.counts["random_cut"]
    in_headers = sum(v for k, v in (fa.data.counts + fa.api.counts).items()
                     if k.startswith("random_cut:") and k.split(":")[1] not in ("body", "after_headers"))
    print(f"{len(truths)} files in {took:.1f} s; cuts {cuts} ({in_headers} inside the status line or "
          f"headers), stalls {fa.data.counts['stall'] + fa.api.counts['stall']}")
    assert cuts >= 20 and in_headers >= 5, (fa.data.counts, fa.api.counts)
    assert_perfect(wrong_sizes, outcomes)
