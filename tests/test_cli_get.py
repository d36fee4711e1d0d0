"""`empiarfs get` through click and as the installed console script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from support.archive import env_for

from empiarfs.cli import main

SCRIPT = os.path.join(os.path.dirname(sys.executable), "empiarfs")


@pytest.fixture
def env(archive_server, tmp_path, settings_for):
    return env_for(settings_for(archive_server, tmp_path, block_size=64 * 1024,
                                max_request=256 * 1024))


@pytest.fixture
def run(env):
    def invoke(*args, input=None):
        return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)
    return invoke


def sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def check_tree(out, manifest, entry, paths):
    for rel in paths:
        f = next(x for x in manifest["files"] if x["entry"] == entry and x["path"] == rel)
        assert sha(out / entry / rel) == f["sha256"], rel


def test_get_glob_keeps_layout_then_skips(run, manifest, tmp_path):
    out = tmp_path / "out"
    result = run("get", "10002", "--glob", "data/10[0-3]_*", "-o", str(out), "--jobs", "2",
                 "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["downloaded"] == 4 and summary["failed"] == 0
    paths = [f"data/10{i}_movie_gc.mrcs" for i in range(4)]
    check_tree(out, manifest, "EMPIAR-10002", paths)
    assert sorted(p.name for p in (out / "EMPIAR-10002" / "data").iterdir()) == \
        sorted(p.rsplit("/", 1)[1] for p in paths)
    plan = json.loads(run("get", "10002/data", "-o", str(out), "--dry-run", "--json").output)
    actions = {p["file"].rsplit("/", 1)[1]: p["status"] for p in plan}
    assert actions["100_movie_gc.mrcs"] == "skip" and actions["107_movie_gc.mrcs"] == "new"
    assert not (out / "EMPIAR-10002" / "data" / "107_movie_gc.mrcs").exists()
    text = run("get", "10002", "--glob", "data/10[0-3]_*", "-o", str(out))
    assert text.exit_code == 0 and "4 skipped" in text.output


def test_get_from_list_made_by_ls_urls(run, manifest, tmp_path):
    listing = run("ls", "11419", "-R", "--urls", "ftp").output
    (tmp_path / "list.txt").write_text("# files of 11419\n" + listing + "\nEMPIAR-10002/10002.xml\n")
    out = tmp_path / "out"
    result = run("get", "--from-list", str(tmp_path / "list.txt"), "-o", str(out))
    assert result.exit_code == 0, result.output
    check_tree(out, manifest, "EMPIAR-11419",
               [f["path"] for f in manifest["files"] if f["entry"] == "EMPIAR-11419"])
    check_tree(out, manifest, "EMPIAR-10002", ["10002.xml"])
    assert "files (" in result.output  # the summary line


def test_get_bad_input(run, tmp_path):
    unknown = run("get", "EMPIAR-99999", "-o", str(tmp_path / "o"))
    assert unknown.exit_code == 1 and "EMPIAR-99999" in unknown.output
    nothing = run("get", "10002", "--glob", "*.nothing", "-o", str(tmp_path / "o"))
    assert nothing.exit_code == 1 and "no files" in nothing.output
    bad = run("get", "10002", "--regex", "[", "-o", str(tmp_path / "o"))
    assert bad.exit_code == 1 and "bad regular expression" in bad.output
    assert run("get").exit_code == 2
    (tmp_path / "list.txt").write_text("https://example.org/elsewhere.mrc\n")
    foreign = run("get", "--from-list", str(tmp_path / "list.txt"), "-o", str(tmp_path / "o"))
    assert foreign.exit_code == 1 and "line 1" in foreign.output
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    unwritable = run("get", "10002/10002.xml", "-o", str(blocker / "sub"))
    assert unwritable.exit_code == 1 and "cannot write" in unwritable.output
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.mrcs"))


def test_console_script_runs(env, manifest, tmp_path):
    if not os.path.exists(SCRIPT):
        pytest.skip(f"console script not installed at {SCRIPT} (pip install -e .)")
    full_env = dict(os.environ, **env)
    out = tmp_path / "out"
    ls = subprocess.run([SCRIPT, "ls", "10002", "--glob", "*.xml", "--urls", "https"],
                        env=full_env, capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0, ls.stderr
    (tmp_path / "list.txt").write_text(ls.stdout)
    got = subprocess.run([SCRIPT, "get", "--from-list", str(tmp_path / "list.txt"),
                          "-o", str(out)], env=full_env, capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 0, got.stderr
    check_tree(out, manifest, "EMPIAR-10002", ["10002.xml"])
    # Not a terminal: plain lines, no cursor control.
    assert "\x1b[" not in got.stderr and "downloaded" in got.stderr
    bad = subprocess.run([SCRIPT, "get", "99999", "-o", str(out)], env=full_env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "empiarfs: error:" in bad.stderr
