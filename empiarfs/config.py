"""One frozen :class:`Settings` value for the whole program.

Precedence, lowest first: built-in defaults, the config file
(``$EMPIARFS_CONFIG`` or ``~/.config/empiarfs/config.ini``, section
``[empiarfs]``), environment variables ``EMPIARFS_<NAME>``, then explicit
overrides (command-line options). Imports nothing internal but errors.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit

from empiarfs.errors import InvalidInput

DEFAULT_API_URL = "https://www.ebi.ac.uk/empiar/api"
DEFAULT_DATA_URL = "https://ftp.ebi.ac.uk/empiar/world_availability"
DEFAULT_FTP_URL = "ftp://ftp.ebi.ac.uk/empiar/world_availability"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB, "p": 1024**5}


def parse_size(text) -> int:
    """Parse ``50G``, ``512M``, ``1.5GiB``, ``4096`` into bytes (1024-based).

    Raises
    ------
    InvalidInput
        If the text is not a size.
    """
    if isinstance(text, int):
        if text < 0:
            raise InvalidInput(f"size must not be negative: {text}")
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise InvalidInput(f"not a size: {text!r} (examples: 4096, 256K, 1G, 50G)")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def format_size(n: int) -> str:
    """Human-readable 1024-based size, e.g. ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(base, "empiarfs")


@dataclass(frozen=True)
class Settings:
    """Everything configurable, as one immutable value.

    Sizes are in bytes and times in seconds.
    """

    api_url: str = DEFAULT_API_URL
    data_url: str = DEFAULT_DATA_URL
    # Empty string disables FTP (exact sizes then come from HEAD requests).
    ftp_url: str = DEFAULT_FTP_URL
    cache_dir: str = dataclasses.field(default_factory=_default_cache_dir)
    cache_size: int = 50 * GiB
    memory_cache: int = 1 * GiB
    # Cache granule. Small enough that random small reads and header reads
    # fetch little over a slow link; sequential reads fetch many blocks per
    # request (see max_request). Measurements: docs/performance.md, "Tuning".
    block_size: int = 128 * KiB
    # Largest single range request for sequential read-ahead.
    max_request: int = 8 * MiB
    # Longest read-ahead window per open file.
    readahead: int = 64 * MiB
    # The kernel's own read-ahead on the mount (its bdi read_ahead_kb), which
    # is also the largest read the kernel sends the daemon. "auto": 1 MiB
    # while the link is fast and has been quiet for a minute, else the
    # kernel's 128 KiB (empiarfs/fuse/kernel_readahead.py says why); a size
    # fixes it; 0 leaves the kernel's. Set only when the daemon runs as root.
    # Measurements: docs/performance.md, "Tuning".
    kernel_readahead: int | str = "auto"
    # Concurrent range requests per file and overall.
    parallel_per_file: int = 16
    parallel_total: int = 32
    connect_timeout: float = 10.0
    # No byte for this long means the request is stalled: abandon and retry.
    stall_timeout: float = 10.0
    # A request with no first byte after this long gets a hedged duplicate.
    hedge_after: float = 2.0
    retries: int = 5
    backoff_max: float = 4.0
    # A read that cannot be served within this many seconds fails with EIO.
    deadline: float = 30.0
    # How long directory listings and entry metadata are trusted.
    metadata_ttl: float = 3600.0
    offline: bool = False
    allow_other: bool = False
    verify_tls: bool = True
    # Hosts redirects may lead to, besides those of the configured URLs.
    allowed_redirect_hosts: tuple = ()
    log_level: str = "WARNING"
    # A site cache (`empiarfs site-cache`, http://host:port) that takes the
    # API and data requests, paths unchanged; the origin when it fails.
    # Empty: talk to the archive directly.
    site_cache: str = ""

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` applied; ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return _coerce(dataclasses.replace(self, **changes))

    @classmethod
    def load(cls, config_file: str | None = None, env=None, **overrides) -> "Settings":
        """Defaults < config file < environment < ``overrides``."""
        env = os.environ if env is None else env
        values: dict = {}
        path = config_file or env.get("EMPIARFS_CONFIG") or os.path.join(
            env.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config"),
            "empiarfs",
            "config.ini",
        )
        # A file named on the command line must exist: a typo would
        # otherwise run with the defaults without a word. The default path
        # and EMPIARFS_CONFIG may name a missing file (no config at all).
        if config_file and not os.path.exists(config_file):
            raise InvalidInput(f"config file {config_file} does not exist")
        if path and os.path.exists(path):
            for key, value in _read_config(path).items():
                values[key.replace("-", "_")] = value
        names = {f.name for f in fields(cls)}
        for name in names:
            key = "EMPIARFS_" + name.upper()
            if key in env:
                values[name] = env[key]
        unknown = set(values) - names
        if unknown:
            raise InvalidInput(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return _coerce(cls(**{k: v for k, v in values.items() if k in names}))


def _read_config(path: str) -> dict:
    """The ``[empiarfs]`` section of an INI file, as strings.

    Raises
    ------
    InvalidInput
        If the file cannot be read, is not UTF-8 text or is not INI.
    """
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"config file {path} is not UTF-8 text (byte {exc.start}); "
                           "save it as UTF-8") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except configparser.Error as exc:
        reason = " ".join(str(exc).split())   # the parser's message spans lines
        raise InvalidInput(f"cannot parse config file {path}: {reason}") from None
    return dict(parser.items("empiarfs")) if parser.has_section("empiarfs") else {}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_SIZE_FIELDS = {"cache_size", "memory_cache", "block_size", "max_request", "readahead"}


def _site_cache_url(value) -> str:
    """``""`` or ``http(s)://host[:port]`` without a path: requests keep
    their own paths on the site cache."""
    text = str(value or "").strip().rstrip("/")
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.path or parts.query or parts.fragment or parts.username):
        raise InvalidInput(f"setting site_cache: want http://HOST:PORT (the site cache's root), "
                           f"not {value!r}")
    return text


def _coerce(settings: Settings) -> Settings:
    """Turn strings from files and the environment into typed values."""
    changes = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in _SIZE_FIELDS:
            changes[f.name] = parse_size(value)
        elif f.name == "kernel_readahead":
            if isinstance(value, str) and value.strip().lower() == "auto":
                changes[f.name] = "auto"
            else:
                try:
                    changes[f.name] = parse_size(value)
                except InvalidInput:
                    raise InvalidInput(f"setting kernel_readahead: want auto or a size (1M, "
                                       f"512K, 0), not {value!r}") from None
        elif isinstance(default, bool):
            if isinstance(value, str):
                word = value.strip().lower()
                if word not in _TRUE + _FALSE:
                    raise InvalidInput(f"setting {f.name}: not true or false: {value!r} "
                                       "(use true/false, yes/no, on/off or 1/0)")
                changes[f.name] = word in _TRUE
        elif isinstance(default, (int, float)) and isinstance(value, str):
            try:
                changes[f.name] = type(default)(value)
            except ValueError as exc:
                raise InvalidInput(f"setting {f.name}: not a number: {value!r}") from exc
        elif f.name == "allowed_redirect_hosts" and isinstance(value, str):
            changes[f.name] = tuple(h.strip() for h in value.split(",") if h.strip())
        elif f.name in ("api_url", "data_url", "ftp_url") and isinstance(value, str):
            changes[f.name] = value.rstrip("/")
        elif f.name == "site_cache":
            changes[f.name] = _site_cache_url(value)
    result = dataclasses.replace(settings, **changes)
    if result.block_size < 4 * KiB or result.block_size & (result.block_size - 1):
        raise InvalidInput(f"block size must be a power of two >= 4K, not {result.block_size}")
    if result.max_request < result.block_size:
        raise InvalidInput("max_request must be at least one block")
    if result.memory_cache < 4 * result.block_size:
        raise InvalidInput("memory cache must hold at least 4 blocks")
    if result.deadline <= 0:
        raise InvalidInput("deadline must be positive")
    return result
