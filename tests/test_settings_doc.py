"""docs/settings.md documents every setting, and the log_level setting
reaches the CLI's logging."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import socket
import subprocess
import sys

from support.archive import env_for

from empiarfs.config import Settings, parse_size

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "settings.md"
EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")


def _rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\|\s*`([a-z_]+)`\s*\|\s*([^|]*)\|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip().strip("`")
    return rows


def test_every_setting_is_documented_and_nothing_else():
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(_rows()) == fields


def test_documented_defaults_match():
    defaults = Settings()
    for name, text in _rows().items():
        value = getattr(defaults, name)
        if name in ("cache_dir", "allowed_redirect_hosts"):
            continue   # the home directory; an empty tuple
        if isinstance(value, bool):
            assert text == str(value).lower(), name
        elif isinstance(value, int) and not text.isdigit():
            assert parse_size(text) == value, name
        elif isinstance(value, (int, float)):
            assert float(text) == value, name
        else:
            assert text == value, name


def test_log_level_setting_reaches_the_cli(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]      # closed again: nothing listens
    settings = Settings(api_url=f"http://127.0.0.1:{port}/api", data_url=f"http://127.0.0.1:{port}/data",
                        ftp_url="", cache_dir=str(tmp_path / "cache"), retries=1, backoff_max=0.01)
    env = dict(os.environ, **env_for(settings))
    quiet = subprocess.run([EMPIARFS, "info", "EMPIAR-10002"], env=env, capture_output=True,
                           text=True, timeout=60)
    loud = subprocess.run([EMPIARFS, "info", "EMPIAR-10002"], env=dict(env, EMPIARFS_LOG_LEVEL="info"),
                          capture_output=True, text=True, timeout=60)
    assert quiet.returncode == loud.returncode == 1
    assert " INFO empiarfs.remote.transport: retrying" in loud.stderr
    assert " INFO " not in quiet.stderr
