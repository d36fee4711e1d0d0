"""Benchmark empiarfs against the network's and the disk's limits.

Generates (once) a sample archive, serves it from a child process with a
profile's fault knobs, mounts empiarfs in another child process (fresh
cache per cold run) and runs the workloads and the reference downloads in
the same run. Prints medians, ratios and PASS/MISS per target; writes
``bench-results/<timestamp>.json``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import time
import traceback

import archive as A
import references as R
import report
import workloads as W
from procs import BenchError, Mount, ServerProcess, snapshot_tree

from empiarfs.config import parse_size

log = logging.getLogger("bench")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROFILES = {
    # Loopback / facility mirror: no limits.
    "loopback": {"rate": 0.0, "latency": 0.0, "stall": 0.0},
    # EMPIAR over HTTPS from afar: ~1.5 MB/s per connection, 50 ms added per
    # request, 1 request in 30 accepted and never answered.
    "wan": {"rate": 1.5e6, "latency": 0.05, "stall": 1 / 30},
}

FULL = {"many_files": 3000, "mrc_files": 500, "scan_files": 500, "frames": 200,
        "random_reads": 2000, "wan_random_reads": 500, "stall_reads": 150}
QUICK = {"many_files": 120, "mrc_files": 24, "scan_files": 24, "frames": 16,
         "random_reads": 40, "wan_random_reads": 16, "stall_reads": 12}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=("loopback", "wan", "both"), default="both")
    p.add_argument("--size", default="1G", help="large file for loopback (default 1G)")
    p.add_argument("--wan-size", default="256M",
                   help="file for the WAN cold sequential read (default 256M)")
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
    return p.parse_args(argv)


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


def run_profile(name: str, args, sizes: dict, root: str) -> dict:
    knobs = PROFILES[name]
    wan = name == "wan"
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
    runs = {w: [] for w in only}
    refs_runs: dict = {}
    errors = []
    with ServerProcess(root, knobs["rate"], knobs["latency"], knobs["stall"],
                       os.path.join(logs, f"server-{name}.log"), args.child_env) as server:
        data = server.urls["data_url"]

        def url(rel, entry=A.ENTRY):
            return f"{data}/{entry.split('-', 1)[1]}/{rel}"

        def mount():
            return Mount(os.path.join(args.workdir, "mnt"), os.path.join(args.workdir, "cache"),
                         server.urls, memory_cache=args.memory_cache, block_size=args.block_size,
                         log_path=os.path.join(logs, f"mount-{name}.log"), env=env)

        ctx = W.Context(profile=name, server=server, mount=mount, root=root, seq_rel=seq_rel,
                        random_rel=A.LARGE, counts=counts, block_size=parse_size(args.block_size),
                        threads=args.threads)
        for rep in range(args.repeat):
            log.warning("[%s] run %d/%d: references", name, rep + 1, args.repeat)
            # References see the network's limit without stalls: a stalled
            # curl would hang for minutes and flatter empiarfs.
            server.command("faults stall_probability=0")
            seq_url = url(seq_rel)
            seq_size = os.path.getsize(A.data_path(root, A.ENTRY, seq_rel))
            refs = {
                "curl": R.curl_stream(seq_url, sizes["single_bytes"] if wan else None),
                "aria2c": R.aria2c_parallel(seq_url, seq_size, args.workdir),
                "latency": R.request_latency(url(A.mrc_names(1)[0])),
                "local": R.local_read(A.data_path(root, A.ENTRY, seq_rel)),
            }
            for key, value in refs.items():
                refs_runs.setdefault(key, []).append(value)
            server.command(f"faults stall_probability={knobs['stall']}")
            for wname in only:
                log.warning("[%s] run %d/%d: %s", name, rep + 1, args.repeat, wname)
                try:
                    runs[wname].append(W.WORKLOADS[wname](ctx))
                except (BenchError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    log.error("[%s] %s failed: %s", name, wname, exc)
                    log.debug("%s", traceback.format_exc())
                    errors.append(f"{wname}: {exc}")
    workloads = {w: report.combine(r) for w, r in runs.items() if r}
    references = {k: report.combine(v) for k, v in refs_runs.items()}
    result = {"profile": knobs, "repeat": args.repeat, "workloads": workloads,
              "references": references, "errors": errors, "counts": counts,
              "sequential_file": seq_rel,
              "sequential_bytes": os.path.getsize(A.data_path(root, A.ENTRY, seq_rel))}
    result["targets"] = report.targets(name, workloads, references, parse_size(args.memory_cache))
    for err in errors:
        result["targets"].append({"target": f"workload failed: {err}", "value": None,
                                  "goal": "no failure", "unit": "", "pass": False})
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s bench: %(message)s",
                        datefmt="%H:%M:%S")
    if args.quick:
        args.repeat = 1
        sizes = {"large": 16 << 20, "wan": 8 << 20, "single_bytes": 1 << 20, "counts": QUICK}
        args.workdir = os.path.join(args.workdir, "quick")
    else:
        sizes = {"large": parse_size(args.size), "wan": parse_size(args.wan_size),
                 "single_bytes": parse_size(args.single_stream_bytes), "counts": FULL}
    os.makedirs(args.workdir, exist_ok=True)
    began = time.monotonic()
    args.child_env, tree = {}, "working tree"
    if args.tree != "working":
        src, tree = snapshot_tree(REPO, args.workdir, args.tree)
        args.child_env = {"PYTHONPATH": src}
    c = sizes["counts"]
    root = A.ensure_archive(args.workdir, sizes["large"], sizes["wan"], c["many_files"],
                            c["mrc_files"])
    profiles = ["loopback", "wan"] if args.profile == "both" else [args.profile]
    results = {"command": "scripts/bench " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "settings": {"memory_cache": args.memory_cache, "block_size": args.block_size,
                            "threads": args.threads, "mount_env": args.mount_env,
                            "large_bytes": sizes["large"], "wan_bytes": sizes["wan"],
                            "single_stream_bytes": sizes["single_bytes"]},
               "profiles": {}}
    m = results["machine"]
    print(f"machine: {m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB RAM, kernel {m['kernel']}, "
          f"Python {m['python']}, {m['fuse']}; empiarfs {tree}")
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
    sys.exit(main())
