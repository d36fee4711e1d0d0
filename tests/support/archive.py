"""The sample archive and the project's server, for tests: Settings aimed
at a server, the local file behind an archive path, an EmpiarFS whose byte
counter shows which blocks a read needed, the server's fault counters."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket

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


def closed_ftp_url() -> str:
    """An FTP URL where nothing listens: sizes must come from HTTP."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ftp://127.0.0.1:{port}/empiar/world_availability"


def source(sample_root, archive_path: str) -> str:
    """The sample's file on disk behind ``EMPIAR-N/relpath``."""
    acc, rel = archive_path.split("/", 1)
    return os.path.join(sample_root, "world_availability", acc.split("-")[1], *rel.split("/"))


def movie_frames(sample_root, n: int):
    """The frames of the sample's ``EMPIAR-10002/data/{n}_movie_gc.mrcs``, read from disk."""
    import mrcfile

    with mrcfile.open(source(sample_root, f"EMPIAR-10002/data/{n}_movie_gc.mrcs")) as ref:
        return ref.data.copy()


def movie_set(sample_root):
    """The 96 frames of EMPIAR-10002's image set (stacks 100 to 107, six
    int16 and two float32) as one float32 array, as the image set loads."""
    import numpy as np

    return np.concatenate([movie_frames(sample_root, n).astype(np.float32) for n in range(100, 108)])


@contextlib.contextmanager
def counting_fs(server, tmp_path, block_size: int):
    """An EmpiarFS on ``server`` with ``block_size`` blocks and no
    read-ahead, closed on exit: its byte counter (:func:`fetched`) then
    shows exactly which blocks a read needed."""
    # Imported here: the soak scripts import this module without needing it.
    from empiarfs.namespace.filesystem import EmpiarFS

    with EmpiarFS(settings_for(server, tmp_path, block_size=block_size, readahead=0)) as fs:
        yield fs


def fetched(fs) -> int:
    """Bytes an EmpiarFS's block reader has fetched from the network."""
    return fs.stats()["reader"]["bytes_fetched"]


def blocks_covering(block_size: int, *ranges) -> int:
    """Bytes of the distinct ``block_size`` blocks touched by ``(start, end)`` ranges."""
    touched = set()
    for start, end in ranges:
        touched.update(range(start // block_size, (end - 1) // block_size + 1))
    return len(touched) * block_size


def injected(server) -> dict:
    """Faults an ArchiveServer has injected so far, by kind (its
    ``faults.<kind>`` counters)."""
    return {k[len("faults."):]: v for k, v in server.stats.snapshot().items() if k.startswith("faults.")}
