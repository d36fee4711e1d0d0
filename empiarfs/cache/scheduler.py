"""Fetch jobs on a shared thread pool, at most ``per_item`` at a time per
item (a file), further ones queued per item with demand before read-ahead.

The scheduler sees items only as hashable names and jobs only as values it
hands back to ``run(item, job)``; it knows nothing of blocks, caches or
HTTP. Threads are created lazily on the first submit, i.e. after a daemon
has forked.

Lock order: ``_lock`` is a leaf; neither ``run`` nor the executor is
called with it held.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import deque
from typing import Callable, Hashable, Union

from empiarfs.errors import RemoteError

log = logging.getLogger(__name__)


class _Queue:
    __slots__ = ("active", "urgent", "background")

    def __init__(self):
        self.active = 0
        self.urgent: deque = deque()
        self.background: deque = deque()


class FetchScheduler:
    """Parameters
    ----------
    run : callable
        ``run(item, job)``, on a pool thread; its exceptions are logged.
    workers : int
        Pool size (all items together).
    per_item : int or callable
        Jobs of one item running at once, at most; a callable is asked
        each time a job is submitted (the link may turn out to be fast).
    """

    def __init__(self, run: Callable[[Hashable, object], None], workers: int,
                 per_item: Union[int, Callable[[], int]]):
        self._run = run
        self._per_item = per_item if callable(per_item) else (lambda: per_item)
        self._lock = threading.Lock()
        self._queues: dict = {}
        self._futures: set = set()
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="empiarfs-fetch")

    def submit(self, item: Hashable, job, urgent: bool) -> None:
        """Run ``job`` now if the item has a free slot, else queue it.

        Raises
        ------
        RemoteError
            If the scheduler is closed.
        """
        with self._lock:
            if self._closed:
                raise RemoteError("block reader is closed")
            q = self._queues.get(item)
            if q is None:
                q = self._queues[item] = _Queue()
            start = q.active < max(1, self._per_item())
            if start:
                q.active += 1
            else:
                (q.urgent if urgent else q.background).append(job)
        if start and not self._start(item, job):
            raise RemoteError("block reader is closed")

    def promote(self, item: Hashable, wanted: Callable[[object], bool]) -> None:
        """A reader now waits for a queued read-ahead job: move the first
        one ``wanted`` accepts to the front."""
        with self._lock:
            q = self._queues.get(item)
            if q is None:
                return
            for job in q.background:
                if wanted(job):
                    q.background.remove(job)
                    q.urgent.append(job)
                    return

    def cancel_background(self, item: Hashable) -> list:
        """Take the item's queued read-ahead jobs out; they are returned
        for the caller to fail."""
        with self._lock:
            q = self._queues.get(item)
            if q is None:
                return []
            jobs = list(q.background)
            q.background.clear()
            return jobs

    def busy(self, item: Hashable) -> bool:
        with self._lock:
            return item in self._queues

    def close(self, timeout: float = 5.0) -> list:
        """Stop: queued jobs are returned as ``(item, job)`` for the caller
        to fail; running ones get ``timeout`` seconds to finish."""
        with self._lock:
            self._closed = True
            queued = [(item, job) for item, q in self._queues.items()
                      for job in (*q.urgent, *q.background)]
            for q in self._queues.values():
                q.urgent.clear()
                q.background.clear()
            futures = list(self._futures)
        self._pool.shutdown(wait=False, cancel_futures=True)
        _done, not_done = concurrent.futures.wait(futures, timeout=timeout)
        if not_done:
            log.warning("%d fetches still running after close()", len(not_done))
        return queued

    # -- lock not held: the pool may start a thread, which took milliseconds
    # -- under a busy GIL, and every reader queued behind the lock meanwhile
    # -- (a quarter of a header scan's FUSE threads' time at a fresh mount)
    def _start(self, item, job) -> bool:
        """Hand ``job`` to the pool (its slot already counted); False if
        the scheduler closed meanwhile (close() then fails what is pending)."""
        try:
            future = self._pool.submit(self._runner, item, job)
        except RuntimeError:   # the pool was shut down
            return False
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return True

    def _forget(self, future) -> None:
        with self._lock:
            self._futures.discard(future)

    def _runner(self, item, job) -> None:
        try:
            self._run(item, job)
        except BaseException as exc:  # pragma: no cover - run handles its own errors
            log.exception("fetch job failed: %s", exc)
        finally:
            with self._lock:
                q = self._queues.get(item)
                nxt = None
                if q is not None and not self._closed:
                    if q.urgent:
                        nxt = q.urgent.popleft()
                    elif q.background:
                        nxt = q.background.popleft()
                if nxt is None and q is not None:
                    q.active -= 1
                    if not q.active and not q.urgent and not q.background:
                        del self._queues[item]
            if nxt is not None:
                self._start(item, nxt)   # keeps this slot
