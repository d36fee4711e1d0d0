"""The site cache tier: nginx's configuration from `empiarfs site-cache`, the
node's router between the site cache and the origin, and real nginx on
loopback in front of the project's server, read through real mounts.

The mount tests share one archive of about 105 MiB of random files
(EMPIAR-10002/data/site/) served by the project's server; each test starts
its own nginx on a cold cache, and each node (a mount) has its own disk
cache. The origin's byte counter says what crossed the "WAN".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from support.archive import settings_for
from support.mounting import EMPIARFS, mounted, requires_fuse, stats

from empiarfs.archive_server import ArchiveServer
from empiarfs.archive_server.sample import make_sample
from empiarfs.config import MiB, Settings
from empiarfs.errors import InvalidInput, StaleFile
from empiarfs.model import Fingerprint
from empiarfs.remote.site_route import SiteRoute
from empiarfs.remote.transport import Transport
from empiarfs.tools import site_cache as tool

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
requires_nginx = pytest.mark.skipif(
    not os.access(NGINX, os.X_OK), reason="nginx not installed (scripts/setup installs it)")

ENTRY = "EMPIAR-10002"
SITE_DIR = "data/site"
# (name, size): odd sizes end inside a slice; ~105 MiB in all.
SET = [("a.mrcs", 24 * MiB + 12345), ("b.mrcs", 24 * MiB), ("c.mrcs", 20 * MiB + 777),
       ("d.mrcs", 16 * MiB), ("e.mrcs", 12 * MiB + 4321), ("f.mrcs", 8 * MiB + 1),
       ("g.bin", MiB - 3), ("h.star", 100 * 1024)]
CHANGING = "changing.bin"


# --------------------------------------------------------------------------
# Helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _open_dir(prefix: str) -> str:
    """A temp dir nginx's unprivileged workers can traverse (pytest's
    tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


class Site:
    """nginx on loopback with a generated configuration, in its own process
    group so a test can kill master and workers at once."""

    def __init__(self, upstream: str, ttl="300", port: int | None = None, cache_dir=None):
        self.cache_dir = cache_dir or _open_dir("empiarfs-site-")
        self.opts = tool.options(f"127.0.0.1:{port or _free_port()}", self.cache_dir, "1G",
                                 upstream, ttl=ttl,
                                 access_log=os.path.join(self.cache_dir, "access.log"))
        self.url = self.opts.url
        self.proc = None

    def start(self) -> "Site":
        tool.check(self.opts, NGINX)
        # nginx's error log (stderr) goes to a file: a pipe nobody reads
        # would block it once full.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(tool.command(self.opts, NGINX), start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            try:
                if requests.get(self.url + tool.HEALTH_PATH, timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nginx did not start: {self.errors()[-2000:]}")
            time.sleep(0.05)

    @property
    def log_path(self) -> str:
        return os.path.join(self.cache_dir, "error.log")

    def kill(self) -> None:
        """SIGKILL master and workers: connections drop mid-reply."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def errors(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def cache_keys(self) -> list[str]:
        """The keys of everything nginx has cached (each cache file's KEY line)."""
        keys = []
        for folder, _, names in os.walk(os.path.join(self.cache_dir, "cache")):
            for name in names:
                with open(os.path.join(folder, name), "rb") as handle:
                    head = handle.read(4096)
                found = re.search(rb"\nKEY: ([^\n]*)\n", head)
                if found:
                    keys.append(found.group(1).decode(errors="replace"))
        return keys

    def access_lines(self) -> list[str]:
        try:
            with open(os.path.join(self.cache_dir, "access.log")) as handle:
                return handle.read().splitlines()
        except FileNotFoundError:
            return []

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.cache_dir, ignore_errors=True)


@contextlib.contextmanager
def running_site(upstream: str, **kw):
    site = Site(upstream, **kw).start()
    try:
        yield site
    finally:
        site.close()


def _node_settings(origin, tmp_path, name, **overrides):
    values = dict(ftp_url="", memory_cache=32 * MiB)
    values.update(overrides)
    return settings_for(origin, tmp_path / name, **values)


@contextlib.contextmanager
def nodes(origin, site, tmp_path, count, **overrides):
    """``count`` mounts of the origin's archive, each with its own cache,
    all sending their requests to ``site``."""
    with contextlib.ExitStack() as stack:
        points = []
        for i in range(count):
            settings = _node_settings(origin, tmp_path, f"node{i}", **overrides)
            points.append(stack.enter_context(
                mounted(settings, tmp_path / f"mnt{i}", "--site-cache", site.url)))
        yield points


def read_file(path: str, size: int, pattern: str, seed: int) -> str:
    """SHA-256 of a whole file read sequentially (1 MiB reads) or in a
    random order of 256 KiB pieces that covers it."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        if pattern == "sequential":
            while True:
                block = os.read(fd, MiB)
                if not block:
                    break
                digest.update(block)
        else:
            piece = 256 * 1024
            offsets = list(range(0, size, piece))
            random.Random(seed).shuffle(offsets)
            data = bytearray(size)
            for offset in offsets:
                chunk = os.pread(fd, piece, offset)
                data[offset:offset + len(chunk)] = chunk
            digest.update(data)
    finally:
        os.close(fd)
    return digest.hexdigest()


def read_set(mountpoint, files, seed) -> None:
    """Read every file of the set through ``mountpoint``, half sequentially
    and half at random, and check each one's bytes."""
    for i, (name, size, sha) in enumerate(files):
        pattern = "sequential" if (i + seed) % 2 == 0 else "random"
        path = os.path.join(mountpoint, ENTRY, SITE_DIR, name)
        assert read_file(path, size, pattern, seed) == sha, f"{name} ({pattern}) through {mountpoint}"


def read_in_parallel(points, files) -> None:
    errors = []

    def run(i, point):
        try:
            read_set(point, files, seed=i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(points)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _site_stats(point) -> dict:
    return stats(point)["network"]["site_cache"]


def _report(name, nodes_, unique, origin_bytes, seconds):
    """One line per measurement, for docs/performance.md (pytest -s shows it)."""
    print(f"\nSITE-CACHE {name}: nodes={nodes_} read={nodes_ * unique} unique={unique} "
          f"origin={origin_bytes} ratio={origin_bytes / unique:.3f} seconds={seconds:.1f}")


# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def archive_root():
    """The sample archive (no many-files directory) plus the site set."""
    root = _open_dir("empiarfs-site-archive-")
    make_sample(root, seed=0, many_files=0)
    folder = os.path.join(root, "world_availability", "10002", SITE_DIR)
    os.makedirs(folder)
    rng = np.random.default_rng(14)
    files = []
    for name, size in SET:
        data = rng.bytes(size)
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
        files.append((name, size, hashlib.sha256(data).hexdigest()))
    with open(os.path.join(folder, CHANGING), "wb") as handle:
        handle.write(rng.bytes(3 * MiB + 5))
    yield SimpleNamespace(root=root, folder=folder, files=files,
                          unique=sum(size for _, size, _ in files))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def origin(archive_root):
    with ArchiveServer(archive_root.root) as server:
        yield server


# --------------------------------------------------------------------------
# The configuration


def test_options_are_validated_with_one_clear_line():
    good = dict(listen="0.0.0.0:3128", cache_dir="/var/cache/empiarfs-site", max_size="200G")
    assert tool.options(**good).max_size == 200 * 1024 ** 3
    bad = [
        (dict(good, listen="3128"), "HOST:PORT"),
        (dict(good, listen="0.0.0.0:70000"), "port"),
        (dict(good, listen="bad host:80"), "not an address"),
        (dict(good, cache_dir="cache"), "absolute"),
        (dict(good, cache_dir="/tmp/a;b"), "characters"),
        (dict(good, max_size="lots"), "not a size"),
        (dict(good, max_size="1M"), "too small"),
        (dict(good, upstream="ftp://mirror"), "http://HOST"),
        (dict(good, upstream="http://mirror/empiar"), "without a path"),
        (dict(good, slice_size="3M"), "power of two"),
        (dict(good, ttl="soon"), "duration"),
        (dict(good, user="Root User"), "user name"),
    ]
    for kwargs, words in bad:
        with pytest.raises(InvalidInput, match=words):
            tool.options(**kwargs)


def test_default_upstream_is_empiar_over_https():
    text = tool.render(tool.options("0.0.0.0:3128", "/var/cache/site", "200G", slice_size="1M"))
    assert "server www.ebi.ac.uk:443 max_fails=0;" in text
    assert "server ftp.ebi.ac.uk:443 max_fails=0;" in text
    assert "proxy_ssl_verify on;" in text and "proxy_ssl_server_name on;" in text
    assert "proxy_set_header Host ftp.ebi.ac.uk;" in text
    assert "proxy_cache_path /var/cache/site/cache levels=1:2" in text and "max_size=200g" in text
    assert text.count("slice 1m;") == 2
    assert "proxy_cache_lock on;" in text
    assert "proxy_cache_key" in text and "$slice_range" in text and "$http_if_match" in text
    # 200G of 1 MiB slices: ~256k keys, more than nginx's default 10m zone.
    assert tool.keys_zone_mib(tool.options("0.0.0.0:3128", "/c", "200G")) >= 64


@requires_nginx
def test_nginx_accepts_the_configuration(origin):
    site = Site(origin.url, ttl="5m")
    try:
        tool.check(site.opts, NGINX)           # raises with nginx's message if not
        with open(site.opts.config_path) as handle:
            text = handle.read()
        assert f"server 127.0.0.1:{origin.port} max_fails=0;" in text
        assert "proxy_cache_valid 200 206 301 302 300s;" in text
    finally:
        site.close()


@requires_nginx
def test_cli_prints_configuration_and_rejects_bad_input(tmp_path):
    result = subprocess.run([EMPIARFS, "site-cache", "--listen", "127.0.0.1:3128", "--cache-dir",
                             "/var/cache/empiarfs-site", "--max-size", "200G"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# empiarfs site cache")
    assert "listen 127.0.0.1:3128;" in result.stdout
    result = subprocess.run([EMPIARFS, "site-cache", "--listen", "127.0.0.1:3128", "--cache-dir",
                             "relative/dir", "--max-size", "200G"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "empiarfs: error: --cache-dir must be an absolute path, not 'relative/dir'"]


@requires_nginx
def test_cli_run_serves_until_sigterm(origin, archive_root):
    cache_dir = _open_dir("empiarfs-site-run-")
    port = _free_port()
    proc = subprocess.Popen([EMPIARFS, "site-cache", "--listen", f"127.0.0.1:{port}",
                             "--cache-dir", cache_dir, "--max-size", "64M",
                             "--upstream", origin.url, "--run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/empiar/world_availability/10002/{SITE_DIR}/g.bin"
        deadline = time.monotonic() + 15
        while True:
            try:
                reply = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=2)
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "site cache did not come up"
                time.sleep(0.05)
        with open(os.path.join(archive_root.folder, "g.bin"), "rb") as handle:
            assert reply.status_code == 206 and reply.content == handle.read()[10:20]
        with open(os.path.join(cache_dir, "nginx.pid")) as handle:
            master = int(handle.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert "nodes: site_cache = http://127.0.0.1:" in proc.stderr.read()
        with pytest.raises(ProcessLookupError):
            os.kill(master, 0)
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        shutil.rmtree(cache_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# The setting


def test_site_cache_setting_from_env_file_and_option(tmp_path):
    env = {"EMPIARFS_CONFIG": "/nonexistent", "EMPIARFS_SITE_CACHE": "http://cache1:3128/"}
    assert Settings.load(env=env).site_cache == "http://cache1:3128"
    ini = tmp_path / "config.ini"
    ini.write_text("[empiarfs]\nsite_cache = http://cache2:3128\n")
    assert Settings.load(config_file=str(ini), env={}).site_cache == "http://cache2:3128"
    assert Settings.load(config_file=str(ini), env={}, site_cache="").site_cache == ""
    for wrong in ("cache1:3128", "http://cache1:3128/path", "ftp://cache1", "http://h:99999"):
        with pytest.raises(InvalidInput, match="site_cache"):
            Settings.load(env={"EMPIARFS_CONFIG": "/nonexistent"}, site_cache=wrong)


@requires_nginx
def test_cli_option_sends_requests_through_the_site_cache(origin, tmp_path):
    with running_site(origin.url) as site:
        env = dict(os.environ, EMPIARFS_CONFIG="/nonexistent", EMPIARFS_API_URL=origin.api_url,
                   EMPIARFS_DATA_URL=origin.data_url, EMPIARFS_FTP_URL="",
                   EMPIARFS_CACHE_DIR=str(tmp_path / "cache"))
        result = subprocess.run([EMPIARFS, "info", ENTRY, "--site-cache", site.url], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert any("/empiar/api/entry/" in line for line in site.access_lines())


# --------------------------------------------------------------------------
# The router (pure logic)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _router(clock):
    return SiteRoute("http://cache:3128/", ["https://www.ebi.ac.uk/empiar/api",
                                            "https://ftp.ebi.ac.uk/empiar/world_availability"],
                     retry_after=2.0, retry_max=8.0, clock=clock)


def test_router_maps_archive_urls_to_the_same_path_on_the_site_cache():
    router = _router(Clock())
    assert router.site_url_for("https://www.ebi.ac.uk/empiar/api/entry/10002/") == \
        "http://cache:3128/empiar/api/entry/10002/"
    assert router.site_url_for("https://ftp.ebi.ac.uk/empiar/world_availability/10002/data/a%20b.mrcs") == \
        "http://cache:3128/empiar/world_availability/10002/data/a%20b.mrcs"
    assert router.site_url_for("https://www.ebi.ac.uk/empiar/api/search?q=x") == \
        "http://cache:3128/empiar/api/search?q=x"
    assert router.origin_url_for("http://cache:3128/empiar/world_availability/1/x.mrcs") == \
        "https://ftp.ebi.ac.uk/empiar/world_availability/1/x.mrcs"
    assert router.origin_url_for("http://cache:3128/other/x") is None
    assert router.origin_url_for("https://ftp.ebi.ac.uk/empiar/world_availability/1/") is None
    for other in ("ftp://ftp.ebi.ac.uk/empiar/world_availability/10002/",
                  "https://www.ebi.ac.uk/empiar/api2/x", "https://elsewhere.org/empiar/api/x"):
        assert router.site_url_for(other) is None
        route = router.route(other)
        assert route.url == other and not route.via_site
    with pytest.raises(ValueError):
        SiteRoute("cache:3128", [])


def test_router_fails_over_and_probes_back_after_a_backoff():
    clock = Clock()
    router = _router(clock)
    url = "https://ftp.ebi.ac.uk/empiar/world_availability/10002/data/x"
    first, inflight = router.route(url), router.route(url)
    assert first.via_site and first.url.startswith("http://cache:3128/")
    router.report(first, False, "connection refused")
    # An attempt sent before the failure neither doubles it nor ends it.
    router.report(inflight, False, "connection refused")
    router.report(inflight, True)
    assert router.snapshot()["failovers"] == 1 and router.snapshot()["state"] == "down"
    assert not router.route(url).via_site             # the origin, for the back-off
    clock.now += 2.1
    probe = router.route(url)
    assert probe.via_site and probe.probe
    assert not router.route(url).via_site             # one probe at a time
    router.report(probe, False, "stalled")            # still down: back-off doubles
    clock.now += 2.1
    assert not router.route(url).via_site
    clock.now += 2.0
    probe = router.route(url)
    assert probe.probe
    router.report(probe, True)
    snap = router.snapshot()
    assert snap["state"] == "up" and snap["recoveries"] == 1 and snap["failovers"] == 1
    assert snap["via_origin"] == 3 and snap["site_failures"] == 3
    assert snap["last_failure"] == "stalled"
    again = router.route(url)
    assert again.via_site and not again.probe


def test_router_probe_that_never_reports_does_not_block_forever():
    clock = Clock()
    router = _router(clock)
    url = "https://www.ebi.ac.uk/empiar/api/entry/1"
    router.report(router.route(url), False, "reset")
    clock.now += 2.1
    lost = router.route(url)
    assert lost.probe
    clock.now += 1.0
    assert not router.route(url).via_site
    clock.now += 8.0                                  # longer than retry_max
    assert router.route(url).probe
    router.forget_probe(lost)
    assert router.snapshot()["state"] == "down"


# --------------------------------------------------------------------------
# Real nginx in front of the project's server


@requires_nginx
def test_slices_of_one_request_never_mix_versions(origin, archive_root):
    """nginx's slice module fails a reply whose slices carry different
    ETags; an If-Match reply of another version is neither cached nor
    served (412)."""
    path = os.path.join(archive_root.folder, "f.mrcs")
    url_path = f"/empiar/world_availability/10002/{SITE_DIR}/f.mrcs"
    with open(path, "rb") as handle:
        v1 = handle.read()
    etag1 = requests.head(origin.url + url_path, timeout=5).headers["ETag"]
    with running_site(origin.url) as site:
        url = site.url + url_path
        for headers in ({}, {"If-Match": etag1}):      # slice 0 cached, old version
            assert requests.get(url, headers={"Range": "bytes=0-9", **headers}, timeout=5).content == v1[:10]
        v2 = _rewrite(path, v1)
        try:
            for headers in ({}, {"If-Match": etag1}):
                reply = requests.get(url, headers={"Range": f"bytes=0-{3 * MiB}", **headers},
                                     timeout=5, stream=True)
                body = b""
                with pytest.raises(requests.exceptions.ChunkedEncodingError):
                    for chunk in reply.iter_content(65536):
                        body += chunk
                assert v1.startswith(body) and len(body) < 3 * MiB   # cut, never mixed
            etag2 = requests.head(origin.url + url_path, timeout=5).headers["ETag"]
            assert requests.get(url, headers={"Range": "bytes=0-9", "If-Match": etag2},
                                timeout=5).content == v2[:10]
            stale = requests.get(url, headers={"Range": f"bytes={2 * MiB}-{2 * MiB + 9}",
                                               "If-Match": etag1}, timeout=5)
            assert stale.status_code == 412
        finally:
            _restore(path, v1)
            assert "etag mismatch in slice response" in site.errors()


def _rewrite(path, old: bytes) -> bytes:
    """A new version of the file at the origin: same size, other bytes, an
    hour later (a new ETag); replaced atomically, as a mirror sync does."""
    new = bytes(255 - b for b in old[:4096]) + old[4096:]
    tmp = path + ".new"
    with open(tmp, "wb") as handle:
        handle.write(new)
    mtime = os.stat(path).st_mtime + 3600
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)
    return new


def _restore(path, data: bytes) -> None:
    tmp = path + ".old"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


@requires_nginx
def test_transport_names_the_version_and_a_changed_file_is_stale(origin, archive_root):
    """Through the site cache a range read carries If-Match; a version the
    archive no longer has is StaleFile, not bytes of another version."""
    with running_site(origin.url) as site:
        settings = Settings().replace(api_url=origin.api_url, data_url=origin.data_url, ftp_url="",
                                      site_cache=site.url, retries=3, backoff_max=0.05)
        url = f"{origin.data_url}/10002/{SITE_DIR}/g.bin"
        with Transport(settings) as transport:
            stat = transport.head(url)
            assert stat.url == url                      # the archive's URL, not the cache's
            data = transport.fetch_range(url, 0, 100, expect=stat.fingerprint)
            with open(os.path.join(archive_root.folder, "g.bin"), "rb") as handle:
                assert data == handle.read(100)
            other = Fingerprint(stat.size, '"0-0"', stat.last_modified)
            with pytest.raises(StaleFile):
                transport.fetch_range(url, 0, 100, expect=other)
            snap = transport.stats.snapshot()["site_cache"]
            assert snap["via_site"] >= 3 and snap["via_origin"] == 0 and snap["state"] == "up"
        # Cached under the version asked for; the other version's reply was not.
        keys = [k for k in site.cache_keys() if "g.bin" in k and "bytes=" in k]
        assert keys and all(k.endswith("|" + stat.etag) for k in keys)


@requires_fuse
@requires_nginx
@pytest.mark.parametrize("order", ["staggered", "simultaneous"])
def test_four_nodes_cost_the_origin_one_copy(origin, archive_root, tmp_path, order):
    """Four nodes read the set, one first and then three at once
    (staggered), or all four cold at once (simultaneous: their requests
    collapse onto one origin request): the origin sends each byte about once."""
    files, unique = archive_root.files, archive_root.unique
    with running_site(origin.url) as site, nodes(origin, site, tmp_path, 4) as points:
        before = origin.stats.get("bytes_sent")
        started = time.monotonic()
        if order == "staggered":
            read_set(points[0], files, seed=0)
            read_in_parallel(points[1:], files)
        else:
            read_in_parallel(points, files)
        seconds = time.monotonic() - started
        sent = origin.stats.get("bytes_sent") - before
        _report(order, 4, unique, sent, seconds)
        assert sent <= 1.1 * unique, f"origin sent {sent} bytes for {unique} unique bytes"
        for point in points:
            snap = _site_stats(point)
            assert snap["failovers"] == 0 and snap["via_origin"] == 0 and snap["via_site"] > 0


@requires_fuse
@requires_nginx
def test_killing_the_site_cache_mid_read_fails_over_and_back(origin, archive_root, tmp_path):
    files = {name: (size, sha) for name, size, sha in archive_root.files}
    deadline = 20.0
    site = Site(origin.url).start()
    try:
        # Listings expire at once, so each listdir below is a request (a probe).
        settings = _node_settings(origin, tmp_path, "node", deadline=deadline, metadata_ttl=1.0)
        with mounted(settings, tmp_path / "mnt", "--site-cache", site.url) as point:
            path = os.path.join(point, ENTRY, SITE_DIR, "a.mrcs")
            size, sha = files["a.mrcs"]
            digest, slowest = hashlib.sha256(), 0.0
            with open(path, "rb", buffering=0) as handle:
                offset = 0
                while offset < size:
                    if offset == 6 * MiB:
                        site.kill()                       # mid-read, mid-stream
                    started = time.monotonic()
                    block = handle.read(256 * 1024)
                    slowest = max(slowest, time.monotonic() - started)
                    digest.update(block)
                    offset += len(block)
            assert digest.hexdigest() == sha and slowest < deadline
            snap = _site_stats(point)
            assert snap["failovers"] == 1 and snap["via_origin"] > 0 and snap["state"] != "up"

            site = Site(origin.url, port=site.opts.listen_port, cache_dir=site.cache_dir).start()
            served = len(site.access_lines())
            give_up = time.monotonic() + 15
            names = ["b.mrcs", "c.mrcs", "d.mrcs", "e.mrcs"]
            while _site_stats(point)["state"] != "up":
                assert time.monotonic() < give_up, f"traffic never returned: {_site_stats(point)}"
                name = names.pop(0) if names else None
                if name:
                    size, sha = files[name]
                    assert read_file(os.path.join(point, ENTRY, SITE_DIR, name), size,
                                     "sequential", 0) == sha
                else:
                    time.sleep(0.2)
                    os.listdir(os.path.join(point, ENTRY, SITE_DIR))
            assert _site_stats(point)["recoveries"] == 1
            size, sha = files["f.mrcs"]
            assert read_file(os.path.join(point, ENTRY, SITE_DIR, "f.mrcs"), size, "random", 1) == sha
            assert len(site.access_lines()) > served
    finally:
        site.close()


@requires_fuse
@requires_nginx
def test_a_stalled_site_cache_is_left_after_the_stall_timeout(origin, archive_root, tmp_path):
    """nginx stopped (SIGSTOP): connections are accepted and never answered.
    Reads go to the origin after the stall timeout, and come back after
    SIGCONT."""
    files = {name: (size, sha) for name, size, sha in archive_root.files}
    with running_site(origin.url) as site:
        settings = _node_settings(origin, tmp_path, "node", metadata_ttl=1.0)
        with mounted(settings, tmp_path / "mnt", "--site-cache", site.url) as point:
            folder = os.path.join(point, ENTRY, SITE_DIR)
            size, sha = files["g.bin"]
            assert read_file(os.path.join(folder, "g.bin"), size, "sequential", 0) == sha
            os.killpg(site.proc.pid, signal.SIGSTOP)
            try:
                size, sha = files["d.mrcs"]
                started = time.monotonic()
                assert read_file(os.path.join(folder, "d.mrcs"), size, "random", 2) == sha
                took = time.monotonic() - started
                snap = _site_stats(point)
                assert snap["failovers"] == 1 and "within" in snap["last_failure"], snap
                assert settings.stall_timeout <= took < settings.deadline
            finally:
                os.killpg(site.proc.pid, signal.SIGCONT)
            give_up = time.monotonic() + 15
            while _site_stats(point)["state"] != "up":
                assert time.monotonic() < give_up, f"traffic never returned: {_site_stats(point)}"
                time.sleep(0.3)
                os.listdir(folder)                # a listing request once metadata expires
            assert _site_stats(point)["recoveries"] == 1


@requires_fuse
@requires_nginx
def test_a_file_changed_at_the_origin_is_never_read_as_a_mix(origin, archive_root, tmp_path):
    """Readers see the whole old version, the whole new one, or an error;
    after the TTLs every reader gets the whole new version."""
    path = os.path.join(archive_root.folder, CHANGING)
    with open(path, "rb") as handle:
        v1 = handle.read()
    sha1 = hashlib.sha256(v1).hexdigest()
    ttl = 1.0
    with running_site(origin.url, ttl="1") as site, \
            nodes(origin, site, tmp_path, 2, metadata_ttl=ttl) as points:
        target = [os.path.join(p, ENTRY, SITE_DIR, CHANGING) for p in points]
        assert read_file(target[0], len(v1), "sequential", 0) == sha1
        seen, stop = [], threading.Event()

        def reader(i):
            while not stop.is_set():
                try:
                    seen.append(read_file(target[i], len(v1), "random" if i else "sequential", i))
                except OSError as exc:
                    seen.append(f"errno {exc.errno}")

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            v2 = _rewrite(path, v1)
            sha2 = hashlib.sha256(v2).hexdigest()
            give_up = time.monotonic() + 10 * ttl + 10
            while seen[-4:].count(sha2) < 4:
                assert time.monotonic() < give_up, f"never the whole new version: {seen[-6:]}"
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            _restore(path, v1)
        mixed = [s for s in seen if s not in (sha1, sha2) and not s.startswith("errno")]
        assert not mixed, f"{len(mixed)} reads mixed two versions"
        assert sha1 in seen and sha2 in seen
        for point in points:
            assert _site_stats(point)["via_site"] > 0
