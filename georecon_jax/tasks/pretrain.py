"""Pretraining on molecular graphs (GeoRecon, Coord, or any registered objective) over QM9.

``run(config, workdir)`` is what ``python -m experiments.pretrain`` calls for graph objectives;
running it again on the same workdir resumes. The objective (``config.objective.name``, see
``georecon_jax.objectives.registry``) supplies its heads, its loss and its end-of-run report;
this module supplies the data, the batches and the plots.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict

import jax
import ml_collections

from georecon_jax.data.qm9 import load_qm9
from georecon_jax.graphs.batching import GraphBatcher, micro_batches_for, training_layout
from georecon_jax.models.graph import real_graph_mask
from georecon_jax.models.pretrain import create_model, encoder_problems
from georecon_jax.objectives.noise import NOISE_NORMALISER_FILE
from georecon_jax.objectives.registry import get_objective
from georecon_jax.plots import learning_curves, z_diagnostic_plot
from georecon_jax.training import runner
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.loop import read_metrics
from georecon_jax.training.optimizer import create_optimizer
from georecon_jax.training.state import create_train_state, is_primary, param_count, replicate

log = logging.getLogger(__name__)


def load_dataset(cfg: ml_collections.ConfigDict):
    """(molecules, splits) of the pretraining data set (``data`` section): QM9, or the 3D
    structures of an SDF file (``dataset='sdf'``, ``sdf_path``; e.g. PCQM4Mv2, data_prep/pcqm4mv2.py)."""
    if cfg.dataset == "sdf":
        from georecon_jax.data.sdf import load_sdf

        return load_sdf(
            cfg.get("sdf_path"),
            cache_dir=cfg.get("cache_dir"),
            limit=cfg.get("limit"),
            split_seed=cfg.split_seed,
            validation_fraction=cfg.validation_fraction,
            strict=cfg.strict,
            chunk_size=cfg.store_chunk_size,
        )
    if cfg.dataset != "qm9":
        raise ValueError(f"unknown pretraining dataset {cfg.dataset!r}: use 'qm9' or 'sdf'")
    return load_qm9(
        cache_dir=cfg.get("cache_dir"),
        source_dir=cfg.get("source_dir"),
        limit=cfg.get("limit"),
        split_seed=cfg.split_seed,
        strict=cfg.strict,
    )


def micro_batches(config, num_devices: int) -> int:
    """Sequential micro-batches per device and step (config.micro_batches; 0: automatic)."""
    if config.batch_size % num_devices:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {num_devices} devices")
    return micro_batches_for(config.batch_size // num_devices, config.micro_batches, jax.default_backend())


def make_batchers(config, molecules, splits, num_devices: int):
    """Training and validation batchers; their leading axis is devices × micro-batches."""
    d, g = config.data, config.graph
    common = dict(
        num_devices=num_devices * micro_batches(config, num_devices),
        neighbor_list=g.neighbor_list,
        cutoff=config.model.encoder.cutoff,
        skin=g.skin,
        num_buckets=g.num_buckets,
        seed=config.seed,
    )
    layout = training_layout(g, int(molecules.n_atoms[splits["train"]].max()))
    train = GraphBatcher(molecules, splits["train"], config.batch_size, shuffle=True, layout=layout, **common)
    log.info("training batches: %s (graph.layout=%s)", train.describe_layout(), g.layout)
    val_idx = splits["validation"][: d.num_eval_molecules]
    val = GraphBatcher(
        molecules,
        val_idx,
        config.batch_size,
        shuffle=False,
        drop_remainder=False,
        budgets=train.budgets,
        **{k: v for k, v in common.items() if k != "num_buckets"},
    )
    return train, val


def first_graph(batcher: GraphBatcher):
    """Batch 0's first (micro-)sub-batch, as one device sees it: for initialisation."""
    return jax.tree_util.tree_map(lambda x: x[0], batcher.batch(0))


def init_model(objective, batcher, key):
    """(model, params) of a pretraining run's ``objective`` (`get_objective` of its config),
    initialised on the batcher's shapes."""
    model = create_model(objective.config.model, objective.heads())
    return model, objective.init(model, first_graph(batcher), key)


def fresh_train_step(config, batcher, mesh, key, params=None, trace_counter=None):
    """A new model, train state and compiled-on-use train step for one batch layout (no
    checkpoint): what the benchmark and the layout tests compare. ``params`` replaces the fresh
    initialisation (the same start on two layouts); ``trace_counter`` (a list) gets one entry per
    trace of the step. Returns (model, state, train_step)."""
    objective = get_objective(config)
    model, p0 = init_model(objective, batcher, key)
    tx = create_optimizer(config.optim, config.num_steps)
    state = replicate(create_train_state(model.apply, p0 if params is None else params, tx, False), mesh)
    step = steps_lib.make_train_step(
        objective.loss_fn(model), mesh, jax.random.fold_in(key, 1), 0.0, trace_counter, real_graph_mask
    )
    return model, state, step


def write_noise_normaliser(workdir: str, normaliser) -> None:
    """``noise_normaliser.json`` (atomically): what fine-tuning's denoising regulariser divides its
    displacements by (objectives.noise.NoiseNormaliser); nothing when the objective has none."""
    if normaliser is None:
        return
    path = os.path.join(workdir, NOISE_NORMALISER_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(normaliser.to_json(), f, indent=1)
    os.replace(path + ".tmp", path)


class PretrainTask:
    """The runner's task for pretraining on molecular graphs; ``objective``: the run's, built once
    on its config (`get_objective`)."""

    compare_sections = ("model", "objective")

    def __init__(self, objective):
        self.objective = objective

    def validate(self, config):
        return encoder_problems(config.model.encoder) + self.objective.problems()

    def build(self, config, workdir, mesh, key) -> runner.Job:
        num_devices = mesh.devices.size
        self.molecules, self.splits = load_dataset(config.data)
        self.train, val = make_batchers(config, self.molecules, self.splits, num_devices)
        log.info(
            "%d training molecules, batch %d over %d device(s) x %d micro-batch(es); budgets "
            "(nodes, edges per micro-batch): %s",
            len(self.splits["train"]),
            config.batch_size,
            num_devices,
            micro_batches(config, num_devices),
            [(b.n_node, b.n_edge) for b in self.train.budgets],
        )
        self.model, params = init_model(self.objective, self.train, key)
        if is_primary():
            write_noise_normaliser(workdir, self.objective.noise_normaliser())
        log.info(
            "model: %s parameters (encoder %s)",
            f"{param_count(params):,}",
            f"{param_count(params['params']['encoder']):,}",
        )
        loss_fn = self.objective.loss_fn(self.model)
        return runner.Job(
            params=params,
            apply_fn=self.model.apply,
            loss_fn=loss_fn,
            train_batch=self.train.batch,
            num_steps=config.num_steps,
            mask_fn=real_graph_mask,  # right in both batch layouts (pairs, dense)
            eval_fn=runner.loss_evaluator(loss_fn, mesh, val.epoch_batches, jax.random.fold_in(key, 2)),
            desc=f"pretrain {config.objective.name}",
        )

    def finish(self, config, workdir, job, state) -> Dict:
        if is_primary():
            learning_curves(
                read_metrics(workdir),
                os.path.join(workdir, "learning_curves.png"),
                dict(self.objective.curves) or {"loss": (("train", "loss", "train"),)},
                title=f"{config.objective.name} pretraining on QM9",
            )
        summary = {"objective": config.objective.name}
        n = config.objective.num_recon_molecules
        if n:
            params = jax.device_get(runner.params_for_eval(state))
            # All pairs, whatever graph.neighbor_list says: the report samples from pure noise (and
            # perturbs by up to 2 Å), where a radius list of the clean positions would leak them.
            all_pairs = config.graph.neighbor_list == "all_pairs"
            held_out = GraphBatcher(
                self.molecules,
                self.splits["validation"][:n],
                self.train.per_device,
                num_devices=1,  # on this host's first device (every host computes the report)
                process_index=0,
                process_count=1,
                shuffle=False,
                drop_remainder=False,
                neighbor_list="all_pairs",
                cutoff=config.model.encoder.cutoff,
                budgets=self.train.budgets if all_pairs else None,
            )
            graphs = (jax.tree_util.tree_map(lambda x: x[0], b) for b in held_out.epoch_batches())
            summary.update(self.objective.report(self.model, params, graphs))
        if "z_diagnostic" in summary and is_primary():
            z_diagnostic_plot(
                summary["z_diagnostic"],
                os.path.join(workdir, "z_diagnostic.png"),
                title=f"{config.objective.name}: does the decoder use the graph code z?",
            )
        return summary


def run(config: ml_collections.ConfigDict, workdir: str, stop_after=None, objective=None) -> Dict:
    """Pretrains (or resumes) in ``workdir``; returns the summary (see `training.runner`).
    ``objective``: the run's (`get_objective` of ``config``), built here when not given."""
    task = PretrainTask(objective or get_objective(config))
    return runner.run_experiment(task, config, workdir, stop_after=stop_after)
