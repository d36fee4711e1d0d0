"""The load phase: readers over every small file and the MRCS stacks of
the sample through a real mount, while the server stalls, truncates,
resets and answers 503/429 bursts."""

from __future__ import annotations

import os
import time
from pathlib import Path

from support.archive import settings_for
from support.faultproxy import daemon_pid, proc_sample, run_load
from support.mounting import mounted, stats

DEADLINE = 8.0
BOUND = DEADLINE + 3.0  # one deadline per read(), see READ_BOUND in tests/test_faults_network.py


def run(server, root, manifest, work, *, minutes: float, readers: int) -> dict:
    truths = {}
    for f in manifest["files"]:
        if f["entry"] in ("EMPIAR-10943", "EMPIAR-10002", "EMPIAR-11561") and f["path"].startswith("data/"):
            path = os.path.join(root, "world_availability", f["entry"].split("-")[1], f["path"])
            truths[f"{f['entry']}/{f['path']}"] = Path(path).read_bytes()
    tmp = Path(work) / "load"
    tmp.mkdir()
    settings = settings_for(server, tmp, deadline=DEADLINE, stall_timeout=1.0, hedge_after=0.5,
                            retries=4, backoff_max=0.2, memory_cache=64 << 20, cache_size=48 << 20)
    faults = server.faults
    server.stats.reset()
    with mounted(settings, tmp / "mnt", allow_errors=True) as mnt:
        for key in truths:
            os.stat(os.path.join(mnt, key))
        pid = daemon_pid(settings.cache_dir)
        rss0, fds0 = proc_sample(pid)
        faults.set(paths="data", stall_probability=0.01, stall_seconds=3.0,
                   truncate_probability=0.03, reset_probability=0.02)
        last = {"burst": -1}

        def bursts(elapsed):
            slot = int(elapsed // 5)
            if slot != last["burst"]:
                last["burst"] = slot
                if slot % 2:
                    faults.error_burst(503, count=3)
                else:
                    faults.error_burst(429, count=1, retry_after=1)

        began = time.monotonic()
        result = run_load(mnt, truths, readers=readers, seconds=minutes * 60, pid=pid, bound=BOUND,
                          on_tick=bursts)
        faults.reset()
        time.sleep(4)
        rss1, fds1 = proc_sample(pid)
        counters = stats(mnt)
    crashes = 0 if result.daemon_alive else 1
    text = (tmp / "mnt.log").read_text(errors="replace")
    return {
        "result": result, "seconds": time.monotonic() - began, "deadline": DEADLINE, "bound": BOUND,
        "files": len(truths), "faults": {k[len("faults."):]: v for k, v in server.stats.snapshot().items()
                                         if k.startswith("faults.")},
        "rss_before_kib": rss0, "rss_after_kib": rss1, "fds_before": fds0, "fds_after": fds1,
        "network": counters["network"], "reader": counters["reader"],
        "disk_used": counters["disk_cache"].get("bytes_used", 0), "disk_max": 48 << 20,
        "crashes": crashes, "tracebacks": text.count("Traceback"),
    }
