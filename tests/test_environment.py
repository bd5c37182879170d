"""The 3DMRL virtual environment: rigid copies, anchor geometry, uniform rotations, anchors off rings."""

import functools

import jax
import numpy as np
import pytest

from georecon_jax.objectives.environment import (
    radius_adjacency,
    random_rotations,
    sample_environment,
    sample_environments,
)

N1, N2, K = 10, 7, 5


def _pair(seed=0, n1=8, n2=5, ring=None):
    rng = np.random.default_rng(seed)
    pos1 = np.zeros((N1, 3), np.float32)
    pos1[:n1] = rng.normal(size=(n1, 3)) * 2
    pos2 = np.zeros((N2, 3), np.float32)
    pos2[:n2] = rng.normal(size=(n2, 3)) * 1.5 + 4.0
    mask1, mask2 = np.arange(N1) < n1, np.arange(N2) < n2
    in_ring = np.zeros(N1, bool) if ring is None else ring
    return pos1, mask1, in_ring, pos2, mask2


def _pdist(x):
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


def _sample(key, pos1, mask1, ring, pos2, mask2, **options):
    """`sample_environment` compiled (``options`` static), on the host: run eagerly, its per-copy
    loop of small ops dispatches one by one, several times slower than one compile."""
    fn = jax.jit(functools.partial(sample_environment, **options))
    return jax.device_get(fn(key, pos1, mask1, ring, pos2, mask2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_copies_are_rigid_and_centred_at_radius_from_anchor(seed):
    pos1, mask1, ring, pos2, mask2 = _pair(seed)
    env = jax.jit(lambda k: sample_environment(k, pos1, mask1, ring, pos2, mask2, num_copies=K))(
        jax.random.PRNGKey(seed)
    )
    env = jax.device_get(env)
    ref = pos2[mask2]
    radius = np.max(np.linalg.norm(ref - ref.mean(0), axis=-1))
    assert np.isclose(env.radius, radius, atol=1e-5)
    copies = env.positions[N1:].reshape(K, N2, 3)
    assert env.copy_mask.all()
    for k in range(K):
        c = copies[k][mask2]
        np.testing.assert_allclose(_pdist(c), _pdist(ref), atol=2e-4)  # internal geometry kept
        np.testing.assert_allclose(np.linalg.norm(c.mean(0) - pos1[env.anchors[k]]), radius, atol=2e-4)
        np.testing.assert_allclose(c.mean(0), env.centroids[k], atol=2e-4)
        assert np.isclose(np.linalg.det(env.rotations[k]), 1.0, atol=1e-5)
        np.testing.assert_allclose(env.rotations[k] @ env.rotations[k].T, np.eye(3), atol=1e-5)
        # copy = R (pos2 - centroid) + centroid_k, i.e. a proper rotation (no reflection)
        np.testing.assert_allclose(c, (ref - ref.mean(0)) @ env.rotations[k].T + env.centroids[k], atol=2e-4)
        # targets: unit vectors from the anchor to each copy atom
        t = env.targets[N1:].reshape(K, N2, 3)[k][mask2]
        want = c - pos1[env.anchors[k]]
        np.testing.assert_allclose(t, want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-4)
    # molecule 1 is untouched, padding slots are empty
    np.testing.assert_allclose(env.positions[:N1][mask1], pos1[mask1])
    assert not env.node_mask[N1:].reshape(K, N2)[:, ~mask2].any()
    assert (env.molecule[:N1] == 0).all() and (env.molecule[N1:] == 1).all()


def test_anchors_are_distinct_non_ring_atoms_when_any_exist():
    ring = np.zeros(N1, bool)
    ring[:5] = True  # atoms 0-4 in a ring; 5, 6, 7 real non-ring
    pos1, mask1, _, pos2, mask2 = _pair(0, n1=8, ring=ring)
    envs = jax.device_get(
        jax.jit(jax.vmap(lambda k: sample_environment(k, pos1, mask1, ring, pos2, mask2, num_copies=K)))(
            jax.random.split(jax.random.PRNGKey(0), 200)
        )
    )
    assert (envs.copy_mask.sum(1) == 3).all()  # only 3 candidates: 3 copies
    anchors = envs.anchors[envs.copy_mask].reshape(200, 3)
    assert set(np.unique(anchors)) == {5, 6, 7}  # atom ids, never ring atoms or padding
    assert all(len(set(a)) == 3 for a in anchors)
    # every atom in a ring: any real atom may anchor
    all_ring = mask1.copy()
    envs = jax.device_get(
        jax.jit(jax.vmap(lambda k: sample_environment(k, pos1, mask1, all_ring, pos2, mask2, num_copies=K)))(
            jax.random.split(jax.random.PRNGKey(1), 200)
        )
    )
    assert envs.copy_mask.all()
    assert set(np.unique(envs.anchors)) == set(range(8))


def test_rotations_are_uniform_on_so3():
    R = np.asarray(random_rotations(jax.random.PRNGKey(0), (20000,)), np.float64)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    assert np.abs(R.mean(0)).max() < 0.02  # Haar measure: E[R] = 0
    # rotation angle θ has density (1 - cos θ)/π on [0, π]: CDF (θ - sin θ)/π; Kolmogorov–Smirnov
    theta = np.sort(np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    cdf = (theta - np.sin(theta)) / np.pi
    n = len(theta)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / np.sqrt(n), ks  # α = 0.001
    # a uniform angle (a common mistake) is rejected by the same test
    bad = np.sort(np.random.default_rng(0).uniform(0, np.pi, n))
    bad_cdf = (bad - np.sin(bad)) / np.pi
    assert np.max(np.abs(np.arange(1, n + 1) / n - bad_cdf)) > 1.95 / np.sqrt(n)


def test_resampled_per_key_and_batched():
    pos1, mask1, ring, pos2, mask2 = _pair(3)
    B = 4
    stack = lambda x: np.stack([x] * B)
    f = jax.jit(
        lambda k: sample_environments(
            k, stack(pos1), stack(mask1), stack(ring), stack(pos2), stack(mask2), num_copies=K
        )
    )
    a, b, a2 = f(jax.random.PRNGKey(0)), f(jax.random.PRNGKey(1)), f(jax.random.PRNGKey(0))
    assert a.positions.shape == (B, N1 + K * N2, 3)
    np.testing.assert_array_equal(a.positions, a2.positions)
    assert not np.allclose(a.positions, b.positions)
    assert not np.allclose(a.positions[0], a.positions[1])  # each pair draws its own environment


def test_min_distance_rejection_and_min_radius():
    pos1, mask1, ring, pos2, mask2 = _pair(4)
    first = pos1[mask1]

    def closest(env):
        """Closest approach (Å) of a copy to molecule 1 and of two copies to each other."""
        copies = env.positions[N1:].reshape(3, N2, 3)[:, mask2]
        d = [np.linalg.norm(copies.reshape(-1, 3)[:, None] - first[None], axis=-1).min()]
        d += [
            np.linalg.norm(copies[i][:, None] - copies[j][None], axis=-1).min()
            for i in range(3)
            for j in range(i)
        ]
        return min(d)

    # 2 Å: one trial clashes for this pair, 64 trials find clash-free places (so the check can fail)
    env = _sample(
        jax.random.PRNGKey(0), pos1, mask1, ring, pos2, mask2, num_copies=3, min_distance=2.0, num_trials=64
    )
    assert env.clashes == 0
    assert closest(env) >= 2.0 - 1e-4
    assert env.node_mask.sum() == mask1.sum() + 3 * mask2.sum()
    once = _sample(
        jax.random.PRNGKey(0), pos1, mask1, ring, pos2, mask2, num_copies=3, min_distance=2.0, num_trials=1
    )
    assert once.clashes > 0 and closest(once) < 2.0
    # a one-atom second molecule has radius 0; min_radius keeps it off its anchor
    one = np.arange(N2) < 1
    env = _sample(jax.random.PRNGKey(0), pos1, mask1, ring, pos2, one, num_copies=2, min_radius=1.5)
    assert np.isclose(env.radius, 1.5)
    d = np.linalg.norm(env.positions[N1:].reshape(2, N2, 3)[:, 0] - pos1[env.anchors], axis=-1)
    np.testing.assert_allclose(d, 1.5, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(env.targets[N1:].reshape(2, N2, 3)[:, 0], axis=-1), 1.0, atol=1e-5
    )


def test_radius_adjacency_matches_brute_force():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(2, 12, 3)).astype(np.float32) * 3
    mask = rng.random((2, 12)) < 0.8
    adj = np.asarray(radius_adjacency(pos, mask, 5.0))
    d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)
    want = (d < 5.0) & mask[:, :, None] & mask[:, None, :] & ~np.eye(12, dtype=bool)
    np.testing.assert_array_equal(adj, want)


def test_atom_budget_compacts_real_atoms_and_cuts_whole_copies():
    pos1, mask1, ring, pos2, mask2 = _pair(5, n1=8, n2=5)  # 8 + 5·5 = 33 real atoms
    full = _sample(jax.random.PRNGKey(0), pos1, mask1, ring, pos2, mask2, num_copies=K)
    small = _sample(
        jax.random.PRNGKey(0), pos1, mask1, ring, pos2, mask2, num_copies=K, max_atoms=24
    )  # room for (24 - 8) // 5 = 3 copies
    assert small.positions.shape == (24, 3)
    assert small.copy_mask.sum() == 3 and small.copies_cut == 2
    assert small.node_mask[: 8 + 15].all() and not small.node_mask[8 + 15 :].any()
    # the kept atoms are exactly the full environment's molecule 1 and first three copies
    keep = full.node_mask & (full.slot_copy < 3)
    np.testing.assert_allclose(small.positions[small.node_mask], full.positions[keep], atol=1e-6)
    np.testing.assert_array_equal(small.slot_atom[small.node_mask], full.slot_atom[keep])
    np.testing.assert_allclose(small.targets[small.node_mask], full.targets[keep], atol=1e-6)


def test_reference_forms_reproduce_the_reference_defects():
    """environment.anchors='reference': with more than K non-ring candidates the anchors are
    positions in the candidate list used as atom ids (ring atoms included); with K or fewer, the
    candidates. environment.rotations='reference': proper rotations whose mean trace is 1 (angle
    uniform in [0, 2π)), not the Haar measure's 0."""
    from georecon_jax.objectives.environment import reference_rotations

    ring = np.zeros(N1, bool)
    ring[:4] = True  # atoms 0-3 in a ring; 4..9 non-ring: 6 candidates > K = 5
    pos1, _, _, pos2, mask2 = _pair(0, n1=10, ring=ring)
    mask1 = np.ones(N1, bool)

    def anchors(form, ring):
        f = jax.vmap(
            lambda k: (
                sample_environment(k, pos1, mask1, ring, pos2, mask2, num_copies=K, anchors=form).anchors
            )
        )
        return np.asarray(jax.jit(f)(jax.random.split(jax.random.PRNGKey(0), 300)))

    ref, ours = anchors("reference", ring), anchors("atom", ring)
    assert set(np.unique(ref)) == set(range(6))  # positions 0..5 of the 6 candidates: ring atoms 0-3
    assert set(np.unique(ours)) == set(range(4, 10))  # the non-ring atoms themselves
    assert all(len(set(a)) == K for a in ref)
    few = np.ones(N1, bool)
    few[[2, 7]] = False  # 2 candidates <= K: the reference takes the candidates themselves
    assert set(np.unique(anchors("reference", few)[:, :2])) == {2, 7}
    with pytest.raises(ValueError, match="environment.anchors"):
        sample_environment(jax.random.PRNGKey(0), pos1, mask1, ring, pos2, mask2, anchors="ring")

    R = np.asarray(reference_rotations(jax.random.PRNGKey(0), (20000,)), np.float64)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    assert abs(np.trace(R, axis1=1, axis2=2).mean() - 1.0) < 0.03
    assert (
        abs(np.trace(np.asarray(random_rotations(jax.random.PRNGKey(0), (20000,))), axis1=1, axis2=2).mean())
        < 0.03
    )
