"""Pair-task data: the pair CSVs with their cached conformers, the pretraining pair set (observed
pairs or all combinations), a fine-tuning task's pairs, and its splits.

Sources: a fine-tuning config reads ``data.preset``, whose files, columns, task and units
``data.files``, ``data.smiles_columns``, ``data.label_columns``, ``data.task`` and ``data.units``
override when set (`load_pair_task`; with ``data.preset=''`` they describe any CSV). Pretraining
reads every preset of ``data.presets`` and, when ``data.files`` is set, those files as one more
source (`load_pretraining_pairs`; ``data.presets=()`` for the files alone). Hydrogens follow
``data.explicit_h``, None meaning the reference's choice (`resolve_explicit_h`).

Splits (every one is a list of (name, train, validation, test) index sets over the loaded pairs):
  * ``cv`` (regression): for each seed, the pairs are shuffled and cut into ``num_folds`` folds;
    fold i is held out and halved into validation and test, the rest trains (5 folds: 80/10/10),
    as the CGIB/3DMRL protocol.
  * ``molecule`` (DDI), with ``data.held_out='reference'`` (the default of mrl_finetune.py): the
    reference's split (`held_out_split`): 40 % of the molecules held out, every pair touching one
    halved at random into validation and test. With ``'three_way'`` (this code's earlier form):
    for each seed, the *molecules* are split 80/10/10; training pairs have
    both molecules in the training set, validation pairs at least one validation molecule and no
    test molecule, test pairs at least one test molecule. Held-out molecules never occur in a
    training pair.
  * ``scaffold``: as ``molecule``, but whole Bemis–Murcko scaffold groups are assigned (the largest
    groups to training first; groups of equal rank shuffled by the seed).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.chem.features import murcko_scaffold
from georecon_jax.data.records import DataError
from georecon_jax.data.pairs import (
    PairDataset,
    all_combinations,
    as_names,
    concat_datasets,
    default_explicit_h,
    load_pairs,
    resolve_spec,
)

log = logging.getLogger(__name__)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_data_root() -> str:
    return os.environ.get("GEORECON_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")


def resolve_explicit_h(data_cfg, pretraining: bool = False) -> bool:
    """``data.explicit_h`` when set (True/False); None follows the reference
    (`georecon_jax.data.pairs.default_explicit_h`): hydrogens in every pretraining molecule; in
    fine-tuning the preset's choice (solvation and DDI: yes; absorption, emission, lifetime: no),
    and yes for files without a preset."""
    value = data_cfg.get("explicit_h")
    if value is not None:
        return bool(value)
    return default_explicit_h(None if pretraining else data_cfg.get("preset") or None, pretraining)


def molecule_cache(data_cfg, pretraining: bool = False) -> MoleculeCache:
    """The conformer cache of a data section (one pickle per hydrogen setting, seed and MMFF)."""
    return MoleculeCache(
        data_cfg.get("cache_dir"),
        explicit_h=resolve_explicit_h(data_cfg, pretraining),
        seed=data_cfg.conformer_seed,
        mmff=data_cfg.mmff,
    )


def _file_fields(data_cfg) -> dict:
    """The data section's own description of its pair files (None/empty: the preset's)."""
    return dict(
        files=as_names(data_cfg.get("files")),
        smiles_columns=as_names(data_cfg.get("smiles_columns")),
        label_columns=as_names(data_cfg.get("label_columns")),
        task=data_cfg.get("task") or None,
        units=data_cfg.get("units") or None,
    )


def load_pretraining_pairs(data_cfg) -> PairDataset:
    """Every source of the pretraining, as observed pairs or all combinations, joined: each preset
    of ``data.presets`` (with its own files and columns), then, when ``data.files`` is set, those
    files as one more source, described by ``data.smiles_columns`` (required), ``data.label_columns``
    (optional: pretraining uses no labels; a row with a missing label is skipped) and
    ``data.units``. To pretrain on the files alone, set ``data.presets=()``. Hydrogens: see
    `resolve_explicit_h` (None: explicit, as the reference pretrains)."""
    root = data_cfg.get("data_root") or default_data_root()
    presets = as_names(data_cfg.get("presets"))  # a tuple; '--config.data.presets=a,b' works too
    fields = _file_fields(data_cfg)
    if not presets and not fields["files"]:
        raise ValueError("nothing to pretrain on: data.presets is empty and data.files is not set")
    if not fields["files"] and (fields["smiles_columns"] or fields["label_columns"]):
        raise ValueError(
            "data.smiles_columns / data.label_columns describe data.files, which is not set "
            "(the presets of data.presets use their own columns)"
        )
    sources = [dict(preset=p) for p in presets]
    if fields["files"]:
        sources.append(dict(preset=None, **fields))
        resolve_spec(**sources[-1])  # a bad column count or task fails before any embedding
    cache = molecule_cache(data_cfg, pretraining=True)
    sets = []
    for source in sources:
        ds = load_pairs(
            **source,
            data_root=root,
            cache=cache,
            num_workers=data_cfg.num_workers,
            limit=data_cfg.get("limit"),
        )
        if data_cfg.pairs not in ("observed", "combinations"):
            raise ValueError(f"unknown data.pairs {data_cfg.pairs!r}: use 'observed' or 'combinations'")
        if ds.task == "classification":  # DDI: the positive pairs, each once (DDI/datasets_pretrain/ddi.py)
            ds = positive_pairs(ds)
            if data_cfg.orient_by_radius:
                ds = orient_by_radius(ds)
        sets.append(ds)
    log.info(
        "pretraining pairs from %s (hydrogens %s)",
        ", ".join(f"{ds.name} ({len(ds)})" for ds in sets),
        "explicit" if cache.explicit_h else "implicit",
    )
    ds = concat_datasets(sets) if len(sets) > 1 else sets[0]
    if data_cfg.pairs == "combinations":
        # over the union of the sources' molecules, as the reference's chromophore_full.csv
        # (absorption ∪ emission); one source (CombiSolv) is the same as its own combinations
        ds = all_combinations(
            ds, data_cfg.combination_fraction, data_cfg.split_seed, data_cfg.get("max_pairs")
        )
    else:
        fraction = data_cfg.observed_fraction
        if fraction < 1.0:  # the reference's --use_subset --ratio on observed pairs (DDI: 0.4)
            n = int(len(ds) * fraction)
            ds = ds.subset(np.sort(np.random.default_rng(data_cfg.split_seed).permutation(len(ds))[:n]))
        if data_cfg.get("max_pairs") and len(ds) > data_cfg.max_pairs:
            keep = np.random.default_rng(data_cfg.split_seed).permutation(len(ds))[: data_cfg.max_pairs]
            ds = ds.subset(np.sort(keep))
    log.info(
        "pretraining on %d pairs of %d molecules (data.pairs=%s)", len(ds), len(ds.molecules), data_cfg.pairs
    )
    return ds


def positive_pair_indices(ds: PairDataset) -> np.ndarray:
    """The label-1 pairs of a 0/1 pair set, a pair listed twice in the same order kept once."""
    seen, keep = set(), []
    for i in np.flatnonzero(ds.labels[:, 0] == 1):
        key = (int(ds.index1[i]), int(ds.index2[i]))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return np.asarray(keep, np.int64)


def positive_pairs(ds: PairDataset) -> PairDataset:
    return ds.subset(positive_pair_indices(ds))


def molecular_radius(record: dict) -> float:
    """The largest distance of an atom from the conformer's centroid (Å)."""
    pos = np.asarray(record["positions"], np.float64)
    return float(np.linalg.norm(pos - pos.mean(0), axis=1).max())


def orient_by_radius(ds: PairDataset) -> PairDataset:
    """Drug pairs as the reference's DDI pretraining orders them (DDI/datasets_pretrain/ddi.py):
    the molecule with the larger radius first (the one the environment is built around), the
    smaller second (its copies); pairs of equal radius are dropped, as there."""
    r = np.asarray([molecular_radius(m) for m in ds.molecules])
    r1, r2 = r[ds.index1], r[ds.index2]
    keep = r1 != r2
    swap = r1 < r2
    out = ds.subset(np.flatnonzero(keep))
    s = swap[keep]
    out.index1, out.index2 = np.where(s, out.index2, out.index1), np.where(s, out.index1, out.index2)
    log.info(
        f"{ds.name}: {int(s.sum())} pairs reordered so the larger molecule comes first, "
        f"{int((~keep).sum())} of equal radius dropped (the reference's DDI pretraining)"
    )
    return out


def load_pair_task(config) -> PairDataset:
    """The pairs of a fine-tuning config: ``data.preset``, whose fields ``data.files``,
    ``data.smiles_columns``, ``data.label_columns``, ``data.task`` and ``data.units`` override
    when set (with ``data.preset=''`` they describe any CSV); with ``data.max_pairs``, a random
    subset of that many (seeded by ``config.seed``: pair files may be sorted by label)."""
    d = config.data
    preset = d.get("preset") or None
    fields = _file_fields(d)
    if not preset and not fields["files"]:
        raise ValueError("no fine-tuning data: set data.preset, or data.files with its columns")
    spec = resolve_spec(preset, **fields)  # bad columns or task: a ValueError before any embedding
    if not spec["label_columns"]:
        raise ValueError(f"{spec['name']}: fine-tuning needs a label column (data.label_columns)")
    # regression: the random subset of data.max_pairs rows is drawn before any conformer is
    # computed (the same draw as subsetting the loaded pairs when no row is skipped); DDI: after
    # the negatives are sampled from all positives
    early = bool(d.get("max_pairs")) and spec["task"] == "regression"
    ds = load_pairs(
        preset,
        **fields,
        data_root=d.get("data_root") or default_data_root(),
        cache=molecule_cache(d),
        num_workers=d.num_workers,
        limit=d.get("limit"),
        sample=(d.max_pairs, config.seed) if early else None,
    )
    log.info(
        "%s: %d pairs (%s, %s; hydrogens %s) from %s",
        ds.name,
        len(ds),
        ds.task,
        ds.units or "no units",
        "explicit" if ds.explicit_h else "implicit",
        ", ".join(ds.files),
    )
    n_file = len(ds)
    sampled = ds.task == "classification" and d.negatives == "sampled"
    if sampled:
        check_usable(ds, d, positives=len(positive_pair_indices(ds)))
        ds = sampled_negatives(ds, d.negative_seed)
        log.info(
            f"{ds.name}: {len(ds) // 2} positive pairs and as many sampled negatives (of {n_file} "
            "rows in the files; data.negatives='file' keeps the files' own negatives)"
        )
    if d.get("max_pairs") and len(ds) > d.max_pairs:  # a random subset (files may be sorted by label)
        keep = np.sort(np.random.default_rng(config.seed).choice(len(ds), d.max_pairs, replace=False))
        log.info(
            f"{ds.name}: using a random subset of {d.max_pairs} of the {len(ds)} pairs (seed {config.seed})"
        )
        ds = ds.subset(keep)
    check_usable(ds, d, rows=n_file)
    return ds


def check_usable(ds: PairDataset, data_cfg, positives: Optional[int] = None, rows: Optional[int] = None):
    """A `DataError` saying why when ``ds`` cannot be fine-tuned on: no pairs, no positive pairs
    to sample negatives around (``positives``: their count), one class only (classification), or
    one label value only (regression); the message names the files and the row limits that apply
    (``rows``: the usable rows read)."""
    files = ", ".join(ds.files) or ds.name
    limit = data_cfg.get("limit")
    read = f"{rows if rows is not None else len(ds)} usable rows read from {files}"
    if limit:
        read += (
            f" (rows limited to the first {limit} by data.limit, which the :tiny config sets to 60: "
            "--config.data.limit=N reads more)"
        )
    if positives is not None:
        if positives == 0:
            raise DataError(
                f"{ds.name}: no positive (label 1) pairs among the {read}, so no negatives can be "
                "sampled around them (data.negatives='file' keeps the files' own negatives)"
            )
        return
    if len(ds) == 0:
        raise DataError(f"{ds.name}: no usable pairs among the {read}")
    values = np.unique(ds.labels[:, 0][np.isfinite(ds.labels[:, 0])])
    if len(values) < 2:
        kind = "class" if ds.task == "classification" else "label value"
        raise DataError(
            f"{ds.name}: one {kind} only ({values[0]:g}) among the {len(ds)} pairs"
            + (f" (data.max_pairs={data_cfg.max_pairs})" if data_cfg.get("max_pairs") else "")
            + f"; the {read}: nothing to learn or score"
        )


def check_splits(ds: PairDataset, splits) -> None:
    """A `DataError` naming the split and part when a split's training, validation or test part
    is empty or, for classification, holds one class only (ROC-AUC and early stopping need both)."""
    for name, *parts in splits:
        for part, idx in zip(("training", "validation", "test"), parts):
            if len(idx) == 0:
                raise DataError(
                    f"{ds.name}: split {name} has no {part} pairs (of {len(ds)} pairs): use more rows "
                    "(data.limit, data.max_pairs) or fewer folds"
                )
            if ds.task == "classification" and len(np.unique(ds.labels[idx, 0])) < 2:
                raise DataError(
                    f"{ds.name}: split {name}'s {len(idx)} {part} pairs are all of class "
                    f"{ds.labels[idx[0], 0]:g}: use more rows (data.limit, data.max_pairs)"
                )


def sampled_negatives(ds: PairDataset, seed: int = 0) -> PairDataset:
    """A DDI set as the reference builds it (Namkyeong/3DMRL DDI/datasets_eval/ddi.py): the
    positive pairs only (label 1; a pair listed twice in the same order kept once), then as many
    negatives drawn uniformly at random, without replacement, from every ordered pair of the
    positives' molecules (a molecule with itself included) that is not a positive in either
    order. The files' own negatives are dropped (ChChMiner's include pairs that are also listed as
    positives). Negatives' ``rows`` read ``sampled:<k>``."""
    keep = positive_pair_indices(ds)
    seen = {(int(ds.index1[i]), int(ds.index2[i])) for i in keep}
    n = len(keep)
    known = seen | {(b, a) for a, b in seen}
    mols = np.unique(np.concatenate([ds.index1[keep], ds.index2[keep]]))
    if len(mols) ** 2 - len(known) < n:
        raise ValueError(
            f"{ds.name}: too few non-positive pairs among {len(mols)} molecules for {n} negatives"
        )
    rng = np.random.default_rng(seed)
    negatives: Dict[Tuple[int, int], None] = {}  # insertion-ordered: the draw order
    while len(negatives) < n:
        a, b = rng.choice(mols, size=(2, 2 * (n - len(negatives)) + 16))
        for pair in zip(a.tolist(), b.tolist()):
            if pair not in known and pair not in negatives:
                negatives[pair] = None
                if len(negatives) == n:
                    break
    neg = np.asarray(list(negatives), np.int64).reshape(-1, 2)
    return dataclasses.replace(
        ds,
        index1=np.concatenate([ds.index1[keep], neg[:, 0]]),
        index2=np.concatenate([ds.index2[keep], neg[:, 1]]),
        labels=np.concatenate([np.ones((n, 1)), np.zeros((n, 1))]).astype(ds.labels.dtype),
        rows=np.concatenate([ds.rows[keep], np.asarray([f"sampled:{k}" for k in range(n)], dtype=object)]),
    )


# ----------------------------------------------------------------------------------------- splits


def cv_splits(n: int, num_folds: int, seeds) -> List[Tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for seed in seeds:
        folds = np.array_split(np.random.default_rng(seed).permutation(n), num_folds)
        for i in range(num_folds):
            held = folds[i]
            half = len(held) // 2
            train = np.concatenate([f for j, f in enumerate(folds) if j != i])
            out.append((f"seed{seed}_fold{i}", train, held[:half], held[half:]))
    return out


def molecule_groups(ds: PairDataset, by: str, seed: int) -> List[np.ndarray]:
    used = np.unique(np.concatenate([ds.index1, ds.index2]))
    if by == "molecule":
        return [np.asarray([m]) for m in np.random.default_rng(seed).permutation(used)]
    groups: Dict[str, list] = {}
    for m in used:
        groups.setdefault(murcko_scaffold(ds.molecules[m]["smiles"]), []).append(m)
    items = list(groups.values())
    rng = np.random.default_rng(seed)
    tie = rng.permutation(len(items))
    order = sorted(range(len(items)), key=lambda i: (-len(items[i]), tie[i]))
    return [np.asarray(items[i]) for i in order]


def molecule_split(ds: PairDataset, by: str, seed: int, fractions=(0.8, 0.1, 0.1)):
    """Pairs split so that validation/test molecules never occur in a training pair."""
    groups = molecule_groups(ds, by, seed)
    n_mol = sum(len(g) for g in groups)
    role = {}
    count = 0
    for g in groups:
        r = 0 if count < fractions[0] * n_mol else (1 if count < (fractions[0] + fractions[1]) * n_mol else 2)
        for m in g:
            role[int(m)] = r
        count += len(g)
    r1 = np.asarray([role[int(m)] for m in ds.index1])
    r2 = np.asarray([role[int(m)] for m in ds.index2])
    worst = np.maximum(r1, r2)
    idx = np.arange(len(ds))
    return idx[worst == 0], idx[worst == 1], idx[worst == 2]


def held_out_split(ds: PairDataset, by: str, seed: int, fraction: float = 0.4):
    """The reference's molecule and scaffold splits (DDI/datasets_eval/ddi.py get_molecule_split,
    get_scaffold_split): ``fraction`` of the molecules (or of the scaffolds) is drawn at random;
    every pair with a held-out molecule (or a molecule of a held-out scaffold) is held out, and the
    held-out pairs are halved at random into validation and test (test gets the odd one); the
    other pairs train. Held-out molecules never occur in a training pair."""
    used = np.unique(np.concatenate([ds.index1, ds.index2]))
    rng = np.random.default_rng(seed)
    if by == "molecule":
        key = {int(m): int(m) for m in used}
    else:
        key = {int(m): murcko_scaffold(ds.molecules[m]["smiles"]) for m in used}
    names = sorted(set(key.values()), key=str)
    held = {names[i] for i in rng.choice(len(names), size=int(len(names) * fraction), replace=False)}
    out = np.asarray(
        [key[int(a)] in held or key[int(b)] in held for a, b in zip(ds.index1, ds.index2)], dtype=bool
    )
    idx = np.arange(len(ds))
    test_pairs = rng.permutation(idx[out])
    n_val = len(test_pairs) // 2
    return idx[~out], np.sort(test_pairs[:n_val]), np.sort(test_pairs[n_val:])


def split_kind(ds: PairDataset, cfg) -> str:
    """The config's split; 'cv' on a classification (DDI) task means the molecule split."""
    return "molecule" if cfg.split == "cv" and ds.task == "classification" else cfg.split


def make_splits(ds: PairDataset, cfg) -> list:
    kind = split_kind(ds, cfg)
    if kind == "cv":
        splits = cv_splits(len(ds), cfg.num_folds, cfg.seeds)
    elif kind in ("molecule", "scaffold"):
        form = cfg.data.held_out
        if form not in ("reference", "three_way"):
            raise ValueError(f"unknown data.held_out {form!r}: use 'reference' or 'three_way'")
        split = held_out_split if form == "reference" else molecule_split
        splits = [(f"seed{s}_{kind}", *split(ds, kind, s)) for s in cfg.seeds]
    else:
        raise ValueError(f"unknown split {cfg.split!r}: use 'cv', 'molecule' or 'scaffold'")
    splits = splits[: cfg.max_splits] if cfg.get("max_splits") else splits
    check_splits(ds, splits)
    return splits
