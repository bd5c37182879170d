"""A plain reference of TorchMD-Net's equivariant transformer, written as the paper reads.

Thölke & De Fabritiis, "TorchMD-NET: Equivariant Transformers for Neural Network based Molecular
Potentials", ICLR 2022; torchmd-net's ``torchmd_et.py`` (``TorchMD_ET`` with ``loop=True``).

This module is for reading and testing, not for training. It computes the same function as
`georecon_jax.models.et.EquivariantTransformer` from the SAME parameter pytree (a checkpoint of
the encoder runs on both), but densely and directly:

  * every ordered pair (i receives from j) of an [n, n] grid, both directions computed separately,
    self-loops on the diagonal (distance 0, cutoff weight 1, direction 0);
  * no pair list, no shared per-pair filters, no first-layer shortcut: vec starts as zeros;
  * activations as the paper writes them, SiLU(x) = x·sigmoid(x).

The fast layer (`models/et.py`) stores each unordered pair once and skips the terms that vanish
at vec = 0; ``tests/test_et_reference.py`` checks it against this module, outputs and gradients.
Memory is O(n² F): fine for a few molecules, not for a training batch.

Notation (per atom i, F features, H heads of D = F/H features, R radial basis functions):
  x_i [F] scalars, vec_i [3, F] vectors, r_ij = pos_j - pos_i, d_ij = |r_ij| (Å),
  r̂_ij = r_ij / d_ij (0 for i = j), f_cut(d) = ½(cos(π d / cutoff) + 1) for d < cutoff else 0,
  φ(d_ij) [R] the exp-normal radial basis (times f_cut), W· linear layers (``Dense``: x W + b).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

Params = Mapping[str, Any]


def silu(x):
    """SiLU(x) = x · sigmoid(x)."""
    return x * jax.nn.sigmoid(x)


def dense(p: Params, x):
    """A ``Dense`` layer from its parameters: x W + b (no b where the layer has no bias)."""
    return x @ p["kernel"] + p.get("bias", 0.0)


def layer_norm(p: Params, x, eps: float = 1e-5):
    """LayerNorm over the last axis with scale and bias (flax's, epsilon 1e-5 as torch's)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def pair_geometry(positions, pair_mask, cutoff: float):
    """Distances, directions and cutoff weights of all ordered pairs.

    Args: positions [n, 3] Å; pair_mask [n, n] bool, True where atom i may receive from atom j
      (the diagonal: atom i's self-loop); cutoff Å.

    Returns: d [n, n] (d_ij, 0 where i and j coincide), unit [n, n, 3] (r̂_ij = (pos_j - pos_i)/d_ij,
      0 where they coincide), edge [n, n] bool (pair_mask and d_ij < cutoff), cut [n, n]
      (f_cut(d_ij), 0 where not an edge).
    """
    n = positions.shape[0]
    assert positions.shape == (n, 3), positions.shape
    assert pair_mask.shape == (n, n) and pair_mask.dtype == bool, (pair_mask.shape, pair_mask.dtype)
    diff = positions[None, :, :] - positions[:, None, :]  # [n, n, 3]  r_ij
    d2 = jnp.sum(diff**2, axis=-1)  # [n, n]
    apart = d2 > 0  # False on the diagonal (and coincident padding)
    d = jnp.where(apart, jnp.sqrt(jnp.where(apart, d2, 1.0)), 0.0)  # [n, n]  NaN-safe gradient
    unit = jnp.where(apart[..., None], diff / jnp.where(apart, d, 1.0)[..., None], 0.0)  # [n, n, 3]
    edge = pair_mask & (d < cutoff)  # [n, n]
    cut = jnp.where(edge, 0.5 * (jnp.cos(d * math.pi / cutoff) + 1.0), 0.0)  # [n, n]
    return d, unit, edge, cut


def exp_normal_rbf(p_rbf, d, cut, num_rbf: int, cutoff: float):
    """φ_k(d) = f_cut(d) · exp(-β_k (exp(-α d) - μ_k)²), α = 5 / cutoff (lower cutoff 0).

    μ_k, β_k are the trainable parameters ``p_rbf`` (``means``, ``betas``) when the encoder has
    them, else their initial values: μ evenly spaced on [exp(-cutoff), 1], β = (2(1 - exp(-cutoff))
    / R)^-2. Args: d [n, n] Å, cut [n, n] f_cut (0 off the edges). Returns [n, n, R].
    """
    start = math.exp(-cutoff)
    if p_rbf is None:
        means = jnp.linspace(start, 1.0, num_rbf)  # [R]
        betas = jnp.full((num_rbf,), (2.0 / num_rbf * (1.0 - start)) ** -2)  # [R]
    else:
        means, betas = p_rbf["means"], p_rbf["betas"]
    assert means.shape == betas.shape == (num_rbf,), (means.shape, betas.shape, num_rbf)
    alpha = 5.0 / cutoff
    return cut[..., None] * jnp.exp(-betas * (jnp.exp(-alpha * d)[..., None] - means) ** 2)


def neighbor_embedding(p: Params, atomic_numbers, x, rbf, cut, neighbors):
    """x_i <- W_C [x_i, Σ_{j≠i} W_N(z_j) ∘ (W_D φ(d_ij)) f_cut(d_ij)]   (no self-loop).

    Args: p: the ``neighbor_embedding`` parameters; atomic_numbers [n]; x [n, F] the atom-type
      embedding; rbf [n, n, R]; cut [n, n]; neighbors [n, n] bool (edges without the diagonal).
    Returns [n, F].
    """
    n, F = x.shape
    assert rbf.shape[:2] == cut.shape == neighbors.shape == (n, n), (rbf.shape, cut.shape)
    w = dense(p["distance_proj"], rbf) * (cut * neighbors)[..., None]  # [n, n, F]
    emb = p["embedding"]["embedding"][atomic_numbers]  # [n, F]  W_N(z_j)
    agg = jnp.einsum("ijf,jf->if", w, emb)  # [n, F]
    return dense(p["combine"], jnp.concatenate([x, agg], axis=-1))  # [n, F]


def attention_layer(p: Params, x, vec, rbf, unit, edge, cut, num_heads: int, vector_cutoff: bool = False):
    """One equivariant attention layer (torchmd-net's ``EquivariantMultiHeadAttention``).

      h = LayerNorm(x);  q = W_Q h, k = W_K h  [n, H, D];  v = W_V h  [n, H, 3D]
      dk_ij = SiLU(W_dk φ(d_ij))  [H, D],   dv_ij = SiLU(W_dv φ(d_ij))  [H, 3D]
      A_ij = SiLU(Σ_d q_i k_j dk_ij) · f_cut(d_ij)                          per head
      (s_x, s_vec, s_dir)_ij = split(v_j ∘ dv_ij)                           3 × [H, D] -> [F]
      y_i = Σ_j A_ij s_x_ij                                                [F]
      w_i = Σ_j (s_vec_ij ∘ vec_j + s_dir_ij ∘ r̂_ij) c_ij                   [3, F] (edges only)
      c_ij = 1;  with ``vector_cutoff`` c_ij = f_cut(d_ij)

    ``vector_cutoff`` is torchmd-net's option (``EquivariantMultiHeadAttention.message``): it
    multiplies the values v_j (all three parts) by f_cut instead of the attention. A_ij s_x_ij is
    the same product either way; only the vector messages change, by c_ij.
      (vec1, vec2, vec3) = U vec_i  (``vec_proj``, no bias);  (o1, o2, o3) = W_O y_i
      dx_i = <vec1_i, vec2_i> ∘ o2 + o3;       dvec_i = vec3_i ∘ o1 + w_i

    Sums run over j with edge[i, j], the self-loop j = i included (r̂_ii = 0).

    Args: p: the ``attention_<layer>`` parameters; x [n, F]; vec [n, 3, F]; rbf [n, n, R];
      unit [n, n, 3]; edge [n, n] bool; cut [n, n]; num_heads H; vector_cutoff (above).
      Returns dx [n, F], dvec [n, 3, F].
    """
    n, F = x.shape
    H = num_heads
    assert F % H == 0, (F, H)
    D = F // H
    assert vec.shape == (n, 3, F), vec.shape
    assert unit.shape == (n, n, 3) and edge.shape == cut.shape == (n, n), (unit.shape, edge.shape)
    h = layer_norm(p["layernorm"], x)  # [n, F]
    q = dense(p["q_proj"], h).reshape(n, H, D)  # [n, H, D]
    k = dense(p["k_proj"], h).reshape(n, H, D)  # [n, H, D]
    v = dense(p["v_proj"], h).reshape(n, H, 3 * D)  # [n, H, 3D]
    uvec = dense(p["vec_proj"], vec)  # [n, 3, 3F]
    vec1, vec2, vec3 = uvec[..., :F], uvec[..., F : 2 * F], uvec[..., 2 * F :]  # [n, 3, F] each
    dk = silu(dense(p["dk_proj"], rbf)).reshape(n, n, H, D)  # [n, n, H, D]
    dv = silu(dense(p["dv_proj"], rbf)).reshape(n, n, H, 3 * D)  # [n, n, H, 3D]
    attn = silu(jnp.einsum("ihd,jhd,ijhd->ijh", q, k, dk)) * cut[..., None]  # [n, n, H]  A_ij
    s = v[None, :, :, :] * dv  # [n, n, H, 3D]  v_j ∘ dv_ij
    s_x = (s[..., :D] * attn[..., None]).reshape(n, n, F)  # [n, n, F]  A_ij s_x_ij
    s_vec = s[..., D : 2 * D].reshape(n, n, F)  # [n, n, F]
    s_dir = s[..., 2 * D :].reshape(n, n, F)  # [n, n, F]
    y = s_x.sum(axis=1)  # [n, F]
    w = (
        vec[None, :, :, :] * s_vec[:, :, None, :]  # [n, n, 3, F]
        + s_dir[:, :, None, :] * unit[..., None]
    ) * (cut if vector_cutoff else edge)[..., None, None]  # cut is 0 off the edges
    w = w.sum(axis=1)  # [n, 3, F]
    o = dense(p["o_proj"], y)  # [n, 3F]
    o1, o2, o3 = o[:, :F], o[:, F : 2 * F], o[:, 2 * F :]  # [n, F] each
    dx = jnp.sum(vec1 * vec2, axis=1) * o2 + o3  # [n, F]
    dvec = vec3 * o1[:, None, :] + w  # [n, 3, F]
    return dx, dvec


def same_molecule_pairs(node_graph, node_mask):
    """pair_mask [n, n] of a padded batch: i, j real atoms of one molecule (diagonal included)."""
    real = node_mask[:, None] & node_mask[None, :]
    return (node_graph[:, None] == node_graph[None, :]) & real


def equivariant_transformer(
    config, params: Params, atomic_numbers, positions, pair_mask, node_mask
) -> Tuple[jax.Array, jax.Array]:
    """The ET encoder: (Z, positions) -> scalars x [n, F] (invariant), vectors vec [n, 3, F].

      x = W_E(z);  x = NeighborEmbedding(x);  vec = 0
      for each layer:  (dx, dvec) = Attention(x, vec);  x += dx;  vec += dvec
      x = LayerNorm(x);  both zero on padding atoms

    Args:
      config: an `EquivariantTransformer` (only its hyperparameters are read: num_layers,
        features, num_heads, num_rbf, cutoff Å, trainable_rbf, vector_cutoff).
      params: its parameters, ``{"params": {...}}`` as ``EquivariantTransformer.init`` returns.
      atomic_numbers [n] int; positions [n, 3] Å.
      pair_mask [n, n] bool: i may receive from j (e.g. `same_molecule_pairs`); the diagonal
        holds the self-loops. Pairs at or beyond the cutoff are dropped here.
      node_mask [n] bool: real atoms (outputs are zeroed elsewhere).
    """
    p = params["params"]
    n = atomic_numbers.shape[0]
    F, R = config.features, config.num_rbf
    assert atomic_numbers.shape == node_mask.shape == (n,), (atomic_numbers.shape, node_mask.shape)
    layers = sorted(k for k in p if k.startswith("attention_"))
    assert layers == [f"attention_{i}" for i in range(config.num_layers)], layers
    assert ("rbf" in p) == config.trainable_rbf, (sorted(p), config.trainable_rbf)
    assert p["embedding"]["embedding"].shape[1] == F, p["embedding"]["embedding"].shape

    d, unit, edge, cut = pair_geometry(positions, pair_mask, config.cutoff)  # [n, n], [n, n, 3], ...
    rbf = exp_normal_rbf(p.get("rbf"), d, cut, R, config.cutoff)  # [n, n, R]
    x = p["embedding"]["embedding"][atomic_numbers]  # [n, F]
    off_diagonal = ~jnp.eye(n, dtype=bool)
    x = neighbor_embedding(p["neighbor_embedding"], atomic_numbers, x, rbf, cut, edge & off_diagonal)
    vec = jnp.zeros((n, 3, F), x.dtype)  # [n, 3, F]
    for i in range(config.num_layers):
        dx, dvec = attention_layer(
            p[f"attention_{i}"], x, vec, rbf, unit, edge, cut, config.num_heads, config.vector_cutoff
        )
        x, vec = x + dx, vec + dvec
    x = layer_norm(p["out_norm"], x)  # [n, F]
    x = jnp.where(node_mask[:, None], x, 0.0)
    vec = jnp.where(node_mask[:, None, None], vec, 0.0)
    return x, vec
