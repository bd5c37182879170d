"""Supervised fine-tuning losses: one molecular property (QM9) or energies and forces (MD17).

Targets reach the device as *residuals*: the host subtracts per-element reference energies (or,
for MD17, the mean training energy) in float64 before the float32 cast, so the network never
handles totals of ~1e4 eV. The model predicts the residual the TorchMD-Net way:

    scalar head:   y = std · Σ_i h_i + mean        (std, mean: training-set statistics)
    dipole / R²:   y = head output                 (already in D / a0²)

Forces are F = -∂E/∂R, with ∂ taken by ``jax.grad`` of the summed energies of the real graphs
with respect to the positions (exact, translation invariant, rotation equivariant by construction).

The training loss follows torchmd-net / pre-training-via-denoising (``torchmdnet/module.py``) by
default; each departure is a ``loss.*`` option:

  ``name``            'mse' (the reference's training loss; L1 is only its test metric) or 'l1'.
  ``divide_by_std``   False: errors in the target's unit, as the reference; True: divided by the
                      training std (one learning rate suits every target; the balance with the
                      regulariser changes).
  ``atom_average``    'batch': force and denoising errors averaged over all atoms of the batch
                      (every atom weighs the same, torch's mse_loss over the batch's [N, 3]);
                      'molecule': per molecule first, then over molecules.
  property:  L(err)
  MD17:      energy_weight · energy_loss_scale · L(err_E) + force_weight · ⟨L(err_F)⟩_atoms,xyz
             (``energy_loss_scale`` is torchmd-net's ``ema_alpha_y``: its smoothed loss
             α·L + (1-α)·EMA(detached) has exactly the gradient of α·L; the constant is left out)
and, when ``loss.denoise_weight > 0`` (training only), Coord's fine-tuning regulariser: inputs are
displaced by d = σ·ε (σ = ``loss.denoise_sigma`` Å), the property is predicted from the displaced
input and ``node_head`` predicts the normalised displacement (d - mean) / std, with the pretraining
run's `NoiseNormaliser` (``loss.denoise_normaliser='pretraining'``, the reference's
``pos_normalizer`` carried in the checkpoint: about 0.005/0.04·ε after Coord) or std = σ
(``'sigma'``, and for runs from scratch): + denoise_weight · ⟨(ε̂ - target)²⟩_atoms,xyz.
With forces (Frad's MD17 protocol), energies and forces are predicted at the displaced input and
compared with the labels of the clean structure, as the reference's step does (torchmdnet/module.py:
the dataset's noise transform moves ``pos`` before the forward pass); at σ = 0.005 Å the labels'
own change, |∂F/∂R|·σ, is far below the models' force errors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from georecon_jax.models.graph import graph_masks, masked_mean, masked_sum
from georecon_jax.models.property import PropertyModel
from georecon_jax.objectives.noise import NoiseNormaliser, perturb

LOSSES = ("l1", "mse")
ATOM_AVERAGES = ("batch", "molecule")
DENOISE_NORMALISERS = ("pretraining", "sigma")


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
    scalar = model.readout.standardized

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
    model: PropertyModel,
    cfg: ml_collections.ConfigDict,
    stats: TargetStats,
    train: bool,
    noise_normaliser: Optional[NoiseNormaliser] = None,
) -> Callable:
    """``loss_fn(params, graph, key) -> (per_graph_loss, per_graph_metrics)`` (see module doc).

    ``noise_normaliser``: the pretraining run's (used when ``loss.denoise_normaliser`` is
    'pretraining'); None: std = σ. Metrics (per graph, target units): ``mae`` for a property;
    ``energy_mae`` and ``force_mae`` (mean over the molecule's atoms and axes) for MD17;
    ``denoise_mse`` when denoising.
    """
    lc = cfg.loss
    with_forces = cfg.task == "md17"
    point = _pointwise(lc.name)
    predict = make_predict_fn(model, stats, with_forces)
    denoise = train and lc.denoise_weight > 0
    scale = stats.std if lc.divide_by_std else 1.0
    per_batch = lc.atom_average == "batch"
    energy_scale = lc.energy_loss_scale if train else 1.0
    if lc.atom_average not in ATOM_AVERAGES:
        raise ValueError(f"unknown loss.atom_average {lc.atom_average!r}: use one of {ATOM_AVERAGES}")
    if denoise and model.node_noise is None:
        raise ValueError("loss.denoise_weight > 0 needs model.denoise_head = True")
    normaliser = denoise_normaliser(lc, noise_normaliser) if denoise else None

    def atom_mean(per_atom, m):
        """[n] -> [n_graph]: its per-graph share of the batch's atom mean ('batch': Σ_atoms of the
        graph · n_graphs / n_atoms, so that the step's mean over graphs is the mean over atoms) or
        the molecule's own mean ('molecule')."""
        if not per_batch:
            return masked_mean(per_atom, m)
        n_graphs = jnp.sum(m.graph_mask.astype(jnp.float32))
        n_atoms = jnp.maximum(jnp.sum(m.node_mask.astype(jnp.float32)), 1.0)
        return masked_sum(per_atom, m) * (n_graphs / n_atoms)

    def loss_fn(params, graph, key):
        m = graph_masks(graph)
        positions = graph.nodes.positions
        if denoise:
            sigma = jnp.full(graph.n_node.shape, lc.denoise_sigma, jnp.float32)
            positions, eps = perturb(graph, key, sigma)
        y, forces, emb = predict(params, graph, positions)
        err = y - graph.globals.targets[:, 0]
        loss = point(err / scale)
        metrics = {}
        if with_forces:
            ferr = forces - graph.nodes.forces  # [n, 3]
            f_loss = atom_mean(jnp.mean(point(ferr / scale), axis=-1), m)
            loss = lc.energy_weight * energy_scale * loss + lc.force_weight * f_loss
            metrics.update(
                energy_mae=jnp.abs(err), force_mae=masked_mean(jnp.mean(jnp.abs(ferr), axis=-1), m)
            )
        else:
            metrics["mae"] = jnp.abs(err)
        if denoise:
            eps_hat = model.apply(params, emb, method=PropertyModel.denoise)
            target = normaliser.target(positions - graph.nodes.positions)
            target = jnp.where(m.node_mask[:, None], target, 0.0)
            mse = atom_mean(jnp.mean((eps_hat - target) ** 2, axis=-1), m)
            loss = loss + lc.denoise_weight * mse
            metrics["denoise_mse"] = mse
        return loss, metrics

    return loss_fn


def denoise_normaliser(lc, pretrained: Optional[NoiseNormaliser]) -> NoiseNormaliser:
    """The regulariser's normaliser: the pretraining's (``loss.denoise_normaliser='pretraining'``,
    when there is one) or std = σ."""
    kind = lc.denoise_normaliser
    if kind not in DENOISE_NORMALISERS:
        raise ValueError(f"unknown loss.denoise_normaliser {kind!r}: use one of {DENOISE_NORMALISERS}")
    if kind == "pretraining" and pretrained is not None:
        return pretrained
    return NoiseNormaliser.of_sigma(lc.denoise_sigma, "loss.denoise_sigma (no pretraining normaliser)")


def init_params(model: PropertyModel, graph, key, with_denoise: bool):
    """Parameters of a `PropertyModel`: the readout's forward, and the node-noise head when the
    denoising regulariser uses it."""

    def forward(mdl, g):
        out = mdl(g)
        return mdl.denoise(out.embedding) if with_denoise else out.value

    return jax.jit(lambda k, g: model.init(k, g, method=forward))(key, graph)
