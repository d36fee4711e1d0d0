"""Terminal helpers shared by the commands: tables, JSON, progress.

Progress and colours appear only when the stream is a terminal; in a pipe
or a log file the commands print plain lines, one per finished item.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import click

from empiarfs.config import format_size
from empiarfs.tools.download import Listener


def is_tty(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def echo_json(value) -> None:
    """Pretty JSON on stdout (``--json`` of every listing command)."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def table(rows: list, headers: list, right: tuple = ()) -> str:
    """Aligned text columns; ``right`` lists column indices to right-align."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for number, row in enumerate(cells):
        parts = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        line = "  ".join(parts).rstrip()
        lines.append(click.style(line, bold=True) if number == 0 else line)
    return "\n".join(lines)


def human(n) -> str:
    return "?" if n is None or n < 0 else format_size(int(n))


def rate(nbytes: float, seconds: float) -> str:
    return f"{format_size(int(nbytes / seconds))}/s" if seconds > 0 else "-"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or seconds != seconds:
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def error(message: str) -> None:
    click.echo(f"empiarfs: error: {message}", err=True)


class Counter:
    """``done/total`` progress for counts (index update, prefetch files):
    redrawn in place on a terminal, silent otherwise."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if not self.tty:
            return
        elapsed = time.monotonic() - self.started
        eta = elapsed * (total - done) / done if done else None
        self.stream.write(f"\r\x1b[K{self.label}: {done}/{total}  ETA {duration(eta)}")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


class DownloadProgress(Listener):
    """Download progress: live overall + per-file lines on a terminal
    (bytes, rate, ETA), one plain line per finished file otherwise.

    Bytes count as they arrive. The total starts as the sum of the
    listing's size hints and each file's exact size replaces its hint when
    the file starts; ``+`` marks a total that still lacks files of unknown
    size.
    """

    MAX_FILE_LINES = 8

    def __init__(self, stream=None, tty: bool | None = None, refresh: float = 0.2):
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream) if tty is None else tty
        self.refresh = refresh
        self._lock = threading.Lock()
        self._files: dict = {}          # label -> [size, done, started, present at start]
        self._count = 0
        self._finished = 0
        self._unknown = 0               # files without a size hint, not yet started
        self._total = 0
        self._done = 0
        self._fetched = 0
        self._started = time.monotonic()
        self._drawn = 0
        self._stop = threading.Event()
        self._thread = None

    # -- Listener -----------------------------------------------------------
    def planned(self, count, total_bytes, unknown=0):
        with self._lock:
            self._count, self._started = count, time.monotonic()
            self._total, self._unknown = total_bytes, unknown
        if self.tty and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
            self._thread.start()

    def started(self, target, size, present):
        with self._lock:
            again = self._files.get(target.label)
            if again is not None:
                # Another attempt at the same file (it changed and restarts,
                # or FTP broke off and HTTPS goes on): counted once.
                self._total += size - again[0]
                self._done += present - again[1]
                again[:] = [size, present, time.monotonic(), present]
                return
            self._files[target.label] = [size, present, time.monotonic(), present]
            hint = getattr(target, "size_hint", -1)
            if hint is None or hint < 0:
                self._unknown = max(0, self._unknown - 1)
                hint = 0
            self._total += size - hint
            self._done += present

    def advanced(self, target, nbytes):
        with self._lock:
            state = self._files.get(target.label)
            if state:
                state[1] += nbytes
            self._done += nbytes
            self._fetched += nbytes

    def finished(self, result):
        with self._lock:
            if self._files.pop(result.target.label, None) is None and result.status == "failed":
                # Failed before it started: its hint no longer counts.
                hint = getattr(result.target, "size_hint", -1)
                if hint is None or hint < 0:
                    self._unknown = max(0, self._unknown - 1)
                else:
                    self._total -= hint
            self._finished += 1
            if result.status == "failed":
                line = click.style(f"FAILED  {result.target.label}: {result.error}",
                                   fg="red") if self.tty else \
                    f"FAILED  {result.target.label}: {result.error}"
            else:
                via = f"  via {result.via.upper()}" if getattr(result, "via", "") == "ftp" else ""
                line = (f"{result.status:<10} {result.target.label}  {human(result.size)}"
                        + (f"  {rate(result.fetched, result.seconds)}" if result.fetched else "")
                        + via)
            if self.tty:
                self._clear()
            self.stream.write(line + "\n")
            self.stream.flush()

    # -- drawing ------------------------------------------------------------
    def _loop(self):
        while not self._stop.wait(self.refresh):
            with self._lock:
                self._clear()
                self._draw()

    def _clear(self):
        if self._drawn:
            self.stream.write("\x1b[1A\x1b[2K" * self._drawn + "\r")
            self._drawn = 0

    def lines(self) -> list[str]:
        """The lines drawn on a terminal now (call with the lock held)."""
        elapsed = time.monotonic() - self._started
        speed = self._fetched / elapsed if elapsed > 0 else 0
        remaining = max(self._total - self._done, 0)
        eta = remaining / speed if speed > 0 else None
        more = "+" if self._unknown else ""
        lines = [f"[{self._finished}/{self._count} files] {human(self._done)} of "
                 f"{human(self._total)}{more}  {rate(self._fetched, elapsed)}  "
                 f"ETA {duration(eta) if not more else '--:--'}"]
        now = time.monotonic()
        for label, (size, done, began, first) in list(self._files.items())[:self.MAX_FILE_LINES]:
            spent = now - began
            file_speed = (done - first) / spent if spent > 0 else 0
            file_eta = (size - done) / file_speed if file_speed > 0 else None
            pct = 100 * done / size if size else 100
            lines.append(f"  {pct:5.1f}%  {human(done):>10} / {human(size):<10} "
                         f"{rate(done - first, spent):>12}  ETA {duration(file_eta)}  {label}")
        return lines

    def _draw(self):
        lines = self.lines()
        width = 200
        for line in lines:
            self.stream.write(line[:width] + "\n")
        self.stream.flush()
        self._drawn = len(lines)

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self.tty:
                self._clear()
                self.stream.flush()
