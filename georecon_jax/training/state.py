"""Train state, optimizer and the mesh; no chemistry here."""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


class TrainState(train_state.TrainState):
    """flax TrainState plus an optional EMA of the parameters and a count of skipped steps."""
    ema_params: Any = None
    skipped_steps: jax.Array = None   # steps whose loss or gradient was non-finite (not applied)


def create_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, and global-norm gradient clipping."""
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: only 'adamw' is implemented")
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=cfg.learning_rate * cfg.get("final_lr_fraction", 0.0))
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, weight_decay=cfg.weight_decay))


def create_train_state(apply_fn, params, tx, use_ema: bool) -> TrainState:
    return TrainState.create(apply_fn=apply_fn, params=params, tx=tx,
                             ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None,
                             skipped_steps=jnp.zeros((), jnp.int32))


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D data-parallel mesh over the first ``num_devices`` devices (default: all, every host)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices but only {len(devices)} are visible")
    return Mesh(np.array(devices[:n]), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch, mesh: Mesh):
    """Places a batch with a leading [num_devices] axis so that device d holds sub-batch d."""
    return jax.device_put(batch, NamedSharding(mesh, P(DATA_AXIS)))


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
