"""CSV files of molecule pairs -> typed pair records (numpy; RDKit via georecon_jax.chem).

A pair file has two SMILES columns and one or more label columns. A *preset* names real files and
their columns (paths relative to a data root such as ``../shared/data``); its fields are only
named defaults: any of ``files``, ``smiles_columns``, ``label_columns``, ``task``, ``units`` given
explicitly wins, and without a preset they describe any CSV (`resolve_spec`):

  ===========  ===============================================  ========================  ========  ===
  preset       file(s)                                          columns (1, 2 -> labels)   units     H
  ===========  ===============================================  ========================  ========  ===
  freesolv     solvation/freesolv.csv (also abraham, compsol,   solute, solvent -> Gsolv   kcal/mol  yes
               combisolv; mnsol where a user has it)
  absorption   chromophore/absorption.csv                       solute, solvent -> Gsolv*  nm        no
  emission     chromophore/emission.csv                         solute, solvent -> Gsolv*  nm        no
  lifetime     chromophore/lifetime.csv (user file)             solute, solvent -> Gsolv*  ln(ns)    no
  chchminer    ddi/ChChMiner_{train,valid,test}.csv (pooled)    smiles_1, smiles_2 -> label 0/1     yes
  zhangddi     ddi/ZhangDDI_{train,valid,test}.csv (user file)  smiles_1, smiles_2 -> label 0/1     yes
  ===========  ===============================================  ========================  ========  ===

  * the chromophore release names its label column ``Gsolv`` although it holds a wavelength (nm)
    or a lifetime (ns); lifetimes are log-transformed, natural log as in the reference
    (Namkyeong/3DMRL MI/datasets_eval/chromophore.py: np.log; non-positive values are skipped).

Hydrogens (column H): whether a preset's fine-tuning graphs hold explicit hydrogens, as the
reference builds them (Namkyeong/3DMRL): ``Chem.AddHs`` in MI/datasets_eval/solvation.py and
DDI/datasets_eval/ddi.py, commented out in MI/datasets_eval/chromophore.py. Its pretraining
(MI/datasets_pretrain/{solvation,chromophore}.py, DDI/datasets_pretrain/ddi.py) always adds them
(`PRETRAINING_EXPLICIT_H`); files without a preset get them too (`USER_FILES_EXPLICIT_H`).
`default_explicit_h` applies these rules; an explicit True/False (``data.explicit_h``) wins.

A preset whose files are partly missing (e.g. ZhangDDI with only its valid and test files) reads
the files present and logs the missing ones by name; with none present it is a `DataError`. Files
given explicitly must all exist.

Every molecule is featurised and embedded once (`georecon_jax.chem.conformers.MoleculeCache`). A row
is skipped, and reported with file, row, column, SMILES and reason, when a molecule cannot be
parsed or embedded or when a label is missing (an empty cell), not a number, or not finite. A label
column of the wrong kind for the task is a `DataError` naming the file, the column and the first
bad row (rows counted as in a spreadsheet: 2 is the first data row): for classification, any
value other than 0 or 1; for regression, a column whose non-empty values mostly (more than half,
or all) do not parse as numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.chem.features import canonical_smiles
from georecon_jax.data.records import DataError, SkipReport

log = logging.getLogger(__name__)

TASKS = ("regression", "classification")
PRETRAINING_EXPLICIT_H = True  # the reference adds hydrogens to every pretraining molecule
USER_FILES_EXPLICIT_H = True  # files without a preset: as the reference's solvation and DDI tasks

# A source without a preset (the user's files): each field that is not given.
NO_PRESET = dict(files=(), smiles_columns=(), label_columns=(), task="regression", units="", log_labels=False)
_SOLV = dict(smiles_columns=("solute", "solvent"), label_columns=("Gsolv",), task="regression")
_DDI = dict(
    smiles_columns=("smiles_1", "smiles_2"),
    label_columns=("label",),
    task="classification",
    units="0/1",
    explicit_h=True,
)
PRESETS: Dict[str, dict] = {
    "freesolv": dict(files=("solvation/freesolv.csv",), units="kcal/mol", explicit_h=True, **_SOLV),
    "abraham": dict(files=("solvation/abraham.csv",), units="kcal/mol", explicit_h=True, **_SOLV),
    "compsol": dict(files=("solvation/compsol.csv",), units="kcal/mol", explicit_h=True, **_SOLV),
    "combisolv": dict(files=("solvation/combisolv.csv",), units="kcal/mol", explicit_h=True, **_SOLV),
    "mnsol": dict(files=("solvation/mnsol.csv",), units="kcal/mol", explicit_h=True, **_SOLV),
    "absorption": dict(files=("chromophore/absorption.csv",), units="nm", explicit_h=False, **_SOLV),
    "emission": dict(files=("chromophore/emission.csv",), units="nm", explicit_h=False, **_SOLV),
    "lifetime": dict(
        files=("chromophore/lifetime.csv",), units="ln(ns)", log_labels=True, explicit_h=False, **_SOLV
    ),
    "chchminer": dict(files=tuple(f"ddi/ChChMiner_{s}.csv" for s in ("train", "valid", "test")), **_DDI),
    "zhangddi": dict(files=tuple(f"ddi/ZhangDDI_{s}.csv" for s in ("train", "valid", "test")), **_DDI),
}


def preset_spec(preset: Optional[str]) -> dict:
    """The fields of ``preset`` over `NO_PRESET`'s (None or '': `NO_PRESET`'s); ValueError for an
    unknown preset."""
    _check_preset(preset)
    return {**NO_PRESET, **(PRESETS[preset] if preset else {})}


def as_names(value) -> Tuple[str, ...]:
    """Names (files, columns, presets) from a tuple or list, a comma-separated string (as a
    command line gives them: ``--config.data.files=a.csv,b.csv``), or None / '' / () (none).
    Surrounding spaces are dropped, and so are empty names."""
    if value is None:
        return ()
    out = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        out += [n.strip() for n in (item.split(",") if isinstance(item, str) else [str(item)])]
    return tuple(n for n in out if n)


def _check_preset(preset: Optional[str]) -> None:
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown pair preset {preset!r}: choose from {sorted(PRESETS)}")


def default_explicit_h(preset: Optional[str] = None, pretraining: bool = False) -> bool:
    """Whether hydrogens are graph nodes when ``explicit_h`` is left None: always in pretraining
    (`PRETRAINING_EXPLICIT_H`), else the preset's choice, else (files without a preset)
    `USER_FILES_EXPLICIT_H`."""
    _check_preset(preset)
    if pretraining:
        return PRETRAINING_EXPLICIT_H
    return bool(PRESETS[preset]["explicit_h"]) if preset else USER_FILES_EXPLICIT_H


def _name_from_files(files: Sequence[str]) -> str:
    """A data set name from its files: the stems' common prefix (``ZhangDDI_train.csv``,
    ``ZhangDDI_test.csv`` -> ``ZhangDDI``), else the stems joined by '+'."""
    stems = [os.path.splitext(os.path.basename(f.rstrip("/")))[0] for f in files]
    common = os.path.commonprefix(stems).rstrip("_-. ")
    if common:
        return common
    return "+".join(stems) if len(stems) <= 3 else f"{stems[0]}+{len(stems) - 1}_more"


def resolve_spec(
    preset: Optional[str] = None,
    *,
    files=(),
    smiles_columns=(),
    label_columns=(),
    task: Optional[str] = None,
    units: Optional[str] = None,
    log_labels: Optional[bool] = None,
    name: Optional[str] = None,
) -> dict:
    """The fields of a pair source: each given one (not None/empty) wins over the preset's.

    ``files``, ``smiles_columns`` and ``label_columns`` take tuples or comma-separated strings.
    Returns a dict with ``files``, ``user_files`` (True when the files were given, not the
    preset's), ``smiles_columns``, ``label_columns``, ``task``, ``units``, ``log_labels`` and
    ``name`` (the preset, or one made from the files when they are not the preset's). Raises
    ValueError for an unknown preset or task, no files, or other than two SMILES columns.
    """
    spec = preset_spec(preset)
    given_files = as_names(files)
    out = dict(
        files=given_files or tuple(spec["files"]),
        user_files=bool(given_files),
        smiles_columns=as_names(smiles_columns) or tuple(spec["smiles_columns"]),
        label_columns=as_names(label_columns) or tuple(spec["label_columns"]),
        task=task or spec["task"],
        units=units if units else spec["units"],
        log_labels=bool(spec["log_labels"] if log_labels is None else log_labels),
    )
    if out["task"] not in TASKS:
        raise ValueError(f"unknown pair task {out['task']!r}: use 'regression' or 'classification'")
    if not out["files"]:
        raise ValueError("no pair files: give files (data.files=a.csv,b.csv) or a preset")
    if len(out["smiles_columns"]) != 2:
        raise ValueError(
            f"a pair file needs exactly two SMILES columns (the pair's first and second molecule), "
            f"got {len(out['smiles_columns'])}: {list(out['smiles_columns'])} "
            "(data.smiles_columns=first,second)"
        )
    out["name"] = name or (preset if preset and not given_files else _name_from_files(out["files"]))
    return out


@dataclasses.dataclass
class PairDataset:
    """Pairs of molecules with labels.

    Attributes:
      molecules: unique molecule records (dicts from `molecule_record`), referenced by index.
      index1, index2: [n_pairs] int, the pair's first (solute / chromophore / drug 1) and second
        (solvent / drug 2) molecule.
      labels: [n_pairs, n_labels] float32 (NaN where a pair carries no label, e.g. pretraining).
      rows: [n_pairs] ``"file:row"`` of each pair (row 2 is the first data row, as a spreadsheet).
      explicit_h: whether the molecules' graphs hold their hydrogens (None: not known).
      files: the files read; missing_files: a preset's files that were not there.
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
    explicit_h: Optional[bool] = None
    files: Tuple[str, ...] = ()
    missing_files: Tuple[str, ...] = ()

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


def _locate_files(spec: dict, data_root: str) -> Tuple[List[str], List[str]]:
    """(paths to read, missing paths). A preset's files are under ``data_root``, and may be partly
    missing; files given explicitly are read as given (absolute, or relative to the working
    directory), else under ``data_root``, and must all exist."""
    if not spec["user_files"]:
        paths = [os.path.join(data_root, f) if data_root else f for f in spec["files"]]
        present = [p for p in paths if os.path.exists(p)]
        missing = [p for p in paths if not os.path.exists(p)]
        if not present:
            raise DataError(
                f"{spec['name']}: no such file(s) {missing} (see data_prep/mrl.py for where to get them)"
            )
        if missing:
            log.warning(
                "%s: %d of %d files missing, reading the other %d: missing %s",
                spec["name"],
                len(missing),
                len(paths),
                len(present),
                ", ".join(missing),
            )
        return present, missing
    paths = []
    for f in spec["files"]:
        under_root = os.path.join(data_root, f) if data_root and not os.path.isabs(f) else None
        if os.path.exists(f):
            paths.append(f)
        elif under_root and os.path.exists(under_root):
            paths.append(under_root)
        else:
            where = f" nor under the data root {data_root}" if under_root else ""
            raise DataError(f"{f}: no such file (in the working directory {os.getcwd()}{where})")
    return paths, []


def _wrong_kind(path: str, column: str, task: str, row_no: int, value: str, detail: str = "") -> DataError:
    hint = (
        "labels of a classification task must be 0 or 1"
        if task == "classification"
        else "a regression task needs a numeric label column"
    )
    return DataError(
        f"{path}: label column {column!r} does not fit task={task!r} ({hint}): row {row_no} holds "
        f"{value!r}{detail}; choose another label column (data.label_columns) or task (data.task)"
    )


def load_pairs(
    preset: Optional[str] = None,
    *,
    data_root: str = "",
    files=(),
    smiles_columns=(),
    label_columns=(),
    log_labels: Optional[bool] = None,
    task: Optional[str] = None,
    units: Optional[str] = None,
    name: Optional[str] = None,
    explicit_h: Optional[bool] = None,
    cache: Optional[MoleculeCache] = None,
    num_workers: int = 2,
    limit: Optional[int] = None,
    sample: Optional[Tuple[int, int]] = None,
    verbose: bool = True,
    strict: bool = False,
) -> PairDataset:
    """Reads pair CSV files (a preset, or explicit files and column names) into a `PairDataset`.

    Args:
      preset: a key of `PRESETS`; explicit arguments override its fields (`resolve_spec`).
      data_root: folder the preset's relative file names are resolved against (and explicit files
        not found relative to the working directory).
      files, smiles_columns, label_columns: tuples or comma-separated strings.
      explicit_h: hydrogens as graph nodes, for the default cache (None: `default_explicit_h`);
        with a ``cache``, the cache's setting is used and this must agree with it or be None.
      limit: keep only the first ``limit`` rows (over all files), for tests and quick runs.
      sample: ``(n, seed)``: a random ``n`` of the readable rows, drawn before any conformer is
        computed (so that a subset of a large file embeds only its own molecules); rows whose
        molecules then fail are skipped as usual, so a few fewer than ``n`` pairs may remain.
      cache: where molecules are embedded and cached (default: a `MoleculeCache()`).
      strict: raise `DataError` if any row had to be skipped (otherwise rows are skipped, counted,
        printed, and listed in ``<cache dir>/<name>_skipped.json``).
    """
    spec = resolve_spec(
        preset,
        files=files,
        smiles_columns=smiles_columns,
        label_columns=label_columns,
        task=task,
        units=units,
        log_labels=log_labels,
        name=name,
    )
    smiles_columns, label_columns = spec["smiles_columns"], spec["label_columns"]
    task, log_labels, name = spec["task"], spec["log_labels"], spec["name"]
    if cache is None:
        cache = MoleculeCache(explicit_h=default_explicit_h(preset) if explicit_h is None else explicit_h)
    elif explicit_h is not None and bool(explicit_h) != bool(cache.explicit_h):
        raise ValueError(f"explicit_h={explicit_h} disagrees with the cache's ({cache.explicit_h})")
    paths, missing = _locate_files(spec, data_root)
    skip = SkipReport(source=name)

    raw = []  # (where, smiles1, smiles2, labels)
    for path in paths:
        # per label column: non-empty values, values that are not numbers, the first of them
        seen = {c: [0, 0, None] for c in label_columns}
        for row_no, row in _read_rows(path, smiles_columns, label_columns):
            if limit is not None and len(raw) + skip.count >= limit:
                break
            skip.total += 1
            where = f"{os.path.basename(path)}:{row_no}"
            values, problem = [], None
            for c in label_columns:
                text = (row.get(c) or "").strip()
                if not text:
                    problem = problem or f"missing label (empty {c!r})"
                    continue
                seen[c][0] += 1
                try:
                    value = float(text)
                except ValueError:
                    if task == "classification":
                        raise _wrong_kind(path, c, task, row_no, text) from None
                    seen[c][1] += 1
                    seen[c][2] = seen[c][2] or (row_no, text)
                    problem = problem or f"label not a number in {c!r}: {text!r}"
                    continue
                if task == "classification" and np.isfinite(value) and value not in (0.0, 1.0):
                    raise _wrong_kind(path, c, task, row_no, text)
                values.append(value)
            if problem:
                skip.add(where, problem)
                continue
            labels = np.asarray(values, np.float64)
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
            raw.append((where, row.get(smiles_columns[0]) or "", row.get(smiles_columns[1]) or "", labels))
        for c, (n_values, n_bad, first) in seen.items():
            if n_bad and 2 * n_bad > n_values:  # not a numeric column (single bad rows are skipped)
                raise _wrong_kind(
                    path, c, task, *first, f"; {n_bad} of its {n_values} non-empty values are not numbers"
                )

    if sample is not None and sample[0] < len(raw):
        keep = np.sort(np.random.default_rng(sample[1]).choice(len(raw), sample[0], replace=False))
        if verbose:
            log.info(f"{name}: a random {sample[0]} of the {len(raw)} rows (seed {sample[1]})")
        raw = [raw[i] for i in keep]

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
        units=spec["units"],
        skip=skip,
        explicit_h=bool(cache.explicit_h),
        files=tuple(paths),
        missing_files=tuple(missing),
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
    hydrogens = {ds.explicit_h for ds in datasets}
    return PairDataset(
        name=name,
        molecules=molecules,
        index1=np.concatenate(i1),
        index2=np.concatenate(i2),
        labels=np.full((n, 0), np.nan, np.float32),
        label_names=(),
        rows=np.concatenate(rows),
        explicit_h=hydrogens.pop() if len(hydrogens) == 1 else None,
        files=tuple(f for ds in datasets for f in ds.files),
        missing_files=tuple(f for ds in datasets for f in ds.missing_files),
    )
