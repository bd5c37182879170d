"""Pair CSV loading, skip reports, padded pair batches, fine-tuning splits and metrics."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import csv_text
from georecon_jax.chem.conformers import MoleculeCache, molecule_record
from georecon_jax.data import pairs
from georecon_jax.data.pairs import PairDataset, load_pairs
from georecon_jax.data.records import DataError
from georecon_jax.graphs.pairs import PairBatcher, PairBudget, pack_pairs
from georecon_jax.tasks.metrics import average_precision, regression_metrics, roc_auc
from georecon_jax.tasks.pair_data import cv_splits, held_out_split, molecule_split, sampled_negatives


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


def _toy_pairs(i1, i2, labels, n_mol=30):
    mols = [
        {"smiles": s, "atomic_numbers": np.ones(3)}
        for s in ["c1ccccc1", "C1CCNCC1", "CCO", "CC(=O)O", "OCCO"] * (n_mol // 5)
    ]
    return PairDataset(
        "ddi",
        mols,
        np.asarray(i1),
        np.asarray(i2),
        np.asarray(labels, np.float32).reshape(-1, 1),
        ("label",),
        np.asarray([f"f.csv:{k + 2}" for k in range(len(i1))], dtype=object),
        task="classification",
    )


def test_sampled_negatives_never_coincide_with_a_known_positive():
    """The reference's DDI set: positives only (a repeated pair once), then as many negatives drawn
    from the molecule pairs that are not positive in either order; the files' negatives (here one
    that contradicts a positive) are dropped."""
    rng = np.random.default_rng(0)
    i1, i2 = rng.integers(0, 12, 60), rng.integers(0, 12, 60)
    labels = np.ones(60)
    labels[::4] = 0
    i1, i2, labels = list(i1) + [int(i1[1])], list(i2) + [int(i2[1])], list(labels) + [1]  # a repeat
    i1, i2, labels = i1 + [int(i2[1])], i2 + [int(i1[1])], labels + [0]  # the file contradicts itself
    ds = _toy_pairs(i1, i2, labels)
    out = sampled_negatives(ds, seed=0)
    pos = {(int(a), int(b)) for a, b, y in zip(i1, i2, labels) if y == 1}
    known = pos | {(b, a) for a, b in pos}
    lab = out.labels[:, 0]
    got_pos = list(zip(out.index1[lab == 1].tolist(), out.index2[lab == 1].tolist()))
    got_neg = list(zip(out.index1[lab == 0].tolist(), out.index2[lab == 0].tolist()))
    assert sorted(got_pos) == sorted(pos) and len(got_neg) == len(pos)
    assert not known & set(got_neg) and len(set(got_neg)) == len(got_neg)
    mols = {m for p in pos for m in p}
    assert all(a in mols and b in mols for a, b in got_neg)
    assert all(r.startswith("sampled:") for r in out.rows[lab == 0])
    again = sampled_negatives(ds, seed=0)
    assert np.array_equal(again.index1, out.index1) and np.array_equal(again.index2, out.index2)
    assert not np.array_equal(sampled_negatives(ds, seed=1).index1, out.index1)
    with pytest.raises(ValueError, match="too few non-positive pairs"):
        sampled_negatives(_toy_pairs([0, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1]), seed=0)


@pytest.mark.parametrize("by", ["molecule", "scaffold"])
def test_reference_held_out_split(by):
    """40 % of the molecules (or scaffolds) held out; every pair touching one goes to validation
    or test, halved at random; no held-out molecule in a training pair; every pair once."""
    rng = np.random.default_rng(3)
    i1, i2 = rng.integers(0, 30, 500), rng.integers(0, 30, 500)
    ds = _toy_pairs(i1, i2, np.ones(500))
    tr, va, te = held_out_split(ds, by, seed=0)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(500))
    assert len(te) - len(va) in (0, 1) and len(tr) > 0 and len(va) > 0
    train_mols = set(i1[tr]) | set(i2[tr])
    for idx in (va, te):
        assert all((a not in train_mols) or (b not in train_mols) for a, b in zip(i1[idx], i2[idx]))
    if by == "molecule":
        held = set(range(30)) - train_mols
        assert len(held) == int(30 * 0.4)
    a, b, c = held_out_split(ds, by, seed=1)
    assert not np.array_equal(a, tr) or by == "scaffold"


def test_no_test_pair_is_dropped_over_the_atom_budget(cache):
    """Training pairs over data.max_atoms are left out (counted); validation and test batches are
    padded to the largest molecule, so every held-out pair is evaluated (the reference drops none)."""
    import ml_collections

    from georecon_jax.tasks.finetune_pairs import evaluation_budget

    big = "CCCCCCCCCCCCCCCCCCCCCCCCCC(=O)O"  # 28 heavy atoms
    rows = [("CCO", "O"), (big, "O"), ("CC(=O)O", "CCO"), ("O", big), ("c1ccccc1", "O")]
    mols, i1, i2 = [], [], []
    for a, b in rows:
        for smi, idx in ((a, i1), (b, i2)):
            rec, reason = molecule_record(smi)
            assert rec is not None, reason
            idx.append(len(mols))
            mols.append(rec)
    ds = PairDataset(
        "t",
        mols,
        np.asarray(i1),
        np.asarray(i2),
        np.zeros((5, 1), np.float32),
        ("y",),
        np.asarray(["r"] * 5, dtype=object),
    )
    budget = PairBudget.from_dataset(ds, max_atoms=8)
    test = [0, 1, 3]
    capped = PairBatcher(ds, test, 4, budget, num_devices=1, shuffle=False, drop_remainder=False)
    assert capped.num_dropped == 2  # what the training budget would do
    for keep, dropped in ((True, 0), (False, 2)):
        cfg = ml_collections.ConfigDict(dict(keep_eval_pairs=keep))
        b = PairBatcher(
            ds,
            test,
            4,
            evaluation_budget(ds, budget, cfg),
            num_devices=1,
            shuffle=False,
            drop_remainder=False,
        )
        assert b.num_dropped == dropped
        if keep:
            batch = b.batch(0)
            assert int(np.sum(batch.pair_mask)) == 3


@pytest.mark.parametrize(
    "preset, batch, lr, mode",
    [
        ("freesolv", 32, 1e-3, "min"),
        ("abraham", 256, 1e-3, "min"),
        ("emission", 256, 5e-3, "min"),
        ("chchminer", 128, 5e-4, "max"),
    ],
)
def test_finetuning_recipe_is_the_references_per_task(preset, batch, lr, mode):
    """MI/scripts/downstream.sh and DDI/scripts/downstream.sh: batch and lr by task, plateau on the
    validation MSE (min) or ROC-AUC (max), raw targets, ≤ 500 epochs; a set field wins."""
    from experiments.configs import mrl_finetune
    from georecon_jax.tasks.finetune_pairs import resolve_recipe

    c = mrl_finetune.get_config()
    c.data.preset = preset
    r = resolve_recipe(c)
    assert (r.batch_size, r.optim.learning_rate, r.optim.plateau_mode) == (batch, lr, mode)
    assert (r.num_epochs, r.optim.schedule, r.optim.plateau_patience, r.optim.plateau_factor) == (
        500,
        "plateau",
        20,
        0.1,
    )
    assert r.data.standardize_targets is False and r.optim.grad_clip == 0 and r.optim.warmup_steps == 0
    c.batch_size, c.optim.learning_rate = 7, 2e-4
    r = resolve_recipe(c)
    assert (r.batch_size, r.optim.learning_rate) == (7, 2e-4)


def test_early_stopping_matches_the_reference_rule(monkeypatch, tmp_path):
    """The reference stops at the first epoch e > es where the running best equals the one es-1
    epochs earlier; `BestCheckpoint` as the pair fine-tuning builds it stops at the same epoch,
    whether the best epoch is late or the first."""
    from georecon_jax.tasks.finetune_pairs import early_stopping_patience
    from georecon_jax.training import runner

    monkeypatch.setattr(runner.Checkpointer, "save", lambda self, step, state: None)
    es = 12
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(40):
        losses = np.concatenate([np.linspace(5, 1, 3 + trial % 7), 1 + rng.random(80)])
        if trial % 4 == 0:
            losses[0] = 0.1  # the first epoch stays the best
        else:
            losses[rng.integers(3, 40)] = 0.5  # a late best
        best, ref_stop = [], None
        for e, v in enumerate(losses, start=1):
            best.append(min(best[-1], v) if best else v)
            if len(best) > es and best[-1] == best[-es]:
                ref_stop = e
                break
        cfg = dict(early_stopping=es)
        hook = runner.BestCheckpoint(
            str(tmp_path / str(trial)),
            "rmse",
            "min",
            patience=early_stopping_patience(cfg),
            min_evaluations=es,
        )
        ours = next((e for e, v in enumerate(losses, start=1) if hook(e, None, {"rmse": v})), None)
        assert ours == ref_stop, trial
        checked += ref_stop is not None
    assert checked > 30
    assert early_stopping_patience(dict(early_stopping=0)) == 0


def test_a_pretraining_saved_before_a_model_field_is_compared_as_its_old_form():
    """A 3DMRL checkpoint without model.relational.architecture was the edge-MLP + GRU form: the
    fine-tuning's settings check names the difference instead of failing later on tree shapes."""
    from experiments.configs import mrl_finetune
    from georecon_jax.training.transfer import ConfigCheck, PretrainedCheckpoint, config_mismatches

    c = mrl_finetune.get_config()
    old = PretrainedCheckpoint("x", 1, None, False, {"model": {"relational": dict(features=64, num_steps=3)}})
    diffs, _ = config_mismatches(old, [ConfigCheck("model.relational", c.model)])
    assert diffs == ["model.relational.architecture: pretrained 'edge_mlp_gru', model 'reference'"]
    c.model.architecture = "edge_mlp_gru"
    assert config_mismatches(old, [ConfigCheck("model.relational", c.model)]) == ([], [])


def test_plateau_in_max_mode_follows_a_score():
    """DDI: torch ReduceLROnPlateau(mode='max') on the validation ROC-AUC."""
    import ml_collections
    from georecon_jax.training.optimizer import PlateauState, plateau_step

    cfg = ml_collections.ConfigDict(
        dict(
            plateau_mode="max",
            plateau_patience=2,
            plateau_factor=0.1,
            min_learning_rate=0.0,
            learning_rate=1e-3,
            warmup_steps=0,
        )
    )
    s = PlateauState(np.float32(1), np.float32(0), np.int32(0), np.int32(0))
    reduced = []
    for step, auc in enumerate([0.6, 0.7, 0.8, 0.79, 0.8, 0.8, 0.81]):
        s, r = plateau_step(s, auc, step, cfg)
        reduced.append(r)
    # 0.6, 0.7, 0.8 improve; three evaluations without (> patience 2) reduce; 0.81 improves again
    assert reduced == [False, False, False, False, False, True, False]
    assert np.isclose(float(s.scale), 0.1) and np.isclose(float(s.best), 0.81)
    cfg.plateau_mode = "min"
    s2 = PlateauState(np.float32(1), np.float32(0), np.int32(0), np.int32(0))
    for step, auc in enumerate([0.6, 0.7, 0.8, 0.9]):
        s2, _ = plateau_step(s2, auc, step, cfg)
    assert np.isclose(float(s2.scale), 0.1)  # rising values never improve in 'min' mode


def test_ddi_pretraining_pairs_put_the_larger_molecule_first():
    """DDI/datasets_pretrain/ddi.py: the larger radius is the centre; equal radii are dropped."""
    from georecon_jax.data.pairs import PairDataset
    from georecon_jax.tasks.pair_data import molecular_radius, orient_by_radius

    def mol(radius):  # a line of three atoms, centroid at 0
        return {"positions": np.array([[-radius, 0, 0], [0, 0, 0], [radius, 0, 0]]), "smiles": str(radius)}

    mols = [mol(1.0), mol(2.0), mol(3.0), mol(2.0)]
    assert molecular_radius(mols[2]) == 3.0
    ds = PairDataset(
        name="ddi",
        molecules=mols,
        index1=np.array([0, 2, 1, 3]),
        index2=np.array([1, 0, 3, 2]),
        labels=np.ones((4, 1), np.float32),
        label_names=("label",),
        rows=np.array(["a", "b", "c", "d"], dtype=object),
    )
    out = orient_by_radius(ds)
    assert list(out.rows) == ["a", "b", "d"]  # c: radii 2 and 2
    assert list(zip(out.index1, out.index2)) == [(1, 0), (2, 0), (2, 3)]


def test_ddi_early_stopping_waits_for_roc_auc_and_accuracy(monkeypatch, tmp_path):
    """DDI/models_2d/CIGIN.py: stop only when the best ROC-AUC and the best accuracy have both
    stayed the same for es - 1 evaluations; the accuracy hook keeps its own best checkpoint."""
    from georecon_jax.training import runner

    monkeypatch.setattr(runner.Checkpointer, "save", lambda self, step, state: None)
    es = 5
    acc = runner.BestCheckpoint(str(tmp_path / "split" / "best_accuracy"), "accuracy", "max")
    roc = runner.BestCheckpoint(
        str(tmp_path / "split"), "roc_auc", "max", patience=es - 1, min_evaluations=es, also=acc
    )
    rocs = [0.6, 0.7, 0.8] + [0.75] * 20  # best ROC-AUC at evaluation 3
    accs = [0.5, 0.6, 0.6, 0.62, 0.63, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64] + [0.6] * 12  # best at 6
    stop = next(
        e
        for e, (r, a) in enumerate(zip(rocs, accs), 1)
        if acc(e, None, {"accuracy": a}) | roc(e, None, {"roc_auc": r})
    )
    assert stop == 6 + es - 1  # ROC-AUC alone would have stopped at 3 + es - 1 = 7
    assert acc.best["step"] == 6 and roc.best["step"] == 3
    assert (tmp_path / "split" / "best_accuracy" / "best.json").exists()


# ------------------------------------------------- the pair CSV reader on malformed input (property-based)

smiles = st.sampled_from(["CCO", "O", "c1ccccc1", "C1CC", "not-a-smiles", "", "[Xe]", "CC(=O)O", "C#N"])
label = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["", "abc", "-1"])
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(smiles, smiles, label), max_size=6),
    junk=st.one_of(csv_text, st.binary(max_size=60)),
)
def test_pair_csv_reader_reports_and_skips_bad_rows(tmp_path_factory, rows, junk):
    d = tmp_path_factory.mktemp("pairs")
    body = "solute,solvent,Gsolv\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    path = d / "pairs.csv"
    path.write_bytes(body.encode() + (junk if isinstance(junk, bytes) else junk.encode()))
    cache = MoleculeCache(str(d / "cache"))
    try:
        ds = pairs.load_pairs(
            files=[str(path)],
            smiles_columns=("solute", "solvent"),
            label_columns=("Gsolv",),
            cache=cache,
            num_workers=1,
            verbose=False,
        )
    except DataError as e:
        assert "pairs.csv" in str(e)
        return
    assert len(ds.index1) + ds.skip.count == ds.skip.total
    assert np.all(np.isfinite(ds.labels))
    for s in ds.skip.skipped:
        assert s["record"].startswith("pairs.csv:")
    with pytest.raises(DataError, match="strict"):
        if ds.skip.count:
            pairs.load_pairs(
                files=[str(path)],
                smiles_columns=("solute", "solvent"),
                label_columns=("Gsolv",),
                cache=cache,
                num_workers=1,
                verbose=False,
                strict=True,
            )
        else:
            raise DataError("strict: nothing to skip")
