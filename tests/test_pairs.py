"""Pair CSV loading, skip reports, padded pair batches, fine-tuning splits and metrics."""

from pathlib import Path

import numpy as np
import pytest

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.data.pairs import load_pairs
from georecon_jax.graphs.pairs import PairBatcher, PairBudget, pack_pairs
from georecon_jax.tasks.metrics import average_precision, regression_metrics, roc_auc
from georecon_jax.tasks.pair_data import cv_splits, molecule_split

# module-scoped fixtures: under pytest-xdist these tests run in one worker (--dist loadgroup)
pytestmark = pytest.mark.xdist_group("pairs")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real data folder {SHARED} absent (fresh clone)"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return MoleculeCache(str(tmp_path_factory.mktemp("cache")))


def test_bad_rows_are_skipped_with_file_row_and_reason(tmp_path, cache):
    path = tmp_path / "p.csv"
    path.write_text("a,b,y,t\nCCO,O,1.5,2\nC1CC,O,2.0,3\nCC,O,oops,1\nCCN,CO,-0.5,0\nCCC,O,0.1,10\n")
    ds = load_pairs(
        files=[str(path)],
        smiles_columns=("a", "b"),
        label_columns=("y",),
        cache=cache,
        num_workers=1,
        verbose=False,
    )
    assert len(ds) == 3 and ds.skip.count == 2 and ds.skip.total == 5
    reasons = {s["record"]: s["reason"] for s in ds.skip.skipped}
    assert "C1CC" in reasons["p.csv:3"] and "a " in reasons["p.csv:3"]
    assert "not a number" in reasons["p.csv:4"]
    np.testing.assert_allclose(ds.labels[:, 0], [1.5, -0.5, 0.1])
    assert ds.rows.tolist() == ["p.csv:2", "p.csv:5", "p.csv:6"]
    assert ds.molecules[ds.index2[0]]["smiles"] == "O"
    # log-transformed labels (chromophore lifetimes); the row with t = 0 is reported
    ds = load_pairs(
        files=[str(path)],
        smiles_columns=("a", "b"),
        label_columns=("t",),
        log_labels=True,
        cache=cache,
        num_workers=1,
        verbose=False,
    )
    np.testing.assert_allclose(ds.labels[:, 0], np.log([2, 1, 10]), rtol=1e-6, atol=1e-7)
    assert any("log" in s["reason"] for s in ds.skip.skipped)


@needs_shared
@pytest.mark.parametrize(
    "preset,lo,hi", [("freesolv", -30, 10), ("absorption", 150, 1200), ("chchminer", 0, 1)]
)
def test_real_presets(preset, lo, hi, cache):
    ds = load_pairs(preset, data_root=str(SHARED), cache=cache, num_workers=1, limit=12, verbose=False)
    assert len(ds) + ds.skip.count == 12 and len(ds) >= 10
    assert lo <= ds.labels.min() and ds.labels.max() <= hi
    assert ds.task == ("classification" if preset == "chchminer" else "regression")


def test_pair_batches_are_padded_and_masked(cache, tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("s1,s2,y\nc1ccccc1O,O,1\nCC(=O)O,CCO,2\nCl,CCCCCCCC,3\n")
    ds = load_pairs(
        files=[str(path)],
        smiles_columns=("s1", "s2"),
        label_columns=("y",),
        cache=cache,
        num_workers=1,
        verbose=False,
    )
    budget = PairBudget.from_dataset(ds)
    assert budget.n_node1 == 8 and budget.n_node2 == 8
    b = pack_pairs(ds, [0, 1, 2], 4, budget)
    assert b.pair_mask.tolist() == [True, True, True, False]
    m1 = b.graph1.nodes.mask.reshape(4, -1)
    assert m1.sum(1).tolist() == [7, 4, 1, 0]
    # bonds of pair i stay inside pair i's block of atoms, and only real atoms are connected
    s, r, em = (
        b.graph1.senders.reshape(4, -1),
        b.graph1.receivers.reshape(4, -1),
        b.graph1.edges.mask.reshape(4, -1),
    )
    for i in range(4):
        assert ((s[i] // budget.n_node1) == i).all() and ((r[i] // budget.n_node1) == i).all()
        assert b.graph1.nodes.mask[s[i][em[i]]].all()
    np.testing.assert_allclose(
        b.graph1.nodes.positions.reshape(4, -1, 3)[0, :7], ds.molecules[ds.index1[0]]["positions"]
    )
    assert np.isnan(b.labels[3]).all()
    batcher = PairBatcher(ds, [0, 1, 2], 2, budget, num_devices=1, seed=0)
    assert batcher.batch(0).pair_mask.shape == (1, 2)


def test_splits_keep_held_out_molecules_out_of_training():
    from georecon_jax.data.pairs import PairDataset

    rng = np.random.default_rng(0)
    mols = [
        {"smiles": s}
        for s in [
            "c1ccccc1C",
            "c1ccccc1CC",
            "C1CCCCC1O",
            "CCO",
            "CCN",
            "CCCl",
            "c1ccncc1",
            "C1CCNCC1",
            "CC(=O)O",
            "OCCO",
        ]
        * 3
    ]
    i1, i2 = rng.integers(0, 30, 400), rng.integers(0, 30, 400)
    ds = PairDataset(
        "x",
        mols,
        i1,
        i2,
        np.zeros((400, 1), np.float32),
        ("y",),
        np.asarray(["r"] * 400, dtype=object),
        task="classification",
    )
    for by in ("molecule", "scaffold"):
        tr, va, te = molecule_split(ds, by, seed=0)
        assert len(tr) + len(va) + len(te) == 400 and len(te) > 0
        train_mols = set(i1[tr]) | set(i2[tr])
        held = (set(i1[te]) | set(i2[te]) | set(i1[va]) | set(i2[va])) - train_mols
        for idx in (va, te):
            assert all((a not in train_mols) or (b not in train_mols) for a, b in zip(i1[idx], i2[idx]))
        assert held
    for name, tr, va, te in cv_splits(50, 5, [0]):
        assert len(tr) == 40 and len(va) == 5 and len(te) == 5
        assert len(set(tr) | set(va) | set(te)) == 50


def test_metrics_against_hand_values():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3) / 2)
    m = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert m["rmse"] == pytest.approx(np.sqrt(4 / 3)) and m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)
