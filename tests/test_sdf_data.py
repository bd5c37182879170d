"""Pretraining on the 3D structures of an SDF file (PCQM4Mv2's format): a small SDF written from
real QM9 molecules, with a damaged record, converted into the memory-mapped store and pretrained
on. (tests/test_store.py tests the store itself: resuming, corruption, pickling.)"""

import json
import os

import numpy as np
import pytest
from rdkit import Chem

from conftest import qm9_mol
from experiments.configs import coord as coord_config
from georecon_jax.data import sdf as sdf_data
from georecon_jax.data.records import DataError

N = 40
BROKEN_AT = 5  # record index of the 2D record


def _write_sdf(path, mols):
    writer = Chem.SDWriter(str(path))
    for k in range(N):
        if k == BROKEN_AT:
            writer.write(Chem.MolFromSmiles("CCN"))  # 2D coordinates: skipped and reported
        rw = qm9_mol(mols, k)
        rw.SetProp("_Name", f"qm9_{int(mols.ids[k])}")
        writer.write(rw)
    writer.close()


def test_sdf_records_become_the_cache_and_pretrain(tmp_path, qm9_small, monkeypatch):
    mols, _ = qm9_small
    path = tmp_path / "qm9.sdf"
    _write_sdf(path, mols)
    cache = tmp_path / "cache"
    got, splits = sdf_data.load_sdf(str(path), cache_dir=str(cache), validation_fraction=0.1, verbose=False)
    assert len(got) == N
    assert isinstance(got.positions, np.memmap) and isinstance(got.atomic_numbers, np.memmap)
    # the record indices of the file: the 2D record is skipped, the others keep their place
    assert got.ids.tolist() == [k if k < BROKEN_AT else k + 1 for k in range(N)]
    for k in range(N):  # the same atoms and coordinates (SDF: 4 decimals of Å)
        za, pa = got.molecule(k)
        zb, pb = mols.molecule(k)
        np.testing.assert_array_equal(za, zb)
        np.testing.assert_allclose(pa, pb, atol=1e-4)
    skipped = [json.load(open(cache / f)) for f in os.listdir(cache) if f.endswith("_skipped.json")]
    assert len(skipped) == 1 and len(skipped[0]["skipped"]) == 1
    assert skipped[0]["skipped"][0]["record"].startswith(f"qm9.sdf record {BROKEN_AT}")
    assert "2D coordinates" in skipped[0]["skipped"][0]["reason"]
    assert sorted(np.concatenate([splits["train"], splits["validation"]]).tolist()) == list(range(N))
    assert len(splits["validation"]) == 4 and len(splits["test"]) == 0
    with pytest.raises(DataError, match="skipped"):
        sdf_data.load_sdf(str(path), cache_dir=str(cache), validation_fraction=0.1, strict=True)

    # the second time from the cache, without reading the file; a changed file is read again
    def no_read(*a, **k):
        raise AssertionError("read the SDF again")

    monkeypatch.setattr(sdf_data, "convert_sdf", no_read)
    again, splits2 = sdf_data.load_sdf(str(path), cache_dir=str(cache), validation_fraction=0.1)
    np.testing.assert_array_equal(again.positions, got.positions)
    np.testing.assert_array_equal(splits2["validation"], splits["validation"])
    os.utime(path, (1, 1))
    with pytest.raises(AssertionError, match="read the SDF again"):
        sdf_data.load_sdf(str(path), cache_dir=str(cache), validation_fraction=0.1)
    monkeypatch.undo()

    with pytest.raises(ValueError, match="needs data.sdf_path"):
        sdf_data.load_sdf(None, cache_dir=str(cache))
    with pytest.raises(DataError, match="no such SDF file"):
        sdf_data.load_sdf(str(tmp_path / "absent.sdf"), cache_dir=str(cache))

    # pretraining reads it through the config
    from georecon_jax.tasks import pretrain

    c = coord_config.get_config("tiny")
    c.data.update(dataset="sdf", sdf_path=str(path), cache_dir=str(cache), validation_fraction=0.1)
    c.update(num_steps=2, eval_every=2, checkpoint_every=2)
    summary = pretrain.run(c, str(tmp_path / "run"))
    assert summary["steps"] == 2 and np.isfinite(summary["final_train_loss"])


def test_the_config_sets_the_stores_chunk_size(tmp_path, qm9_small, monkeypatch):
    """data.store_chunk_size reaches the conversion: 12 records in chunks of 5 are flushed after
    records 5, 10 and 12."""
    from georecon_jax.data import store as store_lib
    from georecon_jax.tasks.pretrain import load_dataset

    mols, _ = qm9_small
    path = tmp_path / "m.sdf"
    with Chem.SDWriter(str(path)) as w:
        for i in range(12):
            w.write(qm9_mol(mols, i))
    flushes = []
    flush = store_lib.StoreWriter.flush
    monkeypatch.setattr(
        store_lib.StoreWriter, "flush", lambda self, c: flushes.append(c["records"]) or flush(self, c)
    )
    cfg = coord_config.get_config("tiny").data
    cfg.dataset, cfg.sdf_path, cfg.cache_dir = "sdf", str(path), str(tmp_path / "cache")
    cfg.store_chunk_size = 5
    got, splits = load_dataset(cfg)
    assert len(got) == 12 and flushes == [5, 10, 12]
