"""A fault-injecting HTTP proxy on loopback, for the faults the archive
server cannot make itself, plus the read checks the fault tests share.

``FaultProxy(upstream_url)`` listens on ``127.0.0.1`` (real sockets) and
forwards each request to the upstream server on a fresh connection. It
keeps the *client's* connection alive between requests, which is what
makes wire-level lies dangerous: a body longer than its Content-Length
leaves bytes in the socket that a careless client parses as the next
response. Rules, matched in order against the request path, change what
goes back::

    with FaultProxy(server.url) as proxy:
        proxy.add(Rule("extra_bytes", path=r"\\.mrcs$", count=3, extra=b"EVIL"))
        proxy.add(Rule("canned", path=r"/10002/data/$", body=hostile_html))

Actions:

``forward``
    Pass through unchanged (the default when no rule matches).
``canned``
    Answer with ``status``/``headers``/``body`` without asking upstream.
``extra_bytes``
    Append ``extra`` bytes after a body whose headers are unchanged, and
    keep the connection open.
``shift_range``
    Rewrite ``Content-Range: bytes a-b/n`` to ``a+1-b+1/n`` (the body and
    the connection unchanged).
``drip``
    Send the whole response at ``rate`` bytes per second (default 1).
``stall``
    Accept the request and never answer (until the proxy stops).
``cut``
    Send the headers and half the body, then close (clean FIN).
``cut_at``
    Send the upstream reply up to a byte chosen among the places of
    ``where`` that the reply has, then close (clean FIN): ``"status"``
    (inside the status line), ``"header_line"`` (at a line boundary inside
    the header block: no blank line), ``"header_value"`` (inside the value
    of one of ``cut_headers`` -- ETag, Content-Length, Content-Range,
    Last-Modified -- chosen at random among those present),
    ``"after_headers"`` (whole header block, no body), ``"body"`` (inside
    the body). The same places as the archive server's ``cut_where`` knob.
``random_cut``
    Send the upstream reply up to a uniformly random byte of the whole of
    it, headers included, then close; counted also as
    ``random_cut:<place>`` where the byte fell.

Any rule may carry a ``probability``: it then applies to each matching
request with that chance, drawn from the proxy's ``seed`` (the issue's
flaky proxy is ``Rule("stall", probability=1/30)`` and
``Rule("random_cut", probability=1/20)``).

Everything the proxy did is counted in ``proxy.counts`` (action -> n, and
``<action>:<place>`` for cuts); each cut is also logged in ``proxy.events``
(``{"action", "place", "at", "of", "target"}``). Upstream replies are
passed on byte for byte but for the connection header: a body that ends
at the upstream's close (no Content-Length, not chunked) ends the client's
connection too. Stdlib only; the proxy never imports empiarfs.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

_HEAD_LIMIT = 64 * 1024
_UPSTREAM_TIMEOUT = 60.0
#: Where a ``cut_at`` may fall (the archive server's ``cut_where`` places).
CUT_PLACES = ("status", "header_line", "header_value", "after_headers", "body")
#: Headers whose value a ``header_value`` cut may split.
CUT_HEADERS = ("ETag", "Content-Length", "Content-Range", "Last-Modified")


@dataclass
class Rule:
    """One fault: ``action`` applied to requests whose path matches
    ``path`` (a regular expression searched in the request target; ``None``
    matches all), at most ``count`` times (``None``: unlimited), each time
    with chance ``probability`` (``None``: always)."""

    action: str
    path: str | None = None
    count: int | None = None
    status: int = 200
    headers: tuple = ()
    body: bytes = b""
    extra: bytes = b"X" * 4096
    rate: float = 1.0
    method: str | None = None
    where: tuple = CUT_PLACES
    cut_headers: tuple = CUT_HEADERS
    probability: float | None = None
    used: int = field(default=0, compare=False)

    _ACTIONS = ("forward", "canned", "extra_bytes", "shift_range", "drip", "stall", "cut",
                "cut_at", "random_cut")

    def __post_init__(self):
        if self.action not in self._ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {', '.join(self._ACTIONS)}")
        if isinstance(self.where, str):
            self.where = (self.where,)
        if isinstance(self.cut_headers, str):
            self.cut_headers = (self.cut_headers,)
        unknown = set(self.where) - set(CUT_PLACES)
        if unknown:
            raise ValueError(f"unknown cut places {sorted(unknown)}; choose from {', '.join(CUT_PLACES)}")

    def matches(self, method: str, target: str) -> bool:
        if self.count is not None and self.used >= self.count:
            return False
        if self.method and self.method != method:
            return False
        return self.path is None or re.search(self.path, target) is not None


class FaultProxy:
    """HTTP/1.1 proxy ``127.0.0.1:port -> upstream_url`` with fault rules.

    Parameters
    ----------
    upstream_url : str
        ``http://127.0.0.1:PORT`` of the real server (path ignored).
    port : int
        Port to listen on; 0 picks a free one. Restarting a stopped proxy
        on its old port simulates a server coming back.
    seed : int
        Seed of the ``probability`` draws and of the cut positions.

    Raises
    ------
    OSError
        If the port cannot be bound.
    """

    def __init__(self, upstream_url: str, port: int = 0, seed: int = 0):
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rules: list[Rule] = []
        self.counts: Counter = Counter()
        self.events: deque = deque(maxlen=10_000)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set = set()
        self._threads: list = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; join the threads."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close_quietly(conn)
        self._acceptor.join(timeout=5)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, rule: Rule) -> Rule:
        """Append a rule (rules are tried in order); returns it."""
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    # ------------------------------------------------------------ serving
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            conn.settimeout(_UPSTREAM_TIMEOUT)
            while not self._stopping.is_set():
                request, buf = _read_request(conn, buf)
                if request is None:
                    return
                method, target = request.split(b" ", 2)[:2]
                method, target = method.decode("latin-1"), target.decode("latin-1")
                rule = self._pick(method, target)
                if not self._answer(conn, rule, method, request, target):
                    return
                if re.search(rb"\r\nconnection:[ \t]*close", request.split(b"\r\n\r\n")[0], re.I):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            _close_quietly(conn)

    def _pick(self, method: str, target: str) -> Rule:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, target):
                    if rule.probability is not None and self._rng.random() >= rule.probability:
                        continue
                    rule.used += 1
                    self.counts[rule.action] += 1
                    return rule
        return Rule("forward")

    def _answer(self, conn, rule: Rule, method: str, request: bytes, target: str = "") -> bool:
        """Send one response; False if the client connection is done."""
        if rule.action == "stall":
            self._stopping.wait()
            return False
        if rule.action == "canned":
            head = _head(rule.status, list(rule.headers) + [("Content-Length", str(len(rule.body)))])
            conn.sendall(head + (b"" if method == "HEAD" else rule.body))
            return True
        status_line, headers, body, framed = self._upstream(request, method)
        if rule.action == "shift_range":
            headers = [(k, _shift(v) if k.lower() == "content-range" else v) for k, v in headers]
        head = _render(status_line, headers, keep_alive=framed)
        if rule.action == "extra_bytes":
            conn.sendall(head + body + rule.extra)
            return True
        if rule.action == "cut":
            conn.sendall(head + body[: len(body) // 2])
            return False
        if rule.action in ("cut_at", "random_cut"):
            with self._lock:
                if rule.action == "cut_at":
                    at, place = cut_offset(head, len(body), rule.where, rule.cut_headers, self._rng)
                else:
                    at = self._rng.randrange(len(head) + len(body))
                    place = where_is(head, at)
                self.counts[f"{rule.action}:{place}"] += 1
                self.events.append({"action": rule.action, "place": place, "at": at,
                                    "of": len(head) + len(body), "target": target})
            conn.sendall((head + body)[:at])
            return False
        if rule.action == "drip":
            for byte in head + body:
                if self._stopping.wait(1.0 / rule.rate):
                    return False
                conn.sendall(bytes([byte]))
            return framed
        conn.sendall(head + body)
        return framed

    def _upstream(self, request: bytes, method: str):
        """Ask upstream on a fresh connection; returns ``(status line,
        headers, body, framed)``, ``framed`` False when the body ends only
        at the upstream's close (no Content-Length, not chunked)."""
        head, _, rest = request.partition(b"\r\n\r\n")
        lines = [ln for ln in head.split(b"\r\n")
                 if not ln.lower().startswith((b"connection:", b"keep-alive:"))]
        lines.append(b"Connection: close")
        with socket.create_connection(self.upstream, timeout=_UPSTREAM_TIMEOUT) as up:
            up.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + rest)
            chunks = []
            while True:
                try:
                    data = up.recv(1 << 16)
                except OSError:  # upstream reset: pass on what we have
                    break
                if not data:
                    break
                chunks.append(data)
        raw = b"".join(chunks)
        rhead, _, body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = rhead.decode("latin-1").split("\r\n")
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            status_line = "HTTP/1.1 502 Bad Gateway"
        headers = []
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.lower() not in ("connection", "keep-alive"):
                headers.append((name.strip(), value.strip()))
        names = {k.lower() for k, _ in headers}
        status = int(status_line.split()[1])
        framed = (method == "HEAD" or status in (204, 304) or status < 200
                  or "content-length" in names or "transfer-encoding" in names)
        if method == "HEAD":
            body = b""
        return status_line, headers, body, framed


def _read_request(conn, buf: bytes):
    """One request (head + body) from ``conn``; ``(None, b"")`` at EOF."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > _HEAD_LIMIT:
            return None, b""
        data = conn.recv(1 << 16)
        if not data:
            return None, b""
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    while len(rest) < length:
        data = conn.recv(1 << 16)
        if not data:
            return None, b""
        rest += data
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def _head(status: int, headers) -> bytes:
    return _render(f"HTTP/1.1 {status} X", headers)


def _render(status_line: str, headers, keep_alive: bool = True) -> bytes:
    lines = [status_line] + [f"{k}: {v}" for k, v in headers]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _layout(head: bytes, cut_headers=CUT_HEADERS):
    """Line boundaries of ``head`` (after each CRLF but the blank line's)
    and the ``(start, end)`` spans of the values of ``cut_headers``."""
    wanted = {h.lower() for h in cut_headers}
    bounds, values, pos = [], [], 0
    for i, line in enumerate(head.split(b"\r\n")[:-2]):
        if i:
            name, _, value = line.partition(b":")
            if name.strip().decode("latin-1").lower() in wanted:
                start = pos + len(name) + 1 + (len(value) - len(value.lstrip()))
                values.append((start, pos + len(line.rstrip())))
        pos += len(line) + 2
        bounds.append(pos)
    return bounds, values


def cut_offset(head: bytes, length: int, where, cut_headers, rng) -> tuple[int, str]:
    """Where a ``cut_at`` ends a reply (``head`` then ``length`` body
    bytes): ``(offset, place)``, the place drawn among ``where`` that the
    reply has. A reply with none of them is cut at a header line."""
    bounds, values = _layout(head, cut_headers)
    status_len = head.index(b"\r\n")
    have = {"status", "header_line"}
    if values:
        have.add("header_value")
    if length >= 1:
        have.add("after_headers")
    if length >= 2:
        have.add("body")
    choices = [p for p in CUT_PLACES if p in where and p in have] or ["header_line"]
    place = rng.choice(choices)
    if place == "status":
        return rng.randint(1, status_len + 1), place
    if place == "header_value":
        start, end = rng.choice(values)
        return (start + rng.randint(1, end - start - 1) if end - start >= 2 else end), place
    if place == "after_headers":
        return len(head), place
    if place == "body":
        return len(head) + rng.randint(1, length - 1), place
    return rng.choice(bounds), place


def where_is(head: bytes, at: int, cut_headers=CUT_HEADERS) -> str:
    """Which place a cut at byte ``at`` (of head + body) falls in: a place
    of :data:`CUT_PLACES`, or ``"header"`` (elsewhere inside a header line)."""
    bounds, values = _layout(head, cut_headers)
    if at <= head.index(b"\r\n") + 1:
        return "status"
    if at in bounds:
        return "header_line"
    if any(start < at <= end for start, end in values):
        return "header_value"
    if at < len(head):
        return "header"
    return "after_headers" if at == len(head) else "body"


def _shift(value: str) -> str:
    match = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\S+)", value)
    if not match:
        return value
    first, last, total = match.groups()
    return f"bytes {int(first) + 1}-{int(last) + 1}/{total}"


def _close_quietly(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def refused_url() -> str:
    """``http://127.0.0.1:PORT`` where nothing listens (connections are
    refused): a port just bound and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --------------------------------------------------------------------------
# Read checks shared by the fault tests and scripts/soak


#: errnos a failed read may report: I/O error, stale file, timeout.
CLEAR_ERRNOS = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT}


@dataclass
class ReadOutcome:
    """What one checked read of a whole file did."""

    path: str
    ok: bool                 # every byte read, and all equal to the truth
    wrong_bytes: int         # bytes returned that differ from the truth
    verified: int            # bytes returned and found equal to the truth
    errno: int | None        # errno of the failing read() call, if any
    slowest_call: float      # longest single read() call, seconds
    elapsed: float

    @property
    def clean(self) -> bool:
        """Correct, or failed with a clear errno and no wrong byte."""
        return self.wrong_bytes == 0 and (self.ok or self.errno in CLEAR_ERRNOS)


def check_read(path, truth: bytes, chunk: int = 1 << 20, offset: int = 0) -> ReadOutcome:
    """Read ``path`` from ``offset`` to its end with ordinary ``os.read``
    calls and compare every byte returned with ``truth`` (the whole file).

    A failing call ends the read: its errno is recorded, the bytes returned
    before it are still checked.
    """
    began = time.monotonic()
    slowest = 0.0
    got = 0
    wrong = 0
    code = None
    fd = None
    try:
        fd = os.open(path, os.O_RDONLY)
        pos = offset
        while True:
            t0 = time.monotonic()
            try:
                data = os.pread(fd, chunk, pos)
            finally:
                slowest = max(slowest, time.monotonic() - t0)
            if not data:
                break
            want = truth[pos:pos + len(data)]
            if data != want:
                wrong += sum(1 for a, b in zip(data, want) if a != b) + abs(len(data) - len(want))
            else:
                got += len(data)
            pos += len(data)
    except OSError as exc:
        code = exc.errno
    finally:
        if fd is not None:
            os.close(fd)
    complete = code is None and offset + got == len(truth) and wrong == 0
    return ReadOutcome(str(path), complete, wrong, got, code, slowest, time.monotonic() - began)


def read_in_thread(func, *args, limit: float):
    """Run ``func(*args)`` on a daemon thread; its result, or raise
    ``TimeoutError`` if it takes longer than ``limit`` seconds (a hung
    read must fail the test, not hang the suite)."""
    box: dict = {}

    def run():
        try:
            box["value"] = func(*args)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(func, '__name__', func)}{args[:1]} still running after {limit:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Load: many readers, every byte checked, the daemon's memory and fds sampled


def daemon_pid(cache_dir) -> int:
    """PID of the daemon owning ``cache_dir`` (its disk cache lock file)."""
    with open(os.path.join(cache_dir, "blocks", "lock")) as fh:
        return int(fh.read().strip())


def proc_sample(pid: int) -> tuple[int, int]:
    """``(VmRSS in KiB, open file descriptors)`` of a live process."""
    rss = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class LoadResult:
    """Totals of one :func:`run_load`."""

    reads: int = 0
    whole: int = 0
    failed_clean: int = 0
    unclear: int = 0               # failed with an errno other than EIO/ESTALE/ETIMEDOUT
    wrong_bytes: int = 0
    bytes_verified: int = 0
    late_calls: int = 0            # read() calls slower than the bound
    slowest_call: float = 0.0
    slowest_at: float = 0.0        # seconds into the load when that call ended
    slowest_path: str = ""
    errnos: Counter = field(default_factory=Counter)
    peak_rss_kib: int = 0
    peak_fds: int = 0
    daemon_alive: bool = True


def run_load(mnt, truths: dict, *, readers: int, seconds: float, pid: int, bound: float,
             seed: int = 0, on_tick=None) -> LoadResult:
    """``readers`` threads read random whole files of ``truths`` (mount-
    relative key -> bytes) for ``seconds``, checking every byte; the
    daemon ``pid`` is sampled every 0.2 s. ``on_tick(elapsed)`` runs on
    the sampling thread (e.g. to inject error bursts)."""
    import random

    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()
    keys = sorted(truths)
    began = time.monotonic()

    def reader(n):
        rng = random.Random(seed * 1000 + n)
        while not stop.is_set():
            key = rng.choice(keys)
            out = check_read(os.path.join(mnt, key), truths[key], chunk=rng.choice((65536, 1 << 20)))
            with lock:
                result.reads += 1
                result.whole += out.ok
                result.wrong_bytes += out.wrong_bytes
                result.bytes_verified += out.verified
                if out.slowest_call > result.slowest_call:
                    result.slowest_call = out.slowest_call
                    result.slowest_at = time.monotonic() - began
                    result.slowest_path = key
                result.late_calls += out.slowest_call > bound
                if not out.ok:
                    result.errnos[errno.errorcode.get(out.errno, str(out.errno))] += 1
                    if out.errno in CLEAR_ERRNOS:
                        result.failed_clean += 1
                    else:
                        result.unclear += 1

    def sampler():
        began = time.monotonic()
        while not stop.wait(0.2):
            try:
                rss, fds = proc_sample(pid)
            except OSError:
                result.daemon_alive = False
                return
            result.peak_rss_kib = max(result.peak_rss_kib, rss)
            result.peak_fds = max(result.peak_fds, fds)
            if on_tick is not None:
                on_tick(time.monotonic() - began)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(readers)]
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(3 * bound)
    watcher.join(5)
    result.daemon_alive = result.daemon_alive and os.path.exists(f"/proc/{pid}")
    return result
