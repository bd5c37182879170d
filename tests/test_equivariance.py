"""E(3) symmetry of the models: the ET encoder and its layers, the heads, SchNet, ForceHead.

Every check goes through `symmetry.assert_symmetric` (e3nn-jax's ``assert_equivariant`` with a
random rotation times the inversion; translation invariance; a non-orthogonal map must change
the outputs, so each check can fail). Inputs are padded (padding atoms and padding pairs present,
zero features on padding atoms) and parameters are jittered: flax initialises biases to zero, and a
bias wrongly added to a vector channel would otherwise go unseen. Sizes are tiny.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.graph import graph_masks, masked_mean
from georecon_jax.models.et import (
    EquivariantAttention,
    EquivariantTransformer,
    ExpNormalSmearing,
    FirstEquivariantAttention,
    make_pairs,
    radial_basis,
)
from georecon_jax.models.heads import GatedEquivariantBlock, ScalarHead, VectorHead
from georecon_jax.models.relational import ForceHead
from georecon_jax.models.schnet import SchNet
from symmetry import assert_symmetric, jitter


F, HEADS, CUTOFF = 16, 2, 5.0


@pytest.fixture(scope="module")
def graph(qm9_small):
    """Two QM9 molecules in a padded batch (all pairs)."""
    mols, _ = qm9_small
    idx = [123, 321]
    budget = estimate_budgets(mols.n_atoms, mols.n_atoms**2, len(idx), num_buckets=1)[-1]
    g = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, idx, budget))
    m = graph_masks(g)
    assert not bool(m.node_mask.all()) and not bool(m.edge_mask.all())  # padding present
    return g, m


@pytest.fixture(scope="module")
def encoder(graph):
    g, m = graph
    enc = EquivariantTransformer(num_layers=2, features=F, num_heads=HEADS, num_rbf=8, cutoff=CUTOFF)
    params = jitter(
        jitted(enc.init)(
            jax.random.PRNGKey(0),
            g.nodes.atomic_numbers,
            g.nodes.positions,
            g.senders,
            g.receivers,
            m.edge_mask,
            m.node_mask,
        )
    )

    @jax.jit
    def encode(positions):
        return enc.apply(
            params, g.nodes.atomic_numbers, positions, g.senders, g.receivers, m.edge_mask, m.node_mask
        )

    return encode


def _features(node_mask, seed):
    """Random scalars [n, F] and vectors [n, 3, F], zero on padding atoms (as the encoder's)."""
    rng, real = np.random.default_rng(seed), np.asarray(node_mask)
    n = real.shape[0]
    x = np.where(real[:, None], rng.normal(size=(n, F)), 0.0).astype(np.float32)
    vec = np.where(real[:, None, None], rng.normal(size=(n, 3, F)), 0.0).astype(np.float32)
    return x, vec


@pytest.mark.parametrize("seed", [0, 1])
def test_encoder(graph, encoder, seed):
    """Scalars invariant, vectors equivariant (F × 1o), both invariant to translations."""
    g, _ = graph
    assert_symmetric(encoder, [(g.nodes.positions, "1o")], ["0e", "channels"], translate=[0], seed=seed)


def test_encoder_with_vector_cutoff(graph):
    """vector_cutoff (torchmd-net's option, the MD17 default: the cutoff weighs the values, vector
    messages included): the same symmetries."""
    g, m = graph
    enc = EquivariantTransformer(
        num_layers=2, features=F, num_heads=HEADS, num_rbf=8, cutoff=CUTOFF, vector_cutoff=True
    )
    rest = (g.senders, g.receivers, m.edge_mask, m.node_mask)
    params = jitter(jitted(enc.init)(jax.random.PRNGKey(0), g.nodes.atomic_numbers, g.nodes.positions, *rest))
    encode = jax.jit(lambda positions: enc.apply(params, g.nodes.atomic_numbers, positions, *rest))
    assert_symmetric(encode, [(g.nodes.positions, "1o")], ["0e", "channels"], translate=[0])


def test_attention_layers(graph):
    """The canonical layer with a real vec input (as the GeometryDecoder uses it) and the first
    layer, each alone: (x, vec, positions) -> (dx invariant, dvec equivariant)."""
    g, m = graph
    x, vec = _features(m.node_mask, seed=3)
    rbf_module = ExpNormalSmearing(8, 0.0, CUTOFF, trainable=False)

    @jax.jit
    def geometry(positions):
        pairs = make_pairs(positions, g.senders, g.receivers, m.edge_mask, m.node_mask, CUTOFF)
        return (*radial_basis(lambda d: rbf_module.apply({}, d), pairs), pairs)

    layer, first = EquivariantAttention(F, HEADS), FirstEquivariantAttention(F, HEADS)
    params = jitter(jitted(layer.init)(jax.random.PRNGKey(0), x, vec, *geometry(g.nodes.positions)))
    assert_symmetric(
        lambda x, vec, pos: layer.apply(params, x, vec, *geometry(pos)),
        [(x, "0e"), (vec, "channels"), (g.nodes.positions, "1o")],
        ["0e", "channels"],
        translate=[2],
    )
    assert_symmetric(
        lambda x, pos: first.apply(params, x, *geometry(pos)),
        [(x, "0e"), (g.nodes.positions, "1o")],
        ["0e", "channels"],
        translate=[1],
    )


def test_gated_equivariant_block(graph):
    _, m = graph
    x, vec = _features(m.node_mask, seed=4)
    block = GatedEquivariantBlock(hidden=F, out=8, scalar_activation=True)
    params = jitter(jitted(block.init)(jax.random.PRNGKey(1), x, vec), seed=1)
    assert_symmetric(
        lambda x, vec: block.apply(params, x, vec), [(x, "0e"), (vec, "channels")], ["0e", "channels"]
    )


def test_vector_head(graph):
    _, m = graph
    x, vec = _features(m.node_mask, seed=5)
    head = VectorHead(F)
    params = jitter(jitted(head.init)(jax.random.PRNGKey(1), x, vec), seed=1)
    assert_symmetric(lambda x, vec: head.apply(params, x, vec), [(x, "0e"), (vec, "channels")], ["1o"])


def test_scalar_head_on_the_encoder(graph, encoder):
    """Per-molecule scalars (ScalarHead on the encoder's scalars, mean over real atoms): invariant.
    ScalarHead itself sees only invariants, so this checks the pipeline and the masked pooling."""
    g, m = graph
    head = ScalarHead(hidden=F, out=2)
    x, _ = encoder(g.nodes.positions)
    params = jitter(jitted(head.init)(jax.random.PRNGKey(2), x), seed=2)

    def per_molecule(positions):
        y = head.apply(params, encoder(positions)[0])
        return masked_mean(y, m)

    assert_symmetric(per_molecule, [(g.nodes.positions, "1o")], ["0e"], translate=[0])


def _environment(seed, B, M, n_real):
    """Random atom sets [B, M, 3] (Å) with the first n_real[b] slots real, the rest padding."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(B, M, 3)).astype(np.float32) * 2.5
    mask = np.arange(M)[None] < np.asarray(n_real)[:, None]
    pos[~mask] = 0.0
    return jnp.asarray(pos), jnp.asarray(mask)


@jax.jit
def _adjacency(positions, node_mask, cutoff=CUTOFF):
    """[B, M, M]: both atoms real, distinct, closer than the cutoff."""
    d2 = jnp.sum((positions[:, :, None, :] - positions[:, None, :, :]) ** 2, axis=-1)
    M = positions.shape[1]
    return node_mask[:, :, None] & node_mask[:, None, :] & (d2 < cutoff**2) & ~jnp.eye(M, dtype=bool)


def test_schnet():
    """Per-atom SchNet features of a padded environment batch are invariant."""
    pos, mask = _environment(1, B=2, M=14, n_real=[12, 9])
    labels = jnp.asarray((np.arange(14)[None] >= 5).astype(np.int32).repeat(2, 0))
    model = SchNet(features=F, num_interactions=2, num_gaussians=10, cutoff=CUTOFF)
    params = jitter(jitted(model.init)(jax.random.PRNGKey(0), labels, pos, mask, _adjacency(pos, mask)))
    assert_symmetric(
        lambda p: model.apply(params, labels, p, mask, _adjacency(p, mask)),
        [(pos, "1o")],
        ["0e"],
        translate=[0],
    )


def test_force_head():
    """3DMRL's force head: equivariant per-atom vectors [B, M, 3] from invariant 2D features."""
    pos, mask = _environment(2, B=2, M=9, n_real=[9, 6])
    rng = np.random.default_rng(2)
    h, ha = (jnp.asarray(rng.normal(size=(2, 9, 6)).astype(np.float32)) for _ in range(2))
    head = ForceHead(features=8, num_gaussians=6, cutoff=10.0)
    params = jitter(jitted(head.init)(jax.random.PRNGKey(0), h, ha, pos, mask))
    assert_symmetric(
        lambda h, ha, p: head.apply(params, h, ha, p, mask),
        [(h, "0e"), (ha, "0e"), (pos, "1o")],
        ["1o"],
        translate=[2],
    )
