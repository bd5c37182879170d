"""Micro-batches (several padded sub-batches per device, run in a scan) give the gradient of the
whole batch; balanced sub-batches hold every molecule once and pad less."""

import jax
import numpy as np
import pytest

from experiments.configs import georecon
from georecon_jax.data.qm9 import load_qm9
from georecon_jax.graphs.batching import GraphBatcher, balanced_split, estimate_budgets, micro_batches_for
from georecon_jax.training.state import make_mesh, shard_batch
from georecon_jax.tasks.pretrain import fresh_train_step
from sgd_compare import max_abs_diff, sgd_params_mismatch


def test_micro_batches_for():
    assert micro_batches_for(32, 0, "cpu") == 8  # 4 molecules each
    assert micro_batches_for(70, 0, "cpu") == 14  # 5 molecules each
    assert micro_batches_for(7, 0, "cpu") == 1  # a prime: no split leaves >= 4
    assert micro_batches_for(32, 0, "gpu") == 1
    assert micro_batches_for(32, 2, "cpu") == 2
    with pytest.raises(ValueError, match="does not divide the 32 molecules"):
        micro_batches_for(32, 3, "cpu")
    with pytest.raises(ValueError, match="must be >= 0"):
        micro_batches_for(32, -1, "cpu")


def test_balanced_split_covers_every_molecule_and_balances():
    rng = np.random.default_rng(0)
    for k in (32, 29):  # full and incomplete batches
        edges = rng.integers(9, 842, size=k)
        groups = balanced_split(edges, 8, 4)
        assert sorted(np.concatenate(groups).tolist()) == list(range(k))
        assert all(len(g) <= 4 for g in groups)
        loads = [edges[g].sum() for g in groups]
        contiguous = [edges[i : i + 4].sum() for i in range(0, k, 4)]
        assert max(loads) <= max(contiguous)
        assert max(loads) - min(loads) <= edges.max()  # greedy largest-first bound
    with pytest.raises(ValueError, match="do not fit"):
        balanced_split(np.ones(9), 2, 4)


def test_budgets_cover_every_batch_of_micro_batches(cache_dir):
    mols, splits = load_qm9(cache_dir=cache_dir, limit=400, verbose=False)
    b = GraphBatcher(mols, splits["train"], 16, num_devices=4, num_buckets=3)
    assert len(b.budgets) >= 2
    for k in range(b.steps_per_epoch):  # raises if a batch fits no budget
        g = b.batch(k)
        assert g.n_node.shape[0] == 4
        assert sorted(g.globals.graph_id[g.globals.graph_id >= 0].tolist()) == sorted(
            b.batch_indices(k).tolist()
        )
    n = mols.n_atoms[splits["train"]]
    one = estimate_budgets(n, n.astype(np.int64) ** 2, 4, 3, sub_batches=1)
    four = estimate_budgets(n, n.astype(np.int64) ** 2, 4, 3, sub_batches=4, num_samples=300)
    assert four[0].n_edge >= one[0].n_edge  # the fullest of 4 sub-batches needs more than one


@pytest.mark.slow
def test_micro_batched_step_equals_whole_batch(cache_dir):
    """One SGD step (an update proportional to the gradient; Adam's first step moves every element
    by about lr whatever its gradient, so float rounding alone can flip a near-zero one) on 1 and on
    4 micro-batches: the same losses, gradient norm and update, to float32 rounding."""
    cfg = georecon.get_config("tiny")
    cfg.data.cache_dir = cache_dir
    cfg.optim.optimizer = "sgd"
    cfg.optim.learning_rate = 0.1  # updates well above the parameters' float32 rounding
    cfg.optim.warmup_steps = 0  # the first step must move the parameters (warm-up starts at lr 0)
    mols, splits = load_qm9(cache_dir=cache_dir, limit=cfg.data.limit, verbose=False)
    key = jax.random.PRNGKey(0)
    mesh = make_mesh(1)
    results, params = {}, None
    for micro in (1, 4):
        batcher = GraphBatcher(
            mols, splits["train"], cfg.batch_size, num_devices=micro, shuffle=False, num_buckets=1
        )
        counter = []
        _, state, step = fresh_train_step(cfg, batcher, mesh, key, params, counter)
        params = jax.device_get(state.params) if params is None else params  # same start on both
        state, metrics = step(state, shard_batch(batcher.batch(0), mesh))
        results[micro] = (jax.device_get(state.params), {k: float(v) for k, v in metrics.items()})
        for k in (1, 2):
            state, _ = step(state, shard_batch(batcher.batch(k), mesh))
        assert len(counter) == 1, f"micro={micro}: the step compiled {len(counter)} times"
    update = max_abs_diff(results[1][0], params)
    assert sgd_params_mismatch(results[1][0], results[4][0], update) <= 1.0
    # a molecule lost or counted twice changes the update by ~1/32 of it: 300x the tolerance
    assert update > 1e-3, f"the step hardly moved the parameters ({update}): the comparison is vacuous"
    m1, m4 = results[1][1], results[4][1]
    assert m1["num_graphs"] == m4["num_graphs"] == cfg.batch_size
    # losses: means of positive per-molecule terms (no cancellation), float32 rounding ~1e-6 relative;
    # the gradient norm: of a sum that cancels, as the update above
    for name in ("loss", "recon_mse", "node_denoise_mse", "clean_mse"):
        assert m1[name] == pytest.approx(m4[name], rel=1e-5), name
    assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-4)
    assert m1["loss"] > 0
