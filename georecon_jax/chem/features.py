"""Atom and bond features of an RDKit molecule, as one-hot numpy arrays (no JAX here).

Atom features (``ATOM_FEATURE_DIM`` columns, in this order; every group is one-hot with a last
"other" slot so that an unseen value never crashes):

  =====================  ======================================================  =====
  group                  values                                                  width
  =====================  ======================================================  =====
  element                H B C N O F Si P S Cl Br I Se, other                      14
  degree                 0 1 2 3 4 5, more (heavy + explicit neighbours)            7
  formal charge          -2 -1 0 +1 +2, other                                       6
  hybridisation          S SP SP2 SP3 SP3D SP3D2, other                             7
  aromatic               0/1                                                        1
  total hydrogen count   0 1 2 3 4, more                                            6
  in a ring              0/1                                                        1
  ring size              3 4 5 6 7, other-or-none (smallest ring holding the atom)  6
  chirality tag          unspecified, CW, CCW, other                                4
  =====================  ======================================================  =====

Bond features (``BOND_FEATURE_DIM`` columns): type (single, double, triple, aromatic, other: 5),
conjugated (1), in a ring (1), stereo (none, any, Z, E, cis, trans, other: 7).

Hydrogens: `featurize_mol` takes the molecule as given. `georecon_jax.chem.conformers.molecule_record`
decides, from one flag ``explicit_h``, whether hydrogens are graph nodes (``Chem.AddHs``: each H
an atom with its bond, and an atom of the 3D conformer); pretraining and fine-tuning both build
their graphs through it. With ``explicit_h=False`` hydrogens are counted in the "total hydrogen
count" feature only. The pair jobs follow the reference (Namkyeong/3DMRL) unless told otherwise:
explicit hydrogens in pretraining and in solvation and DDI fine-tuning, none in chromophore
fine-tuning (`georecon_jax.data.pairs.default_explicit_h`).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from rdkit import Chem, RDLogger

ELEMENTS = ("H", "B", "C", "N", "O", "F", "Si", "P", "S", "Cl", "Br", "I", "Se")
DEGREES = (0, 1, 2, 3, 4, 5)
FORMAL_CHARGES = (-2, -1, 0, 1, 2)
HYBRIDISATIONS = (
    Chem.rdchem.HybridizationType.S,
    Chem.rdchem.HybridizationType.SP,
    Chem.rdchem.HybridizationType.SP2,
    Chem.rdchem.HybridizationType.SP3,
    Chem.rdchem.HybridizationType.SP3D,
    Chem.rdchem.HybridizationType.SP3D2,
)
H_COUNTS = (0, 1, 2, 3, 4)
RING_SIZES = (3, 4, 5, 6, 7)
CHIRALITY = (
    Chem.rdchem.ChiralType.CHI_UNSPECIFIED,
    Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CW,
    Chem.rdchem.ChiralType.CHI_TETRAHEDRAL_CCW,
)
BOND_TYPES = (
    Chem.rdchem.BondType.SINGLE,
    Chem.rdchem.BondType.DOUBLE,
    Chem.rdchem.BondType.TRIPLE,
    Chem.rdchem.BondType.AROMATIC,
)
BOND_STEREO = (
    Chem.rdchem.BondStereo.STEREONONE,
    Chem.rdchem.BondStereo.STEREOANY,
    Chem.rdchem.BondStereo.STEREOZ,
    Chem.rdchem.BondStereo.STEREOE,
    Chem.rdchem.BondStereo.STEREOCIS,
    Chem.rdchem.BondStereo.STEREOTRANS,
)

ATOM_FEATURE_DIM = (
    len(ELEMENTS)
    + 1
    + len(DEGREES)
    + 1
    + len(FORMAL_CHARGES)
    + 1
    + len(HYBRIDISATIONS)
    + 1
    + 1
    + len(H_COUNTS)
    + 1
    + 1
    + len(RING_SIZES)
    + 1
    + len(CHIRALITY)
    + 1
)
BOND_FEATURE_DIM = len(BOND_TYPES) + 1 + 1 + 1 + len(BOND_STEREO) + 1


def one_hot(value, choices) -> list:
    """One-hot over ``choices`` plus a final slot for anything else."""
    out = [0.0] * (len(choices) + 1)
    try:
        out[list(choices).index(value)] = 1.0
    except ValueError:
        out[-1] = 1.0
    return out


def _ring_size(atom) -> int:
    if not atom.IsInRing():
        return 0
    for size in RING_SIZES:
        if atom.IsInRingSize(size):
            return size
    return -1


def atom_features(atom) -> list:
    return (
        one_hot(atom.GetSymbol(), ELEMENTS)
        + one_hot(atom.GetDegree(), DEGREES)
        + one_hot(atom.GetFormalCharge(), FORMAL_CHARGES)
        + one_hot(atom.GetHybridization(), HYBRIDISATIONS)
        + [float(atom.GetIsAromatic())]
        + one_hot(atom.GetTotalNumHs(), H_COUNTS)
        + [float(atom.IsInRing())]
        + one_hot(_ring_size(atom), RING_SIZES)
        + one_hot(atom.GetChiralTag(), CHIRALITY)
    )


def bond_features(bond) -> list:
    return (
        one_hot(bond.GetBondType(), BOND_TYPES)
        + [float(bond.GetIsConjugated())]
        + [float(bond.IsInRing())]
        + one_hot(bond.GetStereo(), BOND_STEREO)
    )


def featurize_mol(mol) -> dict:
    """Graph arrays of ``mol`` (atoms in RDKit order).

    Returns a dict: ``atom_features`` [n, ATOM_FEATURE_DIM] float32, ``atomic_numbers`` [n] int32,
    ``in_ring`` [n] bool, ``senders``/``receivers`` [2·n_bonds] int32 (each bond both ways),
    ``bond_features`` [2·n_bonds, BOND_FEATURE_DIM] float32.
    """
    atoms = list(mol.GetAtoms())
    feats = np.asarray([atom_features(a) for a in atoms], np.float32).reshape(len(atoms), ATOM_FEATURE_DIM)
    senders, receivers, bfeats = [], [], []
    for b in mol.GetBonds():
        i, j, f = b.GetBeginAtomIdx(), b.GetEndAtomIdx(), bond_features(b)
        senders += [i, j]
        receivers += [j, i]
        bfeats += [f, f]
    return dict(
        atom_features=feats,
        atomic_numbers=np.asarray([a.GetAtomicNum() for a in atoms], np.int32),
        in_ring=np.asarray([a.IsInRing() for a in atoms], bool),
        senders=np.asarray(senders, np.int32),
        receivers=np.asarray(receivers, np.int32),
        bond_features=np.asarray(bfeats, np.float32).reshape(len(senders), BOND_FEATURE_DIM),
    )


def parse_smiles(smiles: str) -> Tuple[Optional[object], Optional[str]]:
    """(mol, None) or (None, reason). Never raises; RDKit's own log (its parse errors on stderr,
    which the reason repeats) is off."""
    RDLogger.DisableLog("rdApp.*")
    if not isinstance(smiles, str) or not smiles.strip():
        return None, "empty SMILES"
    try:
        mol = Chem.MolFromSmiles(smiles.strip())
    except Exception as e:  # RDKit raises on some inputs instead of returning None
        return None, f"RDKit could not parse it ({type(e).__name__}: {e})"
    if mol is None:
        return None, "RDKit could not parse it (invalid SMILES)"
    if mol.GetNumAtoms() == 0:
        return None, "no atoms"
    return mol, None


def canonical_smiles(smiles: str) -> Optional[str]:
    """RDKit canonical SMILES, or None when unparseable."""
    mol, _ = parse_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def murcko_scaffold(smiles: str) -> str:
    """Bemis–Murcko scaffold SMILES (empty for acyclic molecules; the input if unparseable)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol, _ = parse_smiles(smiles)
    if mol is None:
        return smiles
    try:
        return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)
    except Exception:
        return smiles
