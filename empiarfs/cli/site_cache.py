"""``empiarfs site-cache``: an nginx site cache for a cluster of nodes."""

from __future__ import annotations

import sys

import click

from empiarfs.cli import main


@main.command("site-cache")
@click.option("--listen", required=True, metavar="HOST:PORT",
              help="Address nginx listens on, e.g. 0.0.0.0:3128.")
@click.option("--cache-dir", required=True, metavar="DIR",
              help="Absolute directory for the cache, its configuration and temporary files.")
@click.option("--max-size", required=True, metavar="SIZE",
              help="Largest size of the cache on disk, e.g. 200G.")
@click.option("--upstream", default=None, metavar="URL",
              help="A mirror serving /empiar/api/ and /empiar/world_availability/ "
                   "(default: EMPIAR itself, over HTTPS).")
@click.option("--slice-size", default="1M", show_default=True, metavar="SIZE",
              help="Ranges are fetched and cached as aligned slices of this size.")
@click.option("--ttl", default="300", show_default=True, metavar="SECONDS",
              help="How long API records, listings, HEADs and unversioned data are trusted "
                   "(5m, 1h also work).")
@click.option("--user", default=None, metavar="NAME",
              help="User of nginx's workers when started as root (nginx's default: nobody).")
@click.option("--access-log", default=None, metavar="FILE",
              help="Log each request with its cache status (HIT, MISS...) to FILE.")
@click.option("--run", "run_", is_flag=True,
              help="Start nginx in the foreground with the configuration (until SIGTERM) "
                   "instead of printing it.")
def site_cache(listen, cache_dir, max_size, upstream, slice_size, ttl, user, access_log, run_):
    """Write an nginx configuration for a site cache in front of EMPIAR.

    One cache host keeps the bytes every node reads, so a cluster fetches
    each file from the archive once: simultaneous misses are collapsed into
    one request, ranges are cached as fixed slices, and a file changed at
    the archive is never served as a mix of versions. Each node then needs
    one line of configuration, ``site_cache = http://HOST:PORT``
    (docs/site-cache.md).

    \b
    Examples:
      empiarfs site-cache --listen 0.0.0.0:3128 --cache-dir /var/cache/empiarfs-site \\
          --max-size 200G > /etc/nginx/empiarfs-site.conf
      empiarfs site-cache --listen 0.0.0.0:3128 --cache-dir /var/cache/empiarfs-site \\
          --max-size 200G --run
    """
    from empiarfs.tools import site_cache as tool

    opts = tool.options(listen, cache_dir, max_size, upstream, slice_size=slice_size, ttl=ttl,
                        user=user, access_log=access_log)
    if not run_:
        click.echo(tool.render(opts), nl=False)
        return
    click.echo(tool.describe(opts), err=True)
    code = tool.run(opts)
    if code:
        click.echo(f"empiarfs: error: nginx exited with status {code}", err=True)
    sys.exit(code)
