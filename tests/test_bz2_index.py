""".bz2 files read in place: the block index is kept in the cache directory
after a pass that read most of a file (or built by `cache prefetch
--index`), and then a late frame fetches and decompresses only the bzip2
blocks that hold it. Against the project's server on a private archive
whose .bz2 files have many bzip2 blocks."""

from __future__ import annotations

import bz2
import io
import json
import os

import mrcfile
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from support.archive import env_for
from support.mounting import mounted, requires_fuse

import empiarfs
from empiarfs.archive_server import ArchiveServer
from empiarfs.archive_server.sample import make_sample
from empiarfs.cli import main
from empiarfs.errors import BadFile
from empiarfs.formats.bz2 import RandomBz2, build_index, decode_offsets, encode_offsets
from empiarfs.formats.bz2_index import IndexStore, key_for_local, key_for_remote
from empiarfs.namespace.filesystem import EmpiarFS
from empiarfs.pyapi import api

BLOCK = 4096
FRAMES, SIDE = 40, 384
MRCS = "EMPIAR-10002/data/bz2/stack.mrcs.bz2"
TIFF = "EMPIAR-10002/data/bz2/movie.tiff.bz2"
# Where indexed_bzip2 (1.7) starts decoding, it reads up to three pieces
# of 128 KiB of compressed input, whatever the block needs.
READ_AHEAD = 3 * 128 * 1024


def _frames(seed, dtype):
    # Counts around 60: about half of the bytes survive compression, so a
    # bzip2 block holds ~50 kB compressed, as noisy movies do.
    return np.random.default_rng(seed).poisson(60, size=(FRAMES, SIDE, SIDE)).astype(dtype)


@pytest.fixture(scope="module")
def bz2_archive(tmp_path_factory):
    """A small sample archive plus two .bz2 files of ~50 bzip2 blocks each
    (level 1: 100 kB blocks), served by the project's server."""
    root = tmp_path_factory.mktemp("bz2-archive")
    make_sample(root, many_files=0)
    data = os.path.join(root, "world_availability", "10002", "data", "bz2")
    os.makedirs(data)
    stack = _frames(1, np.int16)
    with mrcfile.new(os.path.join(data, "stack.mrcs")) as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
    with open(os.path.join(data, "stack.mrcs"), "rb") as fh:
        raw_mrcs = fh.read()
    os.unlink(os.path.join(data, "stack.mrcs"))
    movie = _frames(2, np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, movie, photometric="minisblack", software=False, metadata=None)
    for name, raw in (("stack.mrcs.bz2", raw_mrcs), ("movie.tiff.bz2", buf.getvalue())):
        with open(os.path.join(data, name), "wb") as fh:
            fh.write(bz2.compress(raw, 1))
    with ArchiveServer(root) as server:
        server.stack, server.movie, server.root = stack, movie, str(root)
        yield server


def local(server, archive_path):
    acc, rel = archive_path.split("/", 1)
    return os.path.join(server.root, "world_availability", acc.split("-")[1], *rel.split("/"))


def new_fs(server, cache_dir, settings_for, **overrides):
    # Small blocks and no read-ahead: the byte counter shows what a read needed.
    values = dict(block_size=BLOCK, readahead=0)
    values.update(overrides)
    settings = settings_for(server, cache_dir, **values)
    return EmpiarFS(settings)


def fetched(fs) -> int:
    return fs.stats()["reader"]["bytes_fetched"]


def compressed_span(offsets: dict, start: int, end: int, size: int) -> int:
    """Compressed bytes of the bzip2 blocks holding decompressed [start, end)."""
    bits = sorted(offsets)
    firsts = [offsets[b] for b in bits]
    i = max(0, np.searchsorted(firsts, start, side="right") - 1)
    j = np.searchsorted(firsts, end, side="left")
    stop_bits = bits[j] if j < len(bits) else 8 * size
    return (stop_bits - bits[i]) // 8 + 1


# ------------------------------------------------------------ pure parts

def test_offsets_encode_decode_and_reject_junk():
    offsets = {32: 0, 800_000: 900_000, 1_700_000: 1_800_000}
    assert decode_offsets(encode_offsets(offsets)) == offsets
    for junk in (None, b"", b"BZ2OFFS1" + b"\0" * 15, b"nope" * 8,
                 encode_offsets({32: 10, 16: 0})[:-16] + encode_offsets({8: 0})[8:]):
        assert decode_offsets(junk) is None


def test_index_store_round_trip_corruption_and_bound(tmp_path):
    store = IndexStore(str(tmp_path / "idx"), max_bytes=1000)
    assert store.load_index("u\n1:2") is None
    store.save_index("u\n1:2", b"payload")
    assert store.load_index("u\n1:2") == b"payload"
    assert store.load_index("u\n1:3") is None          # another version of the file
    (path,) = list((tmp_path / "idx").iterdir())
    path.write_bytes(path.read_bytes()[:-1] + b"X")     # flip the checksum
    assert store.load_index("u\n1:2") is None and not path.exists()
    for i in range(20):                                 # 20 x ~100 bytes > 1000
        store.save_index(f"k{i}", b"x" * 60)
    sizes = [p.stat().st_size for p in (tmp_path / "idx").iterdir()]
    assert sum(sizes) <= 1000 and store.load_index("k19") == b"x" * 60
    unwritable = IndexStore("/proc/empiarfs-cannot-write-here")
    unwritable.save_index("k", b"x")                    # best effort: no error
    assert unwritable.load_index("k") is None


def test_local_key_changes_with_the_file(tmp_path):
    f = tmp_path / "a.bz2"
    f.write_bytes(b"1")
    first = key_for_local(str(f))
    f.write_bytes(b"22")
    assert key_for_local(str(f)) != first


# ------------------------------------------------------------ through empiar://

def test_mrcs_bz2_late_frame_reads_only_its_blocks_once_indexed(bz2_archive, settings_for,
                                                                 tmp_path):
    size = os.path.getsize(local(bz2_archive, MRCS))
    frame_bytes = SIDE * SIDE * 2
    # First access, no index: frame 38 streams through everything before it;
    # past half of the file the pass is finished and the index kept.
    with new_fs(bz2_archive, tmp_path, settings_for) as fs:
        np.testing.assert_array_equal(empiarfs.load(MRCS, frames=38, fs=fs),
                                      bz2_archive.stack[38])
        assert fetched(fs) >= size
        node = fs.stat(MRCS)
        key = key_for_remote(node.info.url, node.info.fingerprint.key())
    store = IndexStore.in_cache_dir(str(tmp_path / "cache"))
    offsets = decode_offsets(store.load_index(key))
    assert offsets is not None and len(offsets) > 20

    # Second access of another late frame, with no block cached (disk cache
    # off, fresh memory): only the header's and frame 35's bzip2 blocks.
    with new_fs(bz2_archive, tmp_path, settings_for, cache_size=0) as fs:
        np.testing.assert_array_equal(empiarfs.load(MRCS, frames=[35], fs=fs),
                                      bz2_archive.stack[35:36])
        start = 1024 + 35 * frame_bytes
        # Two places decoded (the header, frame 35): each its blocks plus
        # the reader's pieces beyond them.
        bound = (compressed_span(offsets, 0, 1024, size)
                 + compressed_span(offsets, start, start + frame_bytes, size)
                 + 2 * READ_AHEAD + 2 * BLOCK)
        assert fetched(fs) <= bound
        assert fetched(fs) < size / 4


def test_mrcs_bz2_early_frame_without_index_streams_only_the_start(bz2_archive, settings_for,
                                                                   tmp_path):
    size = os.path.getsize(local(bz2_archive, MRCS))
    with new_fs(bz2_archive, tmp_path, settings_for) as fs:
        np.testing.assert_array_equal(empiarfs.load(MRCS, frames=1, fs=fs), bz2_archive.stack[1])
        assert fetched(fs) < size / 4
    assert not os.path.isdir(tmp_path / "cache" / "bz2-index")  # nothing worth keeping


def test_tiff_bz2_builds_its_index_on_first_read(bz2_archive, settings_for, tmp_path):
    size = os.path.getsize(local(bz2_archive, TIFF))
    with new_fs(bz2_archive, tmp_path, settings_for) as fs:
        np.testing.assert_array_equal(empiarfs.load(TIFF, frames=3, fs=fs), bz2_archive.movie[3])
        assert size <= fetched(fs) <= size + BLOCK   # re-reads of the parallel pass: cache hits
    with open(local(bz2_archive, TIFF), "rb") as fh:
        plain = bz2.decompress(fh.read())
        offsets = build_index(fh, parallelization=1)
    with tifffile.TiffFile(io.BytesIO(plain)) as tif:
        ifds = [tif.pages[i].offset for i in range(35)]
        strips = [(tif.pages[i].dataoffsets[0], tif.pages[i].databytecounts[0])
                  for i in (33, 34)]
    with new_fs(bz2_archive, tmp_path, settings_for, cache_size=0) as fs:
        np.testing.assert_array_equal(empiarfs.load(TIFF, frames=[33, 34], fs=fs),
                                      bz2_archive.movie[33:35])
        # Three places decoded: the header and first directory (start), the
        # other directories (tifffile writes them last), pages 33-34.
        bound = (compressed_span(offsets, 0, ifds[0] + 4096, size)
                 + compressed_span(offsets, min(ifds[1:]), max(ifds) + 4096, size)
                 + compressed_span(offsets, strips[0][0], sum(strips[1]), size)
                 + 3 * READ_AHEAD + 3 * BLOCK)
        assert fetched(fs) <= bound
        assert fetched(fs) < size / 2


def test_prefetch_index_then_mount_free_reads_use_it(bz2_archive, settings_for, tmp_path):
    settings = settings_for(bz2_archive, tmp_path, block_size=BLOCK, readahead=0)
    result = CliRunner().invoke(main, ["cache", "prefetch", "--index", "--json",
                                       "EMPIAR-10002/data/bz2/*.bz2"], env=env_for(settings))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["files"] == 2 and summary["indexes"] == 2
    store = IndexStore.in_cache_dir(settings.cache_dir)
    size = os.path.getsize(local(bz2_archive, MRCS))
    with new_fs(bz2_archive, tmp_path, settings_for, cache_size=0) as fs:
        node = fs.stat(MRCS)
        key = key_for_remote(node.info.url, node.info.fingerprint.key())
        assert decode_offsets(store.load_index(key)) is not None
        np.testing.assert_array_equal(empiarfs.load(MRCS, frames=39, fs=fs),
                                      bz2_archive.stack[39])
        assert fetched(fs) < size / 4


def test_local_bz2_keeps_its_index_by_path_and_mtime(bz2_archive, tmp_path):
    path = local(bz2_archive, MRCS)
    api.configure(cache_dir=str(tmp_path / "c"))
    try:
        np.testing.assert_array_equal(empiarfs.load(path, frames=-1), bz2_archive.stack[-1])
        store = IndexStore.in_cache_dir(str(tmp_path / "c"))
        assert decode_offsets(store.load_index(key_for_local(path))) is not None
        np.testing.assert_array_equal(empiarfs.load(path, frames=[0, 20]),
                                      bz2_archive.stack[[0, 20]])
    finally:
        api.configure()


@requires_fuse
def test_through_a_mount_the_index_is_shared_with_empiar_paths(bz2_archive, settings_for,
                                                                tmp_path):
    # Read on a mount, the index is keyed by the archive URL and version
    # (from the mount's xattr and stat), so empiar:// reads and `cache
    # prefetch --index` find the same one. The reads run in this process,
    # which also runs the server the mount asks: the bz2 reader must not hold
    # the GIL while the mount waits for that server.
    settings = settings_for(bz2_archive, tmp_path / "mount")
    api.configure(cache_dir=str(tmp_path / "api"))
    try:
        with mounted(settings, tmp_path / "mnt") as mnt:
            got = empiarfs.load(os.path.join(mnt, MRCS), frames=[39, 2])
            pages = empiarfs.load(os.path.join(mnt, TIFF), frames=[30, 1])
    finally:
        api.configure()
    np.testing.assert_array_equal(got, bz2_archive.stack[[39, 2]])
    np.testing.assert_array_equal(pages, bz2_archive.movie[[30, 1]])
    with new_fs(bz2_archive, tmp_path, settings_for) as fs:
        node = fs.stat(MRCS)
        key = key_for_remote(node.info.url, node.info.fingerprint.key())
    assert decode_offsets(IndexStore.in_cache_dir(str(tmp_path / "api")).load_index(key))


def test_random_bz2_matches_the_stream_anywhere(bz2_archive, tmp_path):
    path = local(bz2_archive, MRCS)
    with open(path, "rb") as fh:
        plain = bz2.decompress(fh.read())
        offsets = build_index(fh, parallelization=2)
        store = IndexStore(str(tmp_path / "s"))
        store.save_index("k", encode_offsets(offsets))
        with RandomBz2(fh, store=store, key="k") as view:
            assert view.indexed
            for start in (len(plain) - 5000, 17, 900_123, 0):
                view.file.seek(start)
                assert view.file.read(4096) == plain[start:start + 4096]


def test_not_bzip2_or_truncated_is_one_clear_error(tmp_path, bz2_archive):
    (tmp_path / "x.mrcs.bz2").write_bytes(b"this is not bzip2 at all" * 10)
    with pytest.raises(BadFile, match="x.mrcs.bz2: not a valid bzip2 file"):
        empiarfs.load(tmp_path / "x.mrcs.bz2", frames=0)
    (tmp_path / "y.tiff.bz2").write_bytes(b"BZh9 nope" * 10)
    with pytest.raises(BadFile, match="y.tiff.bz2: not a valid bzip2 file"):
        empiarfs.load(tmp_path / "y.tiff.bz2")
    with open(local(bz2_archive, MRCS), "rb") as fh:
        half = fh.read()[: os.path.getsize(local(bz2_archive, MRCS)) // 2]
    (tmp_path / "cut.mrcs.bz2").write_bytes(half)
    with pytest.raises(BadFile, match="cut.mrcs.bz2: corrupt bzip2 data"):
        empiarfs.load(tmp_path / "cut.mrcs.bz2", frames=39)
