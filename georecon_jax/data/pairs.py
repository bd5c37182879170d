"""CSV files of molecule pairs -> typed pair records (numpy; RDKit via georecon_jax.chem).

A pair file has two SMILES columns and one or more label columns; names are configurable and the
`PRESETS` name the real files (paths relative to a data root such as ``../shared/data``):

  ===========  ===============================================  ========================  ==========
  preset       file(s)                                          columns (1, 2 -> labels)   units
  ===========  ===============================================  ========================  ==========
  freesolv     solvation/freesolv.csv (also abraham, compsol,   solute, solvent -> Gsolv   kcal/mol
               combisolv; mnsol where a user has it)
  absorption   chromophore/absorption.csv                       solute, solvent -> Gsolv*  nm
  emission     chromophore/emission.csv                         solute, solvent -> Gsolv*  nm
  lifetime     chromophore/lifetime.csv (user file)             solute, solvent -> Gsolv*  ln(ns)
  chchminer    ddi/ChChMiner_{train,valid,test}.csv (pooled)    smiles_1, smiles_2 -> label 0/1
  zhangddi     ddi/ZhangDDI_{train,valid,test}.csv (user file)  smiles_1, smiles_2 -> label 0/1
  ===========  ===============================================  ========================  ==========

  * the chromophore release names its label column ``Gsolv`` although it holds a wavelength (nm)
    or a lifetime (ns); lifetimes are log-transformed, natural log as in the reference
    (Namkyeong/3DMRL MI/datasets_eval/chromophore.py: np.log; non-positive values are skipped).

Every molecule is featurised and embedded once (`georecon_jax.chem.conformers.MoleculeCache`). A row
is skipped, and reported with file, row, column, SMILES and reason, when a molecule cannot be
parsed or embedded or when a label is missing or not finite. Nothing raises for bad rows.
"""

from __future__ import annotations

import logging
import csv
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.chem.features import canonical_smiles
from georecon_jax.data.records import DataError, SkipReport

log = logging.getLogger(__name__)

_SOLV = dict(smiles_columns=("solute", "solvent"), label_columns=("Gsolv",), task="regression")
PRESETS: Dict[str, dict] = {
    "freesolv": dict(files=("solvation/freesolv.csv",), units="kcal/mol", **_SOLV),
    "abraham": dict(files=("solvation/abraham.csv",), units="kcal/mol", **_SOLV),
    "compsol": dict(files=("solvation/compsol.csv",), units="kcal/mol", **_SOLV),
    "combisolv": dict(files=("solvation/combisolv.csv",), units="kcal/mol", **_SOLV),
    "mnsol": dict(files=("solvation/mnsol.csv",), units="kcal/mol", **_SOLV),
    "absorption": dict(files=("chromophore/absorption.csv",), units="nm", **_SOLV),
    "emission": dict(files=("chromophore/emission.csv",), units="nm", **_SOLV),
    "lifetime": dict(files=("chromophore/lifetime.csv",), units="ln(ns)", log_labels=True, **_SOLV),
    "chchminer": dict(
        files=tuple(f"ddi/ChChMiner_{s}.csv" for s in ("train", "valid", "test")),
        smiles_columns=("smiles_1", "smiles_2"),
        label_columns=("label",),
        task="classification",
        units="0/1",
    ),
    "zhangddi": dict(
        files=tuple(f"ddi/ZhangDDI_{s}.csv" for s in ("train", "valid", "test")),
        smiles_columns=("smiles_1", "smiles_2"),
        label_columns=("label",),
        task="classification",
        units="0/1",
    ),
}


@dataclasses.dataclass
class PairDataset:
    """Pairs of molecules with labels.

    Attributes:
      molecules: unique molecule records (dicts from `molecule_record`), referenced by index.
      index1, index2: [n_pairs] int, the pair's first (solute / chromophore / drug 1) and second
        (solvent / drug 2) molecule.
      labels: [n_pairs, n_labels] float32 (NaN where a pair carries no label, e.g. pretraining).
      rows: [n_pairs] ``"file:row"`` of each pair (row 2 is the first data row, as a spreadsheet).
    """

    name: str
    molecules: List[dict]
    index1: np.ndarray
    index2: np.ndarray
    labels: np.ndarray
    label_names: Tuple[str, ...]
    rows: np.ndarray
    task: str = "regression"
    units: str = ""
    skip: Optional[SkipReport] = None

    def __len__(self) -> int:
        return int(self.index1.shape[0])

    def subset(self, indices) -> "PairDataset":
        idx = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self,
            index1=self.index1[idx],
            index2=self.index2[idx],
            labels=self.labels[idx],
            rows=self.rows[idx],
        )

    def n_atoms(self) -> np.ndarray:
        return np.asarray([len(m["atomic_numbers"]) for m in self.molecules], np.int64)


def _read_rows(path: str, smiles_columns, label_columns):
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file (see data_prep/mrl.py for where to get it)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        i = 0
        try:
            missing = [c for c in (*smiles_columns, *label_columns) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; it has {reader.fieldnames}")
            for i, row in enumerate(reader):
                yield i + 2, row
        except (UnicodeDecodeError, csv.Error) as e:
            raise DataError(f"{path}: unreadable after line {i + 2} ({type(e).__name__}: {e})") from e


def load_pairs(
    preset: Optional[str] = None,
    *,
    data_root: str = "",
    files: Sequence[str] = (),
    smiles_columns: Sequence[str] = (),
    label_columns: Sequence[str] = (),
    log_labels: Optional[bool] = None,
    task: Optional[str] = None,
    cache: Optional[MoleculeCache] = None,
    num_workers: int = 2,
    limit: Optional[int] = None,
    verbose: bool = True,
    strict: bool = False,
) -> PairDataset:
    """Reads pair CSV files (a preset, or explicit files and column names) into a `PairDataset`.

    Args:
      preset: a key of `PRESETS`; explicit arguments override its fields.
      data_root: folder the preset's relative file names are resolved against.
      limit: keep only the first ``limit`` rows (over all files), for tests and quick runs.
      cache: where molecules are embedded and cached (default: a `MoleculeCache()`).
      strict: raise `DataError` if any row had to be skipped (otherwise rows are skipped, counted,
        printed, and listed in ``<cache dir>/<name>_skipped.json``).
    """
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown pair preset {preset!r}: choose from {sorted(PRESETS)}")
    spec = dict(PRESETS[preset]) if preset else {}
    files = tuple(files) or spec.get("files", ())
    smiles_columns = tuple(smiles_columns) or spec.get("smiles_columns", ())
    label_columns = tuple(label_columns) or spec.get("label_columns", ())
    log_labels = spec.get("log_labels", False) if log_labels is None else log_labels
    task = task or spec.get("task", "regression")
    if len(smiles_columns) != 2 or not files:
        raise ValueError("need two SMILES columns and at least one file")
    cache = cache or MoleculeCache()
    name = preset or os.path.basename(files[0])
    skip = SkipReport(source=name)

    raw = []  # (where, smiles1, smiles2, labels)
    for rel in files:
        path = os.path.join(data_root, rel) if data_root else rel
        for row_no, row in _read_rows(path, smiles_columns, label_columns):
            if limit is not None and len(raw) + skip.count >= limit:
                break
            skip.total += 1
            where = f"{os.path.basename(path)}:{row_no}"
            try:
                labels = np.asarray([float(row[c]) for c in label_columns], np.float64)
            except (TypeError, ValueError):
                skip.add(where, f"label not a number: {[row[c] for c in label_columns]}")
                continue
            if log_labels:
                if np.any(labels <= 0):
                    skip.add(where, f"non-positive label {labels.tolist()} cannot be log-transformed")
                    continue
                labels = np.log(labels)  # natural log: the reference's np.log
            if not np.all(np.isfinite(labels)):
                skip.add(where, f"non-finite label {labels.tolist()}")
                continue
            if np.any(np.abs(labels) > np.finfo(np.float32).max):
                skip.add(where, f"label {labels.tolist()} out of float32 range")
                continue
            raw.append((where, row[smiles_columns[0]], row[smiles_columns[1]], labels))

    canon = {}
    for _, s1, s2, _ in raw:
        for s in (s1, s2):
            if s not in canon:
                canon[s] = canonical_smiles(s) or s
    cache.compute(canon.values(), num_workers=num_workers, verbose=verbose)

    molecules, mol_index = [], {}
    index1, index2, labels, rows = [], [], [], []
    for where, s1, s2, lab in raw:
        ids, bad = [], None
        for col, s in zip(smiles_columns, (s1, s2)):
            key = canon[s]
            rec, reason = cache.get(key)
            if rec is None:
                bad = f"{col} {s!r}: {reason}"
                break
            if key not in mol_index:
                mol_index[key] = len(molecules)
                molecules.append(rec)
            ids.append(mol_index[key])
        if bad:
            skip.add(where, bad)
            continue
        index1.append(ids[0])
        index2.append(ids[1])
        labels.append(lab)
        rows.append(where)
    if verbose:
        log.info(skip.summary())
    os.makedirs(cache.cache_dir, exist_ok=True)
    skip.save(
        os.path.join(cache.cache_dir, "".join(c if c.isalnum() else "_" for c in name) + "_skipped.json")
    )
    if strict and skip.count:
        raise DataError(f"strict mode: {skip.summary()}")
    return PairDataset(
        name=name,
        molecules=molecules,
        index1=np.asarray(index1, np.int64),
        index2=np.asarray(index2, np.int64),
        labels=np.asarray(labels, np.float32).reshape(len(labels), len(label_columns)),
        label_names=label_columns,
        rows=np.asarray(rows, dtype=object),
        task=task,
        units=spec.get("units", ""),
        skip=skip,
    )


def all_combinations(
    dataset: PairDataset, fraction: float = 1.0, seed: int = 0, max_pairs: Optional[int] = None
) -> PairDataset:
    """Every (first molecule × second molecule) combination seen in ``dataset`` (3DMRL pretrains on
    all solute × solvent combinations of CombiSolv; a random ``fraction`` of them), unlabeled."""
    first, second = np.unique(dataset.index1), np.unique(dataset.index2)
    a, b = np.meshgrid(first, second, indexing="ij")
    a, b = a.ravel(), b.ravel()
    rng = np.random.default_rng(seed)
    n = int(round(fraction * a.size)) if fraction < 1.0 else a.size
    if max_pairs is not None:
        n = min(n, max_pairs)
    keep = np.sort(rng.permutation(a.size)[:n])
    return dataclasses.replace(
        dataset,
        index1=a[keep],
        index2=b[keep],
        labels=np.full((n, dataset.labels.shape[1]), np.nan, np.float32),
        rows=np.asarray([f"combination:{i}" for i in keep], dtype=object),
    )


def concat_datasets(datasets: Sequence[PairDataset], name: str = "pretraining") -> PairDataset:
    """Joins pair sets (labels dropped: label columns differ between sources)."""
    molecules, index, i1, i2, rows = [], {}, [], [], []
    for ds in datasets:
        remap = []
        for rec in ds.molecules:
            key = rec["smiles"]
            if key not in index:
                index[key] = len(molecules)
                molecules.append(rec)
            remap.append(index[key])
        remap = np.asarray(remap, np.int64)
        i1.append(remap[ds.index1])
        i2.append(remap[ds.index2])
        rows.append(ds.rows)
    n = sum(len(x) for x in i1)
    return PairDataset(
        name=name,
        molecules=molecules,
        index1=np.concatenate(i1),
        index2=np.concatenate(i2),
        labels=np.full((n, 0), np.nan, np.float32),
        label_names=(),
        rows=np.concatenate(rows),
    )
