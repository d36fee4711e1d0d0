"""The one home of byte-range arithmetic (empiarfs.ranges) and of the path
rule (empiarfs.paths)."""

import pytest

from empiarfs import paths, ranges
from empiarfs.errors import InvalidInput

BS = 256 * 1024


def test_merge_joins_overlapping_and_touching_ranges():
    assert ranges.merge([[5, 7], [0, 2], [2, 3], [6, 9]]) == [(0, 3), (5, 9)]
    assert ranges.merge([(4, 4), (1, 0)]) == []
    assert ranges.merge([]) == []


def test_gaps_split_into_pieces():
    assert ranges.gaps(10, [], 4) == [(0, 4), (4, 8), (8, 10)]
    assert ranges.gaps(10, [[2, 5]], 4) == [(0, 2), (5, 9), (9, 10)]
    assert ranges.gaps(10, [[0, 10]], 4) == []
    assert ranges.gaps(0, [], 4) == []
    assert ranges.gaps(10, [(3, 4), (8, 20)]) == [(0, 3), (4, 8)]


def test_total_counts_overlaps_once():
    assert ranges.total([(0, 5), (3, 8), (10, 11)]) == 9


def test_of_blocks():
    assert ranges.of_blocks([0, 1, 3, 5, 4, 99], BS, 5 * BS + 10) == [
        (0, 2 * BS), (3 * BS, 5 * BS + 10)]
    assert ranges.of_blocks([], BS, 10) == []
    assert ranges.of_blocks([-1, 0], BS, 10) == [(0, 10)]


@pytest.mark.parametrize("path,expected", [
    ("", []), ("/", []), ("/EMPIAR-1//data/./a b/", ["EMPIAR-1", "data", "a b"]),
    ("x,y z.mrcs", ["x,y z.mrcs"]),
])
def test_path_parts(path, expected):
    assert paths.path_parts(path) == expected


@pytest.mark.parametrize("path", ["..", "a/../..", "a/\x00b", "a\x1fb", "a/\x7f", "/x/../../etc"])
def test_no_path_climbs_out_or_carries_control_characters(path):
    with pytest.raises(InvalidInput):
        paths.path_parts(path)
    with pytest.raises(InvalidInput):
        paths.clean_relpath(path.lstrip("/"))


@pytest.mark.parametrize("path,expected", [("", ""), ("data/", "data"), ("data//a b/./c", "data/a b/c")])
def test_clean_relpath(path, expected):
    assert paths.clean_relpath(path) == expected


def test_clean_relpath_refuses_absolute_paths():
    with pytest.raises(InvalidInput, match="relative to the entry root"):
        paths.clean_relpath("/data")
