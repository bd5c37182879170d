"""Jitted, data-parallel train and eval steps built from a per-graph loss.

``loss_fn(params, graph, key) -> (per_graph_loss [n_graph], {name: per_graph_values [n_graph]})``
runs on one device's padded sub-batch inside ``shard_map``. The step weights every real graph
equally across all devices (padding graphs never count), sums gradients over devices, and applies
AdamW once on the replicated parameters. The step key is ``fold_in(base_key, step)``, so the
numbers of step k depend only on k.

Micro-batches. Each device's share of the batch may arrive as ``M`` padded micro-batches
(leading per-device axis of length M: a ``GraphBatcher`` built with ``num_devices × M``
"devices"); the step runs them one after another in a ``lax.scan`` and sums their gradients, so
the update equals the one of the whole batch (to float rounding) while the per-edge tensors of
only a few molecules are alive at a time. On CPU this keeps them in cache: 8 micro-batches of
4 molecules train 1.5-2x faster than one batch of 32 (benchmarks/results/NOTES.md).

A step whose loss or gradient is not finite is not applied: parameters and optimizer state stay
as they were, ``skipped_steps`` grows, and the metrics carry ``nonfinite = 1``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import jraph
import optax
from jax.sharding import Mesh, PartitionSpec as P

from georecon_jax.training.state import DATA_AXIS, TrainState


def _index(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def _num_micro(batch) -> int:
    return jax.tree_util.tree_leaves(batch)[0].shape[0]


def _masked_sums(per_graph_loss, metrics: Dict[str, jax.Array], graph_mask):
    w = graph_mask.astype(jnp.float32)
    sums = {k: jnp.sum(jnp.where(graph_mask, v, 0.0)) for k, v in metrics.items()}
    return jnp.sum(jnp.where(graph_mask, per_graph_loss, 0.0)), sums, jnp.sum(w)


def make_train_step(
    loss_fn: Callable,
    mesh: Mesh,
    base_key: jax.Array,
    ema_decay: float = 0.0,
    trace_counter: Optional[list] = None,
    mask_fn: Callable = jraph.get_graph_padding_mask,
    fold_in_device: bool = False,
    count_name: str = "num_graphs",
):
    """``train_step(state, batch) -> (state, metrics)``, jitted; batch has a leading device axis.

    Args:
      mask_fn: one device's batch -> [n] bool mask of the real examples (default: jraph's graph
        padding mask; molecule graphs pass `models.graph.real_graph_mask`, right in both batch
        layouts; pair batches pass their own).
      fold_in_device: also fold the device index into the key (randomness that need not be
        identical across device layouts, e.g. 3DMRL environments).
      count_name: the metric that reports how many real examples the step saw.
    """

    def device_grads(params, batch, key):
        # batch: this device's [M, ...] micro-batches.
        if fold_in_device:
            key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
        M = _num_micro(batch)
        masks = [mask_fn(_index(batch, i)) for i in range(M)]
        n_real = jax.lax.psum(sum(jnp.sum(m.astype(jnp.float32)) for m in masks), DATA_AXIS)

        def objective(p, graph, mask, micro_key):
            per_graph, metrics = loss_fn(p, graph, micro_key)
            loss_sum, metric_sums, _ = _masked_sums(per_graph, metrics, mask)
            return loss_sum / jnp.maximum(n_real, 1.0), metric_sums

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        if M == 1:
            (loss, metric_sums), grads = grad_fn(params, _index(batch, 0), masks[0], key)
        else:
            # Noise keyed by molecule (the pretraining objectives) must not depend on the
            # micro-batch a molecule lands in: every micro-batch gets the step's key, unless the
            # randomness is per device anyway (fold_in_device): then also its micro-batch index.
            keys = jnp.stack([jax.random.fold_in(key, i) if fold_in_device else key for i in range(M)])

            def body(carry, xs):
                graph, mask, micro_key = xs
                (l, ms), g = grad_fn(params, graph, mask, micro_key)
                return jax.tree_util.tree_map(jnp.add, carry, (l, ms, g)), None

            # Shapes of the carry: the gradients have the parameters' (a forward trace suffices).
            l0, ms0 = jax.eval_shape(objective, params, _index(batch, 0), masks[0], key)
            zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), (l0, ms0, params))
            (loss, metric_sums, grads), _ = jax.lax.scan(body, zeros, (batch, jnp.stack(masks), keys))
        grads = jax.lax.psum(grads, DATA_AXIS)
        loss = jax.lax.psum(loss, DATA_AXIS)
        metrics = {k: jax.lax.psum(v, DATA_AXIS) / jnp.maximum(n_real, 1.0) for k, v in metric_sums.items()}
        metrics[count_name] = n_real
        return loss, grads, metrics

    sharded = jax.shard_map(
        device_grads, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P(), P()), check_vma=False
    )

    def train_step(state: TrainState, batch, base_key):
        if trace_counter is not None:
            trace_counter.append(1)  # runs at trace time only: counts compilations
        key = jax.random.fold_in(base_key, state.step)
        loss, grads, metrics = sharded(state.params, batch, key)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
        new_state = state.apply_gradients(grads=grads)
        if state.ema_params is not None and ema_decay > 0:
            new_state = new_state.replace(
                ema_params=jax.tree_util.tree_map(
                    lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, new_state.params
                )
            )
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = new_state.replace(
            params=keep(new_state.params, state.params),
            opt_state=keep(new_state.opt_state, state.opt_state),
            ema_params=keep(new_state.ema_params, state.ema_params),
            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        )
        metrics = dict(
            metrics, loss=loss, grad_norm=optax.global_norm(grads), nonfinite=(~finite).astype(jnp.float32)
        )
        return new_state, metrics

    # The key is an argument, not a constant of the program: runs that differ only in their seed
    # compile the same program (one persistent-cache entry for every seed of a study).
    jitted = jax.jit(train_step, donate_argnums=(0,))

    def step(state, batch):
        return jitted(state, batch, base_key)

    step.jitted, step.base_key = jitted, base_key  # for ahead-of-time compilation (the benchmark)
    return step


def make_eval_step(
    loss_fn: Callable,
    mesh: Mesh,
    base_key: jax.Array,
    mask_fn: Callable = jraph.get_graph_padding_mask,
    fold_in_device: bool = False,
):
    """``eval_step(params, batch, index) -> sums`` of the loss and metrics over the real examples
    of a batch, with their count ``num_graphs`` (`combine_eval_sums` averages batches). The key is
    ``fold_in(base_key, index)`` (and the device index with ``fold_in_device``)."""

    def device_eval(params, batch, key):
        if fold_in_device:
            key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))

        def micro_sums(graph):
            per_graph, metrics = loss_fn(params, graph, key)
            loss_sum, metric_sums, count = _masked_sums(per_graph, metrics, mask_fn(graph))
            return dict(metric_sums, loss=loss_sum, num_graphs=count)

        if _num_micro(batch) == 1:
            total = micro_sums(_index(batch, 0))
        else:  # micro-batches (see the module docstring), one after another
            zeros = jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(micro_sums, _index(batch, 0))
            )
            total, _ = jax.lax.scan(
                lambda c, g: (jax.tree_util.tree_map(jnp.add, c, micro_sums(g)), None), zeros, batch
            )
        return {k: jax.lax.psum(v, DATA_AXIS) for k, v in total.items()}

    sharded = jax.shard_map(
        device_eval, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(), check_vma=False
    )

    @jax.jit
    def eval_step(params, batch, index, base_key):
        return sharded(params, batch, jax.random.fold_in(base_key, index))

    return lambda params, batch, index: eval_step(params, batch, index, base_key)


def combine_eval_sums(sums_list):
    """Averages over real graphs from a list of per-batch sums (host side)."""
    total = {}
    for s in sums_list:
        for k, v in s.items():
            total[k] = total.get(k, 0.0) + float(v)
    n = max(total.pop("num_graphs", 0.0), 1.0)
    out = {k: v / n for k, v in total.items()}
    out["num_graphs"] = n
    return out
