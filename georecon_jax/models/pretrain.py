"""The pretraining model: the ET encoder on a padded graph, plus the heads an objective adds.

`PretrainingModel` knows nothing about losses. An objective (``georecon_jax.objectives``) names
the heads it needs (`Objective.heads`) and runs its own forward pass through the model
(`Objective.forward`, called as ``model.apply(params, graph, key, method=objective.forward)``),
so that ``model.init`` with that same forward creates exactly the parameters the loss uses.
Parameters live under ``encoder/`` (what fine-tuning restores) and ``heads_<name>/``.

The GeoRecon heads live here too: the graph code map, the noise-scale embedding and the geometry
decoder.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from georecon_jax.models.et import (
    Dense,
    EquivariantAttention,
    EquivariantTransformer,
    ExpNormalSmearing,
    make_dense_pairs,
    make_pairs,
    radial_basis,
    silu,
)
from georecon_jax.models.graph import NodeEmbedding, dense_shape, graph_masks, to_dense
from georecon_jax.models.heads import VectorHead


def make_encoder(cfg, name: Optional[str] = None) -> EquivariantTransformer:
    """The ET from a ``model.encoder`` config section (num_layers, features, num_heads, num_rbf,
    cutoff in Å, max_z, trainable_rbf, vec_norm, embedding_init, vector_cutoff)."""
    kwargs = {} if name is None else {"name": name}
    return EquivariantTransformer(
        num_layers=cfg.num_layers,
        features=cfg.features,
        num_heads=cfg.num_heads,
        num_rbf=cfg.num_rbf,
        cutoff=cfg.cutoff,
        max_z=cfg.max_z,
        trainable_rbf=cfg.trainable_rbf,
        vec_norm=cfg.vec_norm,
        embedding_init=cfg.embedding_init,
        vector_cutoff=cfg.vector_cutoff,
        **kwargs,
    )


def encode(encoder: nn.Module, graph: jraph.GraphsTuple, positions=None) -> NodeEmbedding:
    """Runs an ET-style encoder on a padded graph; ``positions`` [n, 3] Å replace the graph's."""
    m = graph_masks(graph)
    pos = graph.nodes.positions if positions is None else positions
    assert pos.shape == graph.nodes.positions.shape, (pos.shape, graph.nodes.positions.shape)
    if dense_shape(graph) is not None:  # [B, N] atom slots in, flat [B·N] atoms out
        x, vec = encoder(
            to_dense(graph, graph.nodes.atomic_numbers), to_dense(graph, pos), None, None, None,
            to_dense(graph, m.node_mask),
        )  # fmt: skip
        return NodeEmbedding(x.reshape((-1,) + x.shape[2:]), vec.reshape((-1,) + vec.shape[2:]))
    x, vec = encoder(
        graph.nodes.atomic_numbers, pos, graph.senders, graph.receivers, m.edge_mask, m.node_mask
    )
    return NodeEmbedding(x, vec)


class PretrainingModel(nn.Module):
    """The encoder plus named heads (modules; the objective decides how they are called)."""

    encoder: nn.Module
    heads: Mapping[str, nn.Module]

    def encode(self, graph: jraph.GraphsTuple, positions=None) -> NodeEmbedding:
        """Per-atom scalars [n, F] and vectors [n, 3, F] of the graph (at ``positions`` if given)."""
        return encode(self.encoder, graph, positions)


def create_model(model_cfg, heads: Mapping[str, nn.Module]) -> PretrainingModel:
    """A `PretrainingModel` from the ``model`` config section and an objective's heads."""
    return PretrainingModel(encoder=make_encoder(model_cfg.encoder), heads=dict(heads))


class NoiseScaleEmbedding(nn.Module):
    """Embedding of the noise scale σ (Å): sinusoids of log σ, then an MLP."""

    features: int
    num_frequencies: int = 16

    @nn.compact
    def __call__(self, log_sigma):  # [m] -> [m, features]
        assert log_sigma.ndim == 1, log_sigma.shape
        freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), self.num_frequencies))
        angles = log_sigma[:, None] * freqs[None, :]  # [m, K]
        h = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return Dense(self.features, name="out")(silu(Dense(self.features, name="hidden")(h)))


# Covalent radii (Å, Cordero et al. 2008; RDKit's periodic table has the same) of H..Ar by atomic
# number; other elements 1.5 Å.
_COVALENT_RADII = (
    0.0, 0.31, 0.28, 1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58,
    1.66, 1.41, 1.21, 1.11, 1.07, 1.05, 1.02, 1.06,
)  # fmt: skip
# bonded: d < 1.3 (r_i + r_j), RDKit's DetermineConnectivity (covFactor 1.3). It agrees with RDKit on
# 1,996 of the first 2,000 QM9 molecules; in the other 4 one pair of a 3- or 4-membered ring lies
# within 0.5 % of the threshold, where RDKit decides otherwise (tests/test_z_variants.py).
BOND_TOLERANCE = 1.3


def bonded_pairs(graph, edge_mask):
    """[n_edge] bool: pairs of the graph's list bonded in the **clean** structure (the graph's own
    positions), by covalent radii: d < `BOND_TOLERANCE` (r_i + r_j). This is the molecular graph
    (topology) only; no distance reaches the model through it. Dense layout: [B, N, N] bool over
    every pair of distinct real atoms."""
    radii = jnp.asarray(_COVALENT_RADII, jnp.float32)
    z = graph.nodes.atomic_numbers
    r = jnp.where(z < radii.shape[0], radii[jnp.clip(z, 0, radii.shape[0] - 1)], 1.5)
    pos = graph.nodes.positions
    if dense_shape(graph) is not None:
        r, pos, real = to_dense(graph, r), to_dense(graph, pos), to_dense(graph, z > 0)
        d = jnp.sqrt(jnp.sum((pos[:, :, None] - pos[:, None, :]) ** 2, axis=-1) + 1e-12)
        n = r.shape[1]
        distinct = real[:, :, None] & real[:, None, :] & ~jnp.eye(n, dtype=bool)
        return distinct & (d < BOND_TOLERANCE * (r[:, :, None] + r[:, None, :]))
    d = jnp.linalg.norm(pos[graph.senders] - pos[graph.receivers], axis=-1)
    return (
        edge_mask
        & (graph.senders != graph.receivers)
        & (d < BOND_TOLERANCE * (r[graph.senders] + r[graph.receivers]))
    )


class TopologyEmbedding(nn.Module):
    """Invariant per-atom features of the molecular graph: atom types refined by ``num_layers``
    rounds of message passing over the bonds (`bonded_pairs`), h ← h + MLP([h, Σ_bonded h_j]).
    Gives the decoder the atom correspondence (which atom is bonded to which) without geometry."""

    features: int
    num_layers: int = 3
    max_z: int = 100

    @nn.compact
    def __call__(self, atomic_numbers, senders, receivers, bonded, node_mask):
        """bonded: [n_edge] bool over the pair list, or [B, N, N] in the dense layout (senders and
        receivers unused)."""
        n = atomic_numbers.shape[0]
        h = nn.Embed(self.max_z, self.features, name="embedding")(atomic_numbers)
        w = bonded.astype(h.dtype)[..., None] if bonded.ndim == 1 else bonded.astype(h.dtype)
        for i in range(self.num_layers):
            if bonded.ndim == 3:  # dense: the symmetric bond matrix times h
                msg = jnp.einsum("bij,bjf->bif", w, h.reshape(w.shape[:2] + h.shape[1:])).reshape(h.shape)
            else:
                msg = jax.ops.segment_sum(h[senders] * w, receivers, num_segments=n)
                msg = msg + jax.ops.segment_sum(h[receivers] * w, senders, num_segments=n)
            upd = Dense(self.features, name=f"update_{i}_out")(
                silu(Dense(self.features, name=f"update_{i}_hidden")(jnp.concatenate([h, msg], -1)))
            )
            h = h + upd
        return jnp.where(node_mask[:, None], h, 0.0)


class GeometryDecoder(nn.Module):
    """Lightweight decoder: fuses the graph code and σ into per-atom features of the perturbed
    structure, runs ``num_layers`` equivariant attention layers on the perturbed geometry, and
    returns an equivariant vector per atom [n, 3] (the objective reads it as ε̂, or as the EDM
    network output F: `objectives.georecon`).

    ``input``: ``"encoder"`` (the paper's caption): the shared encoder's features of the perturbed
    structure (``noisy``) are the start; ``"atoms"`` (a bottleneck): only an embedding of the atom
    types, vectors 0, so whatever the decoder knows of the geometry comes from the perturbed
    positions through its own layers, and from z. ``topology``: add `TopologyEmbedding` of the
    clean structure's bonds to the fused features and a bonded channel to the attention's radial
    basis (the decoder knows which atom is which)."""

    features: int
    num_layers: int = 1
    num_heads: int = 8
    num_rbf: int = 32
    cutoff: float = 5.0
    input: str = "encoder"
    topology: bool = False
    topology_layers: int = 3
    max_z: int = 100

    @nn.compact
    def __call__(self, noisy: Optional[NodeEmbedding], code_per_node, log_sigma_per_node, graph, positions):
        """Args: noisy: the encoder's features of the perturbed graph (None with input='atoms');
        code_per_node [n, C]; log_sigma_per_node [n] (log Å); graph: the padded graph (its own
        positions are the clean structure, read only for the bonds with ``topology``);
        positions [n, 3] Å (perturbed). Returns a vector [n, 3] (0 on padding atoms)."""
        n = code_per_node.shape[0]
        assert log_sigma_per_node.shape == (n,), (code_per_node.shape, log_sigma_per_node.shape)
        m = graph_masks(graph)
        if self.input == "encoder":
            x, vec = noisy
        elif self.input == "atoms":
            x = nn.Embed(self.max_z, self.features, name="atom_embedding")(graph.nodes.atomic_numbers)
            vec = jnp.zeros((n, 3, self.features), x.dtype)
        else:
            raise ValueError(f"model.decoder.input={self.input!r}: use 'encoder' or 'atoms'")
        sigma_emb = NoiseScaleEmbedding(self.features, name="sigma_embedding")(log_sigma_per_node)
        parts = [x, code_per_node, sigma_emb]
        bonded = None
        if self.topology:
            bonded = bonded_pairs(graph, m.edge_mask)
            parts.append(
                TopologyEmbedding(self.features, self.topology_layers, self.max_z, name="topology")(
                    graph.nodes.atomic_numbers, graph.senders, graph.receivers, bonded, m.node_mask
                )
            )
        fused = jnp.concatenate(parts, axis=-1)
        x = x + Dense(self.features, name="fuse_out")(silu(Dense(self.features, name="fuse_hidden")(fused)))
        if self.num_layers:
            if dense_shape(graph) is not None:  # the layers run on [B, N] atom slots
                pairs = make_dense_pairs(
                    to_dense(graph, positions), to_dense(graph, m.node_mask), self.cutoff
                )
                x, vec = to_dense(graph, x), to_dense(graph, vec)
            else:
                pairs = make_pairs(
                    positions, graph.senders, graph.receivers, m.edge_mask, m.node_mask, self.cutoff
                )
            rbf, rbf_self = radial_basis(ExpNormalSmearing(self.num_rbf, 0.0, self.cutoff, name="rbf"), pairs)
            if bonded is not None:  # a bonded channel, on the pairs the attention sees
                rbf = jnp.concatenate([rbf, (bonded & pairs.active).astype(rbf.dtype)[..., None]], -1)
                rbf_self = jnp.concatenate([rbf_self, jnp.zeros((1,), rbf_self.dtype)])
            for i in range(self.num_layers):
                dx, dvec = EquivariantAttention(self.features, self.num_heads, name=f"attention_{i}")(
                    nn.LayerNorm(name=f"norm_{i}")(x), vec, rbf, rbf_self, pairs
                )
                x, vec = x + dx, vec + dvec
            x, vec = x.reshape((n,) + x.shape[-1:]), vec.reshape((n,) + vec.shape[-2:])
        out = VectorHead(self.features, name="out")(x, vec)  # [n, 3]
        return jnp.where(m.node_mask[:, None], out, 0.0)


def encoder_problems(cfg) -> list:
    """Problems with a ``model.encoder`` config section, naming each field."""
    problems = []
    if cfg.features % cfg.num_heads:
        problems.append(
            f"model.encoder.features={cfg.features} is not divisible by num_heads={cfg.num_heads}"
        )
    if cfg.cutoff <= 0:
        problems.append(f"model.encoder.cutoff={cfg.cutoff}: must be positive (Å)")
    if cfg.num_layers < 0 or cfg.num_rbf <= 0 or cfg.features <= 0:
        problems.append(
            f"model.encoder: num_layers={cfg.num_layers} must be >= 0, num_rbf={cfg.num_rbf} "
            f"and features={cfg.features} positive"
        )
    return problems
