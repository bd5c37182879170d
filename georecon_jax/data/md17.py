"""MD17-family trajectories (energies and forces of one molecule) -> typed records (numpy only).

Formats read, each into a `ForceFrames` record:

  ============================ ========================================== ======================
  format                       keys / layout                              units as shipped
  ============================ ========================================== ======================
  rMD17 ``.npz``               nuclear_charges [n], coords [f, n, 3],      kcal/mol, Å,
  (Christensen 2020)           energies [f], forces [f, n, 3]              kcal/mol/Å
  MD17 / sGDML ``.npz``        z [n], R [f, n, 3], E [f] or [f, 1],        kcal/mol, Å,
  (Chmiela 2017)               F [f, n, 3]                                 kcal/mol/Å
  extended XYZ                 per frame: atom count line; comment line   given by the caller
  (MD22, 3BPA, ASE writers)    with ``Properties=species:S:1:pos:R:3:``   (``energy_unit``);
                               ``forces:R:3`` and ``energy=<value>``;     MD17/rMD17 exports
                               one line per atom                          use kcal/mol
  ============================ ========================================== ======================

Every record carries its units (``energy_unit``, ``force_unit``; lengths are always Å) and
`convert_energy_units` converts between kcal/mol and eV explicitly (1 eV = 23.060548 kcal/mol).
Energies stay float64: total energies of MD17 molecules are ~1e5 kcal/mol, where float32 would
round to ~0.01 kcal/mol. Subtract an offset before casting (`ForceFrames.to_molecules`).

Bad input. A file whose structure is wrong (a missing key, arrays whose atom or frame counts
disagree, an extended XYZ frame without an energy or with a wrong atom count) raises `DataError`
naming the file and the frame. A frame whose values are unusable (non-finite energy, forces or
coordinates) is skipped and recorded in the returned `SkipReport`; with ``strict=True`` it raises
`DataError` naming the file and frame instead.
"""

from __future__ import annotations

import logging
import dataclasses
import os
from typing import Dict, Optional, Tuple

import numpy as np

from georecon_jax.data.records import DataError, Molecules, SkipReport, check_molecule
from georecon_jax.data.xyz import read_xyz_frames

log = logging.getLogger(__name__)

KCAL_PER_MOL_PER_EV = 23.060548
ENERGY_UNITS = ("kcal/mol", "eV")
_TO_KCAL = {"kcal/mol": 1.0, "eV": KCAL_PER_MOL_PER_EV}


def convert_energy_units(values, from_unit: str, to_unit: str):
    """Converts energies (or forces, per Å) between 'kcal/mol' and 'eV'."""
    for u in (from_unit, to_unit):
        if u not in _TO_KCAL:
            raise ValueError(f"unknown energy unit {u!r}: use one of {ENERGY_UNITS}")
    return np.asarray(values, np.float64) * (_TO_KCAL[from_unit] / _TO_KCAL[to_unit])


@dataclasses.dataclass
class ForceFrames:
    """Frames of one molecule (fixed atom order) with energies and forces.

    Attributes:
      atomic_numbers: [n_atoms] int.
      positions: [n_frames, n_atoms, 3] float64, Å.
      energies: [n_frames] float64, ``energy_unit``.
      forces: [n_frames, n_atoms, 3] float64, ``energy_unit``/Å (= -dE/dR).
      frame_ids: [n_frames] int, index of each frame in its source file.
      source: the file read.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    frame_ids: np.ndarray
    source: str
    energy_unit: str = "kcal/mol"

    @property
    def force_unit(self) -> str:
        return f"{self.energy_unit}/Å"

    def __len__(self) -> int:
        return len(self.energies)

    def in_units(self, energy_unit: str) -> "ForceFrames":
        """The same frames with energies and forces converted to ``energy_unit``."""
        f = lambda x: convert_energy_units(x, self.energy_unit, energy_unit)
        return dataclasses.replace(
            self, energies=f(self.energies), forces=f(self.forces), energy_unit=energy_unit
        )

    def subset(self, idx) -> "ForceFrames":
        idx = np.asarray(idx, np.int64)
        return dataclasses.replace(
            self,
            positions=self.positions[idx],
            energies=self.energies[idx],
            forces=self.forces[idx],
            frame_ids=self.frame_ids[idx],
        )

    def to_molecules(self, energy_offset: float = 0.0) -> Tuple[Molecules, np.ndarray]:
        """(Molecules with one target column ``energy - energy_offset``, forces [n_rows, 3] float32
        in the Molecules' row order). The subtraction happens in float64 before the float32 cast."""
        n_frames, n_atoms = self.positions.shape[:2]
        mols = Molecules(
            atomic_numbers=np.tile(np.asarray(self.atomic_numbers, np.int16), n_frames),
            positions=self.positions.reshape(-1, 3).astype(np.float32),
            offsets=(np.arange(n_frames + 1) * n_atoms).astype(np.int64),
            targets=(self.energies - energy_offset).astype(np.float32)[:, None],
            target_names=("energy",),
            target_units=(self.energy_unit,),
            ids=np.asarray(self.frame_ids, np.int64),
        )
        return mols, self.forces.reshape(-1, 3).astype(np.float32)


def _validate_frames(path, z, R, E, F, strict: bool) -> Tuple[np.ndarray, SkipReport]:
    """Shape checks (raise) and per-frame value checks (skip or raise); returns kept frame indices."""
    name = os.path.basename(path)
    z = np.asarray(z)
    if z.ndim != 1 or z.size == 0:
        raise DataError(f"{name}: atomic numbers have shape {z.shape}, expected [n_atoms]")
    n = len(z)
    n_frames = len(E)
    for label, arr in (("coordinates", R), ("forces", F)):
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(f"{name}: {label} have shape {arr.shape}, expected [n_frames, n_atoms, 3]")
        if arr.shape[0] != n_frames:
            raise DataError(
                f"{name}: {arr.shape[0]} frames of {label} but {n_frames} energies "
                f"(frame {min(arr.shape[0], n_frames)} is the first without a partner)"
            )
        if arr.shape[1] != n:
            raise DataError(
                f"{name}: frame 0 has {arr.shape[1]} atoms in {label} but the molecule "
                f"has {n} atomic numbers (inconsistent atom counts)"
            )
    reason = check_molecule(z, R[0]) if n_frames else None
    if reason and "coordinates" not in reason:
        raise DataError(f"{name}: {reason}")
    report = SkipReport(source=path, total=n_frames)
    keep = []
    for i in range(n_frames):
        bad = []
        if not np.isfinite(E[i]):
            bad.append("non-finite energy")
        if not np.all(np.isfinite(R[i])):
            bad.append("non-finite coordinates")
        if not np.all(np.isfinite(F[i])):
            atoms = np.nonzero(~np.all(np.isfinite(F[i]), axis=1))[0]
            bad.append(f"non-finite forces on atom(s) {atoms[:5].tolist()}")
        if bad:
            if strict:
                raise DataError(f"{name}: frame {i}: " + ", ".join(bad))
            report.add(f"frame {i}", ", ".join(bad))
        else:
            keep.append(i)
    return np.asarray(keep, np.int64), report


def _require(path, data, keys):
    missing = [k for k in keys if k not in data.files]
    if missing:
        raise DataError(
            f"{os.path.basename(path)}: missing key(s) {missing} (has {sorted(data.files)}); "
            f"expected {list(keys)}"
        )


def _frames(path, z, R, E, F, energy_unit, strict):
    R, E, F = np.asarray(R, np.float64), np.asarray(E, np.float64), np.asarray(F, np.float64)
    if E.ndim == 2 and E.shape[1] == 1:
        E = E[:, 0]
    if E.ndim != 1:
        raise DataError(f"{os.path.basename(path)}: energies have shape {E.shape}, expected [n_frames]")
    keep, report = _validate_frames(path, z, R, E, F, strict)
    frames = ForceFrames(
        atomic_numbers=np.asarray(z, np.int16),
        positions=R[keep],
        energies=E[keep],
        forces=F[keep],
        frame_ids=keep,
        source=path,
        energy_unit=energy_unit,
    )
    return frames, report


def read_rmd17_npz(path: str, energy_unit: str = "kcal/mol", strict: bool = False):
    """rMD17 ``.npz`` (nuclear_charges, coords, energies, forces) -> (ForceFrames, SkipReport)."""
    with np.load(path) as d:
        _require(path, d, ("nuclear_charges", "coords", "energies", "forces"))
        return _frames(
            path, d["nuclear_charges"], d["coords"], d["energies"], d["forces"], energy_unit, strict
        )


def read_sgdml_npz(path: str, energy_unit: str = "kcal/mol", strict: bool = False):
    """Original MD17 / sGDML ``.npz`` (z, R, E, F) -> (ForceFrames, SkipReport)."""
    with np.load(path) as d:
        _require(path, d, ("z", "R", "E", "F"))
        return _frames(path, d["z"], d["R"], d["E"], d["F"], energy_unit, strict)


def read_extxyz(
    path: str,
    energy_unit: str = "kcal/mol",
    energy_key: str = "energy",
    forces_key: str = "forces",
    strict: bool = False,
):
    """Extended XYZ -> (ForceFrames, SkipReport), read by `georecon_jax.data.xyz`.

    Each frame: a line with the atom count, a comment line with ``key=value`` pairs (the energy
    under ``energy_key``; ``Properties=`` naming the per-atom columns: ``species`` or ``Z``, ``pos``,
    and ``forces_key``), then one line per atom. All frames must have the same atoms in the same
    order. The file records no units: ``energy_unit`` says what they are.
    """
    name = os.path.basename(path)
    z_ref, Rs, Es, Fs = None, [], [], []
    for frame in read_xyz_frames(path, vectors=("pos", forces_key)):
        where = f"{name}: frame {frame.index} (line {frame.line})"
        if frame.error is not None:
            raise DataError(f"{where}: {frame.error}")
        if energy_key not in frame.info:
            raise DataError(
                f"{where}: no energy (no '{energy_key}=' in the comment line {frame.comment[:80]!r})"
            )
        try:
            E = float(frame.info[energy_key])
        except ValueError as e:
            raise DataError(f"{where}: unparseable number ({e})")
        z = frame.atomic_numbers.astype(np.int16)
        if z_ref is None:
            z_ref = z
        elif len(z) != len(z_ref) or np.any(z != z_ref):
            raise DataError(
                f"{where}: atoms {len(z)} ({_formula(z)}) differ from frame 0's "
                f"{len(z_ref)} ({_formula(z_ref)}); a file must hold one molecule "
                "with a fixed atom order (inconsistent atom counts)"
            )
        Rs.append(frame.vectors["pos"]), Fs.append(frame.vectors[forces_key]), Es.append(E)
    if z_ref is None:
        raise DataError(f"{name}: no frames")
    return _frames(path, z_ref, np.stack(Rs), np.array(Es), np.stack(Fs), energy_unit, strict)


def _formula(z) -> str:
    from georecon_jax.data.records import ELEMENT_SYMBOLS

    u, c = np.unique(np.asarray(z), return_counts=True)
    return "".join(f"{ELEMENT_SYMBOLS[a]}{n}" for a, n in zip(u, c))


def read_force_file(path: str, energy_unit: str = "kcal/mol", strict: bool = False, **kwargs):
    """Reads any supported file by its extension and keys: (ForceFrames, SkipReport)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if path.endswith(".npz"):
        try:
            with np.load(path) as d:
                keys = set(d.files)
        except Exception as e:  # truncated or not a zip archive
            raise DataError(f"{os.path.basename(path)}: unreadable .npz ({type(e).__name__}: {e})") from e
        if "nuclear_charges" in keys or "coords" in keys:
            return read_rmd17_npz(path, energy_unit, strict)
        if {"z", "R"} & keys:
            return read_sgdml_npz(path, energy_unit, strict)
        raise DataError(
            f"{os.path.basename(path)}: keys {sorted(keys)} match neither rMD17 "
            "(nuclear_charges, coords, energies, forces) nor sGDML (z, R, E, F)"
        )
    if path.endswith((".xyz", ".extxyz")):
        return read_extxyz(path, energy_unit, strict=strict, **kwargs)
    raise DataError(f"{path}: unknown format (expected .npz, .xyz or .extxyz)")


def fit_split(n_frames: int, n_train: int, n_val: int, with_test: bool):
    """(n_train, n_val) scaled down in proportion so that they fit ``n_frames`` (leaving 5 % of
    the frames, at least 1, for testing when the file is also the test set); unchanged if they fit.
    For protocols stated for a larger file (Frad's 9,500 / 500 frames of MD17) run on a smaller
    one (rMD17's 1,000 frames per split file)."""
    room = n_frames - (max(1, n_frames // 20) if with_test else 0)
    if n_train + n_val <= room:
        return n_train, n_val
    val = max(1, round(room * n_val / (n_train + n_val)))
    return room - val, val


def split_frames(
    n_frames: int, n_train: int = 950, n_val: int = 50, seed: int = 0, with_test: bool = True
) -> Dict[str, np.ndarray]:
    """Random train / validation (/ test = the remaining frames) indices.

    Raises `DataError` when the file has fewer frames than the split needs.
    """
    if n_frames < n_train + n_val + (1 if with_test else 0):
        raise DataError(
            f"{n_frames} frames are too few for {n_train} training + {n_val} validation"
            + (" + at least 1 test frame" if with_test else "")
        )
    perm = np.random.default_rng(seed).permutation(n_frames)
    out = {"train": np.sort(perm[:n_train]), "validation": np.sort(perm[n_train : n_train + n_val])}
    if with_test:
        out["test"] = np.sort(perm[n_train + n_val :])
    return out


def load_md17(
    train_file: str,
    test_file: Optional[str] = None,
    n_train: int = 950,
    n_val: int = 50,
    split_seed: int = 0,
    energy_unit: str = "kcal/mol",
    file_energy_unit: str = "kcal/mol",
    strict: bool = False,
    verbose: bool = True,
    shrink_split: bool = False,
):
    """Train/validation frames from ``train_file``; test frames from ``test_file`` or, without one,
    the frames of ``train_file`` not used for training or validation.

    Args:
      energy_unit: the unit to return (converted from ``file_energy_unit``, what the file holds).
      shrink_split: when the file has too few frames for n_train + n_val, scale both down in
        proportion (`fit_split`, logged) instead of raising.

    Returns:
      {"train": ForceFrames, "validation": ForceFrames, "test": ForceFrames}, {file: SkipReport}.
    """
    frames, report = read_force_file(train_file, file_energy_unit, strict)
    reports = {train_file: report}
    if shrink_split:
        fitted = fit_split(len(frames), n_train, n_val, test_file is None)
        if fitted != (n_train, n_val):
            log.warning(
                "%s has %d frames: %d training / %d validation frames instead of %d / %d",
                os.path.basename(train_file),
                len(frames),
                *fitted,
                n_train,
                n_val,
            )
            n_train, n_val = fitted
    split = split_frames(len(frames), n_train, n_val, split_seed, with_test=test_file is None)
    out = {k: frames.subset(v).in_units(energy_unit) for k, v in split.items()}
    if test_file is not None:
        test, test_report = read_force_file(test_file, file_energy_unit, strict)
        reports[test_file] = test_report
        if len(test.atomic_numbers) != len(frames.atomic_numbers) or np.any(
            test.atomic_numbers != frames.atomic_numbers
        ):
            raise DataError(
                f"{os.path.basename(test_file)}: frame 0: atoms ({_formula(test.atomic_numbers)}) "
                f"differ from {os.path.basename(train_file)}'s ({_formula(frames.atomic_numbers)})"
            )
        out["test"] = test.in_units(energy_unit)
    if verbose:
        for r in reports.values():
            if r.count:
                log.info(r.summary())
    return out, reports
