"""3DMRL's virtual interaction environment, as vectorised JAX (vmap over pairs, jit-friendly).

For one pair (molecule 1 with N1 padded atoms, molecule 2 with N2), `sample_environment` places up
to K rigid copies of molecule 2 around molecule 1:

  * anchors: K distinct atoms of molecule 1 drawn uniformly among its real non-ring atoms (all its
    real atoms if every atom is in a ring); the anchor is an *atom id* (the reference
    implementation took positions in the candidate list for atom ids, so ring atoms got picked;
    ``anchors='reference'`` reproduces that).
    With fewer candidates than K, only that many copies are placed (``copy_mask``).
  * each copy: the conformer of molecule 2 centred on its centroid, rotated by R uniform on SO(3)
    (a normalised 4-D Gaussian is a uniform unit quaternion; ``rotations='reference'``: the
    reference's axis-angle draw, not uniform), translated so that its centroid is at
    anchor + r·u, u uniform on the unit sphere, r = max(copy radius, ``min_radius``); the copy
    radius is the largest centroid–atom distance. ``min_radius`` (default 0) only matters for
    one-atom molecules (radius 0, e.g. water without hydrogens), which would otherwise sit on top
    of the anchor and have no anchor->atom direction.
  * optional clash rejection (``min_distance`` > 0; 3DMRL has none): ``num_trials`` placements are
    drawn per copy at once; the first whose atoms keep ``min_distance`` from molecule 1 and from the
    copies placed before it is taken, else the trial with the largest minimum distance (counted in
    ``clashes``).
  * targets: the unit vector from the anchor to every atom of its copy (the "force" label).

Everything is a fixed-shape array; the environment has M = N1 + K·N2 atom slots (molecule 1 first,
then copy k's N2 slots). `radius_adjacency` builds the radius graph on device as all M² pairs
masked by the cutoff, so the edge budget is fixed and cannot overflow.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from georecon_jax.models.mrl3d import radius_adjacency  # noqa: F401  (re-exported: the environment's graph)


class Environment(NamedTuple):
    positions: jax.Array  # [M, 3] Å (batched: [B, M, 3]); molecule 1's atoms, then the copies'
    node_mask: jax.Array  # [M] bool, real atom of molecule 1 or of a placed copy
    molecule: jax.Array  # [M] int32: 0 molecule 1, 1 a copy of molecule 2
    slot_copy: jax.Array  # [M] int32: which copy the slot's atom belongs to (0 for molecule 1)
    slot_atom: jax.Array  # [M] int32: the atom's index within its own molecule
    targets: jax.Array  # [M, 3] unit vector anchor -> atom (copy atoms; 0 elsewhere)
    target_mask: jax.Array  # [M] bool, slot carries a force target
    anchors: jax.Array  # [K] int32 atom ids in molecule 1
    copy_mask: jax.Array  # [K] bool, copy placed
    centroids: jax.Array  # [K, 3] Å
    rotations: jax.Array  # [K, 3, 3]
    radius: jax.Array  # [] Å, offset of every copy's centroid from its anchor
    clashes: jax.Array  # [] int32, copies placed although no trial met min_distance
    copies_cut: jax.Array  # [] int32, copies left out to fit the atom budget ``max_atoms``


def quaternion_to_rotation(q):
    """Unit quaternion(s) (w, x, y, z) [..., 4] -> rotation matrices [..., 3, 3]."""
    w, x, y, z = jnp.moveaxis(q, -1, 0)
    return jnp.stack(
        [
            jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            jnp.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            jnp.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def random_rotations(key, shape=()):
    """Rotations uniform on SO(3) (Haar measure), [*shape, 3, 3]."""
    q = jax.random.normal(key, tuple(shape) + (4,))
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    return quaternion_to_rotation(q)


def reference_rotations(key, shape=()):
    """The reference's rotations (Namkyeong/3DMRL MI/utils/chem.py generate_random_axis_angle,
    create_rotation_matrix; applied as ``pos @ R``): an axis normalised from a uniform cube, an
    angle uniform in [0, 2π), so not uniform on SO(3) (E[trace] = 1 where the Haar measure gives
    0). Returned as the matrix that multiplies column vectors, i.e. the reference's R transposed."""
    k_axis, k_angle = jax.random.split(key)
    axis = jax.random.uniform(k_axis, tuple(shape) + (3,)) - 0.5
    axis = axis / jnp.maximum(jnp.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
    angle = jax.random.uniform(k_angle, tuple(shape), minval=0.0, maxval=2 * jnp.pi)
    half = angle / 2  # Rodrigues' rotation about axis by angle, as a unit quaternion
    q = jnp.concatenate([jnp.cos(half)[..., None], jnp.sin(half)[..., None] * axis], axis=-1)
    return jnp.swapaxes(quaternion_to_rotation(q), -1, -2)


def random_unit_vectors(key, shape=()):
    """Directions uniform on the unit sphere, [*shape, 3]."""
    u = jax.random.normal(key, tuple(shape) + (3,))
    return u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-12)


def choose_anchors(key, mask1, in_ring1, num_copies: int, form: str = "atom"):
    """K distinct anchor atom ids among non-ring atoms (all atoms if none), and which are real.

    ``form='reference'``: the reference's defect (MI/datasets_pretrain/solvation.py
    get_virtual_environment: ``not_ring_idx = perm[:sample]``): with more than K candidates, K
    distinct *positions in the candidate list* (0 .. n_candidates - 1) are used as atom ids, so
    the anchors are the first atoms of the molecule, ring atoms included; with K or fewer, the
    candidates themselves, as in the default form."""
    if form not in ANCHOR_FORMS:
        raise ValueError(f"environment.anchors={form!r}: use one of {ANCHOR_FORMS}")
    non_ring = mask1 & ~in_ring1
    candidates = jnp.where(jnp.any(non_ring), non_ring, mask1)
    u = jax.random.uniform(key, mask1.shape)
    _, anchors = jax.lax.top_k(jnp.where(candidates, u, -1.0), num_copies)  # atom ids
    n = jnp.sum(candidates)
    if form == "reference":
        _, positions = jax.lax.top_k(jnp.where(jnp.arange(mask1.shape[0]) < n, u, -1.0), num_copies)
        anchors = jnp.where(n > num_copies, positions, anchors)
    copy_mask = jnp.arange(num_copies) < n
    return anchors.astype(jnp.int32), copy_mask


ANCHOR_FORMS = ("atom", "reference")
ROTATION_FORMS = ("uniform", "reference")


def _min_distance(trials, mask, occupied, occ_mask):
    """Smallest distance between the real atoms of each trial placement trials [T, n, 3] (mask [n])
    and the occupied atoms [m, 3] (occ_mask [m]); [T], inf if none."""
    d = jnp.linalg.norm(trials[:, :, None, :] - occupied[None, None, :, :], axis=-1)  # [T, n, m]
    ok = mask[None, :, None] & occ_mask[None, None, :]
    return jnp.min(jnp.where(ok, d, jnp.inf), axis=(1, 2))


def sample_environment(
    key,
    pos1,
    mask1,
    in_ring1,
    pos2,
    mask2,
    *,
    num_copies: int = 5,
    min_radius: float = 0.0,
    min_distance: float = 0.0,
    num_trials: int = 8,
    max_atoms: Optional[int] = None,
    anchors: str = "atom",
    rotations: str = "uniform",
) -> Environment:
    """One pair's environment. pos1 [N1, 3], mask1/in_ring1 [N1]; pos2 [N2, 3], mask2 [N2].

    ``anchors`` / ``rotations``: 'atom' / 'uniform' (corrected, the defaults) or 'reference' (the
    reference implementation's forms: `choose_anchors`, `reference_rotations`).

    ``max_atoms`` (default N1 + K·N2: no compaction) is the environment's atom budget M: a pair
    gets at most (M − n1) // n2 copies (the rest are counted in ``copies_cut``), and its real atoms
    are compacted into the first slots, so that M can be far below N1 + K·N2 (small molecules are
    padded to the largest one). Without compaction, slot N1 + k·N2 + j holds atom j of copy k.
    """
    pos1, mask1, in_ring1, pos2, mask2 = map(jnp.asarray, (pos1, mask1, in_ring1, pos2, mask2))
    N1, N2, K = pos1.shape[0], pos2.shape[0], num_copies
    k_anchor, k_dir, k_rot = jax.random.split(key, 3)
    if rotations not in ROTATION_FORMS:
        raise ValueError(f"environment.rotations={rotations!r}: use one of {ROTATION_FORMS}")
    rotation_fn = reference_rotations if rotations == "reference" else random_rotations
    anchor_ids, copy_mask = choose_anchors(k_anchor, mask1, in_ring1, K, anchors)
    copy_mask = copy_mask & jnp.any(mask2)
    M = N1 + K * N2 if max_atoms is None else int(max_atoms)
    if max_atoms is not None:
        if M < N1 + N2:
            raise ValueError(f"environment budget {M} < N1 + N2 = {N1 + N2}: not even one copy fits")
        room = (M - jnp.sum(mask1)) // jnp.maximum(jnp.sum(mask2), 1)
        fits = jnp.arange(K) < room
        copies_cut = jnp.sum(copy_mask & ~fits).astype(jnp.int32)
        copy_mask = copy_mask & fits
    else:
        copies_cut = jnp.zeros((), jnp.int32)
    w2 = mask2.astype(pos2.dtype)
    centroid2 = jnp.sum(pos2 * w2[:, None], 0) / jnp.maximum(jnp.sum(w2), 1.0)
    centered = jnp.where(mask2[:, None], pos2 - centroid2, 0.0)  # [N2, 3]
    radius = jnp.maximum(jnp.max(jnp.linalg.norm(centered, axis=-1)), min_radius)
    anchor_pos = pos1[anchor_ids]  # [K, 3]

    trials = num_trials if min_distance > 0 else 1
    dirs = random_unit_vectors(k_dir, (K, trials))  # [K, T, 3]
    rots = rotation_fn(k_rot, (K, trials))  # [K, T, 3, 3]
    cents = anchor_pos[:, None, :] + radius * dirs  # [K, T, 3]
    placed = jnp.einsum("ktij,nj->ktni", rots, centered) + cents[:, :, None, :]  # [K, T, N2, 3]
    if min_distance > 0:
        chosen, clashes = [], jnp.zeros((), jnp.int32)
        occupied, occ_mask = pos1, mask1
        for k in range(K):
            dmin = _min_distance(placed[k], mask2, occupied, occ_mask)  # [T]
            ok = dmin >= min_distance
            pick = jnp.where(jnp.any(ok), jnp.argmax(ok), jnp.argmax(dmin))
            clashes = clashes + (copy_mask[k] & ~jnp.any(ok)).astype(jnp.int32)
            chosen.append(pick)
            occupied = jnp.concatenate([occupied, placed[k, pick]], 0)
            occ_mask = jnp.concatenate([occ_mask, mask2 & copy_mask[k]], 0)
        pick = jnp.stack(chosen)
    else:
        pick, clashes = jnp.zeros((K,), jnp.int32), jnp.zeros((), jnp.int32)
    take = lambda x: jnp.take_along_axis(x, pick.reshape((K, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    copies, centroids, rotations = take(placed), take(cents), take(rots)  # [K, N2, 3], [K, 3], [K, 3, 3]

    rel = copies - anchor_pos[:, None, :]
    dist = jnp.linalg.norm(rel, axis=-1)
    copy_atoms = copy_mask[:, None] & mask2[None, :]  # [K, N2]
    target_mask = copy_atoms & (dist > 1e-6)
    targets = jnp.where(target_mask[..., None], rel / jnp.where(target_mask, dist, 1.0)[..., None], 0.0)
    positions = jnp.concatenate(
        [
            jnp.where(mask1[:, None], pos1, 0.0),
            jnp.where(copy_atoms[..., None], copies, 0.0).reshape(K * N2, 3),
        ],
        0,
    )
    node_mask = jnp.concatenate([mask1, copy_atoms.reshape(-1)])
    molecule = jnp.concatenate([jnp.zeros((N1,), jnp.int32), jnp.ones((K * N2,), jnp.int32)])
    slot_copy = jnp.concatenate([jnp.zeros((N1,), jnp.int32), jnp.repeat(jnp.arange(K, dtype=jnp.int32), N2)])
    slot_atom = jnp.concatenate(
        [jnp.arange(N1, dtype=jnp.int32), jnp.tile(jnp.arange(N2, dtype=jnp.int32), K)]
    )
    all_targets = jnp.concatenate([jnp.zeros((N1, 3), pos1.dtype), targets.reshape(K * N2, 3)], 0)
    all_tmask = jnp.concatenate([jnp.zeros((N1,), bool), target_mask.reshape(-1)])
    slots = (positions, node_mask, molecule, slot_copy, slot_atom, all_targets, all_tmask)
    if max_atoms is not None:  # real atoms first (stable: molecule 1, then copy 0, 1, ...), keep M
        order = jnp.argsort(~node_mask, stable=True)[:M]
        slots = tuple(x[order] for x in slots)
    return Environment(
        *slots,
        anchors=anchor_ids,
        copy_mask=copy_mask,
        centroids=centroids,
        rotations=rotations,
        radius=radius,
        clashes=clashes,
        copies_cut=copies_cut,
    )


def sample_environments(key, pos1, mask1, in_ring1, pos2, mask2, **kwargs) -> Environment:
    """Batched `sample_environment`: inputs with a leading [B] axis; one key per pair."""
    keys = jax.random.split(key, pos1.shape[0])
    return jax.vmap(lambda k, a, b, c, d, e: sample_environment(k, a, b, c, d, e, **kwargs))(
        keys, pos1, mask1, in_ring1, pos2, mask2
    )
