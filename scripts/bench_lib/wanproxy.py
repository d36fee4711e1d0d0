"""A TCP-level model of a long-distance network, as a proxy on loopback.

The ``wan`` profile slows replies down inside the archive server (a flat
rate per connection and a fixed delay per request). That is not how a long
path behaves: TCP sends a window of bytes per round trip, the window starts
small on every new connection and after every idle spell (slow start), and
a connection costs a round trip before its first request. Clients that reuse
warm connections, or open many, win on a real network and not on the flat
model. This proxy models the path instead, per client connection:

* **RTT.** Every byte takes half the RTT each way: a request reaches the
  server RTT/2 after the client sent it, a window of reply bytes reaches the
  client RTT/2 after it left. A new connection first pays one RTT for the
  handshake (the kernel accepted it on loopback at once).
* **Window.** At most ``cwnd`` reply bytes are in flight (sent, not yet
  acknowledged; a byte is acknowledged one RTT after it was sent). ``cwnd``
  starts at ``initial_window`` (10 x 1460 B, RFC 6928) and grows by the
  bytes acknowledged (doubling per RTT: slow start) up to ``window``
  (150 KB: with a 100 ms RTT, 1.5 MB/s per connection, what EMPIAR gives).
* **Slow-start restart** (RFC 5681 section 4.1): a connection that sent
  nothing for longer than the retransmission timeout starts again from
  ``min(cwnd, initial_window)``. The timeout is Linux's, RTT + 200 ms,
  unless ``restart_after`` says otherwise.
* **Never answered.** Each request is, with probability ``stall``, accepted
  and never forwarded: the connection then stays open and silent until the
  client closes it (EMPIAR does this to about 1 request in 30).

Requests (client to server) are small and get only the delay. The proxy
parses just enough HTTP/1.1 to see where requests and replies end
(Content-Length, chunked, HEAD, 204/304, close-delimited): that is how it
counts requests in flight per listener (one listener per host, e.g. the API
host and the data host). Request bodies must carry a Content-Length.
Upstream connections are opened on demand and re-opened when the server
closes an idle one, so a client's keep-alive connection outlives them.

Run as a child process (:class:`procs.WanProxyProcess`) it prints one JSON
line with a URL per listener, then answers one JSON line per command read
from stdin: ``stats``, ``reset``, ``set k=v [k=v...]`` (``rtt``, ``window``,
``initial_window``, ``stall``, ``restart_after``), ``quit``. Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import threading
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

_HEAD_LIMIT = 64 * 1024
_READ = 64 * 1024
# Reply bytes the proxy holds per connection before it stops reading the
# server: enough to fill any window, little enough for many connections.
_BUFFER = 1 << 20


@dataclass
class Model:
    """The path's parameters (seconds and bytes)."""

    rtt: float = 0.1
    window: int = 150_000
    initial_window: int = 10 * 1460
    stall: float = 1 / 30
    restart_after: float | None = None   # None: rtt + 0.2 s (Linux's minimum RTO)
    seed: int = 0

    @property
    def rto(self) -> float:
        return self.restart_after if self.restart_after is not None else self.rtt + 0.2


class Counters:
    """Per-listener counts, in the archive server's names where they overlap."""

    KEYS = ("requests", "requests.file", "requests.head", "requests.listing", "requests.api",
            "requests.other", "bytes_sent", "faults.stall", "connections")

    def __init__(self):
        self.values = {k: 0 for k in self.KEYS}
        self.in_flight = 0
        self.max_in_flight = 0
        self.open = 0
        self.max_open = 0

    def add(self, key: str, n: int = 1) -> None:
        self.values[key] = self.values.get(key, 0) + n

    def started(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def finished(self, n: int = 1) -> None:
        self.in_flight -= n

    def opened(self) -> None:
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self.add("connections")

    def closed(self) -> None:
        self.open -= 1

    def reset(self) -> None:
        self.values = {k: 0 for k in self.KEYS}
        self.max_in_flight = self.in_flight
        self.max_open = self.open

    def snapshot(self) -> dict:
        return dict(self.values, in_flight=self.in_flight, max_in_flight=self.max_in_flight,
                    open_connections=self.open, max_connections=self.max_open)


class ReplyFramer:
    """Finds where each reply ends in a byte stream, given the methods of the
    requests it answers (in order). ``feed(data)`` returns how many replies
    ended in ``data``; ``until_close`` is set when a reply has no length."""

    def __init__(self):
        self.methods: collections.deque[str] = collections.deque()
        self.state = "head"
        self.head = bytearray()
        self.left = 0            # body bytes left ("body") or chunk bytes left ("chunk")
        self.line = bytearray()  # a chunk-size or trailer line being read
        self.until_close = False

    def feed(self, data: bytes) -> int:
        done = 0
        i = 0
        n = len(data)
        while i < n and not self.until_close:
            if self.state == "head":
                self.head += data[i:]
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.head) > _HEAD_LIMIT:
                        self.until_close = True
                    return done
                used = end + 4 - (len(self.head) - (n - i))
                head = bytes(self.head[:end + 4])
                self.head.clear()
                i += used
                if self._start(head):
                    done += 1
            elif self.state == "body":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "head"
                    done += 1
            elif self.state == "chunk":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "chunk_crlf"
                    self.left = 2
            elif self.state == "chunk_crlf":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "size"
            else:  # "size" or "trailer": lines
                nl = data.find(b"\n", i)
                if nl < 0:
                    self.line += data[i:]
                    return done
                self.line += data[i:nl + 1]
                i = nl + 1
                text = bytes(self.line).strip()
                self.line.clear()
                if self.state == "size":
                    try:
                        size = int(text.split(b";")[0], 16)
                    except ValueError:
                        self.until_close = True
                        return done
                    if size:
                        self.state, self.left = "chunk", size
                    else:
                        self.state = "trailer"
                elif not text:  # the blank line after the last chunk's trailers
                    self.state = "head"
                    done += 1
        return done

    def _start(self, head: bytes) -> bool:
        """A reply's header block arrived; True if the reply is already whole."""
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            self.until_close = True
            return False
        if 100 <= status < 200:
            return False  # interim; the real reply follows
        method = self.methods.popleft() if self.methods else "GET"
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if method == "HEAD" or status in (204, 304):
            return True
        if "chunked" in fields.get("transfer-encoding", "").lower():
            self.state = "size"
            return False
        if "content-length" in fields:
            try:
                self.left = int(fields["content-length"])
            except ValueError:
                self.until_close = True
                return False
            if not self.left:
                return True
            self.state = "body"
            return False
        self.until_close = True
        return False


def _request_kind(listener: str, method: str, target: str) -> str:
    if listener == "api":
        return "requests.api"
    path = target.split("?", 1)[0]
    if method == "HEAD":
        return "requests.head"
    if method == "GET":
        return "requests.listing" if path.endswith("/") else "requests.file"
    return "requests.other"


class _Connection:
    """One client connection and the path it crosses."""

    def __init__(self, proxy: WanProxy, name: str, reader, writer):
        self.proxy, self.name = proxy, name
        self.model = proxy.model
        self.counters = proxy.counters[name]
        self.upstream = proxy.upstreams[name]
        self.reader, self.writer = reader, writer
        self.loop = asyncio.get_running_loop()
        self.accepted = self.loop.time()
        self.framer = ReplyFramer()
        self.stalled = False
        self.up_writer = None
        self.up_reader_task = None
        self.to_server: asyncio.Queue = asyncio.Queue()
        self.to_client: asyncio.Queue = asyncio.Queue()
        self.buffer = bytearray()       # reply bytes read from the server, not yet sent
        self.have_data = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.up_eof = False
        self.close_after_reply = False
        self.cwnd = self.model.initial_window
        self.unacked: collections.deque = collections.deque()   # (ack time, bytes)
        self.in_flight_bytes = 0
        self.last_send = None
        self.next_forward = 0.0
        self.started = 0                 # requests counted in flight, not yet finished

    # -------------------------------------------------------------- client side
    async def run(self) -> None:
        self.counters.opened()
        tasks = [asyncio.ensure_future(c) for c in
                 (self._send_to_server(), self._window_pump(), self._deliver())]
        try:
            await self._read_requests()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for t in tasks + ([self.up_reader_task] if self.up_reader_task else []):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.up_reader_task:
                await asyncio.gather(self.up_reader_task, return_exceptions=True)
            for w in (self.writer, self.up_writer):
                if w is not None:
                    w.close()
            self.counters.finished(self.started)
            self.counters.closed()

    async def _read_requests(self) -> None:
        buf = bytearray()
        body_left = 0
        while True:
            data = await self.reader.read(_READ)
            if not data:
                return
            if self.stalled:
                continue  # held: nothing more goes anywhere until the client gives up
            buf += data
            while buf and not self.stalled:
                if body_left:
                    take = min(body_left, len(buf))
                    self._forward(bytes(buf[:take]))
                    del buf[:take]
                    body_left -= take
                    continue
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > _HEAD_LIMIT:
                        return
                    break
                head = bytes(buf[:end + 4])
                del buf[:end + 4]
                method, target, length = _parse_request(head)
                self.counters.add("requests")
                self.counters.add(_request_kind(self.name, method, target))
                self.counters.started()
                self.started += 1
                if self.proxy.rng.random() < self.model.stall:
                    self.counters.add("faults.stall")
                    self.stalled = True
                    break
                if self.up_writer is None or self.up_eof:
                    await self._open_upstream()
                self.framer.methods.append(method)
                self._forward(head)
                body_left = length

    def _forward(self, data: bytes) -> None:
        now = self.loop.time()
        # The handshake: the client could not have sent before one RTT.
        sent = max(now, self.accepted + self.model.rtt)
        at = max(sent + self.model.rtt / 2, self.next_forward)
        self.next_forward = at
        self.to_server.put_nowait((at, data))

    async def _open_upstream(self) -> None:
        if self.up_reader_task is not None:
            self.up_reader_task.cancel()
        if self.up_writer is not None:
            self.up_writer.close()
        host, port = self.upstream
        reader, self.up_writer = await asyncio.open_connection(host, port)
        self.up_eof = False
        self.up_reader_task = asyncio.ensure_future(self._read_server(reader, self.up_writer))

    async def _send_to_server(self) -> None:
        while True:
            at, data = await self.to_server.get()
            await _sleep_until(self.loop, at)
            writer = self.up_writer
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the reader sees the close

    # -------------------------------------------------------------- server side
    async def _read_server(self, reader, writer) -> None:
        while True:
            await self.room.wait()
            try:
                data = await reader.read(_READ)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                if writer is self.up_writer:
                    self.up_eof = True
                    if self.framer.until_close or self.framer.methods:
                        # A close-delimited reply ended, or the server hung up
                        # on a request: the client's connection ends too.
                        self.close_after_reply = True
                    self.have_data.set()
                return
            self.buffer += data
            self.have_data.set()
            if len(self.buffer) >= _BUFFER:
                self.room.clear()

    def _ack(self, now: float) -> None:
        while self.unacked and self.unacked[0][0] <= now:
            _, n = self.unacked.popleft()
            self.in_flight_bytes -= n
            self.cwnd = min(self.model.window, self.cwnd + n)

    async def _window_pump(self) -> None:
        while True:
            if not self.buffer:
                if self.close_after_reply and not self.stalled:
                    self.to_client.put_nowait((self.loop.time() + self.model.rtt / 2, None))
                    return
                self.have_data.clear()
                await self.have_data.wait()
                continue
            now = self.loop.time()
            self._ack(now)
            if self.last_send is not None and not self.in_flight_bytes \
                    and now - self.last_send > self.model.rto:
                self.cwnd = min(self.cwnd, self.model.initial_window)   # slow-start restart
            room = self.cwnd - self.in_flight_bytes
            if room <= 0:
                await _sleep_until(self.loop, self.unacked[0][0])
                continue
            chunk = bytes(self.buffer[:room])
            del self.buffer[:room]
            if len(self.buffer) < _BUFFER:
                self.room.set()
            self.unacked.append((now + self.model.rtt, len(chunk)))
            self.in_flight_bytes += len(chunk)
            self.last_send = now
            self.to_client.put_nowait((now + self.model.rtt / 2, chunk))

    async def _deliver(self) -> None:
        while True:
            at, data = await self.to_client.get()
            await _sleep_until(self.loop, at)
            if data is None:
                self.writer.close()
                return
            self.writer.write(data)
            self.counters.add("bytes_sent", len(data))
            ended = self.framer.feed(data)
            if ended:
                self.counters.finished(ended)
                self.started -= ended
            await self.writer.drain()


def _parse_request(head: bytes) -> tuple[str, str, int]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    method = parts[0] if parts else ""
    target = parts[1] if len(parts) > 1 else "/"
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                length = 0
    return method, target, length


async def _sleep_until(loop, at: float) -> None:
    delay = at - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


class WanProxy:
    """Listeners on 127.0.0.1, one per upstream (``{name: "http://host:port"}``),
    each applying :class:`Model` to every connection. Runs its own event loop
    in a thread; ``urls`` maps each name to the listener's base URL."""

    def __init__(self, upstreams: dict[str, str], model: Model | None = None):
        self.model = model or Model()
        self.rng = random.Random(self.model.seed)
        self.upstreams = {}
        for name, url in upstreams.items():
            parts = urlsplit(url)
            self.upstreams[name] = (parts.hostname, parts.port or 80)
        self.counters = {name: Counters() for name in upstreams}
        self.urls: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wanproxy",
                                        daemon=True)
        self._servers = []

    def start(self) -> WanProxy:
        self._thread.start()
        for name in self.upstreams:
            server = self._call(self._listen(name))
            self._servers.append(server)
            port = server.sockets[0].getsockname()[1]
            self.urls[name] = f"http://127.0.0.1:{port}"
        return self

    async def _listen(self, name: str):
        async def handle(reader, writer):
            try:
                await _Connection(self, name, reader, writer).run()
            except asyncio.CancelledError:
                pass  # the proxy is stopping; asyncio would log it as an error
        return await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def stats(self) -> dict:
        async def snap():
            return {name: c.snapshot() for name, c in self.counters.items()}
        return self._call(snap())

    def reset(self) -> None:
        async def reset():
            for c in self.counters.values():
                c.reset()
        self._call(reset())

    def set(self, **knobs) -> dict:
        async def apply():
            for key, value in knobs.items():
                if not hasattr(self.model, key) or key == "seed":
                    raise ValueError(f"unknown knob {key!r}")
                setattr(self.model, key, type_of(key)(value))
            return asdict(self.model)
        return self._call(apply())

    def stop(self) -> None:
        async def close():
            for server in self._servers:
                server.close()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._thread.is_alive():
            self._call(close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> WanProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def type_of(knob: str):
    return int if knob in ("window", "initial_window") else float


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", action="append", required=True, metavar="NAME=URL",
                        help="a listener forwarding to URL (repeat: one per host)")
    parser.add_argument("--rtt", type=float, default=Model.rtt)
    parser.add_argument("--window", type=int, default=Model.window)
    parser.add_argument("--initial-window", type=int, default=Model.initial_window)
    parser.add_argument("--stall", type=float, default=Model.stall)
    parser.add_argument("--restart-after", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    upstreams = dict(u.split("=", 1) for u in args.upstream)
    model = Model(rtt=args.rtt, window=args.window, initial_window=args.initial_window,
                  stall=args.stall, restart_after=args.restart_after, seed=args.seed)
    with WanProxy(upstreams, model) as proxy:
        _say(proxy.urls)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "stats":
                _say(proxy.stats())
            elif words[0] == "reset":
                proxy.reset()
                _say({})
            elif words[0] == "set":
                try:
                    _say(proxy.set(**dict(w.split("=", 1) for w in words[1:])))
                except ValueError as exc:
                    _say({"error": str(exc)})
            elif words[0] == "quit":
                break
            else:
                _say({"error": f"unknown command {words[0]!r}"})
    return 0


def _say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
