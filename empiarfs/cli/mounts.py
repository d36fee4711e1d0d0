"""``empiarfs mount``, ``umount``, ``demo`` and ``stats``."""

from __future__ import annotations

import json
import logging
import os
import time

import click

from empiarfs.cli import archive_options, main, settings_from
from empiarfs.cli.output import human
from empiarfs.errors import InvalidInput

CACHE_OPTIONS = [
    click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                 help="Persistent cache directory (default ~/.cache/empiarfs). Env: EMPIARFS_CACHE_DIR."),
    click.option("--cache-size", default=None, metavar="SIZE",
                 help="Disk cache bound, e.g. 50G (default 50G). Env: EMPIARFS_CACHE_SIZE."),
    click.option("--memory-cache", default=None, metavar="SIZE",
                 help="Memory cache bound, e.g. 1G (default 1G). Env: EMPIARFS_MEMORY_CACHE."),
    click.option("--block-size", default=None, metavar="SIZE",
                 help="Cache block size, a power of two (default 128K)."),
    click.option("--deadline", default=None, type=float, metavar="SECONDS",
                 help="A read not served within this time fails with EIO (default 30)."),
    click.option("--metadata-ttl", default=None, type=float, metavar="SECONDS",
                 help="How long listings and entry records are trusted (default 3600)."),
    click.option("--offline", is_flag=True, default=None,
                 help="Serve only what is cached; never contact the archive."),
    click.option("--allow-other", is_flag=True, default=None,
                 help="Let other users see the mount (needs user_allow_other in /etc/fuse.conf)."),
    click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (logs to stderr)."),
    click.option("--nonempty", is_flag=True,
                 help="Mount even if MOUNTPOINT holds files (they are hidden until unmounted)."),
    click.option("-o", "options", multiple=True, metavar="OPT[=VALUE],...",
                 help="Mount options as in fstab: any setting under its config-key name "
                      "(cache_size=200G,api_url=URL,allow_other), nonempty, and mount(8)'s "
                      "generic options (ignored)."),
]


def cache_options(func):
    for option in reversed(CACHE_OPTIONS):
        func = option(func)
    return func


def _settings(ctx, options=(), **kw):
    """Settings from file/env, then ``-o`` options, then the named options;
    and the mount flags given as ``-o`` (``nonempty``, ``foreground``)."""
    import dataclasses

    from empiarfs.config import Settings
    from empiarfs.fuse.mount import parse_mount_options

    from_o, flags = parse_mount_options(options, [f.name for f in dataclasses.fields(Settings)])
    keys = ("api_url", "data_url", "ftp_url", "cache_dir", "cache_size", "memory_cache",
            "block_size", "deadline", "metadata_ttl", "offline", "allow_other")
    named = {k: kw.get(k) for k in keys if kw.get(k) is not None}
    flags["given"] = set(from_o) | set(named)
    return settings_from(ctx.obj, **{**from_o, **named}), flags


def _preview_png(fs, directory):
    """The mount's ``previews/*.png`` renderer, imported on first use (numpy,
    Pillow): the namespace may not import tools/, so it is injected here."""
    from empiarfs.tools.preview import imageset_png

    return imageset_png(fs, directory)


def _serve_mount(settings, mountpoint, foreground, debug, before=None, source=None,
                 nonempty=False):
    """Mount in this process (foreground) or in a detached child."""
    from empiarfs.fuse.mount import (
        check_mountpoint,
        check_user_mount,
        daemonize_and_mount,
        run_fuse,
    )
    from empiarfs.namespace.filesystem import EmpiarFS, check_cache_dir

    mountpoint = check_mountpoint(mountpoint, nonempty=nonempty)
    check_user_mount(mountpoint, settings.allow_other)
    if settings.cache_dir:
        # Here, before the fork: the daemon's log file lives there too.
        check_cache_dir(settings.cache_dir)

    def child():
        settings_now = before() if before else settings
        # Built before FUSE starts (this process is already the detached
        # child): a cache owned by another daemon is refused here with a
        # clear CacheLocked message. No thread starts until the first read.
        fs = EmpiarFS(settings_now, previewer=_preview_png)
        try:
            run_fuse(lambda: fs, mountpoint, settings_now, foreground_debug=debug)
        finally:
            fs.close()

    if foreground:
        child()
        return
    log_file = os.path.join(settings.cache_dir, "logs", f"mount-{int(time.time())}.log")
    pid = daemonize_and_mount(child, mountpoint, log_file)
    click.echo(f"empiarfs: mounted {source or settings.data_url} at {mountpoint} "
               f"(pid {pid}, log {log_file})")
    click.echo(f"empiarfs: unmount with: empiarfs umount {mountpoint}")


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--source", default=None, hidden=True,
              help="The first field of an fstab line (given by mount.fuse3; not used).")
@archive_options
@cache_options
@click.pass_context
def mount(ctx, mountpoint, foreground, nonempty, options, source, **kw):
    """Mount the whole EMPIAR archive read-only at MOUNTPOINT.

    \b
    Examples:
      empiarfs mount /mnt/empiar
      ls /mnt/empiar/EMPIAR-10002/data | head
      python -c "import mrcfile; print(mrcfile.open('/mnt/empiar/EMPIAR-10002/data/100_movie_gc.mrcs', header_only=True).header.nx)"
      empiarfs mount --cache-size 200G --memory-cache 4G /mnt/empiar
      empiarfs mount /mnt/empiar -o allow_other,cache_size=200G
      empiarfs umount /mnt/empiar

    \b
    From fstab or mount(8) (empiarfs must be on root's default PATH):
      empiarfs  /mnt/empiar  fuse.empiarfs  ro,allow_other,cache_size=200G  0 0
      mount -t fuse.empiarfs empiarfs /mnt/empiar -o allow_other
    """
    settings, flags = _settings(ctx, options, **kw)
    _serve_mount(settings, mountpoint, foreground or flags.get("foreground", False),
                 ctx.obj.get("verbose", 0) >= 3, nonempty=nonempty or flags.get("nonempty", False))


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
def umount(mountpoint, lazy):
    """Unmount an empiarfs mount.

    \b
    Example:
      empiarfs umount /mnt/empiar
    """
    from empiarfs.fuse.mount import unmount

    unmount(mountpoint, lazy=lazy)
    click.echo(f"empiarfs: unmounted {mountpoint}")


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Where to generate the sample archive (default: CACHE_DIR/demo-archive).")
@click.option("--many-files", type=int, default=3000, show_default=True,
              help="Number of small files in the large-directory entry.")
@cache_options
@click.pass_context
def demo(ctx, mountpoint, root, many_files, foreground, nonempty, options, **kw):
    """Generate the built-in sample archive, serve it on loopback and mount it.

    Works without internet. The sample has real MRC/MRCS, STAR, TIFF and
    .bz2 files, names with spaces and commas and a 3,000-file directory.

    \b
    Example:
      empiarfs demo /tmp/empiar
      ls -l /tmp/empiar/EMPIAR-10002/data
      empiarfs umount /tmp/empiar
    """
    from empiarfs.archive_server.sample import make_sample

    settings, flags = _settings(ctx, options, **kw)
    foreground = foreground or flags.get("foreground", False)
    nonempty = nonempty or flags.get("nonempty", False)
    if "cache_dir" not in flags["given"]:
        settings = settings.replace(cache_dir=os.path.join(settings.cache_dir, "demo"))
    # Checked before the sample is made, which takes a while.
    from empiarfs.fuse.mount import check_mountpoint
    from empiarfs.namespace.filesystem import check_cache_dir

    if not os.path.lexists(mountpoint):
        os.makedirs(mountpoint)  # a demo should run as its help shows it
    check_mountpoint(mountpoint, nonempty=nonempty)
    check_cache_dir(settings.cache_dir)
    root = root or os.path.join(settings.cache_dir, "demo-archive")
    if not os.path.exists(os.path.join(root, "manifest.json")):
        click.echo(f"empiarfs: generating the sample archive in {root} ...")
        make_sample(root, many_files=many_files)

    def start_server():
        # Runs in the daemon child: the server's threads must start after fork.
        from empiarfs.archive_server import ArchiveServer

        server = ArchiveServer(root, ftp=True)
        server.start()
        logging.getLogger(__name__).warning("demo archive served at %s", server.url)
        return settings.replace(api_url=server.api_url, data_url=server.data_url,
                                ftp_url=server.ftp_url or "")

    _serve_mount(settings, mountpoint, foreground, False, before=start_server,
                 source=f"the sample archive in {root}", nonempty=nonempty)


@main.command()
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def stats(mountpoint, as_json):
    """Show a live mount's counters: requests, bytes fetched, cache use.

    \b
    Example:
      empiarfs stats /mnt/empiar
    """
    path = os.path.join(mountpoint, ".empiarfs", "stats.json")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as exc:
        raise InvalidInput(f"{mountpoint} is not an empiarfs mount ({exc.strerror})") from None
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON ({exc})") from None
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    net, reader = data.get("network", {}), data.get("reader", {})
    mem, disk = data.get("memory_cache", {}), data.get("disk_cache", {})
    click.echo(f"archive:       {data.get('settings', {}).get('data_url')}")
    click.echo(f"uptime:        {data.get('uptime')} s")
    click.echo(f"requests:      {net.get('requests', 0)} (retries {net.get('retries', 0)}, "
               f"hedges {net.get('hedges', 0)}, errors {net.get('errors', 0)})")
    click.echo(f"bytes fetched: {human(reader.get('bytes_fetched', 0))}")
    click.echo(f"hits:          memory {reader.get('hits_memory', 0)}, disk {reader.get('hits_disk', 0)}, "
               f"misses {reader.get('misses', 0)}")
    click.echo(f"memory cache:  {_usage(mem)}")
    if disk:
        click.echo(f"disk cache:    {_usage(disk)}")
    errors = data.get("last_errors") or []
    click.echo(f"last errors:   {'none' if not errors else ''}".rstrip())
    for error in errors:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(error.get("time", 0)))
        count = error.get("count", 1)
        click.echo(f"  {when}  {error.get('op')} {error.get('path')}: {error.get('reason')}"
                   f" ({error.get('error')}{f', {count} times' if count > 1 else ''})")


def _usage(cache: dict) -> str:
    """``12.0 MiB of 1.0 GiB (1.2%)``."""
    used, bound = cache.get("bytes_used", 0), cache.get("max_bytes", 0)
    pct = f" ({100 * used / bound:.1f}%)" if bound else ""
    return f"{human(used)} of {human(bound)}{pct}"
