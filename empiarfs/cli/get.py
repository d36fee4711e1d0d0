"""``empiarfs get``: parallel, resumable downloads keeping the archive layout."""

from __future__ import annotations

import logging
import os
import sys

import click

from empiarfs.cli import (
    EXIT_ERROR,
    archive_options,
    cache_dir_option,
    main,
    plural,
    selector_from,
    settings_from,
)
from empiarfs.cli.output import DownloadProgress, echo_json, human, rate, table
from empiarfs.cli.star import (
    COLUMN_HELP,
    ROOT_HELP,
    STAR_HELP,
    STAR_MAX_BYTES,
    check_downloaded,
    echo_unresolved,
    star_plan,
    targets_of,
)
from empiarfs.errors import InvalidInput
from empiarfs.namespace.select import split_target
from empiarfs.tools.download import (
    VIA,
    DiskCacheSource,
    Downloader,
    targets_for,
    targets_from_lines,
)

# The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use.
EXIT_INTERRUPTED = 130

log = logging.getLogger(__name__)


def open_resources(settings, use_cache: bool = True):
    """``(transport, archive, disk_store_or_None, closer)``.

    The disk cache belongs to one process at a time; when a mount holds
    it, downloads simply go to the network.
    """
    from empiarfs.remote.archive import Archive
    from empiarfs.remote.transport import Transport

    if use_cache and settings.cache_dir and settings.cache_size > 0:
        from empiarfs.cache.disk import CacheLocked
        from empiarfs.namespace.filesystem import CacheUnavailable, EmpiarFS

        try:
            fs = EmpiarFS(settings)
        except CacheLocked as exc:
            log.info("not using the disk cache: %s", exc)
        except CacheUnavailable as exc:
            log.warning("not using the disk cache: %s cannot be used (%s)", exc.path, exc.reason)
        except OSError as exc:
            log.warning("not using the disk cache %s: %s", settings.cache_dir, exc)
        else:
            return fs.transport, fs.archive, fs.disk, fs.close
    transport = Transport(settings)
    archive = Archive(settings, transport)

    def close():
        archive.close()
        transport.close()
    return transport, archive, None, close


@main.command()
@click.argument("target", required=False, metavar="ACCESSION[/PATH]")
@click.option("--from-list", "from_list", type=click.File("r"), metavar="FILE",
              help="Download the files listed in FILE ('-' = stdin): https/ftp URLs as "
                   "printed by `ls --urls`, or ACCESSION/PATH lines.")
@click.option("--glob", "globs", metavar="PATTERN", multiple=True,
              help="Only files whose path (relative to the entry) matches this glob "
                   "(repeatable: a file matching any pattern is taken).")
@click.option("--regex", "regexes", metavar="RE", multiple=True,
              help="Only files whose relative path matches (re.search; repeatable).")
@click.option("-o", "--output", default=".", show_default=True,
              type=click.Path(file_okay=False), help="Output directory.")
@click.option("-j", "--jobs", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Files downloaded at once.")
@click.option("--split", default=4, show_default=True, type=click.IntRange(1, 32),
              help="Parallel range requests per large file.")
@click.option("--dry-run", is_flag=True, help="Show what would be downloaded, resumed or skipped.")
@click.option("--via", type=click.Choice(VIA), default="https", show_default=True,
              help="https: parallel range requests; ftp: one stream per file, resumed "
                   "with REST; auto: FTP first, HTTPS where FTP is blocked or fails.")
@click.option("--no-cache", is_flag=True, help="Do not read blocks from the disk cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan/summary as JSON.")
@click.option("--star", metavar="FILE", help=STAR_HELP + " Download the files it references; "
              "stacks of rlnImageName N@stack references whole, as RELION needs them.")
@click.option("--root", metavar="DIR", help=ROOT_HELP)
@click.option("--column", "columns", metavar="NAME", multiple=True, help=COLUMN_HELP)
@cache_dir_option
@archive_options
@click.pass_context
def get(ctx, target, from_list, globs, regexes, output, jobs, split, dry_run, via, no_cache,
        as_json, star, root, columns, cache_dir, api_url, data_url, ftp_url):
    """Download files, keeping the archive's layout: DIR/EMPIAR-N/data/...

    Interrupted files resume from their .part file (after checking that the
    file on the server is unchanged: same size and ETag; otherwise they
    restart). A file appears under its final name only when complete;
    files already present with the right size are skipped. Blocks already
    in the disk cache are copied instead of downloaded. Files keep the
    archive's modification time. Ctrl-C stops at once; the same command
    resumes.

    \b
    Patterns match paths relative to the entry: '*' stays in one
    directory, '**' crosses them, a pattern without '/' matches names.

    \b
    Examples:
      empiarfs get EMPIAR-10002/data/100_movie_gc.mrcs -o ~/empiar
      empiarfs get 10002 --glob 'data/*.mrcs' -o ~/empiar --jobs 8
      empiarfs get 10002 --glob '*.xml' --glob 'data/10[0-3]_*' -o ~/empiar
      empiarfs get 10002 --via auto -o ~/empiar      # FTP, else HTTPS
      empiarfs get 10002 --dry-run
      empiarfs ls 10002 -R --glob '*.mrcs' --urls https > list.txt
      empiarfs get --from-list list.txt -o ~/empiar
      empiarfs get --star EMPIAR-10002/data/particles.star -o ~/empiar
      empiarfs get --star run_data.star --root EMPIAR-10002 -o ~/empiar
    Run the same command again to resume after an interruption.
    """
    if (bool(target) + bool(from_list) + bool(star)) != 1:
        raise click.UsageError("give one of ACCESSION[/PATH], --from-list FILE or --star FILE")
    if (from_list or star) and (globs or regexes):
        raise click.UsageError("--glob/--regex apply to ACCESSION[/PATH], not to --from-list "
                               "or --star")
    if (root or columns) and not star:
        raise click.UsageError("--root and --column apply to --star only")
    settings = settings_from(ctx.obj, api_url=api_url, data_url=data_url, ftp_url=ftp_url,
                             cache_dir=cache_dir)
    selector = selector_from(globs, regexes)
    if via != "https" and not settings.ftp_url:
        raise InvalidInput(f"--via {via} needs an FTP server, but FTP is off (ftp_url is "
                           "empty); set --ftp-url or EMPIARFS_FTP_URL")
    transport, archive, disk, close = open_resources(settings, use_cache=not no_cache)
    ftp = None
    if via != "https":
        from empiarfs.remote.ftp import FtpReader

        ftp = FtpReader(timeout=max(settings.connect_timeout, settings.stall_timeout))
    progress = None
    plan = None
    try:
        if star:
            plan = star_plan(star, root, columns, archive.listdir,
                             lambda p: transport.get_bytes(archive.file_url(p.accession, p.path),
                                                           max_bytes=STAR_MAX_BYTES))
            targets = targets_of(archive, plan)
            if not targets:
                echo_unresolved(plan)
                raise InvalidInput(f"no reference of {star} resolves")
        elif from_list:
            targets = targets_from_lines(from_list, archive, settings)
            if not targets:
                raise InvalidInput(f"no files listed in {from_list.name}")
        else:
            accession, relpath = split_target(target)
            targets = targets_for(archive, accession, relpath, selector)
            if not targets:
                raise InvalidInput(f"no files in {target} match {selector.description} "
                                   f"(see: empiarfs ls {accession} -R)")
        progress = None if (dry_run or as_json) else DownloadProgress()
        downloader = Downloader(transport, output, jobs=jobs, split=split,
                                piece_size=settings.max_request,
                                cache=DiskCacheSource(disk) if disk is not None else None,
                                listener=progress, via=via, ftp=ftp)
        if dry_run:
            _show_plan(downloader.plan(targets), as_json)
            if plan is not None:
                echo_unresolved(plan)
                ctx.exit(EXIT_ERROR if plan.unresolved else 0)
            return
        try:
            summary = downloader.run(targets)
        except KeyboardInterrupt:
            _interrupted(progress, output)
        finally:
            if progress is not None:
                progress.close()
    finally:
        if ftp is not None:
            ftp.close()
        close()
    data = summary.as_dict()
    if plan is not None:
        data["unresolved"] = check_downloaded(plan, output, targets)
    if as_json:
        echo_json(data)
    else:
        parts = [f"{data['downloaded']} downloaded", f"{data['resumed']} resumed",
                 f"{data['skipped']} skipped"]
        if data["failed"]:
            parts.append(click.style(f"{data['failed']} failed", fg="red"))
        cache_note = (f", {human(data['bytes_from_cache'])} from the disk cache"
                      if data["bytes_from_cache"] else "")
        ways = data["via"]
        via_note = (f" ({ways['ftp']} over FTP, {ways['https']} over HTTPS)"
                    if ways["ftp"] else "")
        click.echo(f"{plural(data['files'], 'file')} ({', '.join(parts)}): "
                   f"{human(data['bytes'])} in {output}; fetched {human(data['bytes_fetched'])}"
                   f"{cache_note}{via_note} in {summary.seconds:.1f} s "
                   f"({rate(data['bytes_fetched'], summary.seconds)})", err=True)
        for failure in data["failures"]:
            click.echo(f"failed: {failure['file']}: {failure['error']}", err=True)
        if data["failed"]:
            click.echo("run the same command again to retry the failed files", err=True)
    if plan is not None:
        echo_unresolved(plan)
    if summary.failures or (plan is not None and plan.unresolved):
        ctx.exit(EXIT_ERROR)


def _interrupted(progress, output) -> None:
    """Ctrl-C: say how to resume and leave now. Transfers that have not
    noticed yet (a server that sends nothing) would hold the interpreter's
    exit until their timeouts; what they wrote is recorded already."""
    if progress is not None:
        progress.close()
    click.echo(f"empiarfs: interrupted; partial files in {output} are kept (.part); "
               "run the same command again to resume", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(EXIT_INTERRUPTED)


def _show_plan(items, as_json: bool) -> None:
    if as_json:
        echo_json([{"file": i.target.label, "path": str(i.path), "size": i.size,
                    "status": i.status, "present": i.present, "error": i.error}
                   for i in items])
        return
    rows = [(i.status, human(i.size), human(i.present) if i.status == "resume" else "",
             i.target.label + (f"  ({i.error})" if i.error else "")) for i in items]
    click.echo(table(rows, ["ACTION", "SIZE", "HAVE", "FILE"], right=(1, 2)))
    todo = [i for i in items if i.status in ("new", "resume")]
    click.echo(f"{len(todo)} of {plural(len(items), 'file')} to fetch, "
               f"{human(sum(i.size - i.present for i in todo))} to download")
