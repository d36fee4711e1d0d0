"""``empiarfs info``, ``ls``, ``search`` and ``index``: look before you download."""

from __future__ import annotations

import os
import time

import click

from empiarfs.cli import (
    archive_options,
    cache_dir_option,
    main,
    plural,
    selector_from,
    settings_from,
)
from empiarfs.cli.output import Counter, echo_json, human, table
from empiarfs.errors import InvalidInput, NotFound, RemoteError
from empiarfs.namespace.select import find, split_target, walk
from empiarfs.remote.accession import normalize, normalize_emdb

URL_SCHEMES = ("https", "ftp")


def _archive(settings):
    # Imported late so `empiarfs --help` stays fast and works while the
    # archive layer is being changed.
    from empiarfs.remote.archive import Archive

    return Archive(settings)


def _settings(ctx, api_url, data_url, ftp_url, cache_dir=None, offline=None):
    return settings_from(ctx.obj, api_url=api_url, data_url=data_url, ftp_url=ftp_url,
                         cache_dir=cache_dir, offline=offline or None)


def offline_option(func):
    return click.option(
        "--offline", is_flag=True,
        help="Answer from the metadata cache (what mounts and earlier commands "
             "fetched) without asking the archive.")(func)


class CachedArchive:
    """The archive seen through the persistent metadata cache, as a mount
    sees it: entry records and listings younger than ``metadata_ttl`` are
    not fetched again; older ones are, and are still served (with a
    warning) when the archive cannot be reached; with ``offline`` nothing
    is fetched. Offers what :func:`~empiarfs.namespace.select.walk` and
    ``ls``/``info`` use of :class:`~empiarfs.remote.archive.Archive`.
    """

    def __init__(self, settings):
        from empiarfs.namespace.catalog import Catalog
        from empiarfs.namespace.metastore import MetaStore

        self.settings = settings
        self.archive = _archive(settings)
        directory = os.path.join(settings.cache_dir, "metadata") if settings.cache_dir else None
        self.store = MetaStore(directory)
        self.catalog = Catalog(settings, self.archive, self.store)

    def entry(self, accession):
        return self._ask(accession, "", lambda: self.catalog.entry(accession))

    def accessions(self) -> list[str]:
        nodes = self._ask(None, "", lambda: self.catalog.listdir(""))
        return [n.name for n in nodes if n.accession]

    def listdir(self, accession, relpath=""):
        path = f"{accession}/{relpath}".rstrip("/")
        nodes = self._ask(accession, relpath, lambda: self.catalog.listdir(path))
        return sorted((n.info for n in nodes if n.info is not None), key=lambda i: i.name)

    def exact(self, accession, infos):
        """The same files with exact sizes (one batch per directory)."""
        out = []
        for info in infos:
            node = self._ask(accession, info.path, lambda info=info: self.catalog.lookup(
                f"{accession}/{info.path}"))
            out.append(node.info if node is not None and node.info is not None else info)
        return out

    def file_url(self, accession, relpath="", scheme="https"):
        return self.archive.file_url(accession, relpath, scheme)

    def _ask(self, accession, relpath, question):
        try:
            return question()
        except RemoteError as exc:
            if not self.settings.offline:
                raise
            # Not NotFound: the archive may well have it (and walk() would
            # turn NotFound into "no such file").
            what = "/".join(p for p in (accession, relpath) if p) or "the list of entries"
            raise RemoteError(f"{what} is not in the metadata cache "
                              f"({self.settings.cache_dir}); run once without --offline") \
                from exc

    def close(self):
        self.archive.close()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()



def entry_dict(entry) -> dict:
    """JSON form of an entry summary (``info --json``)."""
    return {
        "accession": entry.accession,
        "title": entry.title,
        "authors": [a.name for a in entry.authors],
        "release_date": entry.release_date,
        "update_date": entry.update_date,
        "doi": entry.doi,
        "dataset_size": entry.dataset_size,
        "experiment_type": entry.experiment_type,
        "emdb": list(entry.emdb_refs),
        "pdb": list(entry.related_pdb_entries),
        "citations": [{"title": c.title, "journal": c.journal, "year": c.year, "doi": c.doi}
                      for c in entry.citations],
        "imagesets": [
            {"name": s.name, "category": s.category, "data_format": s.data_format,
             "header_format": s.header_format, "num_images": s.num_images,
             "frames_per_image": s.frames_per_image, "pixel_width": s.pixel_width,
             "pixel_height": s.pixel_height, "image_width": s.image_width,
             "image_height": s.image_height, "directory": s.directory}
            for s in entry.imagesets
        ],
    }


def _pixel(s) -> str:
    if s.pixel_width is None:
        return ""
    if s.pixel_height is None or s.pixel_height == s.pixel_width:
        return f"{s.pixel_width:g} Å"
    return f"{s.pixel_width:g}x{s.pixel_height:g} Å"


@main.command()
@click.argument("accession")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@offline_option
@cache_dir_option
@archive_options
@click.pass_context
def info(ctx, accession, as_json, offline, cache_dir, api_url, data_url, ftp_url):
    """Summary of one entry: title, authors, dates, DOI, size, EMDB links
    and its image sets.

    Entry records are kept in the metadata cache, as a mount keeps them:
    with the archive down a cached record is still shown (after a warning),
    and --offline shows it without asking the archive at all.

    \b
    Examples:
      empiarfs info EMPIAR-10002
      empiarfs info 10002 --json | jq '.imagesets[].directory'
      empiarfs info 10002 --offline
    """
    accession = normalize(accession)
    settings = _settings(ctx, api_url, data_url, ftp_url, cache_dir, offline)
    with CachedArchive(settings) as archive:
        entry = archive.entry(accession)
    if as_json:
        echo_json(entry_dict(entry))
        return
    click.echo(click.style(f"{entry.accession}: {entry.title}", bold=True))
    authors = [a.name for a in entry.authors]
    lines = [
        ("Authors", ", ".join(authors[:12]) + (f" and {len(authors) - 12} more"
                                                 if len(authors) > 12 else "")),
        ("Released", entry.release_date), ("Updated", entry.update_date),
        ("DOI", entry.doi), ("Dataset size", entry.dataset_size),
        ("Experiment", entry.experiment_type),
        ("EMDB", ", ".join(entry.emdb_refs)), ("PDB", ", ".join(entry.related_pdb_entries)),
    ]
    for citation in entry.citations[:3]:
        lines.append(("Citation", " ".join(str(x) for x in (
            citation.title, f"({citation.journal}" if citation.journal else None,
            f"{citation.year})" if citation.year else (")" if citation.journal else None),
            f"doi:{citation.doi}" if citation.doi else None) if x)))
    for label, value in lines:
        if value:
            click.echo(f"{label + ':':<14}{value}")
    if entry.imagesets:
        click.echo("")
        rows = [(s.name, s.category or "", s.data_format or s.header_format or "",
                 "" if s.num_images is None else s.num_images,
                 "" if s.frames_per_image is None else s.frames_per_image,
                 _pixel(s), s.directory) for s in entry.imagesets]
        click.echo(table(rows, ["IMAGE SET", "CATEGORY", "FORMAT", "COUNT", "FRAMES",
                                "PIXEL", "DIRECTORY"], right=(3, 4)))
        _echo_previews(entry)
    click.echo(f"\nFiles: empiarfs ls {entry.accession} -R    "
               f"Download: empiarfs get {entry.accession} -o DIR")


def _echo_previews(entry) -> None:
    """Where a mount shows each image set's picture (mount-relative: this
    command has no mount), and the command that writes the same picture."""
    import shlex

    from empiarfs.namespace.catalog import imageset_names, preview_path

    shown = [(name, s) for name, s in imageset_names(entry).items() if s.directory]
    if not shown:
        return
    click.echo("\nPreviews, under a mount point (or made by the command below each):")
    for name, imageset in shown:
        click.echo(f"  {preview_path(entry.accession, name)}")
        source = shlex.quote(f"{entry.accession}/{imageset.directory}")
        click.echo(f"      empiarfs preview {source} -o {shlex.quote(name + '.png')}")


def _file_dict(info, accession) -> dict:
    return {"accession": accession, "path": info.path, "name": info.name,
            "type": "dir" if info.is_dir else "file",
            "size": None if info.is_dir else info.size,
            "size_exact": bool(info.size_exact) if not info.is_dir else True,
            "mtime": info.mtime or None, "url": info.url or None}


@main.command("ls")
@click.argument("target", metavar="[ACCESSION[/PATH]]", required=False)
@click.option("-R", "--recursive", is_flag=True, help="List every file below, recursively.")
@click.option("-l", "--long", "long_", is_flag=True,
              help="Exact sizes (via FTP, else HEAD requests) and dates.")
@click.option("--glob", "globs", metavar="PATTERN", multiple=True,
              help="Only paths matching this glob (relative to the entry; see below; "
                   "repeatable).")
@click.option("--regex", "regexes", metavar="RE", multiple=True,
              help="Only paths where this regex is found (re.search; repeatable).")
@click.option("--urls", type=click.Choice(URL_SCHEMES), default=None,
              help="Print download URLs, one per line (for get --from-list, wget, curl).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@offline_option
@cache_dir_option
@archive_options
@click.pass_context
def ls_(ctx, target, recursive, long_, globs, regexes, urls, as_json, offline, cache_dir,
        api_url, data_url, ftp_url):
    """List files of an entry; paths are shown relative to the entry root.
    Without an accession, list the archive's entries.

    \b
    Patterns match paths relative to the entry (never the URL):
      --glob: '*' and '?' stay within one directory, '**' crosses them;
              a pattern without '/' matches file names at any depth.
      --regex: Python re.search on the relative path; use ^...$ for a
              full match.
    A pattern selects files and implies -R (directories that cannot hold
    a match are not listed); several patterns select what any one of
    them matches. When nothing matches, the exit status is 1 (as for get).

    Listings are kept in the metadata cache, as a mount keeps them
    (--offline: answer from it alone).

    \b
    Examples:
      empiarfs ls
      empiarfs ls EMPIAR-10002
      empiarfs ls EMPIAR-10002/data -l
      empiarfs ls 10002 -R --glob 'data/*.mrcs'
      empiarfs ls 10002 -R --glob '*.mrcs' --urls https > files.txt
      empiarfs get --from-list files.txt -o ~/empiar
      empiarfs ls 10002 -R --regex '^data/1[0-9]_.*\\.mrcs$' --json
    """
    settings = _settings(ctx, api_url, data_url, ftp_url, cache_dir, offline)
    selector = selector_from(globs, regexes)
    filtered = bool(globs or regexes)
    if target is None:
        if filtered or recursive or long_ or urls:
            raise click.UsageError("-R, -l, --glob, --regex and --urls need an ACCESSION")
        with CachedArchive(settings) as archive:
            entries = archive.accessions()
        if as_json:
            echo_json(entries)
        else:
            for name in entries:
                click.echo(name)
        return
    accession, relpath = split_target(target)
    with CachedArchive(settings) as archive:
        _ls(archive, accession, relpath, selector, recursive, long_, urls, as_json, filtered)


def _ls(archive, accession, relpath, selector, recursive, long_, urls, as_json, filtered):
    if recursive or urls or filtered:
        items = list(walk(archive, accession, relpath, selector,
                          recursive=recursive or filtered))
    else:
        node = find(archive, accession, relpath)
        if node is None:
            raise NotFound(f"{accession}/{relpath}: no such file or directory "
                           f"(try: empiarfs ls {accession})", accession=accession, path=relpath)
        items = archive.listdir(accession, node.path) if node.is_dir else [node]
        items.sort(key=lambda i: i.path)
    if long_:
        files = [i for i in items if not i.is_dir and not i.size_exact]
        if files:
            exact = {i.path: i for i in archive.exact(accession, files)}
            items = [exact.get(i.path, i) for i in items]
    if filtered and not any(not i.is_dir for i in items):
        where = f"{accession}/{relpath}".rstrip("/")
        raise NotFound(f"no files in {where} match {selector.description} "
                       f"(see: empiarfs ls {accession} -R)", accession=accession, path=relpath)
    if urls:
        for item in items:
            if not item.is_dir:
                click.echo(archive.file_url(accession, item.path, urls))
        return
    if as_json:
        echo_json([_file_dict(i, accession) for i in items])
        return
    if not items:
        click.echo(f"nothing matches in {accession}/{relpath}".rstrip("/")
                   + (f" ({selector.description})" if filtered else ""), err=True)
        return
    if long_:
        rows = [("-" if i.is_dir else i.size, "" if i.is_dir else human(i.size),
                 time.strftime("%Y-%m-%d %H:%M", time.gmtime(i.mtime)) if i.mtime else "",
                 i.path + ("/" if i.is_dir else "")) for i in items]
        click.echo(table(rows, ["BYTES", "SIZE", "MODIFIED (UTC)", "PATH"], right=(0, 1)))
        files = [i for i in items if not i.is_dir]
        click.echo(f"{plural(len(files), 'file')}, {human(sum(i.size for i in files))}")
    else:
        for item in items:
            click.echo(item.path + ("/" if item.is_dir else ""))


@main.command()
@click.argument("text", nargs=-1)
@click.option("--category", help="Image-set category contains this (e.g. 'multiframe').")
@click.option("--format", "fmt", help="Image-set data/header format contains this (TIFF, MRC...).")
@click.option("--experiment-type", help="Experiment type contains this (EMDB, FIB-SEM...).")
@click.option("--emdb", metavar="EMD-N",
              help="Entries linked to this EMDB map (asks the archive directly, no index needed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@cache_dir_option
@archive_options
@click.pass_context
def search(ctx, text, category, fmt, experiment_type, emdb, as_json, cache_dir, api_url,
           data_url, ftp_url):
    """Search entry metadata (title, authors, image sets, cross references)
    in the local index. Every word must match (case-insensitive).

    Build or refresh the index first with `empiarfs index update`. No
    match is exit status 1, as for ls and get.

    \b
    Examples:
      empiarfs index update --range 10000-10100
      empiarfs search ribosome
      empiarfs search apoferritin --format TIFF --category multiframe
      empiarfs search --experiment-type FIB-SEM --json
      empiarfs search --emdb EMD-2275
    """
    from empiarfs.tools.search import SearchIndex, index_path, record_of

    settings = _settings(ctx, api_url, data_url, ftp_url, cache_dir)
    words = " ".join(text)
    if emdb:
        code = normalize_emdb(emdb)
        with _archive(settings) as archive:
            entries = archive.emdb_entries(code)
        records = [record_of(e) for e in entries]
        results = SearchIndex.from_records(records).search(words, category=category, fmt=fmt,
                                 experiment_type=experiment_type)
    else:
        path = index_path(settings)
        index = SearchIndex(path)
        if not len(index):
            raise InvalidInput(f"the search index {path} is empty; build it first: "
                               "empiarfs index update   (or --range 10000-10100 for a part)")
        results = index.search(words, category=category, fmt=fmt,
                               experiment_type=experiment_type)
    if not results:
        raise NotFound("no entries match" + (f" {words!r}" if words else ""))
    if as_json:
        echo_json(results)
        return
    rows = [(r["accession"], r.get("release_date") or "", r.get("dataset_size") or "",
             (r.get("title") or "")[:80]) for r in results]
    click.echo(table(rows, ["ACCESSION", "RELEASED", "SIZE", "TITLE"]))
    click.echo(plural(len(results), "entry"))


@main.group()
def index():
    """The local search index used by `empiarfs search`.

    \b
    Examples:
      empiarfs index update                       # every entry of the archive
      empiarfs index update --range 10000-10999   # part of it
      empiarfs index update --refresh             # re-check indexed entries
      empiarfs index info
    """


@index.command("update")
@click.option("--range", "spec", metavar="SPEC",
              help="Accessions to index: '10000-13999', '10002,10025'. Default: all.")
@click.option("--refresh", is_flag=True,
              help="Also re-fetch indexed entries and update those whose update_date changed.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@cache_dir_option
@archive_options
@click.pass_context
def index_update(ctx, spec, refresh, as_json, cache_dir, api_url, data_url, ftp_url):
    """Fetch entries not yet indexed (batch requests of up to 500).

    \b
    Examples:
      empiarfs index update
      empiarfs index update --range 10000-10100 --json
    """
    from empiarfs.namespace.filesystem import check_cache_dir
    from empiarfs.tools.search import SearchIndex, index_path

    settings = _settings(ctx, api_url, data_url, ftp_url, cache_dir)
    # Before fetching: the index is saved there once everything is fetched.
    check_cache_dir(str(index_path(settings).parent))
    index_ = SearchIndex(index_path(settings))
    counter = Counter("indexing entries")
    try:
        with _archive(settings) as archive:
            counts = index_.update(archive, spec, refresh=refresh, progress=counter)
    finally:
        counter.close()
    counts["index"] = str(index_.path)
    if as_json:
        echo_json(counts)
        return
    click.echo(f"{counts['added']} added, {counts['updated']} updated, "
               f"{counts['unchanged']} unchanged, {counts['absent']} without metadata; "
               f"{plural(counts['total'], 'entry')} in {index_.path}")


@index.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@cache_dir_option
@click.pass_context
def index_info(ctx, as_json, cache_dir):
    """Where the index is, how many entries it holds and when it was updated."""
    from empiarfs.tools.search import SearchIndex, index_path

    index_ = SearchIndex(index_path(settings_from(ctx.obj, cache_dir=cache_dir)))
    data = {"path": str(index_.path), "entries": len(index_),
            "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(index_.updated))
            if index_.updated else None}
    if as_json:
        echo_json(data)
    else:
        when = f"updated {data['updated']}" if data["updated"] else \
            "never updated: empiarfs index update"
        click.echo(f"{plural(data['entries'], 'entry')} in {data['path']} ({when})")


__all__ = ["info", "ls_", "search", "index", "entry_dict"]
