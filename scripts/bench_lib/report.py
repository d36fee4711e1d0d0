"""Medians over repeats, ratios to the references, PASS/MISS per target,
the printed report and the JSON record."""

from __future__ import annotations

import json
import math
import os
import statistics
import time

MiB = 1 << 20
# Summed / maxed over repeats instead of the median.
_SUM = {"failures"}
_MAX = {"peak_rss", "max"}


def combine(runs: list[dict]) -> dict:
    """One dict per repeat -> one dict of medians (sums for failures, max for peaks)."""
    if not runs:
        return {}
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
    return out


def _ratio(a, b):
    return a / b if a is not None and b else None


def targets(profile: str, w: dict, refs: dict, memory_cache: int) -> list[dict]:
    """The issue's targets for one profile: name, measured, goal, pass."""
    rows = []

    def add(name, value, goal, ok, unit=""):
        rows.append({"target": name, "value": value, "goal": goal, "unit": unit,
                     "pass": bool(ok) if ok is not None else None})

    seq = w.get("sequential", {})
    curl = refs.get("curl", {}).get("mbps")
    aria = refs.get("aria2c", {}).get("mbps")
    local = refs.get("local", {}).get("mbps")
    if seq:
        if profile == "wan":
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
        add("header scan: requests per file", scan["requests_per_file"], "<= 1",
            scan["requests_per_file"] <= 1)
        add("header scan: blocks fetched per file", scan["blocks_per_file"], "<= 2",
            scan["blocks_per_file"] <= 2)
        lat = refs.get("latency", {}).get("seconds")
        if profile == "wan" and lat:
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
        add("ls -l warm", ls["warm_seconds"], "<= 0.2 s", ls["warm_seconds"] <= 0.2, "s")
    st = w.get("stalls")
    if st:
        add("1 MiB read p99 under stalls", st["p99"], "<= 3 s", st["p99"] <= 3, "s")
        add("reads failed under stalls", st["failures"], "0", st["failures"] == 0)
    rss = max([v.get("peak_rss", 0) for v in w.values()] or [0])
    bound = memory_cache + 200 * MiB
    add("daemon peak RSS", rss / MiB, f"<= {bound / MiB:.0f} MiB", rss <= bound, "MiB")
    return rows


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
    print(f"\n=== profile {profile}: rate {p['rate'] / 1e6:g} MB/s per connection"
          f"{' (unlimited)' if not p['rate'] else ''}, latency {p['latency'] * 1000:g} ms, "
          f"stall 1/{(1 / p['stall']) if p['stall'] else 0:.0f}; medians of {result['repeat']} "
          f"run(s) ===", file=out)
    print("references:", file=out)
    for name, ref in refs.items():
        bits = [f"{k}={_fmt(v)}" for k, v in ref.items() if k not in ("note",)]
        print(f"  {name:<8} " + " ".join(bits) + (f"  ({ref['note']})" if "note" in ref else ""),
              file=out)
    print("empiarfs:", file=out)
    for name, metrics in w.items():
        bits = [f"{k}={_fmt(v)}" for k, v in metrics.items()]
        print(f"  {name:<13} " + " ".join(bits), file=out)
    seq = w.get("sequential")
    if seq:
        print("ratios (empiarfs / reference, MB/s):", file=out)
        for ref, key in (("curl", "cold_mbps"), ("aria2c", "cold_mbps"), ("local", "warm_mbps")):
            r = _ratio(seq[key], refs.get(ref, {}).get("mbps"))
            print(f"  {key.split('_')[0]:<5} sequential / {ref:<7} {_fmt(r)}", file=out)
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
