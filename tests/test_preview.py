"""Previews: PNGs that Pillow decodes, of the expected size, made from the
frames shown and nothing else (byte counters of the block reader), with
robust contrast; the CLI writes the same and reports bad input in a line."""

from __future__ import annotations

import os

import mrcfile
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from support.archive import blocks_covering, counting_fs, env_for, fetched, source

import empiarfs
from empiarfs.archive_server.sample import EER_MOVIE
from empiarfs.cli import main
from empiarfs.errors import InvalidInput, NotFound
from empiarfs.tools.preview import render, spread

BLOCK = 64 * 1024
STACK = "EMPIAR-10002/data/103_movie_gc.mrcs"   # 12 x 256 x 256 int16, FEI1 extended header
SEM = "EMPIAR-11419/data/HeLa/Raw SEM images"   # 5 slices 96 x 128 and a 64 x 64 overview


@pytest.fixture
def efs(archive_server, tmp_path):
    with counting_fs(archive_server, tmp_path, BLOCK) as fs:
        yield fs


def test_montage_png_size_and_only_the_shown_frames_fetched(efs, sample_root, tmp_path):
    out = tmp_path / "m.png"
    image = empiarfs.preview("empiar://" + STACK, frames=[0, 5, 11], out=out, fs=efs)
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG" and png.mode == "L"
        # 3 tiles: a 2 x 2 grid of 255-pixel cells with a 2-pixel gap.
        assert png.size == image.size == (512, 512)
        pixels = np.asarray(png)
    assert (pixels[256:, 257:] == 32).all()          # the fourth cell stays empty
    assert pixels[:255, :255].std() > 20             # a frame, not a flat grey

    with mrcfile.open(source(sample_root, STACK), header_only=True) as ref:
        start = 1024 + int(ref.header.nsymbt)
    frame = 256 * 256 * 2
    needed = blocks_covering(BLOCK, (0, start), *[(start + i * frame, start + (i + 1) * frame)
                                           for i in (0, 5, 11)])
    assert 0 < fetched(efs) <= needed
    assert fetched(efs) < os.path.getsize(source(sample_root, STACK)) / 2


def test_count_spreads_frames_and_size_sets_the_width(efs, tmp_path):
    image = empiarfs.preview(STACK, count=4, size=300, fs=efs)
    assert image.size == (300, 300)   # 2 x 2 cells of 149 + gap 2
    assert spread(4, 12) == [0, 4, 7, 11] and spread(20, 3) == [0, 1, 2] and spread(1, 9) == [0]
    wide = empiarfs.preview(STACK, frames=slice(0, 3), columns=3, size=304, fs=efs)
    assert wide.size == (304, 100)    # one row of three 100-pixel cells, two gaps


def test_eer_fractions_and_image_sets(sample_root, tmp_path):
    eer = empiarfs.preview(source(sample_root, f"EMPIAR-10934/{EER_MOVIE}"), frames=[0, 1],
                           eer_grouping=20, columns=2, size=258)
    assert eer.size == (258, 128)
    # Different frame shapes in one image set: each fitted into its cell.
    sem = empiarfs.preview(source(sample_root, SEM), count=6, size=388, out=tmp_path / "s.png")
    assert sem.size == (388, 194)     # 3 x 2 cells of 128 x 96; the overview is last
    overview = np.asarray(sem)[96 + 2:, 2 * 130:]
    assert (overview[:, :16] == 32).all() and overview[:, 40:80].std() > 20


def test_robust_contrast_ignores_a_hot_pixel(tmp_path):
    frame = np.random.default_rng(0).normal(100, 10, size=(64, 64)).astype(np.float32)
    frame[3, 3] = 1e9
    grey = np.asarray(render([frame], size=64))
    assert grey.std() > 40                       # min-max scaling would give all black
    assert (grey == 0).mean() < 0.05 and (grey == 255).mean() < 0.05
    flat = np.asarray(render([np.zeros((8, 8), np.float32)], size=16))
    assert flat.shape == (16, 16) and len(np.unique(flat)) == 1


def test_bad_input_is_one_clear_error(efs, tmp_path):
    with pytest.raises(InvalidInput, match="either frames or a count"):
        empiarfs.preview(STACK, frames=1, count=2, fs=efs)
    with pytest.raises(InvalidInput, match="frame 12 out of range"):
        empiarfs.preview(STACK, frames=[12], fs=efs)
    with pytest.raises(InvalidInput, match="percentiles"):
        render([np.zeros((4, 4), np.float32)], percentiles=(99, 1))
    with pytest.raises(InvalidInput, match="cannot write a picture in that format"):
        empiarfs.preview(STACK, out=tmp_path / "x.nosuchformat", fs=efs)
    with pytest.raises(NotFound):
        empiarfs.preview("EMPIAR-10002/data/nope.mrcs", fs=efs)


def test_cli_writes_the_png_and_reports_bad_input(archive_server, settings_for, tmp_path):
    env = env_for(settings_for(archive_server, tmp_path))
    run = CliRunner()
    out = tmp_path / "cli.png"
    result = run.invoke(main, ["preview", "empiar://" + STACK, "-n", "9", "--size", "256",
                               "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (256 x 256)" in result.stderr
    with Image.open(out) as png:
        assert png.size == (256, 256)
    result = run.invoke(main, ["preview", SEM, "-f", "0,2", "-o", str(tmp_path / "s.png")],
                        env=env)
    assert result.exit_code == 0, result.output
    for args, message in [
        (["-f", "a:b"], "--frames 'a:b': use an index"),
        (["--percentiles", "1"], "--percentiles '1': use LOW,HIGH"),
        (["-f", "40"], "frame 40 out of range"),
    ]:
        result = run.invoke(main, ["preview", STACK, *args, "-o", str(out)], env=env)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
