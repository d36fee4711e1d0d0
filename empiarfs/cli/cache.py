"""``empiarfs cache info|ls|clear|pin|unpin|prefetch``: the shared disk cache.

The cache is the one a mount uses (``<cache_dir>/blocks``), shared by every
process on the node: these commands work while mounts, Python API processes
and Dask workers use it (they fail with one clear line only when another
process holds it exclusively or uses another block size).
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import click

from empiarfs.cli import archive_options, cache_dir_option, main, plural, settings_from
from empiarfs.cli.output import DownloadProgress, echo_json, human, table
from empiarfs.cli.star import COLUMN_HELP, ROOT_HELP, STAR_HELP, prefetch_star
from empiarfs.errors import InvalidInput
from empiarfs.namespace.select import Selector, split_target, walk
from empiarfs.tools.download import FileResult, Target

_GLOB_CHARS = re.compile(r"[*?\[]")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _open_fs(ctx, api_url=None, data_url=None, ftp_url=None, cache_dir=None):
    """An EmpiarFS with its disk cache (a context manager that closes it)."""
    from empiarfs.namespace.filesystem import EmpiarFS

    settings = settings_from(ctx.obj, api_url=api_url, data_url=data_url, ftp_url=ftp_url,
                             cache_dir=cache_dir)
    fs = EmpiarFS(settings)
    if fs.disk is None:
        fs.close()
        raise InvalidInput("the disk cache is disabled (cache_size is 0 or cache_dir empty); "
                           "set EMPIARFS_CACHE_SIZE, e.g. 50G")
    return fs


def resolve_files(archive, specs) -> list:
    """``ACCESSION/PATH`` arguments (PATH may be a glob, or a directory
    meaning everything below it) -> ``[(accession, FileInfo)]``.

    Raises
    ------
    NotFound
        If a plain path does not exist.
    InvalidInput
        If a glob matches nothing.
    """
    out, seen = [], set()
    for spec in specs:
        accession, relpath = split_target(spec)
        if _GLOB_CHARS.search(relpath):
            infos = list(walk(archive, accession, "", Selector.glob(relpath)))
            if not infos:
                raise InvalidInput(f"{spec}: no files match (see: empiarfs ls {accession} -R)")
        else:
            infos = list(walk(archive, accession, relpath))
        for info in infos:
            if (accession, info.path) not in seen:
                seen.add((accession, info.path))
                out.append((accession, info))
    return out


@main.group()
def cache():
    """The disk cache shared with mounts: inspect, clear, pin, prefetch.

    \b
    Examples:
      empiarfs cache info
      empiarfs cache ls
      empiarfs cache prefetch 'EMPIAR-10002/data/1*.mrcs'
      empiarfs cache pin EMPIAR-10002/data/100_movie_gc.mrcs
      empiarfs cache clear --yes
    """


@cache.command("info")
@_json_option
@cache_dir_option
@click.pass_context
def cache_info(ctx, as_json, cache_dir):
    """Where the cache is, how full, how many files, what is pinned.

    \b
    Examples:
      empiarfs cache info
      empiarfs cache info --json | jq .bytes_used
    """
    with _open_fs(ctx, cache_dir=cache_dir) as fs:
        data = dict(fs.disk.info())
        data["pinned"] = fs.disk.pinned()
    if as_json:
        echo_json(data)
        return
    used, bound = data["bytes_used"], data["max_bytes"]
    pct = 100 * used / bound if bound else 0
    rows = [("directory", data["directory"]),
            ("used", f"{human(used)} of {human(bound)} ({pct:.1f}%)"),
            ("files", data["files"]), ("blocks", data["blocks"]),
            ("pinned", f"{plural(data['pinned_files'], 'file')}, {human(data['pinned_bytes'])}")]
    click.echo(table(rows, ["CACHE", ""]))
    for url in data["pinned"]:
        click.echo(f"  pinned: {url}")


@cache.command("ls")
@_json_option
@cache_dir_option
@click.pass_context
def cache_ls(ctx, as_json, cache_dir):
    """What is cached, file by file: bytes present, size, pinned.

    \b
    Examples:
      empiarfs cache ls
      empiarfs cache ls --json | jq '.[] | select(.pinned)'
    """
    with _open_fs(ctx, cache_dir=cache_dir) as fs:
        files = fs.disk.files()
        base = fs.settings.data_url.rstrip("/") + "/"
    for item in files:
        item["path"] = _archive_path(item["url"], base)
    if as_json:
        echo_json(files)
        return
    rows = [(human(f["cached"]), human(f["size"]),
             "" if not f["size"] else f"{100 * f['cached'] / f['size']:.0f}%",
             "pinned" if f["pinned"] else "", f["path"]) for f in files]
    click.echo(table(rows, ["CACHED", "SIZE", "", "PIN", "FILE"], right=(0, 1, 2)))
    click.echo(f"{plural(len(files), 'file')}, {human(sum(f['cached'] for f in files))} cached")


def _archive_path(url: str, base: str) -> str:
    """``EMPIAR-10002/data/a b.mrcs`` for a file of the configured archive,
    else the URL itself (blocks of another mirror in the same cache)."""
    from urllib.parse import unquote

    if not url.startswith(base):
        return url
    number, _, rest = unquote(url[len(base):]).partition("/")
    return f"EMPIAR-{number}/{rest}" if number.isdigit() else url


@cache.command("clear")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@cache_dir_option
@click.pass_context
def cache_clear(ctx, yes, cache_dir):
    """Delete every cached block, the cached metadata and the kept .bz2
    block indexes (pins are kept, their blocks are not).

    \b
    Examples:
      empiarfs cache clear
      empiarfs cache clear --yes
    """
    import shutil

    from empiarfs.formats.bz2_index import IndexStore

    with _open_fs(ctx, cache_dir=cache_dir) as fs:
        info = fs.disk.info()
        if not yes:
            click.confirm(f"Delete {human(info['bytes_used'])} of cached blocks in "
                          f"{info['directory']}?", abort=True)
        fs.disk.clear()
        fs.meta.clear()
        # <cache_dir>/bz2-index: kept, the indexes would outlive the cache
        # they were built beside (a writer racing this just skips a save).
        indexes = IndexStore.in_cache_dir(fs.settings.cache_dir)
        if indexes is not None:
            shutil.rmtree(indexes.directory, ignore_errors=True)
    click.echo(f"cleared {human(info['bytes_used'])} from {info['directory']}")


def _pin_command(ctx, paths, pin: bool, api_url, data_url, ftp_url, cache_dir):
    with _open_fs(ctx, api_url, data_url, ftp_url, cache_dir) as fs:
        files = resolve_files(fs.archive, paths)
        for _, info in files:
            (fs.disk.pin if pin else fs.disk.unpin)(info.url)
    for accession, info in files:
        click.echo(f"{'pinned' if pin else 'unpinned'} {accession}/{info.path}")


@cache.command("pin")
@click.argument("paths", nargs=-1, required=True, metavar="ACCESSION/PATH...")
@cache_dir_option
@archive_options
@click.pass_context
def cache_pin(ctx, paths, cache_dir, api_url, data_url, ftp_url):
    """Never evict these files' blocks (PATH may be a glob or a directory).

    \b
    Examples:
      empiarfs cache pin EMPIAR-10002/data/100_movie_gc.mrcs
      empiarfs cache pin 'EMPIAR-10002/data/*.mrcs'
    """
    _pin_command(ctx, paths, True, api_url, data_url, ftp_url, cache_dir)


@cache.command("unpin")
@click.argument("paths", nargs=-1, required=True, metavar="ACCESSION/PATH...")
@cache_dir_option
@archive_options
@click.pass_context
def cache_unpin(ctx, paths, cache_dir, api_url, data_url, ftp_url):
    """Make these files' blocks evictable again.

    \b
    Examples:
      empiarfs cache unpin 'EMPIAR-10002/data/*.mrcs'
    """
    _pin_command(ctx, paths, False, api_url, data_url, ftp_url, cache_dir)


@cache.command("prefetch")
@click.argument("paths", nargs=-1, metavar="[ACCESSION/PATH]...")
@click.option("--pin", "pin_", is_flag=True, help="Also pin the files.")
@click.option("-j", "--jobs", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Files fetched at once.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@click.option("--index", "index_", is_flag=True,
              help="Also build the block index of each .bz2 file (one parallel "
                   "decompression), so later reads of any frame decompress only its blocks.")
@click.option("--star", metavar="FILE", help=STAR_HELP + " Cache the files it references; "
              "of stacks (rlnImageName N@stack) only the header and those frames.")
@click.option("--root", metavar="DIR", help=ROOT_HELP)
@click.option("--column", "columns", metavar="NAME", multiple=True, help=COLUMN_HELP)
@cache_dir_option
@archive_options
@click.pass_context
def cache_prefetch(ctx, paths, pin_, jobs, as_json, index_, star, root, columns, cache_dir,
                   api_url, data_url, ftp_url):
    """Read files into the disk cache now, so later reads (mount, Python
    API, `get`) are local. PATH may be a glob or a directory.

    \b
    Examples:
      empiarfs cache prefetch EMPIAR-10002/data/100_movie_gc.mrcs
      empiarfs cache prefetch 'EMPIAR-10002/data/**' --pin
      empiarfs cache prefetch --index 'EMPIAR-10934/data/**/*.tiff.bz2'
      empiarfs cache prefetch --star EMPIAR-10002/data/particles.star
    """
    if bool(paths) == bool(star):
        raise click.UsageError("give ACCESSION/PATH... or --star FILE")
    if ((root or columns) and not star) or (index_ and star):
        raise click.UsageError("--root and --column apply to --star only, --index not to it")
    fs = _open_fs(ctx, api_url, data_url, ftp_url, cache_dir)
    if star:
        prefetch_star(ctx, fs, star, root, columns, jobs=jobs, pin=pin_, as_json=as_json)
        return
    progress = None if as_json else DownloadProgress()
    started = time.monotonic()
    results = []
    indexed = []
    try:
        files = resolve_files(fs.archive, paths)
        if progress:
            progress.planned(len(files), sum(i.size for _, i in files))
        step = fs.settings.max_request

        def one(item):
            accession, info = item
            node = fs.stat(f"{accession}/{info.path}")
            target = Target(accession, info.path, node.info.url if node.info else info.url,
                            node.size)
            if pin_:
                fs.disk.pin(target.url)
            if progress:
                progress.started(target, node.size, 0)
            began = time.monotonic()
            for offset in range(0, node.size, step):
                chunk = fs.read_node(node, offset, step)
                if progress:
                    progress.advanced(target, len(chunk))
            if index_ and info.path.lower().endswith(".bz2") and node.info is not None:
                _index_bz2(fs, node, f"{accession}/{info.path}")
                indexed.append(target.url)
            result = FileResult(target, None, "cached", node.size, fetched=node.size,
                                seconds=time.monotonic() - began)
            if progress:
                progress.finished(result)
            return result

        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="prefetch") as pool:
            results = list(pool.map(one, files))
        usage = fs.disk.info()
    finally:
        if progress:
            progress.close()
        fs.close()
    summary = {"files": len(results), "indexes": len(indexed),
               "bytes": sum(r.size for r in results),
               "seconds": round(time.monotonic() - started, 3),
               "cache_bytes_used": usage["bytes_used"], "cache_max_bytes": usage["max_bytes"]}
    if as_json:
        echo_json(summary)
    else:
        indexes = f", {plural(len(indexed), 'bz2 index', 'bz2 indexes')}" if index_ else ""
        click.echo(f"cached {plural(summary['files'], 'file')}{indexes}, "
                   f"{human(summary['bytes'])} in "
                   f"{summary['seconds']:.1f} s; cache now {human(usage['bytes_used'])} of "
                   f"{human(usage['max_bytes'])}", err=True)


def _index_bz2(fs, node, path: str) -> None:
    """Build and keep a .bz2 file's block index (its bytes are cached by now)."""
    import io

    from empiarfs.formats.bz2 import build_index, encode_offsets
    from empiarfs.formats.bz2_index import IndexStore, key_for_remote

    store = IndexStore.in_cache_dir(fs.settings.cache_dir)
    with io.BufferedReader(fs.open(path), buffer_size=1 << 20) as fh:
        offsets = build_index(fh, name=path)
    store.save_index(key_for_remote(node.info.url, node.info.fingerprint.key()),
                     encode_offsets(offsets))
