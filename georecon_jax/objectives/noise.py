"""Noise for denoising objectives, drawn so that it does not depend on how molecules are batched.

Every atom's noise comes from a key folded from (step key, molecule id, atom index), and every
molecule's noise scale from (step key, molecule id). The same molecule therefore receives the same
noise whether it sits alone, in a padded batch, or on another device: padding, data parallelism
and resumption cannot change the numbers.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from georecon_jax.models.graph import graph_masks


def per_atom_normal(key, graph_id_per_node, atom_index):
    """Standard normal [n, 3] noise, one independent draw per (molecule id, atom index)."""

    def one(g, a):
        return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, g), a), (3,))

    return jax.vmap(one)(graph_id_per_node, atom_index)


def per_graph_uniform(key, graph_id):
    """Uniform [0, 1) per molecule id, [n_graph]."""
    key = jax.random.fold_in(key, 0x5157)  # a stream separate from the atoms'
    return jax.vmap(lambda g: jax.random.uniform(jax.random.fold_in(key, g)))(graph_id)


def sample_noise_scale(key, graph_id, sigma_min: float, sigma_max: float, schedule: str):
    """σ per molecule (Å). ``geometric``: log-uniform in [σ_min, σ_max] (the continuous form of
    NCSN's geometric ladder); ``fixed``: σ_max for every molecule."""
    if schedule == "fixed":
        return jnp.full(graph_id.shape, sigma_max, jnp.float32)
    if schedule == "geometric":
        u = per_graph_uniform(key, graph_id)
        return jnp.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
    raise ValueError(f"unknown noise schedule {schedule!r}: use 'geometric' or 'fixed'")


def sigma_ladder(sigma_min: float, sigma_max: float, num_steps: int):
    """Geometric σ levels from σ_max down to σ_min, [num_steps]."""
    return jnp.exp(jnp.linspace(math.log(sigma_max), math.log(sigma_min), num_steps))


def perturb(graph, key, sigma_per_graph):
    """Displaces every real atom by σ·ε (σ of its molecule, Å), ε from `per_atom_normal`.

    Returns (noisy positions [n, 3] Å, ε [n, 3]); padding atoms stay where they are, with ε = 0.
    """
    m = graph_masks(graph)
    eps = per_atom_normal(key, graph.globals.graph_id[m.node_graph], graph.nodes.atom_index)
    eps = jnp.where(m.node_mask[:, None], eps, 0.0)  # [n, 3]
    return graph.nodes.positions + sigma_per_graph[m.node_graph][:, None] * eps, eps
