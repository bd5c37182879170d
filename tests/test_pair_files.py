"""Bring-your-own pair files (data.files / smiles_columns / label_columns / task / units), partly
missing preset files, label columns of the wrong kind, and explicit hydrogens as the reference
(Namkyeong/3DMRL) uses them: in pretraining, solvation and DDI; not in chromophore fine-tuning."""

import csv
import logging

import numpy as np
import pytest
from conftest import require_shared
from rdkit import Chem

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.data.pairs import load_pairs
from georecon_jax.data.records import DataError
from georecon_jax.tasks.pair_data import (
    load_pair_task,
    load_pretraining_pairs,
    molecule_cache,
    resolve_explicit_h,
)

# one module-scoped conformer cache: under pytest-xdist these tests run in one worker


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pair_cache"))


def _real_rows(rel: str, n: int):
    with open(require_shared(rel), newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, [row for _, row in zip(range(n), reader)]


@pytest.fixture(scope="module")
def user_csv(tmp_path_factory):
    """40 real FreeSolv rows under other column names, in another order, with an unused column."""
    _, rows = _real_rows("solvation/freesolv.csv", 40)
    path = tmp_path_factory.mktemp("user") / "my_solvation.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", "dG", "mol_b", "mol_a"])
        for i, r in enumerate(rows):
            w.writerow([f"row {i}", r["Gsolv"], r["solvent"], r["solute"]])
    return path, rows


def test_user_file_loads_with_its_own_columns(user_csv, cache_root):
    path, rows = user_csv
    ds = load_pairs(
        files=str(path),  # a comma-separated string, as from the command line
        smiles_columns="mol_a,mol_b",
        label_columns="dG",
        task="regression",
        units="kcal/mol",
        cache=MoleculeCache(cache_root, explicit_h=True),
        num_workers=1,
        verbose=False,
    )
    assert (ds.name, ds.units, ds.task, ds.label_names) == ("my_solvation", "kcal/mol", "regression", ("dG",))
    assert len(ds) == 40 and ds.skip.count == 0
    np.testing.assert_allclose(ds.labels[:, 0], [float(r["Gsolv"]) for r in rows], rtol=1e-6)
    solute = Chem.MolToSmiles(Chem.MolFromSmiles(rows[5]["solute"]))
    assert ds.molecules[ds.index1[5]]["smiles"] == solute
    assert ds.molecules[ds.index2[5]]["smiles"] == "O"  # water, the FreeSolv solvent
    assert ds.rows[0] == "my_solvation.csv:2"


def test_user_file_is_a_fine_tuning_task(user_csv, cache_root):
    """mrl_finetune.py:tiny with only data.files / columns / task / units set (and a cache)."""
    from experiments.configs import mrl_finetune

    path, _ = user_csv
    c = mrl_finetune.get_config("tiny")
    c.data.files = str(path)
    c.data.smiles_columns = "mol_a,mol_b"
    c.data.label_columns = "dG"
    c.data.task = "regression"
    c.data.units = "kcal/mol"
    c.data.cache_dir = cache_root
    # the same fields with no preset at all
    no_preset = mrl_finetune.get_config("tiny")
    no_preset.data.update(preset="", files=(str(path),), smiles_columns=("mol_a", "mol_b"))
    no_preset.data.update(label_columns=("dG",), units="kcal/mol", cache_dir=cache_root)
    ds = load_pair_task(no_preset)
    assert (ds.name, len(ds), ds.task, ds.units, ds.explicit_h) == (
        "my_solvation",
        40,
        "regression",
        "kcal/mol",
        True,
    )

    # the fine-tuning run itself, and its resume after SIGKILL, on a user file with these column
    # names: tests/test_finetune_pairs.py::test_pair_finetune_sigkill_then_resume_equals_uninterrupted
    from georecon_jax.tasks.finetune_pairs import resolve_recipe

    r = resolve_recipe(c)
    assert (r.data.explicit_h, r.optim.plateau_mode, r.optim.learning_rate) == (True, "min", 1e-3)


def test_command_line_forms_of_the_file_fields():
    """--config.data.files=a.csv,b.csv (absolute paths too) and the rest parse into usable fields."""
    from absl import flags
    from conftest import ROOT
    from ml_collections import config_flags

    from georecon_jax.data.pairs import as_names

    def load_from_command_line(name, size, *args):  # as experiments/finetune_pairs.py reads it
        argv = ["prog", f"--config={ROOT}/experiments/configs/{name}.py:{size}", *args]
        flag_values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
        flag_values(argv)
        return flag_values.config

    c = load_from_command_line(
        "mrl_finetune",
        "tiny",
        "--config.data.files=/tmp/x/a.csv,b.csv",
        "--config.data.smiles_columns=mol_a,mol_b",
        "--config.data.label_columns=y",
        "--config.data.task=regression",
        "--config.data.units=kcal/mol",
    )
    assert as_names(c.data.files) == ("/tmp/x/a.csv", "b.csv")
    assert as_names(c.data.smiles_columns) == ("mol_a", "mol_b") and as_names(c.data.label_columns) == ("y",)
    assert (c.data.task, c.data.units, c.data.explicit_h) == ("regression", "kcal/mol", None)
    c = load_from_command_line("mrl_finetune", "tiny", "--config.data.files=('a.csv', 'b.csv')")
    assert as_names(c.data.files) == ("a.csv", "b.csv")


def test_user_file_as_a_pretraining_source(user_csv, cache_root):
    """data.files is one more source besides data.presets; data.presets=() leaves it alone."""
    from experiments.configs import mrl3d

    path, _ = user_csv
    c = mrl3d.get_config("tiny")
    c.data.update(files=str(path), smiles_columns="mol_a,mol_b", cache_dir=cache_root, limit=10)
    c.data.presets = ()
    ds = load_pretraining_pairs(c.data)
    assert (ds.name, len(ds), ds.explicit_h) == ("my_solvation", 10, True)
    assert ds.labels.shape == (10, 0)  # no label column: pretraining needs none
    c.data.presets = ("freesolv",)
    both = load_pretraining_pairs(c.data)
    assert len(both) == 20 and both.explicit_h is True
    assert {r.split(":")[0] for r in both.rows} == {"freesolv.csv", "my_solvation.csv"}
    c.data.files = None
    with pytest.raises(ValueError, match="describe data.files"):
        load_pretraining_pairs(c.data)


def test_partly_missing_preset_files_are_named_and_the_rest_read(tmp_path, caplog, cache_root):
    (tmp_path / "ddi").mkdir()
    for split in ("valid", "test"):  # ZhangDDI's columns are ChChMiner's; no train file
        header, rows = _real_rows(f"ddi/ChChMiner_{split}.csv", 3)
        with open(tmp_path / "ddi" / f"ZhangDDI_{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, header)
            w.writeheader()
            w.writerows(rows)
    cache = MoleculeCache(cache_root, explicit_h=False)
    with caplog.at_level(logging.WARNING, logger="georecon_jax.data.pairs"):
        ds = load_pairs("zhangddi", data_root=str(tmp_path), cache=cache, num_workers=1, verbose=False)
    assert len(ds) == 6 and ds.task == "classification" and set(ds.labels[:, 0]) <= {0.0, 1.0}
    assert [r.split(":")[0] for r in ds.rows[[0, 3]]] == ["ZhangDDI_valid.csv", "ZhangDDI_test.csv"]
    missing = str(tmp_path / "ddi" / "ZhangDDI_train.csv")
    assert ds.missing_files == (missing,)
    assert any(missing in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with pytest.raises(DataError, match="ZhangDDI_train.csv.*ZhangDDI_valid.csv.*data_prep/mrl.py"):
        load_pairs("zhangddi", data_root=str(tmp_path / "nowhere"), cache=cache, verbose=False)


def test_label_column_of_the_wrong_kind_names_file_column_and_row(tmp_path, cache_root):
    cache = MoleculeCache(cache_root, explicit_h=False)
    path = tmp_path / "pairs.csv"
    path.write_text(
        "a,b,y,word,cls\n"
        "CCO,O,1.5,water,1\n"
        "CC,O,,ethane,0\n"  # an empty cell: a missing label, skipped
        "CCN,O,2.0,amine,2\n"
        "CCC,O,oops,propane,1\n"  # one bad value in a numeric column: skipped
        "CCCl,O,0.3,chloride,0\n"
    )
    kw = dict(files=str(path), smiles_columns=("a", "b"), cache=cache, num_workers=1, verbose=False)
    with pytest.raises(DataError, match=r"pairs\.csv: label column 'cls' .*classification.*row 4 holds '2'"):
        load_pairs(label_columns="cls", task="classification", **kw)
    with pytest.raises(DataError, match=r"pairs\.csv: label column 'y' .*classification.*row 2 holds '1\.5'"):
        load_pairs(label_columns="y", task="classification", **kw)
    with pytest.raises(
        DataError, match=r"pairs\.csv: label column 'word' .*classification.*row 2 holds 'water'"
    ):
        load_pairs(label_columns="word", task="classification", **kw)
    with pytest.raises(DataError, match=r"pairs\.csv: label column 'word' .*regression.*row 2 holds 'water'"):
        load_pairs(label_columns="word", task="regression", **kw)
    ds = load_pairs(label_columns="y", task="regression", **kw)
    np.testing.assert_allclose(ds.labels[:, 0], [1.5, 2.0, 0.3])
    reasons = {s["record"]: s["reason"] for s in ds.skip.skipped}
    assert "missing" in reasons["pairs.csv:3"] and "not a number" in reasons["pairs.csv:5"]
    with pytest.raises(ValueError, match="unknown pair task 'regresion'"):
        load_pairs(label_columns="y", task="regresion", **kw)
    kw["smiles_columns"] = "a"
    with pytest.raises(ValueError, match="exactly two SMILES columns.*got 1"):
        load_pairs(label_columns="y", **kw)
    with pytest.raises(ValueError, match="exactly two SMILES columns.*got 3"):
        load_pairs(label_columns="y", **dict(kw, smiles_columns="a,b,word"))


def test_explicit_hydrogens_reach_the_graph_and_the_conformer(cache_root):
    """FreeSolv (solvation: the reference adds hydrogens) has them by default, as graph nodes with
    their bonds and as conformer atoms; absorption (chromophore fine-tuning) has none; pretraining
    always has them; an explicit setting wins."""
    from experiments.configs import mrl3d, mrl_finetune
    from georecon_jax.graphs.pairs import PairBudget, pack_pairs

    require_shared("solvation/freesolv.csv")
    c = mrl_finetune.get_config("tiny")
    c.data.update(cache_dir=cache_root, limit=6)
    assert c.data.explicit_h is None and resolve_explicit_h(c.data) is True
    assert molecule_cache(c.data).path.endswith("_h1_seed0_mmff0.pkl")  # the cache key holds it
    ds = load_pair_task(c)
    assert ds.explicit_h is True
    for i in range(len(ds)):
        rec = ds.molecules[ds.index1[i]]
        heavy = Chem.MolFromSmiles(rec["smiles"])
        full = Chem.AddHs(heavy)
        z = rec["atomic_numbers"]
        n_h = int(np.sum(z == 1))
        assert len(z) == heavy.GetNumAtoms() + n_h == full.GetNumAtoms() and n_h > 0
        assert len(rec["senders"]) == 2 * full.GetNumBonds()
        h_atoms = np.flatnonzero(z == 1)
        assert np.all(np.bincount(rec["senders"], minlength=len(z))[h_atoms] == 1)  # one bond each
        assert rec["positions"].shape == (len(z), 3) and np.all(np.isfinite(rec["positions"]))
        for s, r in zip(rec["senders"], rec["receivers"]):
            if z[s] == 1:  # an X-H bond of the conformer
                assert 0.9 < np.linalg.norm(rec["positions"][s] - rec["positions"][r]) < 1.2
    batch = pack_pairs(ds, [0, 1], 2, PairBudget.from_dataset(ds))
    water = ds.molecules[ds.index2[0]]
    assert water["atomic_numbers"].tolist() == [8, 1, 1]
    n1 = [len(ds.molecules[ds.index1[i]]["atomic_numbers"]) for i in (0, 1)]
    assert batch.graph1.nodes.mask.reshape(2, -1).sum(1).tolist() == n1
    assert np.sum(batch.graph1.nodes.atomic_numbers == 1) > 0
    # ... and into the 3D environment: the solute's hydrogens and each water copy's two
    import jax

    from experiments.configs import mrl3d as mrl3d_config
    from georecon_jax.objectives.mrl3d import environment_for

    env_cfg = mrl3d_config.get_config("tiny").environment
    env_cfg.update(num_copies=3, min_radius=1.5, min_distance=0.0, num_trials=1, max_atoms=0)
    env, z = environment_for(jax.tree_util.tree_map(np.asarray, batch), jax.random.PRNGKey(0), env_cfg)
    z, env = np.asarray(z), jax.device_get(env)
    for b in range(2):
        solute_h = int(np.sum(ds.molecules[ds.index1[b]]["atomic_numbers"] == 1))
        copies = int(env.copy_mask[b].sum())
        assert copies > 0 and int(np.sum(z[b] == 1)) == solute_h + 2 * copies
        assert int(np.sum(z[b] == 8)) >= copies  # one oxygen per water copy

    c.data.preset = "absorption"
    assert resolve_explicit_h(c.data) is False
    ds = load_pair_task(c)
    assert ds.explicit_h is False
    assert all(1 not in m["atomic_numbers"] for m in ds.molecules)
    c.data.explicit_h = True
    assert resolve_explicit_h(c.data) is True
    c.data.preset, c.data.explicit_h = "freesolv", False
    assert resolve_explicit_h(c.data) is False

    p = mrl3d.get_config("tiny")
    assert p.data.explicit_h is None and resolve_explicit_h(p.data, pretraining=True) is True
    p.data.explicit_h = False
    assert resolve_explicit_h(p.data, pretraining=True) is False


def test_a_random_subset_is_drawn_before_any_conformer_is_computed(cache_root, tmp_path):
    """data.max_pairs on a regression task: only the drawn rows' molecules are embedded, and the
    pairs are the ones subsetting the loaded set with the same draw gives (no row is skipped)."""
    root = str(require_shared("solvation").parent)
    fresh = MoleculeCache(str(tmp_path), explicit_h=True)
    part = load_pairs(
        "freesolv", data_root=root, cache=fresh, num_workers=1, limit=60, sample=(12, 3), verbose=False
    )
    assert len(part) == 12 and len(fresh._store) <= 13  # 12 solutes and water
    full = load_pairs(
        "freesolv",
        data_root=root,
        cache=MoleculeCache(cache_root, explicit_h=True),
        num_workers=1,
        limit=60,
        verbose=False,
    )
    keep = np.sort(np.random.default_rng(3).choice(len(full), 12, replace=False))
    assert list(part.rows) == list(full.rows[keep])
    np.testing.assert_array_equal(part.labels, full.labels[keep])
