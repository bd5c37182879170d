"""TorchMD-Net's equivariant transformer (Thölke & De Fabritiis, ICLR 2022) as Flax linen modules.

Follows torchmd-net's ``TorchMD_ET``: exp-normal radial basis times a cosine cutoff, neighbour
embedding, ``num_layers`` multi-head attention layers that update per-atom scalars ``x`` [n, F]
and vectors ``vec`` [n, 3, F], and a final layer norm of the scalars. Self-edges take part in
attention as in torchmd-net (``loop=True``) with a zero direction vector, and are left out of the
neighbour embedding. Differences: no ``max_num_neighbors`` limit (QM9/MD17 molecules are small);
edges are given as a candidate list and masked by the cutoff at the positions passed in.

**Edges are unordered pairs.** ``senders``/``receivers`` list each pair {i, j} of distinct atoms
once. Everything that depends only on the distance (radial basis, cutoff, the attention filters
``dk``/``dv``) is computed once per pair and used by both messages i→j and j→i; the self-edges,
whose distance is always 0, are computed per atom. This is the same function as torchmd-net's
edge list with both directions and self-loops, with half the filter work
(benchmarks/results/NOTES.md; ``tests/test_et_reference.py`` checks it against a directed reference).

All modules take plain arrays and are pure functions of (params, inputs).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

dense_init = nn.initializers.xavier_uniform()


def Dense(features: int, use_bias: bool = True, name=None) -> nn.Dense:
    """Linear layer initialised as torchmd-net's (Xavier-uniform weights, zero bias)."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=dense_init, name=name)


def silu(x):
    """x·sigmoid(x) written with tanh: the same function to float rounding, and 6-11 % faster
    encoder steps on XLA:CPU than ``1 / (1 + exp(-x))`` (benchmarks/results/NOTES.md)."""
    return x * (0.5 + 0.5 * jnp.tanh(0.5 * x))


def edge_geometry(positions, senders, receivers, edge_mask, cutoff: float):
    """Distances and unit vectors of the candidate edges, and which edges are within the cutoff.

    Args:
      positions: [n_node, 3] Å.  senders, receivers: [n_edge] int (each pair once, see the module
      docstring).  edge_mask: [n_edge] bool (False on padding edges).  cutoff: Å.

    Returns:
      distances [n_edge] (0 on self/padding edges), unit vectors [n_edge, 3] (sender - receiver,
      0 on self/padding edges), active [n_edge] bool (real edge with distance < cutoff).
    """
    assert positions.ndim == 2 and positions.shape[1] == 3, positions.shape
    vectors = positions[senders] - positions[receivers]            # [n_edge, 3]
    d2 = jnp.sum(vectors ** 2, axis=-1)                            # [n_edge]
    nonzero = d2 > 0
    distances = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, d2, 1.0)), 0.0)  # NaN-safe gradient
    units = jnp.where(nonzero[:, None], vectors / jnp.where(nonzero, distances, 1.0)[:, None], 0.0)
    active = edge_mask & (distances < cutoff)
    return distances, units, active


def cosine_cutoff(distances, cutoff: float):
    """0.5 (cos(π d / cutoff) + 1) for d < cutoff, else 0."""
    return jnp.where(distances < cutoff, 0.5 * (jnp.cos(distances * math.pi / cutoff) + 1.0), 0.0)


class Pairs(NamedTuple):
    """A batch's atom pairs, each unordered pair stored once, as the layers use them.

    Per pair p (of P): ``distances`` [P] Å, ``cutoff_weight`` [P] (cosine cutoff, 0 where not
    ``active``), ``active`` [P] bool. Per directed message (2P: pair p sends sender -> receiver at
    index p and receiver -> sender at p + P): ``senders``, ``receivers`` [2P] int, ``units`` [2P, 3]
    (unit vector sender - receiver). ``node_mask`` [n] bool: real atoms, the ones with a self-edge.
    """
    distances: jax.Array
    cutoff_weight: jax.Array
    active: jax.Array
    senders: jax.Array
    receivers: jax.Array
    units: jax.Array
    node_mask: jax.Array


def twice(per_pair):
    """A per-pair array [P, ...] repeated for the two messages of each pair -> [2P, ...]."""
    return jnp.concatenate([per_pair, per_pair], axis=0)


def make_pairs(positions, senders, receivers, edge_mask, node_mask, cutoff: float) -> Pairs:
    """`Pairs` from a pair list (each pair once; self-pairs and padding are masked out)."""
    distances, units, active = edge_geometry(positions, senders, receivers, edge_mask, cutoff)
    active = active & (senders != receivers)
    return Pairs(distances=distances, cutoff_weight=cosine_cutoff(distances, cutoff) * active,
                 active=active, senders=jnp.concatenate([senders, receivers]),
                 receivers=jnp.concatenate([receivers, senders]),
                 units=jnp.concatenate([units, -units]), node_mask=node_mask)


class ExpNormalSmearing(nn.Module):
    """Exp-normal radial basis (PhysNet / torchmd-net), multiplied by the cosine cutoff.

    φ_k(d) = f_cut(d) · exp(-β_k (exp(α(d_lower - d)) - μ_k)^2), α = 5 / (d_upper - d_lower).
    """
    num_rbf: int = 50
    cutoff_lower: float = 0.0
    cutoff_upper: float = 5.0
    trainable: bool = True

    @nn.compact
    def __call__(self, distances):                                  # [n_edge] -> [n_edge, num_rbf]
        start = math.exp(-self.cutoff_upper + self.cutoff_lower)
        means0 = jnp.linspace(start, 1.0, self.num_rbf)
        betas0 = jnp.full((self.num_rbf,), (2.0 / self.num_rbf * (1.0 - start)) ** -2)
        if self.trainable:
            means = self.param("means", lambda _: means0)
            betas = self.param("betas", lambda _: betas0)
        else:
            means, betas = means0, betas0
        alpha = 5.0 / (self.cutoff_upper - self.cutoff_lower)
        decay = jnp.exp(alpha * (-distances[:, None] + self.cutoff_lower))
        return cosine_cutoff(distances, self.cutoff_upper)[:, None] * jnp.exp(-betas * (decay - means) ** 2)


class NeighborEmbedding(nn.Module):
    """x_i <- W [x_i, Σ_j emb(Z_j) · (W_d φ(d_ij)) f_cut(d_ij)], self-edges excluded."""
    features: int
    max_z: int

    @nn.compact
    def __call__(self, atomic_numbers, x, rbf, pairs: Pairs):
        weight = Dense(self.features, name="distance_proj")(rbf) * pairs.cutoff_weight[:, None]  # [P, F]
        neighbors = nn.Embed(self.max_z + 1, self.features, name="embedding")(atomic_numbers)
        agg = jax.ops.segment_sum(neighbors[pairs.senders] * twice(weight), pairs.receivers,
                                  num_segments=x.shape[0])
        return Dense(self.features, name="combine")(jnp.concatenate([x, agg], axis=-1))


class EquivariantAttention(nn.Module):
    """One equivariant multi-head attention layer of torchmd-net (returns the updates dx, dvec).

    ``rbf`` [P, num_rbf] is the radial basis of the pairs (0 where not active) and ``rbf_self``
    [num_rbf] that of distance 0, used by every atom's self-edge. ``vec=None`` stands for
    vec = 0 (the encoder's first layer): the terms that multiply it are left out, which is the
    same function with 3-10 % less work for the encoder (benchmarks/results/NOTES.md).
    """
    features: int
    num_heads: int

    @nn.compact
    def __call__(self, x, vec, rbf, rbf_self, pairs: Pairs):
        n, F, H = x.shape[0], self.features, self.num_heads
        assert F % H == 0, f"features {F} not divisible by heads {H}"
        D = F // H
        x = nn.LayerNorm(epsilon=1e-5, name="layernorm")(x)
        q = Dense(F, name="q_proj")(x).reshape(n, H, D)
        k = Dense(F, name="k_proj")(x).reshape(n, H, D)
        v = Dense(3 * F, name="v_proj")(x).reshape(n, H, 3 * D)
        vec_proj = Dense(3 * F, use_bias=False, name="vec_proj")
        if vec is None:
            # First layer: vec = 0, so every term that multiplies it vanishes. The projection is
            # applied to one zero row only to create its parameter (gradient 0, as in torchmd-net).
            vec_proj(jnp.zeros((1, F), x.dtype))
        else:
            assert vec.shape == (n, 3, F), vec.shape
            vec1, vec2, vec3 = jnp.split(vec_proj(vec), 3, axis=-1)             # [n, 3, F] each
            vec_dot = jnp.sum(vec1 * vec2, axis=1)                               # [n, F]
        # Filters: once per pair, shared by its two messages; and once for distance 0.
        dk_proj, dv_proj = Dense(F, name="dk_proj"), Dense(3 * F, name="dv_proj")
        dk, dv = silu(dk_proj(rbf)), silu(dv_proj(rbf))                        # [P, F], [P, 3F]
        m = pairs.senders.shape[0]                                               # 2P messages
        dk, dv = twice(dk).reshape(m, H, D), twice(dv).reshape(m, H, 3 * D)
        # Messages from sender j to receiver i.
        s, r = pairs.senders, pairs.receivers
        attn = jnp.sum(q[r] * k[s] * dk, axis=-1)                                # [2P, H]
        attn = silu(attn) * twice(pairs.cutoff_weight)[:, None]
        msg_x, msg_v1, msg_v2 = jnp.split(v[s] * dv, 3, axis=-1)                 # [2P, H, D]
        msg_x = (msg_x * attn[..., None]).reshape(m, F)
        msg_vec = msg_v2.reshape(m, 1, F) * pairs.units[:, :, None]              # [2P, 3, F]
        if vec is not None:
            msg_vec = msg_vec + vec[s] * msg_v1.reshape(m, 1, F)
        msg_vec = msg_vec * twice(pairs.active)[:, None, None]
        agg_x = jax.ops.segment_sum(msg_x, r, num_segments=n)                    # [n, F]
        agg_vec = jax.ops.segment_sum(msg_vec, r, num_segments=n)                # [n, 3, F]
        # Self-edges: distance 0, cutoff 1, direction 0 (only the value part of vec survives).
        attn_self = silu(jnp.sum(q * k * silu(dk_proj(rbf_self)).reshape(H, D), axis=-1))  # [n, H]
        self_x, self_v1, _ = jnp.split(v * silu(dv_proj(rbf_self)).reshape(H, 3 * D), 3, axis=-1)
        real = pairs.node_mask[:, None]
        agg_x = agg_x + jnp.where(real, (self_x * attn_self[..., None]).reshape(n, F), 0.0)
        o1, o2, o3 = jnp.split(Dense(3 * F, name="o_proj")(agg_x), 3, axis=-1)
        if vec is None:
            return o3, agg_vec
        agg_vec = agg_vec + jnp.where(real[:, None], vec * self_v1.reshape(n, 1, F), 0.0)
        dx = vec_dot * o2 + o3
        dvec = vec3 * o1[:, None, :] + agg_vec
        return dx, dvec


def radial_basis(module: nn.Module, pairs: Pairs):
    """(rbf of the pairs [P, R], 0 where not active; rbf of distance 0 [R]) from an ExpNormalSmearing."""
    both = module(jnp.concatenate([pairs.distances, jnp.zeros((1,), pairs.distances.dtype)]))
    return both[:-1] * pairs.active[:, None], both[-1]


class EquivariantTransformer(nn.Module):
    """The TorchMD-Net ET encoder: (Z, R, pairs) -> scalars [n, F] (invariant), vectors [n, 3, F].

    Paper scale: num_layers=8, features=256, num_heads=8, num_rbf=64, cutoff=5 Å.
    """
    num_layers: int = 8
    features: int = 256
    num_heads: int = 8
    num_rbf: int = 64
    cutoff: float = 5.0
    max_z: int = 100
    trainable_rbf: bool = True

    @nn.compact
    def __call__(self, atomic_numbers, positions, senders, receivers, edge_mask,
                 node_mask) -> Tuple[jax.Array, jax.Array]:
        """Args: atomic_numbers [n] int, positions [n, 3] Å, senders/receivers [n_pair] int (each
        pair of distinct atoms once), edge_mask [n_pair] bool (False on padding), node_mask [n]
        bool (False on padding atoms: they get no self-edge, and zero outputs)."""
        n = atomic_numbers.shape[0]
        assert positions.shape == (n, 3), positions.shape
        pairs = make_pairs(positions, senders, receivers, edge_mask, node_mask, self.cutoff)
        rbf, rbf_self = radial_basis(
            ExpNormalSmearing(self.num_rbf, 0.0, self.cutoff, self.trainable_rbf, name="rbf"), pairs)
        x = nn.Embed(self.max_z + 1, self.features, name="embedding")(atomic_numbers)
        x = NeighborEmbedding(self.features, self.max_z, name="neighbor_embedding")(
            atomic_numbers, x, rbf, pairs)
        vec = None                                   # zero before the first layer
        for i in range(self.num_layers):
            dx, dvec = EquivariantAttention(self.features, self.num_heads, name=f"attention_{i}")(
                x, vec, rbf, rbf_self, pairs)
            x, vec = x + dx, (dvec if vec is None else vec + dvec)
        if vec is None:                              # num_layers = 0
            vec = jnp.zeros((n, 3, self.features), x.dtype)
        x = nn.LayerNorm(epsilon=1e-5, name="out_norm")(x)
        x = jnp.where(node_mask[:, None], x, 0.0)
        vec = jnp.where(node_mask[:, None, None], vec, 0.0)
        return x, vec
