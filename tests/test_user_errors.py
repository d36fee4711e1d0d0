"""Every error a user can cause is one clear line on stderr, never a
traceback (issue 11). Each case runs the real CLI as a subprocess, or the
Python API in a fresh interpreter, against the project's archive server.

Mount cases that need a live FUSE mount are in test_mount.py.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
from support.archive import env_for

from empiarfs.cache.stats import RecentErrors
from empiarfs.config import Settings
from empiarfs.errors import InvalidInput
from empiarfs.fuse.mount import LIBFUSE3_MISSING, MountError, choose_libfuse

EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")


@pytest.fixture
def env(archive_server, tmp_path, settings_for):
    """The environment of a user pointed at the test archive, no config file."""
    return dict(os.environ, **env_for(settings_for(archive_server, tmp_path)))


@pytest.fixture
def unwritable(tmp_path):
    """A cache directory that cannot be made: root ignores mode bits, but
    nobody can create a directory under a regular file."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    return str(blocker / "cache")


def cli(*args, env, timeout=60):
    return subprocess.run([EMPIARFS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_error(result, *words) -> str:
    """The single stderr line of a failed command, which names ``words``."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("empiarfs: error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# ------------------------------------------------------- cache directory


@pytest.mark.parametrize("args", [
    ("mount", "-f", "{mnt}"),
    ("mount", "{mnt}"),
    ("cache", "info"),
    ("cache", "clear", "--yes"),
    ("index", "update", "--range", "10002"),
], ids=["mount-f", "mount", "cache-info", "cache-clear", "index-update"])
def test_unwritable_cache_dir_is_one_line(args, env, unwritable, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env["EMPIARFS_CACHE_DIR"] = unwritable
    result = cli(*(a.format(mnt=mnt) for a in args), env=env)
    one_error(result, f"cache directory {unwritable} cannot be used", "Not a directory",
              "EMPIARFS_CACHE_DIR")
    assert not os.path.ismount(mnt)


def test_api_falls_back_to_memory_with_one_warning(env, unwritable, sample_root):
    env["EMPIARFS_CACHE_DIR"] = unwritable
    path = "EMPIAR-10002/data/100_movie_gc.mrcs"
    code = ("import sys, numpy, empiarfs\n"
            f"stack = empiarfs.load('empiar://{path}', frames=slice(0, 2))\n"
            "fs = empiarfs.pyapi.api.default_fs()\n"
            "assert fs.disk is None, fs.disk\n"
            "numpy.save(sys.stdout.buffer, stack)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            timeout=60)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert unwritable in lines[0] and "memory cache only" in lines[0]
    got = np.load(io.BytesIO(result.stdout))
    source = os.path.join(sample_root, "world_availability", "10002", "data", "100_movie_gc.mrcs")
    with mrcfile.open(source, permissive=True) as want:
        np.testing.assert_array_equal(got, want.data[0:2])


def test_get_warns_and_downloads_without_the_cache(env, unwritable, tmp_path, sample_root):
    env["EMPIARFS_CACHE_DIR"] = unwritable
    result = cli("get", "EMPIAR-10002/10002.xml", "-o", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and unwritable in warnings[0], result.stderr
    got = (tmp_path / "out" / "EMPIAR-10002" / "10002.xml").read_bytes()
    with open(os.path.join(sample_root, "world_availability", "10002", "10002.xml"), "rb") as want:
        assert got == want.read()


def test_writing_under_a_file_is_one_line(env, unwritable):
    """An operating-system error from any command is one line naming the path."""
    one_error(cli("sample", unwritable, env=env), unwritable, "Not a directory")
    target = os.path.join(unwritable, "10002.yaml")
    one_error(cli("export", "EMPIAR-10002", "-o", target, env=env),
              f"cannot write {target}: Not a directory")


# ---------------------------------------------------------------- config


def test_config_not_utf8(env, tmp_path):
    config = tmp_path / "latin1.ini"
    config.write_bytes("[empiarfs]\ncache_dir = /tmp/caf\xe9\n".encode("latin-1"))
    one_error(cli("--config", str(config), "info", "EMPIAR-10002", env=env),
              str(config), "not UTF-8")
    env["EMPIARFS_CONFIG"] = str(config)            # the same file named by the environment
    one_error(cli("info", "EMPIAR-10002", env=env), str(config), "not UTF-8")


@pytest.mark.parametrize("command", [("info", "EMPIAR-10002"), ("umount", "/nowhere")])
def test_missing_config_file_is_an_error(env, tmp_path, command):
    missing = tmp_path / "typo.ini"
    one_error(cli("--config", str(missing), *command, env=env), str(missing), "does not exist")


def test_config_that_is_not_ini(env, tmp_path):
    config = tmp_path / "notes.ini"
    config.write_text("cache_dir = /tmp/x\nsecond line\n")
    one_error(cli("--config", str(config), "info", "EMPIAR-10002", env=env),
              "cannot parse config file", str(config))


def test_boolean_setting_must_be_true_or_false(env, tmp_path):
    config = tmp_path / "maybe.ini"
    config.write_text("[empiarfs]\noffline = maybe\n")
    del env["EMPIARFS_OFFLINE"]                      # the environment would win over the file
    one_error(cli("--config", str(config), "info", "EMPIAR-10002", env=env),
              "offline", "'maybe'", "true/false")
    one_error(cli("info", "EMPIAR-10002", env=dict(env, EMPIARFS_VERIFY_TLS="sometimes")),
              "verify_tls", "'sometimes'")
    for word, value in (("yes", True), ("Off", False), ("1", True), ("false", False)):
        assert Settings().replace(offline=word).offline is value
    with pytest.raises(InvalidInput):
        Settings().replace(allow_other="maybe")


# ----------------------------------------------------------------- mount


def test_non_empty_mount_point_is_refused(env, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "results.txt").write_text("mine\n")
    for foreground in ((), ("-f",)):
        one_error(cli("mount", *foreground, str(mnt), env=env),
                  f"mount point {mnt} is not empty", "1 entry", "--nonempty")
    assert not os.path.ismount(mnt)
    assert (mnt / "results.txt").read_text() == "mine\n"


def test_stats_of_a_plain_directory(env, tmp_path):
    one_error(cli("stats", str(tmp_path), env=env), "is not an empiarfs mount")


def test_libfuse3_missing_names_the_package():
    asked = []

    def find(name):
        asked.append(name)      # and finds nothing
    with pytest.raises(MountError) as info:
        choose_libfuse({}, find=find)
    assert asked == ["fuse3"]          # never plain 'fuse', which is libfuse 2
    assert "fuse3" in str(info.value) and "libfuse3-3" in str(info.value)
    assert choose_libfuse({}, find=lambda name: f"lib{name}.so.3") == "libfuse3.so.3"
    chosen = choose_libfuse({"FUSE_LIBRARY_PATH": "/opt/fuse/libfuse3.so"}, find=find)
    assert chosen == "/opt/fuse/libfuse3.so"


def test_unloadable_libfuse_is_one_line(env, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env["FUSE_LIBRARY_PATH"] = str(tmp_path / "libfuse3.so.3")     # not there
    line = one_error(cli("mount", "-f", str(mnt), env=env), "cannot load", "libfuse3.so.3")
    assert LIBFUSE3_MISSING in line


# ----------------------------------------------------- recent read errors


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_recent_errors_keep_each_distinct_error_once():
    clock = _Clock()
    errors = RecentErrors(limit=3, burst=10, clock=clock)
    assert errors.add("read", "/a", "RemoteError", "connection refused") == 0
    clock.now += 1
    assert errors.add("read", "/a", "RemoteError", "connection refused again") is None
    kept = errors.snapshot()
    assert kept == [{"op": "read", "path": "/a", "error": "EIO", "count": 2,
                     "time": 1001.0, "reason": "connection refused again"}]
    for name in ("/b", "/c", "/d"):
        clock.now += 1
        assert errors.add("read", name, "DeadlineExceeded", "too slow") == 0
    assert [e["path"] for e in errors.snapshot()] == ["/d", "/c", "/b"]   # newest first, /a gone


def test_recent_errors_tell_people_at_a_bounded_rate():
    clock = _Clock()
    errors = RecentErrors(limit=100, burst=2, window=60.0, clock=clock)
    told = [errors.add("read", f"/f{i}", "RemoteError", "down") for i in range(5)]
    assert told == [0, 0, None, None, None]
    clock.now += 61
    assert errors.add("read", "/late", "RemoteError", "down") == 3   # three held back
    assert len(errors.snapshot()) == 6
