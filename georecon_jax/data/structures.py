"""Files of molecules to predict on -> `Structure` records, one per molecule, each with its error.

Formats, by extension:

  ``.xyz`` / ``.extxyz``      one or many frames, each its own molecule (any atoms, any count):
                              plain XYZ (``symbol x y z`` per atom; atomic numbers and QM9's
                              ``*^`` exponents accepted) or extended XYZ (``Properties=species:S:1:
                              pos:R:3:...``; ``name=`` in the comment line names the frame), read
                              by `georecon_jax.data.xyz`
  ``.sdf`` / ``.mol``         every record with its own 3D coordinates (RDKit; hydrogens as written)
  ``.smi`` / ``.smiles`` /    one SMILES per line, optionally followed by a name; a header line
  ``.txt``                    ``smiles ...`` is skipped; each molecule gets one seeded ETKDG
                              conformer with every hydrogen (`georecon_jax.chem.structures`)
  ``.csv``                    a ``smiles`` column (any case) and optionally ``name`` or ``id``

A record that cannot be used (an unknown element, a number that does not parse, a SMILES RDKit
cannot read or embed, an SDF record without 3D coordinates or with implicit hydrogens) becomes a
`Structure` whose ``error`` names the file, the frame, record or line, and the reason; the other
records are read as usual. Only a file that cannot be read at all (missing, unknown extension, an
XYZ whose atom count line is broken, after which no frame boundary can be trusted) raises or ends
the list with that error.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import List, Optional

import numpy as np

from georecon_jax.data.records import ELEMENT_SYMBOLS, DataError, check_molecule
from georecon_jax.data.xyz import read_xyz_frames

XYZ_EXTENSIONS = (".xyz", ".extxyz")
SDF_EXTENSIONS = (".sdf", ".mol", ".sd")
SMILES_EXTENSIONS = (".smi", ".smiles", ".txt")
CSV_EXTENSIONS = (".csv",)


@dataclasses.dataclass
class Structure:
    """One molecule to predict on: atoms and coordinates (Å), or the reason it cannot be used.

    ``name``: what the output calls it (a frame's ``name=``, an SDF title, a SMILES file's name
    column, else the SMILES or ``frame k``); ``source``: file and frame/record/line.
    """

    name: str
    source: str
    atomic_numbers: Optional[np.ndarray] = None  # [n] int
    positions: Optional[np.ndarray] = None  # [n, 3] float64, Å
    error: Optional[str] = None
    smiles: Optional[str] = None

    @property
    def n_atoms(self) -> int:
        return 0 if self.atomic_numbers is None else int(len(self.atomic_numbers))

    @property
    def formula(self) -> str:
        return "" if self.atomic_numbers is None else formula(self.atomic_numbers)


def formula(atomic_numbers) -> str:
    """Hill formula: C and H first, then the other elements alphabetically (``C9H8O4``)."""
    z = np.asarray(atomic_numbers, np.int64)
    counts = {}
    for v in z.tolist():
        symbol = ELEMENT_SYMBOLS[v] if 0 < v < len(ELEMENT_SYMBOLS) else f"Z{v}"
        counts[symbol] = counts.get(symbol, 0) + 1
    order = [s for s in ("C", "H") if s in counts and "C" in counts]
    order += sorted(s for s in counts if s not in order)
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)


def from_arrays(atomic_numbers, positions, name: str, source: str) -> Structure:
    """A `Structure` of given arrays, with ``error`` set when they are unusable."""
    z = np.asarray(atomic_numbers)
    pos = np.asarray(positions, np.float64) if positions is not None else None
    if z.dtype.kind not in "iu":
        if z.dtype.kind == "f" and np.all(z == np.round(z)):
            z = z.astype(np.int64)
        else:
            return Structure(
                name, source, error=f"{source}: atomic numbers of dtype {z.dtype} are not integers"
            )
    reason = check_molecule(z, pos)
    if reason:
        return Structure(name, source, error=f"{source}: {reason}")
    return Structure(name, source, z.astype(np.int64), pos)


def read_xyz(path: str) -> List[Structure]:
    """Every frame of a (extended) XYZ file, each its own molecule (see the module doc)."""
    name, out = os.path.basename(path), []
    for frame in read_xyz_frames(path):
        source = f"{name} frame {frame.index} (line {frame.line})"
        label = frame.info.get("name") or frame.info.get("id")
        if label is None and "=" not in frame.comment and 0 < len(frame.comment.strip()) <= 80:
            label = frame.comment.strip()
        label = label or f"frame {frame.index}"
        if frame.error is None:
            out.append(from_arrays(frame.atomic_numbers, frame.vectors["pos"], label, source))
        else:
            rest = "; the rest of the file is not read" if frame.last else ""
            out.append(Structure(label, source, error=f"{source}: {frame.error}{rest}"))
    return out


def read_sdf(path: str) -> List[Structure]:
    """Every record of an SDF (or MOL) file, with its own coordinates (see the module doc)."""
    from georecon_jax.chem.structures import read_sdf as records

    name = os.path.basename(path)
    out = []
    for i, label, z, pos, reason in records(path):
        source = f"{name} record {i}"
        if reason:
            out.append(Structure(label, source, error=f"{source}: {reason}"))
        else:
            out.append(from_arrays(z, pos, label, source))
    return out


def _smiles_rows(path: str):
    """(line number, SMILES, name or None) of a SMILES or CSV file."""
    name = os.path.basename(path)
    if path.lower().endswith(CSV_EXTENSIONS):
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = {k.lower(): k for k in reader.fieldnames or []}
            if "smiles" not in fields:
                raise DataError(f"{name}: no 'smiles' column (columns: {reader.fieldnames})")
            label = fields.get("name") or fields.get("id")
            for k, row in enumerate(reader):
                yield (
                    k + 2,
                    (row[fields["smiles"]] or "").strip(),
                    (row.get(label) or None) if label else None,
                )
        return
    with open(path, encoding="utf-8") as f:
        for k, line in enumerate(f):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(maxsplit=1)
            if k == 0 and parts[0].lower() == "smiles":
                continue  # a header
            yield k + 1, parts[0], parts[1].strip() if len(parts) > 1 else None


def read_smiles(path: str, seed: int = 0, mmff: bool = False) -> List[Structure]:
    """One molecule per SMILES, embedded as one seeded ETKDG conformer with every hydrogen."""
    from georecon_jax.chem.structures import smiles_to_3d

    name = os.path.basename(path)
    out = []
    for line, smiles, label in _smiles_rows(path):
        source = f"{name} line {line}"
        z, pos, canonical, reason = smiles_to_3d(smiles, seed=seed, mmff=mmff)
        if reason:
            out.append(Structure(label or smiles, source, error=f"{source}: {reason}", smiles=smiles))
        else:
            s = from_arrays(z, pos, label or smiles, source)
            s.smiles = canonical
            out.append(s)
    return out


def smiles_structures(smiles_list, seed: int = 0, mmff: bool = False) -> List[Structure]:
    """`Structure` records of SMILES strings given in Python (one seeded ETKDG conformer each)."""
    from georecon_jax.chem.structures import smiles_to_3d

    out = []
    for k, smiles in enumerate(smiles_list):
        source = f"SMILES {k}"
        z, pos, canonical, reason = smiles_to_3d(smiles, seed=seed, mmff=mmff)
        if reason:
            out.append(Structure(smiles, source, error=f"{source}: {reason}", smiles=smiles))
        else:
            s = from_arrays(z, pos, smiles, source)
            s.smiles = canonical
            out.append(s)
    return out


def read_structures(path: str, seed: int = 0, mmff: bool = False) -> List[Structure]:
    """The molecules of a file, by its extension (see the module doc); ``seed`` and ``mmff`` set
    the ETKDG conformer of SMILES input.

    Raises:
      DataError for a missing file or an unknown extension.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(XYZ_EXTENSIONS):
        return read_xyz(path)
    if lower.endswith(SDF_EXTENSIONS):
        return read_sdf(path)
    if lower.endswith(SMILES_EXTENSIONS + CSV_EXTENSIONS):
        return read_smiles(path, seed=seed, mmff=mmff)
    known = XYZ_EXTENSIONS + SDF_EXTENSIONS + SMILES_EXTENSIONS + CSV_EXTENSIONS
    raise DataError(f"{path}: unknown input format (use one of {', '.join(known)})")


def write_xyz(path: str, structures, comments=None) -> None:
    """Writes usable structures as a multi-frame extended XYZ (``name=`` in each comment line)."""
    with open(path, "w", encoding="utf-8") as f:
        for k, s in enumerate(structures):
            z, pos = s.atomic_numbers, s.positions
            extra = f" {comments[k]}" if comments else ""
            label = str(s.name).replace('"', "'")
            f.write(f'{len(z)}\nProperties=species:S:1:pos:R:3 name="{label}"{extra}\n')
            for a, p in zip(z, pos):
                f.write(f"{ELEMENT_SYMBOLS[int(a)]} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f}\n")
