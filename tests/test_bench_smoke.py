"""Smoke test of scripts/bench: tiny sizes, end to end, no timing claims.

The benchmark itself is not part of CI (it takes minutes); this only checks
that it generates its archive, serves it, mounts empiarfs, runs the
workloads and the references, prints ratios and PASS/MISS lines and writes
its JSON record.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from support.mounting import fuse_available

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "scripts", "bench")

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(fuse_available() is not None,
                       reason=f"FUSE unavailable: {fuse_available()}"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (scripts/setup)"),
]


def test_bench_quick_runs_end_to_end(tmp_path):
    results = tmp_path / "results"
    # Both profiles, a few workloads (the stall one included); a short
    # stall timeout so a stalled fetch does not hold up the unmount.
    cmd = [BENCH, "--quick", "--profile", "both", "--workdir", str(tmp_path / "work"),
           "--results", str(results), "--only", "sequential,header_scan,random_reads,stalls",
           "--mount-env", "EMPIARFS_STALL_TIMEOUT=2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHON=sys.executable))
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    for profile in ("loopback", "wan"):
        assert f"=== profile {profile}" in out
    assert "cold  sequential / curl" in out and "warm  sequential / local" in out
    assert "PASS" in out or "MISS" in out
    assert "workload failed" not in out, out
    (path,) = glob.glob(str(results / "*.json"))
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    wan = record["profiles"]["wan"]
    seq = wan["workloads"]["sequential"]
    assert seq["bytes"] == 8 << 20 and seq["cold_server_bytes"] >= seq["bytes"]
    assert wan["references"]["curl"]["mbps"] > 0
    # 12 reads asked for, but the 8 MiB quick file has only 8 distinct MiB.
    assert wan["workloads"]["stalls"]["reads"] == 8
    assert {r["target"] for r in wan["targets"]} >= {
        "cold sequential / aria2c -x16", "1 MiB read p99 under stalls", "daemon peak RSS"}
    assert not wan["errors"] and not record["profiles"]["loopback"]["errors"]
