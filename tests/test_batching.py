"""Padded batching: static budgets, jraph masks, determinism, and edges at perturbed positions."""

import jax
import jax.numpy as jnp
import numpy as np

from georecon_jax.graphs.batching import GraphBatcher, estimate_budgets, molecule_edges, pack_graphs
from georecon_jax.models.graph import graph_masks
from georecon_jax.models.et import edge_geometry


def test_budgets_cover_every_batch_and_padding_is_masked(qm9_small):
    mols, splits = qm9_small
    b = GraphBatcher(mols, splits["train"], 16, num_buckets=3)
    assert 1 <= len(b.budgets) <= 3
    shapes = set()
    for k in range(2 * b.steps_per_epoch):
        g = b.batch(k)
        shapes.add(g.nodes.positions.shape)
        sub = jax.tree_util.tree_map(lambda x: x[0], g)
        m = graph_masks(sub)
        assert int(m.graph_mask.sum()) == 16
        assert int(m.node_mask.sum()) == int(mols.n_atoms[b.batch_indices(k)].sum())
        assert not np.any(np.asarray(sub.nodes.atomic_numbers)[~np.asarray(m.node_mask)])
    assert len(shapes) <= len(b.budgets)


def test_batches_are_a_function_of_the_step(qm9_small):
    mols, splits = qm9_small
    a = GraphBatcher(mols, splits["train"], 8, seed=3)
    b = GraphBatcher(mols, splits["train"], 8, seed=3)
    for k in (0, 5, a.steps_per_epoch + 2):
        assert np.array_equal(a.batch_indices(k), b.batch_indices(k))
    assert not np.array_equal(a.batch_indices(0), a.batch_indices(a.steps_per_epoch))  # reshuffled
    epoch = np.concatenate([a.batch_indices(k) for k in range(a.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # no molecule twice in an epoch


def test_device_split_covers_the_global_batch(qm9_small):
    mols, splits = qm9_small
    b = GraphBatcher(mols, splits["train"], 8, num_devices=4)
    g = b.batch(0)
    assert g.n_node.shape == (4, 3)  # 2 molecules + 1 padding graph per device
    ids = np.sort(g.globals.graph_id[g.globals.graph_id >= 0])
    assert np.array_equal(ids, np.sort(b.batch_indices(0)))


def test_edges_cover_all_pairs_within_cutoff_at_perturbed_positions(qm9_small):
    mols, _ = qm9_small
    idx = [100, 200, 300]
    budgets = estimate_budgets(mols.n_atoms, mols.n_atoms**2, 3, num_buckets=1)
    g = pack_graphs(mols, idx, budgets[-1])
    m = graph_masks(jax.tree_util.tree_map(jnp.asarray, g))
    rng = np.random.default_rng(0)
    for sigma in (0.04, 0.5, 2.0):
        noisy = g.nodes.positions + sigma * rng.normal(size=g.nodes.positions.shape).astype(np.float32)
        _, _, active = edge_geometry(jnp.asarray(noisy), g.senders, g.receivers, m.edge_mask, 5.0)
        active = np.asarray(active)
        have = set(zip(g.senders[active].tolist(), g.receivers[active].tolist()))
        start = np.concatenate([[0], np.cumsum(g.n_node)])
        want = set()
        for gi in range(len(idx)):
            a, b = start[gi], start[gi + 1]
            d = np.linalg.norm(noisy[a:b, None] - noisy[None, a:b], axis=-1)
            r, s = np.nonzero((d < 5.0) & np.triu(np.ones_like(d, bool), k=1))  # each pair once
            want |= set(zip((s + a).tolist(), (r + a).tolist()))
        assert have == want, sigma


def test_radius_neighbor_list_matches_brute_force(qm9_small):
    mols, _ = qm9_small
    _, pos = mols.molecule(399)
    s, r = molecule_edges(pos, "radius", cutoff=3.0, skin=0.0)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    assert np.all(r < s)  # each unordered pair once, no self-pairs
    assert len(set(zip(s.tolist(), r.tolist()))) == len(s)
    assert len(s) == int(((d < 3.0).sum() - len(pos)) // 2)
    assert np.all(d[r, s] < 3.0)
    s_all, r_all = molecule_edges(pos, "all_pairs")
    assert len(s_all) == len(pos) * (len(pos) - 1) // 2 and np.all(r_all < s_all)


def test_edge_counts_are_the_lengths_of_the_edge_lists(qm9_small, monkeypatch):
    """edge_counts (by atom count, in chunks) equals len(molecule_edges) molecule by molecule, with
    chunks smaller than one atom-count group and one molecule of a single atom."""
    from georecon_jax.data.records import Molecules
    from georecon_jax.graphs import batching

    mols, _ = qm9_small
    monkeypatch.setattr(batching, "RADIUS_CHUNK", 500)
    one = Molecules(  # a lone atom has no pair
        np.concatenate([mols.atomic_numbers[:1], mols.atomic_numbers]),
        np.concatenate([mols.positions[:1], mols.positions]),
        np.concatenate([[0], mols.offsets + 1]),
    )
    for cutoff, skin in ((3.0, 0.0), (2.0, 0.5), (5.0, 0.0)):
        got = batching.edge_counts(one, "radius", cutoff, skin)
        want = [len(molecule_edges(one.molecule(m)[1], "radius", cutoff, skin)[0]) for m in range(len(one))]
        assert got.tolist() == want and got[0] == 0
    assert (batching.edge_counts(one, "all_pairs", 5.0, 0.0) == one.n_atoms * (one.n_atoms - 1) // 2).all()
