"""Medians over repeats, ratios to the references and to the best peer,
PASS/MISS per target, the printed report and the JSON record."""

from __future__ import annotations

import json
import math
import os
import statistics
import time

MiB = 1 << 20
# Summed / maxed over repeats instead of the median.
_SUM = {"failures"}
_MAX = {"peak_rss", "max", "max_in_flight", "cold_max_in_flight"}
_HUNG_KEYS = {"hung", "hung_runs", "hung_bytes"}
MB = 1e6
# What the comparison table shows: (workload, metric, label, unit, higher is
# better, references shown beside it).
COMPARED = (
    ("sequential", "cold_mbps", "cold sequential read", "MB/s", True, ("curl", "aria2c")),
    ("sequential", "warm_mbps", "warm re-read, page cache dropped", "MB/s", True, ("local",)),
    ("header_scan", "seconds", "first 1 KiB of {scan_files} stacks, {threads} threads", "s",
     False, ()),
    ("listing", "cold_seconds", "ls -l of {many_files} files, cold", "s", False, ()),
    ("listing", "warm_seconds", "ls -l of {many_files} files, warm", "s", False, ()),
    ("random_reads", "seconds", "{random_reads} random 64 KiB reads", "s", False, ()),
    ("mrc_headers", "seconds", "mrcfile header-only x {mrc_files}", "s", False, ()),
    ("frames", "seconds", "{frames} random frames", "s", False, ()),
)


def combine(runs: list[dict]) -> dict:
    """One dict per repeat -> one dict of medians (sums for failures, max for
    peaks). Runs that hung (``{"hung": limit}``) are left out of the medians
    and counted in ``hung_runs``; if every run hung the result is the hung one."""
    hung = [r for r in runs if "hung" in r]
    runs = [r for r in runs if "hung" not in r]
    if not runs:
        return dict(hung[0], hung_runs=len(hung)) if hung else {}
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))
                  and not isinstance(r.get(key), bool)]
        if not values:
            out[key] = runs[0][key]
        elif key in _SUM:
            out[key] = sum(values)
        elif key in _MAX:
            out[key] = max(values)
        else:
            out[key] = statistics.median(values)
    if hung:
        out["hung"] = hung[0]["hung"]
        out["hung_runs"] = len(hung)
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def targets(profile: str, w: dict, refs: dict, memory_cache: int,
            knobs: dict | None = None) -> list[dict]:
    """The issues' targets for one profile: name, measured, goal, pass.
    A workload that hung is one MISS row of its own."""
    rows = []

    def add(name, value, goal, ok, unit=""):
        rows.append({"target": name, "value": value, "goal": goal, "unit": unit,
                     "pass": bool(ok) if ok is not None else None})

    for name, metrics in list(w.items()):
        if "hung" in metrics:
            add(f"{name} within the {metrics['hung']:.0f} s time limit",
                f"hung in {metrics['hung_runs']} run(s)", "every run", False)
            if not set(metrics) - _HUNG_KEYS:
                w = {k: v for k, v in w.items() if k != name}
    wan = profile in ("wan", "tcp-wan")
    rtt = (knobs or {}).get("rtt")
    seq = w.get("sequential", {})
    curl = refs.get("curl", {}).get("mbps")
    aria = refs.get("aria2c", {}).get("mbps")
    local = refs.get("local", {}).get("mbps")
    if seq:
        if wan:
            r = _ratio(seq["cold_mbps"], aria)
            add("cold sequential / aria2c -x16", r, ">= 0.90", r is not None and r >= 0.9, "x")
            r = _ratio(seq["cold_mbps"], curl)
            add("cold sequential / single stream", r, ">= 8", r is not None and r >= 8, "x")
        else:
            r = _ratio(seq["cold_mbps"], curl)
            add("cold sequential / curl", r, ">= 0.80", r is not None and r >= 0.8, "x")
        r = _ratio(seq["warm_mbps"], local)
        add("warm re-read / local disk read", r, ">= 0.50", r is not None and r >= 0.5, "x")
    scan = w.get("header_scan")
    if scan:
        # Hedged duplicates of never-answered requests (1 in 30 on tcp-wan)
        # are counted apart: the goal is one request per file, not two.
        first = (scan["requests_per_file"] * scan["files"] - scan.get("hedges", 0)) / scan["files"]
        add("header scan: requests per file, hedges apart", first, "<= 1", first <= 1)
        add("header scan: blocks fetched per file", scan["blocks_per_file"], "<= 2",
            scan["blocks_per_file"] <= 2)
        lat = refs.get("latency", {}).get("seconds")
        if profile == "tcp-wan" and rtt:
            # The bound counts round trips: ceil(files / parallel
            # requests) of them, 1.5 x for slack.
            bound = 1.5 * math.ceil(scan["files"] / scan["threads"]) * rtt
            add("header scan time", scan["seconds"], f"<= {bound:.2f} s "
                f"(1.5 x {scan['files']}/{scan['threads']} x RTT {rtt * 1000:.0f} ms)",
                scan["seconds"] <= bound, "s")
        elif profile == "wan" and lat:
            bound = 1.5 * math.ceil(scan["files"] / scan["threads"]) * lat
            add("header scan time", scan["seconds"], f"<= {bound:.2f} s "
                f"(1.5 x {scan['files']}/{scan['threads']} x {lat * 1000:.0f} ms)",
                scan["seconds"] <= bound, "s")
    rnd = w.get("random_reads")
    if rnd:
        add("random 64 KiB: bytes fetched / bytes read", rnd["fetched_over_read"], "<= 4",
            rnd["fetched_over_read"] <= 4, "x")
    ls = w.get("listing")
    if ls:
        if profile == "wan":
            add("ls -l cold", ls["cold_seconds"], "<= 3 s", ls["cold_seconds"] <= 3, "s")
        elif profile == "tcp-wan":
            add("ls -l cold", ls["cold_seconds"], "<= 10 s", ls["cold_seconds"] <= 10, "s")
            peak = ls.get("cold_max_in_flight")
            add("ls -l cold: most requests in flight to one host", peak, "<= 32",
                peak is not None and peak <= 32)
        add("ls -l warm", ls["warm_seconds"], "<= 0.2 s", ls["warm_seconds"] <= 0.2, "s")
    st = w.get("stalls")
    if st:
        add("1 MiB read p99 under stalls", st["p99"], "<= 3 s", st["p99"] <= 3, "s")
        add("reads failed under stalls", st["failures"], "0", st["failures"] == 0)
    rss = max([v.get("peak_rss", 0) for v in w.values()] or [0])
    bound = memory_cache + 200 * MiB
    if rss:
        add("daemon peak RSS", rss / MiB, f"<= {bound / MiB:.0f} MiB", rss <= bound, "MiB")
    return rows


def compare(result: dict) -> list[dict]:
    """empiarfs, the references and each peer per workload metric, with
    empiarfs's ratio to the best peer as a speed ratio (> 1: empiarfs is
    faster). A peer that hung gives a bound: it took at least its time limit
    (and read at most ``hung_bytes`` in it), so the ratio is ``>=``."""
    rows = []
    w, peers, refs = result["workloads"], result.get("peers", {}), result["references"]
    errors = result.get("peer_errors", {})
    for wname, key, label, unit, higher, ref_names in COMPARED:
        ours = w.get(wname)
        theirs = {p: r.get(wname) for p, r in peers.items()}
        if not ours and not any(theirs.values()):
            continue
        label = label.format(threads=result.get("threads", 16), **result.get("counts", {}))
        row = {"workload": wname, "metric": key, "label": label, "unit": unit,
               "higher_is_better": higher, "empiarfs": _cell(ours, key, unit),
               "references": {n: refs.get(n, {}).get("mbps") for n in ref_names},
               "peers": {}}
        for peer, metrics in theirs.items():
            if wname in errors.get(peer, {}):
                row["peers"][peer] = {"failed": errors[peer][wname]}
            else:
                row["peers"][peer] = _cell(metrics, key, unit)
        row["vs_best_peer"] = _vs_best(row["empiarfs"], row["peers"], higher)
        rows.append(row)
    return rows


def _cell(metrics: dict | None, key: str, unit: str) -> dict | None:
    """One filesystem's value of one metric: ``{"value"}`` or ``{"hung", "bound"}``
    (the bound: at most ``bytes / limit`` for MB/s, at least ``limit`` for s)."""
    if not metrics:
        return None
    if key in metrics:
        return {"value": metrics[key], "hung_runs": metrics.get("hung_runs", 0)}
    if "hung" in metrics:
        limit = metrics["hung"]
        if unit == "MB/s":
            bound = metrics.get("hung_bytes", 0) / limit / MB if key.startswith("cold") else None
        else:
            bound = limit if key.startswith("cold") or key == "seconds" else None
        return {"hung": limit, "bound": bound, "hung_bytes": metrics.get("hung_bytes")}
    return None


def _speed(cell: dict | None, higher: bool):
    """(speed, exact) of a cell: MB/s as is, seconds inverted; a hung cell's
    bound is an upper bound on its speed."""
    if not cell or "failed" in cell:
        return None, False
    if "value" in cell:
        v = cell["value"]
        return (v if higher else (1 / v if v else None)), True
    b = cell.get("bound")
    if b is None:
        return None, False
    return (b if higher else 1 / b), False


def _vs_best(ours: dict | None, peers: dict, higher: bool) -> dict | None:
    mine, exact = _speed(ours, higher)
    if mine is None or not exact or not peers:
        return None
    speeds = {p: _speed(c, higher) for p, c in peers.items()}
    done = {p: s for p, (s, ok) in speeds.items() if ok and s}
    if done:
        best = max(done, key=done.get)
        return {"ratio": mine / done[best], "peer": best, "bound": False}
    bounds = {p: s for p, (s, ok) in speeds.items() if s}
    if bounds:  # every peer hung: empiarfs is at least this much faster
        best = max(bounds, key=bounds.get)
        return {"ratio": mine / bounds[best], "peer": best, "bound": True}
    return None


def _fmt_cell(cell: dict | None, unit: str) -> str:
    if cell is None:
        return "-"
    if "failed" in cell:
        return "failed"
    if "value" in cell:
        text = _fmt(cell["value"])
        return text + (f" ({cell['hung_runs']} hung)" if cell.get("hung_runs") else "")
    text = f"hung at {cell['hung']:.0f} s"
    if cell.get("hung_bytes") is not None and unit == "MB/s":
        text += f" ({cell['hung_bytes'] / MB:.0f} MB)"
    return text


def print_comparison(result: dict, out) -> None:
    rows = result.get("comparison") or []
    peers = list(result.get("peers", {}))
    if not rows or not peers:
        return
    print(f"empiarfs, references and peers (fresh mount and empty cache per workload, kernel "
          f"caches dropped before cold runs; time limit {result.get('time_limit', 0):.0f} s):",
          file=out)
    head = f"  {'workload':<42} {'unit':<5} {'empiarfs':>10} " + " ".join(
        f"{p:>18}" for p in peers) + f"  {'references':<28} empiarfs / best peer"
    print(head, file=out)
    for row in rows:
        refs = ", ".join(f"{n} {_fmt(v)}" for n, v in row["references"].items() if v is not None)
        vs = row["vs_best_peer"]
        ratio = "n/a"
        if vs:
            ratio = f"{'>= ' if vs['bound'] else ''}{_fmt(vs['ratio'])}x ({vs['peer']})"
        print(f"  {row['label']:<42} {row['unit']:<5} {_fmt_cell(row['empiarfs'], row['unit']):>10} "
              + " ".join(f"{_fmt_cell(row['peers'].get(p), row['unit']):>18}" for p in peers)
              + f"  {refs:<28} {ratio}", file=out)
    print("  (ratio: empiarfs's speed over the best peer's, > 1 is faster; '>=' where every "
          "peer hung)", file=out)
    for peer, errs in result.get("peer_errors", {}).items():
        for wname, err in errs.items():
            print(f"  {peer} failed {wname}: {err}", file=out)
    for peer, why in result.get("peers_left_out", {}).items():
        print(f"  {peer} left out: {why}", file=out)


def _fmt(value, unit="") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit not in ("", "x") else text + ("x" if unit == "x" else "")


def print_profile(profile: str, result: dict, out) -> None:
    w, refs = result["workloads"], result["references"]
    p = result["profile"]
    stall = f"1/{(1 / p['stall']) if p['stall'] else 0:.0f}"
    if "rtt" in p:
        restart = p["restart_after"] if p.get("restart_after") is not None else p["rtt"] + 0.2
        print(f"\n=== profile {profile}: RTT {p['rtt'] * 1000:g} ms, {p['window'] / 1e3:g} KB in "
              f"flight per connection (slow start from {p['initial_window'] / 1e3:g} KB, again "
              f"after {restart * 1000:g} ms idle), never answered {stall}, FTP unreachable; "
              f"medians of {result['repeat']} run(s) ===", file=out)
    else:
        print(f"\n=== profile {profile}: rate {p['rate'] / 1e6:g} MB/s per connection"
              f"{' (unlimited)' if not p['rate'] else ''}, latency {p['latency'] * 1000:g} ms, "
              f"stall {stall}; medians of {result['repeat']} run(s) ===", file=out)
    if result.get("server"):
        print(f"server: {result['server']}", file=out)
    print("references:", file=out)
    for name, ref in refs.items():
        bits = [f"{k}={_fmt(v)}" for k, v in ref.items() if k not in ("note",)]
        print(f"  {name:<8} " + " ".join(bits) + (f"  ({ref['note']})" if "note" in ref else ""),
              file=out)
    print("empiarfs:", file=out)
    for name, metrics in w.items():
        bits = [f"{k}={_fmt(v)}" for k, v in metrics.items()]
        print(f"  {name:<13} " + " ".join(bits), file=out)
    for peer, results in result.get("peers", {}).items():
        print(f"{peer}:", file=out)
        for name, metrics in results.items():
            bits = [f"{k}={_fmt(v)}" for k, v in metrics.items()]
            print(f"  {name:<13} " + " ".join(bits), file=out)
    seq = w.get("sequential")
    if seq and "cold_mbps" in seq:
        print("ratios (empiarfs / reference, MB/s):", file=out)
        for ref, key in (("curl", "cold_mbps"), ("aria2c", "cold_mbps"), ("local", "warm_mbps")):
            r = _ratio(seq[key], refs.get(ref, {}).get("mbps"))
            print(f"  {key.split('_')[0]:<5} sequential / {ref:<7} {_fmt(r)}", file=out)
    print_comparison(result, out)
    print("targets:", file=out)
    for row in result["targets"]:
        mark = {True: "PASS", False: "MISS", None: "n/a "}[row["pass"]]
        print(f"  {mark}  {row['target']:<44} {_fmt(row['value'], row['unit']):>12}   goal {row['goal']}",
              file=out)


def write_json(results: dict, directory: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    return path
