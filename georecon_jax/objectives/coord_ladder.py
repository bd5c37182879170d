"""Coord with a σ ladder: the worked example of adding a pretraining objective (README).

Coord denoises at one σ (0.04 Å). This variant draws each molecule's σ from a discrete geometric
ladder of ``objective.num_levels`` levels between ``sigma_min`` and ``sigma_max`` (Å), as NCSN's
noise levels, and lets the node head predict the noise from the perturbed structure, as Coord
does. Everything else (heads, forward, loss) is Coord's: the file overrides how σ is drawn.
"""

from __future__ import annotations

import jax.numpy as jnp

from georecon_jax.objectives.coord import Coord
from georecon_jax.objectives.noise import per_graph_uniform, sigma_ladder
from georecon_jax.objectives.registry import register


@register
class CoordLadder(Coord):
    name = "coord_ladder"

    def validate(self):
        problems = super().validate()
        if self.cfg.num_levels < 1:
            problems.append(f"objective.num_levels={self.cfg.num_levels}: need at least 1 level")
        return problems

    def draw_sigma(self, graph, key):
        levels = sigma_ladder(self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.num_levels)  # [K] Å
        u = per_graph_uniform(key, graph.globals.graph_id)  # [n_graph]
        index = jnp.minimum((u * self.cfg.num_levels).astype(jnp.int32), self.cfg.num_levels - 1)
        return levels[index]
