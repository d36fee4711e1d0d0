"""The documentation site (issue 16) cannot drift from the code:

* ``mkdocs build --strict`` succeeds: no broken link or anchor, no page
  missing from the nav, no API name that no longer exists;
* docs/api.md documents exactly ``empiarfs.__all__``, by top-level names only;
* the figures are what scripts/plot_figures.py draws from the measured pages;
* the messages on docs/troubleshooting.md are what the CLI prints today;
* docs/tutorial.md's ``sh`` and ``python`` blocks run, in order, in one
  shell-and-Python session against the sample archive, with a real FUSE
  mount made by the tutorial's own ``empiarfs mount``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.mounting import requires_fuse

import empiarfs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = os.path.dirname(sys.executable)
EMPIARFS = os.path.join(BIN, "empiarfs")


def _clean_env(home) -> dict:
    """A user's environment with HOME at ``home``: no EMPIARFS_* or XDG_*
    setting of the machine running the tests leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMPIARFS_", "XDG_"))}
    env.update(HOME=str(home), PATH=BIN + os.pathsep + env.get("PATH", ""),
               NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    return env


def _archive_env(home, server) -> dict:
    env = _clean_env(home)
    env.update(EMPIARFS_API_URL=server.api_url, EMPIARFS_DATA_URL=server.data_url,
               EMPIARFS_FTP_URL=server.ftp_url)
    return env


# ------------------------------------------------------------------ the site


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([os.path.join(BIN, "mkdocs"), "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                            cwd=ROOT, env=_clean_env(tmp_path), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("empiarfs.load", "empiarfs.to_dask", "empiarfs.EmpiarDataset.from_imageset"):
        assert f'id="{name}"' in api, name
    for image in re.findall(r"\]\((img/[^)]+\.png)\)", (DOCS / "figures.md").read_text()):
        assert (site / image).stat().st_size > 1000, image


def test_api_page_documents_exactly_the_public_names():
    blocks = re.findall(r"^::: (\S+)\s*$", (DOCS / "api.md").read_text(), re.M)
    # Top-level names only: the modules behind them may move.
    assert all(re.fullmatch(r"empiarfs\.\w+", b) for b in blocks), blocks
    documented = [b.split(".", 1)[1] for b in blocks]
    assert len(documented) == len(set(documented))
    assert set(documented) == set(empiarfs.__all__), (
        f"missing from docs/api.md: {sorted(set(empiarfs.__all__) - set(documented))}; "
        f"no longer public: {sorted(set(documented) - set(empiarfs.__all__))}")


# ------------------------------------------------------------------ figures


def _pngs_named_on_the_figures_page() -> set[str]:
    return set(re.findall(r"\]\(img/([^)]+\.png)\)", (DOCS / "figures.md").read_text()))


def test_figures_are_drawn_from_the_measured_pages(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_figures.py"),
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    drawn = {p.name for p in tmp_path.glob("*.png")}
    not_drawn = set(re.findall(r"(\S+\.png) not drawn", result.stderr))
    assert {"throughput.png", "caches.png", "efficiency.png"} <= drawn
    assert drawn | not_drawn == _pngs_named_on_the_figures_page()
    for name in drawn:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (DOCS / "img" / name).exists(), f"run scripts/plot_figures.py and commit docs/img/{name}"
    # The committed figures show the pages' current numbers.
    now = json.loads((tmp_path / "numbers.json").read_text())
    committed = json.loads((DOCS / "img" / "numbers.json").read_text())
    assert now == committed, ("docs/performance.md or docs/reliability.md changed since the "
                              "figures were drawn: run scripts/plot_figures.py and commit docs/img/")


def test_figures_from_a_bench_record(tmp_path):
    """The --bench-json path reads the record scripts/bench writes
    (scripts/bench_lib/report.py)."""
    record = {"profiles": {
        "loopback": {"workloads": {"sequential": {"cold_mbps": 100.0, "warm_mbps": 600.0},
                                   "listing": {"cold_seconds": 1.2, "warm_seconds": 0.25},
                                   "random_reads": {"fetched_over_read": 2.5}},
                     "references": {"curl": {"mbps": 990.0}, "aria2c": {"mbps": 350.0},
                                    "local": {"mbps": 300.0}}},
        "wan": {"workloads": {"sequential": {"cold_mbps": 20.0, "warm_mbps": 620.0},
                              "stalls": {"p50": 1.1, "p99": 1.8, "max": 5.0}},
                "references": {"curl": {"mbps": 1.5}, "aria2c": {"mbps": 23.0}}}}}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(record))
    out = tmp_path / "img"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_figures.py"),
                             "--bench-json", str(path), "--out", str(out),
                             "--reliability", str(tmp_path / "none.md")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.glob("*.png")} == {"throughput.png", "caches.png",
                                                   "efficiency.png", "stalls.png"}
    drawn = json.loads((out / "numbers.json").read_text())["performance"]
    assert drawn["wan"]["stall_p99"] == 1.8 and drawn["loopback"]["aria2c_mbps"] == 350.0
    assert "faults.png not drawn" in result.stderr
    path.write_text(json.dumps({"profiles": {}}))
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_figures.py"),
                             "--bench-json", str(path), "--out", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("plot_figures: error: no cold sequential throughput")


# ------------------------------------------------------------------ troubleshooting


def _as_documented(text: str, home) -> str:
    """A real message in the page's spelling: the home directory as ``~``."""
    return text.replace(str(home), "~")


def test_troubleshooting_messages_are_current(archive_server, tmp_path):
    # (arguments, extra environment, state of ~/empiar); ~ is a fresh home
    # per case, so that concurrent cases share no cache directory.
    cases = [
        (["mount", "~/empiar"], {}, "absent"),
        (["mount", "~/empiar"], {}, "full"),
        (["mount", "~/empiar"], {"EMPIARFS_CACHE_DIR": "~/file/cache"}, "empty"),
        (["mount", "~/empiar"], {"FUSE_LIBRARY_PATH": "/opt/fuse/libfuse3.so.3"}, "empty"),
        (["mount", "--cache-size", "12Q", "~/empiar"], {}, "empty"),
        (["info", "EMPIAR-10002", "--api-url", "http://127.0.0.1:1/empiar/api"], {}, "absent"),
        (["info", "EMPIAR-99999"], {}, "absent"),
        (["info", "foo"], {}, "absent"),
        (["search", "ribosome"], {}, "absent"),
        (["--config", "~/typo.ini", "info", "EMPIAR-10002"], {}, "absent"),
        (["--config", "~/maybe.ini", "info", "EMPIAR-10002"], {}, "absent"),
        (["stats", "~/empiar"], {}, "empty"),
        (["umount", "~/empiar"], {}, "empty"),
    ]

    def run(number, args, extra, state):
        home = tmp_path / f"case{number}"
        home.mkdir()
        (home / "file").write_text("a file: no directory can be made under it\n")
        (home / "maybe.ini").write_text("[empiarfs]\noffline = maybe\n")
        if state != "absent":
            (home / "empiar").mkdir()
        if state == "full":
            (home / "empiar" / "results.txt").write_text("mine\n")
        tilde = lambda a: str(home / a[2:]) if a.startswith("~/") else a   # noqa: E731
        env = _archive_env(home, archive_server)
        env.update({k: tilde(v) for k, v in extra.items()})
        result = subprocess.run([EMPIARFS, *map(tilde, args)], env=env, capture_output=True,
                                text=True, timeout=60)
        assert not os.path.ismount(home / "empiar")
        return result.returncode, _as_documented(result.stderr.strip(), home)

    # Concurrently: the no-network case waits out its retries (~5 s).
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run(c[0], *c[1]), enumerate(cases)))
    page = (DOCS / "troubleshooting.md").read_text()
    for (args, _, _), (code, message) in zip(cases, results):
        assert "Traceback" not in message, message
        assert code == 1 and message.count("\n") == 0, (args, code, message)
        assert message in page, (f"docs/troubleshooting.md lacks what `empiarfs {' '.join(args)}` "
                                 f"prints:\n{message}")

    # A cache shared with a running process of another block size.
    home = tmp_path / "shared"
    home.mkdir()
    env = _archive_env(home, archive_server)
    with subprocess.Popen([sys.executable, "-c", "import sys, empiarfs\n"
                           "empiarfs.default_fs()\nprint('ready', flush=True)\nsys.stdin.read()\n"],
                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "ready"
            result = subprocess.run([EMPIARFS, "cache", "info"], capture_output=True, text=True,
                                    env=dict(env, EMPIARFS_BLOCK_SIZE="256K"), timeout=60)
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)
    message = re.sub(r"process [\d, ]+ with", "process 32350 with",
                     _as_documented(result.stderr.strip(), home))
    assert result.returncode == 1 and message in page, message

    from empiarfs.fuse.mount import LIBFUSE3_MISSING

    assert f"empiarfs: error: {LIBFUSE3_MISSING}\n" in page

    code = ("import empiarfs\n"
            "for call in (lambda: empiarfs.load('empiar://EMPIAR-10002/data/nothere.mrcs'),\n"
            "             lambda: empiarfs.load('empiar://EMPIAR-10002/10002.xml')):\n"
            "    try:\n"
            "        call()\n"
            "    except empiarfs.EmpiarfsError as exc:\n"
            "        print(f'{type(exc).__name__}: {exc}')\n")
    env = _archive_env(tmp_path, archive_server)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    for line in lines:
        assert f"`{line}`" in page, f"docs/troubleshooting.md lacks the Python error:\n{line}"


# ------------------------------------------------------------------ the tutorial

BLOCK_RE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
# The driver runs in a fresh interpreter, as a user's session would: sh
# blocks in bash (-e: the first failing command fails the block), python
# blocks in one shared namespace, each compiled with the page's own line
# numbers so a traceback points into docs/tutorial.md.
DRIVER = r'''
import json, subprocess, sys, traceback
blocks, results_path = json.load(open(sys.argv[1])), sys.argv[2]
namespace, results = {"__name__": "__main__"}, []

def record(block, status):
    results.append({"line": block["line"], "lang": block["lang"], "status": status})
    with open(results_path, "w") as fh:
        json.dump(results, fh)

for block in blocks:
    print(f"=== docs/tutorial.md line {block['line']} ({block['lang']})", flush=True)
    if block["skip"]:
        print(f"--- not run: {block['skip']}", flush=True)
        record(block, "not run")
        continue
    try:
        if block["lang"] == "sh":
            status = subprocess.run(["bash", "-e", "-c", block["code"]]).returncode
            if status:
                raise SystemExit(f"the block exited with status {status}")
        else:
            code = "\n" * block["line"] + block["code"]
            exec(compile(code, "docs/tutorial.md", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush(); sys.stderr.flush()
        record(block, "failed")
        sys.exit(1)
    sys.stdout.flush(); sys.stderr.flush()
    record(block, "ok")
'''


def tutorial_blocks(torch_available: bool) -> list[dict]:
    text = (DOCS / "tutorial.md").read_text()
    blocks = []
    for match in BLOCK_RE.finditer(text):
        lang, code = match.group(1), match.group(2)
        if lang not in ("sh", "python"):
            continue
        line = text.count("\n", 0, match.start()) + 1      # the opening fence's line
        needs_torch = bool(re.search(r"^\s*(import torch|from torch)", code, re.M))
        skip = "torch is not installed" if needs_torch and not torch_available else ""
        blocks.append({"lang": lang, "code": code, "line": line, "torch": needs_torch,
                       "skip": skip})
    return blocks


@pytest.fixture(scope="module")
def tutorial_run(archive_server, tmp_path_factory):
    """Run the whole tutorial once; ``(blocks, results, transcript, home)``."""
    home = tmp_path_factory.mktemp("tutorial-home")
    work = tmp_path_factory.mktemp("tutorial-driver")
    blocks = tutorial_blocks(importlib.util.find_spec("torch") is not None)
    (work / "blocks.json").write_text(json.dumps(blocks))
    (work / "driver.py").write_text(DRIVER)
    transcript_path = work / "transcript.txt"
    mountpoint = home / "empiar"
    try:
        with open(transcript_path, "wb") as transcript:
            try:
                subprocess.run([sys.executable, str(work / "driver.py"), str(work / "blocks.json"),
                                str(work / "results.json")], cwd=home,
                               env=_archive_env(home, archive_server), stdout=transcript,
                               stderr=subprocess.STDOUT, timeout=240)
            except subprocess.TimeoutExpired:
                pass        # the results say which block did not finish
        yield (blocks, json.loads((work / "results.json").read_text())
               if (work / "results.json").exists() else [],
               transcript_path.read_text(errors="replace"), home, os.path.ismount(mountpoint))
    finally:
        if os.path.ismount(mountpoint):
            tool = shutil.which("fusermount3") or "fusermount"
            subprocess.run([tool, "-u", "-z", str(mountpoint)], capture_output=True)


def _explain(blocks, results, transcript) -> str:
    done = {r["line"] for r in results}
    stuck = [b["line"] for b in blocks if b["line"] not in done][:1]
    return (f"results: {results}\n" + (f"did not finish: the block at line {stuck[0]}\n" if stuck
                                        else "") + f"transcript:\n{transcript[-8000:]}")


@requires_fuse
@pytest.mark.fuse
def test_tutorial_runs_against_the_sample_archive(tutorial_run):
    blocks, results, transcript, _, still_mounted = tutorial_run
    explain = _explain(blocks, results, transcript)
    assert len(results) == len(blocks), explain
    for block, result in zip(blocks, results):
        if block["torch"]:
            continue        # judged by the test below
        assert result["status"] == "ok", explain
    assert {b["lang"] for b in blocks} == {"sh", "python"}
    assert not still_mounted, "the tutorial ends by unmounting; the mount was still there"
    assert "Traceback" not in transcript, explain
    # Each step did what it says, on the sample's EMPIAR-10002.
    for expected in ("EMPIAR-10002  ", "Movie stacks of 80S ribosomes",
                     "data/103_movie_gc.mrcs", "(4, 256, 256)", "mean of each frame:",
                     "average of 12 frames: (256, 256)", "requests:"):
        assert expected in transcript, (expected, explain)


@requires_fuse
@pytest.mark.fuse
def test_tutorial_dataloader_step(tutorial_run):
    pytest.importorskip("torch", reason="torch not installed (optional): the tutorial's "
                        "DataLoader step was not run; the other steps were")
    blocks, results, transcript, _, _ = tutorial_run
    explain = _explain(blocks, results, transcript)
    torch_blocks = [r for b, r in zip(blocks, results) if b["torch"]]
    assert torch_blocks and all(r["status"] == "ok" for r in torch_blocks), explain
    assert "48 frames in 4 movies" in transcript and "step 4: loss" in transcript, explain
