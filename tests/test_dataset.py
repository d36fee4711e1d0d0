"""EmpiarDataset: frames and particle images, pickled into worker processes."""

from __future__ import annotations

import multiprocessing
import os
import pickle

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from empiarfs.errors import BadFile, InvalidInput
from empiarfs.pyapi.dataset import EmpiarDataset, Item


@pytest.fixture
def settings(archive_server, tmp_path, settings_for):
    return settings_for(archive_server, tmp_path, ftp_url="")


def source_frames(sample_root, n):
    with mrcfile.open(os.path.join(sample_root, "world_availability", "10002", "data",
                                   f"{n}_movie_gc.mrcs")) as ref:
        return ref.data.copy()


def test_imageset_frames_equal_source(settings, sample_root):
    ds = EmpiarDataset.from_imageset("EMPIAR-10002", 0, settings=settings)
    try:
        assert len(ds) == 8 * 12
        assert ds.items[13] == Item("EMPIAR-10002/data/101_movie_gc.mrcs", 1)
        np.testing.assert_array_equal(ds[13], source_frames(sample_root, 101)[1])
        np.testing.assert_array_equal(ds[-1], source_frames(sample_root, 107)[11])
        with pytest.raises(IndexError):
            ds[96]
        whole = EmpiarDataset.from_imageset("EMPIAR-10002", "Movie stacks of 80S ribosomes",
                                            pattern="10[01]_*.mrcs", per_frame=False,
                                            settings=settings)
        assert len(whole) == 2 and whole[1].shape == (12, 256, 256)
        whole.close()
        with pytest.raises(InvalidInput, match="image set"):
            EmpiarDataset.from_imageset("EMPIAR-10002", "nope", settings=settings)
    finally:
        ds.close()


def test_two_worker_processes(settings, sample_root):
    ds = EmpiarDataset.from_imageset("EMPIAR-10002", 0, settings=settings,
                                     pattern="10[23]_movie_gc.mrcs")
    ds.close()
    assert len(ds) == 24
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.items == ds.items and clone._fs is None
    indices = [0, 5, 11, 12, 23, 17]
    # spawn: workers share nothing with this process but the pickled dataset.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.map(ds.__getitem__, indices, chunksize=1)
    expected = np.concatenate([source_frames(sample_root, 102), source_frames(sample_root, 103)])
    for index, array in zip(indices, got):
        np.testing.assert_array_equal(array, expected[index])


def test_torch_dataloader_two_workers(settings, sample_root):
    torch = pytest.importorskip("torch", reason="torch not installed (optional; the "
                                "multiprocessing test covers worker processes)")
    ds = EmpiarDataset.from_imageset("EMPIAR-10002", 0, settings=settings, pattern="100_*.mrcs",
                                     transform=np.float32)
    ds.close()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    batches = [b.numpy() for b in loader]
    np.testing.assert_array_equal(np.concatenate(batches), source_frames(sample_root, 100))


def test_particles_from_star(tmp_path, settings):
    stack = np.random.default_rng(5).normal(size=(6, 16, 16)).astype(np.float32)
    os.makedirs(tmp_path / "Extract")
    with mrcfile.new(tmp_path / "Extract" / "p.mrcs") as mrc:
        mrc.set_data(stack)
        mrc.set_image_stack()
    table = pd.DataFrame({"rlnImageName": ["3@Extract/p.mrcs", "1@Extract/p.mrcs",
                                           "6@Extract/p.mrcs"],
                          "rlnDefocusU": [1.0, 2.0, 3.0]})
    starfile.write({"optics": pd.DataFrame({"rlnOpticsGroup": [1]}), "particles": table},
                   tmp_path / "particles.star")
    ds = EmpiarDataset.from_star(str(tmp_path / "particles.star"), settings=settings)
    assert len(ds) == 3 and ds._fs is None  # local files: no archive connection
    np.testing.assert_array_equal(np.stack([ds[i] for i in range(3)]), stack[[2, 0, 5]])
    starfile.write(pd.DataFrame({"rlnImageName": ["Extract/p.mrcs"]}), tmp_path / "bad.star")
    with pytest.raises(BadFile, match="index@stack"):
        EmpiarDataset.from_star(str(tmp_path / "bad.star"), settings=settings)
