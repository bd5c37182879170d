"""Pair-task data: the pair CSVs with their cached conformers, the pretraining pair set (observed
pairs or all combinations), a fine-tuning task's pairs, and its splits.

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
from typing import Dict, List, Tuple

import numpy as np

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.chem.features import murcko_scaffold
from georecon_jax.data.pairs import PairDataset, all_combinations, concat_datasets, load_pairs

log = logging.getLogger(__name__)

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_data_root() -> str:
    return os.environ.get("GEORECON_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")


def molecule_cache(data_cfg) -> MoleculeCache:
    return MoleculeCache(
        data_cfg.get("cache_dir"),
        explicit_h=data_cfg.explicit_h,
        seed=data_cfg.conformer_seed,
        mmff=data_cfg.mmff,
    )


def load_pretraining_pairs(data_cfg) -> PairDataset:
    """Every preset of ``data_cfg.presets``, as observed pairs or all combinations, joined."""
    root = data_cfg.get("data_root") or default_data_root()
    cache = molecule_cache(data_cfg)
    sets = []
    for preset in data_cfg.presets:
        ds = load_pairs(
            preset, data_root=root, cache=cache, num_workers=data_cfg.num_workers, limit=data_cfg.get("limit")
        )
        if data_cfg.pairs == "combinations":
            ds = all_combinations(
                ds, data_cfg.combination_fraction, data_cfg.split_seed, data_cfg.get("max_pairs")
            )
        elif data_cfg.pairs != "observed":
            raise ValueError(f"unknown data.pairs {data_cfg.pairs!r}: use 'observed' or 'combinations'")
        sets.append(ds)
    return concat_datasets(sets) if len(sets) > 1 else sets[0]


def load_pair_task(config) -> PairDataset:
    """The pairs of a fine-tuning config's ``data.preset``; with ``data.max_pairs``, a random subset
    of that many (seeded by ``config.seed``: pair files may be sorted by label)."""
    d = config.data
    ds = load_pairs(
        d.preset,
        data_root=d.get("data_root") or default_data_root(),
        cache=molecule_cache(d),
        num_workers=d.num_workers,
        limit=d.get("limit"),
    )
    if ds.task == "classification" and d.get("negatives", "file") == "sampled":
        n_file = len(ds)
        ds = sampled_negatives(ds, d.get("negative_seed", 0))
        log.info(
            f"{d.preset}: {len(ds) // 2} positive pairs and as many sampled negatives (of {n_file} "
            "rows in the files; data.negatives='file' keeps the files' own negatives)"
        )
    if d.get("max_pairs") and len(ds) > d.max_pairs:  # a random subset (files may be sorted by label)
        keep = np.sort(np.random.default_rng(config.seed).choice(len(ds), d.max_pairs, replace=False))
        log.info(
            f"{d.preset}: using a random subset of {d.max_pairs} of the {len(ds)} pairs (seed {config.seed})"
        )
        ds = ds.subset(keep)
    return ds


def sampled_negatives(ds: PairDataset, seed: int = 0) -> PairDataset:
    """A DDI set as the reference builds it (Namkyeong/3DMRL DDI/datasets_eval/ddi.py): the
    positive pairs only (label 1; a pair listed twice in the same order kept once), then as many
    negatives drawn uniformly at random, without replacement, from every ordered pair of the
    positives' molecules (a molecule with itself included) that is not a positive in either
    order. The files' own negatives are dropped (ChChMiner's include pairs that are also listed as
    positives). Negatives' ``rows`` read ``sampled:<k>``."""
    pos = np.flatnonzero(ds.labels[:, 0] == 1)
    seen, keep = set(), []
    for i in pos:
        key = (int(ds.index1[i]), int(ds.index2[i]))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    keep = np.asarray(keep, np.int64)
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
        form = cfg.data.get("held_out", "three_way")
        if form not in ("reference", "three_way"):
            raise ValueError(f"unknown data.held_out {form!r}: use 'reference' or 'three_way'")
        split = held_out_split if form == "reference" else molecule_split
        splits = [(f"seed{s}_{kind}", *split(ds, kind, s)) for s in cfg.seeds]
    else:
        raise ValueError(f"unknown split {cfg.split!r}: use 'cv', 'molecule' or 'scaffold'")
    return splits[: cfg.max_splits] if cfg.get("max_splits") else splits
