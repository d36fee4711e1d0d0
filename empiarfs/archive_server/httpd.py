"""The HTTP side of :class:`ArchiveServer`: routing, static files with
ranges, Apache-style listings, and fault injection.

Static files behave like Apache 2.4 with ``FileETag MTime Size``: ETag
``"<size hex>-<mtime usec hex>"``, ``Last-Modified``, ``Accept-Ranges:
bytes``; ``Range: bytes=a-b | a- | -n`` gives 206 with ``Content-Range``;
an unsatisfiable range gives 416 with ``Content-Range: bytes */size``.
A multi-range request is answered 200 with the whole file (allowed by RFC
7233; Apache would send multipart/byteranges, which no client here uses).
``If-Range`` and ``If-None-Match`` are honoured. Bodies go out with
``sendfile`` unless a fault needs a byte loop.

A reply with a wire fault (a cut or a lie, see :mod:`.faults`) is built
here as bytes -- status line, header block, body -- and written by hand, so
that it can end at any byte, header block included; ``http.server``'s own
``send_response`` path stays the fast path for every other reply.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from empiarfs.archive_server import autoindex
from empiarfs.archive_server.faults import (
    NO_FAULT,
    Decision,
    Reply,
    place_cut,
    tell_lie,
)

log = logging.getLogger(__name__)

API_PREFIX = "/empiar/api"
DATA_PREFIX = "/empiar/world_availability"
_CHUNK = 256 * 1024

_ERROR_PAGE = (
    '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
    "<title>{code} {reason}</title>\n</head><body>\n<h1>{reason}</h1>\n"
    "<p>{text}</p>\n</body></html>\n"
)


def etag_for(st: os.stat_result) -> str:
    """Apache's default ETag for ``FileETag MTime Size``."""
    return f'"{st.st_size:x}-{st.st_mtime_ns // 1000:x}"'


def parse_range(header: str | None, size: int):
    """``Range`` header -> ``None`` (serve whole), ``(start, end)``
    inclusive, or ``"unsatisfiable"``. Malformed or multi-range headers
    are ignored (whole file), as RFC 7233 allows."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or (last and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def __init__(self, address, owner):
        self.owner = owner
        self.connections: set = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address):
        with self.conn_lock:
            self.connections.add(request)
        self.owner.stats.add("connections")  # accepted TCP connections (keep-alive tests)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        # Clients hanging up mid-body are routine here (fault tests, hedged
        # reads); log them at debug level instead of printing tracebacks.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self) -> None:
        """Shut every open client connection (idle keep-alive ones too)."""
        with self.conn_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are closed after this long.
    timeout = 120

    def version_string(self):
        return "Apache"

    # -- plumbing ---------------------------------------------------------

    @property
    def owner(self):
        return self.server.owner

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self):
        self._dispatch(head=False)

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_POST(self):
        self._dispatch(head=False)

    def _send(self, status, ctype=None, body=b"", headers=(), head=False, decision=NO_FAULT):
        if decision.wire:
            fields = ([("Content-Type", ctype)] if ctype else []) + list(headers)
            return self._send_wired(status, fields + [("Content-Length", str(len(body)))],
                                    body, 0 if head else len(body), decision)
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)
            self.owner.stats.add("bytes_sent", len(body))
        self.owner.stats.add(f"status.{status}")

    def _error(self, status, text="", head=False, headers=()):
        reason = self.responses.get(status, ("Error",))[0]
        body = _ERROR_PAGE.format(code=status, reason=reason, text=text or reason).encode()
        self._send(status, "text/html; charset=iso-8859-1", body, headers, head)

    def _wait(self, seconds: float) -> bool:
        """Sleep unless the server stops; False if it is stopping."""
        return not self.owner.stopping.wait(seconds)

    # -- routing ----------------------------------------------------------

    def _dispatch(self, head: bool):
        stats = self.owner.stats
        stats.add("requests")
        raw = self.path.split("?", 1)[0].split("#", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if "\x00" in raw or "%00" in raw:
            stats.add("requests.refused")
            return self._error(400, "Bad request", head)
        if "%2f" in raw.lower() or "%5c" in raw.lower():
            # Apache's AllowEncodedSlashes Off: encoded separators are 404.
            stats.add("requests.refused")
            return self._error(404, "Not Found", head)
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return self._error(400, "Bad request", head)
        segments = path.split("/")
        if any(s in (".", "..") for s in segments) or "\\" in path:
            stats.add("requests.refused")
            return self._error(404, "Not Found", head)
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            return self._api(path[len(API_PREFIX):], body, head)
        if path == DATA_PREFIX or path.startswith(DATA_PREFIX + "/"):
            return self._data(path, head)
        stats.add("requests.other")
        return self._error(404, "The requested URL was not found on this server.", head)

    def _faulted(self, decision: Decision, head: bool) -> bool:
        """Apply latency / stall / error burst; True if the request is done."""
        stats = self.owner.stats
        if decision.latency and not self._wait(decision.latency):
            self.close_connection = True
            return True
        if decision.stall:
            stats.add("faults.stall")
            self._wait(decision.stall)
            self.close_connection = True
            return True
        if decision.error:
            status, retry_after = decision.error
            stats.add("faults.error")
            headers = [("Retry-After", str(retry_after))] if retry_after is not None else []
            self._error(status, "Injected error", head, headers)
            return True
        return False

    def _api(self, rest: str, body: bytes, head: bool):
        stats = self.owner.stats
        stats.add("requests.api")
        if self.command == "POST" and body:
            stats.add("requests.api_batch")
        decision = self.owner.faults.decide("api", is_file=False, reply="text", head=head)
        if decision is not NO_FAULT and self._faulted(decision, head):
            return
        status, ctype, payload = self.owner.api.handle(self.command, rest, body)
        self._send(status, ctype, payload, (("Allow", "GET, POST, HEAD, OPTIONS"),
                                            ("Vary", "Accept")), head, decision)

    def _data(self, path: str, head: bool):
        owner = self.owner
        rel = path[len(DATA_PREFIX):].strip("/")
        full = os.path.join(owner.data_root, *rel.split("/")) if rel else owner.data_root
        real = os.path.realpath(full)
        if real != owner.data_root_real and not real.startswith(owner.data_root_real + os.sep):
            owner.stats.add("requests.refused")
            return self._error(404, "Not Found", head)
        try:
            st = os.stat(real)
        except OSError:
            owner.stats.add("requests.missing")
            decision = owner.faults.decide("data", is_file=False)
            if decision is not NO_FAULT and self._faulted(decision, head):
                return
            return self._error(404, "The requested URL was not found on this server.", head)
        is_dir = os.path.isdir(real)
        if self.command == "POST":
            return self._error(405, "Method Not Allowed", head)
        if is_dir and not path.endswith("/"):
            host = self.headers.get("Host") or f"{owner.host}:{owner.port}"
            location = f"http://{host}{autoindex.escape_path(path)}/"
            owner.stats.add("requests.redirect")
            return self._error(301, f'The document has moved <a href="{location}">here</a>.',
                               head, [("Location", location)])
        ranged = (not is_dir and not head
                  and isinstance(parse_range(self.headers.get("Range"), st.st_size), tuple))
        decision = owner.faults.decide("data", is_file=not is_dir, reply="text" if is_dir else "file",
                                       head=head, ranged=ranged)
        if decision is not NO_FAULT and self._faulted(decision, head):
            return
        if is_dir:
            return self._listing(path, real, head, decision)
        if decision.redirect_to:
            owner.stats.add("faults.redirect")
            location = decision.redirect_to.rstrip("/") + autoindex.escape_path(path)
            return self._error(302, "Found", head, [("Location", location)])
        return self._file(real, st, decision, head)

    # -- listings and files -------------------------------------------------

    def _listing(self, path: str, real: str, head: bool, decision: Decision = NO_FAULT):
        self.owner.stats.add("requests.listing")
        try:
            items = autoindex.scan(real)
        except OSError:
            return self._error(403, "Forbidden", head)
        omitted = self.owner.faults.omitted([i.name for i in items])
        if omitted:
            self.owner.stats.add("faults.omitted", len(omitted))
            items = [i for i in items if i.name not in omitted]
        page = autoindex.render(path, items)
        self._send(200, autoindex.CONTENT_TYPE, page, (), head, decision)

    def _file(self, real: str, st: os.stat_result, decision: Decision, head: bool):
        stats = self.owner.stats
        stats.add("requests.head" if head else "requests.file")
        size = st.st_size
        etag = etag_for(st)
        last_modified = formatdate(st.st_mtime, usegmt=True)
        common = [("Last-Modified", last_modified), ("ETag", etag), ("Accept-Ranges", "bytes")]
        inm = self.headers.get("If-None-Match")
        if inm and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return self._send(304, None, b"", common, head=True)
        rng = None if decision.ignore_range else parse_range(self.headers.get("Range"), size)
        if_range = self.headers.get("If-Range")
        if rng is not None and if_range and if_range.strip() not in (etag, last_modified):
            rng = None  # the client's copy is stale: send the whole new file
        if decision.lie == "whole_200" and isinstance(rng, tuple):
            stats.add("faults.whole_200")
            rng = None
        if rng == "unsatisfiable":
            stats.add("ranges.unsatisfiable")
            return self._error(416, "Requested Range Not Satisfiable", head,
                               [("Content-Range", f"bytes */{size}")])
        ctype = autoindex.content_type(real)
        if rng is None:
            status, start, length, extra = 200, 0, size, []
        else:
            start, end = rng
            status, length = 206, end - start + 1
            shown = (start + 1, end + 1) if decision.wrong_content_range else (start, end)
            if decision.wrong_content_range:
                stats.add("faults.wrong_content_range")
            extra = [("Content-Range", f"bytes {shown[0]}-{shown[1]}/{size}")]
            stats.add("ranges")
        fields = common + extra + [("Content-Length", str(length)), ("Content-Type", ctype)]
        if decision.wire:
            return self._send_wired(status, fields, (real, start), 0 if head else length, decision)
        self.send_response(status)
        for name, value in fields:
            self.send_header(name, value)
        self.end_headers()
        stats.add(f"status.{status}")
        if head or length == 0:
            return
        with open(real, "rb") as fh:
            if decision.plain_body:
                sent = self.connection.sendfile(fh, start, length)
                stats.add("bytes_sent", sent)
            else:
                self._slow_body(fh, start, length, decision)

    def _slow_body(self, fh, start: int, length: int, decision: Decision):
        stats = self.owner.stats
        cut = length // 2 if (decision.truncate or decision.reset) else length
        rate = 1.0 if decision.drip else decision.rate
        chunk = _CHUNK if not rate else max(1, min(_CHUNK, int(rate / 20) or 1))
        if decision.drip:
            stats.add("faults.drip")
        began = time.monotonic()
        sent = 0
        fh.seek(start)
        while sent < cut:
            data = fh.read(min(chunk, cut - sent))
            if not data:
                break
            self.wfile.write(data)
            sent += len(data)
            stats.add("bytes_sent", len(data))
            if decision.drip and not self.owner.faults.drip:
                # Knob switched off mid-body (test teardown): finish at full
                # speed instead of holding the connection for minutes.
                rate, chunk = 0.0, _CHUNK
            if rate:
                ahead = sent / rate - (time.monotonic() - began)
                if ahead > 0 and not self._wait(ahead):
                    break
        if decision.reset:
            stats.add("faults.reset")
            self._reset()
        elif decision.truncate or sent < length:
            stats.add("faults.truncate" if decision.truncate else "aborted")
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send_wired(self, status: int, fields: list, body, length: int, decision: Decision):
        """Write a reply with a wire fault by hand: the lie told, then the
        bytes up to the cut. ``body`` is bytes or ``(path, offset)`` of a
        file; ``length`` is how many body bytes follow the header block."""
        stats = self.owner.stats
        rng = random.Random(decision.wire_seed)
        reason = self.responses.get(status, ("",))[0]
        # Server and Date first, as send_response writes them.
        reply = Reply(status, reason, [("Server", self.version_string()), ("Date", self.date_time_string())]
                      + list(fields), length)
        # whole_200 was told when the file's range was chosen.
        if decision.lie and decision.lie != "whole_200" and tell_lie(reply, decision.lie, rng):
            stats.add(f"faults.{decision.lie}")
        head = reply.head_bytes()
        end, place = len(head) + length, None
        if decision.cut:
            end, place = place_cut(head, length, decision.cut, rng, decision.cut_headers)
            stats.add(f"faults.cut_{place}")
        self.log_request(status)
        stats.add(f"status.{status}")
        self.wfile.write(head[:end])
        self._write_body(body, end - len(head))
        if place is None and not reply.close:
            return
        self.close_connection = True
        if place is not None and decision.cut_reset:
            self._reset()
            return
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_body(self, body, n: int) -> None:
        """The first ``n`` bytes of ``body`` (bytes, or ``(path, offset)``)."""
        if n <= 0:
            return
        if isinstance(body, bytes):
            self.wfile.write(body[:n])
            self.owner.stats.add("bytes_sent", min(n, len(body)))
            return
        path, offset = body
        with open(path, "rb") as fh:
            fh.seek(offset)
            while n > 0:
                data = fh.read(min(_CHUNK, n))
                if not data:
                    break
                self.wfile.write(data)
                self.owner.stats.add("bytes_sent", len(data))
                n -= len(data)

    def _reset(self):
        """Close with SO_LINGER 0 so the peer gets a TCP RST."""
        self.close_connection = True
        conn = self.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket really closes only when its makefile reader is gone.
        self.rfile.close()
        conn.close()


class HttpFrontend:
    """Owns the listening socket and the accept thread."""

    def __init__(self, owner, host: str, port: int):
        self.httpd = _Server((host, port), owner)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="empiarfs-http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.drop_connections()
        self.httpd.server_close()
        self.thread.join(timeout=5)


__all__ = ["HttpFrontend", "etag_for", "parse_range"]
