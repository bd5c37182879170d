"""Pretraining molecules from an SDF file: PCQM4Mv2's 3.4 million DFT structures
(``data_prep/pcqm4mv2.py`` fetches and verifies them), or any file of 3D structures a user brings.

The records are read once into the cache format of QM9 (`records.Molecules` in an ``.npz``, with a
random train/validation split stored beside them): ``--config.data.dataset=sdf
--config.data.sdf_path=...`` then pretrains on them exactly as on QM9. Hydrogens are kept as
written; a record RDKit cannot read, without 3D coordinates, with implicit hydrogens or with
unusable atoms is skipped and reported by its index (``<cache>_skipped.json``), never lost
silently. Coordinates in Å, as SDF files hold them. The cache is rebuilt when the file's size or
modification time, the record limit or the split changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np
from tqdm import tqdm

from georecon_jax.data.records import DataError, Molecules, SkipReport, check_molecule

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def read_sdf_molecules(path: str, limit: Optional[int] = None, progress: bool = False):
    """(Molecules, SkipReport) of the records of ``path`` (the first ``limit`` only if given).
    ``ids`` are the records' 0-based indices in the file."""
    from georecon_jax.chem.structures import read_sdf

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such SDF file")
    name = os.path.basename(path)
    report = SkipReport(source=os.path.abspath(path))
    z_list, pos_list, ids = [], [], []
    records = read_sdf(path)
    for i, label, z, pos, reason in tqdm(records, desc=f"reading {name}", disable=not progress, unit=" mol"):
        if limit is not None and i >= limit:
            break
        report.total += 1
        reason = reason or check_molecule(z, pos)
        if reason:
            report.add(f"{name} record {i} ({label})", reason)
            continue
        z_list.append(z)
        pos_list.append(pos)
        ids.append(i)
    if not z_list:
        raise DataError(f"{path}: no usable record ({report.summary()})")
    return Molecules.from_lists(z_list, pos_list, np.zeros((len(ids), 0)), ids), report


def random_split(n: int, seed: int, validation_fraction: float):
    """A random train/validation split of ``n`` molecules (at least one of each); no test part:
    pretraining is judged downstream."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction}: must be in (0, 1)")
    if n < 2:
        raise DataError(f"{n} usable molecule(s): pretraining needs at least 2 (train and validation)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(validation_fraction * n))), n - 1)
    return {
        "train": np.sort(order[n_val:]),
        "validation": np.sort(order[:n_val]),
        "test": np.zeros(0, np.int64),
    }


def _cache_path(cache_dir: str, path: str, limit, split_seed: int, validation_fraction: float) -> str:
    st = os.stat(path)
    key = json.dumps(
        [os.path.abspath(path), st.st_size, int(st.st_mtime), limit, split_seed, validation_fraction]
    )
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(cache_dir, f"sdf_{stem}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz")


def load_sdf(
    path: str,
    cache_dir: Optional[str] = None,
    limit: Optional[int] = None,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    strict: bool = False,
    verbose: bool = True,
):
    """(molecules, splits) of an SDF file, from the cache (built on first use; see the module doc).
    ``strict``: raise `DataError` if any record had to be skipped."""
    from georecon_jax.data.qm9 import _load_cache, default_cache_dir

    if not path:
        raise ValueError("data.dataset='sdf' needs data.sdf_path (a .sdf file of 3D structures)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such SDF file")
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    cache = _cache_path(cache_dir, path, limit, split_seed, validation_fraction)
    skipped_path = cache.replace(".npz", "_skipped.json")
    if os.path.exists(cache):
        try:
            mols, splits, meta = _load_cache(cache, CACHE_VERSION)
        except Exception as e:  # noqa: BLE001 - a corrupt, partial or outdated cache is rebuilt
            log.info("SDF cache %s is unreadable (%s: %s); rebuilding it", cache, type(e).__name__, e)
        else:
            if strict and meta["skipped"]:
                raise DataError(f"{path}: {meta['skipped']} records were skipped (see {skipped_path})")
            return mols, splits
    if verbose:
        log.info("Building the cache %s from %s (once) ...", cache, path)
    mols, report = read_sdf_molecules(path, limit, progress=verbose)
    if verbose:
        log.info(report.summary())
    if strict and report.count:
        raise DataError(report.summary())
    report.save(skipped_path)
    splits = random_split(len(mols), split_seed, validation_fraction)
    meta = {"source": os.path.abspath(path), "skipped": report.count, "n_molecules": len(mols)}
    mols.save_npz(
        cache,
        cache_version=CACHE_VERSION,
        meta=json.dumps(meta),
        **{f"split_{k}": v for k, v in splits.items()},
    )
    return mols, splits
