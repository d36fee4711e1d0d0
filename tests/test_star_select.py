"""Select and prefetch by a RELION STAR file (issue 15, part 2), against
the sample archive's ``EMPIAR-10002/data/particles.star`` on the project's
server: ``cache prefetch --star`` fetches the referenced frames and the
stacks' headers and nothing else, after which the API reads them with no
request; ``get --star`` downloads the referenced files; references that do
not resolve are listed with exit code 1; ``EmpiarDataset.from_star`` and
``to_dask`` yield the referenced frames."""

from __future__ import annotations

import hashlib
import json
import os

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from click.testing import CliRunner
from support.archive import env_for
from support.mounting import mounted, requires_fuse

import empiarfs
from empiarfs.archive_server.sample import PARTICLES, PARTICLES_STAR
from empiarfs.cli import main
from empiarfs.errors import BadFile, InvalidInput, NotFound
from empiarfs.namespace.filesystem import EmpiarFS
from empiarfs.namespace.star_refs import Place, listing_of, plan_star
from empiarfs.pyapi.dataset import EmpiarDataset
from empiarfs.ranges import merge, of_blocks, total

BLOCK = 64 * 1024
STAR = f"EMPIAR-10002/{PARTICLES_STAR}"


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path, block_size=BLOCK, max_request=256 * 1024)


@pytest.fixture
def run(settings):
    env = env_for(settings)

    def invoke(*args):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return invoke


def source(sample_root, rel):
    return os.path.join(sample_root, "world_availability", "10002", *rel.split("/"))


def layout(sample_root, rel):
    """(header bytes, frame bytes, frames) of a sample stack, by mrcfile."""
    with mrcfile.open(source(sample_root, rel), permissive=False) as mrc:
        return 1024 + int(mrc.header.nsymbt), mrc.data[0].nbytes, mrc.data.shape[0]


def wanted(sample_root):
    """Per stack: the header and the referenced frames, merged byte ranges."""
    frames = {}
    for stack, k in PARTICLES:
        frames.setdefault(stack, set()).add(k - 1)
    out = {}
    for stack, ks in frames.items():
        head, fb, _ = layout(sample_root, stack)
        out[stack] = merge([(0, head)] + [(head + k * fb, head + (k + 1) * fb) for k in ks])
    return out


def blocks_of(spans, size):
    """The cache blocks (64 KiB) that cover ``spans``, as merged ranges."""
    touched = {i for s, e in spans for i in range(s // BLOCK, (e - 1) // BLOCK + 1)}
    return of_blocks(touched, BLOCK, size)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_sample_star_resolves_to_its_stacks_and_frames(settings):
    with EmpiarFS(settings, require_disk_cache=False) as fs, fs.open(STAR) as handle:
        plan = plan_star(handle, Place.archive(STAR), listdir=listing_of(fs))
    # Relative to the entry root, a parent of the STAR file's directory.
    assert plan.columns == ("rlnImageName",) and not plan.unresolved
    assert [(r.place.path, r.frame + 1) for r in plan.refs] == list(PARTICLES)
    assert plan.frames == {Place("EMPIAR-10002", s): sorted({k - 1 for t, k in PARTICLES if t == s})
                           for s, _ in PARTICLES}
    assert plan.whole == [] and all(r.size > 0 for r in plan.refs)

    entry = Place("EMPIAR-10002", "data")
    assert entry.join("../10002.xml") == Place("EMPIAR-10002", "10002.xml")
    with pytest.raises(InvalidInput, match="climbs out of EMPIAR-10002"):
        entry.join("../../x.mrcs")
    with pytest.raises(InvalidInput, match="not absolute"):
        entry.join("/data/x.mrcs")


def test_prefetch_fetches_only_frames_and_headers_then_reads_need_no_request(
        run, settings, sample_root, manifest):
    done = run("cache", "prefetch", "--star", STAR, "--json", "--pin")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output)
    sizes = {f["path"]: f["size"] for f in manifest["files"] if f["entry"] == "EMPIAR-10002"}
    spans = wanted(sample_root)
    expected = {s: blocks_of(r, sizes[s]) for s, r in spans.items()}
    assert summary["stacks"] == 3 and summary["frames"] == 9 and summary["whole_files"] == 0
    assert summary["bytes"] == sum(total(r) for r in spans.values())
    # Exactly the blocks holding the headers and referenced frames: no
    # read-ahead, no whole stacks (they are 4.6 MB; this is 1.5 MB).
    assert summary["bytes_fetched"] == sum(total(r) for r in expected.values())
    assert summary["bytes_fetched"] < sum(sizes[s] for s in spans) / 2
    assert summary["unresolved"] == [] and summary["references"] == len(PARTICLES)
    cached = {f["path"].split("/", 1)[1]: f["cached"] for f in
              json.loads(run("cache", "ls", "--json").output)}
    assert cached == {**{s: total(r) for s, r in expected.items()},
                      PARTICLES_STAR: sizes[PARTICLES_STAR]}
    assert json.loads(run("cache", "info", "--json").output)["pinned_files"] == 3
    again = run("cache", "prefetch", "--star", STAR)
    assert again.exit_code == 0 and "cached 3 files (9 frames of 3 stacks with their " \
        "headers, 0 whole), 1.4 MiB (0 B fetched)" in again.output, again.output

    ds = EmpiarDataset.from_star(f"empiar://{STAR}", settings=settings)
    try:
        for item, (stack, k) in zip(ds, PARTICLES):
            with mrcfile.open(source(sample_root, stack)) as mrc:
                np.testing.assert_array_equal(item, mrc.data[k - 1])
        network = ds._open_fs().transport.stats.snapshot()
        assert network["requests"] == 0, network
    finally:
        ds.close()


def test_get_by_star_downloads_the_referenced_files(run, sample_root, manifest, tmp_path,
                                                   monkeypatch):
    out = tmp_path / "out"
    got = run("get", "--star", STAR, "-o", str(out), "--json")
    assert got.exit_code == 0, got.output
    summary = json.loads(got.output)
    assert summary["downloaded"] == 3 and summary["unresolved"] == []
    stacks = sorted({s for s, _ in PARTICLES})
    assert sorted(p.name for p in (out / "EMPIAR-10002" / "data").iterdir()) == \
        [s.split("/")[1] for s in stacks]
    for stack in stacks:
        assert sha(out / "EMPIAR-10002" / stack) == sha(source(sample_root, stack))

    # A local STAR file with its project root in the archive (named as the
    # local copy in the working directory is); whole files by another column.
    monkeypatch.chdir(out)
    starfile.write({"micrographs": pd.DataFrame(
        {"rlnMicrographName": ["data/105_movie_gc.mrcs"],
         "rlnMicrographMovieName": ["data/106_movie_gc.mrcs"]})}, tmp_path / "mics.star")
    other = tmp_path / "other"
    plan = run("get", "--star", str(tmp_path / "mics.star"), "--root", "EMPIAR-10002",
               "--column", "rlnMicrographMovieName", "-o", str(other), "--dry-run")
    assert plan.exit_code == 0 and "EMPIAR-10002/data/106_movie_gc.mrcs" in plan.output
    assert "105_movie_gc" not in plan.output and not other.exists()
    local = run("get", "--star", str(tmp_path / "mics.star"), "-o", str(other))
    assert local.exit_code == 1 and "give --root EMPIAR-N/DIR" in local.output


def test_unresolvable_references_are_listed_with_exit_code_1(run, tmp_path):
    rows = ["2@data/101_movie_gc.mrcs",        # resolves
            "1@data/nope.mrcs",                # no such file
            "data/101_movie_gc.mrcs",          # not index@stack
            "1@../../x.mrcs",                  # climbs out of the entry
            "1@/abs/x.mrcs",                   # absolute
            "13@data/101_movie_gc.mrcs"]       # beyond its 12 frames
    rows += [f"1@data/gone_{i}.mrcs" for i in range(20)]
    starfile.write({"particles": pd.DataFrame({"rlnImageName": rows})}, tmp_path / "p.star")
    star = str(tmp_path / "p.star")

    got = run("get", "--star", star, "--root", "EMPIAR-10002", "-o", str(tmp_path / "out"))
    assert got.exit_code == 1
    assert (tmp_path / "out" / "EMPIAR-10002" / "data" / "101_movie_gc.mrcs").is_file()
    lines = [ln for ln in got.output.splitlines() if ln.startswith("unresolved: ")]
    assert len(lines) == 20 and "... and 5 more" in got.output
    assert "25 of 26 references in" in got.output and "do not resolve" in got.output
    text = "\n".join(lines)
    assert "row 2: rlnImageName '1@data/nope.mrcs': no such file (looked for " \
           "EMPIAR-10002/data/nope.mrcs)" in text
    assert "row 3: rlnImageName 'data/101_movie_gc.mrcs': not 'index@stack'" in text
    assert "row 4: rlnImageName '1@../../x.mrcs': climbs out of EMPIAR-10002" in text
    assert "row 5: rlnImageName '1@/abs/x.mrcs': path must be relative" in text
    # Known once the stack is here, yet listed in row order.
    assert ("row 6: rlnImageName '13@data/101_movie_gc.mrcs': image 13 of "
            "EMPIAR-10002/data/101_movie_gc.mrcs, which has 12") in text

    pre = run("cache", "prefetch", "--star", star, "--root", "EMPIAR-10002", "--json")
    assert pre.exit_code == 1
    summary = json.loads(pre.output.split("\nunresolved: ")[0])
    assert summary["frames"] == 1 and len(summary["unresolved"]) == 25
    assert summary["unresolved"][4]["reason"].startswith("image 13 of")

    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@data/nope.mrcs"]})},
                   tmp_path / "none.star")
    none = run("get", "--star", str(tmp_path / "none.star"), "--root", "EMPIAR-10002",
               "-o", str(tmp_path / "out"))
    assert none.exit_code == 1 and "no reference of" in none.output
    assert run("get", "10002", "--star", star).exit_code == 2
    assert run("cache", "prefetch", "--root", "EMPIAR-10002").exit_code == 2


def test_dataset_and_dask_yield_the_referenced_frames(settings, sample_root, tmp_path):
    ds = EmpiarDataset.from_star(f"empiar://{STAR}", settings=settings)
    try:
        assert len(ds) == len(PARTICLES)
        assert ds.items[1].path == "empiar://EMPIAR-10002/data/103_movie_gc.mrcs"
        assert ds.items[1].frame == 6
        expected = []
        for stack, k in PARTICLES:
            with mrcfile.open(source(sample_root, stack)) as mrc:
                expected.append(mrc.data[k - 1].astype(np.float32))
        np.testing.assert_array_equal(np.stack([ds[i] for i in range(len(ds))]), expected)
        whole = EmpiarDataset.from_star(f"empiar://{STAR}", columns="rlnMicrographName",
                                        settings=settings)
        assert [(i.path.rsplit("/", 1)[1], i.frame) for i in whole.items[:2]] == \
            [("100_movie_gc.mrcs", None), ("103_movie_gc.mrcs", None)]
    finally:
        ds.close()
    stack = empiarfs.to_dask(f"empiar://{STAR}", frames_per_chunk=4, settings=settings)
    assert stack.shape == (9, 256, 256) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack.compute(scheduler="synchronous"), expected)

    starfile.write({"particles": pd.DataFrame({"rlnImageName": ["1@data/nope.mrcs",
                                                                "2@data/100_movie_gc.mrcs"]})},
                   tmp_path / "p.star")
    with pytest.raises(NotFound, match="1 of 2 references .* no such file"):
        EmpiarDataset.from_star(str(tmp_path / "p.star"), root="EMPIAR-10002", settings=settings)
    with pytest.raises(BadFile, match="no column of image references"):
        EmpiarDataset.from_star("empiar://EMPIAR-11561/data/211206/tomograms/211206.star",
                                settings=settings)
    with pytest.raises(InvalidInput, match="has no rlnMicrographMovieName column"):
        EmpiarDataset.from_star(f"empiar://{STAR}", columns="rlnMicrographMovieName",
                                settings=settings)


@requires_fuse
def test_get_by_star_on_a_mount(run, settings, sample_root, tmp_path):
    with mounted(settings.replace(cache_dir=str(tmp_path / "mcache")), tmp_path / "mnt") as mnt:
        star = os.path.join(mnt, "EMPIAR-10002", PARTICLES_STAR)
        got = run("get", "--star", star, "-o", str(tmp_path / "out"), "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["downloaded"] == 3
    for stack in {s for s, _ in PARTICLES}:
        assert sha(tmp_path / "out" / "EMPIAR-10002" / stack) == sha(source(sample_root, stack))
