"""Data-parallel steps on batches that are not one GraphsTuple (e.g. pair batches: two graphs plus a
mask of the real examples); no chemistry here.

`make_pair_train_step` is the shared `georecon_jax.training.steps.make_train_step` with the batch's
own mask of real examples: per-example losses averaged over real examples of all devices, gradients
summed over devices, non-finite steps skipped. `make_pair_apply_step` maps any per-device function
over the data axis and gathers its outputs.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, PartitionSpec as P

from georecon_jax.training import steps as steps_lib
from georecon_jax.training.state import DATA_AXIS


def pair_mask(batch):
    """The [B] mask of real pairs of one device's pair batch (its ``pair_mask`` field)."""
    return batch.pair_mask


def _drop_device_axis(tree):
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def make_pair_train_step(
    loss_fn: Callable,
    mesh: Mesh,
    base_key,
    ema_decay: float = 0.0,
    mask_fn: Callable = pair_mask,
    count_name: str = "num_pairs",
):
    """The shared data-parallel train step on batches whose real examples ``mask_fn(batch)`` marks
    (default: ``batch.pair_mask``); the step key is fold_in(fold_in(base_key, step), device index)."""
    return steps_lib.make_train_step(
        loss_fn, mesh, base_key, ema_decay, mask_fn=mask_fn, fold_in_device=True, count_name=count_name
    )


def make_pair_apply_step(fn: Callable, mesh: Mesh):
    """Jitted ``step(params, batch, key) -> fn's output`` per device, gathered over the data axis:
    ``fn(params, batch, key) -> pytree of [B, ...]`` arrays; outputs come back as [D·B, ...]."""

    def device(params, batch, key):
        batch = _drop_device_axis(batch)
        return fn(params, batch, jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS)))

    sharded = jax.shard_map(
        device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(DATA_AXIS), check_vma=False
    )
    return jax.jit(sharded)
