"""Noise for denoising objectives, drawn so that it does not depend on how molecules are batched.

Every atom's noise comes from a key folded from (step key, molecule id, atom index), and every
molecule's noise scale from (step key, molecule id). The same molecule therefore receives the same
noise whether it sits alone, in a padded batch, or on another device: padding, data parallelism
and resumption cannot change the numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Tuple

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


# ---------------------------------------------------------------------------------------------
# The noise normaliser: how a node-noise head's target is scaled.

NOISE_NORMALISER_FILE = "noise_normaliser.json"  # in a pretraining workdir


@dataclasses.dataclass(frozen=True)
class NoiseNormaliser:
    """Per-axis mean and std (Å) of the displacements a node-noise head learnt to predict.

    Coord's reference (pre-training-via-denoising, torchmdnet/models/model.py
    ``AccumulatedNormalization`` ``pos_normalizer``) keeps running statistics of the raw
    displacement σ·ε over pretraining and trains the head on (σ·ε - mean) / std; the statistics
    travel in the checkpoint, so fine-tuning's regulariser at σ = 0.005 Å has the target
    ≈ (0.005 / 0.04)·ε. Here the pretraining writes them (`NOISE_NORMALISER_FILE`) from the
    objective's σ distribution (`rms_noise_scale`), and fine-tuning reads them.
    """

    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    source: str = ""

    @classmethod
    def of_sigma(cls, sigma: float, source: str) -> "NoiseNormaliser":
        return cls((0.0, 0.0, 0.0), (float(sigma),) * 3, source)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "NoiseNormaliser":
        mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"a noise normaliser needs 3 means and 3 positive stds (Å), not {d}")
        return cls(mean, std, str(d.get("source", "")))

    def target(self, displacement):
        """The head's target for raw displacements [n, 3] Å."""
        return (displacement - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def rms_noise_scale(draw_sigma: Callable, num: int = 1 << 16, seed: int = 0) -> float:
    """sqrt(E[σ²]) (Å) of a σ distribution, ``draw_sigma(key, graph_ids) -> σ [num]``: the std per
    axis of the displacement σ·ε that an accumulated normaliser converges to (every molecule's σ
    weighs the same; the reference weighs atoms, which differs only if σ depended on size)."""
    sigma = draw_sigma(jax.random.PRNGKey(seed), jnp.arange(num, dtype=jnp.int32))
    return float(jnp.sqrt(jnp.mean(jnp.square(sigma))))
