"""Run-time fault knobs and request counters for :class:`ArchiveServer`.

Tests change a :class:`Faults` object while the server runs (``faults.rate =
1.5e6``, ``faults.error_burst(503, count=2)``); each request takes one
consistent :class:`Decision` from it under a lock. Only requests under
``/empiar/`` are affected, and ``paths`` narrows that to the data tree or
the API.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

_KNOBS = {
    "rate": 0.0, "latency": 0.0, "stall_probability": 0.0, "stall_seconds": 300.0,
    "truncate_probability": 0.0, "reset_probability": 0.0, "ignore_range": False,
    "wrong_content_range": False, "drip": False, "omit_from_listing": frozenset(),
    "redirect_to": None, "paths": "all", "seed": 0,
}


@dataclass(frozen=True)
class Decision:
    """What to do to one request, drawn once when it arrives."""

    latency: float = 0.0
    error: tuple | None = None  # (status, retry_after or None)
    stall: float = 0.0
    truncate: bool = False
    reset: bool = False
    rate: float = 0.0
    drip: bool = False
    ignore_range: bool = False
    wrong_content_range: bool = False
    redirect_to: str | None = None

    @property
    def plain_body(self) -> bool:
        """True if the body can go out at full speed (sendfile)."""
        return not (self.truncate or self.reset or self.rate or self.drip)


NO_FAULT = Decision()


class Faults:
    """Mutable, thread-safe fault settings (all off by default).

    Attributes
    ----------
    rate : float
        Bytes per second per response body (0 = unlimited).
    latency : float
        Seconds added before each response.
    stall_probability, stall_seconds : float
        Chance that a request is accepted and never answered; the connection
        is held silently for ``stall_seconds`` (or until the server stops),
        then closed.
    truncate_probability : float
        Chance that a body is cut midway after correct headers (clean close).
    reset_probability : float
        Chance that a body is cut midway with a TCP RST.
    ignore_range : bool
        Answer ranged GETs with 200 and the whole file.
    wrong_content_range : bool
        Answer 206 with the right bytes but a Content-Range shifted by one.
    drip : bool
        Send bodies at one byte per second.
    omit_from_listing : set of str, or float
        Names left out of directory listings (files still answer); a float
        is a per-row probability drawn for every listing (a flaky backend).
    redirect_to : str or None
        Base URL; file requests get ``302 Location: redirect_to + path``.
    paths : {"all", "data", "api"}
        Which requests the knobs affect.
    seed : int
        Seed of the random draws (setting it restarts the sequence).
    """

    __slots__ = tuple(_KNOBS) + ("_lock", "_rng", "_burst")

    def __init__(self, seed: int = 0, **knobs):
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_burst", [])
        for name, value in _KNOBS.items():
            object.__setattr__(self, name, value)
        self.seed = seed
        self.set(**knobs)

    def __setattr__(self, name, value):
        if name not in _KNOBS:
            raise AttributeError(f"Faults has no knob {name!r}; knobs: {', '.join(_KNOBS)}")
        if name == "paths" and value not in ("all", "data", "api"):
            raise ValueError(f"paths must be 'all', 'data' or 'api', not {value!r}")
        if name == "omit_from_listing" and not isinstance(value, (float, int)):
            value = frozenset(value or ())
        with self._lock:
            object.__setattr__(self, name, value)
            if name == "seed":
                object.__setattr__(self, "_rng", random.Random(value))

    def set(self, **knobs) -> "Faults":
        """Set several knobs at once; returns self."""
        for name, value in knobs.items():
            setattr(self, name, value)
        return self

    def reset(self) -> None:
        """All knobs back to off; pending error bursts dropped."""
        with self._lock:
            self._burst.clear()
        for name, value in _KNOBS.items():
            setattr(self, name, value)

    def error_burst(self, status: int = 503, count: int = 1, retry_after=None) -> None:
        """The next ``count`` affected requests answer ``status`` (e.g. 503,
        429, 500), with ``Retry-After: retry_after`` if given."""
        with self._lock:
            self._burst.extend([(int(status), retry_after)] * int(count))

    @property
    def active(self) -> bool:
        """True if any knob is on."""
        with self._lock:
            pending = bool(self._burst)
        return pending or any(getattr(self, n) != d for n, d in _KNOBS.items() if n != "seed")

    def applies(self, kind: str) -> bool:
        """Does the ``paths`` scope cover a request of ``kind`` ('api' or 'data')?"""
        return self.paths == "all" or self.paths == kind

    def decide(self, kind: str, is_file: bool) -> Decision:
        """Draw the fate of one request (``kind`` is 'api' or 'data')."""
        if not self.applies(kind):
            return NO_FAULT
        with self._lock:
            rng = self._rng
            error = self._burst.pop(0) if self._burst else None
            stall = self.stall_seconds if (self.stall_probability and rng.random() < self.stall_probability) else 0.0
            truncate = bool(self.truncate_probability) and rng.random() < self.truncate_probability
            reset = bool(self.reset_probability) and rng.random() < self.reset_probability
            return Decision(
                latency=float(self.latency), error=error, stall=stall, truncate=truncate,
                reset=reset, rate=float(self.rate), drip=bool(self.drip),
                ignore_range=bool(self.ignore_range),
                wrong_content_range=bool(self.wrong_content_range),
                redirect_to=self.redirect_to if is_file else None,
            )

    def omitted(self, names, kind: str = "data") -> set:
        """Which of ``names`` a listing should leave out now."""
        if not self.applies(kind):
            return set()
        with self._lock:
            omit = self.omit_from_listing
            if isinstance(omit, (float, int)):
                return {n for n in names if self._rng.random() < omit}
            return {n for n in names if n in omit}


class Stats:
    """Thread-safe request counters of one server."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict = {}

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

    def snapshot(self) -> dict:
        """Copy of all counters, e.g. ``{"requests": 12, "requests.file": 9,
        "bytes_sent": 1048576, "ranges": 8, "status.206": 8, "faults.stall": 1}``."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """All counters back to zero."""
        with self._lock:
            self._counts.clear()
