"""Fine-tuning of the 2D relational model on a pair task, from scratch or from a 3DMRL checkpoint.

``run(config, workdir)`` is what ``python -m experiments.finetune_pairs`` calls. Each split
(`tasks.pair_data`: ``cv`` folds × seeds, ``molecule`` or ``scaffold``) is one run of the experiment
runner in ``<workdir>/splits/<split>/``, with its own checkpoints (one per epoch), metrics and
resume: a killed job, run again, skips the finished splits and resumes the interrupted one from its
last checkpoint. Each split evaluates on its validation pairs every epoch and keeps the best epoch's
state (RMSE, or ROC-AUC for classification) in ``best/``; its test metrics are reported, then
mean ± std over splits in ``<workdir>/results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from georecon_jax.data.pairs import PairDataset
from georecon_jax.graphs.pairs import PairBatcher, PairBudget
from georecon_jax.models.relational import PairPredictor
from georecon_jax.tasks.metrics import classification_metrics, regression_metrics
from georecon_jax.tasks.pair_data import load_pair_task, make_splits, split_kind
from georecon_jax.training import runner
from georecon_jax.training.checkpoint import restore_params
from georecon_jax.training.loop import read_metrics, record_config, workdir_lock
from georecon_jax.training.pair_steps import make_pair_apply_step, pair_mask
from georecon_jax.training.state import is_primary, param_count, shard_batch
from georecon_jax.training.transfer import ConfigCheck, check_config, read_pretrained, transfer_subtrees

log = logging.getLogger(__name__)


# The reference's fine-tuning recipe by task (Namkyeong/3DMRL MI/scripts/downstream.sh and
# DDI/scripts/downstream.sh with MI/utils/argument.py, DDI/utils/argument.py): batch size and Adam
# learning rate; a config's batch_size / optim.learning_rate, when set, win.
RECIPES = {
    "solvation": dict(batch_size=256, learning_rate=1e-3),
    "small_solvation": dict(batch_size=32, learning_rate=1e-3),  # FreeSolv, MNSol
    "chromophore": dict(batch_size=256, learning_rate=5e-3),
    "ddi": dict(batch_size=128, learning_rate=5e-4),
}
PRESET_RECIPES = {
    "freesolv": "small_solvation",
    "mnsol": "small_solvation",
    "abraham": "solvation",
    "compsol": "solvation",
    "combisolv": "solvation",
    "absorption": "chromophore",
    "emission": "chromophore",
    "lifetime": "chromophore",
    "chchminer": "ddi",
    "zhangddi": "ddi",
}


def task_type(config) -> str:
    """'regression' or 'classification': ``data.task`` when set, else the preset's."""
    from georecon_jax.data.pairs import preset_spec

    return config.data.task or preset_spec(config.data.preset)["task"]


def recipe_name(config) -> str:
    """The `RECIPES` entry of a config: its preset's, or for a user file its task type's
    (regression: solvation's, classification: DDI's)."""
    preset = config.data.get("preset") or ""
    if preset in PRESET_RECIPES and not config.data.get("files"):
        return PRESET_RECIPES[preset]
    return "ddi" if task_type(config) == "classification" else "solvation"


def resolve_recipe(config):
    """The config with the fields left None filled from the task's recipe: ``batch_size``,
    ``optim.learning_rate`` and ``optim.plateau_mode`` ('min' on the validation MSE for
    regression, 'max' on the validation ROC-AUC for classification, as the reference)."""
    from georecon_jax.tasks.pair_data import resolve_explicit_h

    config = ml_collections.ConfigDict(config.to_dict())  # resolved copy; placeholders become values
    recipe = RECIPES[recipe_name(config)]
    with config.unlocked():
        # recorded as True/False in config.json: a resumed run compares the graphs it built
        config.data.explicit_h = resolve_explicit_h(config.data)
        if config.get("batch_size") is None:
            config.batch_size = recipe["batch_size"]
        if config.optim.get("learning_rate") is None:
            config.optim.learning_rate = recipe["learning_rate"]
        if "schedule" in config.optim and config.optim.get("plateau_mode") is None:
            config.optim.plateau_mode = "max" if task_type(config) == "classification" else "min"
    return config


def early_stopping_patience(config) -> int:
    """The reference's ``--es E`` stops when the best validation value equals the one E-1
    evaluations earlier (``best_val_losses[-1] == best_val_losses[-E]``, checked once more than E
    evaluations exist): E-1 evaluations without an improvement, and more than E evaluations
    (`BestCheckpoint`'s ``min_evaluations`` = E). 0: no early stopping."""
    es = int(config["early_stopping"])
    return max(es - 1, 1) if es > 0 else 0


def load_pretrained(path: str, config):
    """A 3DMRL checkpoint, read once, whose relational model settings agree with the fine-tuning
    config; each split copies its ``relational`` subtree. Hydrogens need not agree: the reference
    pretrains with explicit hydrogens and fine-tunes chromophores without them (the 2D model's
    weights apply to any graph)."""
    pre = read_pretrained(path)
    check_config(
        pre,
        [
            ConfigCheck(
                "model.relational",
                config.model,
                hint="the fine-tuning model's relational sizes must be the pretraining's",
            ),
        ],
    )
    log.info("2D relational model initialised from %s (step %d)", path, pre.step)
    return pre


def evaluation_budget(ds: PairDataset, budget: PairBudget, data_cfg) -> PairBudget:
    """The padding of validation and test batches. ``data.keep_eval_pairs`` (default True, as the
    reference, which drops no pair): the largest molecule of each side, uncapped, so that no
    validation or test pair is left out (a second compiled shape, for evaluation only); False: the
    training budget, dropping (and counting) pairs over ``data.max_atoms``."""
    return PairBudget.from_dataset(ds) if data_cfg.keep_eval_pairs else budget


class PairSplitTask:
    """One split of a pair task, as a run of the experiment runner."""

    compare_sections = ("model", "data", "optim")

    def __init__(self, ds: PairDataset, budget: PairBudget, split, pretrained=None, eval_budget=None):
        self.ds, self.budget, self.split, self.pretrained = ds, budget, split, pretrained
        self.eval_budget = eval_budget or budget  # validation and test batches (`evaluation_budget`)

    def validate(self, config):
        return [] if config.num_epochs > 0 else [f"num_epochs={config.num_epochs}: must be positive"]

    def build(self, config, workdir, mesh, key) -> runner.Job:
        name, tr, va, te = self.split
        ds, num_devices = self.ds, mesh.devices.size
        task = self.task = ds.task
        if task == "regression" and config.data.standardize_targets:
            # targets standardised with the training split's statistics (not the reference's)
            mean, std = ds.labels[tr].mean(0), ds.labels[tr].std(0) + 1e-8
        else:
            mean, std = np.zeros(ds.labels.shape[1]), np.ones(ds.labels.shape[1])
        mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        seed = config.seed + zlib.crc32(name.encode()) % 1000
        key = jax.random.PRNGKey(seed)
        train = PairBatcher(ds, tr, config.batch_size, self.budget, num_devices=num_devices, seed=seed)
        self.batchers = {
            "train": train,
            **{
                k: PairBatcher(
                    ds,
                    idx,
                    config.eval_batch_size,
                    self.eval_budget,
                    num_devices=num_devices,
                    shuffle=False,
                    drop_remainder=False,
                )
                for k, idx in (("validation", va), ("test", te))
            },
        }
        m = config.model
        model = PairPredictor(
            m.features,
            m.num_steps,
            m.set2set_steps,
            tuple(m.head_hidden),
            ds.labels.shape[1],
            m.dropout,
            m.architecture,
        )
        params = jax.jit(model.init)(key, jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), train.batch(0)))
        if self.pretrained is not None:
            params, _ = transfer_subtrees(
                params, self.pretrained, [("params/relational", "params/relational", True)]
            )
        self.num_parameters = param_count(params)

        def loss_fn(p, batch, k):
            out = model.apply(p, batch, deterministic=False, rngs={"dropout": k})
            ok = jnp.isfinite(batch.labels)
            y = jnp.where(ok, batch.labels, 0.0)
            if task == "regression":
                err = (out - (y - mean) / std) ** 2
            else:
                err = optax.sigmoid_binary_cross_entropy(out, y)
            return jnp.sum(jnp.where(ok, err, 0.0), -1) / jnp.maximum(jnp.sum(ok, -1), 1), {}

        def predict(p, batch, _k):
            out = model.apply(p, batch, deterministic=True)
            return dict(
                pred=out * std + mean if task == "regression" else out,
                label=batch.labels,
                mask=batch.pair_mask,
            )

        predict_step = make_pair_apply_step(predict, mesh)

        def predictions(params, batcher):
            """(labels, predictions) [n, n_labels] of the batcher's pairs, in its order."""
            outs = [
                jax.device_get(predict_step(params, shard_batch(b, mesh), key))
                for b in batcher.epoch_batches()
            ]
            real = np.concatenate([o["mask"] for o in outs]).reshape(-1)
            y = np.concatenate([o["label"] for o in outs]).reshape(len(real), -1)[real]
            p = np.concatenate([o["pred"] for o in outs]).reshape(len(real), -1)[real]
            if len(y) != len(batcher.indices):
                raise RuntimeError(f"{len(y)} predictions for {len(batcher.indices)} pairs")
            return y, p

        self.predictions = predictions

        def evaluate(params, batcher) -> Dict[str, float]:
            y, p = predictions(params, batcher)
            if task == "regression":
                m = regression_metrics(y, p)
                return dict(m, mse=m["rmse"] ** 2)  # the reference's plateau and selection value
            return classification_metrics(y, p)

        self.evaluate = evaluate
        self.select = "rmse" if task == "regression" else "roc_auc"
        # DDI as the reference (DDI/models_2d/CIGIN.py, DDI/embedder.py): ROC-AUC and AP reported at
        # the best validation ROC-AUC, accuracy and F1 at the best validation accuracy (its own
        # checkpoint in best_accuracy/), early stopping once both have stalled
        self.best_accuracy = None
        if task == "classification" and config.ddi_reporting == "reference":
            self.best_accuracy = runner.BestCheckpoint(
                os.path.join(workdir, "best_accuracy"), "accuracy", "max"
            )
        best = self.best = runner.BestCheckpoint(
            workdir,
            self.select,
            "min" if task == "regression" else "max",
            patience=early_stopping_patience(config),
            min_evaluations=int(config.early_stopping),
            also=self.best_accuracy,
        )
        hooks = (best,) if self.best_accuracy is None else (self.best_accuracy, best)
        epoch = train.steps_per_epoch  # one evaluation, checkpoint and log line per epoch
        return runner.Job(
            params=params,
            apply_fn=model.apply,
            loss_fn=loss_fn,
            train_batch=train.batch,
            num_steps=config.num_epochs * epoch,
            eval_fn=lambda state, step: evaluate(state.params, self.batchers["validation"]),
            on_eval=hooks,
            done=best.stopped,
            closers=hooks,
            plateau_metric="mse" if task == "regression" else "roc_auc",
            mask_fn=pair_mask,
            fold_in_device=True,
            count_name="num_pairs",
            desc=f"{self.ds.name} {name}",
            eval_every=epoch,
            checkpoint_every=epoch,
            log_every=epoch,
        )

    def finish(self, config, workdir, job, state) -> Dict:
        if not os.path.isdir(os.path.join(workdir, "best", "checkpoints")):
            # stopped (SIGTERM) before the first epoch's evaluation: nothing to test yet; the
            # summary says so (test None) and a rerun resumes
            return {"split": self.split[0], "test": None}
        step, raw = restore_params(os.path.join(workdir, "best"))
        params = jax.tree_util.tree_map(jnp.asarray, raw["params"])
        test = self.evaluate(params, self.batchers["test"])
        if self.best_accuracy is not None and os.path.isdir(os.path.join(workdir, "best_accuracy", "best")):
            acc_step, acc_raw = restore_params(os.path.join(workdir, "best_accuracy", "best"))
            at_acc = self.evaluate(
                jax.tree_util.tree_map(jnp.asarray, acc_raw["params"]), self.batchers["test"]
            )
            test = dict(test, accuracy=at_acc["accuracy"], f1=at_acc["f1"])
        else:
            acc_step = None
        b = self.batchers
        # per-pair test predictions of the best epoch (the studies' paired comparisons), by the
        # pair's file:row; classification: logits
        y, p = self.predictions(params, b["test"])
        if is_primary():
            np.savez(
                os.path.join(workdir, "predictions_test.npz"),
                rows=self.ds.rows[b["test"].indices].astype(str),
                label=y,
                pred=p,
            )
        return {
            "split": self.split[0],
            "n_train": int(len(b["train"].indices)),
            "n_validation": int(len(b["validation"].indices)),
            "n_test": int(len(b["test"].indices)),
            "dropped_over_budget": int(sum(x.num_dropped for x in b.values())),
            "dropped_test_pairs": int(b["test"].num_dropped),
            "best_epoch": int(step // b["train"].steps_per_epoch),
            "early_stopped": bool(self.best.stopped),
            "best_step": int(step),
            "best_accuracy_step": None if acc_step is None else int(acc_step),
            "validation": _read_validation(workdir, step),
            "test": test,
            "num_parameters": self.num_parameters,
            "selected_by": f"validation {self.select}",
        }


def _read_validation(workdir, step):
    """The validation metrics logged at ``step``."""
    rows = [r for r in read_metrics(workdir, "validation") if r["step"] == step]
    return {k: v for k, v in rows[-1].items() if k not in ("step", "split", "time")} if rows else None


def split_finished(split_dir: str) -> bool:
    """Whether a split's run ended and reported (its summary.json holds test metrics for all steps)."""
    path = os.path.join(split_dir, "summary.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        s = json.load(f)
    ended = s.get("steps") == s.get("num_steps") or s.get("early_stopped") or s.get("stopped_by_hook")
    return s.get("test") is not None and bool(ended)


def summarise(rows: List[Dict]) -> Dict[str, Tuple[float, float]]:
    keys = rows[0]["test"].keys()
    return {
        k: (float(np.mean([r["test"][k] for r in rows])), float(np.std([r["test"][k] for r in rows])))
        for k in keys
    }


def results_markdown(result: Dict) -> str:
    summary, rows = result["test_mean_std"], result["splits"]
    unit = f" ({result['units']})" if result["task_type"] == "regression" else ""
    lines = [
        f"# {result['task']}: {result['split']} split, from {result['init']}",
        "",
        f"{result['num_pairs']} pairs, {len(rows)} split(s), at most {result['num_epochs']} epochs "
        f"(early stopping {result.get('early_stopping') or 'off'}), batch {result['batch_size']}, "
        f"lr {result.get('learning_rate')}; test metrics of the best-validation epoch, mean ± std "
        f"over splits{unit}.",
        "",
        "| metric | mean | std |",
        "|---|---:|---:|",
    ]
    lines += [f"| {k} | {m:.4f} | {s:.4f} |" for k, (m, s) in summary.items()]
    lines += [
        "",
        "| split | n_train | n_val | n_test | best epoch | " + " | ".join(summary) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(summary),
    ]
    lines += [
        f"| {r['split']} | {r['n_train']} | {r['n_validation']} | {r['n_test']} | {r['best_epoch']} | "
        + " | ".join(f"{r['test'][k]:.4f}" for k in summary)
        + " |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict:
    """Fine-tunes every split (resuming where a previous run stopped); returns the results."""
    from georecon_jax.training.state import initialize_distributed

    if initialize_distributed():
        raise RuntimeError(
            f"pair fine-tuning runs on one host (this launch has {jax.process_count()} processes): "
            "its splits are small, and its multi-host path has not been written or tested; start it "
            "without JAX_COORDINATOR_ADDRESS / GEORECON_MULTIHOST"
        )
    config = resolve_recipe(config)
    # the data first: pairs that cannot be fine-tuned on (a DataError) leave no workdir behind
    d = config.data
    ds = load_pair_task(config)
    budget = PairBudget.from_dataset(ds, max_atoms=d.max_atoms)
    eval_budget = evaluation_budget(ds, budget, d)
    splits = make_splits(ds, config)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        record_config(
            config,
            workdir,
            compare_sections=("model", "data"),
            allow_change=config.allow_config_change,
        )
        if ds.task == "classification" and config.model.get("architecture") != "reference_ddi":
            log.warning(
                "the reference fine-tunes DDI with its DDI model (one GINE encoder for both drugs, 300 "
                "features, a linear predictor): --config=experiments/configs/mrl_finetune.py:+ddi; "
                "this run uses model.architecture=%s",
                config.model.get("architecture"),
            )
        pretrained = load_pretrained(config.init_from, config) if config.init_from else None
        origin = f"3DMRL checkpoint {config.init_from}" if config.init_from else "scratch"
        log.info(
            "%s: %d pairs (%s, %s), %d split(s) '%s', from %s; budget side 1 (%d atoms), side 2 (%d atoms)",
            ds.name,
            len(ds),
            ds.task,
            ds.units,
            len(splits),
            split_kind(ds, config),
            origin,
            budget.n_node1,
            budget.n_node2,
        )
        t0, rows = time.time(), []
        for split in splits:
            split_dir = os.path.join(workdir, "splits", split[0])
            if split_finished(split_dir):
                with open(os.path.join(split_dir, "summary.json")) as f:
                    rows.append(json.load(f))
                log.info("%s: finished before, not run again", split_dir)
                continue
            rows.append(
                runner.run_experiment(
                    PairSplitTask(ds, budget, split, pretrained, eval_budget), config, split_dir
                )
            )
            if not split_finished(split_dir):  # stopped (SIGTERM): checkpointed; a rerun resumes
                log.warning(
                    "%s stopped at step %s of %s; not starting further splits (run the same "
                    "command again to resume)",
                    split_dir,
                    rows[-1].get("steps"),
                    rows[-1].get("num_steps"),
                )
                return {"interrupted": split[0], "splits": rows}
        result = {
            "task": ds.name,
            "units": ds.units,
            "task_type": ds.task,
            "split": split_kind(ds, config),
            "init": origin,
            "num_pairs": len(ds),
            "skipped_rows": ds.skip.count if ds.skip else 0,
            "num_epochs": config.num_epochs,
            "batch_size": config.batch_size,
            "learning_rate": config.optim.learning_rate,
            "early_stopping": config.early_stopping,
            "test_mean_std": summarise(rows),
            "splits": rows,
            "wall_seconds_this_run": time.time() - t0,
        }
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(result, f, indent=1)
        text = results_markdown(result)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(text)
        log.info("%s", text)
        return result
