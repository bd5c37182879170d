"""Supervised fine-tuning losses: one molecular property (QM9) or energies and forces (MD17).

Targets reach the device as *residuals*: the host subtracts per-element reference energies (or,
for MD17, the mean training energy) in float64 before the float32 cast, so the network never
handles totals of ~1e4 eV. The model predicts the residual the TorchMD-Net way:

    scalar head:   y = std · Σ_i h_i + mean        (std, mean: training-set statistics)
    dipole / R²:   y = head output                 (already in D / a0²)

Forces are F = -∂E/∂R, with ∂ taken by ``jax.grad`` of the summed energies of the real graphs
with respect to the positions (exact, translation invariant, rotation equivariant by construction).

Loss per molecule (``loss.name`` 'l1' or 'mse'), errors divided by ``std`` so that one learning
rate suits every target (a constant factor for each target; it does not change the optimum):
  property:  L(err / std)
  MD17:      energy_weight · L(err_E / std) + force_weight · mean_atoms,xyz L(err_F / std)
and, when ``loss.denoise_weight > 0`` (training only), Coord's fine-tuning regulariser: inputs are
displaced by σ·ε (σ = ``loss.denoise_sigma`` Å), the property is predicted from the displaced
input and ``node_head`` predicts ε: + denoise_weight · mean (ε̂ - ε)².
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from georecon_jax.models.graph import graph_masks, masked_mean
from georecon_jax.models.property import PropertyModel, ScalarReadout
from georecon_jax.objectives.noise import perturb

LOSSES = ("l1", "mse")


@dataclasses.dataclass(frozen=True)
class TargetStats:
    """Training-set statistics of the residual target (target unit)."""

    mean: float = 0.0
    std: float = 1.0

    def to_json(self):
        return dataclasses.asdict(self)


def _pointwise(name: str):
    if name == "l1":
        return jnp.abs
    if name == "mse":
        return jnp.square
    raise ValueError(f"unknown loss {name!r}: use one of {LOSSES}")


def make_predict_fn(model: PropertyModel, stats: TargetStats, with_forces: bool) -> Callable:
    """``predict(params, graph, positions) -> (y [n_graph], forces [n, 3] or None, embedding)``.

    ``y`` is the residual target in its unit; padding graphs hold meaningless values.
    """
    scalar = isinstance(model.readout, ScalarReadout)

    def forward(params, graph, positions):
        out = model.apply(params, graph, positions)
        y = stats.std * out.value + stats.mean if scalar else out.value
        return y, out.embedding

    def predict(params, graph, positions):
        if not with_forces:
            y, emb = forward(params, graph, positions)
            return y, None, emb
        m = graph_masks(graph)

        def total_energy(pos):
            y, emb = forward(params, graph, pos)
            return jnp.sum(jnp.where(m.graph_mask, y, 0.0)), (y, emb)

        grad, (y, emb) = jax.grad(total_energy, has_aux=True)(positions)
        return y, jnp.where(m.node_mask[:, None], -grad, 0.0), emb

    return predict


def make_loss_fn(
    model: PropertyModel, cfg: ml_collections.ConfigDict, stats: TargetStats, train: bool
) -> Callable:
    """``loss_fn(params, graph, key) -> (per_graph_loss, per_graph_metrics)`` (see module doc).

    Metrics (per graph, target units): ``mae`` for a property; ``energy_mae`` and ``force_mae``
    (mean over the molecule's atoms and axes) for MD17; ``denoise_mse`` when denoising.
    """
    lc = cfg.loss
    with_forces = cfg.task == "md17"
    point = _pointwise(lc.name)
    predict = make_predict_fn(model, stats, with_forces)
    denoise = train and lc.get("denoise_weight", 0.0) > 0
    if denoise and model.node_noise is None:
        raise ValueError("loss.denoise_weight > 0 needs model.denoise_head = True")
    if denoise and with_forces:
        raise ValueError(
            "the denoising auxiliary loss is not defined with force labels "
            "(forces belong to the undisplaced geometry); set loss.denoise_weight=0"
        )

    def loss_fn(params, graph, key):
        m = graph_masks(graph)
        positions = graph.nodes.positions
        if denoise:
            sigma = jnp.full(graph.n_node.shape, lc.denoise_sigma, jnp.float32)
            positions, eps = perturb(graph, key, sigma)
        y, forces, emb = predict(params, graph, positions)
        err = y - graph.globals.targets[:, 0]
        loss = point(err / stats.std)
        metrics = {}
        if with_forces:
            ferr = forces - graph.nodes.forces  # [n, 3]
            f_loss = masked_mean(jnp.mean(point(ferr / stats.std), axis=-1), m)
            loss = lc.energy_weight * loss + lc.force_weight * f_loss
            metrics.update(
                energy_mae=jnp.abs(err), force_mae=masked_mean(jnp.mean(jnp.abs(ferr), axis=-1), m)
            )
        else:
            metrics["mae"] = jnp.abs(err)
        if denoise:
            eps_hat = model.apply(params, emb, method=PropertyModel.denoise)
            mse = masked_mean(jnp.mean((eps_hat - eps) ** 2, axis=-1), m)
            loss = loss + lc.denoise_weight * mse
            metrics["denoise_mse"] = mse
        return loss, metrics

    return loss_fn


def init_params(model: PropertyModel, graph, key, with_denoise: bool):
    """Parameters of a `PropertyModel`: the readout's forward, and the node-noise head when the
    denoising regulariser uses it."""

    def forward(mdl, g):
        out = mdl(g)
        return mdl.denoise(out.embedding) if with_denoise else out.value

    return jax.jit(lambda k, g: model.init(k, g, method=forward))(key, graph)
