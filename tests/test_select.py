"""Selection of files: glob and regex over paths relative to the entry,
and the recursive walk against the project's archive server."""

from __future__ import annotations

import fnmatch
import re

import pytest

from empiarfs.errors import InvalidInput, NotFound
from empiarfs.namespace.select import Selector, select_paths, split_target, walk
from empiarfs.remote.archive import Archive

PATHS = [
    "10002.xml",
    "data/a.mrcs",
    "data/b.mrc",
    "data/a b,c.mrcs",
    "data/sub/c.mrcs",
    "data/sub/deep/d.mrcs",
    "data/sub/deep/e.tif",
    "other/x.mrcs",
]


@pytest.mark.parametrize("pattern, expected", [
    ("data/*.mrcs", ["data/a b,c.mrcs", "data/a.mrcs"]),
    ("*.mrcs", ["data/a b,c.mrcs", "data/a.mrcs", "data/sub/c.mrcs", "data/sub/deep/d.mrcs",
                "other/x.mrcs"]),
    ("data/**/*.mrcs", ["data/a b,c.mrcs", "data/a.mrcs", "data/sub/c.mrcs",
                        "data/sub/deep/d.mrcs"]),
    ("data/*/*", ["data/sub/c.mrcs"]),
    ("data/**", ["data/a b,c.mrcs", "data/a.mrcs", "data/b.mrc", "data/sub/c.mrcs",
                 "data/sub/deep/d.mrcs", "data/sub/deep/e.tif"]),
    ("data/?.mrc", ["data/b.mrc"]),
    ("data/[ab].mrc*", ["data/a.mrcs", "data/b.mrc"]),
    ("data/[!a]*", ["data/b.mrc"]),
    ("*.xml", ["10002.xml"]),
    ("/data/sub/deep/*.tif", ["data/sub/deep/e.tif"]),
    ("nothing/*", []),
])
def test_glob_semantics(pattern, expected):
    assert select_paths(PATHS, Selector.glob(pattern)) == sorted(expected)


@pytest.mark.parametrize("expression, expected", [
    (r"\.mrcs$", ["data/a b,c.mrcs", "data/a.mrcs", "data/sub/c.mrcs", "data/sub/deep/d.mrcs",
                  "other/x.mrcs"]),
    (r"^data/[^/]+\.mrc$", ["data/b.mrc"]),
    ("deep", ["data/sub/deep/d.mrcs", "data/sub/deep/e.tif"]),  # search, not fullmatch
])
def test_regex_is_searched_in_the_relative_path(expression, expected):
    assert select_paths(PATHS, Selector.regex(expression)) == sorted(expected)


def test_pruning_follows_the_pattern():
    sel = Selector.glob("data/sub/*.mrcs")
    assert sel.may_contain("data") and sel.may_contain("data/sub")
    assert not sel.may_contain("data/sub/deep") and not sel.may_contain("other")
    deep = Selector.glob("data/**/x")
    assert deep.may_contain("data/a/b/c") and not deep.may_contain("other")
    assert Selector.glob("*.mrcs").may_contain("anything/below")
    assert Selector.regex("x").may_contain("anything")


@pytest.mark.parametrize("bad", ["(", "[z-a]", "a**{2,1}"])
def test_bad_regex_is_invalid_input(bad):
    with pytest.raises(InvalidInput, match="bad regular expression"):
        Selector.regex(bad)


def test_bad_options():
    with pytest.raises(InvalidInput, match="not both"):
        Selector.from_options("*.mrc", "x")
    with pytest.raises(InvalidInput, match="empty glob"):
        Selector.glob("/")
    with pytest.raises(InvalidInput, match="bad glob"):
        Selector.glob("data/[z-a]")


def test_targets_and_paths():
    assert split_target("empiar-10002//data/x.mrcs") == ("EMPIAR-10002", "data/x.mrcs")
    assert split_target("10002") == ("EMPIAR-10002", "")
    assert split_target("EMPIAR-10002/data//a b/./x/") == ("EMPIAR-10002", "data/a b/x")
    with pytest.raises(InvalidInput):
        split_target("EMPIAR-10002/data/../../etc")
    with pytest.raises(InvalidInput):
        split_target("nope/data")


def _truth(manifest, entry):
    return sorted(f["path"] for f in manifest["files"] if f["entry"] == entry)


@pytest.fixture
def archive(archive_server, tmp_path, settings_for):
    with Archive(settings_for(archive_server, tmp_path)) as client:
        yield client


def test_walk_selects_exactly_the_expected_files(archive, manifest):
    for entry in ("EMPIAR-10002", "EMPIAR-11419", "EMPIAR-10934"):
        truth = _truth(manifest, entry)
        assert [i.path for i in walk(archive, entry)] == truth
        for pattern in ("data/*.mrcs", "*.tif*", "data/**/*.bz2", "**/*.xml"):
            sel = Selector.glob(pattern)
            want = [p for p in truth if sel.matches(p)]
            assert [i.path for i in walk(archive, entry, "", sel)] == want
    truth = _truth(manifest, "EMPIAR-11419")
    rx = re.compile(r"SliceImage - 00[1-3]\.tif$")
    got = [i.path for i in walk(archive, "EMPIAR-11419", "", Selector.regex(rx.pattern))]
    assert got == [p for p in truth if rx.search(p)] and len(got) == 3
    # Globs against names with spaces and commas (fnmatch agrees on names).
    got = [i.path for i in walk(archive, "EMPIAR-11419", "data", Selector.glob("*, *"))]
    assert got == [p for p in truth if fnmatch.fnmatch(p.rsplit("/", 1)[-1], "*, *")] != []


def test_walk_single_file_and_missing_paths(archive, manifest):
    first = _truth(manifest, "EMPIAR-10002")[1]
    assert [i.path for i in walk(archive, "EMPIAR-10002", first)] == [first]
    with pytest.raises(NotFound, match="no such file"):
        list(walk(archive, "EMPIAR-10002", "data/missing.mrcs"))
    with pytest.raises(NotFound):
        list(walk(archive, "EMPIAR-99999"))
