"""Encoder, heads and decoder: permutation symmetry, padding independence, the decoder's symmetry.

The rotation/translation symmetry of the encoder, its layers and the heads: tests/test_equivariance.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.et import EquivariantTransformer
from georecon_jax.models.graph import graph_masks
from georecon_jax.objectives.georecon import decode, graph_code
from georecon_jax.objectives.registry import get_objective
from symmetry import assert_symmetric, jitter


ATOL = 2e-4


def _graph(mols, idx, n_graph=None):
    budgets = estimate_budgets(mols.n_atoms, mols.n_atoms**2, n_graph or len(idx), num_buckets=1)
    g = pack_graphs(mols, idx, budgets[-1])
    return jax.tree_util.tree_map(jnp.asarray, g)


@pytest.fixture(scope="module")
def encoder_and_graph(qm9_small):
    mols, _ = qm9_small
    g = _graph(mols, [123, 321])
    m = graph_masks(g)
    enc = EquivariantTransformer(num_layers=2, features=32, num_heads=4, num_rbf=16, cutoff=5.0)
    args = (g.nodes.atomic_numbers, g.nodes.positions, g.senders, g.receivers, m.edge_mask, m.node_mask)
    params = jitter(jitted(enc.init)(jax.random.PRNGKey(0), *args))
    return enc, params, g, m


def _run(enc, params, g, m, positions):
    return jitted(enc.apply)(
        params, g.nodes.atomic_numbers, positions, g.senders, g.receivers, m.edge_mask, m.node_mask
    )


def test_encoder_atom_permutation(qm9_small, encoder_and_graph):
    enc, params, _, _ = encoder_and_graph
    mols, _ = qm9_small
    z, pos = mols.molecule(222)
    n = len(z)
    perm = np.random.default_rng(0).permutation(n)
    s = np.tile(np.arange(n), n)
    r = np.repeat(np.arange(n), n)
    inv = np.argsort(perm)
    out = []
    for zz, pp, ss, rr in ((z, pos, s, r), (z[perm], pos[perm], inv[s], inv[r])):
        out.append(
            jitted(enc.apply)(
                params,
                jnp.asarray(zz, jnp.int32),
                jnp.asarray(pp),
                jnp.asarray(ss),
                jnp.asarray(rr),
                jnp.ones(n * n, bool),
                jnp.ones(n, bool),
            )
        )
    np.testing.assert_allclose(out[1][0], out[0][0][perm], atol=ATOL)
    np.testing.assert_allclose(out[1][1], out[0][1][perm], atol=ATOL)


def test_padding_does_not_change_a_molecule(qm9_small, encoder_and_graph):
    """A molecule alone and inside a padded batch of others gives the same per-atom outputs."""
    enc, params, _, _ = encoder_and_graph
    mols, _ = qm9_small
    alone = _graph(mols, [77])
    batch = _graph(mols, [5, 77, 300], n_graph=3)
    xa, va = _run(enc, params, alone, graph_masks(alone), alone.nodes.positions)
    xb, vb = _run(enc, params, batch, graph_masks(batch), batch.nodes.positions)
    n5, n77 = mols.n_atoms[5], mols.n_atoms[77]
    np.testing.assert_allclose(xb[n5 : n5 + n77], xa[:n77], atol=1e-5)
    np.testing.assert_allclose(vb[n5 : n5 + n77], va[:n77], atol=1e-5)
    # padding rows are exactly zero
    m = graph_masks(batch)
    assert float(jnp.abs(xb[~m.node_mask]).max()) == 0.0


def _georecon_model(features=32, heads=4):
    from experiments.configs import georecon

    cfg = georecon.get_config("tiny")
    cfg.model.encoder.update(num_layers=2, features=features, num_heads=heads, num_rbf=16)
    cfg.model.decoder.update(code_dim=8, num_layers=1, num_heads=heads, num_rbf=8)
    objective = get_objective(cfg)
    return objective, objective.create_model()


def test_decoder_is_equivariant_and_conditioned_on_code_and_sigma(encoder_and_graph):
    """ε̂ of the decoder on the encoder's features rotates with the (perturbed) molecule and
    ignores translations (e3nn's assert_equivariant), and depends on both z and σ."""
    _, _, g, _ = encoder_and_graph
    objective, model = _georecon_model()
    params = jitter(objective.init(model, g, jax.random.PRNGKey(0)), seed=2)
    code = jnp.asarray(np.random.default_rng(0).normal(size=(g.n_node.shape[0], 8)), jnp.float32)
    logs = jnp.full((g.nodes.positions.shape[0],), -1.0)

    def eps_hat(positions, code=code, logs=logs):
        return model.apply(params, g, positions, code, logs, objective.denoiser, method=decode)[0]

    assert_symmetric(eps_hat, [(g.nodes.positions, "1o")], ["1o"], translate=[0])
    run = jax.jit(eps_hat)
    e = run(g.nodes.positions)
    assert float(jnp.abs(run(g.nodes.positions, 2 * code) - e).max()) > 1e-4
    assert float(jnp.abs(run(g.nodes.positions, code, logs + 2) - e).max()) > 1e-4
    assert float(jnp.abs(e[~graph_masks(g).node_mask]).max()) == 0.0  # padding atoms: no prediction


def _clean_graph_code(model, graph):
    return graph_code(model, graph, model.encode(graph))


def test_graph_code_is_invariant_and_ignores_padding(qm9_small):
    mols, _ = qm9_small
    objective, model = _georecon_model(features=16, heads=2)
    g = _graph(mols, [10, 20], n_graph=2)
    params = jitter(objective.init(model, g, jax.random.PRNGKey(0)))

    def code_of(graph):
        return jitted(model.apply)(params, graph, method=_clean_graph_code)

    z = code_of(g)
    assert_symmetric(
        lambda pos: code_of(g._replace(nodes=g.nodes._replace(positions=pos)))[:2],
        [(g.nodes.positions, "1o")],
        ["0e"],
        translate=[0],
    )
    za = code_of(_graph(mols, [20]))
    np.testing.assert_allclose(za[0], z[1], atol=1e-5)


def test_pretraining_configs_keep_the_radial_basis_fixed(encoder_and_graph):
    """As Coord's pretraining config (trainable_rbf: false): encoders built from the configs have no
    radial-basis parameters; turning the option on adds torchmd-net's trainable means and betas."""
    from experiments.configs import coord, georecon, mrl3d
    from georecon_jax.models.pretrain import make_encoder

    _, _, g, m = encoder_and_graph
    args = (g.nodes.atomic_numbers, g.nodes.positions, g.senders, g.receivers, m.edge_mask, m.node_mask)
    assert georecon.get_config().model.encoder.trainable_rbf is False
    assert coord.get_config().model.encoder.trainable_rbf is False
    assert mrl3d.get_config().model.encoder3d.trainable_rbf is False
    enc_cfg = georecon.get_config("tiny").model.encoder
    fixed = jax.eval_shape(make_encoder(enc_cfg).init, jax.random.PRNGKey(0), *args)["params"]
    assert "rbf" not in fixed and "attention_0" in fixed
    enc_cfg.trainable_rbf = True
    trainable = jax.eval_shape(make_encoder(enc_cfg).init, jax.random.PRNGKey(0), *args)["params"]
    assert set(trainable["rbf"]) == {"means", "betas"}
