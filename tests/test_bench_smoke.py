"""Smoke tests of scripts/bench: tiny sizes, end to end, no timing claims
about empiarfs; and the TCP-level WAN proxy's model, timed on loopback.

The benchmark itself is not part of CI (it takes minutes); these check that
it generates its archive, serves it (the project's server, Apache, the WAN
proxy), mounts empiarfs and the peers, runs the workloads and the
references, prints ratios, the peer table and PASS/MISS lines, reports a
filesystem that hangs as hung at its time limit, and writes its JSON record.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from support.mounting import fuse_available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "scripts", "bench")
WANPROXY = os.path.join(REPO, "scripts", "bench_lib", "wanproxy.py")

needs_fuse = pytest.mark.skipif(fuse_available() is not None,
                                reason=f"FUSE unavailable: {fuse_available()}")
needs_curl = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="curl not installed (scripts/setup)")


def _bench(args, timeout):
    run = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=timeout,
                         env=dict(os.environ, PYTHON=sys.executable))
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _record(results):
    (path,) = glob.glob(str(results / "*.json"))
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.mark.fuse
@needs_fuse
@needs_curl
def test_bench_quick_runs_end_to_end(tmp_path):
    results = tmp_path / "results"
    # Both profiles, a few workloads (the stall one included); a short
    # stall timeout so a stalled fetch does not hold up the unmount.
    out = _bench(["--quick", "--profile", "both", "--peers", "none", "--workdir",
                  str(tmp_path / "work"), "--results", str(results),
                  "--only", "sequential,header_scan,random_reads,stalls",
                  "--mount-env", "EMPIARFS_STALL_TIMEOUT=2"], timeout=120)
    for profile in ("loopback", "wan"):
        assert f"=== profile {profile}" in out
    assert "cold  sequential / curl" in out and "warm  sequential / local" in out
    assert "PASS" in out or "MISS" in out
    assert "workload failed" not in out, out
    record = _record(results)
    wan = record["profiles"]["wan"]
    seq = wan["workloads"]["sequential"]
    assert seq["bytes"] == 8 << 20 and seq["cold_server_bytes"] >= seq["bytes"]
    assert wan["references"]["curl"]["mbps"] > 0
    # 12 reads asked for, but the 8 MiB quick file has only 8 distinct MiB.
    assert wan["workloads"]["stalls"]["reads"] == 8
    assert {r["target"] for r in wan["targets"]} >= {
        "cold sequential / aria2c -x16", "1 MiB read p99 under stalls", "daemon peak RSS"}
    assert not wan["errors"] and not record["profiles"]["loopback"]["errors"]


@pytest.mark.apache
@pytest.mark.fuse
@needs_fuse
@needs_curl
@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed (scripts/setup)")
def test_bench_peers_side_by_side_and_hung_at_time_limit(tmp_path):
    """Loopback on Apache: rclone and fsspec.fuse run the same workloads and
    the table gives empiarfs's ratio to the best one. tcp-wan with every
    request unanswered: every filesystem is killed at the time limit and
    reported hung, not dropped, and nothing stays mounted."""
    results = tmp_path / "results"
    # Apache's workers run as nobody: the archive must not sit under
    # pytest's 0700 temporary directory.
    work = tempfile.mkdtemp(prefix="empiarfs-bench-")
    os.chmod(work, 0o755)
    try:
        _peers_and_hung(results, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _peers_and_hung(results, work):
    out = _bench(["--quick", "--profile", "loopback,tcp-wan", "--server", "apache",
                  "--tcp-wan", "rtt=0.02,stall=1", "--peers", "rclone,fsspec",
                  "--only", "sequential,listing", "--time-limit", "3",
                  "--workdir", str(work), "--results", str(results)], timeout=240)
    assert "=== profile tcp-wan: RTT 20 ms" in out
    assert "empiarfs / best peer" in out and "hung at 3 s" in out
    record = _record(results)
    loop = record["profiles"]["loopback"]
    assert loop["server"] == "Apache httpd" and not loop["peer_errors"], loop["peer_errors"]
    for peer in ("rclone", "fsspec"):
        seq = loop["peers"][peer]["sequential"]
        assert seq["cold_mbps"] > 0 and seq["cold_server_bytes"] >= seq["bytes"] > 10 << 20
        assert loop["peers"][peer]["listing"]["files"] >= 120
    rows = {(r["workload"], r["metric"]): r for r in loop["comparison"]}
    cold = rows[("sequential", "cold_mbps")]
    best = max(cold["peers"].values(), key=lambda c: c["value"])["value"]
    assert cold["vs_best_peer"]["ratio"] == pytest.approx(cold["empiarfs"]["value"] / best)
    assert cold["references"]["curl"] > 0
    ls = rows[("listing", "cold_seconds")]
    fastest = min(c["value"] for c in ls["peers"].values())
    assert ls["vs_best_peer"]["ratio"] == pytest.approx(fastest / ls["empiarfs"]["value"])

    wan = record["profiles"]["tcp-wan"]
    assert wan["server"].startswith("Apache httpd behind the TCP-level WAN proxy")
    for results_of in (wan["workloads"], wan["peers"]["rclone"], wan["peers"]["fsspec"]):
        assert results_of["sequential"]["hung"] == 3 and results_of["listing"]["hung"] == 3
    assert any(t["target"] == "sequential within the 3 s time limit" and t["pass"] is False
               for t in wan["targets"])
    for name in ("mnt", "mnt-rclone", "mnt-fsspec"):
        assert not os.path.ismount(os.path.join(work, "quick", name))


# ------------------------------------------------------------ the WAN proxy

class Proxy:
    """wanproxy.py as the benchmark runs it: a child process on stdin."""

    def __init__(self, upstream: str, *knobs: str):
        self.proc = subprocess.Popen([sys.executable, WANPROXY, "--upstream", f"data={upstream}",
                                      *knobs], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        url = json.loads(self.proc.stdout.readline())["data"]
        self.host, self.port = url.split("//", 1)[1].split(":")
        self.port = int(self.port)

    def command(self, text: str) -> dict:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self.command("stats")["data"]

    def connect(self, timeout: float = 10) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


def _origin(url: str) -> str:
    return "/".join(url.split("/", 3)[:3])


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _timed(conn, method, path, headers=None):
    began = time.monotonic()
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    return time.monotonic() - began, resp, body


@pytest.fixture
def proxy(archive_server):
    # RTT 100 ms, at most 64,000 bytes in flight, slow start from 8,000.
    p = Proxy(_origin(archive_server.data_url), "--rtt", "0.1", "--window", "64000",
              "--initial-window", "8000", "--stall", "0")
    yield p
    p.close()


def test_wanproxy_round_trips_window_and_slow_start(proxy, archive_server, sample_root):
    path = _path(archive_server.data_url) + "/10002/data/102_movie_gc.mrcs"
    source = os.path.join(sample_root, "world_availability", "10002", "data", "102_movie_gc.mrcs")
    size = os.path.getsize(source)
    conn = proxy.connect()
    # A new connection: the handshake's round trip, then the request's.
    t, resp, _ = _timed(conn, "HEAD", path)
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == size
    assert 0.195 <= t < 0.35
    t, resp, _ = _timed(conn, "HEAD", path)   # kept alive: one round trip
    assert 0.095 <= t < 0.19
    rng = {"Range": "bytes=0-262143"}
    # 256 KiB + headers after idle: rounds of 8, 16, 32, 64, 64, 64, 64 KB = 7
    # round trips (then half of one each way for request and last byte).
    time.sleep(0.5)
    t_cold, resp, body = _timed(conn, "GET", path, rng)
    assert resp.status == 206 and len(body) == 262144
    assert 0.68 <= t_cold < 1.0
    # At once on the warm connection the window is 64 KB: 5 round trips.
    t_warm, _, body = _timed(conn, "GET", path, rng)
    assert len(body) == 262144
    assert 0.48 <= t_warm < 0.66
    # Idle longer than RTT + 200 ms: slow start again.
    time.sleep(0.5)
    t_again, _, _ = _timed(conn, "GET", path, rng)
    assert 0.68 <= t_again < 1.0
    conn.close()
    with open(source, "rb") as fh:
        assert body == fh.read(262144)
    s = proxy.stats()
    assert s["requests.head"] == 2 and s["requests.file"] == 3 and s["connections"] == 1
    assert s["bytes_sent"] >= 3 * 262144


def test_wanproxy_never_answered_and_in_flight(proxy, archive_server):
    path = _path(archive_server.data_url) + "/10002/data/100_movie_gc.mrcs"
    proxy.command("reset")
    # Four clients at once: four requests in flight to the one host.
    barrier = threading.Barrier(4)

    def one():
        conn = proxy.connect()
        barrier.wait()
        _timed(conn, "GET", path, {"Range": "bytes=0-99999"})
        conn.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    s = proxy.stats()
    assert s["max_in_flight"] == 4 and s["requests.file"] == 4
    assert proxy.command("set stall=1")["stall"] == 1
    sock = socket.create_connection((proxy.host, proxy.port), timeout=0.6)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    with pytest.raises(socket.timeout):
        sock.recv(1)   # accepted, never answered
    s = proxy.stats()
    assert s["faults.stall"] == 1 and s["in_flight"] == 1
    sock.close()
    deadline = time.monotonic() + 5
    while proxy.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.stats()["in_flight"] == 0
    proxy.command("set stall=0")
    conn = proxy.connect()
    _, resp, body = _timed(conn, "GET", path, {"Range": "bytes=0-9"})
    assert resp.status == 206 and len(body) == 10
    conn.close()


@pytest.mark.apache
def test_wanproxy_frames_chunked_listings_on_kept_connections(apache_twin):
    """Apache sends autoindex pages chunked: the proxy must see where each
    ends to count requests in flight, and the connection must carry on."""
    p = Proxy(_origin(apache_twin.data_url), "--rtt", "0.02", "--stall", "0")
    try:
        conn = p.connect()
        listing = _path(apache_twin.data_url) + "/10943/data/Tiff/"
        _, resp, body = _timed(conn, "GET", listing)
        assert resp.status == 200 and resp.headers.get("Transfer-Encoding") == "chunked"
        assert body.count(b"<tr>") > 3000
        assert p.stats()["in_flight"] == 0
        _, resp, body = _timed(conn, "GET", _path(apache_twin.data_url) + "/10002/data/")
        assert resp.status == 200 and b"102_movie_gc.mrcs" in body
        s = p.stats()
        assert s["requests.listing"] == 2 and s["connections"] == 1 and s["in_flight"] == 0
        conn.close()
    finally:
        p.close()
