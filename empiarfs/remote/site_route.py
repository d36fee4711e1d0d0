"""Which host an archive request goes to: the site cache, or the origin.

A node with ``site_cache = http://host:port`` sends the requests it would
send to the archive (API and data, paths unchanged) to the site cache
instead. When the site cache fails -- the connection is refused, reset or
cut, or no byte arrives for the stall timeout -- the node uses the origin
for a back-off period (2 s, doubling to 60 s while failures go on), then
lets one request probe the site cache again; when that request succeeds,
traffic returns to the site cache.

An HTTP error status from the site cache is not a failure of the site
cache: it answered, and passes on what the origin said (a 502/504 means
the origin failed behind it, which the origin will not do better).

Pure logic: no sockets, no threads of its own; the transport asks
:meth:`SiteRoute.route` before each attempt and reports how it went with
:meth:`SiteRoute.report`. Imports nothing internal.

Threading: one lock guards the state and counters; it is a leaf (no call
out of this module while holding it, logging aside).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

RETRY_AFTER = 2.0
RETRY_MAX = 60.0


@dataclass(frozen=True)
class Route:
    """Where one attempt goes.

    ``url`` is the URL to request; ``origin_url`` the archive's own;
    ``via_site`` whether ``url`` is on the site cache; ``epoch`` the
    router's failure count when the route was chosen (a report from an
    attempt older than the last failure cannot declare a recovery).
    """

    url: str
    origin_url: str
    via_site: bool
    probe: bool = False
    epoch: int = 0


class SiteRoute:
    """Maps archive URLs onto a site cache and tracks the site cache's health.

    Parameters
    ----------
    site_url : str
        ``http://host:port`` of the site cache (no path).
    origins : iterable of str
        Base URLs whose requests go to the site cache (``api_url``,
        ``data_url``); other URLs (FTP, redirect targets elsewhere) always
        go to their own host.
    retry_after, retry_max : float
        First and longest back-off, in seconds, before the site cache is
        tried again after a failure.
    clock : callable
        Monotonic seconds (tests pass their own).
    """

    def __init__(self, site_url: str, origins: Iterable[str], *, retry_after: float = RETRY_AFTER,
                 retry_max: float = RETRY_MAX, clock: Callable[[], float] = time.monotonic):
        parts = urlsplit(site_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"site cache URL must be http(s)://host:port, not {site_url!r}")
        self.site_url = f"{parts.scheme}://{parts.netloc}"
        self.site_host = (parts.hostname or "").lower()
        # Longest first, so a prefix inside another maps by the longer one.
        self._origins = sorted({o.rstrip("/") for o in origins if o and o.startswith("http")},
                               key=len, reverse=True)
        self._retry_after = max(0.0, float(retry_after))
        self._retry_max = max(self._retry_after, float(retry_max))
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: Optional[float] = None   # None: up
        self._backoff = self._retry_after
        self._probing = False
        self._probe_since = 0.0
        self._epoch = 0
        self._last_failure = ""
        self._counts = {"via_site": 0, "via_origin": 0, "failovers": 0, "recoveries": 0,
                        "site_failures": 0}

    # ------------------------------------------------------------- mapping

    def site_url_for(self, url: str) -> Optional[str]:
        """The same request on the site cache (same path and query), or
        ``None`` if ``url`` is not under one of the origins."""
        for origin in self._origins:
            if url == origin or url.startswith(origin + "/") or url.startswith(origin + "?"):
                parts = urlsplit(url)
                query = f"?{parts.query}" if parts.query else ""
                return f"{self.site_url}{parts.path or '/'}{query}"
        return None

    def origin_url_for(self, url: str) -> Optional[str]:
        """The archive's URL for a URL on the site cache (the origin whose
        path the URL's path continues), or ``None``."""
        if not url.startswith(self.site_url + "/"):
            return None
        rest = url[len(self.site_url):]
        for origin in self._origins:
            path = urlsplit(origin).path
            if rest == path or rest.startswith(path + "/") or rest.startswith(path + "?"):
                return origin[: len(origin) - len(path)] + rest
        return None

    # -------------------------------------------------------------- routing

    def route(self, url: str) -> Route:
        """Where the next attempt of a request for ``url`` goes."""
        site = self.site_url_for(url)
        if site is None:
            return Route(url, url, False)
        with self._lock:
            now = self._clock()
            if self._down_until is None:
                self._counts["via_site"] += 1
                return Route(site, url, True, epoch=self._epoch)
            # A probe never reported (its caller died) stops blocking
            # others after the longest back-off.
            if now >= self._down_until and (
                    not self._probing or now - self._probe_since > self._retry_max):
                self._probing, self._probe_since = True, now
                self._counts["via_site"] += 1
                return Route(site, url, True, probe=True, epoch=self._epoch)
            self._counts["via_origin"] += 1
            return Route(url, url, False, epoch=self._epoch)

    def report(self, route: Route, ok: bool, reason: str = "") -> None:
        """How an attempt on ``route`` went. ``ok`` is false only when the
        site cache itself failed (refused, reset, cut, stalled)."""
        if not route.via_site:
            return
        with self._lock:
            if ok:
                if self._down_until is not None and route.probe:
                    self._down_until = None
                    self._backoff = self._retry_after
                    self._probing = False
                    self._counts["recoveries"] += 1
                    log.warning("site cache %s answers again; using it", self.site_url)
                return
            self._counts["site_failures"] += 1
            self._last_failure = reason
            if route.probe:
                self._probing = False
            elif route.epoch != self._epoch:
                return   # started before the failure already counted
            was_up = self._down_until is None
            self._epoch += 1
            wait = self._backoff
            self._down_until = self._clock() + wait
            self._backoff = min(self._retry_max, self._backoff * 2)
            if was_up:
                self._counts["failovers"] += 1
                log.warning("site cache %s failed (%s); using the archive directly, "
                            "trying the site cache again in %.0f s", self.site_url,
                            reason or "no reason given", wait)
            else:
                log.info("site cache %s still failing (%s); next try in %.0f s",
                         self.site_url, reason or "no reason given", wait)

    def forget_probe(self, route: Route) -> None:
        """An attempt that neither succeeded nor failed because of the site
        cache (cancelled, or a definitive HTTP answer) ends its probe: the
        next request probes instead."""
        if route.probe:
            with self._lock:
                self._probing = False

    # ---------------------------------------------------------------- stats

    @property
    def up(self) -> bool:
        with self._lock:
            return self._down_until is None

    def snapshot(self) -> dict:
        """``{"url", "state", "via_site", "via_origin", "failovers",
        "recoveries", "site_failures", "last_failure"}``; ``state`` is
        ``up``, ``down`` (using the origin) or ``probing``."""
        with self._lock:
            if self._down_until is None:
                state = "up"
            else:
                state = "probing" if self._probing else "down"
            out = dict(self._counts)
            out.update(url=self.site_url, state=state, last_failure=self._last_failure)
            return out
