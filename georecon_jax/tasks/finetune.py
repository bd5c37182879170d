"""Fine-tuning on a molecular property (QM9) or on energies and forces (MD17 family).

``run(config, workdir)`` is what ``python -m experiments.finetune`` calls; running it again on the
same workdir resumes. Besides the runner's ``checkpoints/``, ``metrics.jsonl``, ``config.json`` and
``summary.json`` it writes into the workdir:

  target_stats.json        per-element references / energy offset and the target mean and std
                           (evaluation reuses them, so it never refits anything)
  best/checkpoints/<step>  the state with the best validation metric; best.json names its step
  early_stopped.json       when early stopping ended the run (a rerun does not train further)
  learning_curves.png      training loss and validation MAE against step
  results.json, results.md, parity plots   with ``evaluate_at_end`` (`tasks.evaluation`)
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

import jax
import ml_collections

from georecon_jax import plots
from georecon_jax.models.graph import real_graph_mask
from georecon_jax.models.pretrain import encoder_problems
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.noise import NOISE_NORMALISER_FILE, NoiseNormaliser
from georecon_jax.objectives.supervised import LOSSES, denoise_normaliser, init_params, make_loss_fn
from georecon_jax.tasks import evaluation
from georecon_jax.tasks.property_data import (
    denoise_neighbor_list_problems,
    load_workdir_task_data,
    make_batchers,
    resolve_config,
    run_label,
)
from georecon_jax.training import runner
from georecon_jax.training.loop import read_metrics
from georecon_jax.training.state import is_primary, param_count
from georecon_jax.training.transfer import load_pretrained_encoder, run_file

log = logging.getLogger(__name__)


def selection_metric(config) -> str:
    """The validation metric that picks the best checkpoint and drives early stopping:
    ``config.select_on`` ('loss', the reference's val_loss, the default; 'mae' for QM9)."""
    metric = config.select_on
    if metric not in ("loss", "mae") or (metric == "mae" and config.task != "qm9"):
        raise ValueError(f"select_on={metric!r}: use 'loss' (or 'mae' for QM9)")
    return metric


def learning_curve_panels(config, unit: str) -> dict:
    if config.task == "qm9":
        return {
            "loss": (("train", "loss", "train loss"), ("validation", "loss", "validation loss")),
            f"{config.target} MAE ({unit})": (("train", "mae", "train"), ("validation", "mae", "validation")),
        }
    return {
        "loss": (("train", "loss", "train"), ("validation", "loss", "validation")),
        f"energy MAE ({unit})": (
            ("train", "energy_mae", "train"),
            ("validation", "energy_mae", "validation"),
        ),
        f"force MAE ({unit}/Å)": (("train", "force_mae", "train"), ("validation", "force_mae", "validation")),
    }


def read_noise_normaliser(pretrained: str) -> Optional[NoiseNormaliser]:
    """The pretraining run's `NoiseNormaliser` (its ``noise_normaliser.json``), or None with a
    warning when the run has none (then the regulariser's std is σ)."""
    path = run_file(pretrained, NOISE_NORMALISER_FILE)
    if path is None:
        log.warning(
            "%s has no %s (a run from before 2026-12, or an objective without a node-noise head): the "
            "denoising regulariser's target is ε (std = σ)",
            pretrained,
            NOISE_NORMALISER_FILE,
        )
        return None
    with open(path) as f:
        try:
            return NoiseNormaliser.from_json(json.load(f))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a noise normaliser ({e})") from e


class FinetuneTask:
    compare_sections = ("model", "loss", "data")

    def validate(self, config):
        problems = encoder_problems(config.model.encoder)
        if config.loss.name not in LOSSES:
            problems.append(f"loss.name={config.loss.name!r}: use one of {LOSSES}")
        # a radius list (built from clean positions) must cover the regulariser's noise
        return problems + denoise_neighbor_list_problems(config)

    def build(self, config, workdir, mesh, key) -> runner.Job:
        config = resolve_config(config)
        self.config = config
        num_devices = mesh.devices.size
        self.data = data = load_workdir_task_data(config, workdir)
        batchers = make_batchers(config, data, num_devices)
        train, val = batchers["train"], batchers["validation"]
        log.info(
            "%s %s: %d training / %d validation / %d test molecules; target mean %.4g %s, std %.4g %s "
            "(after references); batch %d over %d device(s)",
            config.task,
            config.target,
            len(train.indices),
            len(val.indices),
            len(batchers["test"].indices),
            data.stats.mean,
            data.unit,
            data.stats.std,
            data.unit,
            config.batch_size,
            num_devices,
        )
        model = create_property_model(config.model)
        graph = jax.tree_util.tree_map(lambda x: x[0], train.batch(0))
        params = init_params(model, graph, key, with_denoise=config.loss.denoise_weight > 0)
        self.pretrained = None
        self.normaliser = normaliser = None
        if config.get("pretrained"):
            params, self.pretrained = load_pretrained_encoder(params, config.pretrained, config.model.encoder)
            normaliser = read_noise_normaliser(config.pretrained)
        if config.loss.denoise_weight > 0:
            self.normaliser = normaliser = denoise_normaliser(config.loss, normaliser)
            log.info(
                "denoising regulariser: σ = %g Å, target (d - %s) / %s Å (%s)",
                config.loss.denoise_sigma,
                [round(v, 5) for v in normaliser.mean],
                [round(v, 5) for v in normaliser.std],
                normaliser.source,
            )
        log.info(
            "model: %s parameters (encoder %s); %s",
            f"{param_count(params):,}",
            f"{param_count(params['params']['encoder']):,}",
            "pretrained" if self.pretrained else "from scratch",
        )
        es = config.early_stopping
        best = runner.BestCheckpoint(workdir, selection_metric(config), "min", es.patience, es.min_delta)
        eval_loss = make_loss_fn(model, config, data.stats, train=False)
        return runner.Job(
            params=params,
            apply_fn=model.apply,
            loss_fn=make_loss_fn(model, config, data.stats, train=True, noise_normaliser=normaliser),
            train_batch=train.batch,
            num_steps=config.num_steps,
            mask_fn=real_graph_mask,  # right in both batch layouts (pairs, dense)
            eval_fn=runner.loss_evaluator(eval_loss, mesh, val.epoch_batches, jax.random.fold_in(key, 2)),
            on_eval=(best,),
            done=best.stopped,
            closers=(best,),
            desc=f"finetune {config.task} {config.target}",
        )

    def finish(self, config, workdir, job, state) -> Dict:
        config, data = self.config, self.data
        best = job.closers[0].best
        if is_primary():
            plots.learning_curves(
                read_metrics(workdir),
                os.path.join(workdir, "learning_curves.png"),
                learning_curve_panels(config, data.unit),
                title=f"fine-tuning {config.task} {run_label(config)}",
            )
        val = read_metrics(workdir, "validation")
        summary = {
            "task": config.task,
            "target": config.target,
            "unit": data.unit,
            "best_step": best["step"],
            f"best_validation_{best['metric']}": best["value"],
            "final_validation": val[-1] if val else None,
            "pretrained": self.pretrained,
            "denoise_normaliser": self.normaliser.to_json() if self.normaliser else None,
            "num_train_labels": data.saved["num_train_labels"],
        }
        if config.task == "md17":
            summary["force_unit"] = f"{data.unit}/Å"
        if config.evaluate_at_end:
            summary["test"] = evaluation.evaluate(workdir, checkpoint="best")["metrics"]
        return summary


def run(config: ml_collections.ConfigDict, workdir: str, stop_after=None) -> Dict:
    """Fine-tunes (or resumes) in ``workdir``; returns the summary."""
    return runner.run_experiment(FinetuneTask(), config, workdir, stop_after=stop_after)
