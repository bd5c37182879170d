"""Pair-task data: the pair CSVs with their cached conformers, the pretraining pair set (observed
pairs or all combinations), a fine-tuning task's pairs, and its splits.

Splits (every one is a list of (name, train, validation, test) index sets over the loaded pairs):
  * ``cv`` (regression): for each seed, the pairs are shuffled and cut into ``num_folds`` folds;
    fold i is held out and halved into validation and test, the rest trains (5 folds: 80/10/10),
    as the CGIB/3DMRL protocol.
  * ``molecule`` (DDI): for each seed, the *molecules* are split 80/10/10; training pairs have
    both molecules in the training set, validation pairs at least one validation molecule and no
    test molecule, test pairs at least one test molecule. Held-out molecules never occur in a
    training pair.
  * ``scaffold``: as ``molecule``, but whole Bemis–Murcko scaffold groups are assigned (the largest
    groups to training first; groups of equal rank shuffled by the seed).
"""

from __future__ import annotations

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
    if d.get("max_pairs") and len(ds) > d.max_pairs:  # a random subset (files may be sorted by label)
        keep = np.sort(np.random.default_rng(config.seed).choice(len(ds), d.max_pairs, replace=False))
        log.info(
            f"{d.preset}: using a random subset of {d.max_pairs} of the {len(ds)} pairs (seed {config.seed})"
        )
        ds = ds.subset(keep)
    return ds


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


def split_kind(ds: PairDataset, cfg) -> str:
    """The config's split; 'cv' on a classification (DDI) task means the molecule split."""
    return "molecule" if cfg.split == "cv" and ds.task == "classification" else cfg.split


def make_splits(ds: PairDataset, cfg) -> list:
    kind = split_kind(ds, cfg)
    if kind == "cv":
        splits = cv_splits(len(ds), cfg.num_folds, cfg.seeds)
    elif kind in ("molecule", "scaffold"):
        splits = [(f"seed{s}_{kind}", *molecule_split(ds, kind, s)) for s in cfg.seeds]
    else:
        raise ValueError(f"unknown split {cfg.split!r}: use 'cv', 'molecule' or 'scaffold'")
    return splits[: cfg.max_splits] if cfg.get("max_splits") else splits
