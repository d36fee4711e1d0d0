"""The load phases: readers over every small file and the MRCS stacks of
the sample through real mounts while the server (or a proxy in front of
it) injects faults.

* The mixed phase: one mount (sizes from FTP), 64 readers, every kind at
  once -- stalls, truncated and reset bodies, 503/429 bursts, replies cut
  anywhere, replies that lie.
* One phase per fault kind: a fresh mount with FTP unreachable (names from
  the listing, sizes from range probes: the Content-Range total) and the fault
  on from the start, so that entry JSON, listings and HEADs meet it as well
  as range reads; every size is checked by ``stat`` before the load. The
  outcomes of these phases are the "by fault kind" table of
  docs/reliability.md.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import types
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from support.archive import closed_ftp_url, injected, settings_for
from support.faultproxy import FaultProxy, Rule, daemon_pid, proc_sample, run_load
from support.mounting import mounted, stats

from empiarfs.archive_server.faults import CUT_PLACES, LIE_KINDS

log = logging.getLogger("soak")

DEADLINE = 8.0
BOUND = DEADLINE + 3.0  # one deadline per read(), see READ_BOUND in tests/test_faults_network.py
PROXY_KIND = "proxy_cut_stall"  # a proxy cutting 1 reply in 20 at any byte, stalling 1 in 30


def _bursts(faults):
    """An ``on_tick`` that queues a 503 burst and a 429 with Retry-After
    in turn, every 5 s."""
    last = {"slot": -1}

    def tick(elapsed):
        slot = int(elapsed // 5)
        if slot != last["slot"]:
            last["slot"] = slot
            if slot % 2:
                faults.error_burst(503, count=3)
            else:
                faults.error_burst(429, count=1, retry_after=1)
    return tick


def _kinds() -> dict:
    """Fault kind -> the server knobs that inject it alone (the counter
    name under ``faults.`` is the kind, but for the bursts)."""
    kinds = {
        "stall": dict(stall_probability=0.03, stall_seconds=3.0),
        "truncate": dict(truncate_probability=0.05),
        "reset": dict(reset_probability=0.05),
        "error": {},  # 503 and 429 bursts on a timer
    }
    for place in CUT_PLACES:
        kinds[f"cut_{place}"] = dict(cut_probability=0.05, cut_where=(place,))
    for kind in LIE_KINDS:
        kinds[kind] = dict(lie_probability=0.05, lie_kinds=(kind,))
    return kinds


#: Every kind the soak reports on, in table order.
KINDS = tuple(_kinds()) + (PROXY_KIND,)


def truths_of(root, manifest) -> dict:
    out = {}
    for f in manifest["files"]:
        if f["entry"] in ("EMPIAR-10943", "EMPIAR-10002", "EMPIAR-11561") and f["path"].startswith("data/"):
            path = os.path.join(root, "world_availability", f["entry"].split("-")[1], f["path"])
            out[f"{f['entry']}/{f['path']}"] = Path(path).read_bytes()
    return out


def split_time(minutes: float, kind_seconds: float | None) -> tuple[float, float]:
    """``(mixed phase seconds, seconds per kind)``: by default half the
    load time goes to the per-kind phases (at least 3 s each)."""
    total = minutes * 60
    per = kind_seconds if kind_seconds is not None else max(3.0, total / 2 / len(KINDS))
    return max(10.0, total - per * len(KINDS)), per


def run(server, root, manifest, work, *, minutes: float, readers: int,
        kind_seconds: float | None = None, only=None) -> dict:
    """The mixed phase, then one phase per kind (``only``: those kinds);
    the figures for :mod:`report`."""
    truths = truths_of(root, manifest)
    mixed_seconds, per_kind = split_time(minutes, kind_seconds)
    figures = mixed(server, truths, work, seconds=mixed_seconds, readers=readers)
    figures["kind_seconds"] = per_kind
    figures["kinds"] = []
    for kind in KINDS:
        if only and kind not in only:
            continue
        log.info("phase %s: %.0f s", kind, per_kind)
        figures["kinds"].append(by_kind(server, kind, truths, work, seconds=per_kind,
                                        readers=max(4, readers // 4)))
    return figures


def mixed(server, truths, work, *, seconds: float, readers: int) -> dict:
    """Every kind at once on one mount (sizes from FTP, listed before the
    faults start)."""
    tmp = Path(work) / "load"
    tmp.mkdir()
    settings = settings_for(server, tmp, deadline=DEADLINE, stall_timeout=1.0, hedge_after=0.5,
                            retries=4, backoff_max=0.2, memory_cache=64 << 20, cache_size=48 << 20)
    faults = server.faults
    server.stats.reset()
    log.info("mixed phase: %d readers for %.0f s", readers, seconds)
    with mounted(settings, tmp / "mnt", allow_errors=True) as mnt:
        for key in truths:
            os.stat(os.path.join(mnt, key))
        pid = daemon_pid(settings.cache_dir)
        rss0, fds0 = proc_sample(pid)
        faults.set(paths="data", stall_probability=0.01, stall_seconds=3.0,
                   truncate_probability=0.03, reset_probability=0.02,
                   cut_probability=0.02, lie_probability=0.01, seed=1)
        result = run_load(mnt, truths, readers=readers, seconds=seconds, pid=pid, bound=BOUND,
                          on_tick=_bursts(faults))
        faults.reset()
        time.sleep(4)
        rss1, fds1 = proc_sample(pid)
        counters = stats(mnt)
    crashes = 0 if result.daemon_alive else 1
    text = (tmp / "mnt.log").read_text(errors="replace")
    return {
        "result": result, "seconds": seconds, "deadline": DEADLINE, "bound": BOUND,
        "files": len(truths), "faults": injected(server),
        "rss_before_kib": rss0, "rss_after_kib": rss1, "fds_before": fds0, "fds_after": fds1,
        "network": counters["network"], "reader": counters["reader"],
        "disk_used": counters["disk_cache"].get("bytes_used", 0), "disk_max": 48 << 20,
        "crashes": crashes, "tracebacks": text.count("Traceback"),
    }


def by_kind(server, kind: str, truths, work, *, seconds: float, readers: int) -> dict:
    """One kind alone, on a fresh mount with FTP unreachable, the fault on
    before the first request."""
    tmp = Path(work) / f"kind-{KINDS.index(kind)}"
    tmp.mkdir()
    faults = server.faults
    faults.reset()
    server.stats.reset()
    proxy = None
    target = server
    if kind == PROXY_KIND:
        proxy = FaultProxy(server.url, seed=KINDS.index(kind)).start()
        proxy.add(Rule("stall", probability=1 / 30))
        proxy.add(Rule("random_cut", probability=1 / 20))
        target = types.SimpleNamespace(api_url=proxy.url + "/empiar/api",
                                       data_url=proxy.url + "/empiar/world_availability")
    else:
        faults.set(seed=KINDS.index(kind), **_kinds()[kind])
    settings = settings_for(target, tmp, ftp_url=closed_ftp_url(), deadline=DEADLINE, stall_timeout=1.0,
                            hedge_after=0.5, retries=4, backoff_max=0.2, memory_cache=64 << 20,
                            cache_size=48 << 20)
    tick = _bursts(faults) if kind == "error" else None
    try:
        with mounted(settings, tmp / "mnt", allow_errors=True) as mnt:
            if tick:
                tick(0.0)
            began = time.monotonic()
            wrong_sizes, stat_errors = _check_sizes(mnt, truths)
            stat_seconds = time.monotonic() - began
            pid = daemon_pid(settings.cache_dir)
            result = run_load(mnt, truths, readers=readers, seconds=seconds, pid=pid, bound=BOUND,
                              seed=KINDS.index(kind), on_tick=tick)
    finally:
        faults.reset()
        if proxy is not None:
            proxy.stop()
    if proxy is not None:
        of_kind = {k: v for k, v in proxy.counts.items() if k in ("stall", "random_cut")}
        detail = {f"cut in {k.split(':', 1)[1]}": v for k, v in proxy.counts.items()
                  if k.startswith("random_cut:")}
        detail["stalls"] = proxy.counts["stall"]
    else:
        counts = injected(server)
        of_kind = {k: v for k, v in counts.items() if k == kind}
        detail = {k: v for k, v in counts.items() if k != kind}
    text = (tmp / "mnt.log").read_text(errors="replace")
    return {"kind": kind, "injected": sum(of_kind.values()), "detail": detail, "result": result,
            "wrong_sizes": wrong_sizes, "stat_errors": stat_errors, "stat_seconds": stat_seconds,
            "tracebacks": text.count("Traceback"), "crashes": 0 if result.daemon_alive else 1}


def _check_sizes(mnt, truths, limit: float = 3 * BOUND) -> tuple[int, dict]:
    """Stat every file (16 at a time) under the faults: ``(sizes that are
    wrong, errno name -> count of stats that failed or hung)``."""
    def one(key):
        try:
            return os.stat(os.path.join(mnt, key)).st_size != len(truths[key]), None
        except OSError as exc:
            return True, errno.errorcode.get(exc.errno, str(exc.errno))

    wrong, errors = 0, {}
    pool = ThreadPoolExecutor(16)
    futures = [pool.submit(one, key) for key in truths]
    deadline = time.monotonic() + limit + len(truths) / 16 * 0.5
    for fut in futures:
        try:
            bad, err = fut.result(timeout=max(0.1, deadline - time.monotonic()))
        except FutureTimeout:
            bad, err = True, "hung"
        wrong += bad
        if err:
            errors[err] = errors.get(err, 0) + 1
    pool.shutdown(wait=False, cancel_futures=True)
    return wrong, errors
