"""A reply counts only when it is whole: the transport against a scripted
server on loopback that sends, connection by connection, exactly the bytes
each test gives it (cut headers, cut values, doubled validators, framing
that lies), then closes.

Each case sends a bad reply first and a good one after it: the transport
must retry and return the good one, never a value taken from the bad one.
"""

from __future__ import annotations

import socket
import threading

import pytest

from empiarfs.config import Settings
from empiarfs.errors import BadResponse, RemoteError, StaleFile
from empiarfs.model import Fingerprint
from empiarfs.remote.transport import Transport

BODY = bytes(range(256)) * 8  # 2048 bytes
ETAG = '"800-5f1e2d3c4b5a6"'
DATE = "Tue, 01 Dec 2026 10:00:00 GMT"


class ScriptedServer:
    """Answers connection k with ``replies[k]`` (raw bytes; the last one
    repeats), then closes the connection (clean FIN)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.served = 0
        self.requests: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/empiar/world_availability/1/f.bin"

    def _run(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                self.requests.append(request)
                reply = self.replies[min(self.served, len(self.replies) - 1)]
                self.served += 1
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_WR)

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


def reply(status="200 OK", headers=(), body=b"", version="HTTP/1.1"):
    head = f"{version} {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


def head_reply(size=len(BODY), etag=ETAG):
    return reply(headers=[("Content-Length", size), ("ETag", etag), ("Last-Modified", DATE),
                          ("Accept-Ranges", "bytes"), ("Connection", "close")])


def range_reply(start, end, size=len(BODY), etag=ETAG):
    return reply("206 Partial Content",
                 [("Content-Length", end - start), ("Content-Range", f"bytes {start}-{end - 1}/{size}"),
                  ("ETag", etag), ("Last-Modified", DATE), ("Connection", "close")],
                 BODY[start:end])


def cut_inside(raw: bytes, marker: bytes, keep: int) -> bytes:
    """``raw`` cut ``keep`` bytes into the value after ``marker``."""
    at = raw.index(marker) + len(marker) + keep
    return raw[:at]


@pytest.fixture
def serve():
    servers = []

    def make(*replies):
        server = ScriptedServer(replies)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def transport():
    settings = Settings(api_url="http://127.0.0.1:1/empiar/api",
                        data_url="http://127.0.0.1:1/empiar/world_availability",
                        retries=4, backoff_max=0.05, stall_timeout=2.0, connect_timeout=2.0,
                        hedge_after=0)
    with Transport(settings) as t:
        yield t


# -- HEAD: sizes and validators only from whole header blocks ------------------------


@pytest.mark.parametrize("marker,keep", [
    (b"ETag: ", 2),              # '"8' of the ETag
    (b"Content-Length: ", 1),    # '2' of 2048
    (b"Last-Modified: ", 9),
    (b"HTTP/1.1 20", 0),         # inside the status line
])
def test_head_cut_inside_a_value_is_retried(serve, transport, marker, keep):
    server = serve(cut_inside(head_reply(), marker, keep), head_reply())
    stat = transport.head(server.url)
    assert (stat.size, stat.etag, stat.last_modified) == (len(BODY), ETAG, DATE)
    assert server.served == 2


def test_head_cut_at_a_header_line_boundary_is_retried(serve, transport):
    whole = head_reply()
    cut = whole[: whole.index(b"ETag:")]  # every line whole, no blank line
    server = serve(cut, whole)
    assert transport.head(server.url).etag == ETAG
    assert transport.stats.snapshot()["errors_by_kind"] == {"cut_headers": 1}


@pytest.mark.parametrize("bad", [
    [("Content-Length", len(BODY)), ("ETag", '"8')],                       # unterminated
    [("Content-Length", len(BODY)), ("ETag", ETAG), ("ETag", '"other"')],  # doubled, disagreeing
    [("Content-Length", "2048x"), ("ETag", ETAG)],
    [("Content-Length", len(BODY)), ("Content-Length", 15), ("ETag", ETAG)],
    [("Content-Length", len(BODY)), ("ETag", ETAG), ("Last-Modified", "Tue, 01 Dec")],
])
def test_head_with_malformed_or_doubled_validators_is_retried(serve, transport, bad):
    server = serve(reply(headers=bad + [("Connection", "close")]), head_reply())
    stat = transport.head(server.url)
    assert (stat.size, stat.etag) == (len(BODY), ETAG)


def test_head_that_stays_cut_is_a_bad_response_not_a_size(serve, transport):
    server = serve(cut_inside(head_reply(), b"Content-Length: ", 1))
    with pytest.raises(BadResponse, match="cut inside its headers"):
        transport.head(server.url)
    assert server.served == transport.retry.retries + 1


# -- range GETs ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    cut_inside(range_reply(0, 1024), b"Content-Range: ", 9),      # 'bytes 0-1'
    cut_inside(range_reply(0, 1024), b"ETag: ", 3),
    range_reply(0, 1024)[: range_reply(0, 1024).index(b"\r\n\r\n") + 4],  # headers, no body
    range_reply(0, 1024)[:-100],                                          # body cut
    reply("206 Partial Content", [("Content-Length", 1024), ("Content-Range", "bytes 0-1023"),
                                  ("Connection", "close")], BODY[:1024]),  # no total: malformed
    reply("206 Partial Content", [("Content-Length", 1000), ("Content-Range", f"bytes 0-1023/{len(BODY)}"),
                                  ("Connection", "close")], BODY[:1000]),  # lengths disagree
    range_reply(1, 1025),                                                   # another range
    reply(headers=[("Content-Length", len(BODY)), ("ETag", ETAG), ("Connection", "close")], body=BODY),
])
def test_range_reply_that_is_not_whole_is_retried(serve, transport, bad):
    server = serve(bad, range_reply(0, 1024))
    fp = Fingerprint(len(BODY), ETAG, DATE)
    start = 0
    if bad.startswith(b"HTTP/1.1 200"):
        # A whole file at offset > 0 must never be taken for the range.
        start = 512
        server.replies[1] = range_reply(512, 1024)
    assert transport.fetch_range(server.url, start, 1024, expect=fp) == BODY[start:1024]
    assert server.served == 2


def test_one_reply_for_another_version_is_confirmed_before_stale(serve, transport):
    fp = Fingerprint(len(BODY), ETAG, DATE)
    # A reply from a lagging backend or a misrouted reply, then the truth.
    server = serve(range_reply(0, 100, etag='"other-version"'), range_reply(0, 100))
    assert transport.fetch_range(server.url, 0, 100, expect=fp) == BODY[:100]
    # Two replies in a row that say the file changed: it changed.
    server = serve(range_reply(0, 100, etag='"new"'), range_reply(0, 100, etag='"new"'))
    with pytest.raises(StaleFile, match=r'ETag "800-5f1e2d3c4b5a6" -> "new"'):
        transport.fetch_range(server.url, 0, 100, expect=fp)
    # A cut size is not a new size either.
    server = serve(range_reply(0, 100, size=20), range_reply(0, 100))
    assert transport.fetch_range(server.url, 0, 100, expect=fp) == BODY[:100]


# -- listings and JSON delimited by the connection closing -----------------------------

LISTING = (b"<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of "
           b"/empiar/world_availability/1/</title></head><body><h1>Index of /empiar/world_availability/1"
           b"</h1><table><tr><td><a href=\"f.bin\">f.bin</a></td><td align=\"right\">2026-12-01 10:00  "
           b"</td><td align=\"right\">2.0K</td></tr>\n<tr><td><a href=\"g.bin\">g.bin</a></td>"
           b"<td align=\"right\">2026-12-01 10:00  </td><td align=\"right\">2.0K</td></tr>\n"
           b"</table></body></html>\n")


def test_close_delimited_listing_cut_short_is_retried(serve, transport):
    http10 = reply(headers=[("Content-Type", "text/html")], version="HTTP/1.0")
    server = serve(http10 + LISTING[: LISTING.index(b"g.bin")], http10 + LISTING)
    from empiarfs.remote.listing import listing_looks_complete

    text = transport.get_text(server.url.rsplit("/", 1)[0] + "/", complete=listing_looks_complete)
    assert "g.bin" in text and server.served == 2


def test_listing_cut_inside_its_headers_is_retried(serve, transport):
    whole = reply(headers=[("Content-Type", "text/html"), ("Content-Length", len(LISTING)),
                           ("Connection", "close")], body=LISTING)
    server = serve(cut_inside(whole, b"Content-Type: ", 4), whole)
    from empiarfs.remote.listing import parse_listing

    url = server.url.rsplit("/", 1)[0] + "/"
    rows = transport.get_text(url, parse=lambda text: parse_listing(text, url))
    assert [r.name for r in rows] == ["f.bin", "g.bin"]


def test_close_delimited_json_cut_short_is_retried(serve, transport):
    record = b'{"EMPIAR-1": {"title": "a title", "imagesets": []}}'
    http10 = reply(headers=[("Content-Type", "application/json")], version="HTTP/1.0")
    server = serve(http10 + record[:20], http10 + record)
    assert transport.get_json(server.url) == {"EMPIAR-1": {"title": "a title", "imagesets": []}}


# -- plain words ----------------------------------------------------------------------


def test_connection_refused_is_said_in_plain_words(transport):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(Exception) as info:
        transport.head(f"http://127.0.0.1:{port}/x")
    text = str(info.value)
    assert "Connection refused" in text
    assert "HTTPConnection" not in text and " at 0x" not in text


def test_requests_go_through_the_proxy_the_environment_names(serve, monkeypatch):
    # Facilities reach the internet through an HTTP proxy named in the
    # environment; NO_PROXY hosts are asked directly.
    proxy = serve(head_reply())
    port = proxy.url.split(":")[2].split("/")[0]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    settings = Settings(api_url="http://archive.example/empiar/api",
                        data_url="http://archive.example/empiar/world_availability",
                        retries=1, backoff_max=0.05, stall_timeout=2.0, connect_timeout=2.0,
                        ftp_url="")
    with Transport(settings) as transport:
        url = "http://archive.example/empiar/world_availability/1/f.bin"
        assert transport.head(url).size == len(BODY)
        assert proxy.requests[0].startswith(b"HEAD " + url.encode() + b" HTTP/1.1\r\n")
        with pytest.raises(RemoteError):   # not through the proxy: the name does not resolve
            transport.head("http://direct.example/empiar/world_availability/1/f.bin")
        assert len(proxy.requests) == 1


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on loopback with a self-signed certificate for
    localhost (made by openssl, which scripts/setup installs)."""
    import functools
    import http.server
    import ssl
    import subprocess

    where = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem"),
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    (where / "f.bin").write_bytes(BODY)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(where)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(where / "cert.pem"), str(where / "key.pem"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://localhost:{server.server_address[1]}", where / "cert.pem"
    server.shutdown()


def test_https_checks_the_certificate_against_the_bundle_named_in_the_environment(
        tls_server, monkeypatch):
    # The archive is HTTPS: an unknown certificate is one clear TLS error;
    # the bundle in REQUESTS_CA_BUNDLE (a site's own CA) is trusted;
    # verify_tls=false trusts any (a local test server).
    base, cert = tls_server
    url = f"{base}/f.bin"
    settings = dict(api_url=f"{base}/empiar/api", data_url=f"{base}/empiar/world_availability",
                    ftp_url="", retries=0, stall_timeout=5.0, connect_timeout=5.0)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with Transport(Settings(**settings)) as transport:
        with pytest.raises(RemoteError, match="TLS error talking to localhost.*verify_tls=false"):
            transport.head(url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with Transport(Settings(**settings)) as transport:
        assert transport.head(url).size == len(BODY)
        assert transport.get_bytes(url) == BODY
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    with Transport(Settings(**settings, verify_tls=False)) as transport:
        assert transport.get_bytes(url) == BODY


def test_a_proxy_that_cannot_be_reached_is_named(monkeypatch):
    # A broken proxy is not the archive being down: the error names it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = Settings(api_url="http://archive.example/empiar/api",
                        data_url="http://archive.example/empiar/world_availability",
                        retries=0, connect_timeout=2.0, ftp_url="")
    with Transport(settings) as transport:
        with pytest.raises(RemoteError, match=f"through the proxy http://127.0.0.1:{port}"):
            transport.head("http://archive.example/empiar/world_availability/1/f.bin")
