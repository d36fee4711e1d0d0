"""Real FUSE mounts of the sample archive, read with ordinary tools.

Every test mounts through the project's server (and one through Apache's
twin), compares bytes with the sample's manifest, and unmounts.
"""

from __future__ import annotations

import ctypes.util
import errno
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import mrcfile
import numpy as np
import pytest
import starfile
import tifffile
from support.mounting import (
    EMPIARFS,
    mount_args,
    mounted,
    requires_fuse,
    sha256_of,
    stats,
    unmount,
)

from empiarfs.archive_server import ArchiveServer

pytestmark = [requires_fuse, pytest.mark.fuse]


def _by_entry(manifest):
    files = {}
    for f in manifest["files"]:
        files[f"{f['entry']}/{f['path']}"] = f
    return files


def _pick(manifest, suffix, limit=None):
    found = [k for k in _by_entry(manifest) if k.endswith(suffix)]
    return found[:limit] if limit else found


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path)


class _Restartable:
    """An HTTP-only archive server that can go down and come back on the same port."""

    def __init__(self, root):
        self.root = root
        self.server = ArchiveServer(root).start()
        self.port = self.server.port
        self.api_url, self.data_url, self.ftp_url = self.server.api_url, self.server.data_url, ""

    def stop(self):
        self.server.stop()

    def start(self):
        self.server = ArchiveServer(self.root, port=self.port).start()


@pytest.fixture
def free_server(sample_root):
    made = []

    def make():
        made.append(_Restartable(sample_root))
        return made[-1]
    yield make
    for server in made:
        server.stop()


def test_every_file_exact_size_and_sha256(settings, manifest, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        for key, f in _by_entry(manifest).items():
            if f["entry"].endswith("10943") and not f["path"].endswith("0001.txt"):
                continue  # the 3,000 tiny files are covered by test_tools_behave
            path = os.path.join(mnt, key)
            assert os.stat(path).st_size == f["size"], key
            assert sha256_of(path) == f["sha256"], key
        counters = stats(mnt)
    total = sum(f["size"] for k, f in _by_entry(manifest).items()
                if not (f["entry"].endswith("10943") and not f["path"].endswith("0001.txt")))
    # Only the bytes needed crossed the network (blocks round up each file).
    assert counters["reader"]["bytes_fetched"] <= total + 2 * settings.block_size * len(manifest["files"])


def test_header_reads_after_a_listing_need_no_request(archive_server, settings_for, manifest,
                                                      sample_root, tmp_path):
    # Sizes over HTTP (no FTP): a directory's sizes come from range probes
    # that also bring each file's first 16 KiB, so reading the headers
    # after `ls -l` costs the archive nothing more (one request per file
    # for a header scan on a long path instead of two).
    settings = settings_for(archive_server, tmp_path, ftp_url="")
    acc, folder = "EMPIAR-10002", "data"
    files = [f for f in manifest["files"] if f["entry"] == acc
             and f["path"].rsplit("/", 1)[0] == folder]
    assert len(files) >= 5 and any(f["size"] > 16 * 1024 for f in files)
    with mounted(settings, tmp_path / "mnt") as mnt:
        for f in files:
            assert os.stat(os.path.join(mnt, acc, f["path"])).st_size == f["size"]
        before = archive_server.stats.get("requests.file")
        for f in files:
            with open(os.path.join(mnt, acc, f["path"]), "rb", buffering=0) as fh:
                head = fh.read(1024)
            with open(os.path.join(sample_root, "world_availability", "10002", f["path"]), "rb") as src:
                assert head == src.read(1024), f["path"]
        assert archive_server.stats.get("requests.file") == before
        # Files larger than the probe are read from its bytes; smaller ones
        # came whole and are their block 0 (kept on disk too, for offline).
        assert stats(mnt)["reader"]["hits_first_bytes"] >= len([f for f in files
                                                                if f["size"] > 16 * 1024])
        # Past the first bytes, the blocks come as always, byte for byte.
        for f in files:
            assert sha256_of(os.path.join(mnt, acc, f["path"])) == f["sha256"], f["path"]


def test_a_small_file_read_from_its_probe_is_there_offline(archive_server, settings_for,
                                                           manifest, tmp_path):
    # The probe brought the whole file: it is block 0 on disk as well, so a
    # remount without network still serves it.
    settings = settings_for(archive_server, tmp_path, ftp_url="")
    small = next(f for f in manifest["files"] if f["entry"] == "EMPIAR-10002"
                 and f["path"] == "data/particles.star")
    assert 1024 < small["size"] < 16 * 1024
    path = f"EMPIAR-10002/{small['path']}"
    before = archive_server.stats.get("requests.file")
    with mounted(settings, tmp_path / "mnt") as mnt:
        want = open(os.path.join(mnt, path), "rb").read()
    assert archive_server.stats.get("requests.file") - before == 1   # the probe, nothing more
    assert hashlib.sha256(want).hexdigest() == small["sha256"]
    with mounted(settings.replace(offline=True), tmp_path / "mnt") as mnt:
        assert open(os.path.join(mnt, path), "rb").read() == want
    assert archive_server.stats.get("requests.file") - before == 1


def test_tree_layout_and_virtual_files(settings, manifest, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        entries = sorted(os.listdir(mnt))
        for acc in manifest["accessions"]:
            assert acc in entries
        acc = "EMPIAR-10002"
        names = set(os.listdir(os.path.join(mnt, acc)))
        assert {"10002.xml", "data", "entry.json", "README.txt", "imagesets"} <= names
        record = json.load(open(os.path.join(mnt, acc, "entry.json")))
        assert list(record) == [acc]
        readme = open(os.path.join(mnt, acc, "README.txt")).read()
        assert record[acc]["title"] in readme
        links = os.listdir(os.path.join(mnt, acc, "imagesets"))
        assert links
        for link in links:
            target = os.path.join(mnt, acc, "imagesets", link)
            assert os.path.islink(target)
            assert os.path.isdir(target), os.readlink(target)
        # mtimes come from the archive
        f = next(f for f in manifest["files"] if f["entry"] == acc and f["path"].startswith("data/"))
        assert abs(os.stat(os.path.join(mnt, acc, f["path"])).st_mtime - f["mtime"]) < 1
        # read-only modes, owned by the mounting user
        st = os.stat(os.path.join(mnt, acc, f["path"]))
        assert st.st_mode & 0o777 == 0o444 and st.st_uid == os.getuid()
        assert os.stat(os.path.join(mnt, acc)).st_mode & 0o777 == 0o555


def test_unknown_paths_enoent_and_writes_erofs(settings, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        for bad in ("EMPIAR-99999", "EMPIAR-10002/nope", "EMPIAR-10002/data/nope.mrc",
                    "not-an-entry", "EMPIAR-010002"):
            with pytest.raises(FileNotFoundError):
                os.stat(os.path.join(mnt, bad))
        target = os.path.join(mnt, "EMPIAR-10002", "10002.xml")
        for attempt in (lambda: open(target, "r+b"),
                        lambda: open(os.path.join(mnt, "EMPIAR-10002", "new"), "wb"),
                        lambda: os.mkdir(os.path.join(mnt, "EMPIAR-10002", "d")),
                        lambda: os.unlink(target),
                        lambda: os.rename(target, target + ".x"),
                        lambda: os.chmod(target, 0o777)):
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS


def test_tools_behave(settings, manifest, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        out = subprocess.run(["ls", "-lR", mnt], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        found = subprocess.run(["find", mnt, "-type", "f", "-path", "*/data/*"],
                               capture_output=True, text=True, timeout=120)
        assert found.returncode == 0
        listed = {os.path.relpath(p, mnt) for p in found.stdout.splitlines()}
        expected = {k for k in _by_entry(manifest) if "/data/" in k}
        assert listed == expected
        du = subprocess.run(["du", "-sb", os.path.join(mnt, "EMPIAR-10002", "data")],
                            capture_output=True, text=True, timeout=60)
        want = sum(f["size"] for f in manifest["files"]
                   if f["entry"] == "EMPIAR-10002" and f["path"].startswith("data/"))
        assert int(du.stdout.split()[0]) == want
        # cp -r of an entry with spaces, commas and nesting
        acc = "EMPIAR-11419"
        dest = tmp_path / "copy"
        subprocess.run(["cp", "-r", os.path.join(mnt, acc, "data"), str(dest)], check=True, timeout=120)
        for f in manifest["files"]:
            if f["entry"] == acc and f["path"].startswith("data/"):
                local = dest / f["path"][len("data/"):]
                assert sha256_of(local) == f["sha256"], f["path"]


def test_scientific_readers(settings, manifest, sample_root, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        mrcs = _pick(manifest, ".mrcs")[0]
        source = os.path.join(sample_root, "world_availability",
                              mrcs.split("/", 1)[0].split("-")[1], mrcs.split("/", 1)[1])
        with mrcfile.open(source, permissive=True) as want, \
                mrcfile.open(os.path.join(mnt, mrcs), permissive=True) as got:
            np.testing.assert_array_equal(got.data, want.data)
            assert got.voxel_size == want.voxel_size
        with mrcfile.open(os.path.join(mnt, mrcs), header_only=True) as head:
            assert int(head.header.nx) > 0
        with mrcfile.mmap(os.path.join(mnt, mrcs), permissive=True) as mapped:
            with mrcfile.open(source, permissive=True) as want:
                np.testing.assert_array_equal(mapped.data[-1], want.data[-1])
        star = _pick(manifest, ".star")[0]
        tables = starfile.read(os.path.join(mnt, star))
        assert len(tables) > 0
        tif = _pick(manifest, ".tif")[0]
        with tifffile.TiffFile(os.path.join(mnt, tif)) as tf:
            assert tf.pages[0].shape


def test_concurrent_readers(settings, manifest, tmp_path):
    files = [k for k, f in _by_entry(manifest).items() if f["size"] > 100_000]
    assert files
    with mounted(settings, tmp_path / "mnt") as mnt:
        def read_all(i):
            rnd = random.Random(i)
            key = rnd.choice(files)
            path = os.path.join(mnt, key)
            size = os.stat(path).st_size
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                # random chunk sizes, in order, so concurrent readers overlap blocks
                pos = 0
                while pos < size:
                    chunk = handle.read(rnd.choice([4096, 65536, 300_000, 1 << 20]))
                    digest.update(chunk)
                    pos += len(chunk)
            return key, digest.hexdigest()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(read_all, range(64)))
    by_key = _by_entry(manifest)
    for key, digest in results:
        assert digest == by_key[key]["sha256"], key


def test_caches_stay_bounded_and_remount_is_warm(archive_server, settings_for, manifest, tmp_path):
    block = 64 * 1024
    settings = settings_for(archive_server, tmp_path, block_size=block,
                            memory_cache=8 * block, cache_size=32 * block)
    files = [k for k, f in _by_entry(manifest).items() if f["size"] > 200_000]
    total = sum(_by_entry(manifest)[k]["size"] for k in files)
    assert total > 3 * settings.cache_size
    peaks = {"memory": 0, "disk": 0}
    with mounted(settings, tmp_path / "mnt") as mnt:
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                s = stats(mnt)
                peaks["memory"] = max(peaks["memory"], s["memory_cache"]["bytes_used"])
                peaks["disk"] = max(peaks["disk"], s["disk_cache"]["bytes_used"])
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for key in files:
                assert sha256_of(os.path.join(mnt, key)) == _by_entry(manifest)[key]["sha256"]
        finally:
            stop.set()
            sampler.join()
        assert 0 < peaks["memory"] <= settings.memory_cache
        assert 0 < peaks["disk"] <= settings.cache_size
        small = next(k for k, f in _by_entry(manifest).items() if 0 < f["size"] < settings.cache_size // 4)
        sha256_of(os.path.join(mnt, small))
    with mounted(settings, tmp_path / "mnt") as mnt:
        before = stats(mnt)["reader"]["bytes_fetched"]
        assert sha256_of(os.path.join(mnt, small)) == _by_entry(manifest)[small]["sha256"]
        assert stats(mnt)["reader"]["bytes_fetched"] == before == 0


def test_server_down_cached_reads_work_uncached_fail_fast(manifest, sample_root, settings_for,
                                                           tmp_path, free_server):
    server = free_server()
    settings = settings_for(server, tmp_path, deadline=4.0, stall_timeout=1.0,
                            connect_timeout=1.0, retries=2, hedge_after=0.5)
    files = [k for k, f in _by_entry(manifest).items() if f["entry"] == "EMPIAR-10002"
             and f["path"].endswith(".mrcs")]
    with mounted(settings, tmp_path / "mnt") as mnt:
        cached, uncached = files[0], files[1]
        assert sha256_of(os.path.join(mnt, cached)) == _by_entry(manifest)[cached]["sha256"]
        os.stat(os.path.join(mnt, uncached))           # metadata cached, data not
        server.stop()
        assert sha256_of(os.path.join(mnt, cached)) == _by_entry(manifest)[cached]["sha256"]
        started = time.monotonic()
        with pytest.raises(OSError) as info:
            with open(os.path.join(mnt, uncached), "rb") as handle:
                handle.read()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - started < settings.deadline + 5
        server.start()
        assert sha256_of(os.path.join(mnt, uncached)) == _by_entry(manifest)[uncached]["sha256"]


def test_changed_file_served_whole_in_new_version(archive_server, settings_for, manifest,
                                                   sample_root, tmp_path):
    settings = settings_for(archive_server, tmp_path, metadata_ttl=1.0, block_size=4096)
    key = next(k for k, f in _by_entry(manifest).items() if f["size"] > 50_000 and f["entry"] == "EMPIAR-11561")
    acc, rel = key.split("/", 1)
    source = os.path.join(sample_root, "world_availability", acc.split("-")[1], rel)
    original = open(source, "rb").read()
    try:
        with mounted(settings, tmp_path / "mnt") as mnt:
            path = os.path.join(mnt, key)
            with open(path, "rb") as handle:
                assert handle.read(8192) == original[:8192]   # part of the old version cached
            new = bytes(b ^ 0xFF for b in original)           # same size, every byte different
            with open(source, "wb") as handle:
                handle.write(new)
            os.utime(source, (time.time() + 5, time.time() + 5))
            time.sleep(settings.metadata_ttl + 0.5)
            data = None
            deadline = time.monotonic() + 65
            while time.monotonic() < deadline:       # the kernel may keep attributes a while
                with open(path, "rb") as handle:
                    data = handle.read()
                if data != original:
                    break
                time.sleep(1)
            assert data == new
    finally:
        with open(source, "wb") as handle:
            handle.write(original)
        f = _by_entry(manifest)[key]
        os.utime(source, (f["mtime"], f["mtime"]))


def test_xattrs(settings, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        data = os.path.join(mnt, "EMPIAR-10002", "data")
        name = sorted(n for n in os.listdir(data) if n.endswith(".mrcs"))[0]
        path = os.path.join(data, name)
        attrs = os.listxattr(path)
        assert "user.empiarfs.url" in attrs
        url = os.getxattr(path, "user.empiarfs.url").decode()
        assert url.startswith(settings.data_url) and url.endswith(name)
        assert os.getxattr(path, "user.empiar.category").decode() == "micrographs - multiframe"
        with pytest.raises(OSError):
            os.getxattr(path, "user.nothing")


def test_kernel_readahead_raised_and_reads_stay_exact(settings, manifest, tmp_path):
    """The daemon raises the mount's kernel read-ahead (root only), so the
    kernel sends reads of up to 1 MiB; bytes must stay exact at that size."""
    with mounted(settings, tmp_path / "mnt", env={"EMPIARFS_KERNEL_READAHEAD": "512K"}) as mnt:
        st = os.stat(mnt)
        knob = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        # Only root may write the knob; otherwise the kernel's value stays.
        wanted = "512" if os.geteuid() == 0 else open(knob).read().strip()
        deadline = time.monotonic() + 10
        while open(knob).read().strip() != wanted:
            assert time.monotonic() < deadline, f"{knob} is {open(knob).read().strip()}, not {wanted}"
            time.sleep(0.05)
        for key in sorted(_by_entry(manifest), key=lambda k: -_by_entry(manifest)[k]["size"])[:3]:
            f = _by_entry(manifest)[key]
            assert sha256_of(os.path.join(mnt, key)) == f["sha256"], key


def _knob(mnt) -> str:
    st = os.stat(mnt)
    return f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"


def _wait_for_knob(knob, wanted, timeout=10.0):
    deadline = time.monotonic() + timeout
    while open(knob).read().strip() != wanted:
        assert time.monotonic() < deadline, f"{knob} is {open(knob).read().strip()}, not {wanted}"
        time.sleep(0.05)


def test_kernel_readahead_follows_the_link(settings, archive_server, manifest, tmp_path):
    """By default (auto) the mount's read-ahead is 1 MiB once replies come
    fast, and the kernel's 128 KiB again from the first fault on; reads
    stay exact either side of the change."""
    files = sorted(_by_entry(manifest).items(), key=lambda kv: -kv[1]["size"])[:2]
    with mounted(settings, tmp_path / "mnt") as mnt:
        knob = _knob(mnt)
        kernel_default = open(knob).read().strip()
        (first, f1), (second, f2) = files
        assert sha256_of(os.path.join(mnt, first)) == f1["sha256"]
        if os.geteuid() != 0:   # only root may write the knob
            assert open(knob).read().strip() == kernel_default
            return
        _wait_for_knob(knob, "1024")
        deadline = time.monotonic() + 10
        while stats(mnt)["mount"].get("kernel_readahead") != 1024 * 1024:
            assert time.monotonic() < deadline, stats(mnt)["mount"]
            time.sleep(0.1)
        archive_server.faults.error_burst(503, count=1)   # one retry
        assert sha256_of(os.path.join(mnt, second)) == f2["sha256"]
        _wait_for_knob(knob, "128")
        assert stats(mnt)["mount"]["kernel_readahead"] == 128 * 1024


def test_first_file_of_a_fast_mount_gets_the_large_read_ahead(settings, manifest, tmp_path):
    """The kernel copies the mount's read-ahead into a file once the daemon
    answered its open(): open() brings the knob up to date first, so the
    very first file a fresh mount reads on a fast link is read in 1 MiB
    requests (libfuse's debug log shows each READ's size)."""
    if os.geteuid() != 0:
        pytest.skip("only root may set the mount's read-ahead")
    key, f = max(_by_entry(manifest).items(), key=lambda kv: kv[1]["size"])
    assert f["size"] > 2 * 1024 * 1024
    log_path = tmp_path / "mnt.log"
    with mounted(settings, tmp_path / "mnt", verbose=3) as mnt:
        path = os.path.join(mnt, key)
        os.stat(path)                    # the lookups bring the first replies
        assert sha256_of(path) == f["sha256"]
    sizes = [int(m) for m in re.findall(r"^read\[\d+\] (\d+) bytes from", log_path.read_text(
        errors="replace"), flags=re.M)]
    assert sizes, "no READ in libfuse's log"
    assert max(sizes) == 1024 * 1024, sorted(set(sizes))


def test_kernel_keeps_the_no_acl_answer(settings, tmp_path):
    """`ls -l` asks every file for its ACL and its security label; with
    FUSE_POSIX_ACL negotiated the kernel keeps the "no ACL" answer, and a
    label is not supported (ENOTSUP), after which ls stops asking for the
    rest of the mount: a warm `ls -l` of 1,000 files asks the daemon for
    neither more than once (libfuse's debug log shows every request)."""
    mnt = tmp_path / "mnt"
    with mounted(settings, mnt, verbose=3, allow_errors=True):
        data = os.path.join(mnt, "EMPIAR-10943", "data", "Tiff")
        log_path = tmp_path / "mnt.log"

        def requests_for(name):
            return sum(1 for line in log_path.read_text(errors="replace").splitlines()
                       if line.startswith("getxattr ") and name in line)
        listing = subprocess.run(["ls", "-l", data], capture_output=True, text=True, check=True)
        assert len(listing.stdout.splitlines()) > 100
        first = requests_for("system.posix_acl_access")
        assert first >= 1          # the log does show these requests
        labels = requests_for("security.selinux")
        subprocess.run(["ls", "-l", data], capture_output=True, check=True)
        assert requests_for("system.posix_acl_access") == first
        assert requests_for("security.selinux") - labels <= 1
        path = os.path.join(data, sorted(os.listdir(data))[0])
        with pytest.raises(OSError) as info:
            os.getxattr(path, "system.posix_acl_access")
        assert info.value.errno == errno.ENODATA
        with pytest.raises(OSError) as info:
            os.getxattr(path, "security.selinux")
        assert info.value.errno == errno.ENOTSUP
        assert os.getxattr(path, "user.empiarfs.url").decode().endswith(os.path.basename(path))


def test_apache_twin_mount(apache_twin, archive_server, settings_for, manifest, tmp_path):
    settings = settings_for(archive_server, tmp_path).replace(data_url=apache_twin.data_url, ftp_url="")
    with mounted(settings, tmp_path / "mnt") as mnt:
        for key, f in _by_entry(manifest).items():
            if f["entry"] == "EMPIAR-10943":
                continue
            path = os.path.join(mnt, key)
            assert os.stat(path).st_size == f["size"], key
            assert sha256_of(path) == f["sha256"], key


# ------------------------------------------------ libfuse 3 and user errors


def _cli(*args, env=None, timeout=60):
    return subprocess.run([EMPIARFS, *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def _one_error(result, *words) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("empiarfs: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _wait_gone(pid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    pytest.fail(f"mount daemon {pid} still running {timeout} s after unmount")


def _libfuse2():
    found = ctypes.util.find_library("fuse")
    assert found and ".so.2" in found, \
        "libfuse 2 must be installed beside libfuse 3 for this test (scripts/setup installs libfuse2)"
    return found


def test_background_mount_loads_libfuse3_beside_libfuse2(settings, manifest, tmp_path):
    """mfusepy alone loads libfuse 2 when both are installed, which refuses
    libfuse 3's options (`fuse: unknown option 'max_threads=64'`)."""
    _libfuse2()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = _cli("mount", str(mnt), *mount_args(settings))
    try:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        pid = int(re.search(r"\(pid (\d+),", result.stdout).group(1))
        with open(f"/proc/{pid}/maps") as handle:
            libraries = {line.split()[-1] for line in handle if "libfuse" in line}
        assert any("libfuse3.so.3" in name for name in libraries), libraries
        assert not any("libfuse.so.2" in name for name in libraries), libraries
        key = next(k for k, f in _by_entry(manifest).items() if k.endswith(".mrcs"))
        assert sha256_of(os.path.join(mnt, key)) == _by_entry(manifest)[key]["sha256"]
    finally:
        unmount(mnt)
    _wait_gone(pid)


def test_fuse_library_path_is_respected(settings, tmp_path):
    """A user's FUSE_LIBRARY_PATH wins; naming libfuse 2 there is one clear line."""
    libfuse2 = _libfuse2()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for foreground in (("-f",), ()):
        result = _cli("mount", *foreground, str(mnt), *mount_args(settings),
                      env={"FUSE_LIBRARY_PATH": libfuse2})
        _one_error(result, "libfuse 2 was loaded", libfuse2, "FUSE_LIBRARY_PATH", "libfuse 3")
        assert not os.path.ismount(mnt)


def test_second_mount_shares_the_cache_but_another_block_size_is_one_line(settings, tmp_path):
    # The disk cache is shared by every process on a node (issue 14), so a
    # second mount on it works; one with another block size cannot share it.
    with mounted(settings, tmp_path / "first") as first, \
            mounted(settings, tmp_path / "shared") as shared:
        assert sorted(os.listdir(first)) == sorted(os.listdir(shared))
        second = tmp_path / "second"
        second.mkdir()
        other = settings.replace(block_size=2 * settings.block_size)
        for foreground in ((), ("-f",)):
            try:
                result = _cli("mount", *foreground, str(second), *mount_args(other))
            finally:
                unmount(second)
            _one_error(result, "is in use by process", "block size")
            assert not os.path.ismount(second)


def test_nonempty_mounts_over_files_and_gives_them_back(settings, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "results.txt").write_text("mine\n")
    with mounted(settings, mnt, "--nonempty"):
        names = os.listdir(mnt)
        assert "EMPIAR-10002" in names and "results.txt" not in names
    assert (mnt / "results.txt").read_text() == "mine\n"


def test_read_error_on_a_dead_network_is_said_once_and_kept_in_stats(manifest, settings_for,
                                                                      tmp_path, free_server):
    server = free_server()
    settings = settings_for(server, tmp_path, deadline=4.0, stall_timeout=1.0,
                            connect_timeout=1.0, retries=1, hedge_after=0.5, backoff_max=0.1)
    key = next(k for k, f in _by_entry(manifest).items() if k.endswith(".mrcs"))
    log_path = tmp_path / "mnt.log"
    with mounted(settings, tmp_path / "mnt") as mnt:
        os.stat(os.path.join(mnt, key))                 # metadata cached, data not
        server.stop()
        for _ in range(2):
            with pytest.raises(OSError) as info:
                with open(os.path.join(mnt, key), "rb") as handle:
                    handle.read()
            assert info.value.errno == errno.EIO
        errors = stats(mnt)["last_errors"]
        shown = _cli("stats", str(mnt))
    said = [line for line in log_path.read_text().splitlines() if f"/{key} failed" in line]
    assert len(said) == 1, log_path.read_text()
    assert "WARNING" in said[0] and "read" in said[0] and "EIO" in said[0]
    assert len(errors) == 1, errors
    assert errors[0]["path"] == f"/{key}" and errors[0]["op"] == "read"
    assert errors[0]["count"] >= 2 and errors[0]["error"] == "EIO"
    assert str(server.port) in errors[0]["reason"], errors[0]    # names what could not be reached
    assert "_Tracked" not in errors[0]["reason"] and "\n" not in errors[0]["reason"]
    assert errors[0]["reason"] in said[0]
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.split("last errors:", 1)[1]
    assert f"read /{key}: {errors[0]['reason']}" in text


def test_quiet_foreground_mount_says_nothing(settings, tmp_path):
    """Without -v a healthy mount is silent, so an error is the only line a
    user sees (libfuse 3.14.0 printed 'Ignoring invalid max threads value
    4294967295' on every mount until max_idle_threads was set)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([EMPIARFS, "mount", "-f", str(mnt), *mount_args(settings)],
                                stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        assert "EMPIAR-10002" in os.listdir(mnt)
    finally:
        unmount(mnt, proc)
    assert proc.returncode == 0
    assert err_path.read_text() == ""
