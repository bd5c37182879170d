"""Property-prediction task data: QM9 targets and MD17-family energies+forces -> splits of typed
records, per-element references / energy offset and target statistics, and padded batchers.

``target_stats.json`` (`STATS_FILE`) in a fine-tuning workdir holds the references and statistics
fitted on the training split; a rerun and the evaluation reuse them, so nothing is refitted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional

import ml_collections

import numpy as np

from georecon_jax.data import md17 as md17_data
from georecon_jax.data.qm9 import TARGETS, TARGET_UNITS, load_qm9
from georecon_jax.data.records import Molecules
from georecon_jax.graphs.batching import (
    GraphBatcher,
    edge_counts,
    estimate_budgets,
    training_layout,
)
from georecon_jax.objectives.noise import neighbor_list_problems
from georecon_jax.objectives.supervised import TargetStats

ENERGY_TARGETS = ("U0", "U", "H", "G")
HEAD_FOR_TARGET = {"mu": "dipole", "r2": "spatial_extent"}
# Heads whose output is scaled by the target's std and shifted by its mean (models/property.py).
STANDARDIZED_HEADS = ("equivariant_scalar", "mlp", "scalar")
STATS_FILE = "target_stats.json"


# ---------------------------------------------------------------------------------------------
# Configuration and data.

log = logging.getLogger(__name__)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with 'auto' settings filled in (head kind, reference energies); raises on bad names."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        if c.task == "qm9":
            if c.target not in TARGETS:
                raise ValueError(f"unknown QM9 target {c.target!r}: use one of {TARGETS}")
            if c.model.head.kind == "auto":
                # torchmd-net's output_model Scalar on the ET builds EquivariantScalar (model.py)
                c.model.head.kind = HEAD_FOR_TARGET.get(c.target, "equivariant_scalar")
            if c.model.reference == "auto":
                c.model.reference = "least_squares" if c.target in ENERGY_TARGETS else "none"
        elif c.task == "md17":
            c.target = "energy"
            if c.model.head.kind == "auto":
                c.model.head.kind = "equivariant_scalar"
            if c.model.head.kind not in STANDARDIZED_HEADS:
                raise ValueError(
                    f"MD17 needs an energy head: model.head.kind in {STANDARDIZED_HEADS}, "
                    f"not {c.model.head.kind!r}"
                )
            if c.model.reference == "auto":
                c.model.reference = "none"
        else:
            raise ValueError(f"unknown task {c.task!r}: use 'qm9' or 'md17'")
        if c.model.reference not in ("least_squares", "none"):
            raise ValueError(
                f"unknown reference {c.model.reference!r}: use 'auto', 'least_squares' or 'none'"
            )
    return c


@dataclasses.dataclass
class Split:
    molecules: Molecules  # targets: one column, the residual target (float32)
    indices: np.ndarray
    forces: Optional[np.ndarray] = None  # [n_rows, 3] (MD17)
    reference: Optional[np.ndarray] = None  # [n_molecules] float64, added back to report totals


@dataclasses.dataclass
class TaskData:
    splits: Dict[str, Split]
    stats: TargetStats
    target: str
    unit: str
    saved: dict  # what target_stats.json holds


def composition(molecules: Molecules, max_z: int) -> np.ndarray:
    """[n_molecules, max_z + 1] counts of each element."""
    counts = np.zeros((len(molecules), max_z + 1), np.float64)
    mol_of_row = np.repeat(np.arange(len(molecules)), molecules.n_atoms)
    np.add.at(counts, (mol_of_row, molecules.atomic_numbers.astype(np.int64)), 1.0)
    return counts


def fit_atomrefs(counts: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares per-element references: argmin_w |counts w - y|² (0 for absent elements)."""
    present = counts.sum(0) > 0
    w = np.zeros(counts.shape[1])
    w[present] = np.linalg.lstsq(counts[:, present], y, rcond=None)[0]
    return w


def _qm9_task(config, saved: Optional[dict]) -> TaskData:
    d = config.data
    mols, splits = load_qm9(
        cache_dir=d.get("cache_dir"),
        source_dir=d.get("source_dir"),
        limit=d.get("limit"),
        split_seed=d.split_seed,
        strict=d.strict,
    )
    col = TARGETS.index(config.target)
    y = mols.targets[:, col].astype(np.float64)
    train = splits["train"]
    n_labels = d.get("num_train_labels")
    if n_labels:
        if n_labels > len(train):
            raise ValueError(f"num_train_labels={n_labels} but the training split has {len(train)}")
        train = np.sort(np.random.default_rng([d.split_seed, 1]).permutation(train)[:n_labels])
    max_z = config.model.encoder.max_z
    counts = composition(mols, max_z)
    if saved is not None:
        atomref = np.asarray(saved["atomref"], np.float64)
    elif config.model.reference == "least_squares":
        atomref = fit_atomrefs(counts[train], y[train])
    else:
        atomref = np.zeros(max_z + 1)
    reference = counts @ atomref
    residual = y - reference
    if saved is not None:
        stats = TargetStats(**saved["stats"])
    elif config.model.head.kind in STANDARDIZED_HEADS:
        stats = TargetStats(mean=float(residual[train].mean()), std=float(residual[train].std(ddof=1)))
    else:  # dipole / spatial extent: the head outputs the property itself; std scales the loss
        stats = TargetStats(mean=0.0, std=float(y[train].std()))
    unit = TARGET_UNITS[col]
    mols_t = dataclasses.replace(
        mols,
        targets=residual.astype(np.float32)[:, None],
        target_names=(config.target,),
        target_units=(unit,),
    )
    val = splits["validation"][: d.get("num_eval_molecules") or None]
    test = splits["test"][: d.get("num_test_molecules") or None]
    out = {
        name: Split(mols_t, idx, None, reference)
        for name, idx in (("train", train), ("validation", val), ("test", test))
    }
    saved = {
        "target": config.target,
        "unit": unit,
        "reference": config.model.reference,
        "atomref": atomref.tolist(),
        "energy_offset": 0.0,
        "stats": stats.to_json(),
        "num_train_labels": int(len(train)),
        "elements": np.nonzero(counts[train].sum(0))[0].tolist(),  # what the model saw (predictions check)
    }
    return TaskData(out, stats, config.target, unit, saved)


def run_label(config) -> str:
    """What a run's reports call it: the target for QM9; for MD17-family data ``data.name`` when
    set, else the training file as ``<folder>/<stem>`` when files are named (``3BPA/train_300K``),
    else ``molecule`` (the rMD17 file name is made from it)."""
    if config.task == "qm9":
        return str(config.target)
    d = config.get("data") or {}
    if d.get("name"):
        return str(d.get("name"))
    if d.get("train_file"):
        path = os.path.normpath(os.path.expanduser(str(d.get("train_file"))))
        stem = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.basename(os.path.dirname(path))
        return f"{folder}/{stem}" if folder else stem
    return str(config.get("molecule") or "")


def md17_files(config):
    """(train_file, test_file or None) from the config (see configs/finetune_md17.py)."""
    d = config.data
    data_dir = (
        d.get("data_dir")
        or os.environ.get("GEORECON_MD17_DIR")
        or os.path.join(
            os.environ.get("GEORECON_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "georecon_jax")),
            "md17",
        )
    )
    train_file = d.get("train_file") or os.path.join(data_dir, f"rmd17_{config.molecule}_train_01.npz")
    test_file = d.get("test_file")
    if test_file is None and not d.get("train_file"):
        candidate = os.path.join(data_dir, f"rmd17_{config.molecule}_test_01.npz")
        test_file = candidate if os.path.exists(candidate) else None
    return train_file, test_file


def _md17_task(config, saved: Optional[dict]) -> TaskData:
    d = config.data
    train_file, test_file = md17_files(config)
    frames, _ = md17_data.load_md17(
        train_file,
        test_file,
        n_train=d.num_train,
        n_val=d.num_val,
        shrink_split=d.shrink_split,
        split_seed=d.split_seed,
        energy_unit=d.energy_unit,
        file_energy_unit=d.file_energy_unit,
        strict=d.strict,
    )
    tr, va, te = frames["train"], frames["validation"], frames["test"]
    if d.get("num_test_molecules"):
        te = te.subset(np.arange(min(d.num_test_molecules, len(te))))
    if saved is not None:
        offset, stats = float(saved["energy_offset"]), TargetStats(**saved["stats"])
    else:
        # Offset: mean training energy (float64). Scale (data.std_from): 'energies', the std of
        # the training energies (torchmd-net data.py _standardize); 'forces', the RMS of the
        # training force components (this project's choice before 2026-12).
        offset = float(tr.energies.mean())
        std_from = d.std_from
        if std_from == "energies":
            std = float(tr.energies.std(ddof=1))  # torch.std is unbiased
        elif std_from == "forces":
            std = float(np.sqrt(np.mean(tr.forces**2)))
        else:
            raise ValueError(f"unknown data.std_from {std_from!r}: use 'energies' or 'forces'")
        stats = TargetStats(mean=float((tr.energies - offset).mean()), std=std)
    both = dataclasses.replace(
        tr,
        positions=np.concatenate([tr.positions, va.positions]),
        energies=np.concatenate([tr.energies, va.energies]),
        forces=np.concatenate([tr.forces, va.forces]),
        frame_ids=np.concatenate([tr.frame_ids, va.frame_ids]),
    )
    mols, forces = both.to_molecules(offset)
    test_mols, test_forces = te.to_molecules(offset)
    n_tr = len(tr)
    out = {
        "train": Split(mols, np.arange(n_tr), forces, np.full(len(mols), offset)),
        "validation": Split(mols, np.arange(n_tr, len(mols)), forces, np.full(len(mols), offset)),
        "test": Split(test_mols, np.arange(len(test_mols)), test_forces, np.full(len(test_mols), offset)),
    }
    saved = {
        "target": "energy",
        "unit": d.energy_unit,
        "force_unit": f"{d.energy_unit}/Å",
        "reference": "mean training energy",
        "energy_offset": offset,
        "stats": stats.to_json(),
        "train_file": os.path.abspath(train_file),
        "test_file": os.path.abspath(test_file) if test_file else None,
        "num_train_labels": int(n_tr),
        "elements": sorted({int(z) for z in tr.atomic_numbers}),  # what the model saw (predictions check)
    }
    return TaskData(out, stats, "energy", d.energy_unit, saved)


def load_task_data(config, saved: Optional[dict] = None) -> TaskData:
    """Data of a resolved config; ``saved`` (a target_stats.json) reuses references and stats."""
    return (_qm9_task if config.task == "qm9" else _md17_task)(config, saved)


def denoise_neighbor_list_problems(config) -> List[str]:
    """Problems with the fine-tuning regulariser's noise (``loss.denoise_sigma`` Å, applied in
    training when ``loss.denoise_weight > 0``) on the config's neighbour list: a radius list,
    built from the clean positions, needs graph.skin >= 4·σ·√2·√3
    (`objectives.noise.neighbor_list_problems`). For the fine-tuning task's ``validate``."""
    if not config.loss.denoise_weight > 0:
        return []
    return neighbor_list_problems(config.graph, config.loss.denoise_sigma, "loss.denoise_sigma")


def make_batchers(config, data: TaskData, num_devices: int, names=("train", "validation", "test")):
    """Padded batchers sharing one set of budgets that covers every split (one set of shapes).

    Raises ValueError for a training batcher whose radius list the regulariser's noise could
    defeat (`denoise_neighbor_list_problems`): it would leak the clean geometry."""
    if "train" in names:
        problems = denoise_neighbor_list_problems(config)
        if problems:
            raise ValueError("invalid config:\n  " + "\n  ".join(problems))
    g = config.graph
    cutoff = config.model.encoder.cutoff
    per_device = config.batch_size // num_devices
    n_atoms, n_edges = [], []
    for name in names:
        s = data.splits[name]
        n_atoms.append(s.molecules.n_atoms[s.indices])
        n_edges.append(edge_counts(s.molecules, g.neighbor_list, cutoff, g.skin)[s.indices])
    budgets = estimate_budgets(
        np.concatenate(n_atoms),
        np.concatenate(n_edges),
        per_device,
        g.num_buckets,
        seed=config.seed,
        sub_batches=num_devices,
        num_samples=2000 if num_devices == 1 else 500,
    )
    out = {}
    for name in names:
        s = data.splits[name]
        train = name == "train"
        # training batches in the configured layout; evaluation on pairs (same function)
        layout = training_layout(g, int(s.molecules.n_atoms[s.indices].max())) if train else "pairs"
        out[name] = GraphBatcher(
            s.molecules,
            s.indices,
            config.batch_size,
            num_devices=num_devices,
            # one device: this host's own (evaluation after training runs on every host alike)
            **(dict(process_index=0, process_count=1) if num_devices == 1 else {}),
            shuffle=train,
            seed=config.seed,
            drop_remainder=train,
            neighbor_list=g.neighbor_list,
            cutoff=cutoff,
            skin=g.skin,
            budgets=budgets,
            forces=s.forces,
            layout=layout,
            num_buckets=g.num_buckets,
        )
        if train:
            log.info(
                "training batches: %s (graph.layout=%s)",
                out[name].describe_layout(),
                g.layout,
            )
    return out


# ---------------------------------------------------------------------------------------------
# target_stats.json


def read_target_stats(workdir: str, target: Optional[str] = None) -> Optional[dict]:
    """The ``target_stats.json`` of ``workdir``, or None when there is none.

    Raises:
      ValueError when ``target`` is given and the saved statistics are of another target.
    """
    path = os.path.join(workdir, STATS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if target is not None and saved.get("target") != target:
        raise ValueError(
            f"{workdir} holds a fine-tuning run for target {saved.get('target')!r}, "
            f"not {target!r}: use another --workdir"
        )
    return saved


def write_target_stats(workdir: str, saved: dict) -> None:
    """Writes ``target_stats.json`` atomically (a temporary file, then a rename)."""
    from georecon_jax.training.state import is_primary

    if not is_primary():  # every process computes the same statistics; process 0 writes them
        return
    path = os.path.join(workdir, STATS_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(saved, f, indent=1)
    os.replace(path + ".tmp", path)


def load_workdir_task_data(config, workdir: str) -> TaskData:
    """Data of a resolved config for a run in ``workdir``: references and statistics come from the
    workdir's ``target_stats.json`` when it has one (its target must be the config's), are fitted on
    the training split otherwise; either way the file is (re)written."""
    saved = read_target_stats(workdir, config.target)
    data = load_task_data(config, saved)
    write_target_stats(workdir, data.saved)
    return data
