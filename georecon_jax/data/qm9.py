"""QM9 (Ramakrishnan et al., Sci. Data 1, 140022, 2014): 130,831 molecules, B3LYP/6-31G(2df,p).

Sources, in order of preference:
  * the PyPI package ``qm9pack`` (by QM9's first author), which ships the full set as CSV;
  * a directory of the original ``dsgdb9nsd_*.xyz`` files (``source_dir``).

Either is converted once into ``<cache_dir>/qm9.npz`` (atomic numbers, positions in Å, the 12
standard targets, the standard split) with ``qm9_skipped.json`` beside it. Later runs map the
cache's arrays read-only (`records.load_npz`: one copy per host, whatever the number of worker
processes); a missing, corrupt or outdated cache is rebuilt.

Units of the 12 targets (as TorchMD-Net / PyG report them), in column order:

  ====== ================================== =============
  name   quantity                           unit
  ====== ================================== =============
  mu     dipole moment                      D (debye)
  alpha  isotropic polarisability           a0^3 (bohr^3)
  homo   HOMO energy                        eV
  lumo   LUMO energy                        eV
  gap    HOMO-LUMO gap                      eV
  r2     electronic spatial extent <R^2>    a0^2
  zpve   zero-point vibrational energy      eV
  U0     internal energy at 0 K (total)     eV
  U      internal energy at 298.15 K        eV
  H      enthalpy at 298.15 K               eV
  G      free energy at 298.15 K            eV
  cv     heat capacity at 298.15 K          cal/(mol K)
  ====== ================================== =============

Energies U0, U, H, G are total energies (no atom references subtracted); fine-tuning subtracts
per-element references itself.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import json
import os
from typing import Optional

import numpy as np

from georecon_jax.data.records import (
    DataError,
    Molecules,
    SkipReport,
    SYMBOL_TO_Z,
    check_molecule,
    load_npz,
    molecules_from_arrays,
)

log = logging.getLogger(__name__)

HARTREE_TO_EV = 27.211386246

TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv")
TARGET_UNITS = ("D", "a0^3", "eV", "eV", "eV", "a0^2", "eV", "eV", "eV", "eV", "eV", "cal/(mol K)")
# qm9pack column and the factor that converts it to the unit above.
_QM9PACK_COLUMNS = (
    ("Dipole_debye", 1.0),
    ("Polarizability_bohr3", 1.0),
    ("HOMO_au", HARTREE_TO_EV),
    ("LUMO_au", HARTREE_TO_EV),
    ("HOMO_LUMO_gap_au", HARTREE_TO_EV),
    ("R2_bohr2", 1.0),
    ("ZPVE_au", HARTREE_TO_EV),
    ("InternalEnergy_0K_au", HARTREE_TO_EV),
    ("InternalEnergy_298K_au", HARTREE_TO_EV),
    ("Enthalphy_298K_au", HARTREE_TO_EV),
    ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV),
    ("Heatcapacity_Cv_cal_mol_K", 1.0),
)
# Columns of the original .xyz comment line ("gdb 1 A B C mu alpha homo ... cv"): indices 5..16.
_XYZ_FACTORS = (
    1.0,
    1.0,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    1.0,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    HARTREE_TO_EV,
    1.0,
)

CACHE_VERSION = 2  # 2: targets stored as float64
SPLIT_SIZES = (110_000, 10_000)  # train, validation; the rest is test.


def default_cache_dir() -> str:
    return os.environ.get("GEORECON_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "georecon_jax"))


def qm9pack_data_dir() -> str:
    """The ``data/`` folder inside the installed qm9pack (found without importing it)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the package qm9pack is not installed (pip install qm9pack), and no "
            "directory of QM9 .xyz files was given"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _parse_list(text: str):
    return text.replace("[", " ").replace("]", " ").replace("'", " ").replace('"', " ").split(",")


def _qm9_index(value) -> Optional[int]:
    """The QM9 index in a CSV's Index field (read as text), or None if it is not a whole number."""
    text = str(value).strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None


def read_qm9pack(data_dir: Optional[str] = None, limit: Optional[int] = None):
    """Reads qm9pack's CSVs into (Molecules, SkipReport). ``limit`` reads only the first rows."""
    import pandas as pd

    data_dir = data_dir or qm9pack_data_dir()
    files = sorted(glob.glob(os.path.join(data_dir, "qm9_part*.csv")))
    if not files:
        raise DataError(f"{data_dir}: no qm9_part*.csv files")
    cols = ["Index", "Elements", "XYZ_Ang"] + [c for c, _ in _QM9PACK_COLUMNS]
    frames, n_read = [], 0
    for f in files:
        try:
            df = pd.read_csv(
                f, usecols=cols, dtype={"Index": str}, nrows=None if limit is None else max(limit - n_read, 0)
            )
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise DataError(f"{f}: not a qm9pack CSV ({type(e).__name__}: {str(e)[:200]})") from e
        df["_file"] = os.path.basename(f)
        df["_row"] = np.arange(len(df)) + 2  # 1-based line number in the CSV, after the header
        frames.append(df)
        n_read += len(df)
        if limit is not None and n_read >= limit:
            break
    df = pd.concat(frames, ignore_index=True)
    report = SkipReport(source=data_dir, total=len(df))
    z_list, pos_list, targets, ids = [], [], [], []
    factors = np.array([f for _, f in _QM9PACK_COLUMNS])
    target_values = (
        df[[c for c, _ in _QM9PACK_COLUMNS]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    )  # unparseable numbers become NaN and the record is skipped below
    for k, (idx, elements, xyz, fname, row) in enumerate(
        zip(df["Index"], df["Elements"], df["XYZ_Ang"], df["_file"], df["_row"])
    ):
        where = f"{fname} line {row} (QM9 index {idx})"
        index = _qm9_index(idx)
        if index is None:
            report.add(where, f"QM9 index {idx!r} is not a whole number")
            continue
        if not isinstance(elements, str) or not isinstance(xyz, str):
            report.add(
                where, "missing element list" if not isinstance(elements, str) else "missing coordinates"
            )
            continue
        try:
            symbols = [s.strip() for s in _parse_list(elements) if s.strip()]
            unknown = [s for s in symbols if s not in SYMBOL_TO_Z]
            if unknown:
                report.add(where, f"unknown element(s) {unknown}")
                continue
            z = np.array([SYMBOL_TO_Z[s] for s in symbols], np.int16)
            coords = [c for c in _parse_list(xyz) if c.strip()]
            pos = np.array(coords, dtype=np.float64)
            if pos.size != 3 * len(z):
                report.add(where, f"{len(z)} atoms but {pos.size} coordinate values")
                continue
            pos = pos.reshape(-1, 3)
        except (ValueError, TypeError) as e:
            report.add(where, f"unparseable record: {e}")
            continue
        reason = check_molecule(z, pos)
        if reason is None and not np.all(np.isfinite(target_values[k])):
            reason = "non-finite target value"
        if reason:
            report.add(where, reason)
            continue
        z_list.append(z)
        pos_list.append(pos)
        targets.append(target_values[k] * factors)
        ids.append(index)
    mols = Molecules.from_lists(
        z_list, pos_list, np.array(targets).reshape(-1, len(TARGETS)), ids, TARGETS, TARGET_UNITS
    )
    return mols, report


def _xyz_float(s: str) -> float:
    return float(s.replace("*^", "e"))


def read_qm9_xyz_dir(source_dir: str, limit: Optional[int] = None):
    """Reads a directory of original QM9 ``.xyz`` files into (Molecules, SkipReport)."""
    files = sorted(glob.glob(os.path.join(source_dir, "*.xyz")))
    if not files:
        raise DataError(f"{source_dir}: no .xyz files found")
    files = files[:limit] if limit else files
    report = SkipReport(source=source_dir, total=len(files))
    z_list, pos_list, targets, ids = [], [], [], []
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path) as f:
                lines = f.read().splitlines()
            n = int(lines[0].split()[0])
            header = lines[1].split()
            values = [_xyz_float(v) for v in header[5:17]]
            if len(values) != 12:
                raise ValueError(f"comment line has {len(header)} fields, expected 17")
            symbols = [lines[2 + i].split()[0] for i in range(n)]
            unknown = [s for s in symbols if s not in SYMBOL_TO_Z]
            if unknown:
                report.add(name, f"unknown element(s) {unknown}")
                continue
            z = np.array([SYMBOL_TO_Z[s] for s in symbols], np.int16)
            pos = np.array([[_xyz_float(v) for v in lines[2 + i].split()[1:4]] for i in range(n)])
            idx = int(header[1])
        except (ValueError, IndexError) as e:
            report.add(name, f"unparseable file: {e}")
            continue
        reason = check_molecule(z, pos) or (
            None if np.all(np.isfinite(values)) else "non-finite target value"
        )
        if reason:
            report.add(name, reason)
            continue
        z_list.append(z)
        pos_list.append(pos)
        targets.append(np.array(values) * np.array(_XYZ_FACTORS))
        ids.append(idx)
    mols = Molecules.from_lists(
        z_list, pos_list, np.array(targets).reshape(-1, 12), ids, TARGETS, TARGET_UNITS
    )
    return mols, report


def standard_split(n: int, seed: int = 0, sizes=SPLIT_SIZES):
    """Random train/validation/test indices: sizes[0] / sizes[1] / rest (scaled down if n is small)."""
    n_train, n_val = sizes
    if n < n_train + n_val + 1:  # a small subset: keep the same proportions.
        n_train = int(round(n * 0.8))
        n_val = max(1, int(round(n * 0.1)))
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "validation": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def _cache_path(cache_dir: str, limit: Optional[int]) -> str:
    return os.path.join(cache_dir, "qm9.npz" if limit is None else f"qm9_first{limit}.npz")


def _load_cache(path: str, version: int = CACHE_VERSION):
    """(molecules, splits, meta) of a cache file. Its large arrays are read-only memory maps of
    the file (`records.load_npz`): worker processes and runs on one host share one copy, and the
    molecules pickle as the file's path."""
    arrays = load_npz(path)
    try:
        found = int(arrays["cache_version"])
        if found != version:
            raise DataError(f"{path}: cache version {found}, expected {version}")
        splits = {k: arrays[f"split_{k}"] for k in ("train", "validation", "test")}
        meta = json.loads(str(arrays["meta"]))
    except KeyError as e:
        raise DataError(f"{path}: no {e.args[0]!r} array (not a QM9 cache)") from e
    return molecules_from_arrays(arrays, path), splits, meta


def load_qm9(
    cache_dir: Optional[str] = None,
    source_dir: Optional[str] = None,
    limit: Optional[int] = None,
    split_seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
):
    """QM9 molecules and the standard split, from the cache (built on first use).

    Args:
      cache_dir: where ``qm9.npz`` lives (default ``$GEORECON_CACHE`` or ``~/.cache/georecon_jax``).
      source_dir: a directory of original QM9 ``.xyz`` files; default: the qm9pack package.
      limit: read only the first ``limit`` molecules (tests, quick looks); cached separately.
      split_seed: seed of the random 110,000 / 10,000 / rest split stored with the cache.
      strict: raise `DataError` if any record had to be skipped.

    Returns:
      (molecules, splits) where splits maps "train"/"validation"/"test" to index arrays.
    """
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    path = _cache_path(cache_dir, limit)
    source = os.path.abspath(source_dir) if source_dir else "qm9pack"
    if os.path.exists(path):
        try:
            mols, splits, meta = _load_cache(path)
        except Exception as e:  # corrupt, truncated or of an older version: rebuild it
            meta = None
            if verbose:
                log.info(
                    f"QM9 cache {path} is unreadable or outdated ({type(e).__name__}: {e}); rebuilding it"
                )
        if meta is not None and meta.get("source") == source and meta.get("split_seed") == split_seed:
            if strict and meta.get("skipped", 0):
                raise DataError(
                    f"{path}: {meta['skipped']} records were skipped when the cache "
                    "was built (see qm9_skipped.json) and strict mode is on"
                )
            return mols, splits
        if meta is not None and verbose:
            log.info(
                f"QM9 cache {path} was built from {meta.get('source')} with split seed "
                f"{meta.get('split_seed')}; rebuilding for {source}, seed {split_seed}"
            )
    if verbose:
        log.info(f"Building the QM9 cache at {path} from {source} (once; about a minute) ...")
    if source_dir:
        mols, report = read_qm9_xyz_dir(source_dir, limit)
    else:
        mols, report = read_qm9pack(limit=limit)
    if verbose:
        log.info(report.summary())
    if strict and report.count:
        raise DataError(report.summary())
    report.save(os.path.join(cache_dir, os.path.basename(path).replace(".npz", "_skipped.json")))
    splits = standard_split(len(mols), split_seed)
    meta = {"source": source, "split_seed": split_seed, "skipped": report.count, "n_molecules": len(mols)}
    mols.save_npz(
        path,
        cache_version=CACHE_VERSION,
        meta=json.dumps(meta),
        **{f"split_{k}": v for k, v in splits.items()},
    )
    mols, splits, _ = _load_cache(path)  # the file's memory maps, not this process's copy
    return mols, splits
