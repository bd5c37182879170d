"""3DMRL pretraining, wired end to end: pair CSVs -> cached conformers -> padded pair batches ->
(2D relational model, virtual environment + 3D encoder, force head) -> InfoNCE + α·force -> loop.

`run(config, workdir)` is what ``python -m experiments.pretrain --config=experiments/configs/mrl3d.py``
calls (``config.workflow = "mrl3d"``). Running it again on the same workdir resumes.

Pair batches are two GraphsTuples plus a pair mask, not one GraphsTuple; `make_pair_train_step` is
the shared `georecon_jax.training.steps.make_train_step` with the pair mask: per-pair losses averaged
over real pairs of all devices, gradients summed over devices, non-finite steps skipped.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.data.pairs import PairDataset, all_combinations, concat_datasets, load_pairs
from georecon_jax.graphs.pairs import PairBatcher, PairBudget
from georecon_jax.objectives.mrl3d import MRL3DPretrainer, environment_for, make_loss_fn
from georecon_jax.training.checkpoint import restore_params, start_or_resume
from georecon_jax.training.loop import MetricsWriter, first_and_last, fit, record_config, workdir_lock
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.state import DATA_AXIS, make_mesh, param_count, shard_batch

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_data_root() -> str:
    return os.environ.get("GEORECON_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")


def molecule_cache(data_cfg) -> MoleculeCache:
    return MoleculeCache(data_cfg.get("cache_dir"), explicit_h=data_cfg.explicit_h,
                         seed=data_cfg.conformer_seed, mmff=data_cfg.mmff)


def load_pretraining_pairs(data_cfg) -> PairDataset:
    """Every preset of ``data_cfg.presets``, as observed pairs or all combinations, joined."""
    root = data_cfg.get("data_root") or default_data_root()
    cache = molecule_cache(data_cfg)
    sets = []
    for preset in data_cfg.presets:
        ds = load_pairs(preset, data_root=root, cache=cache, num_workers=data_cfg.num_workers,
                        limit=data_cfg.get("limit"))
        if data_cfg.pairs == "combinations":
            ds = all_combinations(ds, data_cfg.combination_fraction, data_cfg.split_seed,
                                  data_cfg.get("max_pairs"))
        elif data_cfg.pairs != "observed":
            raise ValueError(f"unknown data.pairs {data_cfg.pairs!r}: use 'observed' or 'combinations'")
        sets.append(ds)
    return concat_datasets(sets) if len(sets) > 1 else sets[0]


def _drop_device_axis(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_pair_train_step(loss_fn: Callable, mesh: Mesh, base_key, ema_decay: float = 0.0):
    """The shared data-parallel train step on PairBatches (real pairs: ``batch.pair_mask``); the
    step key is fold_in(fold_in(base_key, step), device index)."""
    return steps_lib.make_train_step(loss_fn, mesh, base_key, ema_decay,
                                     mask_fn=lambda batch: batch.pair_mask, fold_in_device=True,
                                     count_name="num_pairs")


def make_pair_apply_step(fn: Callable, mesh: Mesh):
    """Jitted ``step(params, batch, key) -> fn's output`` per device, gathered over the data axis:
    ``fn(params, batch, key) -> pytree of [B, ...]`` arrays; outputs come back as [D·B, ...]."""

    def device(params, batch, key):
        batch = _drop_device_axis(batch)
        return fn(params, batch, jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS)))

    sharded = jax.shard_map(device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                            out_specs=P(DATA_AXIS), check_vma=False)
    return jax.jit(sharded)


def make_eval_fn(loss_fn, mesh, batcher: PairBatcher, key, place):
    """(state, step) -> mean loss and metrics over the validation pairs (fixed environments)."""
    def per_pair(params, batch, k):
        loss, metrics = loss_fn(params, batch, k)
        return dict(metrics, loss=loss, mask=batch.pair_mask.astype(jnp.float32))
    step = make_pair_apply_step(per_pair, mesh)

    def eval_fn(state, _step):
        params = state.ema_params if state.ema_params is not None else state.params
        outs = [jax.device_get(step(params, place(b), jax.random.fold_in(key, i)))
                for i, b in enumerate(batcher.epoch_batches())]
        mask = np.concatenate([o["mask"] for o in outs]) > 0
        return {k: float(np.mean(np.concatenate([o[k] for o in outs])[mask]))
                for k in outs[0] if k != "mask"}
    return eval_fn


def init_model(config, batcher: PairBatcher, key):
    model = MRL3DPretrainer(config.model)
    batch = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), batcher.batch(0))
    env, z = environment_for(batch, key, config.environment)
    params = jax.jit(model.init)(key, batch, env, z)
    init_from = config.model.encoder3d.get("init_from")
    if init_from:
        params = load_pretrained_3d_encoder(params, init_from, config.model.encoder3d.name)
    return model, params


def load_pretrained_3d_encoder(params, path: str, name: str):
    """Copies a GeoRecon/Coord checkpoint's ET encoder (``params/encoder``) into the 3D teacher."""
    if name != "et":
        raise ValueError("model.encoder3d.init_from needs model.encoder3d.name = 'et'")
    _, raw = restore_params(path)
    tree = raw.get("params", raw)
    tree = tree.get("params", tree)
    if "encoder" not in tree:
        raise ValueError(f"{path}: no 'encoder' parameters in the checkpoint (keys {list(tree)})")
    target = params["params"]["encoder3d"]["encoder"]
    src = jax.tree_util.tree_map(jnp.asarray, tree["encoder"])
    if jax.tree_util.tree_structure(src) != jax.tree_util.tree_structure(target) or any(
            a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(src), jax.tree_util.tree_leaves(target))):
        raise ValueError(f"{path}: the checkpoint's encoder does not match model.encoder3d "
                         "(layers, features, heads, num_rbf, trainable_rbf and max_z must agree)")
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["params"]["encoder3d"]["encoder"] = src
    print(f"3D encoder initialised from {path}")
    return params


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict:
    """Pretrains (or resumes) 3DMRL in ``workdir``; returns a summary dict."""
    os.makedirs(workdir, exist_ok=True)
    with workdir_lock(workdir):
        record_config(config, workdir, compare_sections=("model", "environment", "objective"),
                      allow_change=config.get("allow_config_change", False))
        mesh = make_mesh(config.get("num_devices") or None)
        num_devices = mesh.devices.size
        ds = load_pretraining_pairs(config.data)
        budget = PairBudget.from_dataset(ds, max_atoms=config.data.max_atoms)
        rng = np.random.default_rng(config.data.split_seed)
        order = rng.permutation(len(ds))
        n_val = min(config.data.num_eval_pairs, len(ds) // 10)
        train = PairBatcher(ds, order[n_val:], config.batch_size, budget, num_devices=num_devices,
                            seed=config.seed)
        val = PairBatcher(ds, order[:n_val], config.batch_size, budget, num_devices=num_devices,
                          shuffle=False, drop_remainder=False)
        print(f"{len(train.indices)} training pairs ({train.num_dropped} over the {config.data.max_atoms}-atom "
              f"cap left out), {len(val.indices)} validation pairs, {len(ds.molecules)} molecules; "
              f"budget per molecule (atoms, bonds): side 1 ({budget.n_node1}, {budget.n_edge1}), side 2 "
              f"({budget.n_node2}, {budget.n_edge2}); environment "
              f"{config.environment.get('max_atoms') or budget.n_node1 + config.environment.num_copies * budget.n_node2}"
              f" atom slots; batch "
              f"{config.batch_size} over {num_devices} device(s)")
        key = jax.random.PRNGKey(config.seed)
        model, params = init_model(config, train, key)
        sub = params["params"]
        print(f"model: {param_count(params):,} parameters (2D relational {param_count(sub['relational']):,}, "
              f"3D encoder {param_count(sub['encoder3d']):,}, force head {param_count(sub['force_head']):,})")
        state, ckpt = start_or_resume(workdir, model.apply, params, config, mesh)
        loss_fn = make_loss_fn(model, config)
        train_step = make_pair_train_step(loss_fn, mesh, jax.random.fold_in(key, 1), config.optim.ema_decay)
        place = lambda b: shard_batch(b, mesh)
        eval_fn = make_eval_fn(loss_fn, mesh, val, jax.random.fold_in(key, 2), place) if len(val.indices) else None
        writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
        t0 = time.time()
        try:
            state = fit(state=state, train_step=train_step, make_batch=train.batch, place=place,
                        num_steps=config.num_steps, checkpointer=ckpt, writer=writer, eval_fn=eval_fn,
                        eval_every=config.eval_every, checkpoint_every=config.checkpoint_every,
                        log_every=config.log_every, max_consecutive_nonfinite=config.max_consecutive_nonfinite,
                        desc="pretrain 3dmrl")
        finally:
            writer.close()
            ckpt.close()
        first, last = first_and_last(workdir)
        summary = {"objective": "3dmrl", "steps": int(jax.device_get(state.step)),
                   "first_train_loss": first, "final_train_loss": last,
                   "first_train_contrastive": first_and_last(workdir, "contrastive")[0],
                   "final_train_contrastive": first_and_last(workdir, "contrastive")[1],
                   "first_train_force_mse": first_and_last(workdir, "force_mse")[0],
                   "final_train_force_mse": first_and_last(workdir, "force_mse")[1],
                   "skipped_nonfinite_steps": int(jax.device_get(state.skipped_steps)),
                   "train_pairs": int(len(train.indices)), "wall_seconds_this_run": time.time() - t0}
        if eval_fn is not None:
            summary["validation"] = first_and_last(workdir, "loss", "validation")
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps(summary, indent=1))
        return summary
