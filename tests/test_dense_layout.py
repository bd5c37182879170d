"""The dense per-molecule layout (issue 18) against the pair layout.

Dense batches hold each molecule in N atom slots and no pair list (`graphs.batching.pack_dense`);
the models then work on [B, N, N] pair tensors with broadcasts and axis sums instead of gathers and
segment sums. It must be the same function of the same parameters: outputs, forces (-dE/dR) and
parameter gradients equal to the pair layout's on real QM9 and MD17 molecules, with padding in both
(padding atoms in the slots, an empty slot; padding atoms and pairs in the pair budget). The 4-device
data-parallel step and the no-recompilation check of the dense layout are in tests/test_parallel.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted, require_shared
from experiments.configs import common
from experiments.configs import finetune_md17 as md17_config
from experiments.configs import georecon as georecon_config
from georecon_jax.graphs.batching import (
    GraphBatcher,
    estimate_budgets,
    estimate_widths,
    pack_dense,
    pack_graphs,
    resolve_layout,
)
from georecon_jax.models.graph import dense_shape, graph_masks, real_graph_mask
from georecon_jax.models.pretrain import encode, make_encoder
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.registry import get_objective
from georecon_jax.tasks.pretrain import init_model
from symmetry import assert_symmetric, jitter


TOL = 1e-5  # relative, float32


def _both(mols, idx, forces=None):
    """The molecules ``idx`` in the pair layout (one budget, padding atoms and pairs) and in the
    dense layout (one empty slot, two padding atoms per slot beyond the largest molecule)."""
    n_pairs = mols.n_atoms * (mols.n_atoms - 1) // 2
    budget = estimate_budgets(mols.n_atoms, n_pairs, len(idx), num_buckets=1)[-1]
    gp = pack_graphs(mols, idx, budget, forces=forces)
    gd = pack_dense(mols, idx, len(idx) + 1, int(mols.n_atoms[idx].max()) + 2, forces=forces)
    return jax.tree_util.tree_map(jnp.asarray, gp), jax.tree_util.tree_map(jnp.asarray, gd)


def _real_atoms(g, per_atom):
    return per_atom[np.asarray(graph_masks(g).node_mask)]


def _real_graphs(g, per_graph):
    return per_graph[np.asarray(g.globals.graph_id) >= 0]


def _close(a, b, tol=TOL, what=""):
    """max |a - b| <= tol · max |a| (and a is not all zero: the comparison could not fail)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(a).max()
    assert scale > 0, f"{what}: all zero, the comparison proves nothing"
    err = np.abs(a - b).max()
    assert err <= tol * scale, f"{what}: max |Δ| {err:.3g} > {tol} x {scale:.3g}"


def _close_trees(a, b, tol=TOL, what=""):
    """Gradients: the whole tree within tol (relative to its norm), every leaf within 10 tol of its
    own largest entry or of 1e-3 the tree's (leaves whose gradient is ~0 by construction)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in la))
    diff = np.sqrt(sum(float(np.sum(np.square(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb)))
    assert norm > 0 and diff <= tol * norm, f"{what}: |Δ grad| {diff:.3g} > {tol} x {norm:.3g}"
    top = max(float(np.abs(x).max()) for x in la)
    for x, y in zip(la, lb):
        scale = max(float(np.abs(x).max()), 1e-3 * top)
        assert float(np.abs(np.asarray(x) - np.asarray(y)).max()) <= 10 * tol * scale, what


def test_dense_batches_masks_widths_and_layout_choice(qm9_small):
    mols, splits = qm9_small
    gp, gd = _both(mols, [5, 123, 321])
    assert dense_shape(gp) is None and dense_shape(gd) == (4, int(mols.n_atoms[[5, 123, 321]].max()) + 2)
    mp, md = graph_masks(gp), graph_masks(gd)
    assert int(mp.node_mask.sum()) == int(md.node_mask.sum()) == int(mols.n_atoms[[5, 123, 321]].sum())
    np.testing.assert_array_equal(_real_atoms(gp, gp.nodes.positions), _real_atoms(gd, gd.nodes.positions))
    np.testing.assert_array_equal(np.asarray(real_graph_mask(gd)), [True, True, True, False])
    # every molecule sits in its own slots: pooling per graph sees only its atoms
    counts = jax.ops.segment_sum(md.node_mask.astype(jnp.int32), md.node_graph, md.n_graph)
    np.testing.assert_array_equal(np.asarray(counts), [*mols.n_atoms[[5, 123, 321]], 0])
    # widths cover every batch; the batcher picks the smallest that fits
    b = GraphBatcher(mols, splits["train"], 8, num_devices=2, layout="dense", num_buckets=3)
    assert b.widths == estimate_widths(mols.n_atoms[splits["train"]], 8, 3)
    assert max(b.widths) == int(mols.n_atoms[splits["train"]].max())
    for k in range(4):
        batch, idx = b.batch(k), b.batch_indices(k)
        width = batch.nodes.atomic_numbers.shape[-1] // batch.n_node.shape[-1]
        assert width == min(w for w in b.widths if w >= mols.n_atoms[idx].max())
        assert sorted(batch.globals.graph_id.reshape(-1).tolist()) == sorted(idx.tolist())
    assert 0 < b.padding_fraction(4)[1] < 1
    # auto: dense only on TPUs and small molecules with all pairs; dense refuses a radius list
    assert resolve_layout("auto", 29, "all_pairs", 32, "cpu") == "pairs"
    assert resolve_layout("auto", 29, "all_pairs", 32, "gpu") == "pairs"
    assert resolve_layout("auto", 29, "all_pairs", 32, "tpu") == "dense"
    assert resolve_layout("auto", 60, "all_pairs", 32, "tpu") == "pairs"
    assert resolve_layout("auto", 29, "all_pairs", 24, "tpu") == "pairs"  # graph.dense_max_atoms
    assert resolve_layout("auto", 29, "radius", 32, "tpu") == "pairs"
    with pytest.raises(ValueError, match="neighbor_list='radius'"):
        resolve_layout("dense", 29, "radius", 32, "cpu")
    with pytest.raises(ValueError, match="graph.layout='sparse'"):
        resolve_layout("sparse", 29, "all_pairs", 32, "cpu")


@pytest.mark.parametrize("vec_norm", ["whitened"])
def test_encoder_outputs_forces_and_gradients_equal(qm9_small, vec_norm):
    """The ET with Coord's whitening vector norm (``vec_norm='whitened'``), in float64 (1e-9): its
    float32 forces carry ~3e-4 relative rounding error in either layout (measured against float64:
    2.9e-4 for both), more than the 1e-5 the layouts must agree to. ``vec_norm='none'`` passes in
    float32 at 1e-5 (measured; not repeated here for test time): the float32 comparisons of the ET
    are in the GeoRecon and MD17 tests below and in tests/test_parallel.py (Coord's step)."""
    mols, _ = qm9_small
    gp, gd = _both(mols, [5, 123, 321, 399])
    enc = make_encoder(common.encoder("tiny", features=32, num_heads=4, num_rbf=16, vec_norm=vec_norm))
    m = graph_masks(gp)
    args = (gp.nodes.atomic_numbers, gp.nodes.positions, gp.senders, gp.receivers, m.edge_mask, m.node_mask)
    params = jitter(jitted(enc.init)(jax.random.PRNGKey(0), *args))
    w = jax.random.normal(jax.random.PRNGKey(1), (32,))
    x64 = vec_norm == "whitened"
    dtype, tol = (jnp.float64, 1e-9) if x64 else (jnp.float32, TOL)

    def energy(p, g, pos):  # a scalar of every output: invariants and vector norms
        x, vec = encode(lambda *a: enc.apply(p, *a), g, pos)
        return jnp.sum(jnp.tanh(x) @ w.astype(dtype)) + 0.1 * jnp.sum(vec**2)

    @jax.jit
    def run(p, g):
        p = jax.tree_util.tree_map(lambda a: a.astype(dtype), p)
        pos = g.nodes.positions.astype(dtype)
        x, vec = encode(lambda *a: enc.apply(p, *a), g, pos)
        e, (gparams, gpos) = jax.value_and_grad(energy, argnums=(0, 2))(p, g, pos)
        return x, vec, e, gparams, -gpos

    with jax.enable_x64(x64):
        xp, vp, ep, gradp, fp = run(params, gp)
        xd, vd, ed, gradd, fd = run(params, gd)
    assert xd.dtype == dtype and xd.shape[0] == gd.nodes.positions.shape[0]  # flat atoms out
    _close(_real_atoms(gp, xp), _real_atoms(gd, xd), tol, what="scalars")
    _close(_real_atoms(gp, vp), _real_atoms(gd, vd), tol, what="vectors")
    _close(ep, ed, tol, what="energy")
    _close(_real_atoms(gp, fp), _real_atoms(gd, fd), tol, what="forces")
    _close_trees(gradp, gradd, tol, what="parameter gradients")
    assert float(np.abs(np.asarray(xd)[~np.asarray(graph_masks(gd).node_mask)]).max()) == 0.0  # padding


@pytest.mark.parametrize(
    "make_config,variant",
    [
        # GeoRecon's encoder, graph code, decoder with the bond topology, node-noise head, and the
        # frame-free distance loss (the dense layout's own pair distances). Coord's loss: the
        # one-step comparison of tests/test_parallel.py (loss, gradient norm and parameters).
        (georecon_config.get_config, "tiny+frame_free_topology"),
    ],
)
def test_pretraining_losses_and_gradients_equal(qm9_small, make_config, variant):
    """GeoRecon on the same molecules and noise in both layouts. Float32, so without the whitening
    vector norm (compared in float64 above)."""
    mols, splits = qm9_small
    config = make_config(variant)
    config.model.encoder.vec_norm = "none"
    bp = GraphBatcher(mols, splits["train"], 8, num_buckets=1)
    bd = GraphBatcher(mols, splits["train"], 8, num_buckets=1, layout="dense")
    objective = get_objective(config)
    model, params = init_model(objective, bp, jax.random.PRNGKey(0))
    params = jitter(params, 0.02)
    loss_fn = objective.loss_fn(model)

    def total(p, batch):  # the sum over the batch's real molecules
        g = jax.tree_util.tree_map(lambda a: a[0], batch)
        per_graph, _ = loss_fn(p, g, jax.random.PRNGKey(3))
        return jnp.sum(jnp.where(real_graph_mask(g), per_graph, 0.0))

    grad = jax.jit(jax.value_and_grad(total))
    for k in (0,):
        batch_p, batch_d = bp.batch(k), bd.batch(k)
        assert np.array_equal(np.sort(batch_p.globals.graph_id[batch_p.globals.graph_id >= 0]),
                              np.sort(batch_d.globals.graph_id[batch_d.globals.graph_id >= 0]))  # fmt: skip
        lp, gp = grad(params, jax.tree_util.tree_map(jnp.asarray, batch_p))
        ld, gd = grad(params, jax.tree_util.tree_map(jnp.asarray, batch_d))
        _close(lp, ld, what=f"{variant} loss, batch {k}")
        _close_trees(gp, gd, what=f"{variant} gradients, batch {k}")


def test_md17_energies_forces_and_force_gradients_equal():
    """The MD17 fine-tuning model (ET + torchmd-net's gated scalar head): energies, forces -dE/dR
    and the gradient of a force loss. The other heads read the same per-atom features through the
    same masked sums per molecule (whose per-slot counts the first test checks)."""
    from georecon_jax.data import md17

    frames, _ = md17.read_force_file(str(require_shared("rmd17/rmd17_aspirin_train_01.npz")))  # 21 atoms
    mols, forces = frames.to_molecules(energy_offset=float(frames.energies.mean()))
    gp, gd = _both(mols, [0, 7, 42], forces=forces)
    cfg = md17_config.get_config("tiny")
    model = create_property_model(cfg.model)
    params = jitter(jitted(model.init)(jax.random.PRNGKey(0), gp), 0.05)

    def energy_forces(p, g):
        def energy(pos):
            return jnp.sum(jnp.where(real_graph_mask(g), model.apply(p, g, pos).value, 0.0))

        return model.apply(p, g).value, -jax.grad(energy)(g.nodes.positions)

    @jax.jit
    def run(p, g):
        def force_loss(p):
            _, f = energy_forces(p, g)
            return jnp.sum(jnp.where(graph_masks(g).node_mask[:, None], (f - g.nodes.forces) ** 2, 0.0))

        e, f = energy_forces(p, g)
        return e, f, jax.grad(force_loss)(p)

    ep, fp, gradp = run(params, gp)
    ed, fd, gradd = run(params, gd)
    _close(_real_graphs(gp, ep), _real_graphs(gd, ed), what="energies")
    _close(_real_atoms(gp, fp), _real_atoms(gd, fd), what="forces")
    _close_trees(gradp, gradd, what="force-loss gradients")


def test_qm9_heads_outputs_and_gradients_equal(qm9_small):
    """The other fine-tuning heads on QM9 (the MLP, the dipole moment and the electronic spatial
    extent, whose centre of mass is a per-molecule sum) and Coord's node-noise head: outputs and
    parameter gradients equal in both layouts, float32. All heads in one compiled function."""
    from experiments.configs import finetune_qm9 as qm9_config
    from georecon_jax.objectives.supervised import init_params

    mols, _ = qm9_small
    gp, gd = _both(mols, [3, 77, 250, 391])
    cfg = qm9_config.get_config("tiny")
    cfg.model.encoder.update(num_layers=1, features=16, num_heads=2, num_rbf=8, vec_norm="none")
    models = {}
    for kind in ("mlp", "dipole", "spatial_extent"):
        cfg.model.head.kind = kind
        models[kind] = create_property_model(cfg.model)
    params = {
        k: jitter(init_params(m, gp, jax.random.PRNGKey(0), with_denoise=k == "mlp"), 0.05)
        for k, m in models.items()
    }
    w = jax.random.normal(jax.random.PRNGKey(2), (3,))

    @jax.jit
    def run(params, g):
        def outputs(params):
            values = {}
            for k, m in models.items():
                out = m.apply(params[k], g)
                values[k] = out.value
                if k == "mlp":
                    values["node_noise"] = m.apply(params[k], out.embedding, method=m.denoise)
            return values

        def scalar(params):  # every head's real molecules (and real atoms' noise) in one number
            v = outputs(params)
            real = real_graph_mask(g)
            total = sum(jnp.sum(jnp.where(real, v[k], 0.0)) for k in models)  # linear: no saturation
            return total + jnp.sum(jnp.where(graph_masks(g).node_mask, v["node_noise"] @ w, 0.0))

        return outputs(params), jax.grad(scalar)(params)

    vp, gradp = run(params, gp)
    vd, gradd = run(params, gd)
    for k in models:
        _close(_real_graphs(gp, vp[k]), _real_graphs(gd, vd[k]), what=f"{k} head")
        _close_trees(gradp[k], gradd[k], what=f"{k} head gradients")
    _close(_real_atoms(gp, vp["node_noise"]), _real_atoms(gd, vd["node_noise"]), what="node-noise head")


def test_dense_encoder_is_equivariant(qm9_small):
    """The ET on dense inputs [B, N, 3]: scalars invariant, vectors equivariant, both invariant to
    translations (e3nn's assert_equivariant, padding slots included)."""
    mols, _ = qm9_small
    _, gd = _both(mols, [123, 321])
    enc = make_encoder(common.encoder("tiny", vec_norm="none"))
    z = gd.nodes.atomic_numbers.reshape(dense_shape(gd))
    mask = graph_masks(gd).node_mask.reshape(dense_shape(gd))
    pos = gd.nodes.positions.reshape(dense_shape(gd) + (3,))
    params = jitter(jitted(enc.init)(jax.random.PRNGKey(0), z, pos, None, None, None, mask))
    assert_symmetric(
        lambda p: enc.apply(params, z, p, None, None, None, mask),
        [(pos, "1o")],
        ["0e", "channels"],
        translate=[0],
    )


def test_dense_decoder_is_equivariant(qm9_small):
    """GeoRecon's decoder (with the bond topology) on a dense batch: ε̂ rotates with the perturbed
    molecule and ignores translations, padding slots included; it reads the graph code."""
    from georecon_jax.objectives.georecon import decode
    from georecon_jax.objectives.registry import get_objective

    mols, _ = qm9_small
    _, gd = _both(mols, [123, 321])
    cfg = georecon_config.get_config("tiny+frame_free_topology")
    cfg.model.encoder.update(num_layers=1, features=16, num_heads=2, num_rbf=8)
    cfg.model.decoder.update(code_dim=8, num_layers=1, num_heads=2, num_rbf=8)
    objective = get_objective(cfg)
    model = objective.create_model()
    params = jitter(objective.init(model, gd, jax.random.PRNGKey(0)), seed=2)
    code = jnp.asarray(np.random.default_rng(0).normal(size=(gd.n_node.shape[0], 8)), jnp.float32)
    logs = jnp.full((gd.nodes.positions.shape[0],), -1.0)

    def eps_hat(positions, code=code):
        return model.apply(params, gd, positions, code, logs, objective.denoiser, method=decode)[0]

    assert_symmetric(eps_hat, [(gd.nodes.positions, "1o")], ["1o"], translate=[0])
    e = jax.jit(eps_hat)(gd.nodes.positions)
    assert float(jnp.abs(jax.jit(eps_hat)(gd.nodes.positions, 2 * code) - e).max()) > 1e-4
    assert float(jnp.abs(e[~graph_masks(gd).node_mask]).max()) == 0.0  # padding slots: no prediction
