"""Pretraining, wired end to end: QM9 -> padded graphs -> model -> objective -> training loop.

`run(config, workdir)` is what ``python -m experiments.pretrain`` calls. Running it again on the
same workdir resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from georecon_jax.data.qm9 import load_qm9
from georecon_jax.graphs.batching import GraphBatcher, micro_batches_for
from georecon_jax.models.pretrain import DenoisingPretrainer
from georecon_jax.objectives.denoising import kabsch_rmsd, make_loss_fn, make_reconstruct_fn
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.checkpoint import start_or_resume
from georecon_jax.plots import learning_curves
from georecon_jax.training.loop import (MetricsWriter, first_and_last, fit, read_metrics,
                                        record_config, workdir_lock)
from georecon_jax.training.state import (create_optimizer, create_train_state, make_mesh,
                                         param_count, replicate, shard_batch)


def validate_config(config: ml_collections.ConfigDict):
    """Refuses values that would fail later or silently train nonsense, naming the field."""
    problems = []
    ob, enc = config.objective, config.model.encoder
    if ob.name not in ("georecon", "coord"):
        problems.append(f"objective.name={ob.name!r}: use 'georecon' or 'coord'")
    if not 0 < ob.sigma_min <= ob.sigma_max:
        problems.append(f"objective.sigma_min={ob.sigma_min}, sigma_max={ob.sigma_max}: need 0 < sigma_min <= sigma_max (Å)")
    if enc.features % enc.num_heads:
        problems.append(f"model.encoder.features={enc.features} is not divisible by num_heads={enc.num_heads}")
    dec = config.model.get("decoder")
    if dec is not None and enc.features % dec.num_heads:
        problems.append(f"model.decoder.num_heads={dec.num_heads} does not divide model.encoder.features={enc.features}")
    if ob.name == "georecon" and dec is None:
        problems.append("objective.name='georecon' needs model.decoder (coord.py sets it to None)")
    for field in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if config[field] <= 0:
            problems.append(f"{field}={config[field]}: must be positive")
    if enc.cutoff <= 0:
        problems.append(f"model.encoder.cutoff={enc.cutoff}: must be positive (Å)")
    if config.optim.learning_rate <= 0:
        problems.append(f"optim.learning_rate={config.optim.learning_rate}: must be positive")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def load_dataset(cfg: ml_collections.ConfigDict):
    if cfg.dataset != "qm9":
        raise ValueError(f"unknown pretraining dataset {cfg.dataset!r}: only 'qm9' is implemented")
    return load_qm9(cache_dir=cfg.get("cache_dir"), source_dir=cfg.get("source_dir"),
                    limit=cfg.get("limit"), split_seed=cfg.split_seed, strict=cfg.get("strict", False))


def micro_batches(config, num_devices: int) -> int:
    """Sequential micro-batches per device and step (config.micro_batches; 0: automatic)."""
    if config.batch_size % num_devices:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by {num_devices} devices")
    return micro_batches_for(config.batch_size // num_devices, config.get("micro_batches", 1),
                             jax.default_backend())


def make_batchers(config, molecules, splits, num_devices: int):
    """Training and validation batchers; their leading axis is devices × micro-batches."""
    d, g = config.data, config.graph
    common = dict(num_devices=num_devices * micro_batches(config, num_devices),
                  neighbor_list=g.neighbor_list, cutoff=config.model.encoder.cutoff,
                  skin=g.skin, num_buckets=g.num_buckets, seed=config.seed)
    train = GraphBatcher(molecules, splits["train"], config.batch_size, shuffle=True, **common)
    val_idx = splits["validation"][:d.num_eval_molecules]
    val = GraphBatcher(molecules, val_idx, config.batch_size, shuffle=False, drop_remainder=False,
                       budgets=train.budgets, **{k: v for k, v in common.items() if k != "num_buckets"})
    return train, val


def init_model(config, batcher, key):
    model = DenoisingPretrainer(config.model)
    from georecon_jax.graphs.masks import graph_masks
    graph = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), batcher.batch(0))
    m = graph_masks(graph)
    params = jax.jit(model.init, static_argnums=(8,))(
        key, graph.nodes.atomic_numbers, graph.nodes.positions, graph.senders, graph.receivers,
        m.edge_mask, m.node_mask, m.node_graph, m.n_graph)
    return model, params


def fresh_train_step(config, batcher, mesh, key, params=None, trace_counter=None):
    """A new model, train state and compiled-on-use train step for one batch layout (no
    checkpoint): what the benchmark and the layout tests compare. ``params`` replaces the fresh
    initialisation (the same start on two layouts); ``trace_counter`` (a list) gets one entry per
    trace of the step. Returns (model, state, train_step)."""
    model, p0 = init_model(config, batcher, key)
    tx = create_optimizer(config.optim, config.num_steps)
    state = replicate(create_train_state(model.apply, p0 if params is None else params, tx, False),
                      mesh)
    step = steps_lib.make_train_step(make_loss_fn(model, config), mesh, jax.random.fold_in(key, 1),
                                     0.0, trace_counter)
    return model, state, step


def reconstruction_report(model, params, config, molecules, indices, batch_size, budgets):
    """Kabsch RMSD (Å) of coordinates rebuilt from the graph code alone, on held-out molecules
    (one device, batches of ``batch_size`` molecules padded to ``budgets``)."""
    g = config.graph
    batcher = GraphBatcher(molecules, indices, batch_size, num_devices=1, shuffle=False,
                           drop_remainder=False, neighbor_list=g.neighbor_list,
                           cutoff=config.model.encoder.cutoff, skin=g.skin, budgets=budgets)
    recon = jax.jit(make_reconstruct_fn(model, config, config.objective.num_sampling_steps))
    rmsds, noise_rmsds = [], []
    for k in range(batcher.steps_per_epoch):
        graph = jax.tree_util.tree_map(lambda x: x[0], batcher.batch(k))
        pred = np.asarray(recon(params, graph, jax.random.PRNGKey(config.seed + 17)))
        start = np.cumsum(np.concatenate([[0], graph.n_node]))
        rng = np.random.default_rng(k)
        for gi, mol in enumerate(graph.globals.graph_id):
            if mol < 0:
                continue
            a, b = start[gi], start[gi + 1]
            ref = graph.nodes.positions[a:b]
            rmsds.append(kabsch_rmsd(pred[a:b], ref))
            noise_rmsds.append(kabsch_rmsd(rng.normal(size=ref.shape) * config.objective.sigma_max, ref))
    return {"reconstruction_rmsd_angstrom": float(np.mean(rmsds)),
            "reconstruction_rmsd_median_angstrom": float(np.median(rmsds)),
            "pure_noise_rmsd_angstrom": float(np.mean(noise_rmsds)),
            "num_molecules": len(rmsds), "num_sampling_steps": config.objective.num_sampling_steps}


def run(config: ml_collections.ConfigDict, workdir: str, stop_after=None):
    """Pretrains (or resumes) in ``workdir``; returns a summary dict. ``stop_after``: end early at
    that step (checkpointed), keeping the learning-rate schedule of ``config.num_steps``."""
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        record_config(config, workdir, allow_change=config.get("allow_config_change", False))
        mesh = make_mesh(config.get("num_devices") or None)
        num_devices = mesh.devices.size
        molecules, splits = load_dataset(config.data)
        train, val = make_batchers(config, molecules, splits, num_devices)
        print(f"{len(splits['train'])} training molecules, batch {config.batch_size} over "
              f"{num_devices} device(s) x {micro_batches(config, num_devices)} micro-batch(es); "
              f"budgets (nodes, edges per micro-batch): "
              f"{[(b.n_node, b.n_edge) for b in train.budgets]}")
        key = jax.random.PRNGKey(config.seed)
        model, params = init_model(config, train, key)
        print(f"model: {param_count(params):,} parameters "
              f"(encoder {param_count(params['params']['encoder']):,})")
        state, ckpt = start_or_resume(workdir, model.apply, params, config, mesh)
        loss_fn = make_loss_fn(model, config)
        train_step = steps_lib.make_train_step(loss_fn, mesh, jax.random.fold_in(key, 1),
                                               config.optim.ema_decay)
        eval_step = steps_lib.make_eval_step(loss_fn, mesh, jax.random.fold_in(key, 2))
        place = lambda b: shard_batch(b, mesh)

        def eval_fn(state, step):
            params = state.ema_params if state.ema_params is not None else state.params
            return steps_lib.combine_eval_sums(
                [eval_step(params, place(b), i) for i, b in enumerate(val.epoch_batches())])

        writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
        t0 = time.time()
        try:
            state = fit(state=state, train_step=train_step, make_batch=train.batch, place=place,
                        num_steps=config.num_steps, checkpointer=ckpt, writer=writer, eval_fn=eval_fn,
                        eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                        log_every=config.log_every,
                        max_consecutive_nonfinite=config.max_consecutive_nonfinite,
                        desc=f"pretrain {config.objective.name}", stop_after=stop_after)
        finally:
            writer.close()
            ckpt.close()
        panels = {"loss (dimensionless, ε-MSE)": (("train", "loss", "train"), ("validation", "loss", "validation"))}
        if config.objective.name == "georecon":
            panels["GeoRecon terms (train)"] = tuple(
                ("train", k, k) for k in ("recon_mse", "node_denoise_mse", "clean_mse"))
        learning_curves(read_metrics(workdir), os.path.join(workdir, "learning_curves.png"), panels,
                        title=f"{config.objective.name} pretraining on QM9")
        first, last = first_and_last(workdir)
        summary = {"objective": config.objective.name, "steps": int(jax.device_get(state.step)),
                   "first_train_loss": first, "final_train_loss": last,
                   "skipped_nonfinite_steps": int(jax.device_get(state.skipped_steps)),
                   "wall_seconds_this_run": time.time() - t0}
        if config.objective.name == "georecon" and config.objective.num_recon_molecules:
            params = jax.device_get(state.ema_params if state.ema_params is not None else state.params)
            idx = splits["validation"][:config.objective.num_recon_molecules]
            summary.update(reconstruction_report(model, params, config, molecules, idx,
                                                 train.per_device, train.budgets))
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps(summary, indent=1))
        return summary
