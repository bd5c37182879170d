"""3DMRL pretraining on pairs of molecules: pair CSVs -> cached conformers -> padded pair batches
-> (2D relational model, virtual environment + 3D encoder, force head) -> InfoNCE + α·force.

``run(config, workdir)`` is what ``python -m experiments.pretrain --config=experiments/configs/mrl3d.py``
calls (``objective.name = '3dmrl'``); running it again on the same workdir resumes. Pair batches are
two GraphsTuples plus a pair mask: the runner's step averages per-pair losses over the real pairs of
every device and folds the device index into the key (environments differ per device).
"""

from __future__ import annotations

import logging
from typing import Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from georecon_jax.graphs.pairs import PairBatcher, PairBudget
from georecon_jax.objectives.registry import get_objective
from georecon_jax.tasks.pair_data import load_pretraining_pairs
from georecon_jax.training import runner
from georecon_jax.training.loop import first_and_last
from georecon_jax.training.pair_steps import pair_mask
from georecon_jax.training.state import param_count
from georecon_jax.training.transfer import load_3d_encoder

log = logging.getLogger(__name__)


def pretraining_steps(config, num_train_pairs: int) -> int:
    """The run's length: ``num_epochs`` epochs of the training pairs (rounded up to whole
    batches) when ``num_epochs`` is set, else ``num_steps``."""
    epochs = config.get("num_epochs")
    if not epochs:
        return int(config.num_steps)
    return max(1, -(-int(epochs) * num_train_pairs // config.batch_size))


class MRL3DTask:
    """The runner's task for 3DMRL pretraining; ``objective``: the run's, built once on its config."""

    compare_sections = ("model", "environment", "objective", "data")

    def __init__(self, objective):
        self.objective = objective

    def validate(self, config):
        return self.objective.validate()

    def build(self, config, workdir, mesh, key) -> runner.Job:
        num_devices = mesh.devices.size
        ds = load_pretraining_pairs(config.data)
        budget = PairBudget.from_dataset(ds, max_atoms=config.data.max_atoms)
        order = np.random.default_rng(config.data.split_seed).permutation(len(ds))
        n_val = min(config.data.num_eval_pairs, len(ds) // 10)
        train = PairBatcher(
            ds, order[n_val:], config.batch_size, budget, num_devices=num_devices, seed=config.seed
        )
        val = PairBatcher(
            ds,
            order[:n_val],
            config.batch_size,
            budget,
            num_devices=num_devices,
            shuffle=False,
            drop_remainder=False,
        )
        self.train_pairs = len(train.indices)
        log.info(
            "%d training pairs (%d over the %d-atom cap left out), %d validation pairs, %d molecules; "
            "budget per molecule (atoms, bonds): side 1 (%d, %d), side 2 (%d, %d); environment %s "
            "atom slots; batch %d over %d device(s)",
            len(train.indices),
            train.num_dropped,
            config.data.max_atoms,
            len(val.indices),
            len(ds.molecules),
            budget.n_node1,
            budget.n_edge1,
            budget.n_node2,
            budget.n_edge2,
            config.environment.get("max_atoms")
            or budget.n_node1 + config.environment.num_copies * budget.n_node2,
            config.batch_size,
            num_devices,
        )
        num_steps = self.num_steps = pretraining_steps(config, len(train.indices))
        log.info(
            "length: %d steps x %d pairs = %.2f epochs of the %d training pairs (%s; the "
            "reference: 100 epochs of its 20 %% subset of all solute x solvent combinations)",
            num_steps,
            config.batch_size,
            num_steps * config.batch_size / max(len(train.indices), 1),
            len(train.indices),
            f"num_epochs={config.num_epochs}" if config.get("num_epochs") else "num_steps",
        )
        objective = self.objective
        model = objective.create_model()
        params = objective.init(
            model, jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), train.batch(0)), key
        )
        init_from = config.model.encoder3d.get("init_from")
        if init_from:
            params = load_3d_encoder(params, init_from, config.model.encoder3d.name)
        sub = params["params"]
        log.info(
            "model: %s parameters (2D relational %s, 3D encoder %s, force head %s)",
            f"{param_count(params):,}",
            f"{param_count(sub['relational']):,}",
            f"{param_count(sub['encoder3d']):,}",
            f"{param_count(sub['force_head']):,}",
        )
        loss_fn = objective.loss_fn(model)
        eval_fn = (
            runner.loss_evaluator(
                loss_fn,
                mesh,
                val.epoch_batches,
                jax.random.fold_in(key, 2),
                mask_fn=pair_mask,
                fold_in_device=True,
            )
            if len(val.indices)
            else None
        )
        return runner.Job(
            params=params,
            apply_fn=model.apply,
            loss_fn=loss_fn,
            train_batch=train.batch,
            num_steps=num_steps,
            eval_fn=eval_fn,
            mask_fn=pair_mask,
            fold_in_device=True,
            count_name="num_pairs",
            desc="pretrain 3dmrl",
            frozen=objective.frozen_modules(),
        )

    def finish(self, config, workdir, job, state) -> Dict:
        summary = {"objective": "3dmrl", "train_pairs": int(self.train_pairs)}
        for key in ("contrastive", "force_mse"):
            first, last = first_and_last(workdir, key)
            summary[f"first_train_{key}"], summary[f"final_train_{key}"] = first, last
        if job.eval_fn is not None:
            summary["validation"] = first_and_last(workdir, "loss", "validation")
        return summary


def run(config: ml_collections.ConfigDict, workdir: str, stop_after=None, objective=None) -> Dict:
    """Pretrains (or resumes) 3DMRL in ``workdir``; returns the summary. ``objective``: the run's
    (`objectives.registry.get_objective` of ``config``), built here when not given; it reads the
    model, environment and objective sections, not the data fields resolved below."""
    from georecon_jax.tasks.pair_data import resolve_explicit_h

    objective = objective or get_objective(config)
    config = ml_collections.ConfigDict(config.to_dict())
    with config.unlocked():  # recorded as True/False (None: explicit, as the reference pretrains)
        config.data.explicit_h = resolve_explicit_h(config.data, pretraining=True)
    return runner.run_experiment(MRL3DTask(objective), config, workdir, stop_after=stop_after)
