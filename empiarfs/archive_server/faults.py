"""Run-time fault knobs and request counters for :class:`ArchiveServer`.

Tests change a :class:`Faults` object while the server runs (``faults.rate =
1.5e6``, ``faults.error_burst(503, count=2)``, ``faults.inject("cut_body")``);
each request takes one consistent :class:`Decision` from it under a lock.
Only requests under ``/empiar/`` are affected, and ``paths`` narrows that to
the data tree or the API.

Wire faults damage the reply itself, anywhere in it: a *cut* ends the
connection at a chosen byte (inside the status line, at a line boundary of
the header block, inside a validator's value, after the headers, inside the
body); a *lie* sends a whole reply that must not be trusted as it stands
(malformed or duplicated validators, lengths that disagree, an HTTP/1.0
close-delimited body, the whole file to a range request). Their names are
:data:`FAULT_KINDS`; each one injected is counted as ``faults.<kind>``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

#: Where a cut may fall (the ``cut_where`` knob).
CUT_PLACES = ("status", "header_line", "header_value", "after_headers", "body")
#: Headers whose value a ``header_value`` cut may fall inside (``cut_headers``).
CUT_HEADERS = ("ETag", "Content-Length", "Content-Range", "Last-Modified")
#: Whole replies that lie (the ``lie_kinds`` knob).
LIE_KINDS = ("malformed_etag", "duplicate_etag", "malformed_length",
             "range_length_mismatch", "http10_close", "whole_200")
#: Every wire fault by the name it is counted under (``faults.<kind>``) and
#: injected by (:meth:`Faults.inject`).
FAULT_KINDS = tuple(f"cut_{p}" for p in CUT_PLACES) + LIE_KINDS

_KNOBS = {
    "rate": 0.0, "latency": 0.0, "stall_probability": 0.0, "stall_seconds": 300.0,
    "truncate_probability": 0.0, "reset_probability": 0.0, "ignore_range": False,
    "wrong_content_range": False, "drip": False, "omit_from_listing": frozenset(),
    "redirect_to": None, "paths": "all",
    "cut_probability": 0.0, "cut_where": CUT_PLACES, "cut_headers": CUT_HEADERS,
    "cut_reset": 0.0, "lie_probability": 0.0, "lie_kinds": LIE_KINDS,
    "seed": 0,
}
# Knobs holding a subset of a fixed vocabulary, kept in the vocabulary's
# order so that a seed picks the same member on every run.
_VOCABULARY = {"cut_where": CUT_PLACES, "cut_headers": CUT_HEADERS, "lie_kinds": LIE_KINDS}


@dataclass(frozen=True)
class Decision:
    """What to do to one request, drawn once when it arrives.

    ``cut`` (a place of :data:`CUT_PLACES`) and ``lie`` (a kind of
    :data:`LIE_KINDS`) were drawn among those that can apply to the reply;
    ``wire_seed`` seeds the finer choices (which byte, which malformed
    form) so that a run repeats with its seed.
    """

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
    cut: str | None = None
    cut_headers: tuple = CUT_HEADERS
    cut_reset: bool = False
    lie: str | None = None
    wire_seed: int = 0

    @property
    def wire(self) -> bool:
        """True if the reply must be built byte by byte (a cut or a lie)."""
        return self.cut is not None or self.lie is not None

    @property
    def plain_body(self) -> bool:
        """True if the body can go out at full speed (sendfile)."""
        return not (self.truncate or self.reset or self.rate or self.drip or self.wire)


NO_FAULT = Decision()


def _applicable(reply: str, head: bool, ranged: bool, cut_headers) -> tuple[set, set]:
    """Cut places and lie kinds that can apply to a reply of this shape.

    ``reply`` is "file" (ETag, Last-Modified, Content-Length; Content-Range
    when ``ranged``) or "text" (a listing or API JSON: Content-Length only).
    """
    present = {"Content-Length"}
    if reply == "file":
        present |= {"ETag", "Last-Modified"} | ({"Content-Range"} if ranged else set())
    places = {"status", "header_line"}
    if present & set(cut_headers):
        places.add("header_value")
    if not head:
        places |= {"after_headers", "body"}
    lies = {"malformed_length", "http10_close"}
    if reply == "file":
        lies |= {"malformed_etag", "duplicate_etag"}
        if ranged and not head:
            lies |= {"range_length_mismatch", "whole_200"}
    return places, lies


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
    cut_probability : float
        Chance that a reply (file GET or HEAD, listing, API JSON) is cut
        at a byte chosen among the places of ``cut_where`` that the reply
        has, then the connection closed (FIN, or RST per ``cut_reset``).
    cut_where : tuple of str
        Places of :data:`CUT_PLACES`: ``"status"`` (inside the status
        line), ``"header_line"`` (at a line boundary inside the header
        block: the blank line never comes), ``"header_value"`` (inside the
        value of one of ``cut_headers`` present, chosen at random),
        ``"after_headers"`` (whole header block, no body), ``"body"``
        (inside the body). A HEAD reply has no ``after_headers`` or ``body``.
    cut_headers : tuple of str
        Headers a ``header_value`` cut may fall inside (of
        :data:`CUT_HEADERS`: ETag, Content-Length, Content-Range,
        Last-Modified; listings and JSON have only Content-Length).
    cut_reset : float
        Chance that a cut ends with a TCP RST instead of a clean FIN.
    lie_probability : float
        Chance that a reply lies in one of the ways of ``lie_kinds`` that
        fit it.
    lie_kinds : tuple of str
        Kinds of :data:`LIE_KINDS`: ``"malformed_etag"`` (an ETag that is
        no entity-tag, e.g. ``"1a2b`` unterminated), ``"duplicate_etag"``
        (two different ETag headers), ``"malformed_length"`` (a
        Content-Length that is no number; the body ends at close),
        ``"range_length_mismatch"`` (a 206 whose Content-Length disagrees
        with its Content-Range; the body is the range, then close),
        ``"http10_close"`` (an ``HTTP/1.0`` reply without Content-Length,
        the body ending at close), ``"whole_200"`` (200 and the whole file
        to a range request). The ETag lies need a file, the last two a
        ranged GET.
    paths : {"all", "data", "api"}
        Which requests the knobs affect.
    seed : int
        Seed of the random draws (setting it restarts the sequence).
    """

    __slots__ = tuple(_KNOBS) + ("_lock", "_rng", "_burst", "_wire_burst")

    def __init__(self, seed: int = 0, **knobs):
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_burst", [])
        object.__setattr__(self, "_wire_burst", [])
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
        if name in _VOCABULARY:
            value = _subset(name, value, _VOCABULARY[name])
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
        """All knobs back to off; pending error bursts and injections dropped."""
        with self._lock:
            self._burst.clear()
            self._wire_burst.clear()
        for name, value in _KNOBS.items():
            setattr(self, name, value)

    def error_burst(self, status: int = 503, count: int = 1, retry_after=None) -> None:
        """The next ``count`` affected requests answer ``status`` (e.g. 503,
        429, 500), with ``Retry-After: retry_after`` if given."""
        with self._lock:
            self._burst.extend([(int(status), retry_after)] * int(count))

    def inject(self, kind: str, count: int = 1) -> None:
        """The next ``count`` affected replies that can carry wire fault
        ``kind`` (of :data:`FAULT_KINDS`, e.g. ``"cut_header_value"``,
        ``"whole_200"``) get it, whatever the probabilities say; replies it
        cannot apply to (a body cut for a HEAD) leave it pending.

        Raises
        ------
        ValueError
            If ``kind`` is not a wire fault.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._wire_burst.extend([kind] * int(count))

    @property
    def active(self) -> bool:
        """True if any knob is on."""
        with self._lock:
            pending = bool(self._burst or self._wire_burst)
        return pending or any(getattr(self, n) != d for n, d in _KNOBS.items() if n != "seed")

    def applies(self, kind: str) -> bool:
        """Does the ``paths`` scope cover a request of ``kind`` ('api' or 'data')?"""
        return self.paths == "all" or self.paths == kind

    def decide(self, kind: str, is_file: bool, *, reply: str | None = None, head: bool = False,
               ranged: bool = False) -> Decision:
        """Draw the fate of one request (``kind`` is 'api' or 'data').

        Wire faults are drawn only when ``reply`` says what the answer will
        be: "file" (a file GET, or HEAD when ``head``; ``ranged`` for a
        satisfiable Range) or "text" (a listing or API JSON).
        """
        if not self.applies(kind):
            return NO_FAULT
        with self._lock:
            rng = self._rng
            error = self._burst.pop(0) if self._burst else None
            stall = self.stall_seconds if (self.stall_probability and rng.random() < self.stall_probability) else 0.0
            truncate = bool(self.truncate_probability) and rng.random() < self.truncate_probability
            reset = bool(self.reset_probability) and rng.random() < self.reset_probability
            cut = lie = None
            seed = 0
            if reply is not None:
                cut, lie = self._draw_wire(rng, reply, head, ranged)
                if cut is not None or lie is not None:
                    seed = rng.getrandbits(32)
            return Decision(
                latency=float(self.latency), error=error, stall=stall, truncate=truncate,
                reset=reset, rate=float(self.rate), drip=bool(self.drip),
                ignore_range=bool(self.ignore_range),
                wrong_content_range=bool(self.wrong_content_range),
                redirect_to=self.redirect_to if is_file else None,
                cut=cut, cut_headers=self.cut_headers,
                cut_reset=bool(cut and self.cut_reset and rng.random() < self.cut_reset),
                lie=lie, wire_seed=seed,
            )

    def _draw_wire(self, rng, reply, head, ranged):
        """(cut place or None, lie kind or None); called with the lock held.
        Injections come first; a probability draws only when set, so the
        random sequence of the older knobs is unchanged when these are off."""
        places, lies = _applicable(reply, head, ranged, self.cut_headers)
        cut = lie = None
        for i, kind in enumerate(self._wire_burst):
            if kind.startswith("cut_") and cut is None and kind[4:] in places:
                cut = kind[4:]
            elif kind in lies and lie is None:
                lie = kind
            else:
                continue
            del self._wire_burst[i]
            break
        if cut is None and self.cut_probability and rng.random() < self.cut_probability:
            choices = [p for p in self.cut_where if p in places]
            cut = rng.choice(choices) if choices else None
        if lie is None and self.lie_probability and rng.random() < self.lie_probability:
            choices = [k for k in self.lie_kinds if k in lies]
            lie = rng.choice(choices) if choices else None
        return cut, lie

    def omitted(self, names, kind: str = "data") -> set:
        """Which of ``names`` a listing should leave out now."""
        if not self.applies(kind):
            return set()
        with self._lock:
            omit = self.omit_from_listing
            if isinstance(omit, (float, int)):
                return {n for n in names if self._rng.random() < omit}
            return {n for n in names if n in omit}


# --------------------------------------------------------------------------
# What a wire fault does to the bytes of a reply (pure; the handler writes)


@dataclass
class Reply:
    """One reply as the server is about to write it, for a wire fault to
    change: ``headers`` in order (Date and Server included), ``length`` the
    body bytes that will follow the header block (0 for HEAD), ``close``
    when the body ends at connection close."""

    status: int
    reason: str
    headers: list
    length: int
    version: str = "HTTP/1.1"
    close: bool = False

    def head_bytes(self) -> bytes:
        """Status line and header block, blank line included."""
        lines = [f"{self.version} {self.status} {self.reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def get(self, name: str):
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def replace(self, name: str, value) -> None:
        """Set header ``name`` to ``value`` in place (``None`` removes it)."""
        kept = []
        for k, v in self.headers:
            if k.lower() != name.lower():
                kept.append((k, v))
            elif value is not None:
                kept.append((k, value))
                value = None
        if value is not None:
            kept.append((name, value))
        self.headers[:] = kept


def tell_lie(reply: Reply, kind: str, rng: random.Random) -> bool:
    """Make ``reply`` lie the ``kind`` way (of :data:`LIE_KINDS` except
    ``whole_200``, which changes the body and is the handler's); False if
    the reply has nothing to lie about (no ETag, no range)."""
    etag = reply.get("ETag")
    if kind == "malformed_etag":
        if not etag:
            return False
        inner = etag.strip('"')
        reply.replace("ETag", rng.choice([
            '"' + inner[:max(1, len(inner) // 2)],          # unterminated, as a cut left it
            inner,                                          # no quotes
            f'"{inner[:2]}"{inner[2:]}"',                   # a quote inside
            f'"{inner[:2]} {inner[2:]}"',                   # a space inside
            f"W/{inner}",                                   # weak, unquoted
        ]))
        return True
    if kind == "duplicate_etag":
        if not etag:
            return False
        other = f'"{rng.getrandbits(40):x}-{rng.getrandbits(48):x}"'
        at = next(i for i, (k, _) in enumerate(reply.headers) if k.lower() == "etag")
        reply.headers.insert(at + rng.randint(0, 1), ("ETag", other))
        return True
    if kind == "malformed_length":
        n = reply.length if reply.get("Content-Length") is None else int(reply.get("Content-Length"))
        reply.replace("Content-Length", rng.choice(
            [f"{n}x", f"-{n or 1}", f"0x{n:x}", f"{n}, {n + 1}", f"{n} bytes", ""]))
        reply.close = True  # nobody can tell where the body ends but at close
        return True
    if kind == "range_length_mismatch":
        if reply.status != 206 or reply.length == 0:
            return False
        delta = rng.randint(1, max(1, reply.length // 2))
        wrong = reply.length + delta if rng.random() < 0.5 else reply.length - delta
        reply.replace("Content-Length", str(wrong))
        reply.close = True
        return True
    if kind == "http10_close":
        reply.version = "HTTP/1.0"
        reply.replace("Content-Length", None)
        reply.replace("Connection", "close")
        reply.close = True
        return True
    return False


def place_cut(head: bytes, length: int, place: str, rng: random.Random,
              headers=CUT_HEADERS) -> tuple[int, str]:
    """Where a cut at ``place`` ends a reply whose header block is ``head``
    and whose body has ``length`` bytes: ``(offset into head + body, place
    used)``. A place the reply lacks falls back to the nearest one it has
    (``header_value`` -> ``header_line``; ``body`` -> ``after_headers`` ->
    ``header_line``)."""
    lines = head.split(b"\r\n")[:-2]  # status line and header lines
    wanted = {h.lower() for h in headers}
    bounds, values, pos = [], [], 0
    for i, line in enumerate(lines):
        if i:
            name, _, value = line.partition(b":")
            if name.strip().decode("latin-1").lower() in wanted:
                start = pos + len(name) + 1 + (len(value) - len(value.lstrip()))
                values.append((start, pos + len(line.rstrip())))
        pos += len(line) + 2
        bounds.append(pos)
    if place == "status":
        # Anywhere from the first byte to the CR: the line never ends.
        return rng.randint(1, len(lines[0]) + 1), place
    if place == "header_value" and values:
        start, end = rng.choice(values)
        return (start + rng.randint(1, end - start - 1) if end - start >= 2 else end), place
    if place == "body" and length >= 2:
        return len(head) + rng.randint(1, length - 1), place
    if place in ("body", "after_headers") and length >= 1:
        return len(head), "after_headers"
    return rng.choice(bounds), "header_line"


def _subset(name: str, value, vocabulary: tuple) -> tuple:
    """``value`` (one name, or several) as a tuple in ``vocabulary`` order;
    names match case-insensitively."""
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    wanted = {str(v).lower() for v in (value or ())}
    unknown = wanted - {v.lower() for v in vocabulary}
    if unknown:
        raise ValueError(f"{name}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(vocabulary)}")
    return tuple(v for v in vocabulary if v.lower() in wanted)


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
        "bytes_sent": 1048576, "ranges": 8, "status.206": 8, "faults.stall": 1,
        "faults.cut_header_value": 2}``."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """All counters back to zero."""
        with self._lock:
            self._counts.clear()
