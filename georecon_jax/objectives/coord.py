"""Coord (Zaidi et al., ICLR 2023): node-level denoising, the baseline GeoRecon is compared with.

Every atom of a molecule is displaced by σ·ε (σ = 0.04 Å in Coord's pretraining, ``schedule =
'fixed'`` at ``sigma_max``); the node-noise head predicts ε from the perturbed structure alone.
Loss: mean over atoms and axes of (ε̂ - ε)².
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import NamedTuple

import jax

from georecon_jax.models.graph import graph_masks, masked_mean
from georecon_jax.models.heads import VectorHead
from georecon_jax.objectives.noise import NoiseNormaliser, perturb, rms_noise_scale, sample_noise_scale
from georecon_jax.objectives.registry import Objective, register


class NodeDenoisingOutputs(NamedTuple):
    eps: jax.Array  # [n, 3] the noise drawn (dimensionless)
    eps_hat: jax.Array  # [n, 3] the node head's prediction from the perturbed structure
    sigma: jax.Array  # [n_graph] Å


def check_sigmas(cfg):
    """Problems with objective.sigma_min / sigma_max (Å)."""
    if not 0 < cfg.sigma_min <= cfg.sigma_max:
        return [
            f"objective.sigma_min={cfg.sigma_min}, sigma_max={cfg.sigma_max}: "
            "need 0 < sigma_min <= sigma_max (Å)"
        ]
    return []


def squared_error(pred, target):
    """Mean over the 3 axes of (pred - target)², per atom: [n, 3] x [n, 3] -> [n]."""
    return ((pred - target) ** 2).mean(axis=-1)


@register
class Coord(Objective):
    name = "coord"
    curves = {
        "loss (dimensionless, ε-MSE)": (("train", "loss", "train"), ("validation", "loss", "validation"))
    }

    def validate(self):
        return check_sigmas(self.cfg)

    def heads(self):
        return {"node_noise": VectorHead(self.config.model.encoder.features)}

    def draw_sigma(self, graph, key):
        """σ per molecule [n_graph] Å (overridden by objectives that draw it differently)."""
        return sample_noise_scale(
            key, graph.globals.graph_id, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.schedule
        )

    def noise_normaliser(self):
        def draw(key, graph_ids):  # draw_sigma reads only graph.globals.graph_id
            return self.draw_sigma(SimpleNamespace(globals=SimpleNamespace(graph_id=graph_ids)), key)

        sigma = rms_noise_scale(draw)
        return NoiseNormaliser.of_sigma(sigma, f"objective {self.name}: rms of the σ it draws, Å")

    def forward(self, model, graph, key):
        sigma = self.draw_sigma(graph, key)
        noisy, eps = perturb(graph, key, sigma)
        emb = model.encode(graph, noisy)
        return NodeDenoisingOutputs(eps, model.heads["node_noise"](*emb), sigma)

    def loss(self, out: NodeDenoisingOutputs, graph):
        mse = masked_mean(squared_error(out.eps_hat, out.eps), graph_masks(graph))  # [n_graph]
        return mse, {"node_denoise_mse": mse, "sigma": out.sigma}
