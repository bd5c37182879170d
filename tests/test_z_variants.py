"""GeoRecon's objective variants (issue 20): the frame-free losses, the bonds the decoder may read,
the EDM preconditioning, and that every variant is equivariant and trains."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_rotation
from experiments.configs import georecon as georecon_config
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.graph import graph_masks
from georecon_jax.models.pretrain import bonded_pairs
from georecon_jax.objectives.georecon import (
    Denoiser,
    decode,
    kabsch_errors,
    kabsch_rmsd,
    spectrum_errors,
)
from georecon_jax.objectives.graph_code_diagnostic import distance_errors
from georecon_jax.objectives.registry import get_objective
from symmetry import assert_symmetric, jitter


def _graph(mols, idx, n_graph=None):
    budgets = estimate_budgets(mols.n_atoms, mols.n_atoms**2, n_graph or len(idx), num_buckets=1)
    return jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, idx, budgets[-1]))


def _molecules(graph):
    start = np.cumsum(np.concatenate([[0], np.asarray(graph.n_node)]))
    ids = np.asarray(graph.globals.graph_id)
    return [(start[g], start[g + 1]) for g in range(len(ids)) if ids[g] >= 0]


def test_frame_free_errors_ignore_rigid_motions_and_equal_numpy(qm9_small):
    mols, _ = qm9_small
    g = _graph(mols, [11, 150, 222], n_graph=4)
    ref = np.asarray(g.nodes.positions, np.float64)
    moved, distorted, shuffled = ref.copy(), ref.copy(), ref.copy()
    rng = np.random.default_rng(0)
    for k, (a, e) in enumerate(_molecules(g)):
        rot = random_rotation(k).astype(np.float64)
        moved[a:e] = ref[a:e] @ rot.T + rng.normal(size=3) * 3.0
        distorted[a:e] = moved[a:e] + 0.2 * rng.normal(size=(e - a, 3))
        shuffled[a:e] = moved[a:e][rng.permutation(e - a)]
    for errors in (distance_errors, kabsch_errors, spectrum_errors):
        assert float(jnp.abs(errors(jnp.asarray(moved, jnp.float32), g)).max()) < 1e-5
    # the spectrum does not know which atom is which; the other two do
    assert float(jnp.abs(spectrum_errors(jnp.asarray(shuffled, jnp.float32), g)).max()) < 1e-5
    assert float(distance_errors(jnp.asarray(shuffled, jnp.float32), g)[:3].min()) > 0.1
    spec = np.asarray(spectrum_errors(jnp.asarray(distorted, jnp.float32), g))
    dist = np.asarray(distance_errors(jnp.asarray(distorted, jnp.float32), g))
    kab = np.asarray(kabsch_errors(jnp.asarray(distorted, jnp.float32), g))
    for k, (a, e) in enumerate(_molecules(g)):
        # the graphs list every pair once: the distance error is the mean over all n(n-1)/2 pairs
        i, j = np.triu_indices(e - a, 1)
        d_hat = np.linalg.norm(distorted[a:e][i] - distorted[a:e][j], axis=1)
        d = np.linalg.norm(ref[a:e][i] - ref[a:e][j], axis=1)
        np.testing.assert_allclose(dist[k], np.mean((d_hat - d) ** 2), rtol=1e-4)
        np.testing.assert_allclose(spec[k], np.mean((np.sort(d_hat) - np.sort(d)) ** 2), rtol=1e-4)
        # Kabsch: mean over atoms and axes = RMSD² / 3
        np.testing.assert_allclose(kab[k], kabsch_rmsd(distorted[a:e], ref[a:e]) ** 2 / 3, rtol=1e-4)
    assert dist[3] == 0 and kab[3] == 0 and spec[3] == 0  # the padding graph


def test_bonds_are_rdkits_connectivity(qm9_small):
    """`bonded_pairs` on the clean structure is RDKit's DetermineConnectivity (same covalent radii,
    factor 1.3) on the first 400 QM9 molecules, up to pairs within 1 % of the threshold (RDKit
    calls a C-N pair at 1.919 Å bonded where 1.3 (0.76 + 0.71) = 1.911 Å); and no pair of atoms that are not bonded is called bonded through padding."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    mols, _ = qm9_small
    ids = list(range(400))
    g = _graph(mols, ids, n_graph=401)
    bonded = np.asarray(bonded_pairs(g, graph_masks(g).edge_mask))
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    table = Chem.GetPeriodicTable()
    agree, n_bonds = 0, 0
    for (a, e), i in zip(_molecules(g), ids):
        z, pos = mols.molecule(i)
        block = f"{len(z)}\n\n" + "\n".join(
            f"{table.GetElementSymbol(int(t))} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for t, p in zip(z, pos)
        )
        mol = Chem.MolFromXYZBlock(block)
        rdDetermineBonds.DetermineConnectivity(mol)
        theirs = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
        sel = bonded & (s >= a) & (s < e)
        ours = {tuple(sorted((int(x - a), int(y - a)))) for x, y in zip(s[sel], r[sel])}
        agree += ours == theirs
        n_bonds += len(ours)
        for p, q in ours ^ theirs:  # a disagreement may only be a pair at the threshold
            d = np.linalg.norm(pos[p] - pos[q])
            lim = 1.3 * (table.GetRcovalent(int(z[p])) + table.GetRcovalent(int(z[q])))
            assert abs(d - lim) < 1e-2 * lim, (i, p, q, d, lim)
    assert agree >= 398, agree
    assert n_bonds == int(bonded.sum())  # nothing on padding


VARIANTS_UNDER_TEST = ("frame_free_topology", "kabsch_topology")


def _variant(variant, features=32, heads=4):
    cfg = georecon_config.get_config(f"tiny+{variant}")
    cfg.model.encoder.update(num_layers=1, features=features, num_heads=heads, num_rbf=8)
    cfg.model.decoder.update(code_dim=8, num_heads=heads, num_rbf=8)
    return cfg, get_objective(cfg)


def test_unknown_variant_is_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="frame_free_topology"):
        georecon_config.get_config("tiny+frame_free_topologyy")


@pytest.mark.parametrize("variant", ["frame_free_topology", "kabsch_topology"])
def test_variant_decoder_is_equivariant_and_reads_z(qm9_small, variant):
    """ε̂ of a variant's decoder (EDM about the centroid; bonds; atoms-only input for
    kabsch_topology) rotates with the perturbed molecule, ignores translations, and depends on z;
    with the decoder's output zeroed, EDM returns x̂₀ = c + c_skip (x - c)."""
    mols, _ = qm9_small
    g = _graph(mols, [123, 321], n_graph=3)
    cfg, objective = _variant(variant)
    model = objective.create_model()
    params = jitter(objective.init(model, g, jax.random.PRNGKey(0)), seed=2)
    den = objective.denoiser
    assert den.parametrization == "edm"
    n_graph = g.n_node.shape[0]
    code = jnp.asarray(np.random.default_rng(0).normal(size=(n_graph, 8)), jnp.float32)
    sigma = 3.0
    logs = jnp.full((g.nodes.positions.shape[0],), np.log(sigma), jnp.float32)
    x = g.nodes.positions + sigma * jnp.asarray(
        np.random.default_rng(1).normal(size=g.nodes.positions.shape), jnp.float32
    )

    @jax.jit
    def eps_hat(positions, code=code, params=params):
        return model.apply(params, g, positions, code, logs, den, method=decode)[0]

    assert_symmetric(eps_hat, [(x, "1o")], ["1o"], translate=[0])
    e = eps_hat(x)
    assert float(jnp.abs(eps_hat(x, 2 * code) - e).max()) > 1e-4
    # the preconditioning: F = 0 leaves x̂₀ = c + c_skip (x - c), i.e. ε̂ = (1 - c_skip)(x - c)/σ
    zeroed = jax.tree_util.tree_map(lambda a: a, params)
    zeroed["params"]["heads_decoder"]["out"] = jax.tree_util.tree_map(
        jnp.zeros_like, params["params"]["heads_decoder"]["out"]
    )
    e0 = np.asarray(eps_hat(x, params=zeroed))
    c_skip = cfg.objective.sigma_data**2 / (sigma**2 + cfg.objective.sigma_data**2)
    xs = np.asarray(x)
    for a, b in _molecules(g):
        c = xs[a:b].mean(0)
        np.testing.assert_allclose(e0[a:b], (1 - c_skip) * (xs[a:b] - c) / sigma, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS_UNDER_TEST)
def test_variant_loss_is_finite_and_reaches_every_part(qm9_small, variant):
    """One loss and gradient on real molecules: finite, positive, and every parameter group the
    variant adds (bond embedding, atom embedding of the bottleneck) receives a gradient, as do
    the encoder and the graph code."""
    mols, _ = qm9_small
    g = _graph(mols, list(range(4)), n_graph=5)
    cfg, objective = _variant(variant)
    assert objective.validate() == []
    model = objective.create_model()
    params = objective.init(model, g, jax.random.PRNGKey(0))
    loss_fn = objective.loss_fn(model)

    def total(p):
        losses, metrics = loss_fn(p, g, jax.random.PRNGKey(3))
        real = graph_masks(g).graph_mask & (g.globals.graph_id >= 0)
        return jnp.sum(jnp.where(real, losses, 0.0)) / real.sum(), metrics

    (loss, metrics), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert {"recon_loss", "recon_mse", "recon_distance_mse"} <= set(metrics)
    dec = cfg.model.decoder
    groups = {
        "encoder": grads["params"]["encoder"],
        "graph_code": grads["params"]["heads_graph_code"],
        "decoder": grads["params"]["heads_decoder"],
    }
    if dec.topology:
        groups["topology"] = grads["params"]["heads_decoder"]["topology"]
    if dec.input == "atoms":
        groups["atom_embedding"] = grads["params"]["heads_decoder"]["atom_embedding"]
    for name, tree in groups.items():
        leaves = jax.tree_util.tree_leaves(tree)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves), name
        assert max(float(jnp.abs(x).max()) for x in leaves) > 0, f"{name} gets no gradient"


def test_denoiser_of_the_default_config_is_the_caption():
    cfg = georecon_config.get_config("tiny")
    assert Denoiser.of(cfg) == Denoiser("eps", cfg.objective.sigma_data, "encoder")
    assert cfg.objective.loss == "eps_mse" and not cfg.model.decoder.topology
