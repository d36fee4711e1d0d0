"""``--star`` of ``get`` and ``cache prefetch``: what a RELION STAR file needs.

Not a command module: the two commands call these helpers. The rules
(which columns, where references point) are
:mod:`empiarfs.namespace.star_refs`'; this module places the STAR file
and its root in the archive, prints the references that do not resolve,
and drives the frame-range prefetch with the commands' progress display.
"""

from __future__ import annotations

import io
import os
import time

import click

from empiarfs.cli import EXIT_ERROR, plural
from empiarfs.cli.output import DownloadProgress, echo_json, human
from empiarfs.errors import InvalidInput, NotFound
from empiarfs.namespace.star_refs import (
    Place,
    frame_counts,
    StarPlan,
    listing_of,
    mount_place,
    plan_star,
    prefetch,
)
from empiarfs.tools.download import FileResult, Target, destination

# A STAR file is parsed whole; a million particles is some 300 MB of text.
STAR_MAX_BYTES = 2 << 30
STAR_HELP = ("A RELION STAR file (EMPIAR-N/PATH, empiar://..., a path on an empiarfs mount, "
             "or a local file with --root).")
ROOT_HELP = ("With --star: the archive directory its references are relative to "
             "(default: the STAR file's directory, then each one above it).")
COLUMN_HELP = ("With --star: the column to follow: rlnImageName, rlnMicrographName or "
               "rlnMicrographMovieName (repeatable; default: the first of these it has).")


def _where(text: str) -> Place:
    from empiarfs.pyapi.api import ARCHIVE_SCHEME, archive_path

    remote = archive_path(text)
    if remote is None and text[:7].upper() == "EMPIAR-":
        # A local copy at the same path (`get -o .` run here) still means
        # the archive's: these commands read the archive.
        remote = archive_path(ARCHIVE_SCHEME + text)
    if remote is not None:
        return Place.archive(remote)
    if not os.path.exists(text):
        raise NotFound(f"{text}: no such file (archive paths look like "
                       "EMPIAR-10002/data/particles.star)", path=text)
    return mount_place(text) or Place.local(text)


def star_plan(star: str, root, columns, listdir, read_archive) -> StarPlan:
    """The references of the STAR file ``star``, resolved in the archive.

    ``read_archive(place) -> bytes`` reads an archive file (the STAR file,
    when it is not at hand locally or on a mount).

    Raises
    ------
    InvalidInput
        ``--root`` is not in the archive, or a local STAR file (not on a
        mount) comes without one.
    NotFound, BadFile, RemoteError
        As :func:`empiarfs.namespace.star_refs.plan_star`.
    """
    place = _where(star)
    base = _where(root) if root else None
    if base is not None and not base.is_archive:
        raise InvalidInput(f"--root {root}: not an archive directory (EMPIAR-N/DIR, "
                           "empiar://EMPIAR-N/DIR, or a directory on an empiarfs mount)")
    if base is None and not place.is_archive:
        raise InvalidInput(f"{star} is a local file: give --root EMPIAR-N/DIR, the archive "
                           "directory its references are relative to")
    if os.path.isfile(star):   # a local copy, or a mount's file: read it where it is
        with open(star, "rb") as handle:
            return plan_star(handle, place, root=base, listdir=listdir, columns=columns or None)
    data = io.BytesIO(read_archive(place))
    return plan_star(data, place, root=base, listdir=listdir, columns=columns or None)


def echo_unresolved(plan: StarPlan) -> None:
    """One line per reference that does not resolve (at most
    :data:`~empiarfs.namespace.star_refs.SHOWN`), then the count."""
    for line in plan.lines():
        click.echo(line if line.startswith("... and ") else f"unresolved: {line}", err=True)
    if plan.unresolved:
        click.echo(f"empiarfs: {plan.summary()}", err=True)


def check_downloaded(plan: StarPlan, output, targets: list) -> list:
    """After ``get --star``: references to frames beyond their stack (known
    once the stacks are here) join the unresolvable ones, all returned as
    dicts for ``--json``."""
    local = {Place(t.accession, t.relpath): destination(output, t) for t in targets}

    def open_file(place):
        path = local.get(place)
        return open(path, "rb") if path is not None and os.path.isfile(path) else None

    plan.check_frames(frame_counts(plan, open_file))
    return [u.as_dict() for u in plan.unresolved]


def targets_of(archive, plan: StarPlan) -> list:
    """What ``get`` downloads: every file the plan references, once."""
    sizes = plan.sizes()
    return [Target(p.accession, p.path, archive.file_url(p.accession, p.path, "https"),
                   sizes.get(p, -1), ftp_url=archive.file_url(p.accession, p.path, "ftp"))
            for p in plan.files]


class _Shown:
    """Prefetch progress on the download display (and ``--pin``)."""

    def __init__(self, fs, display, pin: bool):
        self._fs, self._display, self._pin = fs, display, pin
        self._targets: dict = {}

    def started(self, place, node, size):
        url = node.info.url if node.info is not None else ""
        if self._pin and url:
            self._fs.disk.pin(url)
        target = self._targets[place] = Target(place.accession, place.path, url)
        if self._display is not None:
            self._display.started(target, size, 0)

    def advanced(self, place, nbytes):
        if self._display is not None:
            self._display.advanced(self._targets[place], nbytes)

    def finished(self, place, size, seconds):
        if self._display is not None:
            self._display.finished(FileResult(self._targets[place], None, "cached", size,
                                              fetched=size, seconds=seconds))


def prefetch_star(ctx, fs, star, root, columns, *, jobs: int, pin: bool, as_json: bool) -> None:
    """``cache prefetch --star``: files referenced whole, and of each stack
    its header and the referenced frames only, into the disk cache. Closes ``fs``."""
    display = None if as_json else DownloadProgress()
    began = time.monotonic()
    try:
        def read_archive(place):
            with fs.open(str(place)) as handle:
                return handle.readall()

        plan = star_plan(star, root, columns, listing_of(fs), read_archive)
        files = plan.files
        if display is not None:
            display.planned(len(files), 0, unknown=len(files))
        before = fs.reader.stats.snapshot()["bytes_fetched"]
        done = prefetch(fs, plan, jobs=jobs, progress=_Shown(fs, display, pin))
        fetched = fs.reader.stats.snapshot()["bytes_fetched"] - before
        usage = fs.disk.info()
    finally:
        if display is not None:
            display.close()
        fs.close()
    stacks = [d for d in done if d.frames is not None]
    summary = {"files": len(done), "stacks": len(stacks),
               "frames": sum(d.frames for d in stacks), "whole_files": len(done) - len(stacks),
               "bytes": sum(d.size for d in done), "bytes_fetched": fetched,
               "seconds": round(time.monotonic() - began, 3),
               "cache_bytes_used": usage["bytes_used"], "cache_max_bytes": usage["max_bytes"],
               "references": plan.total,
               "unresolved": [u.as_dict() for u in plan.unresolved]}
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"cached {plural(summary['files'], 'file')} "
                   f"({plural(summary['frames'], 'frame')} of {plural(len(stacks), 'stack')} "
                   f"with their headers, {summary['whole_files']} whole), "
                   f"{human(summary['bytes'])} ({human(fetched)} fetched) in "
                   f"{summary['seconds']:.1f} s; cache now {human(usage['bytes_used'])} of "
                   f"{human(usage['max_bytes'])}", err=True)
    echo_unresolved(plan)
    if plan.unresolved:
        ctx.exit(EXIT_ERROR)
