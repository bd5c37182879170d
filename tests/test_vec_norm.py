"""The whitening vector layer norm (Coord's ``--layernorm-on-vec whitened``), float32 in JAX.

Checked against a float64 numpy implementation of the reference's formula
(pre-training-via-denoising torchmdnet/models/torchmd_et.py ``EquivariantLayerNorm``), for
symmetry (rotations with reflections, atom permutations, padding) on real QM9 molecules, and for
its derivatives, written out by hand (`models.et._inv_sqrt_spd`), against finite differences: the
first and the second, which MD17's force loss needs (its gradient is the derivative of the forces,
themselves a derivative; it was NaN before issue 35), and the MD17 fine-tuning loss with the norm
on real rMD17 frames.
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


@pytest.mark.parametrize("case", ["real", "zero", "isotropic"])
def test_the_second_derivative_matches_finite_differences_float64(real_vec, case):
    """Second derivatives (forward and reverse over reverse) of the layer, against finite
    differences of its first derivative, on real ET vectors, all-zero vectors (padding atoms:
    covariance eps·I, three equal eigenvalues) and an isotropic set (equal eigenvalues well above
    eps). eigh's own derivative divides by eigenvalue differences: NaN at the last two."""
    from jax.test_util import check_grads

    vec, real = real_vec
    if case == "real":
        x = vec[real][:4]
    elif case == "zero":
        x = np.zeros((2, 3, F))
    else:
        x = np.tile(np.eye(3), (2, 1, F // 3 + 1))[..., :F] * np.sqrt(3.0)
    layer = EquivariantLayerNorm(F)
    params = {"params": {"weight": np.linspace(0.5, 1.5, F)}}
    probe = np.random.default_rng(4).normal(size=x.shape)
    with jax.enable_x64(True):
        f = jax.jit(lambda v: jnp.sum(jnp.tanh(layer.apply(params, v)) * probe))
        x = jnp.asarray(x, jnp.float64)
        hvp = jax.jvp(jax.grad(f), (x,), (jnp.asarray(probe),))[1]
        assert np.all(np.isfinite(np.asarray(hvp)))
        assert case == "zero" or float(jnp.abs(hvp).max()) > 0  # at 0 the layer is flat to 2nd order
        check_grads(f, (x,), order=2, modes=("rev",), eps=1e-7 if case == "zero" else 1e-5, rtol=1e-4)


def test_md17_force_loss_trains_with_the_whitened_norm():
    """MD17 fine-tuning's loss (energies and forces, finetune_md17.py's tiny model) with
    vec_norm='whitened' on 2 real rMD17 aspirin frames in a padded batch (padding atoms present):
    the gradient of the loss, a second derivative through the norm, is finite (it was NaN from the
    first step before issue 35), and 5 Adam steps lower the loss."""
    import optax

    from conftest import require_shared
    from experiments.configs import finetune_md17
    from georecon_jax.data import md17
    from georecon_jax.graphs.batching import Budget
    from georecon_jax.models.graph import real_graph_mask
    from georecon_jax.models.property import create_property_model
    from georecon_jax.objectives.supervised import TargetStats, init_params, make_loss_fn

    frames, _ = md17.read_force_file(str(require_shared("rmd17/rmd17_aspirin_train_01.npz")))
    offset = float(frames.energies.mean())
    mols, forces = frames.to_molecules(offset)
    n = int(mols.n_atoms[0])
    budget = Budget(2 * n + 6, n * (n - 1) + 8, 3)
    g = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, [0, 500], budget, forces=forces))
    assert not bool(graph_masks(g).node_mask.all())  # padding atoms: equal eigenvalues in the norm
    cfg = finetune_md17.get_config("tiny")
    cfg.model.encoder.vec_norm = "whitened"
    model = create_property_model(cfg.model)
    params = init_params(model, g, jax.random.PRNGKey(0), with_denoise=False)
    assert "out_norm_vec" in params["params"]["encoder"]
    stats = TargetStats(0.0, float(np.std(frames.energies - offset)))
    loss_fn = make_loss_fn(model, cfg, stats, train=True)
    optimizer = optax.adam(1e-3)

    def mean_loss(p):
        per_graph, _ = loss_fn(p, g, jax.random.PRNGKey(1))
        real = real_graph_mask(g)
        return jnp.sum(jnp.where(real, per_graph, 0.0)) / jnp.sum(real)

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(mean_loss)(p)
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(grads)]))
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss, finite

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(6):
        params, opt_state, loss, finite = step(params, opt_state)
        assert bool(finite) and np.isfinite(float(loss))
        losses.append(float(loss))
    assert losses[-1] < 0.9 * losses[0], losses
