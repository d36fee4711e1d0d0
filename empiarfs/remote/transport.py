"""The HTTP transport: pooled sessions, timeouts, retries, hedging, checked
range reads and counters.

Everything empiarfs sends over HTTP goes through one :class:`Transport`.
Its promises (see docs/architecture.md):

* every request has a connect timeout and a stall timeout (socket
  inactivity), and an optional absolute ``deadline``; nothing hangs;
* retries are a :class:`RetryPolicy` value: idempotent methods only, on
  connection errors, stalls, truncated bodies and 429/5xx, with capped
  jittered exponential backoff that honours ``Retry-After``;
* range replies are checked before they are trusted (status, Content-Range
  start, body length, file fingerprint) -- a wrong answer is an error, never
  data;
* redirects go only to the configured hosts.

Imports only config, errors and model.

Threading: a ``Transport`` is shared by all threads. urllib3's pool
manager is used concurrently (it is thread-safe); counters sit behind one
lock. urllib3 is used directly, not through requests: on loopback a range
request cost 929 us through ``requests.Session`` and 440 us through urllib3
(a HEAD 754 against 325 us), nearly all of it CPU under the GIL.
Proxies come from the environment as requests took them (``HTTP(S)_PROXY``,
``NO_PROXY``), and so does the CA bundle (``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE``, else requests' own).
Hedged attempts run on a private thread pool; a losing attempt is cancelled
and its socket cut as soon as another one has its reply's headers, never
blocking the caller nor holding a connection.
"""

from __future__ import annotations

import collections
import email.utils
import heapq
import http.client
import importlib.metadata
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urljoin, urlsplit

import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib.request
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from empiarfs.config import MiB, Settings
from empiarfs.errors import (
    BadResponse,
    DeadlineExceeded,
    NotFound,
    RemoteError,
    StaleFile,
)
from empiarfs.model import Fingerprint
from empiarfs.remote.site_route import Route, SiteRoute

log = logging.getLogger(__name__)



def _version() -> str:
    try:
        return importlib.metadata.version("empiarfs")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0"


USER_AGENT = f"empiarfs/{_version()} (+https://github.com/empiarfs)"
# Largest text/JSON body we accept (directory listings of 100k files are
# about 25 MiB of HTML).
MAX_TEXT_BYTES = 64 * MiB
CHUNK = 1024 * 1024
# A body read in steps of CHUNK hands a caller's on_data nothing for 10 s
# at 100 KB/s: a download streaming to disk reads smaller steps, so its
# progress moves and Ctrl-C stops it within a second.
SINK_CHUNK = 64 * 1024
MAX_REDIRECTS = 10
# Hedges never fire sooner than this after a request was sent.
HEDGE_FLOOR = 0.25
# Replies whose time to headers gives the link's floor (quickest_ttfb).
RECENT_REPLIES = 16
# Attempts of one request in flight at most (the first and its hedges).
HEDGE_ATTEMPTS = 3
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# What every request carries (as requests sent it); a call's own headers win.
_DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate", "Accept": "*/*"}
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.I)


# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class RemoteStat:
    """What a HEAD tells about one remote file.

    ``size`` is ``None`` when the server sent no Content-Length; ``url`` is
    the final URL after redirects (it ends with ``/`` for a directory).
    """

    size: Optional[int]
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    mtime: Optional[float] = None
    url: str = ""

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.size or 0, self.etag, self.last_modified)


def parse_retry_after(value, now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an
    HTTP date); ``None`` when absent or unparsable. Never negative."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def parse_http_date(value) -> Optional[float]:
    """Epoch seconds from an HTTP date (``Last-Modified``), or ``None``."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else when.timestamp()


def parse_content_range(value):
    """``"bytes 0-99/1000"`` -> ``(0, 99, 1000)``; ``"bytes */1000"`` ->
    ``(None, None, 1000)``; a ``*`` total becomes ``None``.

    Raises
    ------
    BadResponse
        If the header is missing or malformed.
    """
    match = _CONTENT_RANGE_RE.match(value or "")
    if not match:
        raise BadResponse(f"malformed Content-Range: {value!r}")
    first, last, total = match.groups()
    return (
        None if first is None else int(first),
        None if last is None else int(last),
        None if total == "*" else int(total),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again (an
    immutable value, in the manner of ``urllib3.Retry``).

    ``retries`` counts retries after the first attempt. Only ``methods``
    are retried unless the caller declares the request idempotent (the
    batch POST of the entry API is a read).
    """

    retries: int = 5
    backoff_base: float = 0.25
    backoff_max: float = 4.0
    retry_after_max: float = 30.0
    statuses: frozenset = frozenset({429, 500, 502, 503, 504})
    methods: frozenset = frozenset({"GET", "HEAD"})

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetryPolicy":
        return cls(
            retries=max(0, int(settings.retries)),
            backoff_max=max(0.0, float(settings.backoff_max)),
            backoff_base=min(0.25, max(0.0, float(settings.backoff_max))),
        )

    def allows(self, method: str, retries_done: int, idempotent: Optional[bool] = None) -> bool:
        """May a request that already had ``retries_done`` retries go again?"""
        if retries_done >= self.retries:
            return False
        if idempotent is not None:
            return idempotent
        return method.upper() in self.methods

    def backoff(self, retry_number: int, retry_after: Optional[float] = None) -> float:
        """Seconds to sleep before retry number ``retry_number`` (1-based):
        jittered exponential, capped at ``backoff_max``; a server's
        ``Retry-After`` wins when longer, capped at ``retry_after_max``."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** max(0, retry_number - 1)))
        delay = ceiling * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay


class TransportStats:
    """Thread-safe counters; :meth:`snapshot` returns a plain dict."""

    _NAMES = ("requests", "bytes", "retries", "hedges", "stalls", "errors", "ignored_ranges")

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self._NAMES, 0)
        self._errors: dict[str, int] = {}
        self.site: Optional[SiteRoute] = None   # its counters join the snapshot

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def error(self, kind: str) -> None:
        with self._lock:
            self._counts["errors"] += 1
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def total(self, *names: str) -> int:
        """The sum of some counters (no copy of the rest: asked on every open)."""
        with self._lock:
            return sum(self._counts.get(name, 0) for name in names)

    def snapshot(self) -> dict:
        """Counters at this moment. ``bytes_received`` is an alias of
        ``bytes``; ``errors_by_kind`` maps e.g. ``"stall"``, ``"http_503"``."""
        with self._lock:
            out = dict(self._counts)
            out["bytes_received"] = out["bytes"]
            out["errors_by_kind"] = dict(self._errors)
        if self.site is not None:
            out["site_cache"] = self.site.snapshot()
        return out


# --------------------------------------------------------------------------
# Internal failure kinds


class _Transient(RemoteError):
    """One attempt failed in a way worth retrying."""

    def __init__(self, message, *, kind, url=None, status=None, retry_after=None):
        super().__init__(message, url=url, status=status)
        self.kind = kind
        self.retry_after = retry_after

    def final(self, attempts: int) -> RemoteError:
        cls = BadResponse if self.kind in _UNTRUSTED_KINDS else RemoteError
        return cls(
            f"{self.args[0]} (gave up after {attempts} attempt{'s' if attempts > 1 else ''}; "
            "the archive may be down or overloaded, try again later)",
            url=self.url,
            status=self.status,
        )


# Failure kinds where the server answered but the answer was not whole or
# not believable: retried, and reported as BadResponse when retries run out.
_UNTRUSTED_KINDS = frozenset({
    "truncated", "cut_headers", "bad_headers", "bad_length", "bad_validator", "bad_range",
    "ignored_range", "incomplete", "version_mismatch",
})


# Failure kinds that mean the site cache itself failed (down, cut, stalled,
# garbled): the request's next attempt goes to the origin. An HTTP status
# is an answer: the site cache works and passes on what the origin said.
_SITE_FAILURES = frozenset({"connection", "connect_timeout", "stall", "truncated", "cut_headers",
                            "bad_headers", "incomplete"})


class _Disagrees(_Transient):
    """A reply for another version of the file than the caller holds. One
    such reply may be cut, misrouted or from a lagging backend; the file is
    declared changed only when the next reply says the same."""

    def __init__(self, message, *, url, observed):
        super().__init__(message, kind="version_mismatch", url=url)
        self.observed = observed


class _Cancelled(Exception):
    """A hedged attempt lost the race."""


class _SinkRaised(Exception):
    """A caller's ``on_data`` raised ``cause``: abandon the request, no retry."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class _Watchdog:
    """One thread that cuts the socket of a response still streaming when
    its deadline passes.

    A stall timeout cannot catch a server that sends one byte a second, and
    a blocked ``recv`` cannot be interrupted from its own thread; shutting
    the socket down from here wakes it, the read fails as truncated, and the
    retry loop then reports the deadline. Started lazily (after a daemon
    forks) and restarted in a forked child.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._cancelled: set = set()
        self._ids = itertools.count()
        self._thread = None
        self._pid = None

    def arm(self, when: float, action) -> int:
        token = next(self._ids)
        with self._cond:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._heap, self._cancelled, self._pid = [], set(), os.getpid()
                self._thread = threading.Thread(target=self._run, name="empiarfs-watchdog",
                                                daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (when, token, action))
            # Its thread sleeps until the earliest entry: wake it only when
            # this one is the new earliest (every request arms one; waking
            # the thread for each cost a thread switch per request).
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._cancelled.add(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] in self._cancelled:
                        self._cancelled.discard(heapq.heappop(self._heap)[1])
                    if not self._heap:
                        self._cond.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        _, token, action = heapq.heappop(self._heap)
                        break
                    self._cond.wait(delay)
            try:
                action()
            except Exception:  # a socket already gone is fine
                log.debug("watchdog action failed", exc_info=True)


_WATCHDOG = _Watchdog()


# The connection each thread's request is using, so the watchdog can cut
# it while headers or body are still arriving (thread ident -> connection).
_ACTIVE: dict = {}


class CutHeaders(http.client.HTTPException):
    """The status line or header block ended before its terminating blank
    line (the connection closed inside them)."""


class _LineWatch:
    """Stands in for a response's file object while the status line and
    headers are read, remembering whether the last line read was whole."""

    def __init__(self, fp):
        self._fp = fp
        self.last = None

    def readline(self, limit=-1):
        line = self._fp.readline(limit)
        if self.last is None or self.last.endswith(b"\n"):
            self.last = line
        return line

    def __getattr__(self, name):  # close(), flush() ... go to the real file
        return getattr(self._fp, name)


class _WholeHeadResponse(http.client.HTTPResponse):
    """``http.client`` takes end of file as the end of the header block, so
    a reply cut inside ``ETag: "e820-4e7`` or ``Content-Length: 15`` parses
    as a short, wrong reply (urllib3 only logs the defect). This response
    refuses one whose status line or header block did not end with its
    newline and blank line, so the cut becomes a retry."""

    def begin(self):
        if self.headers is not None:
            return
        real = self.fp
        watch = _LineWatch(real)
        self.fp = watch
        try:
            super().begin()
        finally:
            if self.fp is watch:
                self.fp = real
        if watch.last not in (b"\r\n", b"\n"):
            self.close()
            raise CutHeaders("the reply's status line or headers were cut short")


class _TrackedMixin:
    response_class = _WholeHeadResponse

    def connect(self):
        super().connect()
        _stop_if_cancelled()   # a loser cancelled while it was connecting

    def request(self, *args, **kwargs):
        _ACTIVE[threading.get_ident()] = self
        _stop_if_cancelled()   # registered first: a later cancel finds the socket
        return super().request(*args, **kwargs)


class _TrackedHTTPConnection(_TrackedMixin, urllib3.connection.HTTPConnection):
    pass


class _TrackedHTTPSConnection(_TrackedMixin, urllib3.connection.HTTPSConnection):
    pass


class _TrackedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


_POOL_CLASSES = {"http": _TrackedHTTPPool, "https": _TrackedHTTPSPool}


class _Reply:
    """A urllib3 reply with the few names the transport reads (as requests
    spelled them): ``status_code``, ``headers``, ``reason``, ``raw``."""

    __slots__ = ("raw", "status_code", "headers", "reason")

    def __init__(self, raw):
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers
        self.reason = raw.reason

    def close(self) -> None:
        # A body not read to its end costs the connection (it may still
        # carry bytes); a finished one was already handed back.
        self.raw.close()
        self.raw.release_conn()


class _Pools:
    """The connection pools: one manager for direct requests and one per
    proxy named in the environment, each at most ``size`` connections per
    host (callers wait for a free one; every holder is bounded by its
    timeouts)."""

    def __init__(self, size: int, verify: bool):
        self._kw = dict(num_pools=8, maxsize=size, block=True, retries=False)
        if verify:
            self._kw.update(cert_reqs="CERT_REQUIRED", ca_certs=(
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                or DEFAULT_CA_BUNDLE_PATH))
        else:
            self._kw.update(cert_reqs="CERT_NONE")
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._direct = self._made(urllib3.PoolManager(**self._kw))
        self._proxied: dict = {}
        self._routes: dict = {}   # (scheme, host) -> manager
        self._lock = threading.Lock()
        self._proxies = urllib.request.getproxies_environment()

    @staticmethod
    def _made(manager):
        manager.pool_classes_by_scheme = _POOL_CLASSES
        return manager

    def for_url(self, url: str):
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        manager = self._routes.get(key)
        if manager is not None:
            return manager
        proxy = self._proxies.get(parts.scheme) or self._proxies.get("all")
        if proxy and urllib.request.proxy_bypass_environment(parts.hostname or "", self._proxies):
            proxy = None
        with self._lock:
            if proxy is None:
                manager = self._direct
            else:
                manager = self._proxied.get(proxy)
                if manager is None:
                    manager = self._proxied[proxy] = self._made(
                        urllib3.ProxyManager(proxy, **self._kw))
            self._routes[key] = manager
        return manager

    def clear(self) -> None:
        for manager in (self._direct, *self._proxied.values()):
            manager.clear()


def _cut_thread(ident: int) -> None:
    """Shut down the socket of the request running on thread ``ident``
    (called from the watchdog thread)."""
    conn = _ACTIVE.get(ident)
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# The hedged attempt (if any) each thread is running.
_CURRENT = threading.local()


def _stop_if_cancelled() -> None:
    attempt = getattr(_CURRENT, "attempt", None)
    if attempt is not None:
        attempt.check()


class _Attempt:
    """One attempt of a hedged request, run on the hedge pool.

    A losing attempt is cancelled *and its socket cut*: an attempt waiting
    for a reply that never comes would otherwise hold its pooled connection
    (and, for the archive, a request in flight) until the stall timeout.
    With 1 request in 30 never answered and the pool capped at
    ``parallel_total``, the HEADs of a 3,000-file listing spent most of the
    pool on such losers (docs/performance.md, "cold ls -l on tcp-wan")."""

    def __init__(self, on_started: Optional[Callable[["_Attempt"], None]] = None):
        self.started = threading.Event()
        self.cancelled = False
        self._on_started = on_started
        self._lock = threading.Lock()
        self._thread: Optional[int] = None   # ident of the thread running it

    def check(self):
        if self.cancelled:
            raise _Cancelled()

    def begin(self) -> None:
        with self._lock:
            self._thread = threading.get_ident()
        _CURRENT.attempt = self

    def got_headers(self) -> None:
        if not self.started.is_set():
            self.started.set()
            if self._on_started is not None:
                self._on_started(self)
        self.check()

    def end(self) -> None:
        _CURRENT.attempt = None
        with self._lock:
            self._thread = None   # from here on its thread may run another request
        self.started.set()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._thread is not None:
                _cut_thread(self._thread)


# --------------------------------------------------------------------------
# The transport


class Transport:
    """Pooled, timed, retried HTTP(S) access to the archive.

    Parameters
    ----------
    settings : Settings
        URLs, timeouts (``connect_timeout``, ``stall_timeout``,
        ``hedge_after``), ``retries``, ``backoff_max``, ``parallel_total``
        (connection pool size), ``verify_tls``, ``allowed_redirect_hosts``.
    retry : RetryPolicy, optional
        Overrides the policy built from ``settings``.
    """

    def __init__(self, settings: Settings, retry: Optional[RetryPolicy] = None):
        self.settings = settings
        self.retry = retry or RetryPolicy.from_settings(settings)
        self.stats = TransportStats()
        pool = max(1, int(settings.parallel_total))
        self.pools = _Pools(pool, bool(settings.verify_tls))
        # Hosts redirects may lead to.
        hosts = {urlsplit(u).hostname for u in (settings.api_url, settings.data_url) if u}
        hosts.update(h.lower() for h in settings.allowed_redirect_hosts)
        # Archive requests go to the site cache while it works (per attempt).
        self.site = SiteRoute(settings.site_cache, (settings.api_url, settings.data_url)) \
            if settings.site_cache else None
        self.stats.site = self.site
        if self.site is not None:
            hosts.add(self.site.site_host)
        self._redirect_hosts = {h.lower() for h in hosts if h}
        self._hedge_pool = ThreadPoolExecutor(
            max_workers=HEDGE_ATTEMPTS * pool + 2, thread_name_prefix="empiarfs-http"
        )
        self._ignores_ranges: set[str] = set()
        self._closed = False
        self._ttfb: Optional[float] = None  # typical seconds to response headers
        self._recent_ttfb: collections.deque = collections.deque(maxlen=RECENT_REPLIES)
        self._recent_lock = threading.Lock()

    # -- public verbs -------------------------------------------------------

    def get_json(self, url: str, method: str = "GET", data=None, *, idempotent=None, deadline=None):
        """GET (or POST ``data``) and decode a JSON body.

        Raises
        ------
        NotFound
            On 404/410.
        BadResponse
            If the body is not JSON, or too large.
        RemoteError
            If the server cannot be reached or keeps failing.
        """
        def consume(resp, final, ctl):
            body = self._read_body(resp, final, MAX_TEXT_BYTES, ctl)
            try:
                return json.loads(body)
            except (ValueError, RecursionError) as exc:  # hostile nesting too
                if _close_delimited(resp):
                    # Without a length or chunking, a cut body looks whole.
                    raise _Transient(f"{final} sent incomplete JSON", kind="incomplete",
                                     url=final) from exc
                raise BadResponse(f"{url} did not return valid JSON: {exc}", url=url) from exc

        return self._request(method, url, data=data, idempotent=idempotent, deadline=deadline,
                             consume=consume)

    def get_text(self, url: str, max_bytes: int = MAX_TEXT_BYTES, *, deadline=None,
                 parse: Optional[Callable[[str], object]] = None,
                 complete: Optional[Callable[[str], bool]] = None):
        """GET a text body (a directory listing), at most ``max_bytes``.

        Parameters
        ----------
        parse : callable, optional
            Turns the text into the caller's value; a ``BadResponse`` from it
            counts as a bad reply and the request is tried again (a listing
            cut by a proxy is not a verdict on the directory).
        complete : callable, optional
            For a body delimited only by the connection closing (no length,
            no chunking), says whether the text looks whole (e.g. ends with
            ``</html>``); if not, the request is tried again.

        Returns
        -------
        str, or what ``parse`` returns.

        Raises
        ------
        NotFound, BadResponse, RemoteError
            As :meth:`get_json`; ``BadResponse`` also when the body exceeds
            ``max_bytes`` or its Content-Length.
        """

        def consume(resp, final, ctl):
            text = self._read_body(resp, final, max_bytes, ctl).decode("utf-8", errors="replace")
            if complete is not None and _close_delimited(resp) and not complete(text):
                raise _Transient(f"the body of {final} ended early", kind="incomplete", url=final)
            if parse is None:
                return text
            try:
                return parse(text)
            except BadResponse as exc:
                raise _Transient(str(exc), kind="incomplete", url=final) from exc

        return self._request("GET", url, deadline=deadline, consume=consume)

    def get_bytes(self, url: str, max_bytes: int = MAX_TEXT_BYTES, *, deadline=None) -> bytes:
        """GET a whole (small) body as bytes.

        Raises
        ------
        NotFound, BadResponse, RemoteError
            As :meth:`get_text`.
        """
        return self._request(
            "GET", url, deadline=deadline, headers={"Accept-Encoding": "identity"},
            consume=lambda resp, final, ctl: self._read_body(resp, final, max_bytes, ctl),
        )

    def head(self, url: str, *, deadline=None) -> RemoteStat:
        """Size, ETag and Last-Modified of one file, by HEAD.

        Raises
        ------
        NotFound
            On 404/410.
        RemoteError
            If the server cannot be reached or keeps failing.
        """

        def consume(resp, final, ctl):
            return self._remote_stat(resp, final, _content_length(resp, final))

        stat = self._request(
            "HEAD", url, deadline=deadline, headers={"Accept-Encoding": "identity"}, consume=consume
        )
        if stat.size is None and not stat.url.endswith("/"):
            # Apache omits Content-Length on HEAD of an empty file; some
            # servers omit it always. A one-byte range GET tells the size.
            size = self._request(
                "GET", stat.url, deadline=deadline,
                headers={"Range": "bytes=0-0", "Accept-Encoding": "identity"},
                consume=lambda resp, final, ctl: _size_from_probe(resp, final),
            )
            stat = RemoteStat(size, stat.etag, stat.last_modified, stat.mtime, stat.url)
        return stat

    def probe(self, url: str, nbytes: int, *, deadline=None) -> tuple[RemoteStat, bytes]:
        """What :meth:`head` tells, and the file's first ``nbytes`` bytes
        (fewer for a shorter file), in one range request: the size is the
        reply's Content-Range total. On a long path this costs what a HEAD
        costs (one round trip while the body fits TCP's first window), and
        the header a reader asks for next is already here.

        A server that answers 200 (no ranges) gives its Content-Length and
        the first bytes; the rest of the body is not read.

        Raises
        ------
        NotFound, RemoteError
            As :meth:`head`.
        """
        if nbytes <= 0:
            raise ValueError(f"nbytes must be positive: {nbytes}")

        def consume(resp, final, ctl):
            body, total = self._consume_range(resp, final, 0, nbytes, None, ctl)
            if resp.status_code == 416 and total is None:
                total = 0   # a range of an empty file, without Content-Range
            return self._remote_stat(resp, final, total), body

        stat, first = self._request(
            "GET", url, deadline=deadline, hedge=True,
            headers={"Range": f"bytes=0-{nbytes - 1}", "Accept-Encoding": "identity"},
            consume=consume)
        if stat.size is None:
            # "Content-Range: bytes 0-N/*": the server does not know; ask HEAD.
            return self.head(url, deadline=deadline), first
        return stat, first[:stat.size]

    def _remote_stat(self, resp, final: str, size: Optional[int]) -> RemoteStat:
        etag, modified = _validators(resp, final)
        return RemoteStat(
            size=size, etag=etag, last_modified=modified, mtime=parse_http_date(modified),
            # The archive's URL, not the site cache's: callers keep it.
            url=(self.site.origin_url_for(final) or final) if self.site is not None else final,
        )

    def fetch_range(
        self,
        url: str,
        start: int,
        end: int,
        expect: Optional[Fingerprint] = None,
        *,
        deadline: Optional[float] = None,
        on_data: Optional[Callable[[int, bytes], None]] = None,
        buffer: bool = False,
    ) -> bytes:
        """Bytes ``[start, end)`` of ``url`` (fewer only at end of file);
        with ``buffer=True`` possibly a ``bytearray`` the caller then owns
        (no copy to ``bytes``: the block reader copies into blocks anyway).

        Parameters
        ----------
        url : str
            File URL.
        start, end : int
            Half-open byte range; ``end`` is clipped at end of file.
        expect : Fingerprint, optional
            The version the caller has cached; a reply for another version
            raises ``StaleFile``.
        deadline : float, optional
            Absolute ``time.monotonic()`` after which no new attempt starts.
        on_data : callable, optional
            ``on_data(offset, chunk)`` with each piece of the body as it
            arrives (offset in the file), once the reply's headers passed
            every check; a retried or hedged attempt may repeat offsets.
            Whatever it raises abandons the request unretried and is
            re-raised here: how a download shows progress and stops at once.

        Raises
        ------
        StaleFile
            If the reply's total size or ETag disagrees with ``expect``.
        BadResponse
            If the server answers with the wrong range, a 200 at ``start > 0``
            or keeps sending short bodies.
        NotFound
            On 404/410.
        DeadlineExceeded
            If ``deadline`` passes before the bytes arrive.
        RemoteError
            If the server cannot be reached or keeps failing.
        """
        if start < 0 or end < start:
            raise ValueError(f"bad range [{start}, {end})")
        pieces = []
        pos = start
        # The site cache keys data by the version asked for (If-Match), so a
        # changed file gets new keys; a weak ETag names no exact version.
        site_headers = None
        if expect is not None and expect.etag and not expect.etag.strip().startswith("W/"):
            site_headers = {"If-Match": expect.etag.strip()}
        while pos < end:
            try:
                piece, total = self._request(
                    "GET", url, deadline=deadline, hedge=True, site_headers=site_headers,
                    headers={"Range": f"bytes={pos}-{end - 1}", "Accept-Encoding": "identity"},
                    consume=lambda resp, final, ctl, pos=pos: self._consume_range(
                        resp, final, pos, end, expect, ctl, on_data
                    ),
                )
            except _SinkRaised as stop:
                raise stop.cause from None
            if not piece:
                break
            pieces.append(piece)
            pos += len(piece)
            if total is not None and pos >= total:
                break
            # A short 206 that is not at end of file: the server capped the
            # range; ask for the rest.
        # One reply is the common case: hand it on without another copy.
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return data if buffer or isinstance(data, bytes) else bytes(data)

    @property
    def typical_ttfb(self) -> Optional[float]:
        """Typical seconds from sending a request to its reply's headers
        (a moving average), or ``None`` before the first reply."""
        return self._ttfb

    @property
    def quickest_ttfb(self) -> Optional[float]:
        """The quickest of the last ``RECENT_REPLIES`` replies' seconds to
        headers, or ``None`` before the first: the link's floor (round trip
        plus server), which tells a fast link from a long one. The moving
        average starts at the first reply, which pays for a handshake and
        a cold server: on loopback it took more requests than a mount makes
        before its first read to fall below 10 ms."""
        with self._recent_lock:
            return min(self._recent_ttfb) if self._recent_ttfb else None

    def ignores_ranges(self, url: str) -> bool:
        """Has the server of ``url`` answered a range request with 200?"""
        return urlsplit(url).netloc in self._ignores_ranges

    def close(self) -> None:
        """Close pooled connections and the hedge pool. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._hedge_pool.shutdown(wait=False, cancel_futures=True)
        self.pools.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- retry loop -----------------------------------------------------------

    def _request(self, method, url, *, consume, headers=None, data=None, idempotent=None,
                 deadline=None, hedge=None, site_headers=None):
        # Every GET and HEAD is hedged: a listing or an entry record that
        # never answers (1 request in 30 at EMPIAR) would otherwise hold an
        # `ls` for the whole stall timeout.
        if hedge is None:
            hedge = method in ("GET", "HEAD")
        retries_done = 0
        disagreed = None  # the other version the previous reply claimed
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(f"deadline passed before {method} {url} completed", url=url)
            route = self.site.route(url) if self.site is not None else None
            target, sent = url, headers
            if route is not None and route.via_site:
                target = route.url
                if site_headers:
                    sent = {**(headers or {}), **site_headers}
            try:
                if hedge and self.settings.hedge_after > 0:
                    result = self._hedged(method, target, sent, data, consume, deadline)
                else:
                    result = self._attempt(method, target, sent, data, consume, deadline, None)
                self._routed(route)
                return result
            except _Transient as exc:
                self._routed(route, exc)
                self.stats.error(exc.kind)
                if isinstance(exc, _Disagrees):
                    if exc.observed == disagreed:
                        raise StaleFile(f"{exc.args[0]}; reopen the file", url=url) from exc
                    disagreed = exc.observed
                if not self.retry.allows(method, retries_done, idempotent):
                    raise exc.final(retries_done + 1) from exc
                retries_done += 1
                delay = self.retry.backoff(retries_done, exc.retry_after)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise DeadlineExceeded(
                        f"{method} {url} failed ({exc.args[0]}) and the deadline leaves "
                        "no time to retry", url=url,
                    ) from exc
                log.info("retrying %s %s in %.2fs (%s)", method, url, delay, exc.args[0])
                self.stats.add("retries")
                time.sleep(delay)
            except BaseException as exc:
                self._routed(route, exc)
                raise

    def _routed(self, route: Optional[Route], exc: Optional[BaseException] = None) -> None:
        """Tell the site router how an attempt via ``route`` went."""
        if route is None or not route.via_site:
            return
        if isinstance(exc, _Transient) and exc.kind in _SITE_FAILURES:
            self.site.report(route, False, exc.args[0])
        elif isinstance(exc, (DeadlineExceeded, _Cancelled)) or (
                exc is not None and not isinstance(exc, RemoteError)):
            self.site.forget_probe(route)   # no verdict on the site cache
        else:
            self.site.report(route, True)

    def _hedged(self, method, url, headers, data, consume, deadline):
        """Run one attempt; while no attempt has response headers, race
        another one after each hedge delay and keep the first success.
        At most HEDGE_ATTEMPTS are in flight: a new hedge cuts the oldest
        attempt, and each wait is twice the one before (an attempt that
        is merely slow has had time to answer before it is cut).

        Why rolling: with 1 request in 30 never answered, a single hedge
        left 1 read in 900 waiting the whole stall timeout (about one 10 s
        pause per 256 MiB on the WAN benchmark), and three attempts that
        all stayed silent still held a 3,000-file ``ls -l`` for 10 s in
        1 cold run of 4 on the tcp-wan model.

        Every attempt, the first too, runs on the hedge pool. Running the
        first on the calling thread (the watchdog launching hedges) saved
        ~8% of a loopback header scan, but on tcp-wan with Apache replies
        that were not lost came late enough to be hedged: a cold 3,000-file
        ``ls -l`` made 241 hedges instead of 119 and took 18.6-20.0 s
        instead of 14.4-14.8 (docs/performance.md, third pass)."""
        attempts: dict = {}   # future -> its _Attempt
        lock = threading.Lock()

        winners: list = []

        def first_headers(winner):
            # The others are still waiting for headers (hedges are only
            # launched before any attempt has them): cut them now, not
            # when the winner's body is done. Only the first to get
            # headers cuts; a near tie runs on until the end.
            with lock:
                winners.append(winner)
                if len(winners) > 1:
                    return
                losers = [c for c in attempts.values() if c is not winner]
            for ctl in losers:
                ctl.cancel()

        def launch():
            ctl = _Attempt(first_headers)
            future = self._hedge_pool.submit(
                self._attempt, method, url, headers, data, consume, deadline, ctl)
            with lock:
                attempts[future] = ctl
            return future

        def may_hedge():
            return not any(c.started.is_set() for c in attempts.values())

        def oldest_live():
            live = [c for f, c in attempts.items() if f in pending and not c.cancelled]
            return live[0] if len(live) >= HEDGE_ATTEMPTS else None

        pending = {launch()}
        failure = None
        try:
            while pending:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                hedging = may_hedge()
                if hedging:
                    delay = self._hedge_delay() * 2 ** (len(attempts) - 1)
                    timeout = delay if timeout is None else min(timeout, delay)
                done, pending = wait_futures(pending, timeout=timeout, return_when=FIRST_COMPLETED)
                if not done:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DeadlineExceeded(f"deadline passed while reading {url}", url=url)
                    # Headers may have come while we waited.
                    if hedging and may_hedge():
                        self.stats.add("hedges")
                        log.debug("hedging %s %s after %.2fs without headers", method, url, delay)
                        oldest = oldest_live()
                        if oldest is not None:
                            oldest.cancel()   # its future ends soon and is no verdict
                        pending.add(launch())
                    continue
                for fut in done:
                    exc = fut.exception()
                    if exc is None:
                        return fut.result()
                    if isinstance(exc, _Cancelled) or (
                            attempts[fut].cancelled and isinstance(exc, _Transient)):
                        continue   # a loser cut on purpose: no verdict on the request
                    # Prefer a definitive answer (StaleFile, NotFound...) over
                    # a transient one when both attempts fail.
                    if failure is None or (isinstance(failure, _Transient)
                                           and not isinstance(exc, _Transient)):
                        failure = exc
                    if isinstance(exc, _SinkRaised):
                        raise exc   # the caller stopped: no waiting for the others
        finally:
            with lock:
                losers = list(attempts.values())
            for ctl in losers:
                ctl.cancel()
        if failure is None:
            # Every attempt was cut because one had headers, and that one
            # was then cut itself (a lost race is never the verdict).
            raise _Transient(f"every attempt of {method} {url} was abandoned", kind="cancelled",
                             url=url)
        raise failure

    # -- one attempt ----------------------------------------------------------

    def _timeouts(self, deadline):
        connect, stall = self.settings.connect_timeout, self.settings.stall_timeout
        if deadline is not None:
            left = max(0.05, deadline - time.monotonic())
            connect, stall = min(connect, left), min(stall, left)
        return (connect, stall)

    def _attempt(self, method, url, headers, data, consume: Callable, deadline, ctl: Optional[_Attempt]):
        """One request (following allowed redirects) and its body."""
        ident = threading.get_ident()
        if ctl is not None:
            ctl.begin()
        # Armed before sending: a server can drip the headers too, and a
        # blocked read cannot be interrupted from its own thread.
        guard = None if deadline is None else _WATCHDOG.arm(
            deadline, lambda: _cut_thread(ident))
        try:
            current, verb, body = url, method, data
            for _ in range(MAX_REDIRECTS + 1):
                resp = self._send(verb, current, headers, body, deadline)
                try:
                    if ctl is not None:
                        ctl.got_headers()
                    if resp.status_code in _REDIRECT_STATUSES and resp.headers.get("Location"):
                        target = urljoin(current, resp.headers["Location"])
                        self._check_redirect(current, target)
                        if resp.status_code == 303 and verb != "HEAD":
                            verb, body = "GET", None
                        current = target
                        continue
                    self._check_status(resp, current, url)
                    result = consume(resp, current, ctl)
                    if verb == "HEAD":
                        _finish_bodiless(resp)
                    return result
                finally:
                    resp.close()
            raise BadResponse(f"too many redirects from {url}", url=url)
        finally:
            if guard is not None:
                _WATCHDOG.disarm(guard)
            if ctl is not None:
                ctl.end()
            _ACTIVE.pop(ident, None)

    def _hedge_delay(self) -> float:
        """How long to wait for headers before racing a duplicate: three
        times the usual time to headers, between HEDGE_FLOOR and the
        ``hedge_after`` setting. Loopback hedges a stall within a quarter
        second; EMPIAR's ~1 s replies are hedged only after the setting."""
        typical = self._ttfb
        if typical is None:
            return self.settings.hedge_after
        return max(min(HEDGE_FLOOR, self.settings.hedge_after),
                   min(3.0 * typical, self.settings.hedge_after))

    def _send(self, method, url, headers, data, deadline):
        self.stats.add("requests")
        started = time.monotonic()
        connect, stall = self._timeouts(deadline)
        sent = dict(_DEFAULT_HEADERS)
        if headers:
            sent.update(headers)
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            manager = self.pools.for_url(url)
            raw = manager.urlopen(
                method, url, body=data, headers=sent, preload_content=False, decode_content=True,
                redirect=False, retries=False, timeout=urllib3.Timeout(connect=connect, read=stall),
            )
        except urllib3.exceptions.NewConnectionError as exc:   # before its base class below
            raise _Transient(f"cannot connect to {_host(url)}: {_reason(exc)}", kind="connection",
                             url=url) from exc
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise _Transient(f"connecting to {_host(url)} timed out", kind="connect_timeout", url=url) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise self._stalled(f"no response from {url} within {self.settings.stall_timeout}s",
                                url) from exc
        except urllib3.exceptions.SSLError as exc:
            raise RemoteError(
                f"TLS error talking to {_host(url)}: {exc} (check the system CA certificates, "
                "or set verify_tls=false for a local test server)", url=url,
            ) from exc
        except urllib3.exceptions.InvalidHeader as exc:
            # Conflicting Content-Length values and the like: a garbled or
            # spliced reply, worth another try.
            raise _Transient(f"malformed headers from {_host(url)}: {_reason(exc)}",
                             kind="bad_headers", url=url) from exc
        except urllib3.exceptions.ProxyError as exc:
            # Not the archive's fault: say which proxy (from the environment).
            raise _Transient(f"cannot reach {_host(url)} through the proxy {manager.proxy} "
                             f"(HTTP_PROXY/HTTPS_PROXY): {_reason(exc)}", kind="connection",
                             url=url) from exc
        except (urllib3.exceptions.ProtocolError, http.client.HTTPException, OSError) as exc:
            if _caused_by(exc, CutHeaders):
                raise _Transient(f"the reply from {_host(url)} was cut inside its headers",
                                 kind="cut_headers", url=url) from exc
            raise _Transient(f"cannot connect to {_host(url)}: {_reason(exc)}", kind="connection",
                             url=url) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise RemoteError(f"request to {url} failed: {exc}", url=url) from exc
        elapsed = time.monotonic() - started
        # An exponentially weighted mean; races here only blur it.
        self._ttfb = elapsed if self._ttfb is None else 0.9 * self._ttfb + 0.1 * elapsed
        with self._recent_lock:
            self._recent_ttfb.append(elapsed)
        return _Reply(raw)

    def _stalled(self, message: str, url: str) -> _Transient:
        """A stall, before the headers or inside the body: counted once
        here, and retried like any transient fault."""
        self.stats.add("stalls")
        return _Transient(message, kind="stall", url=url)

    def _check_redirect(self, source, target):
        parts = urlsplit(target)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or host not in self._redirect_hosts:
            raise BadResponse(
                f"refusing redirect to other host {host or target!r} (from {source}); "
                "add it to allowed_redirect_hosts if it is trusted", url=source,
            )
        if urlsplit(source).scheme == "https" and parts.scheme == "http":
            raise BadResponse(f"refusing redirect from https to http ({target})", url=source)

    def _check_status(self, resp, current, original):
        status = resp.status_code
        if status < 300 or status == 416:
            return
        if status in (404, 410):
            raise NotFound(f"not found in the archive: {original}", path=original)
        if status == 412:
            # Only If-Match (sent to a site cache) is conditional here: the
            # file is no longer the version asked for.
            raise _Disagrees(f"{original} changed on the archive (precondition failed)",
                             url=current, observed=("412",))
        if status in self.retry.statuses:
            raise _Transient(
                f"HTTP {status} from {current}", kind=f"http_{status}", url=current, status=status,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
        raise RemoteError(f"HTTP {status} {resp.reason or ''} from {current}".replace("  ", " "),
                          url=current, status=status)

    def _read_body(self, resp, url, limit, ctl, want=None, sink=None) -> bytes:
        """Read the body: at most ``limit`` bytes (more is ``BadResponse``),
        or exactly ``want`` bytes when given (then stop early); ``sink(offset,
        chunk)`` sees each chunk as it arrives (offset in the body)."""
        declared = _content_length(resp, url)
        encoded = bool(resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"))
        if want is None and declared is not None and not encoded and declared > limit:
            raise BadResponse(f"{url} is too large ({declared} bytes, limit {limit})", url=url)
        if want is not None and sink is None and not encoded:
            body = self._read_exact(resp, url, want, ctl)
            if body is not None:
                return body
        chunks = []
        got = 0
        try:
            step = CHUNK if sink is None else SINK_CHUNK
            if want is not None:
                step = max(1, min(step, want))   # a 200 to a probe: not a MiB more than asked
            for chunk in resp.raw.stream(step, decode_content=True):
                if ctl is not None:
                    ctl.check()
                chunks.append(chunk)
                got += len(chunk)
                self.stats.add("bytes", len(chunk))
                if sink is not None:
                    try:
                        sink(got - len(chunk), chunk)
                    except Exception as exc:  # not a network error: never retried
                        raise _SinkRaised(exc) from exc
                if want is not None and got >= want:
                    break
                if want is None and got > limit:
                    raise BadResponse(f"{url} is larger than the limit of {limit} bytes", url=url)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise self._stalled(f"download of {url} stalled for {self.settings.stall_timeout}s",
                                url) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise BadResponse(f"cannot decode the body of {url}: {exc}", url=url) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _Transient(f"body of {url} was cut short: {_reason(exc)}", kind="truncated", url=url) from exc
        body = b"".join(chunks)
        if want is not None:
            return body[:want]
        if declared is not None and not encoded:
            if got < declared:
                raise _Transient(
                    f"body of {url} was cut short ({got} of {declared} bytes)", kind="truncated", url=url
                )
            if got > declared:
                raise BadResponse(f"body of {url} is longer than its Content-Length", url=url)
        return body

    def _read_exact(self, resp, url, want, ctl) -> Optional[bytearray]:
        """Up to ``want`` body bytes read straight from the socket into one
        buffer (shorter if the body ends early; the caller checks), or
        ``None`` when the reply object does not allow it (then the caller
        streams). urllib3's ``stream()`` copied every byte four times on the
        way (http.client's buffer, its bytes, the join, the slice); a cold
        loopback read spent a third of its GIL time copying."""
        raw = resp.raw
        fp = getattr(raw, "_fp", None)
        if fp is None or not hasattr(fp, "readinto") or getattr(raw, "_decoded_buffer", None):
            return None
        buf = bytearray(want)
        view = memoryview(buf)
        got = 0
        try:
            while got < want:
                if ctl is not None:
                    ctl.check()
                n = fp.readinto(view[got:min(want, got + CHUNK)])
                if not n:
                    break
                got += n
                self.stats.add("bytes", n)
        except (socket.timeout, TimeoutError) as exc:
            raise self._stalled(f"download of {url} stalled for {self.settings.stall_timeout}s",
                                url) from exc
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise _Transient(f"body of {url} was cut short: {_reason(exc)}", kind="truncated",
                             url=url) from exc
        finally:
            view.release()
        if fp.isclosed():
            # The whole body was read behind urllib3's back: hand the
            # connection back to the pool ourselves (closed, it would cost
            # the next request a handshake).
            raw.release_conn()
        if got < want:
            del buf[got:]
        return buf

    def _consume_range(self, resp, url, start, end, expect, ctl, on_data=None):
        status = resp.status_code
        etag, modified = _validators(resp, url)
        if status == 416:
            total = None
            if resp.headers.get("Content-Range"):
                total = _content_range(resp, url)[2]
            self._check_expect(url, expect, total, etag, modified)
            return b"", total
        if status == 206:
            first, last, total = _content_range(resp, url)
            if first is None or first != start or last < first or (total is not None and last >= total):
                # A reply for another request (a proxy mixing up replies)
                # or garbled: never data; the next attempt may be right.
                raise _Transient(
                    f"asked {url} for bytes {start}-{end - 1} but the reply is for "
                    f"{resp.headers.get('Content-Range')!r}", kind="bad_range", url=url,
                )
            self._check_expect(url, expect, total, etag, modified)
            promised = last - first + 1
            declared = _content_length(resp, url)
            if declared is not None and declared != promised:
                raise _Transient(
                    f"{url}: Content-Length {declared} disagrees with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}", kind="bad_range", url=url,
                )
            body = self._read_body(resp, url, promised, ctl, want=promised,
                                   sink=_at_offset(on_data, start, end))
            if len(body) < promised:
                raise _Transient(
                    f"range reply from {url} was cut short ({len(body)} of {promised} bytes)",
                    kind="truncated", url=url,
                )
            return (body if len(body) <= end - start else body[: end - start]), total
        if status == 200:
            if start > 0:
                # The whole file where a range was asked: a server without
                # range support, or a proxy that dropped the header. Either
                # way not the bytes asked for; another attempt may be ranged.
                raise _Transient(
                    f"{url} answered a range request at offset {start} with the whole file "
                    "(200 instead of 206); the server or a proxy on the way does not support ranges",
                    kind="ignored_range", url=url,
                )
            total = _content_length(resp, url)
            self._check_expect(url, expect, total, etag, modified)
            host = urlsplit(url).netloc
            if host not in self._ignores_ranges:
                log.warning("%s ignores Range requests; reads from offset 0 only", host)
                self._ignores_ranges.add(host)
                self.stats.add("ignored_ranges")
            want = end if total is None else min(end, total)
            body = self._read_body(resp, url, want, ctl, want=want,
                                   sink=_at_offset(on_data, 0, want))
            if len(body) < want and total is not None:
                raise _Transient(f"body of {url} was cut short", kind="truncated", url=url)
            if total is None and len(body) < want:
                total = len(body)  # the body ended before `end`: end of file
            return body, total
        raise BadResponse(f"unexpected HTTP {status} to a range request for {url}", url=url, status=status)

    @staticmethod
    def _check_expect(url, expect, total, etag, modified):
        """``_Disagrees`` if the reply is for another version than ``expect``
        (the rule is :meth:`Fingerprint.change_from`); the retry loop turns
        two such replies in a row into ``StaleFile``."""
        if expect is None:
            return
        seen = Fingerprint(expect.size if total is None else total, etag, modified)
        reason = expect.change_from(seen)
        if reason:
            raise _Disagrees(f"{url} changed on the archive ({reason})", url=url,
                             observed=(seen.size, seen.etag, seen.last_modified))


# An entity tag: optional weakness, then a quoted string of visible
# characters without quotes (RFC 9110 section 8.8.3).
_ETAG_RE = re.compile(r'^(W/)?"[\x21\x23-\x7e\x80-\xff]*"$')


def _at_offset(on_data, start, end):
    """A body sink handing ``on_data`` file offsets, clipped to ``[start, end)``."""
    if on_data is None:
        return None

    def sink(offset, chunk):
        first = start + offset
        if first < end:
            on_data(first, chunk[:end - first])
    return sink


def _validators(resp, url) -> tuple:
    """``(etag, last_modified)`` of a reply, each checked for syntax. A
    half-sent or doubled validator (``"e``, ``"a", "b"``) must never become
    a file's version: it is a bad reply, and tried again."""
    etag = resp.headers.get("ETag")
    if etag is not None:
        etag = etag.strip()
        if not _ETAG_RE.match(etag):
            raise _Transient(f"malformed ETag {etag[:80]!r} from {url}", kind="bad_validator", url=url)
    modified = resp.headers.get("Last-Modified")
    if modified is not None and parse_http_date(modified) is None:
        raise _Transient(f"malformed Last-Modified {modified[:80]!r} from {url}",
                         kind="bad_validator", url=url)
    return etag, modified


def _content_range(resp, url):
    """The reply's Content-Range, parsed; a malformed one is a bad reply."""
    try:
        return parse_content_range(resp.headers.get("Content-Range"))
    except BadResponse as exc:
        raise _Transient(f"{exc} from {url}", kind="bad_range", url=url) from exc


def _close_delimited(resp) -> bool:
    """Does the body end only when the server closes the connection (no
    Content-Length, no chunking)? Then a cut body cannot be told from a
    whole one by its framing."""
    if resp.headers.get("Content-Length") is not None:
        return False
    return "chunked" not in resp.headers.get("Transfer-Encoding", "").lower()


def _caused_by(exc, kind) -> bool:
    """Is an exception of type ``kind`` anywhere in ``exc``'s chain (causes,
    contexts, and the ``reason``/``args`` urllib3 and requests wrap in)?"""
    seen, todo = set(), [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return True
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None),
                     *getattr(item, "args", ())])
    return False


def _finish_bodiless(resp) -> None:
    """Mark a reply without a body (HEAD) as read, so that its connection
    goes back to the pool: closed unread, requests closes the socket, and
    every HEAD then paid a new TCP handshake (on a 100 ms link, 3,000 HEADs
    of an ``ls -l`` took 40 s instead of 20)."""
    try:
        resp.raw.read()
    except Exception:  # the connection is then simply not reused
        log.debug("could not finish a bodiless reply", exc_info=True)


def _size_from_probe(resp, url) -> Optional[int]:
    """File size from the reply to ``Range: bytes=0-0`` (body unread)."""
    if resp.status_code in (206, 416) and resp.headers.get("Content-Range"):
        total = _content_range(resp, url)[2]
        if total is not None:
            return total
    if resp.status_code == 416:
        return 0
    if resp.status_code == 200:
        return _content_length(resp, url)
    return None


def _content_length(resp, url) -> Optional[int]:
    """The reply's Content-Length; anything but one decimal number (a cut
    or doubled header) is a bad reply, tried again."""
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise _Transient(f"malformed Content-Length {value[:40]!r} from {url}", kind="bad_length",
                         url=url)
    return int(value)


def _host(url) -> str:
    return urlsplit(url).netloc or url


def _reason(exc) -> str:
    """The innermost useful message of a requests/urllib3 exception chain,
    in plain words: the socket's own error where there is one ("Connection
    refused"), never a class repr such as ``<HTTPConnection(host=...)>``."""
    seen, todo, innermost = set(), [exc], exc
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, socket.gaierror):
            return "the host name cannot be resolved"
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        innermost = item
        todo.extend([getattr(item, "reason", None), *getattr(item, "args", ()),
                     item.__cause__, item.__context__])
    text = _REPR_RE.sub("", str(innermost)).strip() or type(innermost).__name__
    return text if len(text) < 300 else text[:300] + "..."


# "<HTTPConnection(host='x', port=1) at 0x7f..>: " and "HTTPConnectionPool(...): "
_REPR_RE = re.compile(r"<[^<>]*\bat 0x[0-9a-f]+>:?\s*|\w+ConnectionPool\([^)]*\):\s*")
