"""Pure block arithmetic of empiarfs.cache.blocks."""

import pytest

from empiarfs.cache.blocks import Request, block_count, block_span, blocks_for, coalesce

BS = 256 * 1024


def test_block_count():
    assert block_count(0, BS) == 0
    assert block_count(1, BS) == 1
    assert block_count(BS, BS) == 1
    assert block_count(BS + 1, BS) == 2


def test_block_span_clips_tail_and_rejects_outside():
    assert block_span(0, BS, 10) == (0, 10)
    assert block_span(1, BS, 3 * BS) == (BS, 2 * BS)
    assert block_span(2, BS, 2 * BS + 5) == (2 * BS, 2 * BS + 5)
    with pytest.raises(ValueError):
        block_span(2, BS, 2 * BS)
    with pytest.raises(ValueError):
        block_span(-1, BS, 2 * BS)


@pytest.mark.parametrize(
    "offset, size, file_size, expected",
    [
        (0, 1, 10 * BS, range(0, 1)),
        (0, BS, 10 * BS, range(0, 1)),
        (0, BS + 1, 10 * BS, range(0, 2)),
        (BS - 1, 2, 10 * BS, range(0, 2)),
        (BS, BS, 10 * BS, range(1, 2)),
        (5 * BS, 100 * BS, 7 * BS + 3, range(5, 8)),   # clipped at EOF
        (7 * BS + 3, 10, 7 * BS + 3, range(0)),         # at EOF
        (100 * BS, 10, 7 * BS, range(0)),               # past EOF
        (0, 0, 10 * BS, range(0)),                      # empty read
        (0, 10, 0, range(0)),                           # empty file
    ],
)
def test_blocks_for(offset, size, file_size, expected):
    assert blocks_for(offset, size, BS, file_size) == expected


def test_blocks_for_negative_offset():
    with pytest.raises(ValueError):
        blocks_for(-1, 10, BS, 100)


def test_coalesce_runs_split_by_max_request():
    size = 100 * BS
    reqs = coalesce([5, 1, 2, 3, 3, 9, 10, 11, 12, 13], BS, 3 * BS, size)
    assert [(r.first, r.count) for r in reqs] == [(1, 3), (5, 1), (9, 3), (12, 2)]
    assert reqs[0] == Request(1, 3, BS, 4 * BS)
    assert list(reqs[2].blocks) == [9, 10, 11]
    assert all(r.end - r.start <= 3 * BS for r in reqs)


def test_coalesce_clips_tail_and_ignores_outside():
    size = 4 * BS + 7
    reqs = coalesce([3, 4, 5, -1], BS, 8 * BS, size)
    assert reqs == [Request(3, 2, 3 * BS, 4 * BS + 7)]


def test_coalesce_max_request_below_block_gives_single_blocks():
    assert [r.count for r in coalesce([0, 1, 2], BS, 1000, 10 * BS)] == [1, 1, 1]


def test_coalesce_empty():
    assert coalesce([], BS, 8 * BS, 10 * BS) == []
