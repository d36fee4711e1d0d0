"""Session fixtures shared by all tests: a sample archive, the project's
archive server (HTTP + FTP) on it, and the Apache twin. Helpers live in
tests/support/."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from support.apache import ApacheTwin, unavailable_reason
from support.archive import settings_for as _settings_for

from empiarfs.archive_server import ArchiveServer
from empiarfs.archive_server.sample import make_sample


@pytest.fixture(scope="session")
def sample_root():
    """Path of a sample archive (seed 0, 3000 small files in 10943/data/Tiff).

    Made in a world-readable temp dir (not pytest's 0700 tmp) so Apache's
    ``nobody`` workers can serve the same tree."""
    root = tempfile.mkdtemp(prefix="empiarfs-sample-")
    os.chmod(root, 0o755)
    make_sample(root, seed=0, many_files=3000)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def manifest(sample_root):
    """The sample's manifest: ``{"files": [{"entry", "path", "size", "sha256", "mtime"}], ...}``."""
    from empiarfs.archive_server.sample import load_manifest

    return load_manifest(sample_root)


@pytest.fixture(scope="session")
def archive_server(sample_root):
    """ArchiveServer (HTTP + FTP) on the sample; faults off unless a test
    takes the ``faults`` fixture."""
    with ArchiveServer(sample_root, ftp=True) as server:
        yield server


@pytest.fixture
def faults(archive_server):
    """The running server's fault knobs, reset (and stats zeroed) after the test."""
    archive_server.faults.reset()
    archive_server.stats.reset()
    yield archive_server.faults
    archive_server.faults.reset()


@pytest.fixture(scope="session")
def settings_for():
    """``settings_for(server, tmp_path, **overrides) -> Settings`` (also
    importable: ``from support.archive import settings_for``)."""
    return _settings_for


@pytest.fixture(scope="module")
def module_settings(archive_server, tmp_path_factory):
    """Settings on the sample server (FTP off) with one cache directory per
    test module: for modules whose readers run in worker processes (Dask,
    intake), which rebuild an EmpiarFS from the settings they are handed."""
    return _settings_for(archive_server, tmp_path_factory.mktemp("module"), ftp_url="")


@pytest.fixture(scope="session")
def apache_twin(sample_root):
    """Apache httpd serving the same tree (``.data_url``, ``.url``)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ApacheTwin(sample_root) as twin:
        yield twin
