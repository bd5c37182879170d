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

from georecon_jax.graphs.masks import graph_masks, per_graph_mean
from georecon_jax.models.property import PropertyModel
from georecon_jax.objectives.noise import per_atom_normal

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
    """``predict(params, graph, positions) -> (y [n_graph], forces [n, 3] or None, x, vec)``.

    ``y`` is the residual target in its unit; padding graphs hold meaningless values.
    """
    kind = model.config.head.kind

    def to_target(head_out):
        return stats.std * head_out + stats.mean if kind == "scalar" else head_out

    def predict(params, graph, positions):
        m = graph_masks(graph)
        n = graph.nodes

        def forward(pos):
            out, x, vec = model.apply(params, n.atomic_numbers, pos, graph.senders, graph.receivers,
                                      m.edge_mask, m.node_mask, m.node_graph, m.n_graph)
            return to_target(out), x, vec

        if not with_forces:
            y, x, vec = forward(positions)
            return y, None, x, vec

        def total_energy(pos):
            y, x, vec = forward(pos)
            return jnp.sum(jnp.where(m.graph_mask, y, 0.0)), (y, x, vec)

        grad, (y, x, vec) = jax.grad(total_energy, has_aux=True)(positions)
        forces = jnp.where(m.node_mask[:, None], -grad, 0.0)
        return y, forces, x, vec

    return predict


def make_loss_fn(model: PropertyModel, cfg: ml_collections.ConfigDict, stats: TargetStats,
                 train: bool) -> Callable:
    """``loss_fn(params, graph, key) -> (per_graph_loss, per_graph_metrics)`` (see module doc).

    Metrics (per graph, target units): ``mae`` for a property; ``energy_mae`` and ``force_mae``
    (mean over the molecule's atoms and axes) for MD17; ``denoise_mse`` when denoising.
    """
    lc = cfg.loss
    with_forces = cfg.task == "md17"
    point = _pointwise(lc.name)
    predict = make_predict_fn(model, stats, with_forces)
    denoise = train and lc.get("denoise_weight", 0.0) > 0
    if denoise and not cfg.model.get("denoise_head", False):
        raise ValueError("loss.denoise_weight > 0 needs model.denoise_head = True")
    if denoise and with_forces:
        raise ValueError("the denoising auxiliary loss is not defined with force labels "
                         "(forces belong to the undisplaced geometry); set loss.denoise_weight=0")

    def loss_fn(params, graph, key):
        m = graph_masks(graph)
        n = graph.nodes
        positions = n.positions
        if denoise:
            eps = per_atom_normal(key, graph.globals.graph_id[m.node_graph], n.atom_index)
            eps = jnp.where(m.node_mask[:, None], eps, 0.0)
            positions = positions + lc.denoise_sigma * eps
        y, forces, x, vec = predict(params, graph, positions)
        err = y - graph.globals.targets[:, 0]
        loss = point(err / stats.std)
        metrics = {}
        if with_forces:
            ferr = forces - n.forces                                               # [n, 3]
            f_loss = per_graph_mean(jnp.mean(point(ferr / stats.std), axis=-1), m)
            loss = lc.energy_weight * loss + lc.force_weight * f_loss
            metrics.update(energy_mae=jnp.abs(err),
                           force_mae=per_graph_mean(jnp.mean(jnp.abs(ferr), axis=-1), m))
        else:
            metrics["mae"] = jnp.abs(err)
        if denoise:
            eps_hat = model.apply(params, x, vec, method=PropertyModel.denoise_nodes)
            mse = per_graph_mean(jnp.mean((eps_hat - eps) ** 2, axis=-1), m)
            loss = loss + lc.denoise_weight * mse
            metrics["denoise_mse"] = mse
        return loss, metrics

    return loss_fn
