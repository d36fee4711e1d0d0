"""``empiarfs preview``: a PNG of a frame, or a montage of frames."""

from __future__ import annotations

import click

from empiarfs.cli import archive_options, main, settings_from
from empiarfs.errors import InvalidInput


def parse_frames(text: str):
    """``"3"`` -> 3, ``"0:8"`` / ``"::4"`` -> a slice, ``"1,5,-1"`` -> a list.

    Raises
    ------
    InvalidInput
        Anything else.
    """
    spec = text.strip()
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) > 3:
                raise ValueError
            return slice(*(int(p) if p.strip() else None for p in parts))
        if "," in spec:
            return [int(p) for p in spec.split(",")]
        return int(spec)
    except ValueError:
        raise InvalidInput(f"--frames {text!r}: use an index (3), a range (0:8, ::4) or a "
                           "list (0,5,11)") from None


def parse_percentiles(text: str) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise InvalidInput(f"--percentiles {text!r}: use LOW,HIGH, e.g. 1,99") from None
    return low, high


@main.command("preview")
@click.argument("path")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Picture to write (PNG).")
@click.option("-f", "--frames", default=None, metavar="SPEC",
              help="Frames to show: 3, 0:8, ::4 or 0,5,11 (files, for a directory). "
                   "Default: the first.")
@click.option("-n", "--count", type=click.IntRange(1, 400), default=None,
              help="Show N frames spread evenly from the first to the last.")
@click.option("--size", type=click.IntRange(16, 16384), default=512, show_default=True,
              help="Width of the picture in pixels.")
@click.option("--columns", type=click.IntRange(1, 100), default=None,
              help="Tiles per row (default: a near-square grid).")
@click.option("--percentiles", default="1,99", show_default=True, metavar="LOW,HIGH",
              help="Contrast: these percentiles of the shown pixels become black and white.")
@click.option("--eer-grouping", type=click.IntRange(1), default=1, show_default=True,
              help="EER movies: show fractions of N detector frames summed.")
@archive_options
@click.pass_context
def preview_cmd(ctx, path, output, frames, count, size, columns, percentiles, eer_grouping,
                api_url, data_url, ftp_url):
    """Render a frame, or a montage of frames, of an image file or image set.

    PATH is a local or mounted file or directory, EMPIAR-N/... or
    empiar://EMPIAR-N/... (MRC, MRCS, TIFF, EER, also .bz2). Only the frames
    shown are read.

    \b
    Examples:
      empiarfs preview EMPIAR-10002/data/100_movie_gc.mrcs -o movie.png
      empiarfs preview empiar://EMPIAR-10002/data/103_movie_gc.mrcs -n 9 -o montage.png
      empiarfs preview /mnt/empiar/EMPIAR-11419/imagesets/Cryo* -n 6 --size 1024 -o set.png
      empiarfs preview EMPIAR-10934/data/EER/x.eer --eer-grouping 10 -f 0:4 -o eer.png
    """
    from empiarfs.pyapi import api
    from empiarfs.tools.preview import preview

    spec = parse_frames(frames) if frames is not None else None
    low_high = parse_percentiles(percentiles)
    fs = None
    if api.archive_path(path) is not None:
        from empiarfs.namespace.filesystem import EmpiarFS

        settings = settings_from(ctx.obj, api_url=api_url, data_url=data_url, ftp_url=ftp_url)
        fs = EmpiarFS(settings, require_disk_cache=False)
    try:
        image = preview(path, frames=spec, count=count, out=output, size=size, columns=columns,
                        percentiles=low_high, eer_grouping=eer_grouping, fs=fs)
    finally:
        if fs is not None:
            fs.close()
    click.echo(f"wrote {output} ({image.width} x {image.height})", err=True)
