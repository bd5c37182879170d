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
(benchmarks/results/NOTES.md). The encoder's first layer, where vec = 0, is its own small layer
(`FirstEquivariantAttention`) that leaves out the terms multiplying vec.

`georecon_jax.models.et_reference` writes the same encoder densely over ordered pairs, as the paper
reads, from the same parameters; ``tests/test_et_reference.py`` checks this module against it.

All modules take plain arrays and are pure functions of (params, inputs).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

dense_init = nn.initializers.xavier_uniform()


def Dense(features: int, use_bias: bool = True, name=None, zero: bool = False) -> nn.Dense:
    """Linear layer initialised as torchmd-net's (Xavier-uniform weights, zero bias); ``zero``:
    zero weights (a head's last layer with ``model.head.zero_init``)."""
    init = nn.initializers.zeros if zero else dense_init
    return nn.Dense(features, use_bias=use_bias, kernel_init=init, name=name)


EMBEDDING_INITS = ("normal", "scaled")
VEC_NORMS = ("none", "whitened", "whitened_reference")


def embedding_init(kind: str):
    """Initialiser of the atom-type embeddings: ``normal`` N(0, 1), as torch's ``nn.Embedding`` in
    torchmd-net; ``scaled`` N(0, 1/F), flax's default (this project's choice before 2026-12)."""
    if kind == "normal":
        return nn.initializers.normal(stddev=1.0)
    if kind == "scaled":
        return nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    raise ValueError(f"unknown embedding_init {kind!r}: use one of {EMBEDDING_INITS}")


def silu(x):
    """SiLU, x·sigmoid(x): the one SiLU of the models in ``georecon_jax.models``. Written with tanh,
    the same function to float rounding, and 6-11 % faster encoder steps on XLA:CPU than
    ``1 / (1 + exp(-x))`` (benchmarks/results/NOTES.md)."""
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
    distances, units = distances_and_units(positions[senders] - positions[receivers])  # [n_edge]
    active = edge_mask & (distances < cutoff)
    return distances, units, active


def distances_and_units(vectors):
    """Lengths [...] and unit vectors [..., 3] of ``vectors`` [..., 3]; 0 and 0 for a zero vector,
    with a finite (zero) gradient there."""
    d2 = jnp.sum(vectors**2, axis=-1)
    nonzero = d2 > 0
    distances = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, d2, 1.0)), 0.0)  # NaN-safe gradient
    units = jnp.where(nonzero[..., None], vectors / jnp.where(nonzero, distances, 1.0)[..., None], 0.0)
    return distances, units


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

    # How the layers reach the two ends of every message and sum messages per atom. The same
    # layer code runs on `Pairs` (flat [n, ...] atoms, [2P, ...] messages) and on `DensePairs`
    # ([B, N, ...] atoms, [B, N, N, ...] messages): only these four differ.
    def per_message(self, per_pair):
        """A per-pair array [P, ...] for the 2P messages."""
        return twice(per_pair)

    def at_sender(self, per_atom):
        return per_atom[self.senders]

    def at_receiver(self, per_atom):
        return per_atom[self.receivers]

    def sum_at_receiver(self, per_message, num_atoms: int):
        return jax.ops.segment_sum(per_message, self.receivers, num_segments=num_atoms)


class DensePairs(NamedTuple):
    """The dense per-molecule layout of `Pairs` (issue 18): B molecules of N atom slots each.

    Message (b, i, j) goes from sender j to receiver i of molecule b. ``distances`` [B, N, N] Å,
    ``cutoff_weight`` [B, N, N], ``active`` [B, N, N] bool (real distinct atoms within the cutoff;
    the diagonal is never active: self-edges are added per atom, as in `Pairs`), ``units``
    [B, N, N, 3] (unit vector r_j - r_i), ``node_mask`` [B, N]. No gathers and no segment sums:
    the ends of a message are broadcasts, its sum over senders an axis sum."""

    distances: jax.Array
    cutoff_weight: jax.Array
    active: jax.Array
    units: jax.Array
    node_mask: jax.Array

    def per_message(self, per_pair):
        return per_pair

    def at_sender(self, per_atom):  # [B, N, ...] -> [B, 1, N, ...]
        return per_atom[:, None]

    def at_receiver(self, per_atom):  # [B, N, ...] -> [B, N, 1, ...]
        return per_atom[:, :, None]

    def sum_at_receiver(self, per_message, num_atoms: int):  # [B, N, N, ...] -> [B, N, ...]
        return jnp.sum(per_message, axis=2)


def make_dense_pairs(positions, node_mask, cutoff: float) -> DensePairs:
    """`DensePairs` of molecules in atom slots: positions [B, N, 3] Å, node_mask [B, N] bool."""
    assert positions.ndim == 3 and positions.shape[-1] == 3, positions.shape
    distances, units = distances_and_units(positions[:, None, :, :] - positions[:, :, None, :])  # r_j - r_i
    n = positions.shape[1]
    real = node_mask[:, :, None] & node_mask[:, None, :] & ~jnp.eye(n, dtype=bool)
    active = real & (distances < cutoff)
    return DensePairs(
        distances=distances,
        cutoff_weight=cosine_cutoff(distances, cutoff) * active,
        active=active,
        units=units,
        node_mask=node_mask,
    )


def twice(per_pair):
    """A per-pair array [P, ...] repeated for the two messages of each pair -> [2P, ...]."""
    return jnp.concatenate([per_pair, per_pair], axis=0)


def make_pairs(positions, senders, receivers, edge_mask, node_mask, cutoff: float) -> Pairs:
    """`Pairs` from a pair list (each pair once; self-pairs and padding are masked out)."""
    distances, units, active = edge_geometry(positions, senders, receivers, edge_mask, cutoff)
    active = active & (senders != receivers)
    return Pairs(
        distances=distances,
        cutoff_weight=cosine_cutoff(distances, cutoff) * active,
        active=active,
        senders=jnp.concatenate([senders, receivers]),
        receivers=jnp.concatenate([receivers, senders]),
        units=jnp.concatenate([units, -units]),
        node_mask=node_mask,
    )


class ExpNormalSmearing(nn.Module):
    """Exp-normal radial basis (PhysNet / torchmd-net), multiplied by the cosine cutoff.

    φ_k(d) = f_cut(d) · exp(-β_k (exp(α(d_lower - d)) - μ_k)^2), α = 5 / (d_upper - d_lower).
    """

    num_rbf: int = 50
    cutoff_lower: float = 0.0
    cutoff_upper: float = 5.0
    trainable: bool = True

    @nn.compact
    def __call__(self, distances):  # [n_edge] -> [n_edge, num_rbf]
        start = math.exp(-self.cutoff_upper + self.cutoff_lower)
        means0 = jnp.linspace(start, 1.0, self.num_rbf)
        betas0 = jnp.full((self.num_rbf,), (2.0 / self.num_rbf * (1.0 - start)) ** -2)
        if self.trainable:
            means = self.param("means", lambda _: means0)
            betas = self.param("betas", lambda _: betas0)
        else:
            means, betas = means0, betas0
        alpha = 5.0 / (self.cutoff_upper - self.cutoff_lower)
        decay = jnp.exp(alpha * (-distances[..., None] + self.cutoff_lower))
        return cosine_cutoff(distances, self.cutoff_upper)[..., None] * jnp.exp(-betas * (decay - means) ** 2)


class NeighborEmbedding(nn.Module):
    """x_i <- W [x_i, Σ_j emb(Z_j) · (W_d φ(d_ij)) f_cut(d_ij)], self-edges excluded."""

    features: int
    max_z: int
    embedding_init: str = "normal"

    @nn.compact
    def __call__(self, atomic_numbers, x, rbf, pairs: Pairs):
        weight = Dense(self.features, name="distance_proj")(rbf) * pairs.cutoff_weight[..., None]  # [P, F]
        neighbors = nn.Embed(
            self.max_z + 1,
            self.features,
            embedding_init=embedding_init(self.embedding_init),
            name="embedding",
        )(atomic_numbers)
        agg = pairs.sum_at_receiver(pairs.at_sender(neighbors) * pairs.per_message(weight), x.shape[0])
        return Dense(self.features, name="combine")(jnp.concatenate([x, agg], axis=-1))


class AttentionMessages(NamedTuple):
    """What an attention layer gathers at every atom i from its neighbours j (self-edge included).

    With s_ij = v_j ∘ dv_ij split into three F-feature parts (s_x, s_vec, s_dir):

      y     [n, F]   Σ_j A_ij s_x_ij, the attention-weighted scalar messages (self-edge included);
      s_vec [2P, F]  per message j -> i, the gate of vec_j (0 where the pair is not active;
                     times f_cut(d_ij) with ``vector_cutoff``);
      s_dir [2P, F]  per message j -> i, the gate of the direction r̂_ij (as s_vec);
      s_vec_self [n, F]  the self-edge's gate of vec_i (0 on padding atoms). Its direction is 0.
    """

    y: jax.Array
    s_vec: jax.Array
    s_dir: jax.Array
    s_vec_self: jax.Array


class _AttentionBase(nn.Module):
    """The parts of torchmd-net's attention layer that do not involve the input vectors ``vec``.

    Used by `EquivariantAttention` and `FirstEquivariantAttention`; the helpers create their
    submodules by name in the calling layer (``layernorm``, ``q_proj``, ``k_proj``, ``v_proj``,
    ``dk_proj``, ``dv_proj``), so both layers have the same parameter tree.
    """

    features: int
    num_heads: int
    vector_cutoff: bool = False  # see `EquivariantTransformer`

    def _queries_keys_values(self, x):
        """q = W_Q LN(x), k = W_K LN(x), v = W_V LN(x): [n, H, D], [n, H, D], [n, H, 3D]."""
        F, H = self.features, self.num_heads
        lead = x.shape[:-1]  # [n] (pairs) or [B, N] (dense)
        assert x.shape[-1] == F, (x.shape, F)
        assert F % H == 0, f"features {F} not divisible by heads {H}"
        D = F // H
        x = nn.LayerNorm(epsilon=1e-5, name="layernorm")(x)
        q = Dense(F, name="q_proj")(x).reshape(lead + (H, D))
        k = Dense(F, name="k_proj")(x).reshape(lead + (H, D))
        v = Dense(3 * F, name="v_proj")(x).reshape(lead + (H, 3 * D))
        return q, k, v

    def _messages(self, q, k, v, rbf, rbf_self, pairs: Pairs) -> AttentionMessages:
        """Filters dk_ij = SiLU(W_dk φ(d_ij)), dv_ij = SiLU(W_dv φ(d_ij)) once per pair (shared by
        its two messages) and once for distance 0 (the self-edges); attention
        A_ij = SiLU(Σ_d q_i k_j dk_ij) f_cut(d_ij) per head; the messages of `AttentionMessages`.

        ``vector_cutoff`` (torchmd-net's option of that name): the cutoff weighs the values
        v_j ∘ dv_ij, all three parts, instead of the attention. The scalar message A_ij s_x_ij is
        the same product either way; the vector gates s_vec, s_dir get the factor f_cut(d_ij), so
        that every message goes to 0 (with a zero derivative) as d_ij reaches the cutoff. Without
        it they are cut off sharply there: dv_ij = SiLU(b_dv) ≠ 0 at φ = 0, so the energy jumps when
        a pair crosses the cutoff (tests/test_md_smoothness.py). Self-edges: f_cut(0) = 1."""
        H, D = q.shape[-2:]
        F, lead = H * D, q.shape[:-2]  # atoms: [n] or [B, N]
        assert rbf_self.shape == rbf.shape[-1:], (rbf.shape, rbf_self.shape)
        dk_proj, dv_proj = Dense(F, name="dk_proj"), Dense(3 * F, name="dv_proj")
        dk, dv = silu(dk_proj(rbf)), silu(dv_proj(rbf))  # [P, F], [P, 3F] (dense: [B, N, N, ...])
        dk, dv = pairs.per_message(dk), pairs.per_message(dv)  # messages: [2P] or [B, N, N]
        msg = dk.shape[:-1]
        dk, dv = dk.reshape(msg + (H, D)), dv.reshape(msg + (H, 3 * D))
        # Messages from sender j to receiver i.
        attn = jnp.sum(pairs.at_receiver(q) * pairs.at_sender(k) * dk, axis=-1)  # [msg, H]
        cut = pairs.per_message(pairs.cutoff_weight)[..., None]  # [msg, 1]  f_cut(d_ij), 0 if not active
        attn = silu(attn) * cut
        s_x, s_vec, s_dir = jnp.split(pairs.at_sender(v) * dv, 3, axis=-1)  # [msg, H, D] each
        y = pairs.sum_at_receiver((s_x * attn[..., None]).reshape(msg + (F,)), q.shape[0])  # [atoms, F]
        # The vector gates' weight per message [msg, 1]: f_cut(d_ij) (vector_cutoff), else 1 on the
        # active pairs; 0 beyond the cutoff and on padding either way.
        gate = cut if self.vector_cutoff else pairs.per_message(pairs.active)[..., None]
        # Self-edges: distance 0, cutoff weight 1, direction 0.
        attn_self = silu(jnp.sum(q * k * silu(dk_proj(rbf_self)).reshape(H, D), axis=-1))  # [atoms, H]
        self_x, self_vec, _ = jnp.split(v * silu(dv_proj(rbf_self)).reshape(H, 3 * D), 3, axis=-1)
        real = pairs.node_mask[..., None]  # [atoms, 1]
        y = y + jnp.where(real, (self_x * attn_self[..., None]).reshape(lead + (F,)), 0.0)
        return AttentionMessages(
            y=y,
            s_vec=s_vec.reshape(msg + (F,)) * gate,
            s_dir=s_dir.reshape(msg + (F,)) * gate,
            s_vec_self=jnp.where(real, self_vec.reshape(lead + (F,)), 0.0),
        )


class EquivariantAttention(_AttentionBase):
    """One equivariant multi-head attention layer of torchmd-net: returns the updates (dx, dvec).

    As ``torchmd_et.py`` (Thölke & De Fabritiis 2022), H heads of D = F / H features:

      h = LayerNorm(x);  q = W_Q h, k = W_K h  [n, H, D];  v = W_V h  [n, H, 3D]
      dk_ij = SiLU(W_dk φ(d_ij)),  dv_ij = SiLU(W_dv φ(d_ij))
      A_ij = SiLU(Σ_d q_i k_j dk_ij) f_cut(d_ij)                        per head
      (s_x, s_vec, s_dir)_ij = split(v_j ∘ dv_ij)
      y_i    = Σ_j A_ij s_x_ij
      w_i    = Σ_j (s_vec_ij ∘ vec_j + s_dir_ij ∘ r̂_ij) c_ij             (r̂_ii = 0)
               c_ij = 1, or f_cut(d_ij) with ``vector_cutoff`` (torchmd-net's option)
      (vec1, vec2, vec3) = U vec_i (``vec_proj``, no bias);  (o1, o2, o3) = W_O y_i
      dx_i   = <vec1_i, vec2_i> ∘ o2_i + o3_i                            (dot over the 3 components)
      dvec_i = vec3_i ∘ o1_i + w_i

    Sums run over the active pairs and every real atom's self-edge (`AttentionMessages`).
    `georecon_jax.models.et_reference.attention_layer` is the same layer written densely.

    Args: x [n, F] scalars (layer-normed here), vec [n, 3, F] vectors, ``rbf`` [P, num_rbf] the
    radial basis of the pairs (0 where not active), ``rbf_self`` [num_rbf] that of distance 0,
    used by every atom's self-edge; ``pairs`` from `make_pairs`. Returns dx [n, F], dvec [n, 3, F].
    """

    @nn.compact
    def __call__(self, x, vec, rbf, rbf_self, pairs: Pairs):
        F = self.features
        assert vec.shape == x.shape[:-1] + (3, F), (vec.shape, x.shape, F)
        q, k, v = self._queries_keys_values(x)  # [atoms, H, D|D|3D]
        vec1, vec2, vec3 = jnp.split(
            Dense(3 * F, use_bias=False, name="vec_proj")(vec), 3, axis=-1
        )  # [atoms, 3, F] each
        msg = self._messages(q, k, v, rbf, rbf_self, pairs)
        w = pairs.sum_at_receiver(
            msg.s_dir[..., None, :] * pairs.units[..., :, None]
            + pairs.at_sender(vec) * msg.s_vec[..., None, :],
            x.shape[0],
        )  # [atoms, 3, F]
        w = w + vec * msg.s_vec_self[..., None, :]
        o1, o2, o3 = jnp.split(Dense(3 * F, name="o_proj")(msg.y), 3, axis=-1)  # [atoms, F] each
        dx = jnp.sum(vec1 * vec2, axis=-2) * o2 + o3
        dvec = vec3 * o1[..., None, :] + w
        return dx, dvec


class FirstEquivariantAttention(_AttentionBase):
    """The encoder's first attention layer: the same function as `EquivariantAttention` at
    vec = 0, with the terms that multiply vec left out (3-10 % less encoder work,
    benchmarks/results/NOTES.md). What remains:

      dx_i   = o3_i,    dvec_i = Σ_j s_dir_ij ∘ r̂_ij

    It has the same parameters (``vec_proj`` included, so checkpoints load into either layer):
    ``vec_proj`` is applied to one zero row only to create it; its gradient is 0, as in torchmd-net.

    Args: as `EquivariantAttention` without ``vec``. Returns dx [n, F], dvec [n, 3, F].
    """

    @nn.compact
    def __call__(self, x, rbf, rbf_self, pairs: Pairs):
        F = self.features
        q, k, v = self._queries_keys_values(x)
        Dense(3 * F, use_bias=False, name="vec_proj")(jnp.zeros((1, F), x.dtype))
        msg = self._messages(q, k, v, rbf, rbf_self, pairs)
        w = pairs.sum_at_receiver(
            msg.s_dir[..., None, :] * pairs.units[..., :, None], x.shape[0]
        )  # [atoms, 3, F]
        _, _, o3 = jnp.split(Dense(3 * F, name="o_proj")(msg.y), 3, axis=-1)
        return o3, w


# The whitening vector layer norm (pre-training-via-denoising, torchmdnet/models/torchmd_et.py
# ``EquivariantLayerNorm``, used by Coord as ``--layernorm-on-vec whitened``).
VEC_NORM_EPS = 1e-5


def _sylvester_spd(x, c):
    """Y with X Y + Y X = C, for symmetric positive definite X [..., 3, 3] and C [..., 3, 3].

    One 9 x 9 linear solve per matrix, (X ⊗ I + I ⊗ X) vec(Y) = vec(C) (row-major vec), whose
    eigenvalues x_i + x_j are all > 0. No eigenvectors: its derivatives in X and C are the solve's,
    finite wherever X is positive definite, equal eigenvalues included."""
    eye = jnp.eye(3, dtype=x.dtype)
    kron = jnp.einsum("...ik,jl->...ijkl", x, eye) + jnp.einsum("ik,...jl->...ijkl", eye, x)
    lead = x.shape[:-2]
    y = jnp.linalg.solve(kron.reshape(lead + (9, 9)), c.reshape(lead + (9, 1)))
    return y.reshape(lead + (3, 3))


@jax.custom_jvp
def _inv_sqrt_spd(a):
    """X = (A + eps I)^(-1/2) of symmetric positive semi-definite [..., 3, 3] matrices, by eigh.

    Its derivative (below) never differentiates eigh, so that derivatives of every order stay
    finite where eigenvalues coincide (every padding atom: A = eps I). MD17's force loss needs
    the second: its gradient differentiates the forces, themselves a derivative. Differentiating
    the eigenvalue form V f(Λ) Vᵀ through eigh brings in 1 / (λ_i - λ_j), infinite there: the
    force loss's gradient was NaN that way before 2026-12 (issue 35)."""
    lam, v = jnp.linalg.eigh(a)
    lam = jnp.maximum(lam, 0.0)  # float32 eigh can return -1e-6 for a singular covariance
    return jnp.einsum("...ij,...j,...kj->...ik", v, jax.lax.rsqrt(lam + VEC_NORM_EPS), v)


@_inv_sqrt_spd.defjvp
def _inv_sqrt_spd_jvp(primals, tangents):
    # X² = (A + eps I)^(-1), so dX X + X dX = -X² dA X²: dX solves a Sylvester equation in X
    # (`_sylvester_spd`, eigenvalues x_i + x_j > 0). Both sides turn with any fixed rotation V,
    # so it is solved in A's eigenbasis, V held constant (no derivative of eigh): there
    # A' = VᵀAV is diagonal in value, X' = `_inv_sqrt_spd`(A') (this function again, so that its
    # own derivative is this rule once more) is diagonal, and the solve divides elementwise, which
    # is the Daleckii-Krein form V (G ∘ Vᵀ dA V) Vᵀ, G_ij = -x_i² x_j² / (x_i + x_j), with its
    # float32 accuracy (the same solve in A's own basis mixes eigenvalues 10^6 apart and loses
    # the small ones: 3 % force errors on tests/test_import_torchmd.py's whitened checkpoint).
    # Derivatives of the rule go through A' (whose tangent is Vᵀ dA V), X' and the solve.
    # tests/test_vec_norm.py checks first and second derivatives against finite differences.
    (a,), (da,) = primals, tangents
    lam, v = jnp.linalg.eigh(jax.lax.stop_gradient(a))
    v = jax.lax.stop_gradient(v)
    rotate = lambda m: jnp.einsum("...ji,...jk,...kl->...il", v, m, v)  # Vᵀ m V
    unrotate = lambda m: jnp.einsum("...ij,...jk,...lk->...il", v, m, v)  # V m Vᵀ
    a_rot = rotate(a)
    a_rot = a_rot - jax.lax.stop_gradient(a_rot) + lam[..., None, :] * jnp.eye(3, dtype=a.dtype)
    x_rot = _inv_sqrt_spd(a_rot)  # [..., 3, 3], diagonal in value
    x2 = x_rot @ x_rot
    da_rot = rotate(0.5 * (da + jnp.swapaxes(da, -1, -2)))
    return unrotate(x_rot), unrotate(_sylvester_spd(x_rot, -(x2 @ da_rot @ x2)))


class EquivariantLayerNorm(nn.Module):
    """Whitening layer norm of vector features [n, 3, F] (pre-training-via-denoising's
    ``EquivariantLayerNorm``): centre over the F channels, whiten with the inverse square root of
    the 3 x 3 channel covariance + eps·I, scale each channel by ``weight`` (ones at init; no bias,
    which would break equivariance). Output = R(input) for any rotation R: the covariance turns as
    R C Rᵀ.

    A documented correction: the reference adds eps·diag(1, 2, 3) instead of eps·I so that an
    all-zero input has distinct eigenvalues for its SVD's backward pass. That term does not turn
    with the molecule, so the layer is not equivariant where the covariance is comparable to eps
    (small vector features, e.g. at initialisation: errors of 1e-2 in tests/test_models.py). The
    derivative here stays finite at equal eigenvalues, so the isotropic term is safe.
    ``reference=True`` (``vec_norm='whitened_reference'``) keeps diag(1, 2, 3), e.g. to compare
    with an imported checkpoint bit for bit.

    Line by line against the reference (pre-training-via-denoising, torchmdnet/models/torchmd_et.py
    ``EquivariantLayerNorm.forward`` and ``symsqrtinv``, read 2026-12-06):

      * where: on the encoder's final vectors, after the scalars' ``out_norm``, before any head
        (its ``TorchMD_ET.forward``); the same here (`EquivariantTransformer`).
      * dtype: the reference casts the input to float64 and the result back before ``weight``;
        here everything is float32 (JAX runs without x64, TPUs have no float64).
      * centring: ``input - input.mean(-1)``, over the F channels of each of the 3 components;
        the same axis here.
      * covariance: X Xᵀ / F [3, 3] + eps·diag(1, 2, 3), eps = 1e-5; here + eps·I (the correction
        above), or diag(1, 2, 3) with ``reference=True``.
      * inverse square root: the reference's SVD (equal to eigh for this symmetric positive
        definite matrix) drops singular values below 3 · 2.2e-16 · the largest (never, since all
        are >= eps, unless the largest exceeds 1.5e10) and takes V (s + eps)^(-1/2) Vᵀ: eps is
        added a second time, to the eigenvalues. The same here (`_inv_sqrt_spd`, rsqrt(λ + eps)),
        so both whiten cov + eps·diag(2, 3, 4) (here cov + 2 eps·I).
      * derivative: the reference's is torch's SVD backward (finite only with distinct singular
        values, the reason for diag(1, 2, 3)); here it is written out without eigenvectors
        (`_inv_sqrt_spd`), finite at every order, so that MD17's force loss, whose gradient is a
        second derivative, trains with this norm.
      * output: the whitened centred vectors times ``weight`` [F] (ones at init, no bias): the same.

    tests/test_vec_norm.py checks it against a float64 implementation of the reference's formula
    on real molecules, and its first and second derivatives against finite differences."""

    features: int
    reference: bool = False

    @nn.compact
    def __call__(self, vec):
        weight = self.param("weight", nn.initializers.ones, (self.features,))
        centred = vec - jnp.mean(vec, axis=-1, keepdims=True)
        cov = jnp.einsum("...if,...jf->...ij", centred, centred) / self.features
        reg = jnp.array([1.0, 2.0, 3.0] if self.reference else [1.0, 1.0, 1.0], vec.dtype)
        cov = cov + VEC_NORM_EPS * jnp.diag(reg)
        return jnp.einsum("...ij,...jf->...if", _inv_sqrt_spd(cov), centred) * weight


def radial_basis(module: nn.Module, pairs: Pairs):
    """(rbf of the pairs [P, R] (dense: [B, N, N, R]), 0 where not active; rbf of distance 0 [R])
    from an ExpNormalSmearing."""
    d = pairs.distances
    both = module(jnp.concatenate([d.reshape(-1), jnp.zeros((1,), d.dtype)]))
    return both[:-1].reshape(d.shape + both.shape[-1:]) * pairs.active[..., None], both[-1]


class EquivariantTransformer(nn.Module):
    """The TorchMD-Net ET encoder: (Z, R, pairs) -> scalars [n, F] (invariant), vectors [n, 3, F].

    Layer 0 is a `FirstEquivariantAttention` (vec = 0), layers 1.. are `EquivariantAttention`;
    all are named ``attention_<i>`` with the same parameters.
    Paper scale: num_layers=8, features=256, num_heads=8, num_rbf=64, cutoff=5 Å.
    """

    num_layers: int = 8
    features: int = 256
    num_heads: int = 8
    num_rbf: int = 64
    cutoff: float = 5.0
    max_z: int = 100
    trainable_rbf: bool = True
    vec_norm: str = "none"  # "whitened": `EquivariantLayerNorm` on the final vec (Coord's option)
    embedding_init: str = "normal"  # see `embedding_init`
    # torchmd-net's ``vector_cutoff``: the cutoff weighs the values (scalar and vector messages)
    # instead of the attention, so that energy and forces are continuous as a pair crosses the
    # cutoff (`_AttentionBase._messages`). The same parameters either way.
    vector_cutoff: bool = False

    @nn.compact
    def __call__(
        self, atomic_numbers, positions, senders, receivers, edge_mask, node_mask
    ) -> Tuple[jax.Array, jax.Array]:
        """Args: atomic_numbers [n] int, positions [n, 3] Å, senders/receivers [n_pair] int (each
        pair of distinct atoms once), edge_mask [n_pair] bool (False on padding), node_mask [n]
        bool (False on padding atoms: they get no self-edge, and zero outputs).

        Dense layout (issue 18): atomic_numbers [B, N], positions [B, N, 3], node_mask [B, N]
        (molecule b in atom slots N); senders, receivers and edge_mask are not used (pass None):
        every pair of a molecule's real atoms is a candidate. Outputs [B, N, F], [B, N, 3, F]; the
        same function of the same parameters as the pair layout."""
        lead = atomic_numbers.shape
        assert positions.shape == lead + (3,), (positions.shape, lead)
        if len(lead) == 2:
            pairs = make_dense_pairs(positions, node_mask, self.cutoff)
        else:
            pairs = make_pairs(positions, senders, receivers, edge_mask, node_mask, self.cutoff)
        rbf, rbf_self = radial_basis(
            ExpNormalSmearing(self.num_rbf, 0.0, self.cutoff, self.trainable_rbf, name="rbf"), pairs
        )
        if self.vec_norm not in VEC_NORMS:
            raise ValueError(f"unknown vec_norm {self.vec_norm!r}: use one of {VEC_NORMS}")
        init = embedding_init(self.embedding_init)
        x = nn.Embed(self.max_z + 1, self.features, embedding_init=init, name="embedding")(atomic_numbers)
        x = NeighborEmbedding(self.features, self.max_z, self.embedding_init, name="neighbor_embedding")(
            atomic_numbers, x, rbf, pairs
        )
        if self.num_layers == 0:
            vec = jnp.zeros(lead + (3, self.features), x.dtype)
        else:  # vec = 0 before the first layer
            first = FirstEquivariantAttention(
                self.features, self.num_heads, vector_cutoff=self.vector_cutoff, name="attention_0"
            )
            dx, vec = first(x, rbf, rbf_self, pairs)
            x = x + dx
        for i in range(1, self.num_layers):
            layer = EquivariantAttention(
                self.features, self.num_heads, vector_cutoff=self.vector_cutoff, name=f"attention_{i}"
            )
            dx, dvec = layer(x, vec, rbf, rbf_self, pairs)
            x, vec = x + dx, vec + dvec
        x = nn.LayerNorm(epsilon=1e-5, name="out_norm")(x)
        if self.vec_norm != "none":
            reference = self.vec_norm == "whitened_reference"
            vec = EquivariantLayerNorm(self.features, reference, name="out_norm_vec")(vec)
        x = jnp.where(node_mask[..., None], x, 0.0)
        vec = jnp.where(node_mask[..., None, None], vec, 0.0)
        return x, vec
