"""A disk cache directory as tests see it from outside the store: its block
files and their bytes on disk, and one of its locks held by another thread."""

from __future__ import annotations

import contextlib
import os
import threading


def block_files(directory) -> list[str]:
    """Every file under ``<directory>/blocks`` (blocks and temporary files)."""
    found = []
    for root, _dirs, files in os.walk(os.path.join(directory, "blocks")):
        found.extend(os.path.join(root, f) for f in files)
    return found


def disk_bytes(directory) -> int:
    """Bytes of the files under ``<directory>/blocks``; a file removed
    during the walk (evicted by a writer) counts as gone."""
    total = 0
    for path in block_files(directory):
        try:
            total += os.path.getsize(path)
        except FileNotFoundError:
            pass
    return total


@contextlib.contextmanager
def held_elsewhere(lock):
    """While the block runs, another thread holds ``lock()`` (a callable
    returning a context manager, entered in that thread): a stalled disk
    or a busy index, as this process's other threads meet it."""
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock():
            held.set()
            release.wait(10)
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        yield
    finally:
        release.set()
        holder.join()
