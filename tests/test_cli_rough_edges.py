"""The CLI's rough edges found by hand (issue 16), one test each, against
the project's archive server (HTTP + FTP) on loopback and real mounts."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from support.archive import env_for
from support.mounting import mounted, requires_fuse

from empiarfs.cli import main
from empiarfs.cli.output import DownloadProgress
from empiarfs.remote.archive import Archive
from empiarfs.tools.download import Downloader, Listener, read_sidecar, targets_for

EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")
MOVIE = "data/100_movie_gc.mrcs"


def truth(manifest, rel, entry="EMPIAR-10002"):
    return next(f for f in manifest["files"] if f["entry"] == entry and f["path"] == rel)


def sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path)


@pytest.fixture
def run(settings):
    env = env_for(settings)

    def invoke(*args, env_extra=None):
        return CliRunner().invoke(main, list(args), env={**env, **(env_extra or {})},
                                  catch_exceptions=False)
    return invoke


def one_line_error(result, *words):
    """A failed command's output is one 'empiarfs: error:' line naming ``words``."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("empiarfs: error: "), result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- get: Ctrl-C, progress, mtimes ---------------------------------------------


def test_ctrl_c_stops_get_at_once_and_the_same_command_resumes(settings, faults, manifest,
                                                             sample_root, tmp_path):
    # 200 KB/s per reply: each 1.5 MiB movie is one 8 MiB piece taking
    # about 8 s, so Ctrl-C lands while every piece is in flight.
    faults.rate = 200_000
    out = tmp_path / "out"
    args = [EMPIARFS, "get", "10002", "--glob", "data/10[01]_*", "-o", str(out), "--jobs", "2"]
    env = dict(os.environ, **env_for(settings))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    rels = [f"data/10{i}_movie_gc.mrcs" for i in range(2)]
    sidecars = [out / "EMPIAR-10002" / (rel + ".part.json") for rel in rels]
    deadline = time.monotonic() + 20
    while not all((read_sidecar(s) or {}).get("done") for s in sidecars):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress recorded"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, stderr = proc.communicate(timeout=20)
    stopped = time.monotonic() - sent
    assert stopped < 1.5, f"get took {stopped:.1f} s to stop"
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    kept = 0
    for rel, side_path in zip(rels, sidecars):
        side = read_sidecar(side_path)
        data = (out / "EMPIAR-10002" / (rel + ".part")).read_bytes()
        with open(os.path.join(sample_root, "world_availability", "10002", rel), "rb") as fh:
            original = fh.read()
        for start, end in side["done"]:
            assert data[start:end] == original[start:end]
        kept += sum(end - start for start, end in side["done"])
    assert kept > 0
    faults.rate = 0
    again = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed"] == 2 and summary["bytes_fetched"] == 2 * 1573888 - kept
    for i in range(2):
        rel = f"data/10{i}_movie_gc.mrcs"
        assert sha(out / "EMPIAR-10002" / rel) == truth(manifest, rel)["sha256"]
    assert not list(out.rglob("*.part*"))


class Recorder(Listener):
    def __init__(self, *others):
        self.events = []
        self.others = others

    def planned(self, count, total_bytes, unknown=0):
        for o in self.others:
            o.planned(count, total_bytes, unknown)

    def started(self, target, size, present):
        self.events.append(("started", time.monotonic(), size))
        for o in self.others:
            o.started(target, size, present)

    def advanced(self, target, nbytes):
        self.events.append(("advanced", time.monotonic(), nbytes))
        for o in self.others:
            o.advanced(target, nbytes)

    def finished(self, result):
        self.events.append(("finished", time.monotonic(), result.size))
        for o in self.others:
            o.finished(result)


def test_progress_follows_bytes_as_they_arrive(settings, faults, tmp_path):
    faults.rate = 1_000_000
    screen = io.StringIO()
    progress = DownloadProgress(stream=screen, tty=True, refresh=0.05)
    recorder = Recorder(progress)
    with Archive(settings) as archive:
        targets = targets_for(archive, "EMPIAR-10002", MOVIE)
        Downloader(archive.transport, tmp_path / "out", listener=recorder).run(targets)
    progress.close()
    advanced = [e for e in recorder.events if e[0] == "advanced"]
    start = next(e[1] for e in recorder.events if e[0] == "started")
    end = next(e[1] for e in recorder.events if e[0] == "finished")
    # One 8 MiB piece holds the whole file, yet progress arrived in pieces
    # from the first quarter second on.
    assert len(advanced) >= 10 and sum(e[2] for e in advanced) == 1573888
    assert advanced[0][1] - start < 0.5 < end - start
    drawn = [line for line in screen.getvalue().splitlines() if "files]" in line]
    moving = [line for line in drawn if line.startswith("[0/1 files]")
              and not line.startswith("[0/1 files] 0 B")]
    assert moving, drawn
    # The total is the file's exact size from the start, without a '+'.
    assert all(" of 1.5 MiB " in line and "+" not in line for line in drawn), drawn


def test_progress_totals_count_each_file_once():
    from empiarfs.tools.download import FileResult, Target

    progress = DownloadProgress(stream=io.StringIO(), tty=False)
    a, b, c = (Target("EMPIAR-1", name, "http://h/" + name, hint)
               for name, hint in (("a", 1000), ("b", 2000), ("c", -1)))
    progress.planned(3, 3000, unknown=1)
    assert progress.lines()[0].startswith("[0/3 files] 0 B of 2.9 KiB+ ")
    progress.started(a, 1100, 0)          # the exact size replaces the hint
    progress.advanced(a, 500)
    progress.started(a, 1100, 400)        # a second attempt (FTP -> HTTPS) finds 400 kept
    progress.started(c, 50, 0)            # no file of unknown size is left: no '+'
    progress.finished(FileResult(b, None, "failed", error="gone"))  # failed before it began
    assert progress.lines()[0].startswith("[1/3 files] 400 B of 1.1 KiB ")


def test_downloads_keep_the_archive_mtime(run, manifest, tmp_path):
    out = tmp_path / "out"
    result = run("get", "10002", "--glob", "data/10[23]_*", "--glob", "*.xml", "-o", str(out))
    assert result.exit_code == 0, result.output
    for rel in ("data/102_movie_gc.mrcs", "data/103_movie_gc.mrcs", "10002.xml"):
        assert int((out / "EMPIAR-10002" / rel).stat().st_mtime) == truth(manifest, rel)["mtime"]


# -- get over FTP ----------------------------------------------------------------


def test_get_via_ftp_resumes_with_rest(run, archive_server, manifest, sample_root, tmp_path):
    out = tmp_path / "out"
    whole = run("get", "10002/data/104_movie_gc.mrcs", "-o", str(out), "--via", "ftp", "--json")
    assert whole.exit_code == 0, whole.output
    summary = json.loads(whole.output)
    assert summary["via"] == {"https": 0, "ftp": 1} and summary["downloaded"] == 1
    path = out / "EMPIAR-10002" / "data/104_movie_gc.mrcs"
    f = truth(manifest, "data/104_movie_gc.mrcs")
    assert sha(path) == f["sha256"] and int(path.stat().st_mtime) == f["mtime"]
    # A half-done .part (as Ctrl-C leaves it): FTP resumes it with REST.
    rel = "data/105_movie_gc.mrcs"
    with open(os.path.join(sample_root, "world_availability", "10002", rel), "rb") as fh:
        original = fh.read()
    part = out / "EMPIAR-10002" / (rel + ".part")
    half = len(original) // 2 + 123
    part.write_bytes(original[:half] + b"\0" * (len(original) - half))
    (out / "EMPIAR-10002" / (rel + ".part.json")).write_text(json.dumps({
        "version": 1, "url": f"{archive_server.data_url}/10002/{rel}",
        "fingerprint": {"size": len(original), "etag": None, "last_modified": None},
        "done": [[0, half]]}))
    resumed = run("get", f"10002/{rel}", "-o", str(out), "--via", "ftp", "--json")
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.output)
    assert summary["resumed"] == 1 and summary["bytes_fetched"] == len(original) - half
    assert sha(out / "EMPIAR-10002" / rel) == truth(manifest, rel)["sha256"]
    # A .part of another version of the file (another size) is not
    # resumed over FTP either: it starts over.
    rel = "data/106_movie_gc.mrcs"
    part = out / "EMPIAR-10002" / (rel + ".part")
    part.write_bytes(b"\xff" * 1000)
    (out / "EMPIAR-10002" / (rel + ".part.json")).write_text(json.dumps({
        "version": 1, "url": f"{archive_server.data_url}/10002/{rel}",
        "fingerprint": {"size": 1000, "etag": None, "last_modified": None},
        "done": [[0, 1000]]}))
    fresh = json.loads(run("get", f"10002/{rel}", "-o", str(out), "--via", "ftp",
                           "--json").output)
    assert fresh["downloaded"] == 1 and fresh["bytes_fetched"] == truth(manifest, rel)["size"]
    assert sha(out / "EMPIAR-10002" / rel) == truth(manifest, rel)["sha256"]


def test_get_via_auto_falls_back_to_https_when_ftp_is_blocked(run, manifest, tmp_path):
    blocked = {"EMPIARFS_FTP_URL": "ftp://127.0.0.1:1/empiar/world_availability"}
    out = tmp_path / "out"
    auto = run("get", "10002/data/106_movie_gc.mrcs", "-o", str(out), "--via", "auto", "--json",
               env_extra=blocked)
    assert auto.exit_code == 0, auto.output
    summary = json.loads(auto.output[auto.output.index("{"):])
    assert summary["via"] == {"https": 1, "ftp": 0}
    assert sha(out / "EMPIAR-10002/data/106_movie_gc.mrcs") == \
        truth(manifest, "data/106_movie_gc.mrcs")["sha256"]
    strict = run("get", "10002/data/107_movie_gc.mrcs", "-o", str(out), "--via", "ftp",
                 env_extra=blocked)
    assert strict.exit_code == 1 and "FTP unavailable" in strict.output
    assert not (out / "EMPIAR-10002/data/107_movie_gc.mrcs").exists()
    off = run("get", "10002/10002.xml", "-o", str(out), "--via", "ftp",
              env_extra={"EMPIARFS_FTP_URL": ""})
    assert off.exit_code == 1
    one_line_error(off, "--via ftp needs an FTP server")


# -- patterns, cache directory, cache ls -----------------------------------------------


def test_repeated_glob_and_regex_add_up(run, tmp_path):
    listed = run("ls", "10002", "--glob", "*.xml", "--glob", "data/10[01]_*").output.split()
    assert listed == ["10002.xml", "data/100_movie_gc.mrcs", "data/101_movie_gc.mrcs"]
    both = run("ls", "10002", "--regex", r"xml$", "--regex", "107", "--glob", "data/100_*")
    assert both.output.split() == ["10002.xml", "data/100_movie_gc.mrcs",
                                   "data/107_movie_gc.mrcs"]
    plan = json.loads(run("get", "10002", "--glob", "*.xml", "--glob", "data/10[01]_*",
                          "--dry-run", "--json", "-o", str(tmp_path / "o")).output)
    assert sorted(p["file"] for p in plan) == ["EMPIAR-10002/10002.xml",
                                               "EMPIAR-10002/data/100_movie_gc.mrcs",
                                               "EMPIAR-10002/data/101_movie_gc.mrcs"]


def test_cache_dir_option_and_cache_ls(run, archive_server, tmp_path):
    other = tmp_path / "other-cache"
    pre = run("cache", "prefetch", "EMPIAR-10002/data/100_movie_gc.mrcs", "--cache-dir",
              str(other), "--json")
    assert pre.exit_code == 0, pre.output
    assert run("cache", "pin", "EMPIAR-10002/10002.xml", "--cache-dir", str(other)).exit_code == 0
    info = json.loads(run("cache", "info", "--cache-dir", str(other), "--json").output)
    assert info["directory"].startswith(str(other)) and info["files"] == 1
    listing = json.loads(run("cache", "ls", "--cache-dir", str(other), "--json").output)
    assert [(f["path"], f["cached"], f["size"], f["pinned"]) for f in listing] == [
        ("EMPIAR-10002/10002.xml", 0, None, True),
        ("EMPIAR-10002/data/100_movie_gc.mrcs", 1573888, 1573888, False)]
    text = run("cache", "ls", "--cache-dir", str(other)).output
    assert "pinned" in text and "100%" in text and text.rstrip().endswith(
        "2 files, 1.5 MiB cached")
    # The default cache (EMPIARFS_CACHE_DIR) saw none of it.
    assert json.loads(run("cache", "ls", "--json").output) == []
    got = json.loads(run("get", "10002/data/100_movie_gc.mrcs", "-o", str(tmp_path / "o"),
                         "--cache-dir", str(other), "--json").output)
    assert got["bytes_from_cache"] == 1573888 and got["bytes_fetched"] == 0
    empty = run("index", "info", "--cache-dir", str(other))
    assert empty.output.startswith("0 entries in " + str(other)) and "never updated" in \
        empty.output and "None" not in empty.output
    assert run("index", "update", "--range", "10002", "--cache-dir", str(other)).exit_code == 0
    one = run("index", "info", "--cache-dir", str(other)).output
    assert one.startswith("1 entry in ") and "(updated 2" in one


# -- info and ls from the metadata cache ---------------------------------------


def test_info_and_ls_answer_from_the_metadata_cache(run, settings, tmp_path):
    assert run("info", "10002").exit_code == 0
    assert run("ls", "10002/data").exit_code == 0
    down = {"EMPIARFS_API_URL": "http://127.0.0.1:1/empiar/api",
            "EMPIARFS_DATA_URL": settings.data_url.replace(
                settings.data_url.split("/")[2], "127.0.0.1:1"),
            "EMPIARFS_FTP_URL": ""}
    began = time.monotonic()
    info = run("info", "10002", "--offline", env_extra=down)
    listing = run("ls", "10002/data", "--offline", env_extra=down)
    assert time.monotonic() - began < 2
    assert info.exit_code == 0 and "EMPIAR-10002: Cryo-EM movies" in info.output
    assert listing.exit_code == 0 and "100_movie_gc.mrcs" in listing.output
    for args in (("ls", "10943"), ("ls", "10943/data", "-R"), ("info", "10943")):
        missing = run(*args, "--offline", env_extra=down)
        assert missing.exit_code == 1
        one_line_error(missing, "EMPIAR-10943", "not in the metadata cache", "--offline")
    # Without --offline, once the cached copy is stale: the archive is
    # asked, is down, and the cached copy is shown with a warning.
    env = {**os.environ, **env_for(settings), **down, "EMPIARFS_METADATA_TTL": "0.001",
           "EMPIARFS_RETRIES": "0"}
    stale = subprocess.run([EMPIARFS, "info", "10002"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert stale.returncode == 0 and "EMPIAR-10002: Cryo-EM movies" in stale.stdout
    assert "serving cached entry:EMPIAR-10002: archive unreachable" in stale.stderr


# -- consistency -----------------------------------------------------------------


def test_consistent_exit_codes_words_and_messages(run, archive_server, tmp_path):
    nothing = run("ls", "10002", "--glob", "*.nothing")
    assert nothing.exit_code == 1
    one_line_error(nothing, "no files in EMPIAR-10002 match")
    entries = run("ls").output.split()
    assert entries == ["EMPIAR-10002", "EMPIAR-10934", "EMPIAR-10943", "EMPIAR-11419",
                       "EMPIAR-11561"]
    single = run("ls", "10002", "-l", "--glob", "*.xml").output
    assert single.rstrip().endswith("1 file, 2.9 KiB")
    record = json.loads(run("export", "10002", "--json").output)
    assert record["description"].startswith(
        f"EMPIAR entry EMPIAR-10002, exported by empiarfs from the EMPIAR mirror at "
        f"{archive_server.data_url}/10002.")
    assert "www.ebi.ac.uk" not in record["description"]
    missing = run("stats", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1
    one_line_error(missing, "is not an empiarfs mount")
    usage = run("ls", "10002", "--urls", "gopher")
    assert usage.exit_code == 2
    one_line_error(usage, "gopher", "see: empiarfs ls --help")


@requires_fuse
def test_stats_in_sizes_and_link_xattrs_on_a_mount(settings, tmp_path):
    with mounted(settings, tmp_path / "mnt") as mnt:
        with open(os.path.join(mnt, "EMPIAR-10002", MOVIE), "rb") as handle:
            handle.read(300_000)
        result = CliRunner().invoke(main, ["stats", str(mnt)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        fetched = next(line for line in result.output.splitlines()
                       if line.startswith("bytes fetched:"))
        assert fetched.endswith("KiB") or fetched.endswith("MiB"), fetched
        assert "memory cache:  " in result.output and " of 64.0 MiB (" in result.output
        links = os.path.join(mnt, "EMPIAR-10002", "imagesets")
        for name in os.listdir(links):
            link = os.path.join(links, name)
            assert os.path.islink(link)
            # getfattr -h -d: every attribute listed can be read (none on a link).
            for attr in os.listxattr(link, follow_symlinks=False):
                os.getxattr(link, attr, follow_symlinks=False)
            assert os.listxattr(link, follow_symlinks=False) == []
            through = os.listxattr(link)
            assert "user.empiar.imageset" in through
            for attr in through:
                assert os.getxattr(link, attr)


def test_output_into_a_closed_pipe_is_quiet():
    """`empiarfs ... | head -1`: the reader goes away before the output is
    written; no traceback and no 'Broken pipe' error line."""
    exe = os.path.join(os.path.dirname(sys.executable), "empiarfs")
    proc = subprocess.Popen([exe, "service", "show", "/mnt/empiar"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()          # the reader is gone before the command writes
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err
