"""Byte-range arithmetic on half-open ``[start, end)`` pairs, in one place
for the cache, the read-ahead and resumable downloads.

A leaf module: pure functions, no imports from the package.
"""

from __future__ import annotations

from typing import Iterable


def merge(ranges: Iterable) -> list[tuple[int, int]]:
    """Sorted union of ``[start, end)`` ranges, touching ones joined:
    ``[(5, 7), (0, 2), (2, 3), (6, 9)]`` -> ``[(0, 3), (5, 9)]``. Empty
    ranges are dropped."""
    out: list[tuple[int, int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges if e > s):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def gaps(size: int, covered: Iterable, piece: int | None = None) -> list[tuple[int, int]]:
    """The parts of ``[0, size)`` that ``covered`` leaves out, in order,
    each split into pieces of at most ``piece`` bytes when given."""
    out = []
    cursor = 0
    for start, end in merge(covered) + [(size, size)]:
        start, end = min(start, size), min(end, size)
        while cursor < start:
            stop = start if piece is None else min(cursor + piece, start)
            out.append((cursor, stop))
            cursor = stop
        cursor = max(cursor, end)
    return out


def total(ranges: Iterable) -> int:
    """Bytes covered by ``ranges`` (overlaps counted once)."""
    return sum(end - start for start, end in merge(ranges))


def of_blocks(indices: Iterable[int], block_size: int, file_size: int) -> list[tuple[int, int]]:
    """Byte ranges covered by the given block indices of a file of
    ``file_size`` bytes, adjacent blocks joined (the last block may be
    short; indices outside the file are ignored)."""
    spans = []
    for index in set(indices):
        start = index * block_size
        if index >= 0 and start < file_size:
            spans.append((start, min(start + block_size, file_size)))
    return merge(spans)
