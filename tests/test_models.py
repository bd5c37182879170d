"""Encoder, heads and decoder: rotation/translation/permutation symmetry and padding independence."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import jitted, jitter, random_rotation
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.graphs.masks import graph_masks
from georecon_jax.models.et import EquivariantTransformer
from georecon_jax.models.heads import VectorHead
from georecon_jax.models.pretrain import DenoisingPretrainer, GeometryDecoder

ATOL = 2e-4


def _graph(mols, idx, n_graph=None):
    budgets = estimate_budgets(mols.n_atoms, mols.n_atoms ** 2, n_graph or len(idx), num_buckets=1)
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
    return jitted(enc.apply)(params, g.nodes.atomic_numbers, positions, g.senders, g.receivers, m.edge_mask,
                     m.node_mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder_rotation_translation(encoder_and_graph, seed):
    enc, params, g, m = encoder_and_graph
    x, vec = _run(enc, params, g, m, g.nodes.positions)
    assert float(jnp.abs(vec).max()) > 1e-3  # vectors are not trivially zero
    rot = jnp.asarray(random_rotation(seed))
    shift = jnp.asarray(np.random.default_rng(seed).normal(size=3) * 10, jnp.float32)
    x2, vec2 = _run(enc, params, g, m, g.nodes.positions @ rot.T + shift)
    np.testing.assert_allclose(x2, x, atol=ATOL)
    np.testing.assert_allclose(vec2, jnp.einsum("ij,njf->nif", rot, vec), atol=ATOL)


def test_symmetry_test_can_fail_scaling_changes_scalars(encoder_and_graph):
    """A sanity check that the test above can fail: a non-rotation (scaling) changes the scalars."""
    enc, params, g, m = encoder_and_graph
    x, _ = _run(enc, params, g, m, g.nodes.positions)
    x2, _ = _run(enc, params, g, m, g.nodes.positions * 1.3)
    assert float(jnp.abs(x2 - x).max()) > 1e-2


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
        out.append(jitted(enc.apply)(params, jnp.asarray(zz, jnp.int32), jnp.asarray(pp), jnp.asarray(ss),
                             jnp.asarray(rr), jnp.ones(n * n, bool), jnp.ones(n, bool)))
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
    np.testing.assert_allclose(xb[n5:n5 + n77], xa[:n77], atol=1e-5)
    np.testing.assert_allclose(vb[n5:n5 + n77], va[:n77], atol=1e-5)
    # padding rows are exactly zero
    m = graph_masks(batch)
    assert float(jnp.abs(xb[~m.node_mask]).max()) == 0.0


def test_vector_head_and_decoder_are_equivariant(encoder_and_graph):
    enc, params, g, m = encoder_and_graph
    rot = jnp.asarray(random_rotation(7))
    x, vec = _run(enc, params, g, m, g.nodes.positions)
    head = VectorHead(32)
    hp = jitter(jitted(head.init)(jax.random.PRNGKey(1), x, vec), seed=1)
    out = jitted(head.apply)(hp, x, vec)
    out_r = jitted(head.apply)(hp, x, jnp.einsum("ij,njf->nif", rot, vec))
    np.testing.assert_allclose(out_r, out @ rot.T, atol=ATOL)

    dec = GeometryDecoder(features=32, num_layers=1, num_heads=4, num_rbf=8)
    code = jnp.ones((x.shape[0], 8))
    logs = jnp.full((x.shape[0],), -1.0)
    dargs = (x, vec, code, logs, g.nodes.positions, g.senders, g.receivers, m.edge_mask, m.node_mask)
    dp = jitter(jitted(dec.init)(jax.random.PRNGKey(2), *dargs), seed=2)
    e = jitted(dec.apply)(dp, *dargs)
    x2, vec2 = _run(enc, params, g, m, g.nodes.positions @ rot.T + 3.0)
    e2 = jitted(dec.apply)(dp, x2, vec2, code, logs, g.nodes.positions @ rot.T + 3.0, g.senders, g.receivers,
                   m.edge_mask, m.node_mask)
    np.testing.assert_allclose(e2, e @ rot.T, atol=ATOL)
    # the prediction depends on the graph code and on σ (the decoder is really conditioned)
    assert float(jnp.abs(jitted(dec.apply)(dp, x, vec, 2 * code, logs, *dargs[4:]) - e).max()) > 1e-4
    assert float(jnp.abs(jitted(dec.apply)(dp, x, vec, code, logs + 2, *dargs[4:]) - e).max()) > 1e-4


def test_graph_code_is_invariant_and_ignores_padding(qm9_small):
    mols, _ = qm9_small
    cfg = ml_collections.ConfigDict(dict(
        encoder=dict(num_layers=1, features=16, num_heads=2, num_rbf=8, cutoff=5.0),
        decoder=dict(code_dim=8, num_layers=0, num_heads=2, num_rbf=8)))
    model = DenoisingPretrainer(cfg)
    g = _graph(mols, [10, 20], n_graph=2)
    m = graph_masks(g)
    params = jitter(jitted(model.init, (8,))(jax.random.PRNGKey(0), g.nodes.atomic_numbers, g.nodes.positions,
                               g.senders, g.receivers, m.edge_mask, m.node_mask, m.node_graph, m.n_graph))

    def code(positions):
        x, _ = jitted(model.apply)(params, g.nodes.atomic_numbers, positions, g.senders, g.receivers, m.edge_mask,
                           m.node_mask, method=DenoisingPretrainer.encode)
        return jitted(model.apply, (4,))(params, x, m.node_graph, m.node_mask, m.n_graph,
                           method=DenoisingPretrainer.encode_graph)

    z = code(g.nodes.positions)
    rot = jnp.asarray(random_rotation(3))
    np.testing.assert_allclose(code(g.nodes.positions @ rot.T - 4.0)[:2], z[:2], atol=ATOL)
    alone = _graph(mols, [20])
    ma = graph_masks(alone)
    xa, _ = jitted(model.apply)(params, alone.nodes.atomic_numbers, alone.nodes.positions, alone.senders,
                        alone.receivers, ma.edge_mask, ma.node_mask, method=DenoisingPretrainer.encode)
    za = jitted(model.apply, (4,))(params, xa, ma.node_graph, ma.node_mask, ma.n_graph, method=DenoisingPretrainer.encode_graph)
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
