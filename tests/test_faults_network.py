"""Network faults through real FUSE mounts, read with ordinary os.pread.

The promise under test, for every fault: each byte a read returns equals
the archive's byte, or the read fails with a clear errno (EIO, ESTALE)
within the deadline plus a margin; and the mount survives (a later read of
the same file works once the fault is gone).

Faults the archive server makes itself come from its knobs (``faults``
fixture); the others (a body longer than declared on a kept-alive
connection, a shifted Content-Range on a kept-alive connection, refused
connections, a server that comes back) from :mod:`support.faultproxy`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import types

import pytest
from support.faultproxy import (
    FaultProxy,
    Rule,
    check_read,
    read_in_thread,
    sha256_bytes,
)
from support.mounting import mounted, requires_fuse, stats

from empiarfs.archive_server import ArchiveServer

pytestmark = [requires_fuse, pytest.mark.fuse]

DEADLINE = 5.0
MARGIN = 3.0
# One read() call is held to one deadline: when the kernel's read-ahead
# request fails it retries the page synchronously, and the daemon fails that
# retry at once (empiarfs.fuse.operations.FAILURE_HOLD) instead of waiting a second deadline.
READ_BOUND = DEADLINE + MARGIN
STACKS = ["EMPIAR-10002/data/100_movie_gc.mrcs", "EMPIAR-10002/data/102_movie_gc.mrcs",
          "EMPIAR-10002/data/106_movie_gc.mrcs"]


def truth(sample_root, key: str) -> bytes:
    acc, rel = key.split("/", 1)
    with open(os.path.join(sample_root, "world_availability", acc.split("-")[1], rel), "rb") as fh:
        return fh.read()


def fast_settings(settings_for, server, tmp_path, **extra):
    values = dict(deadline=DEADLINE, stall_timeout=1.0, hedge_after=0.5, retries=4,
                  backoff_max=0.2, connect_timeout=1.0)
    values.update(extra)
    return settings_for(server, tmp_path, **values)


def via(proxy: FaultProxy, ftp_url: str = ""):
    """An object with the archive URLs of ``proxy`` (for ``settings_for``)."""
    return types.SimpleNamespace(api_url=proxy.url + "/empiar/api",
                                 data_url=proxy.url + "/empiar/world_availability",
                                 ftp_url=ftp_url)


def read_all(mnt, sample_root, keys, limit=60.0):
    return [read_in_thread(check_read, os.path.join(mnt, k), truth(sample_root, k), limit=limit)
            for k in keys]


def assert_clean(outcomes, deadline=DEADLINE):
    for out in outcomes:
        assert out.wrong_bytes == 0, f"{out.path}: {out.wrong_bytes} wrong bytes returned"
        assert out.clean, f"{out.path}: failed with errno {out.errno} ({os.strerror(out.errno or 0)})"
        assert out.slowest_call <= 2 * deadline + MARGIN, \
            f"{out.path}: one read() took {out.slowest_call:.1f} s (deadline {deadline} s)"


def assert_all_ok(outcomes):
    for out in outcomes:
        assert out.ok, f"{out.path}: errno={out.errno} wrong={out.wrong_bytes} verified={out.verified}"


def drop_kernel_cache(mnt, keys):
    """Ask the kernel to forget cached pages so a re-read reaches the daemon."""
    for key in keys:
        fd = os.open(os.path.join(mnt, key), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------
# Transient faults: retried, never wrong


TRANSIENT = {
    "stall": lambda f: f.set(stall_probability=0.5, stall_seconds=3.0),
    "reset": lambda f: f.set(reset_probability=0.3),
    "truncate": lambda f: f.set(truncate_probability=0.3),
    "burst_503": lambda f: f.error_burst(503, count=3),
    "burst_500": lambda f: f.error_burst(500, count=2),
    "burst_502": lambda f: f.error_burst(502, count=2),
    "retry_after_429": lambda f: f.error_burst(429, count=1, retry_after=1),
}


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_transient_faults_are_retried_and_never_wrong(kind, archive_server, faults, sample_root,
                                                      settings_for, tmp_path):
    settings = fast_settings(settings_for, archive_server, tmp_path, deadline=10.0)
    with mounted(settings, tmp_path / "mnt") as mnt:
        for key in STACKS:
            os.stat(os.path.join(mnt, key))  # listings before the faults
        faults.paths = "data"
        TRANSIENT[kind](faults)
        began = time.monotonic()
        outcomes = read_all(mnt, sample_root, STACKS)
        took = time.monotonic() - began
        injected = {k: v for k, v in archive_server.stats.snapshot().items() if k.startswith("faults.")}
        faults.reset()
        assert_clean(outcomes, deadline=10.0)
        # Retries absorb these faults: every read is whole and right.
        assert_all_ok(outcomes)
        assert injected, "no fault was injected: the test proved nothing"
        if kind == "retry_after_429":
            assert took >= 0.9, "Retry-After: 1 was not honoured"
        network = stats(mnt)["network"]
        assert network["retries"] + network["hedges"] >= 1


# --------------------------------------------------------------------------
# Faults that make a read fail: clear errno within the deadline, then recovery


def test_every_request_stalls_read_fails_within_deadline_then_recovers(
        archive_server, faults, sample_root, settings_for, tmp_path):
    settings = fast_settings(settings_for, archive_server, tmp_path)
    key = STACKS[1]
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        os.stat(os.path.join(mnt, key))
        # Stalled handlers let go shortly after the deadline.
        faults.set(paths="data", stall_probability=1.0, stall_seconds=DEADLINE + 2)
        out = read_in_thread(check_read, os.path.join(mnt, key), truth(sample_root, key),
                             limit=4 * DEADLINE)
        faults.reset()
        assert out.errno == errno.EIO and out.verified == 0 and out.wrong_bytes == 0
        assert out.slowest_call <= READ_BOUND
        assert_all_ok(read_all(mnt, sample_root, [key]))


def test_drip_one_byte_per_second_fails_within_deadline_and_mount_recovers(
        archive_server, faults, sample_root, settings_for, tmp_path):
    """The stall timeout (socket inactivity) never fires at 1 B/s; only the
    read deadline protects the caller."""
    settings = fast_settings(settings_for, archive_server, tmp_path)
    key = STACKS[0]
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        os.stat(os.path.join(mnt, key))
        faults.set(paths="data", drip=True)
        out = read_in_thread(check_read, os.path.join(mnt, key), truth(sample_root, key),
                             limit=4 * DEADLINE)
        faults.reset()
        assert out.errno == errno.EIO and out.wrong_bytes == 0
        assert out.slowest_call <= READ_BOUND
        # Another file reads fine: the mount is up.
        assert_all_ok(read_all(mnt, sample_root, [STACKS[2]]))


def test_failed_read_call_returns_within_one_deadline(archive_server, faults, sample_root,
                                                      settings_for, tmp_path):
    settings = fast_settings(settings_for, archive_server, tmp_path)
    key = STACKS[1]
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        os.stat(os.path.join(mnt, key))
        faults.set(paths="data", stall_probability=1.0, stall_seconds=DEADLINE + 2)
        out = read_in_thread(check_read, os.path.join(mnt, key), truth(sample_root, key),
                             limit=4 * DEADLINE)
        faults.reset()
        assert out.errno == errno.EIO
        assert out.slowest_call <= DEADLINE + MARGIN, f"read() took {out.slowest_call:.1f} s"


def test_dripping_fetches_do_not_clog_the_mount(archive_server, sample_root, settings_for,
                                                tmp_path):
    # 4 bytes per second: always faster than the 1 s stall timeout.
    with FaultProxy(archive_server.url) as proxy:
        settings = fast_settings(settings_for, via(proxy, archive_server.ftp_url), tmp_path)
        with mounted(settings, tmp_path / "mnt", env={"EMPIARFS_PARALLEL_TOTAL": "4"},
                     allow_errors=True) as mnt:
            for key in STACKS:
                os.stat(os.path.join(mnt, key))
            rule = proxy.add(Rule("drip", path=r"\.mrcs$", method="GET", rate=4.0))
            for key in STACKS[:2]:
                out = read_in_thread(check_read, os.path.join(mnt, key), truth(sample_root, key),
                                     limit=4 * DEADLINE)
                assert out.errno == errno.EIO and out.wrong_bytes == 0
            rule.count = 0  # the server is healthy again
            again = read_in_thread(check_read, os.path.join(mnt, STACKS[2]),
                                   truth(sample_root, STACKS[2]), limit=4 * DEADLINE)
            assert again.ok, f"errno={again.errno}: the server is healthy again but reads fail"


def test_200_instead_of_206_is_an_error_not_data(archive_server, faults, sample_root,
                                                 settings_for, tmp_path):
    settings = fast_settings(settings_for, archive_server, tmp_path)
    key = STACKS[0]
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        os.stat(os.path.join(mnt, key))
        faults.set(paths="data", ignore_range=True)
        out = read_in_thread(lambda: check_read(os.path.join(mnt, key), truth(sample_root, key),
                                                offset=768 * 1024), limit=4 * DEADLINE)
        faults.reset()
        assert_clean([out])
        assert out.errno == errno.EIO and out.verified == 0
        assert archive_server.stats.get("status.200") >= 1  # the fault really happened
        assert_all_ok(read_all(mnt, sample_root, [key]))


def test_content_range_not_matching_the_request(archive_server, faults, sample_root,
                                                settings_for, tmp_path):
    settings = fast_settings(settings_for, archive_server, tmp_path)
    key = STACKS[2]
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        os.stat(os.path.join(mnt, key))
        faults.set(paths="data", wrong_content_range=True)
        out = read_in_thread(check_read, os.path.join(mnt, key), truth(sample_root, key),
                             limit=4 * DEADLINE)
        faults.reset()
        assert_clean([out])
        assert out.errno == errno.EIO and out.verified == 0
        assert archive_server.stats.get("faults.wrong_content_range") >= 1
        assert_all_ok(read_all(mnt, sample_root, [key]))


@pytest.mark.parametrize("action", ["shift_range", "extra_bytes", "cut"])
def test_wire_lies_on_kept_alive_connections(action, archive_server, sample_root, settings_for,
                                             tmp_path):
    """A shifted Content-Range, a body longer than its Content-Length, or a
    body cut after correct headers, with the connection kept alive: no
    byte of it may reach a reader, and later requests on the pool must not
    parse leftovers as a response."""
    with FaultProxy(archive_server.url) as proxy:
        settings = fast_settings(settings_for, via(proxy, archive_server.ftp_url), tmp_path)
        with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
            for key in STACKS:
                os.stat(os.path.join(mnt, key))
            proxy.add(Rule(action, path=r"\.mrcs$", method="GET", count=4,
                           extra=b"HTTP/1.1 206 Partial Content\r\n" + b"Z" * 8192))
            outcomes = read_all(mnt, sample_root, STACKS)
            assert proxy.counts[action] >= 1
            proxy.clear()
            assert_clean(outcomes)
            if action != "shift_range":
                # Extra bytes and cut bodies are retried: all whole and right.
                assert_all_ok(outcomes)
            drop_kernel_cache(mnt, STACKS)
            assert_all_ok(read_all(mnt, sample_root, STACKS))


def test_refused_connections_then_server_returns(archive_server, sample_root, settings_for, tmp_path):
    proxy = FaultProxy(archive_server.url).start()
    port = proxy.port
    try:
        settings = fast_settings(settings_for, via(proxy, ""), tmp_path)
        with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
            cached, fresh = STACKS[0], STACKS[1]
            for key in STACKS:
                os.stat(os.path.join(mnt, key))
            assert_all_ok(read_all(mnt, sample_root, [cached]))
            proxy.stop()  # connections now refused
            out = read_in_thread(check_read, os.path.join(mnt, fresh), truth(sample_root, fresh),
                                 limit=4 * DEADLINE)
            assert out.errno == errno.EIO and out.wrong_bytes == 0
            assert out.slowest_call <= READ_BOUND
            # What is cached is still served, right.
            drop_kernel_cache(mnt, [cached])
            assert_all_ok(read_all(mnt, sample_root, [cached]))
            json.loads(open(os.path.join(mnt, ".empiarfs", "stats.json")).read())
            proxy = FaultProxy(archive_server.url, port=port).start()  # back on the same port
            assert_all_ok(read_all(mnt, sample_root, [fresh]))
    finally:
        proxy.stop()


def test_listing_that_omits_a_file(archive_server, faults, sample_root, settings_for, tmp_path):
    """Documented behaviour: the listing is the namespace. A file left out
    of its directory's listing is ENOENT by name too (empiarfs never
    guesses paths), until the listing is fetched again after
    ``metadata_ttl`` and includes it."""
    settings = fast_settings(settings_for, archive_server, tmp_path, metadata_ttl=1.0, ftp_url="")
    name = "101_movie_gc.mrcs"
    key = f"EMPIAR-10002/data/{name}"
    faults.set(paths="data", omit_from_listing={name})
    with mounted(settings, tmp_path / "mnt") as mnt:
        listed = os.listdir(os.path.join(mnt, "EMPIAR-10002", "data"))
        assert name not in listed and "100_movie_gc.mrcs" in listed
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(mnt, key))
        assert archive_server.stats.get("faults.omitted") >= 1
        faults.reset()
        time.sleep(1.2)  # the listing's TTL (and the kernel's attribute timeout)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.stat(os.path.join(mnt, key))
                break
            except FileNotFoundError:
                # The kernel keeps a negative dentry for up to 5 s.
                assert time.monotonic() < deadline, "file still missing after the TTL"
                time.sleep(0.5)
        assert name in os.listdir(os.path.join(mnt, "EMPIAR-10002", "data"))
        assert_all_ok(read_all(mnt, sample_root, [key]))


# --------------------------------------------------------------------------
# A file that changes between two block reads


@pytest.fixture
def private_archive(sample_root, tmp_path):
    """A server on a private copy of EMPIAR-10002 that a test may modify."""
    root = tmp_path / "archive"
    (root / "api").mkdir(parents=True)
    shutil.copy(os.path.join(sample_root, "api", "EMPIAR-10002.json"), root / "api")
    shutil.copytree(os.path.join(sample_root, "world_availability", "10002"),
                    root / "world_availability" / "10002")
    with ArchiveServer(root) as server:
        yield server, root


def test_file_changing_between_block_reads_is_never_mixed(private_archive, settings_for, tmp_path):
    server, root = private_archive
    rel = "data/102_movie_gc.mrcs"
    source = root / "world_availability" / "10002" / rel
    old = source.read_bytes()
    new = bytes(b ^ 0x5A for b in old)  # same size, every byte different
    settings = fast_settings(settings_for, server, tmp_path, metadata_ttl=1.0, ftp_url="",
                             readahead=256 * 1024)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as mnt:
        path = os.path.join(mnt, "EMPIAR-10002", rel)
        fd = os.open(path, os.O_RDONLY)
        try:
            first = os.pread(fd, 256 * 1024, 0)
            assert first == old[:len(first)]
            # The archive replaces the file: new bytes, new mtime, new ETag.
            tmp = str(source) + ".new"
            with open(tmp, "wb") as fh:
                fh.write(new)
            os.utime(tmp, (time.time() + 100, time.time() + 100))
            os.replace(tmp, source)
            pos, code, chunks = len(first), None, [first]
            try:
                while pos < len(old):
                    data = os.pread(fd, 256 * 1024, pos)
                    if not data:
                        break
                    chunks.append(data)
                    pos += len(data)
            except OSError as exc:
                code = exc.errno
        finally:
            os.close(fd)
        got = b"".join(chunks)
        if code is None:
            # Whole: then it must be one version, never a mix.
            assert got in (old, new), "a read mixed two versions of the file"
        else:
            assert code in (errno.ESTALE, errno.EIO)
            assert got == old[:len(got)], "bytes of the new version after the old one"
        # After the metadata TTL, a fresh open sees the whole new version.
        time.sleep(1.5)
        deadline = time.monotonic() + 15
        while True:
            out = read_in_thread(check_read, path, new, limit=4 * DEADLINE)
            if out.ok:
                break
            # Until the listing is refreshed the old fingerprint may still
            # be used; that must fail cleanly, never return a mix.
            assert out.wrong_bytes == 0 or out.verified == 0
            assert time.monotonic() < deadline, f"new version never readable: errno {out.errno}"
            time.sleep(0.5)
        assert sha256_bytes(new) == sha256_bytes(open(path, "rb").read())
