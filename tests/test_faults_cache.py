"""Cache faults through real mounts: a daemon killed mid-write, a corrupt
block on disk, a full disk, the cache directory removed under a running
mount, and two daemons on one cache directory.

The cache may lose data, never serve wrong data: every byte read through
the mount is compared with the sample archive.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from support.faultproxy import check_read
from support.mounting import (
    EMPIARFS,
    mount_args,
    mounted,
    requires_fuse,
    stats,
    unmount,
)

pytestmark = [requires_fuse, pytest.mark.fuse]

STACKS = [f"EMPIAR-10002/data/{n}_movie_gc.mrcs" for n in range(100, 108)]


def truth(sample_root, key: str) -> bytes:
    acc, rel = key.split("/", 1)
    with open(os.path.join(sample_root, "world_availability", acc.split("-")[1], rel), "rb") as fh:
        return fh.read()


def read_and_verify(mnt, sample_root, keys):
    for key in keys:
        out = check_read(os.path.join(mnt, key), truth(sample_root, key))
        assert out.ok, f"{key}: errno={out.errno} wrong={out.wrong_bytes}"


def block_files(cache_dir):
    return sorted(glob.glob(os.path.join(cache_dir, "blocks", "blocks", "*", "*.blk")))


def owner_pid(cache_dir) -> int:
    with open(os.path.join(cache_dir, "blocks", "lock")) as fh:
        return int(fh.read().strip())


def _read_until_killed(path):
    """Read a file; errors are expected once the daemon is killed."""
    try:
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except OSError:
        pass


@pytest.fixture
def settings(archive_server, settings_for, tmp_path):
    return settings_for(archive_server, tmp_path, deadline=10.0)


def test_sigkill_while_writing_blocks_then_remount_serves_only_good_blocks(
        settings, faults, sample_root, tmp_path):
    mnt = tmp_path / "mnt"
    # Slow bodies so the kill lands while blocks are being written.
    faults.set(paths="data", rate=4e6)
    killed = False
    with mounted(settings, mnt, allow_errors=True):
        for key in STACKS:
            os.stat(os.path.join(mnt, key))
        readers = [threading.Thread(target=_read_until_killed, args=(os.path.join(mnt, k),),
                                    daemon=True) for k in STACKS]
        for t in readers:
            t.start()
        deadline = time.monotonic() + 20
        while len(block_files(settings.cache_dir)) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(owner_pid(settings.cache_dir), signal.SIGKILL)
        killed = True
        for t in readers:
            t.join(15)
    assert killed
    faults.reset()
    left = len(block_files(settings.cache_dir))
    assert left >= 10, "the kill came before any block was written"
    with mounted(settings, mnt) as m:
        read_and_verify(m, sample_root, STACKS)
        reader = stats(m)["reader"]
    assert reader["hits_disk"] > 0, "blocks that survived the kill were not reused"


def test_corrupt_block_file_is_detected_not_served(settings, sample_root, tmp_path):
    mnt = tmp_path / "mnt"
    keys = STACKS[:2]
    with mounted(settings, mnt) as m:
        read_and_verify(m, sample_root, keys)
    files = block_files(settings.cache_dir)
    assert files
    # Flip bytes in the payload of every other block; truncate one more.
    for path in files[::2]:
        with open(path, "r+b") as fh:
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 0xFF]))
    with open(files[1], "r+b") as fh:
        fh.truncate(1000)
    with mounted(settings, mnt) as m:
        read_and_verify(m, sample_root, keys)
        counters = stats(m)
    damaged = len(files[::2]) + 1
    assert counters["reader"]["hits_disk"] <= len(files) - damaged
    assert counters["reader"]["bytes_fetched"] >= damaged * 64 * 1024  # refetched, not served


@pytest.fixture
def tiny_tmpfs(tmp_path):
    target = tmp_path / "tiny"
    target.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 2 MiB tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_cache_disk_full_reads_go_on_without_caching(archive_server, settings_for, sample_root,
                                                     tiny_tmpfs, tmp_path):
    # A cache bound far above the 2 MiB the disk really has: writes hit ENOSPC.
    settings = settings_for(archive_server, tmp_path, cache_dir=str(tiny_tmpfs / "cache"),
                            cache_size=512 * 1024 * 1024, deadline=10.0)
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as m:
        read_and_verify(m, sample_root, STACKS[:4])  # 7.5 MiB through a 2 MiB disk
        assert stats(m)["reader"]["bytes_fetched"] > 2 * 1024 * 1024
        read_and_verify(m, sample_root, STACKS[:4])
    log = open(tmp_path / "mnt.log").read()
    assert "Traceback" not in log, log[-3000:]


def test_cache_directory_removed_under_a_running_mount(settings, sample_root, tmp_path):
    with mounted(settings, tmp_path / "mnt", allow_errors=True) as m:
        read_and_verify(m, sample_root, STACKS[:2])
        # The daemon may still be writing blocks of those reads: like an
        # `rm -rf` run again, remove until nothing is left.
        for _ in range(50):
            try:
                shutil.rmtree(settings.cache_dir)
                break
            except OSError:
                time.sleep(0.05)
        read_and_verify(m, sample_root, STACKS[2:5])
        os.stat(os.path.join(m, ".empiarfs", "stats.json"))
    log = open(tmp_path / "mnt.log").read()
    assert "Traceback" not in log, log[-3000:]


def test_second_daemon_with_another_block_size_refuses_naming_the_pid(settings, tmp_path):
    # A second daemon on the same cache shares it (issue 14), unless its
    # blocks are another size.
    with mounted(settings, tmp_path / "mnt1") as m:
        os.listdir(m)
        first = owner_pid(settings.cache_dir)
        second_mnt = tmp_path / "mnt2"
        second_mnt.mkdir()
        other = settings.replace(block_size=2 * settings.block_size)
        try:
            result = subprocess.run([EMPIARFS, "mount", "-f", str(second_mnt), *mount_args(other)],
                                    capture_output=True, text=True, timeout=30)
        finally:
            unmount(second_mnt)
        message = result.stdout + result.stderr
        assert result.returncode != 0, message
        assert not os.path.ismount(second_mnt)
        assert f"in use by process {first}" in message, message
        assert "Traceback" not in message, message
        # The first mount is unharmed.
        os.listdir(m)
