"""A site cache tier on nginx: the configuration, and a foreground runner.

Many nodes reading the same EMPIAR files should cost the archive one copy.
nginx (Debian's package) does the caching; this module only writes its
configuration from a few validated options (:func:`options`,
:func:`render`) and runs it in the foreground (:func:`run`). Nodes send
the requests they would send to the archive, paths unchanged, to the site
cache instead (the ``site_cache`` setting).

How the configuration keeps its promises
----------------------------------------
* **One origin request per miss.** ``proxy_cache_lock`` collapses
  simultaneous misses of a key onto one upstream request; the others wait
  for it and are served from the cache.
* **Ranges as fixed slices.** The ``slice`` module turns any range request
  into aligned requests of ``slice_size`` (1 MiB: a multiple of empiarfs's
  128 KiB blocks that divides its 8 MiB largest request, so a node's
  requests map onto whole slices), each cached under its own key.
* **Never a mix of versions.** The slice module fails a response whose
  slices carry different ETags (the client sees a cut body and retries).
  Across responses, data is cached in one of two ways:

  - a request naming its version (``If-Match: <ETag>``, which empiarfs
    nodes send when they know the file's ETag) is keyed by that validator,
    cached for ``DATA_TTL``, and a reply of another version is never
    stored under it (``proxy_no_cache``); nginx answers 412 when the
    cached version is not the one asked for. A changed file gets new keys,
    so old and new slices never meet.
  - a request without a version (curl, nodes that know no ETag) is cached
    for the short ``ttl`` and then revalidated with the origin
    (``If-None-Match``; a 304 costs no body), so every slice of a changed
    file turns over within ``ttl``.

  HEADs, listings and API JSON are cached for ``ttl`` only.
* **The cache decides lifetimes, not the origin:** the origin's
  Cache-Control, Expires, Set-Cookie and Vary are ignored, and the origin
  is always asked for identity encoding (nginx compresses JSON and
  listings for the nodes itself).

Imports only config and errors.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from empiarfs.config import DEFAULT_API_URL, DEFAULT_DATA_URL, KiB, MiB, parse_size
from empiarfs.errors import InvalidInput

API_PREFIX = "/empiar/api/"
DATA_PREFIX = "/empiar/world_availability/"
# A file version named by its validator never changes: keep it while it
# is read (LRU under max_size does the rest).
DATA_TTL = 30 * 24 * 3600
NEGATIVE_TTL = 60
DEFAULT_SLICE = 1 * MiB
DEFAULT_TTL = 300
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# nginx: "one megabyte zone can store about 4 thousand keys" (the docs of
# recent versions; older ones say 8 thousand).
KEYS_PER_MIB = 4000
# Room for API records, listings and HEADs besides the data slices.
METADATA_KEYS = 100_000
HEALTH_PATH = "/empiarfs-site-cache"

# Characters that would end or escape a token in nginx's configuration.
_UNSAFE = re.compile(r"[\s;{}\"'$\\#]")
_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.I)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Origin:
    """One upstream server: ``scheme://host:port``."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{_bracket(self.host)}" + ("" if self.port == default else f":{self.port}")

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return _bracket(self.host) + ("" if self.port == default else f":{self.port}")


@dataclass(frozen=True)
class SiteCacheOptions:
    """Everything the nginx configuration is made from (validated)."""

    listen_host: str
    listen_port: int
    cache_dir: str
    max_size: int
    api: Origin
    data: Origin
    slice_size: int = DEFAULT_SLICE
    ttl: int = DEFAULT_TTL
    user: Optional[str] = None
    access_log: Optional[str] = None

    @property
    def url(self) -> str:
        """The URL nodes use (``site_cache = ...``): on every address, this
        host's name."""
        host = self.listen_host
        if host in ("*", "0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{_bracket(host)}:{self.listen_port}"

    @property
    def config_path(self) -> str:
        return os.path.join(self.cache_dir, "nginx.conf")


# --------------------------------------------------------------------------
# Validation


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``0.0.0.0:3128``, ``[::1]:3128``, ``*:3128``) ->
    ``(host, port)``.

    Raises
    ------
    InvalidInput
        If it is not an address and a port.
    """
    value = str(text).strip()
    match = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", value) or re.match(r"^([^:\[\]]+):(\d+)$", value)
    if not match:
        raise InvalidInput(f"--listen wants HOST:PORT (e.g. 0.0.0.0:3128 or [::1]:3128), not {text!r}")
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        raise InvalidInput(f"--listen: port {port} is not in 1-65535")
    if host != "*":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host):
                raise InvalidInput(f"--listen: {host!r} is not an address or host name") from None
    return host, port


def parse_origin(url: str, what: str = "--upstream") -> Origin:
    """``https://host[:port]`` -> :class:`Origin`.

    Raises
    ------
    InvalidInput
        If the URL is not http(s), has no host, or has a path, query,
        user or fragment (the mirror must serve ``/empiar/api/`` and
        ``/empiar/world_availability/`` at its root).
    """
    text = str(url).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{what}: not a URL: {text!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{what} wants http://HOST[:PORT] or https://HOST[:PORT], not {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidInput(
            f"{what}: give the mirror's root URL (it must serve {API_PREFIX} and {DATA_PREFIX}), "
            f"without a path: not {text!r}")
    if _UNSAFE.search(parts.hostname):
        raise InvalidInput(f"{what}: bad host name {parts.hostname!r}")
    default = 443 if parts.scheme == "https" else 80
    return Origin(parts.scheme, parts.hostname, port or default)


def parse_duration(text) -> int:
    """``300``, ``90s``, ``5m``, ``1h``, ``1d`` -> seconds (at least 1).

    Raises
    ------
    InvalidInput
        If it is not a duration.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    else:
        match = _DURATION_RE.match(str(text))
        if not match:
            raise InvalidInput(f"not a duration: {text!r} (examples: 300, 90s, 5m, 1h)")
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if seconds < 1:
        raise InvalidInput(f"a duration must be at least 1 second, not {text!r}")
    return seconds


def options(listen: str, cache_dir: str, max_size, upstream: Optional[str] = None, *,
            slice_size=DEFAULT_SLICE, ttl=DEFAULT_TTL, user: Optional[str] = None,
            access_log: Optional[str] = None) -> SiteCacheOptions:
    """Validated :class:`SiteCacheOptions` from command-line values.

    ``upstream`` ``None`` means the real EMPIAR (its API and data hosts,
    over HTTPS); a URL is a mirror serving both paths.

    Raises
    ------
    InvalidInput
        On any malformed value, with one line saying which and why.
    """
    host, port = parse_listen(listen)
    cache_dir = _safe_path(cache_dir, "--cache-dir")
    size = parse_size(max_size)
    slice_bytes = parse_size(slice_size)
    if slice_bytes < 64 * KiB or slice_bytes > 64 * MiB or slice_bytes & (slice_bytes - 1):
        raise InvalidInput(f"--slice-size must be a power of two from 64K to 64M, not {slice_size}")
    if size < 16 * slice_bytes:
        raise InvalidInput(f"--max-size {max_size} is too small: at least 16 slices "
                           f"({16 * slice_bytes // MiB} MiB), usually hundreds of GB")
    if upstream:
        api = data = parse_origin(upstream)
    else:
        api = parse_origin(_root(DEFAULT_API_URL), "default API URL")
        data = parse_origin(_root(DEFAULT_DATA_URL), "default data URL")
    if user is not None and not re.match(r"^[a-z_][a-z0-9_-]*\$?$", user):
        raise InvalidInput(f"--user: not a user name: {user!r}")
    return SiteCacheOptions(
        listen_host=host, listen_port=port, cache_dir=cache_dir, max_size=size, api=api, data=data,
        slice_size=slice_bytes, ttl=parse_duration(ttl), user=user,
        access_log=_safe_path(access_log, "--access-log") if access_log else None)


def _root(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _safe_path(path, what: str) -> str:
    text = os.fspath(path) if path is not None else ""
    if not text or not os.path.isabs(text):
        raise InvalidInput(f"{what} must be an absolute path, not {text!r}")
    if _UNSAFE.search(text):
        raise InvalidInput(f"{what}: {text!r} has characters nginx's configuration cannot take "
                           "(spaces, quotes, ; {{ }} $ \\ #)")
    return os.path.normpath(text)


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------
# Rendering


def _size(n: int) -> str:
    """nginx's size syntax: ``1m``, ``200g``, or bytes."""
    for suffix, unit in (("g", 1024 * MiB), ("m", MiB), ("k", KiB)):
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def keys_zone_mib(opts: SiteCacheOptions) -> int:
    """Shared memory for the cache's keys: one per slice that fits in
    ``max_size``, a quarter more for partly filled slices at file ends,
    plus metadata keys."""
    keys = opts.max_size // opts.slice_size * 5 // 4 + METADATA_KEYS
    return max(16, math.ceil(keys / KEYS_PER_MIB))


def _upstream_block(name: str, origin: Origin) -> str:
    # max_fails=0: with one server, nginx must never declare it down and
    # answer 502 on its own for fail_timeout (the node fails over anyway).
    return (f"    upstream {name} {{\n"
            f"        server {_bracket(origin.host)}:{origin.port} max_fails=0;\n"
            f"        keepalive 64;\n"
            f"    }}\n")


def _proxy_to(name: str, origin: Origin, indent: str) -> str:
    lines = [f"proxy_pass {origin.scheme}://{name};",
             f"proxy_set_header Host {origin.host_header};"]
    if origin.scheme == "https":
        lines.append(f"proxy_ssl_name {origin.host};")
    # The origin's own redirects stay on the site cache.
    for scheme in ("https", "http"):
        lines.append(f"proxy_redirect {scheme}://{origin.host_header}/ /;")
    return "".join(f"{indent}{line}\n" for line in lines)


def render(opts: SiteCacheOptions) -> str:
    """The complete nginx configuration (``nginx -c`` takes it as is)."""
    d = opts.cache_dir
    ttl = f"{opts.ttl}s"
    neg = f"{min(opts.ttl, NEGATIVE_TTL)}s"
    slice_ = _size(opts.slice_size)
    origins = ", ".join(sorted({opts.api.url, opts.data.url}))
    https = "https" in (opts.api.scheme, opts.data.scheme)
    user = f"user {opts.user};\n" if opts.user else ""
    if opts.access_log:
        access = ("    log_format empiarfs '$remote_addr [$time_local] \"$request\" $status '\n"
                  "                        '$body_bytes_sent $upstream_cache_status $request_time';\n"
                  f"    access_log {opts.access_log} empiarfs;\n")
    else:
        access = "    access_log off;\n"
    tls = (f"        proxy_ssl_server_name on;\n"
           f"        proxy_ssl_verify on;\n"
           f"        proxy_ssl_verify_depth 4;\n"
           f"        proxy_ssl_trusted_certificate {CA_BUNDLE};\n"
           f"        proxy_ssl_session_reuse on;\n") if https else ""
    upstreams = _upstream_block("empiarfs_api", opts.api)
    if opts.data != opts.api:
        upstreams += _upstream_block("empiarfs_data", opts.data)
    data_name = "empiarfs_data" if opts.data != opts.api else "empiarfs_api"
    api_proxy = _proxy_to("empiarfs_api", opts.api, "            ")
    data_proxy = _proxy_to(data_name, opts.data, "            ")
    listing_proxy = _proxy_to(data_name, opts.data, "                ")
    unsliced_416 = ("            proxy_intercept_errors on;\n"
                    "            error_page 416 = @unsliced;\n")
    return f"""\
# empiarfs site cache, written by `empiarfs site-cache`: regenerate it rather
# than edit it. Nodes use it with `site_cache = {opts.url}`.
# Upstream: {origins}. Cache: {d}/cache, at most {_size(opts.max_size)}.
{user}worker_processes auto;
pid {d}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
{access}    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    default_type application/octet-stream;
    # Every temporary file under the cache directory: nothing outside it
    # needs to be writable (nginx can run as an unprivileged user).
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # The origin is asked for identity encoding; JSON and listings (HTML is
    # always in gzip_types) are compressed here for the nodes.
    gzip on;
    gzip_types application/json text/plain text/xml;
    gzip_min_length 1024;

    proxy_cache_path {d}/cache levels=1:2 keys_zone=empiarfs:{keys_zone_mib(opts)}m
                     max_size={_size(opts.max_size)} inactive={DATA_TTL}s use_temp_path=off;

{upstreams}
    # A reply is stored under a version key (the request's If-Match) only
    # when it is that version.
    # volatile: slices are subrequests sharing the request's variables; a
    # cached value would judge every slice by the first one's reply.
    map "$http_if_match|$upstream_http_etag" $empiarfs_other_version {{
        volatile;
        default 1;
        "~^(.+)\\|\\1$" 0;
    }}
    # HEADs are not sliced: asking the origin for a slice of an empty file
    # is a 416, and a HEAD needs no body.
    map $request_method $empiarfs_slice {{
        volatile;
        HEAD "";
        default $slice_range;
    }}

    server {{
        listen {_bracket(opts.listen_host)}:{opts.listen_port};

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Accept-Encoding "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout 10s;
        # Below a node's 10 s stall timeout, so a stalled origin is cut
        # here first and retried, not blamed on the site cache.
        proxy_read_timeout 8s;
        proxy_send_timeout 8s;
{tls}
        proxy_cache empiarfs;
        # Simultaneous misses of one key: one origin request, the others
        # wait. A populating request silent for lock_age gets one more
        # beside it (a stalled origin request); a waiter goes to the
        # origin itself, uncached, after lock_timeout.
        proxy_cache_lock on;
        proxy_cache_lock_age 5s;
        proxy_cache_lock_timeout 8s;
        proxy_cache_revalidate on;
        proxy_cache_use_stale error timeout http_500 http_502 http_503 http_504;
        proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires
                             X-Accel-Redirect X-Accel-Limit-Rate X-Accel-Buffering X-Accel-Charset;
        proxy_hide_header Set-Cookie;
        add_header X-Cache-Status $upstream_cache_status always;

        location = {HEALTH_PATH} {{
            access_log off;
            return 200 "empiarfs site cache\\n";
        }}

        location / {{
            return 404;
        }}

        # API JSON: short-lived. POSTs (batch queries) pass uncached.
        location {API_PREFIX} {{
{api_proxy}            proxy_cache_key "{opts.api.url}|$request_method|$uri|$args";
            proxy_cache_valid 200 301 302 {ttl};
            proxy_cache_valid 404 410 {neg};
        }}

        # Data without a version: short-lived, revalidated slices.
        location {DATA_PREFIX} {{
            # Directory listings: short-lived, never sliced.
            location ~ /$ {{
{listing_proxy}                proxy_cache_key "{opts.data.url}|list|$request_method|$uri|$args";
                proxy_cache_valid 200 301 302 {ttl};
                proxy_cache_valid 404 410 {neg};
            }}

            error_page 418 = @versioned;
            recursive_error_pages on;   # @versioned may go on to @unsliced
            if ($http_if_match) {{
                return 418;
            }}
{data_proxy}{unsliced_416}            slice {slice_};
            proxy_set_header Range $empiarfs_slice;
            proxy_cache_convert_head off;
            proxy_cache_key "{opts.data.url}|$request_method|$uri|$args|$empiarfs_slice";
            proxy_cache_valid 200 206 301 302 {ttl};
            proxy_cache_valid 404 410 {neg};
        }}

        # Data of a named version (If-Match): keyed by it, long-lived.
        location @versioned {{
{data_proxy}{unsliced_416}            slice {slice_};
            proxy_set_header Range $empiarfs_slice;
            proxy_cache_convert_head off;
            proxy_cache_key "{opts.data.url}|$request_method|$uri|$args|$empiarfs_slice|$http_if_match";
            proxy_no_cache $empiarfs_other_version;
            proxy_cache_valid 200 206 {DATA_TTL}s;
            proxy_cache_valid 404 410 {neg};
        }}

        # A first slice the origin calls unsatisfiable: an empty file, or a
        # range past the end. Asked again as the client asked, uncached,
        # so the answer is the origin's own (200 empty, or 416).
        # nginx sends its own 416s here too, with their Content-Range set.
        location @unsliced {{
{data_proxy}            proxy_set_header Range $http_range;
            proxy_hide_header Content-Range;
            proxy_cache off;
        }}
    }}
}}
"""


# --------------------------------------------------------------------------
# Running


def nginx_binary() -> str:
    """Path of Debian's nginx.

    Raises
    ------
    InvalidInput
        If nginx is not installed (with the line that installs it).
    """
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None)
    if not found:
        raise InvalidInput("nginx is not installed; install it with: sudo apt-get install nginx")
    return found


def write_config(opts: SiteCacheOptions) -> str:
    """Create the cache directory and write the configuration in it;
    returns the file's path.

    The directory is made traversable (0755) so nginx's workers, when
    the master runs as root and they run as ``user``, reach the cache
    and temporary directories nginx creates (and chowns) below it.
    """
    # nginx creates (and, as root, chowns) the last level of each path.
    os.makedirs(os.path.join(opts.cache_dir, "tmp"), exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(opts.cache_dir, 0o755)
        os.chmod(os.path.join(opts.cache_dir, "tmp"), 0o755)
    path = opts.config_path
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        handle.write(render(opts))
    os.replace(tmp, path)
    return path


def command(opts: SiteCacheOptions, nginx: Optional[str] = None, *, test: bool = False) -> list[str]:
    """The nginx command line for ``opts`` (``test``: check the file only)."""
    args = [nginx or nginx_binary(), "-e", "stderr", "-p", opts.cache_dir + "/",
            "-c", opts.config_path]
    return args + (["-t", "-q"] if test else ["-g", "daemon off;"])


def check(opts: SiteCacheOptions, nginx: Optional[str] = None) -> None:
    """Write the configuration and have nginx test it.

    Raises
    ------
    InvalidInput
        If nginx rejects it (its own message, one line).
    """
    write_config(opts)
    result = subprocess.run(command(opts, nginx, test=True), capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if "[emerg]" in ln or "[alert]" in ln]
        reason = (lines or result.stderr.strip().splitlines() or ["no output"])[-1]
        raise InvalidInput(f"nginx rejected the configuration: {reason}")


def run(opts: SiteCacheOptions, nginx: Optional[str] = None) -> int:
    """Check the configuration, then run nginx in the foreground until it
    exits; SIGTERM, SIGINT, SIGQUIT and SIGHUP (reload) are passed on to
    it. Returns nginx's exit status.

    Raises
    ------
    InvalidInput
        If nginx is missing or rejects the configuration.
    """
    binary = nginx or nginx_binary()
    check(opts, binary)
    proc = subprocess.Popen(command(opts, binary))
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
                for sig in forwarded}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # pragma: no cover - the handler above takes SIGINT
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # nginx stopped by SIGTERM/SIGQUIT exits 0; a crash is its own status.
    return code if code >= 0 else 128 - code


def describe(opts: SiteCacheOptions) -> str:
    """One line for people: where it listens and what it caches."""
    origins = ", ".join(sorted({opts.api.url, opts.data.url}))
    return (f"empiarfs site cache on {opts.url} for {origins}; cache {opts.cache_dir}/cache "
            f"(at most {_size(opts.max_size)}); nodes: site_cache = {opts.url}")
