"""empiarfs.to_dask: frames of image sets, files and STAR particles as a lazy
dask.array, computed on a real distributed LocalCluster whose worker
processes read through empiar:// with the settings carried in the graph."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import dask
import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from distributed import Client, LocalCluster
from support.archive import movie_frames, movie_set

import empiarfs
from empiarfs.errors import BadFile, InvalidInput, NotFound, UnsupportedFormat
from empiarfs.pyapi.arrays import frame_stack

IMAGESET = "Movie stacks of 80S ribosomes"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # One cluster for the module: starting one costs a few seconds. Its
    # scratch space goes to pytest's tmp, not /tmp/dask-scratch-space.
    scratch = str(tmp_path_factory.mktemp("dask-scratch"))
    with dask.config.set({"temporary-directory": scratch}), \
            LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def worker_archives(client) -> dict:
    """The api_url of every EmpiarFS each worker process has opened."""
    return client.run(lambda: sorted(
        fs.settings.api_url for fs in __import__("empiarfs.pyapi.workerfs", fromlist=["_"])
        ._open.values()))


def test_imageset_on_local_cluster_equals_numpy(client, module_settings, sample_root):
    movies = empiarfs.to_dask("EMPIAR-10002", IMAGESET, settings=module_settings)
    # Six int16 stacks and two float32 ones: promoted, native byte order.
    assert movies.shape == (96, 256, 256) and movies.dtype == np.float32
    assert movies.chunks[0] == (1,) * 96
    ref = movie_set(sample_root)

    means, total, every7th = dask.compute(movies.mean(axis=(1, 2)), movies.sum(axis=0),
                                          movies[::7])

    np.testing.assert_allclose(means, ref.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(total, ref.sum(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(every7th, ref[::7])
    # The workers read, each with its own EmpiarFS on the test server.
    opened = worker_archives(client)
    assert len(opened) == 2 and all(urls == [module_settings.api_url] for urls in opened.values())


def test_folder_chunks_per_file(client, module_settings, sample_root):
    movies = empiarfs.to_dask("empiar://EMPIAR-10002/data", pattern="10[25]_*.mrcs",
                              frames_per_chunk="file", settings=module_settings)
    assert movies.chunks[0] == (12, 12)
    ref = np.concatenate([movie_frames(sample_root, 102), movie_frames(sample_root, 105)])
    np.testing.assert_array_equal(movies[10:14, 5:9, ::3].compute(), ref[10:14, 5:9, ::3])
    grouped = empiarfs.to_dask(["EMPIAR-10002/data/100_movie_gc.mrcs"], frames_per_chunk=5,
                               settings=module_settings)
    assert grouped.chunks[0] == (5, 5, 2) and grouped.dtype == np.int16
    np.testing.assert_array_equal(grouped.max(axis=0).compute(),
                                  movie_frames(sample_root, 100).max(axis=0))


def test_star_particles_equal_their_frames(client, module_settings, sample_root, tmp_path):
    rows = ["3@101_movie_gc.mrcs", "12@100_movie_gc.mrcs", "1@105_movie_gc.mrcs",
            "4@101_movie_gc.mrcs", "7@100_movie_gc.mrcs"]
    starfile.write({"particles": pd.DataFrame({"rlnImageName": rows,
                                               "rlnDefocusU": np.arange(5.0)})},
                   tmp_path / "particles.star")
    particles = empiarfs.to_dask(str(tmp_path / "particles.star"),
                                 root="empiar://EMPIAR-10002/data", frames_per_chunk=2,
                                 settings=module_settings)
    assert particles.shape == (5, 256, 256) and particles.chunks[0] == (2, 2, 1)
    expected = np.stack([movie_frames(sample_root, 101)[2], movie_frames(sample_root, 100)[11],
                         movie_frames(sample_root, 105)[0], movie_frames(sample_root, 101)[3],
                         movie_frames(sample_root, 100)[6]]).astype(np.float32)
    np.testing.assert_array_equal(particles.compute(), expected)

    starfile.write(pd.DataFrame({"rlnImageName": ["13@100_movie_gc.mrcs"]}), tmp_path / "bad.star")
    with pytest.raises(BadFile, match="image 13 of .*100_movie_gc.mrcs, which has 12"):
        empiarfs.to_dask(str(tmp_path / "bad.star"), root="EMPIAR-10002/data", settings=module_settings)


def test_local_files_read_by_workers(client, module_settings, tmp_path):
    # Mount paths are local paths: workers open them with the builtin open().
    rng = np.random.default_rng(7)
    stacks = [rng.normal(size=(k, 32, 48)).astype(np.float32) for k in (3, 4)]
    for i, data in enumerate(stacks):
        os.makedirs(tmp_path / "mnt" / f"d{i}")
        with mrcfile.new(tmp_path / "mnt" / f"d{i}" / f"s{i}.mrcs") as mrc:
            mrc.set_data(data)
    local = empiarfs.to_dask(str(tmp_path / "mnt"), pattern="s*.mrcs", settings=module_settings)
    assert local.shape == (7, 32, 48)
    np.testing.assert_array_equal(local.compute(), np.concatenate(stacks))


def test_frame_stack_indexing_and_pickling(module_settings, sample_root):
    stack = frame_stack(["empiar://EMPIAR-10002/data/103_movie_gc.mrcs",
                         "EMPIAR-10002/data/104_movie_gc.mrcs"], settings=module_settings)
    ref = np.concatenate([movie_frames(sample_root, 103), movie_frames(sample_root, 104)])
    assert stack.shape == (24, 256, 256) and stack.dtype == np.int16 and len(stack) == 24
    np.testing.assert_array_equal(stack[13], ref[13])
    np.testing.assert_array_equal(stack[-1, 3:5], ref[-1, 3:5])
    np.testing.assert_array_equal(stack[[20, 2, 11]], ref[[20, 2, 11]])
    np.testing.assert_array_equal(stack[..., 7], ref[..., 7])
    np.testing.assert_array_equal(np.asarray(stack)[::5], ref[::5])
    with pytest.raises(IndexError):
        stack[24]
    # What travels to a worker: paths, frame numbers and settings only.
    clone = pickle.loads(pickle.dumps(stack))
    assert clone._fs is None and clone.settings == module_settings and clone.paths == stack.paths
    np.testing.assert_array_equal(clone[12], ref[12])


def test_bad_input_is_one_clear_error(module_settings):
    with pytest.raises(InvalidInput, match="say which image set.*0: Movie stacks"):
        empiarfs.to_dask("EMPIAR-10002", settings=module_settings)
    with pytest.raises(InvalidInput, match="no image set 'nope'"):
        empiarfs.to_dask("EMPIAR-10002", "nope", settings=module_settings)
    with pytest.raises(InvalidInput, match="no files given"):
        empiarfs.to_dask([], settings=module_settings)
    with pytest.raises(InvalidInput, match="frames differ in shape"):
        empiarfs.to_dask(["EMPIAR-10002/data/100_movie_gc.mrcs",
                          "EMPIAR-11561/data/211206/tomograms/TS_001.mrc"], settings=module_settings)
    with pytest.raises(InvalidInput, match="frames_per_chunk"):
        empiarfs.to_dask(["EMPIAR-10002/data/100_movie_gc.mrcs"], frames_per_chunk=0,
                         settings=module_settings)
    with pytest.raises(InvalidInput, match="not to a list"):
        empiarfs.to_dask(["EMPIAR-10002/data/100_movie_gc.mrcs"], pattern="*.mrcs",
                         settings=module_settings)
    with pytest.raises(UnsupportedFormat, match="unsupported format"):
        empiarfs.to_dask(["EMPIAR-10002/data/checksums.md5"], settings=module_settings)
    with pytest.raises(NotFound, match="no such file or folder"):
        empiarfs.to_dask("no/such/place", settings=module_settings)
    with pytest.raises(NotFound):
        empiarfs.to_dask("empiar://EMPIAR-10002/nothing-here", settings=module_settings)


def test_import_is_light_and_dask_optional():
    code = (
        "import sys, builtins\n"
        "import empiarfs\n"
        "to_dask = empiarfs.to_dask\n"
        "assert 'dask' not in sys.modules, 'import empiarfs imported dask'\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] == 'dask':\n"
        "        raise ImportError('no dask here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "try:\n"
        "    to_dask(['EMPIAR-10002/data/100_movie_gc.mrcs'])\n"
        "except empiarfs.errors.MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    assert "pip install 'empiarfs[dask]'" in out
