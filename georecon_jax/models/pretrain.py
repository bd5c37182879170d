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
import jax.numpy as jnp
import jraph

from georecon_jax.models.et import (
    Dense,
    EquivariantAttention,
    EquivariantTransformer,
    ExpNormalSmearing,
    make_pairs,
    radial_basis,
    silu,
)
from georecon_jax.models.graph import NodeEmbedding, graph_masks
from georecon_jax.models.heads import VectorHead


def make_encoder(cfg, name: Optional[str] = None) -> EquivariantTransformer:
    """The ET from a ``model.encoder`` config section (num_layers, features, num_heads, num_rbf,
    cutoff in Å, max_z, trainable_rbf, vec_norm, embedding_init)."""
    kwargs = {} if name is None else {"name": name}
    return EquivariantTransformer(
        num_layers=cfg.num_layers,
        features=cfg.features,
        num_heads=cfg.num_heads,
        num_rbf=cfg.num_rbf,
        cutoff=cfg.cutoff,
        max_z=cfg.get("max_z", 100),
        trainable_rbf=cfg.get("trainable_rbf", False),
        vec_norm=cfg.get("vec_norm", "none"),
        embedding_init=cfg.get("embedding_init", "normal"),
        **kwargs,
    )


def encode(encoder: nn.Module, graph: jraph.GraphsTuple, positions=None) -> NodeEmbedding:
    """Runs an ET-style encoder on a padded graph; ``positions`` [n, 3] Å replace the graph's."""
    m = graph_masks(graph)
    pos = graph.nodes.positions if positions is None else positions
    assert pos.shape == graph.nodes.positions.shape, (pos.shape, graph.nodes.positions.shape)
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


class GeometryDecoder(nn.Module):
    """Lightweight decoder: fuses the graph code and σ into the perturbed node features, runs
    ``num_layers`` equivariant attention layers on the perturbed geometry, and predicts each
    atom's scaled noise ε̂ [n, 3] (dimensionless; the displacement is σ·ε̂)."""

    features: int
    num_layers: int = 1
    num_heads: int = 8
    num_rbf: int = 32
    cutoff: float = 5.0

    @nn.compact
    def __call__(self, noisy: NodeEmbedding, code_per_node, log_sigma_per_node, graph, positions):
        """Args: noisy: the encoder's features of the perturbed graph; code_per_node [n, C];
        log_sigma_per_node [n] (log Å); graph: the padded graph; positions [n, 3] Å (perturbed).
        Returns ε̂ [n, 3] (0 on padding atoms)."""
        x, vec = noisy
        n = x.shape[0]
        assert code_per_node.shape[0] == n and log_sigma_per_node.shape == (n,), (
            code_per_node.shape,
            log_sigma_per_node.shape,
        )
        m = graph_masks(graph)
        sigma_emb = NoiseScaleEmbedding(self.features, name="sigma_embedding")(log_sigma_per_node)
        fused = jnp.concatenate([x, code_per_node, sigma_emb], axis=-1)  # [n, 2F + C]
        x = x + Dense(self.features, name="fuse_out")(silu(Dense(self.features, name="fuse_hidden")(fused)))
        if self.num_layers:
            pairs = make_pairs(
                positions, graph.senders, graph.receivers, m.edge_mask, m.node_mask, self.cutoff
            )
            rbf, rbf_self = radial_basis(ExpNormalSmearing(self.num_rbf, 0.0, self.cutoff, name="rbf"), pairs)
            for i in range(self.num_layers):
                dx, dvec = EquivariantAttention(self.features, self.num_heads, name=f"attention_{i}")(
                    nn.LayerNorm(name=f"norm_{i}")(x), vec, rbf, rbf_self, pairs
                )
                x, vec = x + dx, vec + dvec
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
