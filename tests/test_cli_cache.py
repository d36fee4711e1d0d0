"""`empiarfs cache info|clear|pin|unpin|prefetch` on a real disk cache,
and `get` reusing prefetched blocks."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner
from support.archive import env_for

from empiarfs.cli import main


@pytest.fixture
def run(archive_server, tmp_path, settings_for):
    env = env_for(settings_for(archive_server, tmp_path, block_size=64 * 1024,
                               max_request=256 * 1024))

    def invoke(*args, input=None):
        return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)
    return invoke


def test_prefetch_then_get_uses_the_cache(run, archive_server, manifest, tmp_path):
    empty = json.loads(run("cache", "info", "--json").output)
    assert empty["bytes_used"] == 0 and empty["files"] == 0
    pre = run("cache", "prefetch", "EMPIAR-10002/data/10[01]_*", "--json")
    assert pre.exit_code == 0, pre.output
    sizes = {f["path"]: f for f in manifest["files"] if f["entry"] == "EMPIAR-10002"}
    want = sizes["data/100_movie_gc.mrcs"]["size"] + sizes["data/101_movie_gc.mrcs"]["size"]
    assert json.loads(pre.output)["bytes"] == want
    info = json.loads(run("cache", "info", "--json").output)
    assert info["files"] == 2 and info["bytes_used"] >= want
    got = run("get", "10002/data/101_movie_gc.mrcs", "-o", str(tmp_path / "out"), "--json")
    assert got.exit_code == 0, got.output
    summary = json.loads(got.output)
    assert summary["bytes_from_cache"] == sizes["data/101_movie_gc.mrcs"]["size"]
    assert summary["bytes_fetched"] == 0
    data = (tmp_path / "out" / "EMPIAR-10002" / "data" / "101_movie_gc.mrcs").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sizes["data/101_movie_gc.mrcs"]["sha256"]


def test_pin_unpin_and_clear(run):
    pinned = run("cache", "pin", "EMPIAR-10002/data/100_movie_gc.mrcs")
    assert pinned.exit_code == 0 and "pinned EMPIAR-10002/data/100_movie_gc.mrcs" in pinned.output
    assert run("cache", "prefetch", "EMPIAR-10002/data/100_movie_gc.mrcs").exit_code == 0
    info = json.loads(run("cache", "info", "--json").output)
    assert info["pinned_files"] == 1 and info["pinned_bytes"] > 0
    assert info["pinned"][0].endswith("/10002/data/100_movie_gc.mrcs")
    assert "pinned" in run("cache", "info").output
    refused = run("cache", "clear", input="n\n")
    assert refused.exit_code == 1
    assert json.loads(run("cache", "info", "--json").output)["bytes_used"] > 0
    assert run("cache", "clear", "--yes").exit_code == 0
    after = json.loads(run("cache", "info", "--json").output)
    assert after["bytes_used"] == 0 and after["pinned_files"] == 1
    assert run("cache", "unpin", "EMPIAR-10002/data/*.mrcs").exit_code == 0
    assert json.loads(run("cache", "info", "--json").output)["pinned_files"] == 0


def test_cache_bad_paths(run):
    missing = run("cache", "prefetch", "EMPIAR-10002/data/nothing.mrcs")
    assert missing.exit_code == 1 and "no such file" in missing.output
    nomatch = run("cache", "pin", "EMPIAR-10002/data/*.nothing")
    assert nomatch.exit_code == 1 and "no files match" in nomatch.output
    assert run("cache", "pin").exit_code == 2
