"""The whitening vector layer norm (Coord's ``--layernorm-on-vec whitened``), float32 in JAX.

Checked against a float64 numpy implementation of the reference's formula
(pre-training-via-denoising torchmdnet/models/torchmd_et.py ``EquivariantLayerNorm``), for
symmetry (rotations with reflections, atom permutations, padding) on real QM9 molecules, and for
its derivative, written out by hand (`models.et._inv_sqrt_spd`), against finite differences.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.et import VEC_NORM_EPS, EquivariantLayerNorm, EquivariantTransformer
from georecon_jax.models.graph import graph_masks
from symmetry import assert_symmetric, jitter


F = 16


def reference_norm(vec, weight, diag=(1.0, 2.0, 3.0), eps=VEC_NORM_EPS):
    """The reference's formula in float64: centre over channels, (C + eps·diag)^(-1/2) with a
    further eps on the eigenvalues, times weight."""
    x = np.asarray(vec, np.float64)
    x = x - x.mean(-1, keepdims=True)
    cov = x @ np.swapaxes(x, -1, -2) / x.shape[-1] + eps * np.diag(diag)
    lam, v = np.linalg.eigh(cov)
    inv = np.einsum("...ij,...j,...kj->...ik", v, 1.0 / np.sqrt(lam + eps), v)
    return inv @ x * np.asarray(weight, np.float64)


@pytest.fixture(scope="module")
def graph(qm9_small):
    """Two real QM9 molecules in a padded batch (all pairs)."""
    mols, _ = qm9_small
    idx = [123, 321]
    budget = estimate_budgets(mols.n_atoms, mols.n_atoms**2, len(idx), num_buckets=1)[-1]
    g = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, idx, budget))
    m = graph_masks(g)
    assert not bool(m.node_mask.all())  # padding present
    return g, m


def encoder_fn(graph, vec_norm, seed=0):
    g, m = graph
    enc = EquivariantTransformer(num_layers=2, features=F, num_heads=2, num_rbf=8, vec_norm=vec_norm)
    args = (g.nodes.atomic_numbers, g.nodes.positions, g.senders, g.receivers, m.edge_mask, m.node_mask)
    params = jitter(jitted(enc.init)(jax.random.PRNGKey(seed), *args), seed=seed)

    @jax.jit
    def encode(positions):
        return enc.apply(params, args[0], positions, *args[2:])

    return encode, params


@pytest.fixture(scope="module")
def real_vec(graph):
    """The ET's final vectors [n, 3, F] (before any norm) on the real molecules, and the mask."""
    encode, _ = encoder_fn(graph, "none")
    _, vec = encode(graph[0].nodes.positions)
    return np.asarray(vec), np.asarray(graph[1].node_mask)


@pytest.mark.parametrize("reference", [False, True])
def test_matches_the_reference_formula_in_float64(real_vec, reference):
    vec, real = real_vec
    weight = np.random.default_rng(0).uniform(0.5, 1.5, F).astype(np.float32)
    layer = EquivariantLayerNorm(F, reference)
    out = np.asarray(layer.apply({"params": {"weight": weight}}, jnp.asarray(vec)))
    want = reference_norm(vec, weight, (1.0, 2.0, 3.0) if reference else (1.0, 1.0, 1.0))
    scale = np.abs(want[real]).max()
    assert scale > 0.1
    np.testing.assert_allclose(out[real], want[real], atol=2e-4 * scale)
    assert np.all(np.isfinite(out)) and np.all(out[~real] == 0.0)  # padding atoms: zero in, zero out
    # Whitened: where the raw vectors span 3-d space (well above eps), the centred channels come
    # out with identity covariance; in a planar molecule (molecule 123 here) they span a plane,
    # and the normal stays ~0.
    centred = vec[real] - vec[real].mean(-1, keepdims=True)
    lam_min = np.linalg.eigvalsh(np.einsum("nif,njf->nij", centred, centred) / F)[:, 0]
    spread = lam_min > 100 * VEC_NORM_EPS
    assert 0 < spread.sum() < len(spread)  # both kinds of atom are present
    white = out[real][spread] / weight
    cov = np.einsum("nif,njf->nij", white, white) / F
    np.testing.assert_allclose(cov, np.broadcast_to(np.eye(3), cov.shape), atol=0.02)


def test_the_layer_is_equivariant_and_acts_per_atom(real_vec):
    vec, real = real_vec
    layer = EquivariantLayerNorm(F)
    params = {"params": {"weight": np.linspace(0.5, 1.5, F, dtype=np.float32)}}
    fn = lambda v: layer.apply(params, v)  # noqa: E731
    assert_symmetric(fn, [(vec, "channels")], ["channels"])
    perm = np.random.default_rng(1).permutation(len(vec))
    np.testing.assert_allclose(np.asarray(fn(vec[perm])), np.asarray(fn(vec))[perm], atol=1e-6)


def test_the_encoder_with_the_norm_is_equivariant(graph):
    """The whole ET with the whitened norm on the real molecules: scalars invariant, vectors
    equivariant, translations change nothing."""
    encode, params = encoder_fn(graph, "whitened", seed=1)
    assert "out_norm_vec" in params["params"]
    assert_symmetric(encode, [(graph[0].nodes.positions, "1o")], ["0e", "channels"], translate=[0])


def test_the_derivative_matches_finite_differences_float64(real_vec):
    vec, real = real_vec
    layer = EquivariantLayerNorm(F)
    params = {"params": {"weight": np.linspace(0.5, 1.5, F)}}
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x0 = jnp.asarray(vec[real][:6], jnp.float64)
        direction = jnp.asarray(rng.normal(size=x0.shape))
        probe = jnp.asarray(rng.normal(size=x0.shape))
        f = lambda x: jnp.sum(layer.apply(params, x) * probe)  # noqa: E731
        grad = jax.grad(f)(x0)
        h = 1e-6
        fd = (f(x0 + h * direction) - f(x0 - h * direction)) / (2 * h)
        np.testing.assert_allclose(float(jnp.sum(grad * direction)), float(fd), rtol=1e-6)


@pytest.mark.parametrize("case", ["zero", "isotropic", "rank_one"])
def test_the_derivative_is_finite_at_equal_eigenvalues(case):
    """All-zero vectors (padding, isolated atoms), an isotropic set and a rank-one set have
    repeated covariance eigenvalues; eigh's own derivative divides by their difference."""
    rng = np.random.default_rng(3)
    if case == "zero":
        x = np.zeros((2, 3, F), np.float32)
    elif case == "isotropic":
        x = np.tile(np.eye(3, dtype=np.float32), (2, 1, F // 3 + 1))[..., :F] * np.sqrt(3.0)
    else:
        x = np.einsum("ni,nf->nif", rng.normal(size=(2, 3)), rng.normal(size=(2, F))).astype(np.float32)
    layer = EquivariantLayerNorm(F)
    params = layer.init(jax.random.PRNGKey(0), jnp.asarray(x))
    grad = jax.grad(lambda v: jnp.sum(layer.apply(params, v) ** 2))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(grad)))
