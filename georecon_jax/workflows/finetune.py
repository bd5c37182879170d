"""Fine-tuning, wired end to end: QM9 property or MD17 energies+forces -> padded graphs ->
encoder (pretrained or fresh) + property head -> supervised loss -> the shared training loop.

`run(config, workdir)` is what ``python -m experiments.finetune`` calls. Besides the loop's
``checkpoints/``, ``metrics.jsonl`` and ``config.json`` it writes into the workdir:

  target_stats.json        per-element references / energy offset and the target mean and std
                           (evaluation reuses them, so it never refits anything)
  best/checkpoints/<step>  the state with the best validation metric; best.json names its step
  early_stopped.json       when early stopping ended the run (a rerun does not train further)
  learning_curves.png      training loss and validation MAE against step
  summary.json             final metrics; with ``evaluate_at_end`` also results.json, results.md
                           and parity plots of the test split (`workflows.evaluate`)
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from georecon_jax import plots
from georecon_jax.data import md17 as md17_data
from georecon_jax.data.qm9 import TARGETS, TARGET_UNITS, load_qm9
from georecon_jax.data.records import Molecules
from georecon_jax.graphs.batching import GraphBatcher, edge_counts, estimate_budgets
from georecon_jax.graphs.masks import graph_masks
from georecon_jax.models.property import PropertyModel
from georecon_jax.objectives.supervised import TargetStats, make_loss_fn
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.checkpoint import Checkpointer, restore_params, start_or_resume
from georecon_jax.training.loop import (MetricsWriter, fit, flatten_dict, read_metrics, record_config,
                                        workdir_lock)
from georecon_jax.training.state import make_mesh, param_count, shard_batch

ENERGY_TARGETS = ("U0", "U", "H", "G")
HEAD_FOR_TARGET = {"mu": "dipole", "r2": "spatial_extent"}
STATS_FILE = "target_stats.json"


class PretrainedMismatchError(ValueError):
    """A pretrained checkpoint whose encoder does not fit the fine-tuning model."""


class EarlyStopped(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Configuration and data.

def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with 'auto' settings filled in (head kind, reference energies); raises on bad names."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        if c.task == "qm9":
            if c.target not in TARGETS:
                raise ValueError(f"unknown QM9 target {c.target!r}: use one of {TARGETS}")
            if c.model.head.kind == "auto":
                c.model.head.kind = HEAD_FOR_TARGET.get(c.target, "scalar")
            if c.model.reference == "auto":
                c.model.reference = "least_squares" if c.target in ENERGY_TARGETS else "none"
        elif c.task == "md17":
            c.target = "energy"
            if c.model.head.kind == "auto":
                c.model.head.kind = "scalar"
            if c.model.head.kind != "scalar":
                raise ValueError("MD17 needs model.head.kind='scalar' (an energy)")
            if c.model.reference == "auto":
                c.model.reference = "none"
        else:
            raise ValueError(f"unknown task {c.task!r}: use 'qm9' or 'md17'")
        if c.model.reference not in ("least_squares", "none"):
            raise ValueError(f"unknown reference {c.model.reference!r}: use 'auto', "
                             "'least_squares' or 'none'")
    return c


@dataclasses.dataclass
class Split:
    molecules: Molecules      # targets: one column, the residual target (float32)
    indices: np.ndarray
    forces: Optional[np.ndarray] = None   # [n_rows, 3] (MD17)
    reference: Optional[np.ndarray] = None  # [n_molecules] float64, added back to report totals


@dataclasses.dataclass
class TaskData:
    splits: Dict[str, Split]
    stats: TargetStats
    target: str
    unit: str
    saved: dict               # what target_stats.json holds


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
    mols, splits = load_qm9(cache_dir=d.get("cache_dir"), source_dir=d.get("source_dir"),
                            limit=d.get("limit"), split_seed=d.split_seed, strict=d.get("strict", False))
    col = TARGETS.index(config.target)
    y = mols.targets[:, col].astype(np.float64)
    train = splits["train"]
    n_labels = d.get("num_train_labels")
    if n_labels:
        if n_labels > len(train):
            raise ValueError(f"num_train_labels={n_labels} but the training split has {len(train)}")
        train = np.sort(np.random.default_rng([d.split_seed, 1]).permutation(train)[:n_labels])
    max_z = config.model.encoder.get("max_z", 100)
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
    elif config.model.head.kind == "scalar":
        stats = TargetStats(mean=float(residual[train].mean()), std=float(residual[train].std()))
    else:  # dipole / spatial extent: the head outputs the property itself; std scales the loss
        stats = TargetStats(mean=0.0, std=float(y[train].std()))
    unit = TARGET_UNITS[col]
    mols_t = dataclasses.replace(mols, targets=residual.astype(np.float32)[:, None],
                                 target_names=(config.target,), target_units=(unit,))
    val = splits["validation"][:d.get("num_eval_molecules") or None]
    test = splits["test"][:d.get("num_test_molecules") or None]
    out = {name: Split(mols_t, idx, None, reference) for name, idx in
           (("train", train), ("validation", val), ("test", test))}
    saved = {"target": config.target, "unit": unit, "reference": config.model.reference,
             "atomref": atomref.tolist(), "energy_offset": 0.0, "stats": stats.to_json(),
             "num_train_labels": int(len(train))}
    return TaskData(out, stats, config.target, unit, saved)


def md17_files(config):
    """(train_file, test_file or None) from the config (see configs/finetune_md17.py)."""
    d = config.data
    data_dir = d.get("data_dir") or os.environ.get("GEORECON_MD17_DIR") or os.path.join(
        os.environ.get("GEORECON_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "georecon_jax")),
        "md17")
    train_file = d.get("train_file") or os.path.join(data_dir, f"rmd17_{config.molecule}_train_01.npz")
    test_file = d.get("test_file")
    if test_file is None and not d.get("train_file"):
        candidate = os.path.join(data_dir, f"rmd17_{config.molecule}_test_01.npz")
        test_file = candidate if os.path.exists(candidate) else None
    return train_file, test_file


def _md17_task(config, saved: Optional[dict]) -> TaskData:
    d = config.data
    train_file, test_file = md17_files(config)
    frames, _ = md17_data.load_md17(train_file, test_file, n_train=d.num_train, n_val=d.num_val,
                                    split_seed=d.split_seed, energy_unit=d.energy_unit,
                                    file_energy_unit=d.file_energy_unit, strict=d.get("strict", False))
    tr, va, te = frames["train"], frames["validation"], frames["test"]
    if d.get("num_test_molecules"):
        te = te.subset(np.arange(min(d.num_test_molecules, len(te))))
    if saved is not None:
        offset, stats = float(saved["energy_offset"]), TargetStats(**saved["stats"])
    else:
        # Offset: mean training energy (float64). Scale: RMS of the training force components,
        # the natural energy-per-Å unit of the forces, which carry 80% of the loss.
        offset = float(tr.energies.mean())
        stats = TargetStats(mean=float((tr.energies - offset).mean()),
                            std=float(np.sqrt(np.mean(tr.forces ** 2))))
    both = dataclasses.replace(tr, positions=np.concatenate([tr.positions, va.positions]),
                               energies=np.concatenate([tr.energies, va.energies]),
                               forces=np.concatenate([tr.forces, va.forces]),
                               frame_ids=np.concatenate([tr.frame_ids, va.frame_ids]))
    mols, forces = both.to_molecules(offset)
    test_mols, test_forces = te.to_molecules(offset)
    n_tr = len(tr)
    out = {"train": Split(mols, np.arange(n_tr), forces, np.full(len(mols), offset)),
           "validation": Split(mols, np.arange(n_tr, len(mols)), forces, np.full(len(mols), offset)),
           "test": Split(test_mols, np.arange(len(test_mols)), test_forces, np.full(len(test_mols), offset))}
    saved = {"target": "energy", "unit": d.energy_unit, "force_unit": f"{d.energy_unit}/Å",
             "reference": "mean training energy", "energy_offset": offset, "stats": stats.to_json(),
             "train_file": os.path.abspath(train_file),
             "test_file": os.path.abspath(test_file) if test_file else None,
             "num_train_labels": int(n_tr)}
    return TaskData(out, stats, "energy", d.energy_unit, saved)


def load_task_data(config, saved: Optional[dict] = None) -> TaskData:
    """Data of a resolved config; ``saved`` (a target_stats.json) reuses references and stats."""
    return (_qm9_task if config.task == "qm9" else _md17_task)(config, saved)


def make_batchers(config, data: TaskData, num_devices: int, names=("train", "validation", "test")):
    """Padded batchers sharing one set of budgets that covers every split (one set of shapes)."""
    g = config.graph
    cutoff = config.model.encoder.cutoff
    per_device = config.batch_size // num_devices
    n_atoms, n_edges = [], []
    for name in names:
        s = data.splits[name]
        n_atoms.append(s.molecules.n_atoms[s.indices])
        n_edges.append(edge_counts(s.molecules, g.neighbor_list, cutoff, g.skin)[s.indices])
    budgets = estimate_budgets(np.concatenate(n_atoms), np.concatenate(n_edges), per_device,
                               g.num_buckets, seed=config.seed, sub_batches=num_devices,
                               num_samples=2000 if num_devices == 1 else 500)
    out = {}
    for name in names:
        s = data.splits[name]
        train = name == "train"
        out[name] = GraphBatcher(s.molecules, s.indices, config.batch_size, num_devices=num_devices,
                                 shuffle=train, seed=config.seed, drop_remainder=train,
                                 neighbor_list=g.neighbor_list, cutoff=cutoff, skin=g.skin,
                                 budgets=budgets, forces=s.forces)
    return out


def init_model(config, batcher: GraphBatcher, key):
    model = PropertyModel(config.model)
    graph = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), batcher.batch(0))
    m = graph_masks(graph)
    params = jax.jit(model.init, static_argnums=(8,))(
        key, graph.nodes.atomic_numbers, graph.nodes.positions, graph.senders, graph.receivers,
        m.edge_mask, m.node_mask, m.node_graph, m.n_graph)
    return model, params  # create_train_state makes every leaf strongly typed


# ---------------------------------------------------------------------------------------------
# Pretrained weights.

def _describe(flat) -> str:
    emb = flat.get("embedding/embedding")
    layers = len({k.split("/")[0] for k in flat if k.startswith("attention_")})
    return (f"features={emb.shape[1] if emb is not None else '?'}, num_layers={layers}, "
            f"num_rbf={flat['rbf/means'].shape[0] if 'rbf/means' in flat else '?'}")


def _pretrain_config(path: str) -> Optional[dict]:
    """The config.json of the pretraining workdir that holds ``path``, if there is one."""
    p = os.path.abspath(path)
    for _ in range(4):
        if os.path.isfile(os.path.join(p, "config.json")):
            with open(os.path.join(p, "config.json")) as f:
                return json.load(f)
        p = os.path.dirname(p)
    return None


def load_pretrained(params, path: str, encoder_cfg, verbose: bool = True):
    """``params`` with ``encoder`` (and a matching ``node_head``) replaced by a pretraining
    checkpoint's (its EMA parameters when it kept them).

    Raises:
      PretrainedMismatchError naming every parameter whose shape differs, what the checkpoint's
      encoder is and what this model's is, or a differing encoder setting of the pretraining config.
    """
    step, raw = restore_params(path)
    src = raw.get("ema_params") or raw.get("params")
    if not isinstance(src, dict) or "params" not in src or "encoder" not in src["params"]:
        raise PretrainedMismatchError(f"{path}: step {step} holds no 'params/encoder' subtree "
                                      "(is it a pretraining checkpoint?)")
    src = src["params"]
    ours = flatten_dict(params["params"]["encoder"], "/")
    theirs = flatten_dict(src["encoder"], "/")
    problems = [f"{k}: checkpoint {tuple(theirs[k].shape)}, model {tuple(ours[k].shape)}"
                for k in sorted(set(ours) & set(theirs), key=lambda k: (k.count("/"), k))
                if tuple(theirs[k].shape) != tuple(ours[k].shape)]
    problems += [f"{k}: in the model, not in the checkpoint" for k in sorted(set(ours) - set(theirs))]
    problems += [f"{k}: in the checkpoint, not in the model" for k in sorted(set(theirs) - set(ours))]
    if problems:
        shown = "\n  ".join(problems[:8]) + (f"\n  (+{len(problems) - 8} more)" if len(problems) > 8 else "")
        raise PretrainedMismatchError(
            f"the pretrained encoder in {path} (step {step}) does not match this model's encoder:\n"
            f"  checkpoint: {_describe(theirs)}\n  this model: {_describe(ours)}\n  {shown}\n"
            "Set --config.model.encoder.* to the pretraining values.")
    pre_cfg = _pretrain_config(path)
    if pre_cfg is not None:
        pre_enc = pre_cfg.get("model", {}).get("encoder", {})
        diffs = [f"{k}: pretrained {pre_enc[k]!r}, model {encoder_cfg.get(k)!r}"
                 for k in sorted(pre_enc) if encoder_cfg.get(k) != pre_enc[k]]
        if diffs:
            raise PretrainedMismatchError(
                f"the pretrained encoder in {path} was configured differently: " + "; ".join(diffs))
    new = jax.tree_util.tree_map(lambda x: x, params)
    new["params"] = dict(new["params"])
    new["params"]["encoder"] = jax.tree_util.tree_map(
        lambda ref, x: jnp.asarray(x, ref.dtype), params["params"]["encoder"], src["encoder"])
    loaded = ["encoder"]
    if "node_head" in params["params"] and "node_head" in src:
        a, b = flatten_dict(params["params"]["node_head"], "/"), flatten_dict(src["node_head"], "/")
        if set(a) == set(b) and all(tuple(a[k].shape) == tuple(b[k].shape) for k in a):
            new["params"]["node_head"] = jax.tree_util.tree_map(
                lambda ref, x: jnp.asarray(x, ref.dtype), params["params"]["node_head"], src["node_head"])
            loaded.append("node_head")
    if verbose:
        print(f"loaded {', '.join(loaded)} from {path} (pretraining step {step})")
    return new, {"path": os.path.abspath(path), "step": int(step), "loaded": loaded}


# ---------------------------------------------------------------------------------------------
# The run.

def _selection_metric(config) -> str:
    return "mae" if config.task == "qm9" else "loss"


def _learning_curves(workdir, config, unit):
    rows = read_metrics(workdir)
    if config.task == "qm9":
        panels = {"loss": (("train", "loss", "train loss"), ("validation", "loss", "validation loss")),
                  f"{config.target} MAE ({unit})": (("train", "mae", "train"),
                                                    ("validation", "mae", "validation"))}
    else:
        panels = {"loss": (("train", "loss", "train"), ("validation", "loss", "validation")),
                  f"energy MAE ({unit})": (("train", "energy_mae", "train"),
                                           ("validation", "energy_mae", "validation")),
                  f"force MAE ({unit}/Å)": (("train", "force_mae", "train"),
                                            ("validation", "force_mae", "validation"))}
    plots.learning_curves(rows, os.path.join(workdir, "learning_curves.png"), panels,
                          title=f"fine-tuning {config.task} "
                                f"{config.target if config.task == 'qm9' else config.molecule}")


def run(config: ml_collections.ConfigDict, workdir: str):
    """Fine-tunes (or resumes) in ``workdir``; returns a summary dict."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        record_config(config, workdir, compare_sections=("model", "loss", "data"),
                      allow_change=config.get("allow_config_change", False))
        config = resolve_config(config)
        mesh = make_mesh(config.get("num_devices") or None)
        num_devices = mesh.devices.size
        stats_path = os.path.join(workdir, STATS_FILE)
        saved = None
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                saved = json.load(f)
            if saved.get("target") != config.target:
                raise ValueError(f"{workdir} holds a fine-tuning run for target {saved.get('target')!r}, "
                                 f"not {config.target!r}: use another --workdir")
        data = load_task_data(config, saved)
        with open(stats_path + ".tmp", "w") as f:
            json.dump(data.saved, f, indent=1)
        os.replace(stats_path + ".tmp", stats_path)
        batchers = make_batchers(config, data, num_devices)
        train, val = batchers["train"], batchers["validation"]
        print(f"{config.task} {config.target}: {len(train.indices)} training / {len(val.indices)} "
              f"validation / {len(batchers['test'].indices)} test molecules; target mean "
              f"{data.stats.mean:.4g} {data.unit}, std {data.stats.std:.4g} {data.unit} "
              f"(after references); batch {config.batch_size} over {num_devices} device(s)")
        key = jax.random.PRNGKey(config.seed)
        model, params = init_model(config, train, key)
        pretrained_info = None
        if config.get("pretrained"):
            params, pretrained_info = load_pretrained(params, config.pretrained, config.model.encoder)
        print(f"model: {param_count(params):,} parameters (encoder "
              f"{param_count(params['params']['encoder']):,}); "
              f"{'pretrained' if pretrained_info else 'from scratch'}")
        state, ckpt = start_or_resume(workdir, model.apply, params, config, mesh)
        best_ckpt = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
        loss_fn = make_loss_fn(model, config, data.stats, train=True)
        eval_loss_fn = make_loss_fn(model, config, data.stats, train=False)
        train_step = steps_lib.make_train_step(loss_fn, mesh, jax.random.fold_in(key, 1),
                                               config.optim.ema_decay)
        eval_step = steps_lib.make_eval_step(eval_loss_fn, mesh, jax.random.fold_in(key, 2))
        place = lambda b: shard_batch(b, mesh)
        writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
        best_path = os.path.join(workdir, "best.json")
        best = {"step": None, "value": float("inf"), "metric": _selection_metric(config), "evals_since": 0}
        if os.path.exists(best_path):
            with open(best_path) as f:
                best.update(json.load(f))
        es = config.early_stopping

        def eval_fn(state, step):
            params = state.ema_params if state.ema_params is not None else state.params
            metrics = steps_lib.combine_eval_sums(
                [eval_step(params, place(b), i) for i, b in enumerate(val.epoch_batches())])
            value = metrics[best["metric"]]
            if value < best["value"] - es.min_delta:
                best.update(step=int(step), value=float(value), evals_since=0)
                best_ckpt.save(step, state)
            else:
                best["evals_since"] += 1
            with open(best_path, "w") as f:
                json.dump(best, f, indent=1)
            if es.patience and best["evals_since"] >= es.patience:
                writer.write(step, "validation", metrics)
                ckpt.save(step, state)
                with open(os.path.join(workdir, "early_stopped.json"), "w") as f:
                    json.dump({"step": int(step), **best}, f, indent=1)
                raise EarlyStopped(step)
            return metrics

        t0 = time.time()
        stopped_at = None
        if os.path.exists(os.path.join(workdir, "early_stopped.json")):
            print("this run was stopped early before; not training further")
        else:
            try:
                state = fit(state=state, train_step=train_step, make_batch=train.batch, place=place,
                            num_steps=config.num_steps, checkpointer=ckpt, writer=writer,
                            eval_fn=eval_fn, eval_every=config.eval_every,
                            checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                            max_consecutive_nonfinite=config.max_consecutive_nonfinite,
                            desc=f"finetune {config.task} {config.target}")
            except EarlyStopped as e:
                stopped_at = int(e.args[0])
                print(f"early stopping at step {stopped_at}: no validation improvement in "
                      f"{es.patience} evaluations (best step {best['step']})")
        writer.close()
        ckpt.close()
        best_ckpt.close()
        _learning_curves(workdir, config, data.unit)
        last_val = [r for r in read_metrics(workdir, "validation")]
        summary = {"task": config.task, "target": config.target, "unit": data.unit,
                   "steps": int(jax.device_get(state.step)), "early_stopped_at": stopped_at,
                   "best_step": best["step"], f"best_validation_{best['metric']}": best["value"],
                   "final_validation": last_val[-1] if last_val else None,
                   "pretrained": pretrained_info, "num_train_labels": data.saved["num_train_labels"],
                   "wall_seconds_this_run": time.time() - t0}
        if config.task == "md17":
            summary["force_unit"] = f"{data.unit}/Å"
    if config.get("evaluate_at_end", True):
        from georecon_jax.workflows import evaluate
        summary["test"] = evaluate.evaluate(workdir, checkpoint="best")["metrics"]
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return summary
