"""The fast ET (`models/et.py`) equals the dense reference (`models/et_reference.py`).

`georecon_jax.models.et` stores each unordered pair once, computes the radial filters once per pair
and the self-edges per atom, and skips the vec terms in the first layer.
`georecon_jax.models.et_reference` is torchmd-net's ``TorchMD_ET`` (``loop=True``) written densely
over [n, n] ordered pairs with the self-loops on the diagonal, from the same parameter pytree.
Outputs and forces (gradients with respect to positions) must agree, on real QM9 molecules in a
padded batch.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from symmetry import jitter
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.graph import graph_masks
from georecon_jax.models import et_reference
from georecon_jax.models.et import (
    EquivariantAttention,
    EquivariantTransformer,
    ExpNormalSmearing,
    FirstEquivariantAttention,
    make_pairs,
    radial_basis,
)

CUTOFF = 5.0


def _batch(qm9_small, neighbor_list):
    mols, _ = qm9_small
    idx = [5, 123, 321]
    n_pairs = mols.n_atoms * (mols.n_atoms - 1) // 2
    budget = estimate_budgets(mols.n_atoms, n_pairs, len(idx), num_buckets=1)[-1]
    g = jax.tree_util.tree_map(
        jnp.asarray, pack_graphs(mols, idx, budget, neighbor_list, cutoff=CUTOFF, skin=0.5)
    )
    return g, graph_masks(g)


@pytest.mark.parametrize(
    "neighbor_list, vector_cutoff", [("all_pairs", False), ("radius", False), ("radius", True)]
)
def test_pair_layout_equals_directed_reference(qm9_small, neighbor_list, vector_cutoff):
    """vector_cutoff (torchmd-net's option): the cutoff weighs the vector messages too."""
    g, m = _batch(qm9_small, neighbor_list)
    assert int(m.edge_mask.sum()) < g.senders.shape[0]  # padding pairs are present
    assert int(m.node_mask.sum()) < m.node_mask.shape[0]  # padding atoms are present
    assert bool(jnp.all(g.receivers[m.edge_mask] < g.senders[m.edge_mask]))  # each pair once
    et = EquivariantTransformer(
        num_layers=2, features=32, num_heads=4, num_rbf=16, cutoff=CUTOFF, vector_cutoff=vector_cutoff
    )
    z, pos = g.nodes.atomic_numbers, g.nodes.positions
    params = jitted(et.init)(jax.random.PRNGKey(0), z, pos, g.senders, g.receivers, m.edge_mask, m.node_mask)
    # Non-zero biases, so that masked-out pairs with a zero radial basis would still show up.
    params = jitter(params)
    real = m.node_mask
    same = et_reference.same_molecule_pairs(m.node_graph, real)

    @jax.jit
    def ours(pos):
        return et.apply(params, z, pos, g.senders, g.receivers, m.edge_mask, m.node_mask)

    @jax.jit
    def ref(pos, same=same):
        return et_reference.equivariant_transformer(et, params, z, pos, same, real)

    x, vec = ours(pos)
    x_ref, vec_ref = ref(pos)
    assert float(jnp.abs(x_ref[real]).max()) > 0.1 and float(jnp.abs(vec_ref[real]).max()) > 1e-2
    np.testing.assert_allclose(x[real], x_ref[real], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(vec[real], vec_ref[real], atol=2e-4, rtol=1e-4)
    for out in (x, vec, x_ref, vec_ref):  # both zero on padding atoms
        assert float(jnp.abs(out[~real]).max()) == 0.0
    # The comparison can fail: the reference without its self-loops is a different function.
    x_no_loops, _ = ref(pos, same & ~jnp.eye(len(z), dtype=bool))
    assert float(jnp.abs(x[real] - x_no_loops[real]).max()) > 1e-3
    if vector_cutoff:  # ... and so is the reference with the other setting (same parameters)
        other = et.clone(vector_cutoff=False)
        x_other, vec_other = jax.jit(
            lambda pos: et_reference.equivariant_transformer(other, params, z, pos, same, real)
        )(pos)
        assert float(jnp.abs(vec[real] - vec_other[real]).max()) > 1e-2
        assert float(jnp.abs(x[real] - x_other[real]).max()) > 1e-3
    # Forces: the backward pass through the shared filters and the self-edges.
    energy = lambda f: (
        lambda pos: (
            jnp.sum(jnp.where(real[:, None], f(pos)[0], 0.0) ** 2)
            + jnp.sum(jnp.where(real[:, None, None], f(pos)[1], 0.0) ** 2)
        )
    )
    f_ours, f_ref = jax.jit(jax.grad(energy(ours)))(pos), jax.jit(jax.grad(energy(ref)))(pos)
    assert float(jnp.abs(f_ref[real]).max()) > 1e-2
    np.testing.assert_allclose(f_ours[real], f_ref[real], atol=2e-3, rtol=2e-3)
    if neighbor_list == "radius" and not vector_cutoff:
        # A fixed radial basis (the pretraining configs): the parameter tree has no ``rbf`` entry,
        # and the reference reads it as well (forward only: a second reference compile is slow).
        fixed = EquivariantTransformer(
            num_layers=2, features=32, num_heads=4, num_rbf=16, cutoff=CUTOFF, trainable_rbf=False
        )
        p_fixed = {"params": {k: v for k, v in params["params"].items() if k != "rbf"}}
        x, vec = jitted(fixed.apply)(p_fixed, z, pos, g.senders, g.receivers, m.edge_mask, m.node_mask)
        x_ref, vec_ref = jax.jit(
            lambda pos: et_reference.equivariant_transformer(fixed, p_fixed, z, pos, same, real)
        )(pos)
        np.testing.assert_allclose(x[real], x_ref[real], atol=2e-4, rtol=1e-4)
        np.testing.assert_allclose(vec[real], vec_ref[real], atol=2e-4, rtol=1e-4)


def test_first_layer_is_the_canonical_layer_at_zero_vectors(qm9_small):
    """`FirstEquivariantAttention` has the parameters of `EquivariantAttention` and computes what it
    computes with vec = 0: outputs and parameter gradients (``vec_proj``'s is 0 in both)."""
    g, m = _batch(qm9_small, "radius")
    F, H = 16, 4

    @jax.jit
    def geometry(positions):
        pairs = make_pairs(positions, g.senders, g.receivers, m.edge_mask, m.node_mask, CUTOFF)
        rbf, rbf_self = radial_basis(
            lambda d: ExpNormalSmearing(8, 0.0, CUTOFF, trainable=False).apply({}, d), pairs
        )
        return pairs, rbf, rbf_self

    pairs, rbf, rbf_self = geometry(g.nodes.positions)
    n = m.node_mask.shape[0]
    x = jax.random.normal(jax.random.PRNGKey(1), (n, F))
    zeros = jnp.zeros((n, 3, F))
    canonical, first = EquivariantAttention(F, H), FirstEquivariantAttention(F, H)
    params = jax.jit(canonical.init)(jax.random.PRNGKey(0), x, zeros, rbf, rbf_self, pairs)
    params = jitter(params)
    first_params = jax.eval_shape(first.init, jax.random.PRNGKey(0), x, rbf, rbf_self, pairs)
    shapes = lambda p: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), p)
    assert shapes(first_params) == shapes(params)  # names, shapes and dtypes
    assert jax.tree_util.tree_structure(first_params) == jax.tree_util.tree_structure(params)
    assert list(first_params["params"]) == list(params["params"])  # created in the same order

    def with_grad(layer_apply):
        def loss(p):
            dx, dvec = out = layer_apply(p)
            return jnp.sum(jnp.sin(dx)) + jnp.sum(jnp.cos(dvec) * dvec), out

        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    (_, (dx1, dvec1)), g1 = with_grad(lambda p: first.apply(p, x, rbf, rbf_self, pairs))(params)
    (_, (dx0, dvec0)), g0 = with_grad(lambda p: canonical.apply(p, x, zeros, rbf, rbf_self, pairs))(params)
    assert float(jnp.abs(dvec0).max()) > 1e-2 and float(jnp.abs(dx0).max()) > 1e-2
    np.testing.assert_allclose(dx1, dx0, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(dvec1, dvec0, atol=1e-6, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), g1, g0)
    assert float(jnp.abs(g0["params"]["vec_proj"]["kernel"]).max()) == 0.0
    # ... and the canonical layer does use vec: the shortcut is only right at vec = 0.
    ones = jnp.ones((n, 3, F))
    assert (
        float(jnp.abs(jax.jit(canonical.apply)(params, x, ones, rbf, rbf_self, pairs)[1] - dvec0).max())
        > 1e-2
    )
