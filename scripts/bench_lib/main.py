"""Benchmark empiarfs against the network's and the disk's limits and
against its peers (rclone mount, fsspec.fuse).

Generates (once) a sample archive, serves it from child processes (the
project's archive server, or Apache httpd for the data with ``--server
apache``) with a profile's fault knobs or behind the TCP-level WAN proxy,
mounts empiarfs and each peer in other child processes (fresh mount and
cache per workload, kernel caches dropped before each cold part) and runs
the workloads and the reference downloads in the same run. A filesystem
that does not finish a workload within ``--time-limit`` is killed and
reported as hung. Prints medians, ratios, empiarfs's ratio to the best peer
and PASS/MISS per target; writes ``bench-results/<timestamp>.json``. See
docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback

import archive as A
import peers as P
import references as R
import report
import workloads as W
from procs import BenchError, Mount, drop_page_cache, snapshot_tree
from sites import Site

from empiarfs.config import parse_size

log = logging.getLogger("bench")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROFILES = {
    # Loopback / facility mirror: no limits.
    "loopback": {"rate": 0.0, "latency": 0.0, "stall": 0.0},
    # EMPIAR over HTTPS from afar: ~1.5 MB/s per connection, 50 ms added per
    # request, 1 request in 30 accepted and never answered.
    "wan": {"rate": 1.5e6, "latency": 0.05, "stall": 1 / 30},
    # EMPIAR's network at the TCP level (scripts/bench_lib/wanproxy.py): 100 ms
    # RTT, 150 KB in flight per connection reached by slow start (about
    # 1.5 MB/s per connection), slow start again after an idle spell, 1
    # request in 30 never answered; HTTP only (FTP unreachable).
    "tcp-wan": {"rtt": 0.1, "window": 150_000, "initial_window": 10 * 1460,
                "stall": 1 / 30, "restart_after": None},
}
PROFILE_SETS = {"both": ["loopback", "wan"], "all": ["loopback", "wan", "tcp-wan"]}
# The workloads the peers run unless --peer-workloads says otherwise: the
# issue's three (cold sequential, the header scan, ls -l).
PEER_WORKLOADS = "sequential,header_scan,listing"

FULL = {"many_files": 3000, "mrc_files": 500, "scan_files": 500, "frames": 200,
        "random_reads": 2000, "wan_random_reads": 500, "stall_reads": 150}
QUICK = {"many_files": 120, "mrc_files": 24, "scan_files": 24, "frames": 16,
         "random_reads": 40, "wan_random_reads": 16, "stall_reads": 12}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="both", type=_profiles,
                   help="loopback, wan, tcp-wan, or a comma-separated list; 'both' is "
                        "loopback,wan, 'all' all three (default both)")
    p.add_argument("--server", choices=("project", "apache"), default="project",
                   help="what serves the data tree on loopback and behind the tcp-wan proxy: "
                        "the project's archive server or Apache httpd (the API and FTP are "
                        "always the project's; the wan profile always uses the project's "
                        "server, whose knobs make it slow)")
    p.add_argument("--tcp-wan", default="", metavar="K=V,...",
                   help="override the tcp-wan model: rtt (s), window and initial_window "
                        "(bytes), stall (probability), restart_after (s)")
    p.add_argument("--peers", default=",".join(P.PEERS),
                   help="comma-separated peers to run next to empiarfs: rclone, fsspec, "
                        "or 'none' (default rclone,fsspec)")
    p.add_argument("--peer-workloads", default=PEER_WORKLOADS,
                   help=f"workloads the peers run (default {PEER_WORKLOADS})")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="seconds a workload may take on one filesystem before it is killed "
                        "and reported hung (default 300; 60 with --quick)")
    p.add_argument("--bench-venv", default=P.BENCH_VENV,
                   help="virtual environment for the fsspec peer, made on demand "
                        "(default .bench-venv)")
    p.add_argument("--size", default="1G", help="large file for loopback (default 1G)")
    p.add_argument("--wan-size", default="256M",
                   help="file for the WAN cold sequential read (default 256M)")
    p.add_argument("--stacks", type=int, default=0,
                   help="MRCS stacks for the header scan, mrcfile and frame workloads "
                        "(default 500, 24 with --quick)")
    p.add_argument("--single-stream-bytes", default="32M",
                   help="bytes the WAN single-stream curl reference downloads (default 32M; "
                        "its rate is flat, a whole file would take minutes)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one run: checks the benchmark works, not the speed")
    p.add_argument("--workdir", default="/tmp/empiarfs-bench",
                   help="archive cache, mount point and scratch (default /tmp/empiarfs-bench)")
    p.add_argument("--results", default=os.path.join(REPO, "bench-results"))
    p.add_argument("--memory-cache", default="1G", help="the daemon's --memory-cache")
    p.add_argument("--block-size", default="128K", help="the daemon's --block-size (the default setting)")
    p.add_argument("--threads", type=int, default=16, help="reader threads for many-file workloads")
    p.add_argument("--only", default="", help="comma-separated workloads: "
                   + ",".join(W.WORKLOADS))
    p.add_argument("--tree", default="HEAD",
                   help="git revision of empiarfs the server and daemon run (default HEAD; "
                        "'working' runs the working tree as it is)")
    p.add_argument("--mount-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the daemon, e.g. EMPIARFS_PARALLEL_PER_FILE=32")
    args = p.parse_args(argv)
    try:
        args.tcp_wan_knobs = _knobs(args.tcp_wan)
    except ValueError as exc:
        p.error(f"--tcp-wan: {exc}")
    args.peer_list = [] if args.peers in ("", "none") else args.peers.split(",")
    for peer in args.peer_list:
        if peer not in P.PEERS:
            p.error(f"--peers: unknown peer {peer!r} (known: {', '.join(P.PEERS)}, none)")
    for w in [w for w in (args.only + "," + args.peer_workloads).split(",") if w]:
        if w not in W.WORKLOADS:
            p.error(f"unknown workload {w!r} (known: {', '.join(W.WORKLOADS)})")
    return args


def _profiles(text: str) -> list[str]:
    names = PROFILE_SETS.get(text) or [n for n in text.split(",") if n]
    for n in names:
        if n not in PROFILES:
            raise argparse.ArgumentTypeError(
                f"unknown profile {n!r} (known: {', '.join(PROFILES)}, both, all)")
    return names


def _knobs(text: str) -> dict:
    knobs = dict(PROFILES["tcp-wan"])
    for item in [i for i in text.split(",") if i]:
        key, sep, value = item.partition("=")
        if not sep or key not in knobs:
            raise ValueError(f"{item!r} is not one of {', '.join(k + '=V' for k in knobs)}")
        knobs[key] = (int(parse_size(value)) if key in ("window", "initial_window")
                      else float(value))
    return knobs


def machine() -> dict:
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "n/a"

    cpu = "n/a"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / (1 << 30), 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "fuse": run(["fusermount3", "-V"]), "curl": run(["curl", "--version"]).split("\n")[0],
            "aria2c": run(["aria2c", "--version"]).split("\n")[0],
            "commit": run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])}


def run_limited(fn, ctx: W.Context, limit: float) -> dict:
    """``fn(ctx)`` with a time limit. Past it the mount in use is killed (its
    FUSE connection ends, so blocked readers get an error) and the result is
    ``{"hung": limit}`` (plus ``hung_bytes`` read so far, when counted)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(ctx)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"workload-{ctx.fs}", daemon=True)
    thread.start()
    try:
        thread.join(limit)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): the mount must not outlive the bench.
        if ctx.current is not None:
            ctx.current.kill()
        raise
    if thread.is_alive():
        log.error("[%s] %s: not done after %.0f s: killed", ctx.profile, ctx.fs, limit)
        progress = dict(ctx.progress)
        if ctx.current is not None:
            ctx.current.kill()
        thread.join(60)
        out = {"hung": limit}
        if "bytes" in progress:
            out["hung_bytes"] = progress["bytes"]
        return out
    if ctx.current is not None:
        ctx.current.close()  # a workload that raised left its mount up
    if "error" in box:
        raise box["error"]
    return box["result"]


def _peer_python(args) -> str | None:
    if "fsspec" not in args.peer_list:
        return None
    if not hasattr(args, "fsspec_python"):
        try:
            args.fsspec_python = P.bench_venv_python(args.bench_venv)
        except BenchError as exc:
            log.error("%s; the fsspec peer is left out", exc)
            args.fsspec_python = None
    return args.fsspec_python


def run_profile(name: str, args, sizes: dict, root: str) -> dict:
    knobs = args.tcp_wan_knobs if name == "tcp-wan" else PROFILES[name]
    wan = name != "loopback"
    seq_rel = A.WAN if wan else A.LARGE
    logs = os.path.join(args.workdir, "logs")
    os.makedirs(logs, exist_ok=True)
    env = dict(args.child_env, **dict(kv.split("=", 1) for kv in args.mount_env))
    counts = dict(sizes["counts"])
    if wan:
        counts["random_reads"] = counts["wan_random_reads"]
    only = [w for w in args.only.split(",") if w] or list(W.WORKLOADS)
    if not wan and "stalls" in only and not args.only:
        only.remove("stalls")  # no stalls on loopback
    python = _peer_python(args)
    peers, skipped = [], {}
    for peer in args.peer_list:
        why = P.unavailable(peer, python)
        if why:
            log.error("[%s] peer %s left out: %s", name, peer, why)
            skipped[peer] = why
        else:
            peers.append(peer)
    peer_only = [w for w in args.peer_workloads.split(",") if w]
    systems = ["empiarfs"] + peers
    runs = {fs: {w: [] for w in only} for fs in systems}
    refs_runs: dict = {}
    errors, peer_errors = [], {}
    server_kind = "project" if name == "wan" else args.server
    with Site(name, knobs, server_kind, root, args.workdir, args.child_env) as site:
        urls = site.urls
        data = urls["data_url"]

        def url(rel, entry=A.ENTRY):
            return f"{data}/{entry.split('-', 1)[1]}/{rel}"

        def mounter(fs):
            if fs == "empiarfs":
                return lambda register: Mount(
                    os.path.join(args.workdir, "mnt"), os.path.join(args.workdir, "cache"), urls,
                    memory_cache=args.memory_cache, block_size=args.block_size,
                    log_path=os.path.join(logs, f"mount-{name}.log"), env=env, register=register)
            return lambda register: P.PeerMount(
                fs, os.path.join(args.workdir, f"mnt-{fs}"), os.path.join(args.workdir, f"cache-{fs}"),
                data, log_path=os.path.join(logs, f"{fs}-{name}.log"), python=python,
                register=register)

        def context(fs):
            return W.Context(profile=name, server=site, mount=mounter(fs), root=root,
                             seq_rel=seq_rel, random_rel=A.LARGE, counts=counts,
                             block_size=parse_size(args.block_size), threads=args.threads, fs=fs)

        for rep in range(args.repeat):
            log.warning("[%s] run %d/%d: references", name, rep + 1, args.repeat)
            # References see the network's limit without stalls: a stalled
            # curl would hang for minutes and flatter empiarfs.
            site.set_stall(0)
            seq_url = url(seq_rel)
            seq_path = A.data_path(root, A.ENTRY, seq_rel)
            seq_size = os.path.getsize(seq_path)
            refs = {}
            for key, fn, fn_args in (
                    ("curl", R.curl_stream, (seq_url, sizes["single_bytes"] if wan else None)),
                    ("aria2c", R.aria2c_parallel, (seq_url, seq_size, args.workdir)),
                    ("latency", R.request_latency, (url(A.mrc_names(1)[0]),)),
                    ("local", R.local_read, (seq_path,))):
                drop_page_cache(level=3)  # every cold read starts from the server's disk
                refs[key] = fn(*fn_args)
            for key, value in refs.items():
                refs_runs.setdefault(key, []).append(value)
            site.set_stall(knobs["stall"])
            for wname in only:
                for fs in systems:
                    if fs != "empiarfs" and wname not in peer_only:
                        continue
                    if any("hung" in r for r in runs[fs][wname]):
                        continue  # hung once: not run again
                    log.warning("[%s] run %d/%d: %s on %s", name, rep + 1, args.repeat, wname, fs)
                    try:
                        runs[fs][wname].append(run_limited(W.WORKLOADS[wname], context(fs),
                                                           args.time_limit))
                    except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        log.error("[%s] %s on %s failed: %s", name, wname, fs, exc)
                        log.debug("%s", traceback.format_exc())
                        if fs == "empiarfs":
                            errors.append(f"{wname}: {exc}")
                        else:
                            peer_errors.setdefault(fs, {})[wname] = str(exc)
        site_name = site.describe()
    workloads = {w: report.combine(r) for w, r in runs["empiarfs"].items() if r}
    peer_results = {fs: {w: report.combine(r) for w, r in runs[fs].items() if r} for fs in peers}
    references = {k: report.combine(v) for k, v in refs_runs.items()}
    result = {"profile": knobs, "repeat": args.repeat, "workloads": workloads,
              "references": references, "errors": errors, "counts": counts,
              "server": site_name, "peers": peer_results, "peer_errors": peer_errors,
              "peers_left_out": skipped, "time_limit": args.time_limit, "threads": args.threads,
              "sequential_file": seq_rel,
              "sequential_bytes": os.path.getsize(A.data_path(root, A.ENTRY, seq_rel))}
    result["comparison"] = report.compare(result)
    result["targets"] = report.targets(name, workloads, references, parse_size(args.memory_cache),
                                       knobs)
    for err in errors:
        result["targets"].append({"target": f"workload failed: {err}", "value": None,
                                  "goal": "no failure", "unit": "", "pass": False})
    return result


def _terminate(signum, frame):
    # SIGTERM unwinds like Ctrl-C, so servers, the proxy and mounts are stopped.
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s bench: %(message)s",
                        datefmt="%H:%M:%S")
    if args.quick:
        args.repeat = 1
        if args.time_limit == 300.0:
            args.time_limit = 60.0
        sizes = {"large": 16 << 20, "wan": 8 << 20, "single_bytes": 1 << 20, "counts": dict(QUICK)}
        args.workdir = os.path.join(args.workdir, "quick")
    else:
        sizes = {"large": parse_size(args.size), "wan": parse_size(args.wan_size),
                 "single_bytes": parse_size(args.single_stream_bytes), "counts": dict(FULL)}
    if args.stacks:
        sizes["counts"]["mrc_files"] = sizes["counts"]["scan_files"] = args.stacks
    os.makedirs(args.workdir, exist_ok=True)
    began = time.monotonic()
    args.child_env, tree = {}, "working tree"
    if args.tree != "working":
        src, tree = snapshot_tree(REPO, args.workdir, args.tree)
        args.child_env = {"PYTHONPATH": src}
    c = sizes["counts"]
    root = A.ensure_archive(args.workdir, sizes["large"], sizes["wan"], c["many_files"],
                            c["mrc_files"])
    profiles = args.profile
    results = {"command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "settings": {"memory_cache": args.memory_cache, "block_size": args.block_size,
                            "threads": args.threads, "mount_env": args.mount_env,
                            "large_bytes": sizes["large"], "wan_bytes": sizes["wan"],
                            "single_stream_bytes": sizes["single_bytes"],
                            "server": args.server, "peers": args.peer_list,
                            "peer_workloads": args.peer_workloads,
                            "time_limit": args.time_limit},
               "profiles": {}}
    results["machine"]["peers"] = P.versions(_peer_python(args))
    m = results["machine"]
    print(f"machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB RAM, kernel {m['kernel']}, "
          f"Python {m['python']}, {m['fuse']}; empiarfs {tree}")
    if m["peers"]:
        print("peers: " + "; ".join(m["peers"].values()))
    results["empiarfs_tree"] = tree
    for name in profiles:
        results["profiles"][name] = run_profile(name, args, sizes, root)
        report.print_profile(name, results["profiles"][name], sys.stdout)
        sys.stdout.flush()
    results["seconds"] = time.monotonic() - began
    path = report.write_json(results, args.results)
    rows = [r for p in results["profiles"].values() for r in p["targets"]]
    passed = sum(1 for r in rows if r["pass"])
    print(f"\n{passed}/{len(rows)} targets met; total {results['seconds']:.0f} s; results: {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"scripts/bench: {exc}", file=sys.stderr)
        sys.exit(1)
