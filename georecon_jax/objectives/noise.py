"""Noise for denoising objectives, drawn so that it does not depend on how molecules are batched.

Every atom's noise comes from a key folded from (step key, molecule id, atom index), and every
molecule's noise scale from (step key, molecule id). The same molecule therefore receives the same
noise whether it sits alone, in a padded batch, or on another device: padding, data parallelism
and resumption cannot change the numbers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Tuple

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


# ---------------------------------------------------------------------------------------------
# Noise and the neighbour list: a radius list built from the clean positions must not leak them.

#: How many σ of per-coordinate noise ``graph.skin`` must cover (`neighbor_list_problems`):
#: 4 standard deviations of a pair's relative displacement per axis (σ√2), times √3 for its
#: length in three dimensions, i.e. 4·σ·√6 ≈ 9.8·σ.
SKIN_PER_SIGMA = 4.0 * math.sqrt(2.0) * math.sqrt(3.0)

#: P(|ε_i - ε_j|·σ > SKIN_PER_SIGMA·σ) for one pair: the χ distribution with 3 degrees of freedom
#: beyond 4√3 (scipy.stats.chi(3).sf(4 * 3 ** 0.5)).
SKIN_MISS_PROBABILITY = 2.13e-10


def required_skin(sigma: float) -> float:
    """The smallest ``graph.skin`` (Å) for a radius list built from clean positions to serve atoms
    displaced by σ·ε, ε ~ N(0, I) per coordinate (σ in Å): `SKIN_PER_SIGMA` x σ."""
    return SKIN_PER_SIGMA * float(sigma)


def neighbor_list_problems(graph_cfg, sigma: float, field: str) -> List[str]:
    """Problems with evaluating structures displaced by σ·ε (``field`` names σ, in Å) on the
    candidate pairs of ``graph_cfg`` (a config's ``graph`` section); [] when safe.

    With ``graph.neighbor_list='radius'`` the candidate pairs are those closer than cutoff + skin
    at the *clean* positions (`georecon_jax.graphs.batching`). The model sees the radius graph
    at the positions it is given only if no pair left out comes within the cutoff; one that does
    is missing from the model's graph, and which pairs are missing tells the model which atoms are
    far apart in the clean structure: the list leaks the clean geometry (and loses an edge).
    A left-out pair (clean distance >= cutoff + skin) can come within the cutoff only if the
    relative displacement of its atoms, σ·(ε_i - ε_j), is longer than the skin. Each of its
    components has std σ√2, so its length over σ√2 follows the χ distribution with 3 degrees of
    freedom (rms σ√6). The criterion is skin >= 4·σ·√2·√3 (`SKIN_PER_SIGMA`, 9.8 σ): a left-out
    pair comes within the cutoff with probability <= 2.1e-10 per pair and evaluation
    (`SKIN_MISS_PROBABILITY`), i.e. about 0.03 times in a whole paper-scale Coord pretraining
    (200,000 steps x 70 QM9 molecules x 11 left-out pairs each, the mean over 5,000 random QM9
    molecules at skin 0.39 Å), and then almost always just inside the cutoff (the tail is steep),
    where the cosine cutoff weighs the pair ~0. At 3 std (7.3 σ) it would be 5.9e-6 per pair:
    hundreds of times per run. Coord's σ = 0.04 Å needs skin >= 0.39 Å (the default 1.0 Å
    serves), the fine-tuning regulariser's 0.005 Å 0.049 Å; GeoRecon's σ_max = 2 Å needs 19.6 Å,
    i.e. all pairs. ``all_pairs`` lists every pair: always exact.
    """
    if graph_cfg is None:
        return []
    kind = graph_cfg.neighbor_list
    if kind == "all_pairs":
        return []
    if kind != "radius":
        return [f"graph.neighbor_list={kind!r}: use 'all_pairs' or 'radius'"]
    if sigma is None or not sigma > 0:
        return []  # the objective's own checks name a non-positive σ
    skin, need = float(graph_cfg.skin), required_skin(sigma)
    if skin >= need:
        return []
    return [
        f"graph.skin={skin:g} Å covers relative displacements of two atoms up to {skin:g} Å, but "
        f"{field}={sigma:g} Å moves every atom by σ·ε (ε ~ N(0, 1) per axis): a pair's relative "
        f"displacement has std σ√2 = {sigma * math.sqrt(2):.3g} Å per axis and rms length σ√6 = "
        f"{sigma * math.sqrt(6):.3g} Å, so pairs left out of the radius list (built from the clean "
        "positions) can come within the cutoff: the list would leak the clean geometry. Use "
        f"graph.neighbor_list=all_pairs, or graph.skin >= 4·σ·√2·√3 = {need:.3g} Å (a left-out pair "
        f"then comes within the cutoff with probability < {SKIN_MISS_PROBABILITY:.1g} per evaluation)"
    ]
