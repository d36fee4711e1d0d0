"""One disk cache directory used by many processes at once (issue 14).

Eight processes write and read one directory whose bound is far smaller
than what they read: every byte is right, the bound holds at every sample
(taken from another process, with the index's write lock held so the walk
of the directory sees one moment), and the processes share each other's
blocks. A process killed with SIGKILL in the middle of writing a block
leaves no torn block and nothing the others need is lost; its reservation
is released by the survivors. Then the real thing: a FUSE mount, Python
API processes, the ``cache`` command and a Dask LocalCluster with process
workers read the sample archive through one small cache.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib

import pytest
from support.archive import env_for, settings_for
from support.diskcache import disk_bytes
from support.mounting import EMPIARFS, mounted, requires_fuse, sha256_of, stats

from empiarfs.cache.disk import DiskStore
from empiarfs.model import Fingerprint

BS = 16 * 1024
HEADER = 32
BLOCK = BS + HEADER           # bytes of one block file
BOUND = 48 * BLOCK            # the working set below is 5x this
URLS, BLOCKS = 6, 40


def payload(u, i):
    """The bytes of block ``i`` of file ``u`` (every process computes the same)."""
    import random

    return random.Random(u * 100_003 + i).randbytes(BS)


WORKER = inspect.getsource(payload) + textwrap.dedent(
    """
    import json, os, random, sys, time
    from empiarfs.cache.disk import DiskStore
    from empiarfs.model import Fingerprint

    directory, bound, seed, ops, out = sys.argv[1:6]
    bound, seed, ops = int(bound), int(seed), int(ops)
    stop, go = out + ".stop", sys.argv[6] if len(sys.argv) > 6 else None
    BS, URLS, BLOCKS = 16 * 1024, 6, 40
    FP = Fingerprint(BLOCKS * BS, '"v1"')
    while go and not os.path.exists(go):
        time.sleep(0.001)         # all start at once
    store = DiskStore(directory, bound, block_size=BS)
    rng = random.Random(seed)
    counts = dict(hits=0, foreign=0, puts=0, refused=0, wrong=0)
    mine = set()
    n = 0
    while (n < ops) if ops >= 0 else not os.path.exists(stop):
        n += 1
        u = rng.randrange(URLS)
        i = rng.randrange(8) if rng.random() < 0.7 else rng.randrange(BLOCKS)
        url = f"https://archive.invalid/f{u}"
        got = store.get(url, FP, i)
        if got is None:
            if store.put(url, FP, i, payload(u, i)):
                counts["puts"] += 1
                mine.add((u, i))
            else:
                counts["refused"] += 1
        elif got != payload(u, i):
            counts["wrong"] += 1
        else:
            counts["hits"] += 1
            counts["foreign"] += (u, i) not in mine
    store.close()
    with open(out, "w") as fh:
        json.dump(counts, fh)
    """)

# Writes some blocks, then tears one: half of its temporary file is on disk
# when the test kills the process.
VICTIM = inspect.getsource(payload) + textwrap.dedent(
    """
    import sys, time
    from empiarfs.cache.disk import DiskStore, blockfile
    from empiarfs.model import Fingerprint

    directory, bound, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    BS = 16 * 1024
    FP = Fingerprint(40 * BS, '"v1"')
    store = DiskStore(directory, bound, block_size=BS)
    for i in range(8, 14):
        store.put("https://archive.invalid/f0", FP, i, payload(0, i))

    def torn(path, fid, idx, data):
        with open(path[:-len(".blk")] + ".blk.tmp", "wb") as fh:
            fh.write(data[: len(data) // 2])
        with open(ready, "w") as fh:
            fh.write(path)
        time.sleep(120)

    blockfile.write = torn
    store.put("https://archive.invalid/f99", FP, 7, payload(99, 7))
    """)


class BoundSampler(threading.Thread):
    """Samples, from this process, the index's byte count and the bytes of
    block files on disk, holding the index's write lock so no one reserves,
    evicts or finishes a block during the walk; and ``store.bytes_used``."""

    def __init__(self, directory, store):
        super().__init__(daemon=True)
        self.directory, self.store = directory, store
        self.stop = threading.Event()
        self.samples = []      # (bytes in the index, bytes on disk)
        self.used = []         # store.bytes_used
        self.processes = 0     # most processes seen using the directory at once
        self.error = None

    def run(self):
        db = sqlite3.connect(os.path.join(self.directory, "index.sqlite"), timeout=30,
                             isolation_level=None)
        try:
            n = 0
            while not self.stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                try:
                    indexed = db.execute("SELECT bytes FROM usage").fetchone()[0]
                    on_disk = disk_bytes(self.directory)
                finally:
                    db.execute("COMMIT")
                self.samples.append((indexed, on_disk))
                self.used.append(self.store.bytes_used)
                n += 1
                if n % 20 == 0:
                    self.processes = max(self.processes, self.store.info()["processes"])
                time.sleep(0.003)
        except Exception as exc:  # reported by check()
            self.error = exc
        finally:
            db.close()

    def check(self, bound):
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error
        assert len(self.samples) > 20, len(self.samples)
        assert max(indexed for indexed, _ in self.samples) <= bound
        assert max(on_disk for _, on_disk in self.samples) <= bound
        assert all(on_disk <= indexed for indexed, on_disk in self.samples)
        assert max(self.used) <= bound


def verify_block_files(directory, expected=None):
    """Every block file is whole: name, header, length and crc32 agree;
    with ``expected(url, idx)``, its payload is that. No temporary files."""
    assert not glob.glob(os.path.join(directory, "blocks", "*", "*.tmp"))
    db = sqlite3.connect(os.path.join(directory, "index.sqlite"))
    try:
        urls = dict(db.execute("SELECT fid, url FROM files"))
    finally:
        db.close()
    checked = 0
    for path in glob.glob(os.path.join(directory, "blocks", "*", "*.blk")):
        with open(path, "rb") as fh:
            blob = fh.read()
        magic, _version, fid, idx, length, crc = struct.unpack_from("<4sBxxxqqII", blob)
        assert magic == b"EFSB" and os.path.basename(path) == f"{fid}-{idx}.blk", path
        assert length == len(blob) - HEADER and zlib.crc32(blob[HEADER:]) == crc, path
        if expected is not None and fid in urls:
            assert blob[HEADER:] == expected(urls[fid], idx), path
        checked += 1
    return checked


def from_url(url, idx):
    return payload(int(url.rsplit("/f", 1)[1]), idx)


def start_worker(directory, seed, ops, out, *go):
    return subprocess.Popen([sys.executable, "-c", WORKER, directory, str(BOUND), str(seed),
                             str(ops), str(out), *map(str, go)], stderr=subprocess.PIPE, text=True)


def finish(procs, outs):
    counts = []
    for proc, out in zip(procs, outs):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        with open(out) as fh:
            counts.append(json.load(fh))
    return counts


def test_eight_processes_share_one_bound_and_every_byte_is_right(tmp_path):
    directory = str(tmp_path / "cache")
    with DiskStore(directory, BOUND, block_size=BS) as observer:
        sampler = BoundSampler(directory, observer)
        sampler.start()
        outs = [tmp_path / f"w{n}.json" for n in range(7)]
        procs = [start_worker(directory, n, 400, out) for n, out in enumerate(outs)]
        counts = finish(procs, outs)
        sampler.check(BOUND)
        assert sampler.processes >= 3
        assert sum(c["wrong"] for c in counts) == 0
        # Far more was stored than fits: eviction ran all along...
        assert sum(c["puts"] for c in counts) * BLOCK > 3 * BOUND
        # ...and the processes read each other's blocks.
        assert sum(c["foreign"] for c in counts) > 50, counts
        assert observer.bytes_used == disk_bytes(directory) <= BOUND
        assert verify_block_files(directory, from_url) == observer.info()["blocks"] > 0


def test_eight_processes_make_a_new_cache_directory_at_once(tmp_path):
    # Making a new index races: SQLite reports "locked" without waiting
    # while another process switches the new database to WAL mode.
    directory = str(tmp_path / "new")
    go = tmp_path / "go"
    outs = [tmp_path / f"w{n}.json" for n in range(8)]
    procs = [start_worker(directory, n, 40, out, go) for n, out in enumerate(outs)]
    time.sleep(1.0)                                  # let them import and wait
    go.touch()
    counts = finish(procs, outs)
    assert sum(c["wrong"] for c in counts) == 0 and all(c["puts"] for c in counts)
    with DiskStore(directory, BOUND, block_size=BS) as store:
        assert store.bytes_used == disk_bytes(directory) <= BOUND
        assert verify_block_files(directory, from_url) == store.info()["blocks"]


def test_sigkill_mid_write_tears_nothing_and_its_reservation_is_released(tmp_path):
    directory = str(tmp_path / "cache")
    ready = tmp_path / "ready"
    fp = Fingerprint(BLOCKS * BS, '"v1"')
    with DiskStore(directory, BOUND, block_size=BS) as observer:
        sampler = BoundSampler(directory, observer)
        sampler.start()
        outs = [tmp_path / f"w{n}.json" for n in range(3)]
        procs = [start_worker(directory, 10 + n, -1, out) for n, out in enumerate(outs)]
        victim = subprocess.Popen([sys.executable, "-c", VICTIM, directory, str(BOUND),
                                   str(ready)])
        try:
            deadline = time.monotonic() + 60
            while not (ready.exists() and ready.read_text()):
                assert victim.poll() is None, "the victim died early"
                assert time.monotonic() < deadline, "the victim never got to its torn write"
                time.sleep(0.01)
            torn = ready.read_text()
            token = next(os.path.basename(p)[:-len(".lock")] for p in
                         glob.glob(os.path.join(directory, "owners", f"{victim.pid}-*.lock")))
            with sqlite3.connect(os.path.join(directory, "index.sqlite")) as db:
                reserved = db.execute("SELECT COUNT(*) FROM blocks WHERE owner=?",
                                      (token,)).fetchone()[0]
            assert reserved >= 1                          # at least the torn block's
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        # Half a block is on disk, but never under a block's name.
        assert not os.path.exists(torn)
        assert observer.get("https://archive.invalid/f99", fp, 7) is None
        # The survivors notice the death and release what it had reserved.
        deadline = time.monotonic() + 20
        while True:
            with sqlite3.connect(os.path.join(directory, "index.sqlite")) as db:
                left = db.execute("SELECT COUNT(*) FROM blocks WHERE owner=?",
                                  (token,)).fetchone()[0]
                registered = db.execute("SELECT COUNT(*) FROM owners WHERE token=?",
                                        (token,)).fetchone()[0]
            if not left and not registered:
                break
            assert time.monotonic() < deadline, "the dead writer's reservation was never released"
            time.sleep(0.1)
        assert not os.path.exists(torn[:-len(".blk")] + ".blk.tmp")
        assert not os.path.exists(os.path.join(directory, "owners", token + ".lock"))
        time.sleep(0.5)                                   # the others keep working
        for out in outs:
            open(str(out) + ".stop", "w").close()
        counts = finish(procs, outs)
        sampler.check(BOUND)
        assert sum(c["wrong"] for c in counts) == 0
        assert all(c["hits"] + c["puts"] > 0 for c in counts)
        # Nothing leaked: every reserved byte is a block file on disk.
        assert observer.bytes_used == disk_bytes(directory) <= BOUND
        assert verify_block_files(directory, from_url) == observer.info()["blocks"]


# ---------------------------------------------------------------- the real thing

def manifest_size(manifest, path):
    return next(f["size"] for f in manifest["files"]
                if f["entry"] == "EMPIAR-10002" and f["path"] == path)


IMAGESET = "Movie stacks of 80S ribosomes"

API_READER = textwrap.dedent(
    """
    import hashlib, json, sys
    import empiarfs

    fs = empiarfs.default_fs()
    assert fs.disk is not None, "the disk cache is not in use"
    sums = {}
    for path in sys.argv[1:]:
        digest = hashlib.sha256()
        with empiarfs.open(path) as fh:
            while True:
                chunk = fh.read(300_001)
                if not chunk:
                    break
                digest.update(chunk)
        sums[path] = digest.hexdigest()
    print(json.dumps({"sha256": sums, "processes": fs.disk.info()["processes"]}))
    empiarfs.close()   # finishes the queued disk writes
    """)


@requires_fuse
def test_mount_api_processes_cli_and_dask_workers_share_one_small_cache(
        archive_server, manifest, sample_root, tmp_path):
    import dask
    import mrcfile
    import numpy as np
    from distributed import Client, LocalCluster

    import empiarfs

    bound = 2 * 1024 * 1024 + 16 * 1024     # 16 blocks of 128 KiB: the data is 16 MiB
    settings = settings_for(archive_server, tmp_path, ftp_url="", cache_size=bound,
                            memory_cache=1024 * 1024)
    env = dict(os.environ, **env_for(settings))
    files = {f["path"]: f["sha256"] for f in manifest["files"]
             if f["entry"] == "EMPIAR-10002" and f["path"].endswith(".mrcs")}
    assert len(files) == 8
    names = sorted(files)
    directory = os.path.join(settings.cache_dir, "blocks")
    mnt = tmp_path / "mnt"
    with mounted(settings, mnt) as m:
        # A block one process stores, another serves: an API process reads a
        # file, then the mount reads it without a request.
        first = names[0]
        warm = subprocess.run([sys.executable, "-c", API_READER, f"EMPIAR-10002/{first}"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert warm.returncode == 0, warm.stderr
        before = stats(m)["reader"]
        assert sha256_of(os.path.join(m, "EMPIAR-10002", first)) == files[first]
        after = stats(m)["reader"]
        assert after["requests"] == before["requests"]
        assert after["hits_disk"] - before["hits_disk"] == -(-manifest_size(manifest, first)
                                                             // settings.block_size)
        with DiskStore(directory, bound, block_size=settings.block_size) as observer:
            sampler = BoundSampler(directory, observer)
            sampler.start()
            api = [subprocess.Popen([sys.executable, "-c", API_READER,
                                     *[f"EMPIAR-10002/{p}" for p in names[k::3]]],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for k in range(3)]
            through_mount = {}

            def read_mount():
                for p in reversed(names):
                    through_mount[p] = sha256_of(os.path.join(m, "EMPIAR-10002", p))
            reader = threading.Thread(target=read_mount)
            reader.start()
            scratch = str(tmp_path / "dask-scratch")
            with dask.config.set({"temporary-directory": scratch}), \
                    LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                 dashboard_address=None) as cluster, Client(cluster) as client:
                movies = empiarfs.to_dask("EMPIAR-10002", IMAGESET, settings=settings)
                got = movies.compute()
                workers_disk = client.run(lambda: [
                    fs.disk is not None for fs in
                    __import__("empiarfs.pyapi.workerfs", fromlist=["_"])._open.values()])
            info = subprocess.run([EMPIARFS, "cache", "info", "--json"], env=env,
                                  capture_output=True, text=True, timeout=60)
            reader.join(120)
            results = []
            for proc in api:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
                results.append(json.loads(out))
            sampler.check(bound)
            assert sampler.processes >= 4, sampler.processes
        # Every byte equals the source, whoever read it.
        assert through_mount == files
        for result in results:
            for path, digest in result["sha256"].items():
                assert digest == files[path.split("/", 1)[1]], path
        ref = np.concatenate([
            mrcfile.open(os.path.join(sample_root, "world_availability", "10002", p)).data
            .astype(np.float32) for p in names])
        np.testing.assert_array_equal(got, ref)
        # Every process used the one disk cache; the CLI ran beside the mount.
        assert all(flags == [True] for flags in workers_disk.values()), workers_disk
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["bytes_used"] <= bound
        assert stats(m)["disk_cache"]["max_bytes"] == bound
        # `cache clear` while mounted; the mount reads on, right.
        cleared = subprocess.run([EMPIARFS, "cache", "clear", "--yes"], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert cleared.returncode == 0, cleared.stderr
        assert sha256_of(os.path.join(m, "EMPIAR-10002", names[0])) == files[names[0]]
    with DiskStore(directory, bound, block_size=settings.block_size) as after:
        assert after.bytes_used == disk_bytes(directory) <= bound
        verify_block_files(directory)
