"""3DMRL objective: InfoNCE by hand, SchNet invariance, force-head equivariance, every head trained."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mrl3d as mrl3d_config
from georecon_jax.chem.conformers import molecule_record
from georecon_jax.data.pairs import PairDataset
from georecon_jax.graphs.pairs import PairBudget, pack_pairs
from georecon_jax.models.relational import ForceHead
from georecon_jax.models.schnet import SchNet, masked_mean
from georecon_jax.objectives.environment import radius_adjacency
from georecon_jax.objectives.mrl3d import MRL3DPretrainer, environment_for, info_nce, make_loss_fn


def test_info_nce_matches_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    mask = np.array([True, True, True, False])        # the last pair is padding
    tau = 0.2
    got = np.asarray(info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(mask), tau))
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
    np.testing.assert_allclose(np.asarray(info_nce(e, e, np.array([True, True]), tau)),
                               np.log(1 + np.exp(-1 / tau)), rtol=1e-5)


def _random_rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_schnet_embedding_invariant_to_rigid_motion_of_environment():
    rng = np.random.default_rng(1)
    B, M = 2, 14
    pos = rng.normal(size=(B, M, 3)).astype(np.float32) * 2.5
    mask = np.arange(M)[None] < np.array([[12], [9]])
    labels = (np.arange(M)[None] >= 5).astype(np.int32).repeat(B, 0)
    model = SchNet(features=16, num_interactions=2, num_gaussians=10, cutoff=5.0)

    def embed(params, p):
        x = model.apply(params, labels, p, mask, radius_adjacency(p, mask, 5.0))
        return masked_mean(x, mask & (labels == 0))
    params = model.init(jax.random.PRNGKey(0), labels, pos, mask, radius_adjacency(pos, mask, 5.0))
    R = _random_rotation(0).astype(np.float32)
    moved = pos @ R.T + np.array([3.0, -7.0, 1.5], np.float32)
    e0, e1 = embed(params, pos), embed(params, moved)
    np.testing.assert_allclose(e0, e1, atol=1e-4)
    # and it does depend on the geometry
    assert not np.allclose(e0, embed(params, pos * 1.3), atol=1e-3)


def test_force_head_is_rotation_equivariant():
    rng = np.random.default_rng(2)
    B, M, D = 2, 9, 6
    pos = rng.normal(size=(B, M, 3)).astype(np.float32) * 2
    mask = np.arange(M)[None] < np.array([[9], [6]])
    h, ha = rng.normal(size=(B, M, D)).astype(np.float32), rng.normal(size=(B, M, D)).astype(np.float32)
    head = ForceHead(features=8, num_gaussians=6, cutoff=10.0)
    params = head.init(jax.random.PRNGKey(0), h, ha, pos, mask)
    R = _random_rotation(3).astype(np.float32)
    f0 = np.asarray(head.apply(params, h, ha, pos, mask))
    f1 = np.asarray(head.apply(params, h, ha, pos @ R.T + 5.0, mask))
    np.testing.assert_allclose(f0 @ R.T, f1, atol=1e-4)
    assert np.abs(f0).max() > 1e-3


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
    ds = PairDataset("t", molecules, np.asarray(i1), np.asarray(i2), np.zeros((4, 1), np.float32), ("y",),
                     np.asarray(["t"] * 4, dtype=object))
    budget = PairBudget.from_dataset(ds)
    return jax.tree_util.tree_map(jnp.asarray, pack_pairs(ds, np.arange(4), 5, budget))  # 1 padding pair


def test_every_parameter_group_gets_a_gradient(tiny_batch):
    config = mrl3d_config.get_config("tiny")
    model = MRL3DPretrainer(config.model)
    key = jax.random.PRNGKey(0)
    # jitted: run eagerly, the environment and the init dispatch op by op (12 s more here)
    env, z = jax.jit(lambda b, k: environment_for(b, k, config.environment))(tiny_batch, key)
    params = jax.jit(model.init)(key, tiny_batch, env, z)
    loss_fn = make_loss_fn(model, config)
    mask = tiny_batch.pair_mask

    def total(p):
        per, metrics = loss_fn(p, tiny_batch, key)
        return jnp.sum(jnp.where(mask, per, 0.0)) / jnp.sum(mask), metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    assert np.isfinite(loss)
    assert set(grads["params"]) == {"relational", "proj2d", "encoder3d", "proj3d", "force_head"}
    for name, g in grads["params"].items():   # the reference never trained its force head
        norm = float(jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree_util.tree_leaves(g))))
        assert norm > 0, f"no gradient reaches {name}"
    assert np.all(np.asarray(metrics["force_mse"])[4] == 0)   # padding pair contributes nothing
