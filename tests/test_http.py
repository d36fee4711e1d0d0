"""The transport against a real loopback archive server steered by its
fault knobs (stalls, error bursts, truncation, no ranges, wrong ranges,
redirects), plus unit tests of the pure retry/parsing helpers."""

import email.utils
import json
import os
import random
import socket
import threading
import time

import pytest

from empiarfs.archive_server import ArchiveServer, Faults
from empiarfs.config import Settings
from empiarfs.errors import (
    BadResponse,
    DeadlineExceeded,
    NotFound,
    RemoteError,
    StaleFile,
)
from empiarfs.model import Fingerprint
from empiarfs.remote.transport import (
    RetryPolicy,
    Transport,
    TransportStats,
    parse_content_range,
    parse_retry_after,
)

SIZE = 300_000
FILE = bytes(random.Random(7).getrandbits(8) for _ in range(SIZE))


@pytest.fixture
def tree(tmp_path):
    """A one-entry archive tree (``1/data/file.bin``) and its API record."""
    root = tmp_path / "archive"
    data = root / "world_availability" / "1" / "data"
    data.mkdir(parents=True)
    (data / "file.bin").write_bytes(FILE)
    (data / "not json.txt").write_bytes(b"<html>nope</html>")
    (root / "world_availability" / "1" / "1.xml").write_bytes(b"<entry/>")
    (root / "api").mkdir()
    (root / "api" / "EMPIAR-1.json").write_text(json.dumps({"EMPIAR-1": {"title": "One"}}))
    return root


@pytest.fixture
def server(tree):
    with ArchiveServer(tree, faults=Faults()) as srv:
        yield srv


def make(server, **kw):
    base = dict(api_url=server.api_url, data_url=server.data_url, ftp_url="", connect_timeout=2.0,
                stall_timeout=0.5, hedge_after=0.0, retries=3, backoff_max=0.05)
    base.update(kw)
    return Transport(Settings(**base))


@pytest.fixture
def transport(server):
    with make(server) as t:
        yield t


def url(server, rel="data/file.bin"):
    return f"{server.data_url}/1/{rel}"


def seed_where(probability, pattern):
    """A seed whose first draws fall under (True) / over (False)
    ``probability`` as ``pattern`` says: deterministic fault sequences."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if all((rng.random() < probability) == want for want in pattern):
            return seed
    raise AssertionError("no seed found")


# -- the happy path -----------------------------------------------------------


def test_basic_verbs(server, transport):
    assert transport.get_json(f"{server.api_url}/entry/1/") == {"EMPIAR-1": {"title": "One"}}
    assert transport.get_bytes(url(server, "1.xml")) == b"<entry/>"
    assert "file.bin" in transport.get_text(url(server, "data/"))
    stat = transport.head(url(server))
    assert stat.size == SIZE and stat.etag and stat.last_modified
    assert stat.mtime == pytest.approx(os.stat(server.data_root + "/1/data/file.bin").st_mtime, abs=1)
    snap = transport.stats.snapshot()
    assert snap["requests"] == 4 and snap["retries"] == 0 and snap["errors"] == 0


def test_quickest_ttfb_is_the_links_floor(server, transport):
    """One slow reply (a cold server, a handshake) does not hide a fast
    link: the quickest recent reply tells how far the archive is, while the
    moving average, which paces hedges, remembers the slow one."""
    assert transport.quickest_ttfb is None and transport.typical_ttfb is None
    server.faults.latency = 0.3
    transport.head(url(server))
    server.faults.latency = 0.0
    for _ in range(3):
        transport.head(url(server))
    assert transport.quickest_ttfb < 0.05
    assert transport.typical_ttfb > 0.15


def test_fetch_range_exact_and_clipped(server, transport):
    u = url(server)
    assert transport.fetch_range(u, 0, 10) == FILE[:10]
    assert transport.fetch_range(u, 1000, 70_000) == FILE[1000:70_000]
    assert transport.fetch_range(u, SIZE - 5, SIZE + 100) == FILE[-5:]
    assert transport.fetch_range(u, SIZE, SIZE + 10) == b""          # 416: end of file
    assert transport.fetch_range(u, 50, 50) == b""
    stat = transport.head(u)
    assert transport.fetch_range(u, 7, 9, expect=stat.fingerprint) == FILE[7:9]


def test_404_is_not_found_and_not_retried(server, transport):
    with pytest.raises(NotFound, match="missing.bin"):
        transport.fetch_range(url(server, "data/missing.bin"), 0, 10)
    with pytest.raises(NotFound):
        transport.head(url(server, "data/missing.bin"))
    assert transport.stats.snapshot()["retries"] == 0


def test_other_4xx_is_remote_error_with_status(server, transport):
    server.faults.error_burst(403, count=1)
    with pytest.raises(RemoteError) as info:
        transport.get_bytes(url(server, "1.xml"))
    assert info.value.status == 403 and "403" in str(info.value) and "1.xml" in str(info.value)
    assert transport.stats.snapshot()["retries"] == 0


def test_malformed_json_is_bad_response(server, transport):
    with pytest.raises(BadResponse, match="valid JSON"):
        transport.get_json(url(server, "data/not%20json.txt"))


def test_size_limit(server, transport):
    with pytest.raises(BadResponse, match="too large"):
        transport.get_text(url(server), max_bytes=1000)


# -- retries -----------------------------------------------------------------


def test_stalled_request_times_out_then_succeeds(server, transport):
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, False]), paths="data")
    began = time.monotonic()
    assert transport.get_bytes(url(server, "1.xml")) == b"<entry/>"
    assert time.monotonic() - began < 3
    snap = transport.stats.snapshot()
    assert snap["stalls"] == 1 and snap["retries"] == 1
    assert server.stats.get("faults.stall") == 1


def test_stalled_range_without_hedging_retries(server, transport):
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, False]), paths="data")
    assert transport.fetch_range(url(server), 100, 200) == FILE[100:200]
    assert transport.stats.snapshot()["hedges"] == 0
    assert transport.stats.snapshot()["retries"] == 1


def test_503_burst_is_retried(server, transport):
    server.faults.error_burst(503, count=2)
    assert transport.get_json(f"{server.api_url}/entry/1/")["EMPIAR-1"]["title"] == "One"
    snap = transport.stats.snapshot()
    assert snap["retries"] == 2 and snap["errors_by_kind"]["http_503"] == 2


def test_503_forever_gives_up(server, transport):
    server.faults.error_burst(503, count=10)
    with pytest.raises(RemoteError, match="gave up after 4 attempts") as info:
        transport.head(url(server))
    assert info.value.status == 503


def test_429_retry_after_is_honoured(server, transport):
    server.faults.error_burst(429, count=1, retry_after=1)
    began = time.monotonic()
    assert transport.fetch_range(url(server), 0, 4) == FILE[:4]
    assert 1.0 <= time.monotonic() - began < 3.0


def test_post_is_not_retried_unless_idempotent(server, transport):
    server.faults.error_burst(503, count=1)
    with pytest.raises(RemoteError):
        transport.get_json(f"{server.api_url}/entry/", method="POST", data="1")
    server.faults.error_burst(503, count=1)
    got = transport.get_json(f"{server.api_url}/entry/", method="POST", data="1", idempotent=True)
    assert got == {"EMPIAR-1": {"title": "One"}}


@pytest.mark.parametrize("knob", ["truncate_probability", "reset_probability"])
def test_cut_body_is_retried(server, transport, knob):
    server.faults.set(**{knob: 0.5, "seed": seed_where(0.5, [True, False])}, paths="data")
    assert transport.fetch_range(url(server), 10, 200_010) == FILE[10:200_010]
    assert transport.get_bytes(url(server)) == FILE
    snap = transport.stats.snapshot()
    assert snap["retries"] == 1 and snap["errors"] == 1


def test_refused_connection_fails_quickly():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    settings = Settings(api_url=f"http://127.0.0.1:{port}/api", data_url=f"http://127.0.0.1:{port}/data",
                        ftp_url="", retries=2, backoff_max=0.05, connect_timeout=1.0)
    with Transport(settings) as transport:
        began = time.monotonic()
        with pytest.raises(RemoteError, match="cannot connect to 127.0.0.1") as info:
            transport.fetch_range(f"http://127.0.0.1:{port}/data/x", 0, 10)
        assert not isinstance(info.value, BadResponse)
        assert time.monotonic() - began < 2.0
        assert transport.stats.snapshot()["errors_by_kind"]["connection"] == 3


def test_deadline_stops_retrying(server):
    server.faults.set(stall_probability=1.0, paths="data")
    with make(server, stall_timeout=5.0, retries=10) as transport:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            transport.fetch_range(url(server), 0, 10, deadline=time.monotonic() + 0.6)
        assert time.monotonic() - began < 2.5   # deadline 0.6 s, not 10 retries of a 5 s stall


# -- checked range replies ---------------------------------------------------------


def test_200_instead_of_206(server, transport):
    server.faults.ignore_range = True
    with pytest.raises(BadResponse, match="200 instead of 206"):
        transport.fetch_range(url(server), 100, 200)
    assert transport.fetch_range(url(server), 0, 100) == FILE[:100]
    assert transport.ignores_ranges(url(server))
    # A whole-file reply may come from a proxy that dropped the Range header
    # once, so it is tried again before it is given up as BadResponse.
    assert transport.stats.snapshot()["errors_by_kind"]["ignored_range"] == transport.retry.retries + 1


def test_wrong_content_range(server, transport):
    server.faults.wrong_content_range = True
    with pytest.raises(BadResponse, match="asked .* for bytes 100-199"):
        transport.fetch_range(url(server), 100, 200)


def test_stale_file_when_rewritten(server, transport):
    u = url(server)
    fingerprint = transport.head(u).fingerprint
    assert transport.fetch_range(u, 0, 10, expect=fingerprint) == FILE[:10]
    path = os.path.join(server.data_root, "1", "data", "file.bin")
    with open(path, "wb") as fh:  # same size, new content and mtime -> new ETag
        fh.write(bytes(reversed(FILE)))
    os.utime(path, (time.time() + 10, time.time() + 10))
    with pytest.raises(StaleFile, match="changed on the archive"):
        transport.fetch_range(u, 0, 10, expect=fingerprint)
    with open(path, "ab") as fh:  # a longer file
        fh.write(b"more")
    with pytest.raises(StaleFile, match=f"size {SIZE} -> {SIZE + 4}"):
        transport.fetch_range(u, 100, 110, expect=Fingerprint(SIZE))
    # Each change was confirmed by one more request before it was believed.
    stats = transport.stats.snapshot()
    assert stats["retries"] == 2 and stats["errors_by_kind"] == {"version_mismatch": 4}


def test_stale_when_file_shrank_past_offset(server, transport):
    with pytest.raises(StaleFile):
        transport.fetch_range(url(server), SIZE + 10, SIZE + 20, expect=Fingerprint(SIZE + 100))


# -- redirects ---------------------------------------------------------------


def test_redirect_to_other_host_refused(server, transport):
    server.faults.redirect_to = f"http://localhost:{server.port}/elsewhere"
    with pytest.raises(BadResponse, match="refusing redirect to other host 'localhost'"):
        transport.fetch_range(url(server), 0, 10)


def test_redirect_to_configured_host_followed(server, tree):
    with ArchiveServer(tree) as mirror, make(server) as transport:
        server.faults.redirect_to = mirror.url  # same host (127.0.0.1), other port
        assert transport.fetch_range(url(server), 5, 15) == FILE[5:15]
        assert mirror.stats.get("requests") >= 1


# -- hedging -----------------------------------------------------------------


def test_listings_and_heads_are_hedged_too(server):
    # A directory listing that never answers must not hold `ls` for the
    # whole stall timeout.
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, False, True, False]),
                      paths="data")
    with make(server, hedge_after=0.2, stall_timeout=5.0) as transport:
        began = time.monotonic()
        assert transport.get_bytes(url(server, "1.xml")) == b"<entry/>"
        assert transport.head(url(server)).size == len(FILE)
        assert time.monotonic() - began < 3.0
        snap = transport.stats.snapshot()
        assert snap["hedges"] == 2 and snap["retries"] == 0


def test_a_stalled_hedge_is_hedged_again(server):
    # The request and its first hedge both stall (1 in 900 on EMPIAR): a
    # third attempt answers, instead of waiting out the 5 s stall timeout.
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, True, False]), paths="data")
    with make(server, hedge_after=0.2, stall_timeout=5.0) as transport:
        began = time.monotonic()
        assert transport.fetch_range(url(server), 1000, 2000) == FILE[1000:2000]
        assert time.monotonic() - began < 3.0
        snap = transport.stats.snapshot()
        assert snap["hedges"] == 2 and snap["retries"] == 0
        assert server.stats.get("faults.stall") == 2


class _SilentFirstServer:
    """Never answers its first connection's request and records when the
    client closes that connection; answers every other HEAD at once."""

    def __init__(self):
        self.loser_closed_at = None
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._first = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/empiar/world_availability/1/f.bin"

    def _accept(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            silent, self._first = self._first, False
            threading.Thread(target=self._serve, args=(conn, silent), daemon=True).start()

    def _serve(self, conn, silent):
        with conn:
            conn.settimeout(30)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            if silent:
                while conn.recv(65536):   # until the client gives up on it
                    pass
                self.loser_closed_at = time.monotonic()
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nAccept-Ranges: bytes\r\n"
                         b"Connection: close\r\n\r\n")

    def close(self):
        self._sock.close()


def test_a_hedge_that_wins_cuts_the_losers_connection():
    # A never-answered attempt must not keep its pooled connection (and a
    # request in flight at the archive) until the stall timeout: with the
    # pool full of such losers, a 3,000-file listing's HEADs ran at a third
    # of their speed on the tcp-wan bench.
    server = _SilentFirstServer()
    settings = Settings(api_url="http://127.0.0.1:1/api", data_url=server.url.rsplit("/1/", 1)[0],
                        ftp_url="", hedge_after=0.2, stall_timeout=8.0, retries=0)
    try:
        with Transport(settings) as transport:
            assert transport.head(server.url).size == 1234
            answered = time.monotonic()
            assert transport.stats.snapshot()["hedges"] == 1
            while server.loser_closed_at is None and time.monotonic() - answered < 10:
                time.sleep(0.05)
            assert server.loser_closed_at is not None
            assert server.loser_closed_at - answered < 2.0, "the loser waited for its stall timeout"
    finally:
        server.close()


def test_three_silent_attempts_do_not_wait_for_the_stall_timeout(server):
    # All three attempts in flight stay silent (the ls -l tail on tcp-wan):
    # the oldest is cut and a fourth goes out, instead of a 5 s stall.
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, True, True, False]),
                      paths="data")
    with make(server, hedge_after=0.2, stall_timeout=5.0) as transport:
        began = time.monotonic()
        assert transport.head(url(server)).size == len(FILE)
        assert time.monotonic() - began < 4.0   # hedges after 0.25, 0.5 and 1 s
        snap = transport.stats.snapshot()
        assert snap["hedges"] == 3 and snap["retries"] == 0 and snap["stalls"] == 0
        assert server.stats.get("faults.stall") == 3


def test_probe_gives_the_size_validators_and_first_bytes_in_one_request(server, transport):
    stat, first = transport.probe(url(server), 4096)
    assert stat.size == len(FILE) and first == FILE[:4096]
    assert stat == transport.head(url(server))   # what a HEAD says, word for word
    assert server.stats.get("requests.file") == 1


def test_probe_of_a_file_shorter_than_asked(server, transport):
    stat, first = transport.probe(url(server, "1.xml"), 4096)
    assert (stat.size, first) == (8, b"<entry/>")


def test_probe_of_an_empty_file(server, tree, transport):
    (tree / "world_availability" / "1" / "data" / "empty.bin").write_bytes(b"")
    stat, first = transport.probe(url(server, "data/empty.bin"), 4096)
    assert (stat.size, first) == (0, b"")


def test_probe_when_the_server_ignores_ranges(server, transport):
    # A 200 with the whole file: the size is its Content-Length and only
    # the first bytes are read.
    server.faults.set(ignore_range=True)
    stat, first = transport.probe(url(server), 4096)
    assert stat.size == len(FILE) and first == FILE[:4096]
    assert transport.stats.snapshot()["bytes"] < len(FILE)


def test_probe_of_a_missing_file_is_not_found(server, transport):
    with pytest.raises(NotFound):
        transport.probe(url(server, "data/nope.bin"), 4096)


def test_hedging_under_stall(server):
    server.faults.set(stall_probability=0.5, seed=seed_where(0.5, [True, False]), paths="data")
    with make(server, hedge_after=0.2, stall_timeout=5.0) as transport:
        began = time.monotonic()
        assert transport.fetch_range(url(server), 1000, 2000) == FILE[1000:2000]
        assert time.monotonic() - began < 3.0   # not the 5 s stall timeout
        snap = transport.stats.snapshot()
        assert snap["hedges"] == 1 and snap["retries"] == 0


def test_no_hedge_when_fast(server):
    with make(server, hedge_after=1.0) as transport:
        for start in range(0, 50_000, 5_000):
            assert transport.fetch_range(url(server), start, start + 5_000) == FILE[start:start + 5_000]
        assert transport.stats.snapshot()["hedges"] == 0


def test_concurrent_reads_share_the_pool(server):
    with make(server, parallel_total=4, hedge_after=0.5) as transport:
        errors = []

        def worker(i):
            try:
                start = i * 10_000
                assert transport.fetch_range(url(server), start, start + 10_000) == FILE[start:start + 10_000]
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors
        assert transport.stats.snapshot()["requests"] == 20


# -- pure helpers ------------------------------------------------------------


def test_retry_policy_is_a_value():
    policy = RetryPolicy(retries=2, backoff_base=0.5, backoff_max=1.0, retry_after_max=3.0)
    with pytest.raises(AttributeError):
        policy.retries = 5
    assert policy.allows("GET", 0) and policy.allows("HEAD", 1) and not policy.allows("GET", 2)
    assert not policy.allows("POST", 0) and policy.allows("POST", 0, idempotent=True)
    for n in range(1, 10):
        assert 0 < policy.backoff(n) <= 1.0
    assert policy.backoff(1, retry_after=2.0) == 2.0
    assert policy.backoff(1, retry_after=100.0) == 3.0


def test_parse_retry_after():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_parse_content_range():
    assert parse_content_range("bytes 0-99/1000") == (0, 99, 1000)
    assert parse_content_range("bytes 5-9/*") == (5, 9, None)
    assert parse_content_range("bytes */1000") == (None, None, 1000)
    for bad in ("", "bytes 5/10", "items 0-1/2", None):
        with pytest.raises(BadResponse):
            parse_content_range(bad)


def test_stats_are_thread_safe():
    stats = TransportStats()

    def bump():
        for _ in range(10_000):
            stats.add("requests")
            stats.error("stall")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = stats.snapshot()
    assert snap["requests"] == 40_000 and snap["errors_by_kind"] == {"stall": 40_000}


def test_heads_and_range_reads_reuse_their_connections(server, transport):
    """A HEAD closed unread made requests close its socket: every HEAD of
    an `ls -l` paid a new TCP handshake (one RTT on a WAN)."""
    u = url(server)
    before = server.stats.get("connections")
    for _ in range(5):
        transport.head(u)
    for start in range(0, 500, 100):
        transport.fetch_range(u, start, start + 100)
    assert server.stats.get("connections") - before == 1
