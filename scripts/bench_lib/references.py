"""What the network and the disk give without empiarfs: one curl stream,
a 16-connection aria2c download, a local disk read, the latency of one
small request. Each returns a dict with ``mbps`` (MB/s, 10^6 bytes) or
``seconds``; ``None`` values when a tool is missing."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time

from procs import drop_page_cache

MB = 1e6


def curl_stream(url: str, nbytes: int | None) -> dict:
    """One HTTP stream of the first ``nbytes`` (whole file if None)."""
    if not shutil.which("curl"):
        return {"mbps": None, "note": "curl not installed"}
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "--max-time", "900",
           "-w", "%{size_download} %{time_total}"]
    if nbytes:
        cmd += ["-r", f"0-{nbytes - 1}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    size, seconds = out.split()
    return {"bytes": int(size), "seconds": float(seconds), "mbps": int(size) / float(seconds) / MB}


def aria2c_parallel(url: str, size: int, workdir: str, connections: int = 16) -> dict:
    """``aria2c -x16 -s16 -k1M`` into ``workdir`` (deleted afterwards)."""
    if not shutil.which("aria2c"):
        return {"mbps": None, "note": "aria2c not installed"}
    out_dir = os.path.join(workdir, "aria2c")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    cmd = ["aria2c", f"-x{connections}", f"-s{connections}", "-k1M", "-q",
           "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
           "--timeout=30", "-d", out_dir, "-o", "out", url]
    began = time.monotonic()
    subprocess.run(cmd, check=True, timeout=1800)
    seconds = time.monotonic() - began
    got = os.path.getsize(os.path.join(out_dir, "out"))
    shutil.rmtree(out_dir, ignore_errors=True)
    if got != size:
        raise RuntimeError(f"aria2c wrote {got} bytes, expected {size}")
    return {"bytes": got, "seconds": seconds, "mbps": got / seconds / MB,
            "connections": connections}


def request_latency(url: str, count: int = 15) -> dict:
    """Median time of a 1 KiB range request (new connection each time)."""
    if not shutil.which("curl"):
        return {"seconds": None, "note": "curl not installed"}
    times = []
    for _ in range(count):
        out = subprocess.run(["curl", "-s", "-f", "-o", "/dev/null", "--max-time", "60",
                              "-r", "0-1023", "-w", "%{time_total}", url],
                             capture_output=True, text=True, check=True).stdout
        times.append(float(out))
    return {"seconds": statistics.median(times), "count": count}


def local_read(path: str, chunk: int = 1 << 20) -> dict:
    """Sequential read of the source file from local disk, page cache dropped."""
    method = drop_page_cache(path)
    began = time.monotonic()
    total = read_file(path, chunk)
    seconds = time.monotonic() - began
    return {"bytes": total, "seconds": seconds, "mbps": total / seconds / MB, "drop": method}


def read_file(path: str, chunk: int = 1 << 20, limit: int | None = None) -> int:
    """Read a file sequentially in ``chunk``-byte reads; returns bytes read."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while limit is None or total < limit:
            n = os.readv(fd, [view])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    return total
