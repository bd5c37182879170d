"""The pretraining model: ET encoder + graph code + geometry decoder + auxiliary denoising head.

GeoRecon uses every part; Coord uses the encoder and the node-level denoising head. Parameters
live under ``encoder/`` (what fine-tuning restores), ``graph_code/``, ``decoder/`` and
``node_head/``.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from georecon_jax.models.et import (Dense, EquivariantAttention, EquivariantTransformer,
                                    ExpNormalSmearing, make_pairs, radial_basis)
from georecon_jax.models.heads import VectorHead, masked_mean_pool


def make_encoder(cfg: ml_collections.ConfigDict, name="encoder") -> EquivariantTransformer:
    return EquivariantTransformer(num_layers=cfg.num_layers, features=cfg.features,
                                  num_heads=cfg.num_heads, num_rbf=cfg.num_rbf, cutoff=cfg.cutoff,
                                  max_z=cfg.get("max_z", 100),
                                  trainable_rbf=cfg.get("trainable_rbf", False), name=name)


class NoiseScaleEmbedding(nn.Module):
    """Embedding of the noise scale σ (Å): sinusoids of log σ, then an MLP."""
    features: int
    num_frequencies: int = 16

    @nn.compact
    def __call__(self, log_sigma):                                     # [m] -> [m, features]
        freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), self.num_frequencies))
        angles = log_sigma[:, None] * freqs[None, :]
        h = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
        return Dense(self.features, name="out")(nn.silu(Dense(self.features, name="hidden")(h)))


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
    def __call__(self, x, vec, code_per_node, log_sigma_per_node, positions, senders, receivers,
                 edge_mask, node_mask):
        sigma_emb = NoiseScaleEmbedding(self.features, name="sigma_embedding")(log_sigma_per_node)
        fused = jnp.concatenate([x, code_per_node, sigma_emb], axis=-1)
        x = x + Dense(self.features, name="fuse_out")(nn.silu(Dense(self.features, name="fuse_hidden")(fused)))
        if self.num_layers:
            pairs = make_pairs(positions, senders, receivers, edge_mask, node_mask, self.cutoff)
            rbf, rbf_self = radial_basis(ExpNormalSmearing(self.num_rbf, 0.0, self.cutoff, name="rbf"), pairs)
            for i in range(self.num_layers):
                dx, dvec = EquivariantAttention(self.features, self.num_heads, name=f"attention_{i}")(
                    nn.LayerNorm(name=f"norm_{i}")(x), vec, rbf, rbf_self, pairs)
                x, vec = x + dx, vec + dvec
        return VectorHead(self.features, name="out")(x, vec)


class DenoisingPretrainer(nn.Module):
    """Encoder and the pretraining heads. Call the methods through ``model.apply(..., method=...)``."""
    config: ml_collections.ConfigDict  # the `model` section of a pretraining config

    def setup(self):
        cfg = self.config
        self.encoder = make_encoder(cfg.encoder)
        self.node_head = VectorHead(cfg.encoder.features)
        if cfg.get("decoder") is not None:
            self.graph_code = Dense(cfg.decoder.code_dim)
            self.decoder = GeometryDecoder(cfg.encoder.features, cfg.decoder.num_layers,
                                           cfg.decoder.num_heads, cfg.decoder.num_rbf, cfg.encoder.cutoff)

    def encode(self, atomic_numbers, positions, senders, receivers, edge_mask, node_mask):
        return self.encoder(atomic_numbers, positions, senders, receivers, edge_mask, node_mask)

    def encode_graph(self, x, node_graph, node_mask, n_graph: int):
        """Graph code z [n_graph, code_dim] from node scalars (masked mean, then a linear map)."""
        return self.graph_code(masked_mean_pool(x, node_graph, node_mask, n_graph))

    def decode(self, x, vec, code_per_node, log_sigma_per_node, positions, senders, receivers, edge_mask,
               node_mask):
        return self.decoder(x, vec, code_per_node, log_sigma_per_node, positions, senders, receivers,
                            edge_mask, node_mask)

    def denoise_nodes(self, x, vec):
        return self.node_head(x, vec)

    def __call__(self, atomic_numbers, positions, senders, receivers, edge_mask, node_mask,
                 node_graph, n_graph: int):
        """Touches every submodule once (used by `init`)."""
        x, vec = self.encode(atomic_numbers, positions, senders, receivers, edge_mask, node_mask)
        out = self.denoise_nodes(x, vec)
        if self.config.get("decoder") is not None:
            code = self.encode_graph(x, node_graph, node_mask, n_graph)
            out = out + self.decode(x, vec, code[node_graph], jnp.zeros(x.shape[0]), positions,
                                    senders, receivers, edge_mask, node_mask)
        return out
