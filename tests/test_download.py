"""The downloader against real servers on loopback: layout, skip, resume
after a server outage, restart after a change, never a wrong-size file
under its final name, disk full."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import threading
import time

import pytest

from empiarfs.archive_server import ArchiveServer
from empiarfs.config import Settings
from empiarfs.errors import InvalidInput
from empiarfs.namespace.filesystem import EmpiarFS
from empiarfs.namespace.select import Selector
from empiarfs.remote.archive import Archive
from empiarfs.remote.transport import Transport
from empiarfs.tools.download import (
    DiskCacheSource,
    Downloader,
    OutputError,
    Target,
    destination,
    parse_list_line,
    read_sidecar,
    targets_for,
)


def sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def truth(manifest, entry, path):
    return next(f for f in manifest["files"] if f["entry"] == entry and f["path"] == path)


# -- pure logic ---------------------------------------------------------------


def test_list_lines():
    s = Settings(data_url="http://h:1/empiar/world_availability", ftp_url="ftp://h:2/empiar/world_availability")
    assert parse_list_line("http://h:1/empiar/world_availability/10002/data/a%20b.mrcs", s) == \
        ("EMPIAR-10002", "data/a b.mrcs")
    assert parse_list_line("ftp://h:2/empiar/world_availability/10934//10934.xml", s) == \
        ("EMPIAR-10934", "10934.xml")
    # A list made against the public archive works with a mirror.
    assert parse_list_line(
        "https://ftp.ebi.ac.uk/empiar/world_availability/10002/data/x.mrcs\n", s) == \
        ("EMPIAR-10002", "data/x.mrcs")
    assert parse_list_line("EMPIAR-10002/data/x.mrcs", s) == ("EMPIAR-10002", "data/x.mrcs")
    assert parse_list_line("  # comment", s) is None and parse_list_line("", s) is None
    for bad in ("https://example.org/file.mrc", "EMPIAR-10002", "http://h:1/empiar/world_availability/10002/"):
        with pytest.raises(InvalidInput):
            parse_list_line(bad, s)


# -- against the shared server --------------------------------------------------


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path, block_size=64 * 1024, max_request=256 * 1024)


def test_download_layout_sha256_and_skip(settings, manifest, tmp_path):
    out = tmp_path / "out"
    with Archive(settings) as archive:
        targets = targets_for(archive, "EMPIAR-11419", "", Selector.everything())
        targets += targets_for(archive, "EMPIAR-10002", "data", Selector.glob("data/10[0-2]*"))
        downloader = Downloader(archive.transport, out, jobs=3, split=3,
                                piece_size=settings.max_request)
        summary = downloader.run(targets)
        assert not summary.failures and summary.count("downloaded") == len(targets)
        for t in targets:
            f = truth(manifest, t.accession, t.relpath)
            path = out / t.accession / t.relpath
            assert path.stat().st_size == f["size"] and sha256(path) == f["sha256"]
        assert not list(out.rglob("*.part*"))
        again = Downloader(archive.transport, out, jobs=3).run(targets)
        assert again.count("skipped") == len(targets) and again.fetched == 0


def test_pieces_come_from_the_disk_cache(settings, manifest, tmp_path):
    rel = "data/101_movie_gc.mrcs"
    with EmpiarFS(settings) as fs:
        node = fs.stat(f"EMPIAR-10002/{rel}")
        for offset in range(0, node.size, settings.max_request):
            fs.read_node(node, offset, settings.max_request)
        # Blocks reach the disk store just after their readers are served.
        deadline = time.monotonic() + 10
        while sum(e - s for s, e in fs.disk.cached_ranges(node.info.url)) < node.size:
            assert time.monotonic() < deadline, "the read blocks never reached the disk cache"
            time.sleep(0.02)
        target = Target("EMPIAR-10002", rel, node.info.url)
        summary = Downloader(fs.transport, tmp_path / "out", piece_size=settings.max_request,
                             cache=DiskCacheSource(fs.disk)).run([target])
    result = summary.results[0]
    assert result.from_cache == node.size and result.fetched == 0
    assert sha256(destination(tmp_path / "out", target)) == truth(manifest, "EMPIAR-10002", rel)["sha256"]


def test_wrong_size_never_under_final_name(settings, faults, sample_root, tmp_path):
    faults.truncate_probability = 1.0
    faults.paths = "data"
    with Archive(settings.replace(retries=1)) as archive:
        target = targets_for(archive, "EMPIAR-10002", "data/100_movie_gc.mrcs")[0]
        summary = Downloader(archive.transport, tmp_path / "out", piece_size=512 * 1024).run([target])
    assert summary.failures and summary.failures[0].error
    final = destination(tmp_path / "out", target)
    assert not final.exists()
    side = read_sidecar(final.with_name(final.name + ".part.json"))
    # Whatever the sidecar records as done is really on disk and correct.
    part = final.with_name(final.name + ".part")
    if side and side["done"]:
        data = part.read_bytes()
        with open(os.path.join(sample_root, "world_availability", "10002", target.relpath),
                  "rb") as handle:
            expected = handle.read()
        for start, end in side["done"]:
            assert data[start:end] == expected[start:end]
    else:
        assert not part.exists() or part.stat().st_size in (0, target_size_of(sample_root, target))


def target_size_of(sample_root, target):
    return os.path.getsize(os.path.join(sample_root, "world_availability", "10002", target.relpath))


# -- outage and change: a server of our own, on a copy of one entry ------------


@pytest.fixture
def own_tree(sample_root, tmp_path):
    root = tmp_path / "tree"
    (root / "api").mkdir(parents=True)
    shutil.copy(os.path.join(sample_root, "api", "EMPIAR-10002.json"), root / "api")
    shutil.copytree(os.path.join(sample_root, "world_availability", "10002"),
                    root / "world_availability" / "10002")
    return root


def _interrupt(server, out, target, settings):
    """Download slowly, stop the server once some pieces are recorded."""
    server.faults.rate = 400_000
    transport = Transport(settings)
    downloader = Downloader(transport, out, jobs=1, split=2, piece_size=settings.max_request)
    box = {}
    thread = threading.Thread(target=lambda: box.update(summary=downloader.run([target])))
    thread.start()
    final = destination(out, target)
    sidecar = final.with_name(final.name + ".part.json")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        side = read_sidecar(sidecar)
        if side and side["done"]:
            break
        time.sleep(0.02)
    server.stop()
    thread.join(30)
    transport.close()
    assert not thread.is_alive()
    summary = box["summary"]
    assert summary.failures, "the download should fail while the server is down"
    assert not final.exists()
    side = read_sidecar(sidecar)
    present = sum(e - s for s, e in side["done"])
    assert 0 < present < target_size(server, target)
    return present


def target_size(server, target):
    return os.path.getsize(os.path.join(server.data_root, "10002", target.relpath))


def _settings(server, tmp_path, settings_for):
    return settings_for(server, tmp_path, block_size=16 * 1024, max_request=64 * 1024,
                        retries=1, backoff_max=0.05, stall_timeout=1.0, connect_timeout=1.0)


def test_resume_after_outage_is_byte_identical(own_tree, manifest, tmp_path, settings_for):
    rel = "data/102_movie_gc.mrcs"
    server = ArchiveServer(own_tree).start()
    port = server.port
    settings = _settings(server, tmp_path, settings_for)
    target = Target("EMPIAR-10002", rel, f"{server.data_url}/10002/{rel}")
    out = tmp_path / "out"
    try:
        present = _interrupt(server, out, target, settings)
        server = ArchiveServer(own_tree, port=port).start()
        with Transport(settings) as transport:
            summary = Downloader(transport, out, piece_size=settings.max_request).run([target])
    finally:
        server.stop()
    result = summary.results[0]
    assert result.status == "resumed" and not result.restarted
    size = truth(manifest, "EMPIAR-10002", rel)["size"]
    assert result.fetched == size - present
    final = destination(out, target)
    assert sha256(final) == truth(manifest, "EMPIAR-10002", rel)["sha256"]
    assert not final.with_name(final.name + ".part").exists()
    assert not final.with_name(final.name + ".part.json").exists()


def test_changed_file_restarts_cleanly(own_tree, tmp_path, settings_for):
    rel = "data/105_movie_gc.mrcs"
    server = ArchiveServer(own_tree).start()
    port = server.port
    settings = _settings(server, tmp_path, settings_for)
    target = Target("EMPIAR-10002", rel, f"{server.data_url}/10002/{rel}")
    out = tmp_path / "out"
    try:
        _interrupt(server, out, target, settings)
        served = own_tree / "world_availability" / "10002" / rel
        new = os.urandom(served.stat().st_size)  # same size, other bytes
        served.write_bytes(new)
        os.utime(served, (time.time() + 60, time.time() + 60))
        server = ArchiveServer(own_tree, port=port).start()
        with Transport(settings) as transport:
            summary = Downloader(transport, out, piece_size=settings.max_request).run([target])
    finally:
        server.stop()
    result = summary.results[0]
    assert result.status == "downloaded" and result.restarted
    assert result.fetched == len(new)
    assert destination(out, target).read_bytes() == new


# -- local write errors ------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_clear_and_leaves_nothing(settings, small_tmpfs):
    with Archive(settings) as archive:
        targets = targets_for(archive, "EMPIAR-10002", "data", Selector.glob("data/10[0-3]*"))
        with pytest.raises(OutputError, match="No space left") as caught:
            Downloader(archive.transport, small_tmpfs / "out", jobs=2,
                       piece_size=settings.max_request).run(targets)
    assert caught.value.errno == errno.ENOSPC and "-o" in str(caught.value)
    leftovers = [p for p in (small_tmpfs / "out").rglob("*") if p.is_file()]
    assert all(p.name.endswith((".part", ".part.json")) for p in leftovers)
    assert not any(p.name.endswith(".mrcs") for p in leftovers)


def test_unwritable_output_fails_before_any_download(settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with Transport(settings) as transport:
        with pytest.raises(OutputError, match="cannot write"):
            Downloader(transport, blocker / "out").run(
                [Target("EMPIAR-10002", "10002.xml", f"{settings.data_url}/10002/10002.xml")])
    assert not (tmp_path / "out").exists()
