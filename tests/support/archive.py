"""Settings pointing at a local archive server, for tests."""

from __future__ import annotations

import dataclasses
import os

from empiarfs.config import Settings


def settings_for(server, tmp_path, **overrides) -> Settings:
    """Settings aimed at ``server`` (an ArchiveServer or anything with
    ``api_url``/``data_url``/``ftp_url``), cache in ``tmp_path``, with
    timeouts short enough for tests. ``overrides`` win."""
    values = dict(
        api_url=server.api_url, data_url=server.data_url,
        ftp_url=getattr(server, "ftp_url", "") or "",
        cache_dir=os.path.join(os.fspath(tmp_path), "cache"),
        cache_size=256 * 1024 * 1024, memory_cache=64 * 1024 * 1024,
        connect_timeout=2.0, stall_timeout=2.0, hedge_after=1.0, retries=3,
        backoff_max=0.2, deadline=20.0, metadata_ttl=3600.0,
    )
    values.update(overrides)
    return Settings().replace(**values)


def env_for(settings) -> dict:
    """EMPIARFS_* variables reproducing ``settings`` (and no config file),
    for running the CLI as a user would."""
    env = {"EMPIARFS_CONFIG": "/nonexistent/empiarfs.ini"}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        env["EMPIARFS_" + f.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
    return env
