"""The kernel's read-ahead on the mount: the knob, and when to turn it.

The kernel asks a FUSE filesystem for a file's pages in requests of at
most its read-ahead (the mount's ``/sys/class/bdi/<dev>/read_ahead_kb``,
128 KiB unless changed). Each request is one Python callback in the
daemon, so on a fast link the callbacks, not the network, cap sequential
reads: from a loopback server a cold 512 MiB ``dd`` went 300-325 ->
390-440 MB/s and a warm one 1.1-1.7 -> 2.2 GB/s with 1 MiB
(docs/performance.md). Under faults the larger requests cost reads their
deadline instead (a read then waits on several large requests in a row:
reads of 17-24 s against an 8 s deadline in 2 of 3 soaks with 1 MiB
fixed). So by default (``kernel_readahead = auto``) the daemon raises it
only while the link is fast and has been quiet, and lowers it at the
first sign of trouble. The kernel copies the value into each file when it
is opened (after the daemon answered ``open``, which brings the value up to
date first): files opened later follow, open ones keep theirs.

Only root may write the knob; otherwise the kernel's value stays.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from empiarfs.cache.readahead import FAST_LINK_TTFB
from empiarfs.config import KiB, MiB

log = logging.getLogger(__name__)

KERNEL_DEFAULT = 128 * KiB
FAST_LINK_READAHEAD = 1 * MiB
# Seconds without a fault before a fast link earns the large read-ahead
# again: long enough that a flaky link stays at the safe value, short
# enough that one hiccup does not slow a mirror for the rest of the day.
QUIET_FOR = 60.0
# How often the daemon looks at the link.
POLL_EVERY = 0.1


@dataclass
class ReadaheadPolicy:
    """Which read-ahead the mount should have now: ``fast`` while replies
    start within ``fast_ttfb`` and no fault was seen for ``quiet_for``
    seconds, else ``slow``. Pure: the caller passes the clock, the link's
    quickest recent time to headers (None before any reply) and a running count of
    faults (stalls, retries, hedges, failed reads); a count that grew is a
    fault now."""

    fast: int = FAST_LINK_READAHEAD
    slow: int = KERNEL_DEFAULT
    fast_ttfb: float = FAST_LINK_TTFB
    quiet_for: float = QUIET_FOR
    _faults: int = field(default=0, init=False)
    _last_fault: Optional[float] = field(default=None, init=False)

    def choose(self, now: float, link_ttfb: Optional[float], faults: int) -> int:
        if faults != self._faults:
            self._faults = faults
            self._last_fault = now
        quiet = self._last_fault is None or now - self._last_fault >= self.quiet_for
        fast = link_ttfb is not None and link_ttfb < self.fast_ttfb
        return self.fast if fast and quiet else self.slow


def mount_device(mountpoint: str, mountinfo: str) -> str | None:
    """The ``major:minor`` of the newest FUSE mount at ``mountpoint`` in
    the text of ``/proc/<pid>/mountinfo``, or None.

    Read from the mount table rather than by ``stat()``, which would ask the
    FUSE daemon itself and wait for it while it is still starting.
    """
    found = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) <= separator + 1 or not fields[separator + 1].startswith("fuse"):
            continue
        if _unescape_mountinfo(fields[4]) == mountpoint:
            found = fields[2]
    return found


def _unescape_mountinfo(field: str) -> str:
    # The kernel writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


class ReadaheadKnob:
    """The mount's ``read_ahead_kb``, found once the mount appears in the
    mount table (``mountpoint`` resolved beforehand: resolving it once
    mounted would ask the daemon)."""

    def __init__(self, mountpoint: str):
        self.mountpoint = mountpoint
        self.path: Optional[str] = None
        self.value: Optional[int] = None   # bytes, as last written or read

    def find(self, timeout: float = 30.0, stop: Optional[threading.Event] = None) -> bool:
        """Wait for the mount to appear; True once the knob is known."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open("/proc/self/mountinfo") as handle:
                    device = mount_device(self.mountpoint, handle.read())
            except OSError as exc:
                log.info("cannot read the mount table (%s); kernel read-ahead left as is", exc)
                return False
            if device is not None:
                self.path = f"/sys/class/bdi/{device}/read_ahead_kb"
                try:
                    with open(self.path) as handle:
                        self.value = int(handle.read().strip()) * KiB
                except (OSError, ValueError):
                    self.value = None
                return True
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                log.info("mount %s not seen in the mount table; kernel read-ahead left as is",
                         self.mountpoint)
                return False
            time.sleep(0.05)

    def set(self, size: int) -> bool:
        """Write ``size`` bytes (rounded down to KiB, at least 4 KiB); True
        if the kernel took it."""
        if self.path is None:
            return False
        if size == self.value:
            return True
        try:
            with open(self.path, "w") as handle:
                handle.write(str(max(4, size // KiB)))
        except OSError as exc:
            log.info("cannot set %s (%s); kernel read-ahead left at its default", self.path, exc)
            return False
        log.info("kernel read-ahead of %s set to %d KiB", self.mountpoint, size // KiB)
        self.value = size
        return True


def tune_kernel_readahead(mountpoint: str, size: int, timeout: float = 30.0) -> bool:
    """Set the mount's read-ahead to ``size`` bytes once it appears; True if set."""
    knob = ReadaheadKnob(mountpoint)
    return knob.find(timeout) and knob.set(size)


class ReadaheadSteering:
    """Keeps the mount's read-ahead where ``policy`` says.

    ``update()`` looks at the link and sets the knob if the policy wants
    another value; it is called every ``POLL_EVERY`` seconds (so a fault
    lowers it at once) and by the FUSE ``open`` handler before it answers:
    the kernel copies the value into the file after the daemon answered
    ``open``, so the first file a new mount opens gets the value its first
    replies earned (a poll alone left the bench's first file at 128 KiB:
    332 MB/s with 1 MiB fixed, 250 with the poll).

    ``link_state()`` returns ``(link_ttfb, faults)``, or None while the
    filesystem is not built yet. ``on_change(size)`` hears each value set.
    """

    def __init__(self, mountpoint: str, link_state: Callable[[], Optional[tuple]],
                 policy: Optional[ReadaheadPolicy] = None,
                 on_change: Optional[Callable[[int], None]] = None):
        self.knob = ReadaheadKnob(mountpoint)
        self._link_state = link_state
        self._policy = policy or ReadaheadPolicy()
        self._on_change = on_change
        self._lock = threading.Lock()
        self._usable = False   # the knob was found (and, once written, writable)

    def follow(self, stop: threading.Event, every: float = POLL_EVERY) -> None:
        """Find the knob, then update every ``every`` seconds until ``stop``."""
        if not self.knob.find(stop=stop):
            return
        self._usable = True
        while self._usable and not stop.wait(every):
            self.update()

    def update(self) -> None:
        if not self._usable:
            return
        state = self._link_state()
        if state is None:
            return
        with self._lock:
            wanted = self._policy.choose(time.monotonic(), *state)
            if wanted == self.knob.value:
                return
            if not self.knob.set(wanted):
                self._usable = False   # not root: nothing to steer
                return
        if self._on_change is not None:
            self._on_change(wanted)
