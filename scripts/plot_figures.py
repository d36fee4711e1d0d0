#!/usr/bin/env python3
"""Draw the figures of docs/figures.md from the measured numbers.

    .venv/bin/python scripts/plot_figures.py                 # from docs/performance.md, docs/reliability.md
    .venv/bin/python scripts/plot_figures.py --bench-json bench-results/20261121-122615.json
    .venv/bin/python scripts/plot_figures.py --out /tmp/img  # somewhere else than docs/img

The numbers come from the tables of docs/performance.md (the benchmark's
reported run, medians of its repeats) or, with --bench-json, straight from a
record written by scripts/bench; the fault counts come from the table of
docs/reliability.md that scripts/soak writes. Nothing is measured here, so
the figures can never disagree with the pages they illustrate: rerun this
after either page changes, and commit the PNGs.

Figures (PNG, in --out):
  throughput.png   cold sequential reads against curl and aria2c, warm re-reads against the local disk
  caches.png       first read against second read: what the memory and disk caches save
  efficiency.png   bytes fetched per byte read by random readers, against the goal
  stalls.png       1 MiB read latency on the EMPIAR-like link with 1 request in 30 stalled
  faults.png       faults injected during the soak, and the reads that went wrong (none)
  numbers.json     the numbers drawn (tests/test_docs.py compares it with the pages)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = ("loopback", "wan")
TITLES = {"loopback": "loopback", "wan": "EMPIAR-like WAN"}
NUMBERS = "numbers.json"
# Same look in every figure: empiarfs in one colour, every reference in grey.
OURS, REFERENCE, GOAL = "#3f51b5", "#9e9e9e", "#c62828"


class FigureError(Exception):
    """The numbers a figure needs are not where they should be."""


# ------------------------------------------------------------------ numbers


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _search(pattern: str, text: str):
    match = re.search(pattern, text)
    return _number(match.group(1)) if match else None


def markdown_tables(text: str) -> dict[str, list[list[str]]]:
    """``{section heading: rows}`` of every pipe table, rows as cell lists
    (header and separator rows dropped); a section is the last ``#`` heading."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    header_seen = False
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            header_seen = False
            continue
        if not line.startswith("|"):
            header_seen = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header_seen:
            header_seen = True          # the header row
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells if c):
            continue
        tables.setdefault(heading, []).append(cells)
    return tables


def _row(rows: list[list[str]], prefix: str) -> list[str] | None:
    for cells in rows:
        if cells and cells[0].strip("`* ").lower().startswith(prefix.lower()):
            return cells
    return None


def from_performance_md(text: str) -> dict:
    """The figures' numbers per profile, from the tables of docs/performance.md."""
    tables = markdown_tables(text)
    out = {}
    for profile, word in (("loopback", "loopback"), ("wan", "wan")):
        rows = next((r for h, r in tables.items() if h.lower().startswith(word)), None)
        if rows is None:
            continue
        p: dict = {}
        cells = _row(rows, "cold sequential")
        if cells:
            p["cold_mbps"] = _search(r"([\d,.]+) MB/s", cells[1])
            p["cold_seconds"] = _search(r"\(([\d.]+) s\)", cells[1])
            refs = " ".join(cells[2:])
            p["curl_mbps"] = _search(r"curl ([\d,.]+) MB/s", refs)
            p["aria2c_mbps"] = _search(r"aria2c[^;|]*? ([\d,.]+) MB/s", refs)
        cells = _row(rows, "warm re-read")
        if cells:
            p["warm_mbps"] = _search(r"([\d,.]+) MB/s", cells[1])
            p["local_mbps"] = _search(r"local disk ([\d,.]+) MB/s", " ".join(cells[2:]))
        cells = _row(rows, "ls -l")
        if cells:
            p["ls_cold_seconds"] = _search(r"cold ([\d.]+) s", cells[1])
            p["ls_warm_seconds"] = _search(r"warm ([\d.]+) s", cells[1])
        cells = _row(rows, "random 64 KiB")
        if cells:
            p["random_fetched_over_read"] = _search(r"fetched ([\d.]+) x", cells[1])
        cells = _row(rows, "200 random frames")
        if cells:
            p["frames_fetched_over_read"] = _search(r"fetched ([\d.]+) x", cells[1])
        cells = _row(rows, "1 MiB reads under stalls")
        if cells:
            for key in ("p50", "p99", "max"):
                p[f"stall_{key}"] = _search(key + r" ([\d.]+) s", cells[1])
        out[profile] = {k: v for k, v in p.items() if v is not None}
    return out


def from_bench_json(record: dict) -> dict:
    """The same numbers from a scripts/bench JSON record."""
    out = {}
    for profile, result in record.get("profiles", {}).items():
        w, refs = result.get("workloads", {}), result.get("references", {})
        seq, p = w.get("sequential", {}), {}
        p["cold_mbps"], p["warm_mbps"] = seq.get("cold_mbps"), seq.get("warm_mbps")
        p["cold_seconds"] = seq.get("cold_seconds")
        p["curl_mbps"] = refs.get("curl", {}).get("mbps")
        p["aria2c_mbps"] = refs.get("aria2c", {}).get("mbps")
        p["local_mbps"] = refs.get("local", {}).get("mbps")
        p["ls_cold_seconds"] = w.get("listing", {}).get("cold_seconds")
        p["ls_warm_seconds"] = w.get("listing", {}).get("warm_seconds")
        p["random_fetched_over_read"] = w.get("random_reads", {}).get("fetched_over_read")
        p["frames_fetched_over_read"] = w.get("frames", {}).get("fetched_over_read")
        for key in ("p50", "p99", "max"):
            p[f"stall_{key}"] = w.get("stalls", {}).get(key)
        out[profile] = {k: v for k, v in p.items() if v is not None}
    return out


def from_reliability_md(text: str) -> dict:
    """Fault counts by kind and the read outcome, from docs/reliability.md
    (``{}`` when the soak's page has no such table)."""
    tables = markdown_tables(text)
    faults: dict[str, float] = {}
    figures: dict[str, str] = {}
    for rows in tables.values():
        for cells in rows:
            if len(cells) == 2 and re.fullmatch(r"[a-z_]+", cells[0]) and re.fullmatch(r"[\d,]+", cells[1]):
                faults[cells[0]] = _number(cells[1])
            elif len(cells) >= 2:
                figures[cells[0].strip("* ").lower()] = cells[1]
    out = {"faults": faults}
    for name, key in (("reads", "reads (whole files)"), ("wrong_bytes", "wrong bytes"),
                      ("failed", "failed cleanly (eio/estale)")):
        if key in figures:
            value = _search(r"([\d,]+)", figures[key].replace("*", ""))
            if value is not None:
                out[name] = value
    return out if faults else {}


# ------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "savefig.dpi": 100})
    return plt


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    # No software/version stamp: the same numbers give the same file.
    fig.savefig(path, metadata={"Software": None})
    fig.clf()
    return path


def _bars(ax, labels, values, colours, unit, log=False):
    bars = ax.bar(range(len(values)), values, color=colours, width=0.65)
    ax.set_xticks(range(len(values)), labels)
    if log:
        ax.set_yscale("log")
    for bar, value in zip(bars, values):
        ax.annotate(f"{value:,.3g} {unit}".strip(), (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.margins(y=0.2)


def _pairs(numbers: dict, profiles, left, right) -> tuple[list, list, list]:
    """Bars two by two, for each profile that has both numbers: ``left`` and
    ``right`` are ``(key, label, colour)``; labels end in the profile's name.
    Returns ``(labels, values, colours)``."""
    labels, values, colours = [], [], []
    for profile in profiles:
        p = numbers.get(profile, {})
        if left[0] in p and right[0] in p:
            for key, label, colour in (left, right):
                labels.append(f"{label}\n{profile}")
                values.append(p[key])
                colours.append(colour)
    return labels, values, colours


def plot_throughput(plt, numbers: dict, out_dir: str) -> str:
    profiles = [p for p in PROFILES if "cold_mbps" in numbers.get(p, {})]
    if not profiles:
        raise FigureError("no cold sequential throughput found (the 'cold sequential' rows)")
    fig, axes = plt.subplots(1, len(profiles) + 1, figsize=(3.2 * (len(profiles) + 1), 3.2))
    for ax, profile in zip(axes, profiles):
        p = numbers[profile]
        pairs = [("empiarfs", p["cold_mbps"], OURS)]
        pairs += [(name, p[key], REFERENCE) for name, key in
                  (("curl\n(1 stream)", "curl_mbps"), ("aria2c\n-x16", "aria2c_mbps")) if key in p]
        _bars(ax, *zip(*pairs), unit="MB/s", log=True)
        ax.set_title(f"cold sequential read, {TITLES[profile]}")
        ax.set_ylabel("MB/s (log scale)")
    ax = axes[-1]
    labels, values, colours = _pairs(numbers, profiles, ("warm_mbps", "empiarfs", OURS),
                                     ("local_mbps", "local disk", REFERENCE))
    if values:
        _bars(ax, labels, values, colours, unit="MB/s")
        ax.set_title("warm re-read (page cache dropped)")
        ax.set_ylabel("MB/s")
    else:
        ax.set_axis_off()
    return _save(fig, out_dir, "throughput.png")


def plot_caches(plt, numbers: dict, out_dir: str) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.2))
    labels, values, colours = _pairs(numbers, PROFILES, ("cold_mbps", "first", REFERENCE),
                                     ("warm_mbps", "second", OURS))
    if not values:
        raise FigureError("no cold and warm sequential throughput found")
    _bars(axes[0], labels, values, colours, unit="MB/s", log=True)
    axes[0].set_title("sequential read of a large file")
    axes[0].set_ylabel("MB/s (log scale)")
    labels, values, colours = _pairs(numbers, PROFILES, ("ls_cold_seconds", "first", REFERENCE),
                                     ("ls_warm_seconds", "second", OURS))
    if values:
        _bars(axes[1], labels, values, colours, unit="s")
        axes[1].set_title("ls -l of 3,000 files")
        axes[1].set_ylabel("seconds (lower is better)")
    else:
        axes[1].set_axis_off()
    return _save(fig, out_dir, "caches.png")


def plot_efficiency(plt, numbers: dict, out_dir: str) -> str:
    labels, values = [], []
    for label, key in (("random\n64 KiB reads", "random_fetched_over_read"),
                       ("random\nframes", "frames_fetched_over_read")):
        for profile in PROFILES:
            if key in numbers.get(profile, {}):
                labels.append(f"{label}\n{profile}")
                values.append(numbers[profile][key])
    if not values:
        raise FigureError("no 'fetched N x' figures found (random 64 KiB, random frames rows)")
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    _bars(ax, labels, values, [OURS] * len(values), unit="x")
    _goal(ax, 4.0, "goal <= 4")
    ax.set_title("bytes fetched per byte read (random reads)")
    ax.set_ylabel("fetched / read")
    return _save(fig, out_dir, "efficiency.png")


def _goal(ax, value: float, text: str) -> None:
    ax.axhline(value, color=GOAL, linestyle="--", linewidth=1)
    ax.annotate(text, (-0.4, value), color=GOAL, fontsize=8, ha="left", va="bottom",
                xytext=(0, 2), textcoords="offset points")


def plot_stalls(plt, numbers: dict, out_dir: str) -> str | None:
    p = numbers.get("wan", {})
    keys = [k for k in ("stall_p50", "stall_p99", "stall_max") if k in p]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    _bars(ax, [k.split("_")[1] for k in keys], [p[k] for k in keys], [OURS] * len(keys), unit="s")
    _goal(ax, 3.0, "p99 goal 3 s")
    ax.set_title("1 MiB reads, 1 request in 30 stalled")
    ax.set_ylabel("seconds")
    return _save(fig, out_dir, "stalls.png")


def plot_faults(plt, soak: dict, out_dir: str) -> str | None:
    if not soak:
        return None
    kinds = sorted(soak["faults"], key=lambda k: -soak["faults"][k])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    _bars(ax, kinds, [soak["faults"][k] for k in kinds], [REFERENCE] * len(kinds), unit="")
    reads, wrong = soak.get("reads"), soak.get("wrong_bytes")
    if reads is not None and wrong is not None:
        ax.set_title(f"faults injected; {reads:,.0f} reads, {wrong:,.0f} wrong bytes")
    else:
        ax.set_title("faults injected during the soak")
    ax.set_ylabel("count")
    return _save(fig, out_dir, "faults.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--performance", default=os.path.join(ROOT, "docs", "performance.md"))
    parser.add_argument("--reliability", default=os.path.join(ROOT, "docs", "reliability.md"))
    parser.add_argument("--bench-json", help="a scripts/bench record instead of docs/performance.md")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = parser.parse_args(argv)
    try:
        if args.bench_json:
            with open(args.bench_json, encoding="utf-8") as fh:
                numbers = from_bench_json(json.load(fh))
        else:
            with open(args.performance, encoding="utf-8") as fh:
                numbers = from_performance_md(fh.read())
        soak = {}
        if os.path.exists(args.reliability):
            with open(args.reliability, encoding="utf-8") as fh:
                soak = from_reliability_md(fh.read())
        os.makedirs(args.out, exist_ok=True)
        # The numbers drawn, so a test can tell when the pages changed and the
        # figures were not drawn again.
        with open(os.path.join(args.out, NUMBERS), "w", encoding="utf-8") as fh:
            json.dump({"performance": numbers, "soak": soak}, fh, indent=1, sort_keys=True)
            fh.write("\n")
        plt = _plt()
        written = [plot_throughput(plt, numbers, args.out), plot_caches(plt, numbers, args.out),
                   plot_efficiency(plt, numbers, args.out), plot_stalls(plt, numbers, args.out),
                   plot_faults(plt, soak, args.out)]
    except (OSError, ValueError, FigureError) as exc:
        print(f"plot_figures: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        if path:
            print(path)
    skipped = {"stalls.png": written[3], "faults.png": written[4]}
    for name, path in skipped.items():
        if path is None:
            print(f"plot_figures: {name} not drawn (no numbers for it)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
