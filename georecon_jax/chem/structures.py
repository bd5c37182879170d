"""Molecules a user brings, as atoms and 3D coordinates (RDKit, no JAX): SMILES embedded as one
seeded ETKDG conformer with every hydrogen, and SDF/MOL records with their own coordinates.

Each function returns ``(atomic_numbers [n], positions [n, 3] Å)`` or ``(None, None, reason)``
style tuples and never raises on a bad molecule: the caller reports the reason on its row.
Models trained on QM9 or MD17 saw every atom, hydrogens included, so a SMILES is embedded with
``AddHs`` and an SDF record whose hydrogens are implicit is refused rather than predicted without
them.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
from rdkit import Chem, RDLogger

from georecon_jax.chem.conformers import embed_conformer
from georecon_jax.chem.features import parse_smiles

Atoms3D = Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[str]]


def smiles_to_3d(smiles: str, seed: int = 0, mmff: bool = False) -> Tuple[Optional[np.ndarray], ...]:
    """(atomic_numbers, positions, canonical SMILES, reason): one ETKDGv3 conformer of the molecule
    with all hydrogens (`conformers.embed_conformer`: the same seed gives the same coordinates), or
    (None, None, None, reason)."""
    RDLogger.DisableLog("rdApp.*")
    mol, reason = parse_smiles(smiles)
    if mol is None:
        return None, None, None, f"SMILES {smiles!r}: {reason}"
    positions, reason = embed_conformer(mol, seed=seed, mmff=mmff)
    if positions is None:
        return None, None, None, f"SMILES {smiles!r}: {reason}"
    mol_h = Chem.AddHs(mol)  # the atom order embed_conformer used
    z = np.array([a.GetAtomicNum() for a in mol_h.GetAtoms()], np.int64)
    return z, positions.astype(np.float64), Chem.MolToSmiles(mol), None


def _implicit_hydrogens(mol) -> int:
    """Hydrogens RDKit infers but the record does not list as atoms (0 when it cannot tell)."""
    try:
        copy = Chem.Mol(mol)
        Chem.SanitizeMol(copy)
        return int(sum(a.GetNumImplicitHs() + a.GetNumExplicitHs() for a in copy.GetAtoms()))
    except Exception:  # valence errors and the like: the atoms and coordinates are still usable
        return 0


def read_sdf(path: str) -> Iterator[Tuple[int, str, np.ndarray, np.ndarray, Optional[str]]]:
    """(record index, name, atomic_numbers, positions, reason or None) of every record of an SDF
    (or a single MOL file), hydrogens kept as written. A record RDKit cannot read, one without 3D
    coordinates, or one whose hydrogens are implicit yields its reason instead of atoms."""
    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier(path, removeHs=False, sanitize=False, strictParsing=False)
    for i in range(len(supplier)):
        try:
            mol = supplier[i]
        except Exception as e:  # noqa: BLE001 - RDKit raises assorted errors on broken records
            yield i, f"record {i}", None, None, f"RDKit cannot read it ({type(e).__name__}: {e})"
            continue
        if mol is None:
            yield i, f"record {i}", None, None, "RDKit cannot read it (a broken molblock)"
            continue
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        name = name or f"record {i}"
        if mol.GetNumAtoms() == 0:
            yield i, name, None, None, "no atoms"
            continue
        if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
            yield i, name, None, None, "2D coordinates (the model needs a 3D structure)"
            continue
        implicit = _implicit_hydrogens(mol)
        if implicit:
            yield (
                i,
                name,
                None,
                None,
                f"{implicit} hydrogen(s) are implicit (not atoms of the record); the model was trained "
                "with every atom: add them with coordinates, e.g. RDKit's Chem.AddHs(mol, addCoords=True)",
            )
            continue
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
        pos = np.asarray(mol.GetConformer().GetPositions(), np.float64)
        yield i, name, z, pos, None
