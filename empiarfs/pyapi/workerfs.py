"""One :class:`~empiarfs.namespace.filesystem.EmpiarFS` per process and :class:`Settings`.

Lazy arrays and catalog readers travel to other processes (Dask workers,
intake readers rebuilt from a catalog file) as plain settings, never as
live sessions: sockets and threads do not survive pickling or a fork. Each
process then opens one EmpiarFS per distinct settings value on first use
and shares it between all its tasks and threads, so a worker running a
thousand frame reads has one connection pool and one memory cache, not a
thousand.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Optional

from empiarfs.config import Settings
from empiarfs.errors import InvalidInput

_lock = threading.Lock()
_open: dict = {}        # Settings -> EmpiarFS, of process _pid
_pid: Optional[int] = None


def fs_for(settings: Optional[Settings]):
    """This process's EmpiarFS for ``settings`` (``None``: the default one of
    :mod:`empiarfs.pyapi.api`, which :func:`empiarfs.configure` sets).

    Thread-safe. It shares the disk cache in ``settings.cache_dir`` when no
    other process holds it, and runs on its memory cache otherwise.

    Raises
    ------
    InvalidInput
        If the settings from the config file or environment are malformed.
    """
    global _pid
    if settings is None:
        from empiarfs.pyapi import api

        return api.default_fs()
    with _lock:
        if _pid != os.getpid():
            # Inherited through fork: those belong to the parent process.
            _open.clear()
            _pid = os.getpid()
        fs = _open.get(settings)
        if fs is None:
            from empiarfs.namespace.filesystem import EmpiarFS

            fs = EmpiarFS(settings, require_disk_cache=False)
            _open[settings] = fs
        return fs


class ProcessLocalFS:
    """Mixin for objects that travel to other processes: ``_fs`` is an
    EmpiarFS of the process that opened it (``_fs_pid``). A forked child
    opens its own on first use, and a pickle carries none."""

    _fs = None
    _fs_pid: Optional[int] = None

    def _fs_here(self, open_fs):
        """This process's EmpiarFS, from ``open_fs()`` on first use here."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = open_fs()
            self._fs_pid = os.getpid()
        return self._fs

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fs"] = None
        state["_fs_pid"] = None
        return state


def settings_from_options(options: Optional[dict]) -> Optional[Settings]:
    """Settings from storage options (setting names, as for ``empiar://``):
    :meth:`Settings.load` with ``options`` applied; ``None`` for no options
    (then the default EmpiarFS is used).

    Raises
    ------
    InvalidInput
        An unknown setting name or a malformed value.
    """
    if not options:
        return None
    try:
        return Settings.load().replace(**options)
    except TypeError as exc:
        raise InvalidInput(f"unknown empiarfs setting in {sorted(options)}: {exc}") from exc


def options_from_settings(settings: Settings) -> dict:
    """The fields of ``settings`` that differ from :meth:`Settings.load`, as
    plain values: what a serialisable description (a catalog entry) stores
    so that :func:`settings_from_options` gives ``settings`` back."""
    import dataclasses

    base = Settings.load()
    options = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value != getattr(base, f.name):
            # Tuples as the comma-separated text the config file takes:
            # catalog files are YAML, which has no tuples.
            options[f.name] = ",".join(value) if isinstance(value, tuple) else value
    return options


def close_all() -> None:
    """Close the EmpiarFS instances this process opened here."""
    with _lock:
        mine = list(_open.values()) if _pid == os.getpid() else []
        _open.clear()
    for fs in mine:
        fs.close()


atexit.register(close_all)
