"""3DMRL objective: InfoNCE by hand (the reference's form and the symmetric one), the force head
frozen as in the reference or trained.

SchNet's invariance and the force head's equivariance: tests/test_equivariance.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mrl3d as mrl3d_config
from georecon_jax.chem.conformers import molecule_record
from georecon_jax.data.pairs import PairDataset
from georecon_jax.graphs.pairs import PairBudget, pack_pairs
from georecon_jax.objectives.mrl3d import info_nce
from georecon_jax.objectives.registry import get_objective


def test_info_nce_matches_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mask = np.array([True, True, True, False])  # the last pair is padding
    tau = 0.2
    got = np.asarray(info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask), tau, "symmetric"))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    want = []
    for i in range(3):
        row = [an[i] @ bn[j] / tau for j in range(3)]
        col = [an[j] @ bn[i] / tau for j in range(3)]
        l_ab = -row[i] + np.log(np.sum(np.exp(row)))
        l_ba = -col[i] + np.log(np.sum(np.exp(col)))
        want.append(0.5 * (l_ab + l_ba))
    np.testing.assert_allclose(got[:3], want, rtol=1e-4)
    assert got[3] == 0.0
    # two identical, orthogonal pairs: loss = log(1 + e^{-1/τ})
    e = np.eye(2)
    np.testing.assert_allclose(
        np.asarray(info_nce(e, e, np.array([True, True]), tau, "symmetric")),
        np.log(1 + np.exp(-1 / tau)),
        rtol=1e-5,
    )


def test_info_nce_reference_form_is_the_reference_formula():
    """Namkyeong/3DMRL MRL3D.py: for each direction, -mean_i log(e_ii / (Σ_j e_ij - e_ii)) with
    e_ij = exp(cos(a_i, b_j) / τ), and the two directions summed; padding pairs are neither
    anchors nor negatives; a real pair with no negative adds 0 instead of log(0)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    mask = np.array([True, True, True, True, False])
    tau = 0.2
    got = np.asarray(info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask), tau))
    an = a[:4] / np.linalg.norm(a[:4], axis=1, keepdims=True)
    bn = b[:4] / np.linalg.norm(b[:4], axis=1, keepdims=True)

    def reference(x, y):  # the reference's contrastive_loss, per anchor (before its mean)
        sim = np.exp(x @ y.T / tau)
        pos = np.diag(sim)
        return -np.log(pos / (sim.sum(axis=1) - pos))

    want = reference(an, bn) + reference(bn, an)
    np.testing.assert_allclose(got[:4], want, rtol=1e-4)
    assert got[4] == 0.0
    np.testing.assert_allclose(got[:4].mean(), want.mean(), rtol=1e-4)  # what the step averages
    alone = np.asarray(info_nce(jnp.asarray(a[:2]), jnp.asarray(b[:2]), jnp.asarray([True, False]), tau))
    assert np.all(alone == 0.0)
    with pytest.raises(ValueError, match="contrastive='half'"):
        info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask), tau, "half")


SMILES = [("CCO", "O"), ("c1ccccc1C(=O)O", "CCCCCC"), ("CC(C)N", "ClC(Cl)Cl"), ("OCC(O)CO", "c1ccccc1")]


@pytest.fixture(scope="module")
def tiny_batch():
    molecules, i1, i2 = [], [], []
    for a, b in SMILES:
        for s, idx in ((a, i1), (b, i2)):
            rec, reason = molecule_record(s)
            assert rec is not None, reason
            idx.append(len(molecules))
            molecules.append(rec)
    ds = PairDataset(
        "t",
        molecules,
        np.asarray(i1),
        np.asarray(i2),
        np.zeros((4, 1), np.float32),
        ("y",),
        np.asarray(["t"] * 4, dtype=object),
    )
    budget = PairBudget.from_dataset(ds)
    return jax.tree_util.tree_map(jnp.asarray, pack_pairs(ds, np.arange(4), 5, budget))  # 1 padding pair


def test_every_parameter_group_gets_a_gradient(tiny_batch):
    config = mrl3d_config.get_config("tiny")
    objective = get_objective(config)
    model = objective.create_model()
    key = jax.random.PRNGKey(0)
    params = objective.init(model, tiny_batch, key)
    loss_fn = objective.loss_fn(model)
    mask = tiny_batch.pair_mask

    def total(p):
        per, metrics = loss_fn(p, tiny_batch, key)
        return jnp.sum(jnp.where(mask, per, 0.0)) / jnp.sum(mask), metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    assert np.isfinite(loss)
    assert set(grads["params"]) == {"relational", "proj2d", "encoder3d", "proj3d", "force_head"}
    for name, g in grads["params"].items():  # the reference never trained its force head
        norm = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g))))
        assert norm > 0, f"no gradient reaches {name}"
    assert np.all(np.asarray(metrics["force_mse"])[4] == 0)  # padding pair contributes nothing


@pytest.mark.parametrize("train_force_head", [False, True])
def test_force_head_is_frozen_as_in_the_reference_unless_trained(tiny_batch, train_force_head):
    """The reference's optimizer holds the 2D and 3D encoders only: after a real optimizer step the
    force head's parameters are exactly their initial values (weight decay included), while the
    2D encoder still moved; with objective.train_force_head=True the force head moves too."""
    import optax

    from georecon_jax.training.optimizer import create_optimizer, freeze

    config = mrl3d_config.get_config("tiny")
    config.objective.train_force_head = train_force_head
    config.optim.weight_decay = 0.1
    objective = get_objective(config)
    model = objective.create_model()
    key = jax.random.PRNGKey(0)
    params = objective.init(model, tiny_batch, key)
    frozen = objective.frozen_modules()
    assert frozen == (() if train_force_head else ("force_head",))
    tx = create_optimizer(config.optim, 10)
    if frozen:
        tx = freeze(tx, params, frozen)
    loss_fn = objective.loss_fn(model)
    mask = tiny_batch.pair_mask

    def total(p):
        per, _ = loss_fn(p, tiny_batch, key)
        return jnp.sum(jnp.where(mask, per, 0.0)) / jnp.sum(mask)

    @jax.jit
    def step(p, opt):
        g = jax.grad(total)(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, g

    p, opt = params, tx.init(params)
    for _ in range(3):  # the first step's learning rate is 0 (warm-up)
        p, opt, g = step(p, opt)

    def moved(name):
        return max(
            float(jnp.abs(x - y).max())
            for x, y in zip(
                jax.tree_util.tree_leaves(p["params"][name]),
                jax.tree_util.tree_leaves(params["params"][name]),
            )
        )

    grad_norm = float(sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(g["params"]["force_head"])))
    assert grad_norm > 0  # the force loss does reach the force head; the optimizer drops it
    assert moved("relational") > 0 and moved("encoder3d") > 0
    assert (moved("force_head") > 0) == train_force_head
    with pytest.raises(ValueError, match="cannot freeze.*force_hed"):
        freeze(create_optimizer(config.optim, 10), params, ("force_hed",))
