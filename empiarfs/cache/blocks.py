"""Pure block arithmetic: no I/O, no locks, no state.

A file of ``file_size`` bytes is cut into blocks of ``block_size`` bytes;
block ``i`` covers ``[i * block_size, min((i + 1) * block_size, file_size))``
so only the last block (the tail) may be shorter. Every block the caches
hold is exactly one of these spans, never a partial one.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple


class Request(NamedTuple):
    """One coalesced range request: blocks ``first .. first + count - 1``
    covering bytes ``[start, end)`` of the file."""

    first: int
    count: int
    start: int
    end: int

    @property
    def blocks(self) -> range:
        return range(self.first, self.first + self.count)


def block_count(file_size: int, block_size: int) -> int:
    """Number of blocks of a file (0 for an empty file)."""
    return -(-file_size // block_size) if file_size > 0 else 0


def block_span(index: int, block_size: int, file_size: int) -> tuple[int, int]:
    """Byte range ``(start, end)`` of block ``index``, clipped at the end of
    the file.

    Raises
    ------
    ValueError
        If the block lies wholly past the end of the file or ``index < 0``.
    """
    start = index * block_size
    if index < 0 or start >= file_size:
        raise ValueError(f"block {index} is outside a file of {file_size} bytes")
    return start, min(start + block_size, file_size)


def blocks_for(offset: int, size: int, block_size: int, file_size: int) -> range:
    """Indices of the blocks covering ``[offset, offset + size)``, clipped to
    the file; an empty range when the request starts at or past the end of
    the file or ``size <= 0``.

    Raises
    ------
    ValueError
        If ``offset`` is negative.
    """
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    end = min(offset + size, file_size)
    if size <= 0 or offset >= end:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)


def coalesce(
    indices: Iterable[int], block_size: int, max_request: int, file_size: int
) -> list[Request]:
    """Group block indices into runs of consecutive blocks, each run no
    larger than ``max_request`` bytes (at least one block per request).

    ``indices`` may be unsorted and contain duplicates; indices past the end
    of the file are ignored.
    """
    per_request = max(1, max_request // block_size)
    last_block = block_count(file_size, block_size) - 1
    ordered = sorted({i for i in indices if 0 <= i <= last_block})
    requests: list[Request] = []
    run_first = None
    run_count = 0

    def flush():
        start = run_first * block_size
        end = min((run_first + run_count) * block_size, file_size)
        requests.append(Request(run_first, run_count, start, end))

    for index in ordered:
        if run_first is not None and index == run_first + run_count and run_count < per_request:
            run_count += 1
            continue
        if run_first is not None:
            flush()
        run_first, run_count = index, 1
    if run_first is not None:
        flush()
    return requests
