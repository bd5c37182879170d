"""Fine-tuning and evaluation of the 2D relational model on pair tasks, from scratch or from a 3DMRL
checkpoint; writes ``results.json`` and ``results.md`` to the workdir.

Splits (every one is a list of (train, validation, test) index sets over the loaded pairs):
  * ``cv`` (regression): for each seed, the pairs are shuffled and cut into ``num_folds`` folds;
    fold i is held out and halved into validation and test, the rest trains (5 folds: 80/10/10),
    as the CGIB/3DMRL protocol.
  * ``molecule`` (DDI): for each seed, the *molecules* are split 80/10/10; training pairs have
    both molecules in the training set, validation pairs at least one validation molecule and no
    test molecule, test pairs at least one test molecule. Held-out molecules never occur in a
    training pair.
  * ``scaffold``: as ``molecule``, but whole Bemis–Murcko scaffold groups are assigned (the largest
    groups to training first; groups of equal rank shuffled by the seed).
The model of each split is the one with the best validation score (RMSE, or ROC-AUC), evaluated
every epoch; its test metrics are reported, then mean ± std over splits.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from georecon_jax.chem.features import murcko_scaffold
from georecon_jax.data.pairs import PairDataset, load_pairs
from georecon_jax.graphs.pairs import PairBatcher, PairBudget
from georecon_jax.models.relational import PairPredictor
from georecon_jax.training.checkpoint import restore_params
from georecon_jax.training.loop import record_config, workdir_lock
from georecon_jax.training.state import (create_optimizer, create_train_state, make_mesh, param_count,
                                         replicate, shard_batch)
from georecon_jax.workflows.mrl3d import (default_data_root, make_pair_apply_step, make_pair_train_step,
                                          molecule_cache)

# ---------------------------------------------------------------------------------------- metrics


def regression_metrics(y, p) -> Dict[str, float]:
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    err = p - y
    ss_tot = np.sum((y - y.mean()) ** 2)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": float(1 - np.sum(err ** 2) / ss_tot) if ss_tot > 0 else float("nan")}


def roc_auc(y, score) -> float:
    """Mann–Whitney U / (n+ n-), ties counted half."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    uniq, start = np.unique(sorted_s, return_index=True)
    ends = np.append(start[1:], len(s))
    for a, b in zip(start, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y, score) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over the ranking by score (as sklearn's average_precision_score)."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]   # end of each group of tied scores
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(y, logit) -> Dict[str, float]:
    y = np.asarray(y).ravel() > 0.5
    pred = np.asarray(logit).ravel() > 0.0
    tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"roc_auc": roc_auc(y, logit), "ap": average_precision(y, logit), "f1": float(f1),
            "accuracy": float(np.mean(pred == y))}


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
    return splits[:cfg.max_splits] if cfg.get("max_splits") else splits


# --------------------------------------------------------------------------------------- training


def load_pretrained(path: str, config) -> dict:
    """The 2D relational parameters of a 3DMRL checkpoint; checks that the featurisation agrees."""
    cfg_path = os.path.join(path, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            pre = json.load(f)
        for key in ("explicit_h",):
            if pre.get("data", {}).get(key) != config.data[key]:
                raise ValueError(f"{path} was pretrained with data.{key}={pre['data'].get(key)!r} but "
                                 f"fine-tuning uses {config.data[key]!r}: hydrogens must be treated alike")
        rel = pre.get("model", {}).get("relational", {})
        for k, v in rel.items():
            if config.model.get(k) != v:
                raise ValueError(f"{path}: pretrained relational.{k}={v!r}, fine-tuning model.{k}="
                                 f"{config.model.get(k)!r}; they must agree")
    step, raw = restore_params(path)
    tree = raw["params"]["params"] if "params" in raw.get("params", {}) else raw["params"]
    if "relational" not in tree:
        raise ValueError(f"{path}: no 'relational' parameters in the checkpoint (keys {list(tree)})")
    print(f"2D relational model initialised from {path} (step {step})")
    return jax.tree_util.tree_map(jnp.asarray, tree["relational"])


def train_one_split(config, ds: PairDataset, budget, split, mesh, pretrained, desc: str) -> Dict:
    name, tr, va, te = split
    task = ds.task
    num_devices = mesh.devices.size
    y_train = ds.labels[tr]
    if task == "regression":
        mean, std = y_train.mean(0), y_train.std(0) + 1e-8
    else:
        mean, std = np.zeros(ds.labels.shape[1]), np.ones(ds.labels.shape[1])
    mean_j, std_j = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    seed = config.seed + zlib.crc32(name.encode()) % 1000
    train = PairBatcher(ds, tr, config.batch_size, budget, num_devices=num_devices, seed=seed)
    evals = {k: PairBatcher(ds, idx, config.eval_batch_size, budget, num_devices=num_devices,
                            shuffle=False, drop_remainder=False) for k, idx in (("validation", va), ("test", te))}
    m = config.model
    model = PairPredictor(m.features, m.num_steps, m.set2set_steps, tuple(m.head_hidden),
                          ds.labels.shape[1], m.dropout)
    key = jax.random.PRNGKey(seed)
    sample = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), train.batch(0))
    params = jax.jit(model.init)(key, sample)
    if pretrained is not None:
        params = jax.tree_util.tree_map(lambda x: x, params)
        params["params"]["relational"] = pretrained
    num_steps = config.num_epochs * train.steps_per_epoch
    tx = create_optimizer(config.optim, num_steps)
    state = replicate(create_train_state(model.apply, params, tx, False), mesh)

    def loss_fn(p, batch, k):
        out = model.apply(p, batch, deterministic=False, rngs={"dropout": k})
        y = batch.labels
        ok = jnp.isfinite(y)
        y = jnp.where(ok, y, 0.0)
        if task == "regression":
            err = (out - (y - mean_j) / std_j) ** 2
        else:
            err = optax.sigmoid_binary_cross_entropy(out, y)
        per = jnp.sum(jnp.where(ok, err, 0.0), -1) / jnp.maximum(jnp.sum(ok, -1), 1)
        return per, {}

    def predict(p, batch, k):
        out = model.apply(p, batch, deterministic=True)
        if task == "regression":
            out = out * std_j + mean_j
        return dict(pred=out, label=batch.labels, mask=batch.pair_mask)

    step = make_pair_train_step(loss_fn, mesh, jax.random.fold_in(key, 1))
    predict_step = make_pair_apply_step(predict, mesh)
    place = lambda b: shard_batch(b, mesh)

    def evaluate(params, batcher):
        outs = [jax.device_get(predict_step(params, place(b), key)) for b in batcher.epoch_batches()]
        mask = np.concatenate([o["mask"] for o in outs])
        y = np.concatenate([o["label"] for o in outs])[mask]
        p = np.concatenate([o["pred"] for o in outs])[mask]
        return regression_metrics(y, p) if task == "regression" else classification_metrics(y, p)

    select = "rmse" if task == "regression" else "roc_auc"
    better = (lambda a, b: a < b) if task == "regression" else (lambda a, b: a > b)
    best, best_test, best_epoch = None, None, -1
    bar = tqdm(total=num_steps, desc=desc, dynamic_ncols=True)
    losses = []
    for k in range(num_steps):
        state, metrics = step(state, place(train.batch(k)))
        losses.append(metrics["loss"])
        bar.update(1)
        if (k + 1) % train.steps_per_epoch == 0:
            epoch = (k + 1) // train.steps_per_epoch
            val = evaluate(state.params, evals["validation"])
            if best is None or better(val[select], best[select]):
                best, best_epoch = val, epoch
                best_test = evaluate(state.params, evals["test"])
            bar.set_postfix(loss=f"{float(np.mean(jax.device_get(losses[-train.steps_per_epoch:]))):.3f}",
                            **{f"val_{select}": f"{val[select]:.3f}"})
    bar.close()
    train_loss = [float(x) for x in jax.device_get(losses)]
    return {"split": name, "n_train": int(len(train.indices)), "n_validation": int(len(evals["validation"].indices)),
            "n_test": int(len(evals["test"].indices)),
            "dropped_over_budget": int(train.num_dropped + sum(b.num_dropped for b in evals.values())),
            "best_epoch": best_epoch, "validation": best, "test": best_test,
            "first_train_loss": train_loss[0], "final_train_loss": train_loss[-1],
            "num_parameters": param_count(params)}


def summarise(rows: List[Dict]) -> Dict[str, Tuple[float, float]]:
    keys = rows[0]["test"].keys()
    return {k: (float(np.mean([r["test"][k] for r in rows])), float(np.std([r["test"][k] for r in rows])))
            for k in keys}


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict:
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        record_config(config, workdir, allow_change=True)
        mesh = make_mesh(config.get("num_devices") or None)
        d = config.data
        ds = load_pairs(d.preset, data_root=d.get("data_root") or default_data_root(), cache=molecule_cache(d),
                        num_workers=d.num_workers, limit=d.get("limit"))
        if d.get("max_pairs") and len(ds) > d.max_pairs:   # a random subset (files may be sorted by label)
            keep = np.sort(np.random.default_rng(config.seed).choice(len(ds), d.max_pairs, replace=False))
            print(f"{d.preset}: using a random subset of {d.max_pairs} of the {len(ds)} pairs (seed {config.seed})")
            ds = ds.subset(keep)
        budget = PairBudget.from_dataset(ds, max_atoms=d.max_atoms)
        splits = make_splits(ds, config)
        pretrained = load_pretrained(config.init_from, config) if config.init_from else None
        origin = f"3DMRL checkpoint {config.init_from}" if config.init_from else "scratch"
        print(f"{d.preset}: {len(ds)} pairs ({ds.task}, {ds.units}), {len(splits)} split(s) '{split_kind(ds, config)}', "
              f"from {origin}; budget side 1 ({budget.n_node1} atoms), side 2 ({budget.n_node2} atoms)")
        t0 = time.time()
        rows = [train_one_split(config, ds, budget, s, mesh, pretrained, f"{d.preset} {s[0]}") for s in splits]
        summary = summarise(rows)
        result = {"task": d.preset, "units": ds.units, "task_type": ds.task, "split": split_kind(ds, config),
                  "init": origin, "num_pairs": len(ds), "skipped_rows": ds.skip.count if ds.skip else 0,
                  "num_epochs": config.num_epochs, "batch_size": config.batch_size,
                  "test_mean_std": summary, "splits": rows, "wall_seconds": time.time() - t0}
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
        unit = f" ({ds.units})" if ds.task == "regression" else ""
        lines = [f"# {d.preset}: {split_kind(ds, config)} split, from {origin}", "",
                 f"{len(ds)} pairs, {len(rows)} split(s), {config.num_epochs} epochs, batch {config.batch_size}; "
                 f"test metrics of the best-validation epoch, mean ± std over splits{unit}.", "",
                 "| metric | mean | std |", "|---|---:|---:|"]
        lines += [f"| {k} | {m:.4f} | {s:.4f} |" for k, (m, s) in summary.items()]
        lines += ["", "| split | n_train | n_val | n_test | best epoch | " + " | ".join(summary) + " |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(summary)]
        lines += [f"| {r['split']} | {r['n_train']} | {r['n_validation']} | {r['n_test']} | {r['best_epoch']} | "
                  + " | ".join(f"{r['test'][k]:.4f}" for k in summary) + " |" for r in rows]
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return result
