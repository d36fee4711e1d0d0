"""The benchmark archive: the project's sample plus benchmark-only files.

Built once per set of sizes and reused (``bench.json`` in the archive root
records the parameters it was built with). On top of
:func:`empiarfs.archive_server.sample.make_sample` (the 1 GiB ``stack.mrcs``, the
3,000-file ``EMPIAR-10943/data/Tiff`` directory and the small MRCS stacks)
it adds, under ``EMPIAR-10002/data/bench/``:

* ``wan.bin``: a smaller file for the cold sequential read on the WAN
  profile (a full 1 GiB at ~24 MB/s would take the whole time budget);
* ``mrc/stack_NNNN.mrcs``: MRCS stacks (8 frames of 256 x 256 int16,
  1 MiB + 1 KiB each) for the header scan, the mrcfile header-only
  opens and the random frame reads: the sample has only 8 stacks.

The server builds its listings from the tree on disk, so the extra files
appear in the archive without touching the entries' API records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import mrcfile
import numpy as np

from empiarfs.archive_server.sample import make_sample

log = logging.getLogger(__name__)

ENTRY = "EMPIAR-10002"
LARGE = "data/large/stack.mrcs"
WAN = "data/bench/wan.bin"
MRC_DIR = "data/bench/mrc"
MANY_ENTRY = "EMPIAR-10943"
MANY_DIR = "data/Tiff"
# Layout of the benchmark stacks (a frame is FRAME_BYTES at HEADER + k * FRAME_BYTES).
FRAMES, NY, NX = 8, 256, 256
HEADER = 1024
FRAME_BYTES = NY * NX * 2
_CHUNK = 16 << 20


def data_path(root: str, entry: str, rel: str) -> str:
    """Where the server's file for ``entry``/``rel`` lives on disk."""
    return os.path.join(root, "world_availability", entry.split("-", 1)[1], *rel.split("/"))


def mrc_names(count: int) -> list[str]:
    """Relative paths (under the entry) of the benchmark stacks."""
    return [f"{MRC_DIR}/stack_{i:04d}.mrcs" for i in range(count)]


def ensure_archive(workdir: str, large_size: int, wan_size: int, many_files: int,
                   mrc_files: int) -> str:
    """Return the root of a benchmark archive with these sizes, building it
    if ``workdir`` does not hold one yet.

    Raises
    ------
    OSError
        If the archive cannot be written.
    """
    params = {"large_size": large_size, "wan_size": wan_size, "many_files": many_files,
              "mrc_files": mrc_files, "version": 1}
    key = f"archive-{large_size >> 20}M-{wan_size >> 20}M-{many_files}-{mrc_files}"
    root = os.path.join(workdir, key)
    marker = os.path.join(root, "bench.json")
    try:
        with open(marker, encoding="utf-8") as fh:
            if json.load(fh) == params:
                return root
    except (OSError, ValueError):
        pass
    log.warning("generating the benchmark archive in %s (once) ...", root)
    os.makedirs(root, exist_ok=True)
    make_sample(root, many_files=many_files, large_size=large_size)
    _random_file(data_path(root, ENTRY, WAN), wan_size, seed=1)
    _stacks(root, mrc_files)
    with open(marker, "w", encoding="utf-8") as fh:
        json.dump(params, fh)
    return root


def _random_file(path: str, size: int, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = rng.bytes(min(left, _CHUNK))
            out.write(chunk)
            left -= len(chunk)


def _stack_header() -> bytes:
    """A valid MRCS header for FRAMES x NY x NX int16, written by mrcfile."""
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.join(tmp, "h.mrcs")
        with mrcfile.new(name, overwrite=True) as mrc:
            mrc.set_data(np.zeros((FRAMES, NY, NX), dtype=np.int16))
            mrc.set_image_stack()
            mrc.voxel_size = 1.0
        with open(name, "rb") as fh:
            header = fh.read(HEADER)
    return header


def _stacks(root: str, count: int) -> None:
    header = _stack_header()
    rng = np.random.default_rng(2)
    for rel in mrc_names(count):
        path = data_path(root, ENTRY, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(header)
            out.write(rng.bytes(FRAMES * FRAME_BYTES))
