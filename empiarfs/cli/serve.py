"""``empiarfs serve`` (an EMPIAR-compatible server on a local tree) and
``empiarfs sample`` (write the deterministic sample archive)."""

from __future__ import annotations

import signal
import threading

import click

from empiarfs.cli import main
from empiarfs.config import parse_size


@main.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="HTTP port (0 = any free).")
@click.option("--ftp-port", default=None, type=int, help="Also serve anonymous FTP on this port (0 = any free).")
@click.option("--rate", default=None, metavar="SIZE", help="Per-connection body rate, e.g. 1.5M (bytes/s).")
@click.option("--latency", default=0.0, type=float, help="Seconds added before each response.")
@click.option("--stall", default=0.0, type=float, help="Probability a request is accepted and never answered.")
@click.option("--stall-seconds", default=300.0, type=float, show_default=True, help="How long a stall holds.")
@click.option("--truncate", default=0.0, type=float, help="Probability a body is cut midway.")
@click.option("--omit", multiple=True, metavar="NAME", help="Leave NAME out of listings (repeatable).")
@click.option("--cut", default=0.0, type=float,
              help="Probability a reply (file, HEAD, listing, JSON) is cut short, headers included.")
@click.option("--cut-where", default=None, metavar="PLACES",
              help="Where cuts fall, comma-separated: status, header_line, header_value, "
                   "after_headers, body (default: all).")
@click.option("--cut-headers", default=None, metavar="NAMES",
              help="Headers a header_value cut may split: ETag, Content-Length, Content-Range, "
                   "Last-Modified (default: all).")
@click.option("--lie", default=0.0, type=float, help="Probability a reply lies (see --lie-kinds).")
@click.option("--lie-kinds", default=None, metavar="KINDS",
              help="Lies told, comma-separated: malformed_etag, duplicate_etag, malformed_length, "
                   "range_length_mismatch, http10_close, whole_200 (default: all).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the fault draws.")
def serve(root, host, port, ftp_port, rate, latency, stall, stall_seconds, truncate, omit,
          cut, cut_where, cut_headers, lie, lie_kinds, seed):
    """Serve ROOT (api/, world_availability/) like EMPIAR, until Ctrl-C.

    \b
    Example (EBI-like conditions):
      empiarfs sample /tmp/empiar-sample
      empiarfs serve /tmp/empiar-sample --ftp-port 2121 --rate 1.5M --stall 0.033
    Replies cut anywhere, 1 in 20 (a flaky proxy):
      empiarfs serve /tmp/empiar-sample --cut 0.05 --stall 0.033
    """
    from empiarfs.archive_server import ArchiveServer, Faults

    knobs = dict(rate=float(parse_size(rate)) if rate else 0.0, latency=latency,
                 stall_probability=stall, stall_seconds=stall_seconds,
                 truncate_probability=truncate, omit_from_listing=set(omit),
                 cut_probability=cut, lie_probability=lie)
    for name, value in (("cut_where", cut_where), ("cut_headers", cut_headers), ("lie_kinds", lie_kinds)):
        if value is not None:
            knobs[name] = value
    try:
        faults = Faults(seed=seed, **knobs)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    server = ArchiveServer(root, host=host, port=port, faults=faults,
                           ftp=ftp_port is not None, ftp_port=ftp_port or 0)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with server:
        click.echo(f"API:  {server.api_url}")
        click.echo(f"Data: {server.data_url}")
        if server.ftp_url:
            click.echo(f"FTP:  {server.ftp_url}")
        ftp_opt = f" --ftp-url {server.ftp_url}" if server.ftp_url else " --ftp-url ''"
        click.echo(f"Use:  empiarfs COMMAND --api-url {server.api_url} --data-url {server.data_url}{ftp_opt} ...")
        click.echo(f"      (or EMPIARFS_API_URL={server.api_url} EMPIARFS_DATA_URL={server.data_url} "
                   f"EMPIARFS_FTP_URL={server.ftp_url or ''})")
        click.echo("Ctrl-C to stop.")
        while not done.wait(0.5):
            pass
    click.echo("stopped.")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--many-files", default=3000, show_default=True, type=int,
              help="Small TIFFs in EMPIAR-10943/data/Tiff.")
@click.option("--large", default=None, metavar="SIZE", help="Also write a large MRCS of SIZE, e.g. 1G.")
def sample(directory, seed, many_files, large):
    """Write the deterministic sample archive into DIRECTORY."""
    from empiarfs.archive_server.sample import make_sample

    manifest = make_sample(directory, seed=seed, many_files=many_files,
                           large_size=parse_size(large) if large else 0)
    total = sum(f["size"] for f in manifest["files"])
    click.echo(f"{len(manifest['files'])} files, {total} bytes, entries: {', '.join(manifest['accessions'])}")
    click.echo(f"serve it with: empiarfs serve {directory}")
