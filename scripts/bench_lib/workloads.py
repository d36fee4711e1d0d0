"""The workloads. Each runs on its own fresh mount (cold caches) of the
filesystem under test (empiarfs or a peer, ``Context.fs``), with the
kernel's caches dropped before each cold part, and returns a flat dict of
numbers: wall time, throughput, and what the server and (for empiarfs) the
daemon counted while the timed part ran."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import archive as A
from procs import Mount, drop_page_cache
from references import MB

if TYPE_CHECKING:
    from sites import Site

KiB = 1024


@dataclass
class Context:
    """What a workload needs: the site (servers and their counters), a way
    to mount the filesystem under test, the archive, sizes."""

    profile: str
    server: Site            # stats(), reset()
    mount: Callable[..., Mount]   # mount(register=fn): fn(mount) once its process runs
    root: str
    seq_rel: str            # file for the sequential read (LARGE or WAN)
    random_rel: str         # file for random reads
    counts: dict
    block_size: int
    threads: int = 16
    fs: str = "empiarfs"
    peak_rss: list = field(default_factory=list)
    current: object = None  # the mount in use, for killing it if the workload hangs
    progress: dict = field(default_factory=dict)  # bytes read so far, for a hung report

    def open(self):
        """Mount the filesystem under test afresh (empty cache)."""
        self.current = None
        self.progress.clear()
        return self.mount(register=self._register)

    def _register(self, mnt) -> None:
        self.current = mnt


def _delta(after: dict, before: dict) -> dict:
    out = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _delta(value, before.get(key, {}))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value - before.get(key, 0)
    return out


def _measure(ctx: Context, mnt: Mount, fn, cold: bool = False) -> dict:
    """Run ``fn()`` timed; server counters and daemon counters over the run.
    ``cold``: drop the page cache, dentries and inodes first (as root)."""
    if cold:
        drop_page_cache(level=3)
    ctx.server.reset()
    before = mnt.stats()
    began = time.monotonic()
    result = fn()
    seconds = time.monotonic() - began
    daemon = _delta(mnt.stats(), before)
    server = ctx.server.stats()
    net, reader = daemon.get("network", {}), daemon.get("reader", {})
    return {"seconds": seconds, "result": result,
            "server_requests": server.get("requests", 0),
            "server_file_requests": server.get("requests.file", 0) + server.get("requests.head", 0),
            "server_bytes": server.get("bytes_sent", 0),
            "server_stalls": server.get("faults.stall", 0),
            "max_in_flight": server.get("max_in_flight", 0),
            "net_requests": net.get("requests", 0), "hedges": net.get("hedges", 0),
            "retries": net.get("retries", 0),
            "bytes_fetched": reader.get("bytes_fetched", 0)}


def _finish(ctx: Context, mnt: Mount, out: dict) -> dict:
    mnt.close()
    ctx.peak_rss.append(mnt.peak_rss)
    out["peak_rss"] = mnt.peak_rss
    out.pop("result", None)
    return out


def _pool(ctx: Context, fn, items, threads=None) -> list:
    with ThreadPoolExecutor(threads or ctx.threads) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------- workloads

def sequential(ctx: Context) -> dict:
    """(1) cold sequential read, (2) warm re-read with the page cache dropped."""
    mnt = ctx.open()
    path = mnt.path(A.ENTRY, ctx.seq_rel)
    size = os.stat(path).st_size
    cold = _measure(ctx, mnt, lambda: _read_all(ctx, path), cold=True)
    if cold["result"] != size:
        raise RuntimeError(f"cold read of {path} returned {cold['result']} of {size} bytes")
    method = drop_page_cache(path)
    warm = _measure(ctx, mnt, lambda: _read_all(ctx, path))
    out = {"bytes": size, "cold_seconds": cold["seconds"], "cold_mbps": size / cold["seconds"] / MB,
           "warm_seconds": warm["seconds"], "warm_mbps": size / warm["seconds"] / MB,
           "cold_server_bytes": cold["server_bytes"], "cold_requests": cold["server_file_requests"],
           "cold_hedges": cold["hedges"], "cold_stalls": cold["server_stalls"],
           "warm_server_bytes": warm["server_bytes"], "drop": method}
    return _finish(ctx, mnt, out)


def header_scan(ctx: Context) -> dict:
    """(3) the first 1 KiB of N files, ``threads`` at a time."""
    mnt = ctx.open()
    names = A.mrc_names(ctx.counts["scan_files"])
    os.listdir(mnt.path(A.ENTRY, A.MRC_DIR))  # the listing is not part of the scan

    def head(rel):
        with open(mnt.path(A.ENTRY, rel), "rb", buffering=0) as fh:
            return len(fh.read(KiB))

    m = _measure(ctx, mnt, lambda: _pool(ctx, head, names), cold=True)
    if any(n != KiB for n in m["result"]):
        raise RuntimeError("a header read came back short")
    n = len(names)
    out = {"files": n, "seconds": m["seconds"], "threads": ctx.threads,
           "requests_per_file": m["server_file_requests"] / n,
           "blocks_per_file": m["bytes_fetched"] / ctx.block_size / n,
           "server_bytes": m["server_bytes"], "hedges": m["hedges"]}
    return _finish(ctx, mnt, out)


def random_reads(ctx: Context) -> dict:
    """(4) random 64 KiB reads (4 KiB-aligned offsets) in the large file."""
    mnt = ctx.open()
    path = mnt.path(A.ENTRY, ctx.random_rel)
    source = A.data_path(ctx.root, A.ENTRY, ctx.random_rel)
    size = os.stat(path).st_size
    rng = random.Random(4)
    length = 64 * KiB
    offsets = [rng.randrange(0, (size - length) // 4096) * 4096
               for _ in range(ctx.counts["random_reads"])]
    fd = os.open(path, os.O_RDONLY)

    def one(off):
        return hashlib.blake2b(os.pread(fd, length, off)).digest()

    try:
        m = _measure(ctx, mnt, lambda: _pool(ctx, one, offsets, threads=8), cold=True)
    finally:
        os.close(fd)
    with open(source, "rb") as fh:
        for off, digest in zip(offsets, m["result"]):
            fh.seek(off)
            if hashlib.blake2b(fh.read(length)).digest() != digest:
                raise RuntimeError(f"random read at {off} returned wrong bytes")
    read = len(offsets) * length
    out = {"reads": len(offsets), "seconds": m["seconds"], "bytes_read": read,
           "bytes_fetched": m["bytes_fetched"], "server_bytes": m["server_bytes"],
           "fetched_over_read": m["bytes_fetched"] / read,
           "server_over_read": m["server_bytes"] / read,
           "requests": m["server_file_requests"]}
    return _finish(ctx, mnt, out)


def listing(ctx: Context) -> dict:
    """(5) ``ls -l`` of the many-files directory, cold then warm."""
    mnt = ctx.open()
    path = mnt.path(A.MANY_ENTRY, A.MANY_DIR)

    def ls():
        out = subprocess.run(["ls", "-l", path], capture_output=True, text=True, check=True)
        return out.stdout.count("\n") - 1

    cold = _measure(ctx, mnt, ls, cold=True)
    warm = _measure(ctx, mnt, ls)
    want = ctx.counts["many_files"]
    # A peer may list more than the files (fsspec lists the autoindex's
    # sort links too); fewer is always wrong.
    if cold["result"] != want and (ctx.fs == "empiarfs" or cold["result"] < want):
        raise RuntimeError(f"ls -l listed {cold['result']} files, expected {want}")
    out = {"files": cold["result"], "cold_seconds": cold["seconds"], "warm_seconds": warm["seconds"],
           "cold_requests": cold["server_requests"], "warm_requests": warm["server_requests"],
           "cold_max_in_flight": cold["max_in_flight"]}
    return _finish(ctx, mnt, out)


def mrc_headers(ctx: Context) -> dict:
    """(6) ``mrcfile.open(header_only=True)`` of N stacks."""
    import mrcfile

    mnt = ctx.open()
    names = A.mrc_names(ctx.counts["mrc_files"])
    os.listdir(mnt.path(A.ENTRY, A.MRC_DIR))

    def head(rel):
        with mrcfile.open(mnt.path(A.ENTRY, rel), header_only=True) as mrc:
            return int(mrc.header.nx)

    m = _measure(ctx, mnt, lambda: _pool(ctx, head, names), cold=True)
    if any(nx != A.NX for nx in m["result"]):
        raise RuntimeError("mrcfile read a wrong header")
    n = len(names)
    out = {"files": n, "seconds": m["seconds"], "files_per_s": n / m["seconds"],
           "requests_per_file": m["server_file_requests"] / n,
           "blocks_per_file": m["bytes_fetched"] / ctx.block_size / n}
    return _finish(ctx, mnt, out)


def frames(ctx: Context) -> dict:
    """(7) random frames of the MRCS stacks, checked against the source."""
    mnt = ctx.open()
    stacks = A.mrc_names(ctx.counts["mrc_files"])
    os.listdir(mnt.path(A.ENTRY, A.MRC_DIR))
    rng = random.Random(7)
    picks = [(rng.choice(stacks), rng.randrange(A.FRAMES)) for _ in range(ctx.counts["frames"])]

    def one(pick):
        rel, k = pick
        fd = os.open(mnt.path(A.ENTRY, rel), os.O_RDONLY)
        try:
            data = os.pread(fd, A.FRAME_BYTES, A.HEADER + k * A.FRAME_BYTES)
        finally:
            os.close(fd)
        return hashlib.blake2b(data).digest()

    m = _measure(ctx, mnt, lambda: _pool(ctx, one, picks), cold=True)
    for (rel, k), digest in zip(picks, m["result"]):
        with open(A.data_path(ctx.root, A.ENTRY, rel), "rb") as fh:
            fh.seek(A.HEADER + k * A.FRAME_BYTES)
            if hashlib.blake2b(fh.read(A.FRAME_BYTES)).digest() != digest:
                raise RuntimeError(f"frame {k} of {rel} came back wrong")
    n = len(picks)
    read = n * A.FRAME_BYTES
    out = {"frames": n, "seconds": m["seconds"], "frames_per_s": n / m["seconds"],
           "fetched_over_read": m["bytes_fetched"] / read, "requests": m["server_file_requests"]}
    return _finish(ctx, mnt, out)


def stalls(ctx: Context) -> dict:
    """(8) latency of 1 MiB reads at distinct offsets while the server stalls
    some requests: p50/p99/max and failures."""
    mnt = ctx.open()
    path = mnt.path(A.ENTRY, ctx.seq_rel)
    size = os.stat(path).st_size
    mib = 1 << 20
    slots = list(range(size // mib))
    random.Random(8).shuffle(slots)
    slots = slots[:ctx.counts["stall_reads"]]
    fd = os.open(path, os.O_RDONLY)

    def one(slot):
        began = time.monotonic()
        try:
            ok = len(os.pread(fd, mib, slot * mib)) == mib
        except OSError:
            ok = False
        return time.monotonic() - began, ok

    try:
        m = _measure(ctx, mnt, lambda: _pool(ctx, one, slots, threads=8), cold=True)
    finally:
        os.close(fd)
    lat = sorted(t for t, _ in m["result"])
    out = {"reads": len(lat), "failures": sum(1 for _, ok in m["result"] if not ok),
           "p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": lat[-1],
           "server_stalls": m["server_stalls"], "hedges": m["hedges"], "retries": m["retries"]}
    return _finish(ctx, mnt, out)


def _read_all(ctx: Context, path: str, chunk: int = 1 << 20) -> int:
    """Read a file sequentially in ``chunk``-byte reads, keeping the count
    in ``ctx.progress`` (what a hung run had read by its time limit)."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    ctx.progress["bytes"] = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [view])
            if not n:
                break
            ctx.progress["bytes"] += n
    finally:
        os.close(fd)
    return ctx.progress["bytes"]


def _pct(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


WORKLOADS = {"sequential": sequential, "header_scan": header_scan, "random_reads": random_reads,
             "listing": listing, "mrc_headers": mrc_headers, "frames": frames, "stalls": stalls}
