"""Predictions on molecules a user brings (georecon_jax.tasks.inference, experiments.predict):
the numbers are experiments.evaluate's for the same molecules, whatever the input format; bad rows
are reported, naming file and row, and skipped; a few padded shapes, not one per molecule."""

import csv
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from finetuned_workdirs import qm9_workdir
from georecon_jax import load_model
from georecon_jax.chem.structures import smiles_to_3d
from georecon_jax.data.structures import Structure, read_structures, write_xyz
from georecon_jax.tasks import evaluation


TARGET = "U0"  # an energy with per-element references: the host adds them, as evaluate does


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, qm9_small):
    return qm9_workdir(tmp_path_factory, TARGET)


@pytest.fixture(scope="module")
def evaluated(workdir, qm9_small):
    """evaluate's predictions on the test split, and those molecules as Structures."""
    p = evaluation.predict_split(workdir)
    mols, _ = qm9_small
    structures = [
        Structure(f"qm9 {mols.ids[i]}", f"qm9 {i}", *[np.asarray(a) for a in mols.molecule(i)])
        for i in p["ids"]
    ]
    return p, structures


@pytest.fixture(scope="module")
def model(workdir):
    return load_model(workdir)


def bad_frames(structures):
    """Frames no QM9 model may predict: chlorine in place of hydrogen (QM9 has none), and more than
    32 atoms (three molecules 20 Å apart) for a budget of 32."""
    first = structures[0]
    z = np.where(first.atomic_numbers == 1, 17, first.atomic_numbers)
    chlorinated = Structure("chloro", "", z, first.positions)
    big = [s for s in structures if s.n_atoms >= 12][:3]
    z = np.concatenate([s.atomic_numbers for s in big])
    pos = np.concatenate([s.positions + 20.0 * k for k, s in enumerate(big)])
    assert len(z) > 32, len(z)
    return chlorinated, Structure("too big", "", z, pos)


def test_xyz_predictions_equal_evaluate_and_bad_rows_are_reported(model, evaluated, tmp_path):
    p, structures = evaluated
    chlorinated, big = bad_frames(structures)
    path = tmp_path / "molecules.xyz"
    rows = structures[:5] + [chlorinated] + structures[5:10] + [big] + structures[10:]
    write_xyz(str(path), rows)
    with open(path, "a") as f:  # an unknown element, then a good frame again
        f.write("2\nname=unknown\nXx 0 0 0\nH 0 0 0.74\n")
    with open(path, "a") as f:
        f.write("3\nname=water\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n")
    small = load_model(model.source, max_atoms=32)
    result = small.predict(str(path))
    assert len(result) == len(rows) + 2
    good = [k for k in range(len(rows)) if rows[k] is not chlorinated and rows[k] is not big]
    np.testing.assert_allclose(result.values[good], p["predicted"], rtol=2e-7, atol=0)
    errors = {k: e for k, e in enumerate(result.errors) if e}
    assert set(errors) == {5, 11, len(rows)}, errors
    assert (
        "molecules.xyz frame 5 (line" in errors[5]
        and "Cl never seen" in errors[5]
        and "it knows H, C, N, O, F" in errors[5]
    )
    assert "frame 11" in errors[11] and f"{big.n_atoms} atoms, more than the budget of 32" in errors[11]
    assert "unknown element(s) ['Xx']" in errors[len(rows)]
    assert np.isnan(result.values[[5, 11, len(rows)]]).all() and np.isfinite(result.values[-1])
    assert result.structures[-1].name == "water" and result.structures[-1].formula == "H2O"
    assert result.unit == "eV" and result.forces is None
    # A few padded shapes: one compilation per size tier (8, 16, 32 atoms), none per molecule.
    compiled = small._fn(False)._cache_size()
    again = small.predict(structures[::-1] + structures[:3])
    np.testing.assert_allclose(again.values[::-1][3:], p["predicted"], rtol=2e-7)
    assert small._fn(False)._cache_size() == compiled <= 3


def test_smiles_predictions_equal_the_same_conformer_through_the_xyz_path(model, tmp_path):
    """A SMILES gets one seeded ETKDG conformer (not QM9's DFT geometry: the number is for that
    conformer); written as XYZ, the same conformer gives the same number, as does an SDF of it."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    smi = tmp_path / "molecules.smi"
    smi.write_text(
        "smiles name\nCCO ethanol\nc1ccccc1O phenol\nC1CC broken\nCC(=O)NC\nCCCl chloroethane\nOC=O\n"
    )
    result = model.predict(str(smi), seed=7)
    assert [s.name for s in result.structures] == [
        "ethanol",
        "phenol",
        "broken",
        "CC(=O)NC",
        "chloroethane",
        "OC=O",
    ]
    errors = result.errors
    assert "molecules.smi line 4: SMILES 'C1CC': RDKit could not parse it" in errors[2]
    assert "molecules.smi line 6" in errors[4] and "Cl never seen" in errors[4]
    good = [0, 1, 3, 5]
    assert all(errors[k] is None for k in good) and np.isfinite(result.values[good]).all()

    conformers = []
    for smiles in ("CCO", "c1ccccc1O", "CC(=O)NC", "OC=O"):
        z, pos, _, reason = smiles_to_3d(smiles, seed=7)
        assert reason is None
        again = smiles_to_3d(smiles, seed=7)[1]
        np.testing.assert_array_equal(pos, again)  # seeded: the same conformer every time
        conformers.append(Structure(smiles, smiles, z, pos))
    write_xyz(str(tmp_path / "same.xyz"), conformers)
    via_xyz = model.predict(str(tmp_path / "same.xyz"))
    np.testing.assert_allclose(via_xyz.values, result.values[good], rtol=1e-12)
    np.testing.assert_allclose(model.predict_smiles(["CCO"], seed=7).values, result.values[:1], rtol=1e-6)
    assert model.predict_smiles(["CCO"], seed=8).values[0] != result.values[0]  # another conformer

    # SDF: the same conformers (4 decimals of Å), a 2D record and one with implicit hydrogens.
    writer = Chem.SDWriter(str(tmp_path / "same.sdf"))
    for smiles, s in zip(("CCO", "c1ccccc1O", "CC(=O)NC", "OC=O"), conformers):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=1)
        for i, xyz in enumerate(s.positions):
            mol.GetConformer().SetAtomPosition(i, xyz.tolist())
        mol.SetProp("_Name", smiles)
        writer.write(mol)
        if smiles == "CCO":
            writer.write(Chem.MolFromSmiles("CCN"))  # 2D
            writer.write(Chem.RemoveHs(mol))  # heavy atoms only
    writer.close()
    via_sdf = model.predict(str(tmp_path / "same.sdf"))
    assert "same.sdf record 1: 2D coordinates" in via_sdf.errors[1]
    assert "same.sdf record 2: 6 hydrogen(s) are implicit" in via_sdf.errors[2]
    np.testing.assert_allclose(via_sdf.values[[0, 3, 4, 5]], via_xyz.values, rtol=1e-4)


def test_the_model_uses_the_best_checkpoints_ema_weights(model, workdir):
    from georecon_jax.training.checkpoint import restore_params

    assert model.uses_ema and model.checkpoint == "best" and model.step == 6
    _, raw = restore_params(os.path.join(workdir, "best", "checkpoints", "6"))
    ours = [np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)]
    assert all(np.array_equal(a, b) for a, b in zip(ours, jax.tree_util.tree_leaves(raw["ema_params"])))
    assert not any(np.array_equal(a, b) for a, b in zip(ours, jax.tree_util.tree_leaves(raw["params"])))


def test_the_command_writes_one_row_per_molecule(workdir, evaluated, tmp_path):
    p, structures = evaluated
    chlorinated, _ = bad_frames(structures)
    write_xyz(str(tmp_path / "in.xyz"), structures[:3] + [chlorinated] + structures[3:])
    out = tmp_path / "out" / "pred.csv"
    cmd = [
        sys.executable,
        "-m",
        "experiments.predict",
        f"--workdir={workdir}",
        f"--input={tmp_path / 'in.xyz'}",
    ]
    run = subprocess.run(cmd + [f"--output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{len(structures)} of {len(structures) + 1} molecules predicted" in run.stdout
    assert "in.xyz frame 3 (line" in run.stdout and "Cl never seen" in run.stdout
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "name", "source", "formula", "n_atoms", TARGET, "unit", "error"]
    assert rows[3]["error"] and rows[3][TARGET] == "" and all(r["unit"] == "eV" for r in rows)
    values = [float(r[TARGET]) for r in rows if not r["error"]]
    np.testing.assert_allclose(values, p["predicted"], rtol=2e-7)
    assert [r["name"] for r in rows[:2]] == [structures[0].name, structures[1].name]


def test_unreadable_inputs_are_refused_naming_the_file(model, tmp_path):
    from georecon_jax.data.records import DataError

    with pytest.raises(DataError, match="no such file"):
        model.predict(str(tmp_path / "missing.xyz"))
    (tmp_path / "a.pdb").write_text("")
    with pytest.raises(DataError, match="a.pdb: unknown input format"):
        model.predict(str(tmp_path / "a.pdb"))
    (tmp_path / "b.xyz").write_text("3\n\nO 0 0 0\nH 0 0 1\nfour\n")
    [s] = read_structures(str(tmp_path / "b.xyz"))
    assert "b.xyz frame 0 (line 1): the atom count line says 3 atoms but 2 atom lines follow" in s.error
