"""RDKit featurisation and cached conformers."""

import numpy as np
from rdkit import Chem

from georecon_jax.chem import features as F
from georecon_jax.chem.conformers import MoleculeCache, molecule_record

GROUPS = [
    len(F.ELEMENTS) + 1,
    len(F.DEGREES) + 1,
    len(F.FORMAL_CHARGES) + 1,
    len(F.HYBRIDISATIONS) + 1,
    1,
    len(F.H_COUNTS) + 1,
    1,
    len(F.RING_SIZES) + 1,
    len(F.CHIRALITY) + 1,
]


def _group(feats, g):
    start = sum(GROUPS[:g])
    return feats[..., start : start + GROUPS[g]]


def test_atom_features_are_documented_one_hots():
    assert sum(GROUPS) == F.ATOM_FEATURE_DIM
    rec = F.featurize_mol(Chem.MolFromSmiles("c1ccccc1C(=O)[O-]"))
    x = rec["atom_features"]
    assert x.shape == (9, F.ATOM_FEATURE_DIM)
    for g, width in enumerate(GROUPS):
        if width > 1:
            np.testing.assert_array_equal(_group(x, g).sum(-1), 1.0)
    assert (_group(x, 0)[:, F.ELEMENTS.index("C")][:7] == 1).all()
    assert (_group(x, 4)[:6, 0] == 1).all() and (_group(x, 4)[6:, 0] == 0).all()  # aromatic ring
    assert rec["in_ring"].tolist() == [True] * 6 + [False] * 3
    assert _group(x, 2)[8, F.FORMAL_CHARGES.index(-1)] == 1  # the carboxylate O-
    assert _group(x, 5)[0, 1] == 1 and _group(x, 5)[5, 0] == 1  # CH vs substituted C
    assert (_group(x, 7)[:6, F.RING_SIZES.index(6)] == 1).all()


def test_bond_features_both_directions():
    rec = F.featurize_mol(Chem.MolFromSmiles("C=CC#N"))
    assert rec["senders"].tolist() == [0, 1, 1, 2, 2, 3] and rec["receivers"].tolist() == [1, 0, 2, 1, 3, 2]
    types = rec["bond_features"][:, : len(F.BOND_TYPES) + 1].argmax(-1)
    assert types.tolist() == [1, 1, 0, 0, 2, 2]  # double, single, triple
    assert rec["bond_features"].shape[1] == F.BOND_FEATURE_DIM
    assert rec["bond_features"][:, len(F.BOND_TYPES) + 1].all()  # all conjugated


def test_conformer_and_hydrogens_treated_alike():
    heavy, r1 = molecule_record("CCO", explicit_h=False, seed=0)
    full, r2 = molecule_record("CCO", explicit_h=True, seed=0)
    assert r1 is None and r2 is None
    assert heavy["positions"].shape == (3, 3) and full["positions"].shape == (9, 3)
    assert full["atomic_numbers"].tolist().count(1) == 6
    np.testing.assert_allclose(heavy["positions"], full["positions"][:3], atol=1e-5)  # same conformer
    d = np.linalg.norm(heavy["positions"][0] - heavy["positions"][1])
    assert 1.4 < d < 1.65  # a C–C bond, Å
    again, _ = molecule_record("OCC", explicit_h=False, seed=0)  # same molecule, other SMILES
    assert again["smiles"] == heavy["smiles"]


def test_bad_molecules_are_reported_not_raised(tmp_path):
    for bad in ["C1CC", "not a smiles", "", "[Xx]"]:
        rec, reason = molecule_record(bad)
        assert rec is None and reason
    cache = MoleculeCache(str(tmp_path), seed=0)
    cache.compute(["CCO", "C1CC"], num_workers=1, verbose=False)
    assert cache.get("CCO")[0] is not None and cache.get("C1CC")[0] is None
    reloaded = MoleculeCache(str(tmp_path), seed=0)  # persisted, failures too
    assert "CCO" in reloaded and "C1CC" in reloaded
    np.testing.assert_array_equal(reloaded.get("CCO")[0]["positions"], cache.get("CCO")[0]["positions"])
    assert "C1CC" not in MoleculeCache(str(tmp_path), seed=1)  # keyed by the setting
