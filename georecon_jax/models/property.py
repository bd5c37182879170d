"""Fine-tuning model: the ET encoder plus one property head (TorchMD-Net's output models).

Heads (``config.head.kind``), each returning one number per graph, before target statistics:

  ``equivariant_scalar``  Σ_i h(x_i, vec_i): two gated equivariant blocks per atom reading scalars
                      and vectors, summed over real atoms (TorchMD-Net ``EquivariantScalar``, what
                      torchmd-net's ``output_model: Scalar`` builds on the ET). Energies, HOMO/LUMO,
                      ... The caller applies std, per-element references and the mean (TorchMD-Net's
                      convention, `objectives.supervised.make_predict_fn`).
  ``mlp``             Σ_i h(x_i): an MLP on the scalars only (TorchMD-Net ``Scalar``, as used with
                      its non-equivariant models; this project's head before 2026-12; ``scalar`` is
                      an alias kept for older configs).
  ``dipole``          |Σ_i q_i (r_i - c) + μ_i| with c the centre of mass: charges q_i (invariant) and
                      atomic dipoles μ_i (equivariant) from gated equivariant blocks (TorchMD-Net
                      ``EquivariantDipoleMoment``). Positions in Å, charges in e; output in debye.
  ``spatial_extent``  Σ_i q_i |r_i - c|² (TorchMD-Net ``ElectronicSpatialExtent``), output in a0².

`PropertyModel` is called on a padded graph (positions overridable, for forces) and returns a
typed `PropertyOutput`. Parameters live under ``encoder/`` (restored from pretraining),
``readout/`` and, when Coord's denoising regulariser is on, ``node_noise/`` (the same module as
pretraining's node-noise head, so Coord's head carries over).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from georecon_jax.models.graph import GraphMasks, NodeEmbedding, graph_masks, masked_sum
from georecon_jax.models.heads import EquivariantHead, ScalarHead, VectorHead
from georecon_jax.models.pretrain import encode, make_encoder

E_ANGSTROM_TO_DEBYE = 4.803204544  # 1 e·Å in debye
ANGSTROM2_TO_BOHR2 = 1.0 / 0.529177210903**2
HEAD_KINDS = ("equivariant_scalar", "mlp", "dipole", "spatial_extent")
HEAD_ALIASES = {"scalar": "mlp"}  # the name of the MLP head before 2026-12

# Standard atomic weights (u) for Z = 0..36; heavier elements use 2.4 Z (only the centre of mass
# of the dipole and spatial-extent heads uses them).
_MASSES = np.array(
    [
        0.0,
        1.008,
        4.0026,
        6.94,
        9.0122,
        10.81,
        12.011,
        14.007,
        15.999,
        18.998,
        20.180,
        22.990,
        24.305,
        26.982,
        28.085,
        30.974,
        32.06,
        35.45,
        39.948,
        39.098,
        40.078,
        44.956,
        47.867,
        50.942,
        51.996,
        54.938,
        55.845,
        58.933,
        58.693,
        63.546,
        65.38,
        69.723,
        72.630,
        74.922,
        78.971,
        79.904,
        83.798,
    ]
)


def atomic_masses(max_z: int) -> np.ndarray:
    """[max_z + 1] atomic masses (u); index 0 (padding) is 0."""
    out = 2.4 * np.arange(max_z + 1, dtype=np.float64)
    k = min(len(_MASSES), max_z + 1)
    out[:k] = _MASSES[:k]
    return out.astype(np.float32)


def centre_of_mass(positions, atomic_numbers, masks: GraphMasks, max_z: int):
    """[n_node, 3] the centre of mass of each node's graph (0 weight on padding)."""
    m = jnp.asarray(atomic_masses(max_z))[atomic_numbers]  # [n] u
    total = masked_sum(positions * m[:, None], masks)  # [n_graph, 3]
    mass = masked_sum(m, masks)  # [n_graph]
    return (total / jnp.maximum(mass, 1e-9)[:, None])[masks.node_graph]


class PropertyOutput(NamedTuple):
    value: jax.Array  # [n_graph] the head's output (before target statistics)
    embedding: NodeEmbedding  # the encoder's features, for auxiliary heads


class ScalarReadout(nn.Module):
    """Σ_i h(x_i) over real atoms (TorchMD-Net ``Scalar``): [n_graph]."""

    hidden: int
    zero_output: bool = False  # ``model.head.zero_init``: the head's last layer starts at zero
    standardized = True  # the output is scaled by the target's std and shifted by its mean

    @nn.compact
    def __call__(self, emb: NodeEmbedding, atomic_numbers, positions, masks: GraphMasks):
        head = ScalarHead(self.hidden, 1, zero_output=self.zero_output, name="head")
        return masked_sum(head(emb.scalars)[:, 0], masks)


class EquivariantScalarReadout(nn.Module):
    """Σ_i h(x_i, vec_i) over real atoms (TorchMD-Net ``EquivariantScalar``): [n_graph]."""

    hidden: int
    zero_output: bool = False
    standardized = True

    @nn.compact
    def __call__(self, emb: NodeEmbedding, atomic_numbers, positions, masks: GraphMasks):
        head = EquivariantHead(self.hidden, zero_output=self.zero_output, name="head")
        return masked_sum(head(emb.scalars, emb.vectors)[0], masks)


class _CentredReadout(nn.Module):
    """A readout of the positions relative to the centre of mass, ``rel`` [n, 3] Å: its
    ``reduce(emb, rel, masks)`` gives [n_graph]."""

    hidden: int
    max_z: int = 100
    zero_output: bool = False
    standardized = False

    @nn.compact
    def __call__(self, emb: NodeEmbedding, atomic_numbers, positions, masks: GraphMasks):
        rel = positions - centre_of_mass(positions, atomic_numbers, masks, self.max_z)  # [n, 3] Å
        return self.reduce(emb, rel, masks)


class SpatialExtentReadout(_CentredReadout):
    """Σ_i q_i |r_i - c|² in a0² (TorchMD-Net ``ElectronicSpatialExtent``): [n_graph]."""

    def reduce(self, emb: NodeEmbedding, rel, masks: GraphMasks):
        q = ScalarHead(self.hidden, 1, zero_output=self.zero_output, name="head")(emb.scalars)[:, 0]  # [n]
        return masked_sum(q * jnp.sum(rel**2, axis=-1) * ANGSTROM2_TO_BOHR2, masks)


class DipoleReadout(_CentredReadout):
    """|Σ_i q_i (r_i - c) + μ_i| in debye (TorchMD-Net ``EquivariantDipoleMoment``): [n_graph]."""

    def reduce(self, emb: NodeEmbedding, rel, masks: GraphMasks):
        head = EquivariantHead(self.hidden, zero_output=self.zero_output, name="head")
        q, mu = head(emb.scalars, emb.vectors)  # [n], [n, 3]
        total = masked_sum(q[:, None] * rel + mu, masks)  # [n_graph, 3] e·Å
        return jnp.sqrt(jnp.sum(total**2, axis=-1) + 1e-12) * E_ANGSTROM_TO_DEBYE


READOUTS = {
    "equivariant_scalar": EquivariantScalarReadout,
    "mlp": ScalarReadout,
    "spatial_extent": SpatialExtentReadout,
    "dipole": DipoleReadout,
}
# The reference's hidden width for head.hidden = 0 (torchmd-net output_modules.py): the gated
# heads' first block is F wide; the MLPs' hidden layer F // 2.
_GATED = ("equivariant_scalar", "dipole")


class PropertyModel(nn.Module):
    """ET encoder + one property readout (+ optionally Coord's node-noise head)."""

    encoder: nn.Module
    readout: nn.Module
    node_noise: Optional[nn.Module] = None

    def __call__(self, graph: jraph.GraphsTuple, positions=None) -> PropertyOutput:
        """The readout of every graph [n_graph] (padding graphs hold meaningless values) at the
        graph's positions, or at ``positions`` [n, 3] Å (differentiate with respect to them for
        forces)."""
        pos = graph.nodes.positions if positions is None else positions
        emb = encode(self.encoder, graph, pos)
        value = self.readout(emb, graph.nodes.atomic_numbers, pos, graph_masks(graph))
        return PropertyOutput(value, emb)

    def denoise(self, emb: NodeEmbedding):
        """Coord's node-noise prediction ε̂ [n, 3] from the encoder's features."""
        if self.node_noise is None:
            raise ValueError("this model has no node_noise head (model.denoise_head=False)")
        return self.node_noise(emb.scalars, emb.vectors)


def create_property_model(model_cfg) -> PropertyModel:
    """A `PropertyModel` from a fine-tuning config's ``model`` section: ``encoder`` (as in
    pretraining), ``head.kind`` (see `HEAD_KINDS`), ``head.hidden`` (0: torchmd-net's width, F for
    the gated heads and F // 2 for the MLPs), ``head.zero_init`` (False: torchmd-net's Xavier
    init of the head's last layer; True: zeros, so that the model predicts the target mean at
    init) and ``denoise_head``."""
    F = model_cfg.encoder.features
    kind = HEAD_ALIASES.get(model_cfg.head.kind, model_cfg.head.kind)
    if kind not in READOUTS:
        raise ValueError(f"unknown head kind {kind!r}: use one of {HEAD_KINDS}")
    if model_cfg.head.zero_init and kind == "dipole":
        raise ValueError(
            "model.head.zero_init=True does not apply to the dipole head: its output |Σ q r + μ| "
            "would start at 0, where it has no gradient"
        )
    hidden = model_cfg.head.hidden or (F if kind in _GATED else max(F // 2, 1))
    kwargs = {"max_z": model_cfg.encoder.max_z} if kind in ("dipole", "spatial_extent") else {}
    return PropertyModel(
        encoder=make_encoder(model_cfg.encoder),
        readout=READOUTS[kind](hidden, zero_output=model_cfg.head.zero_init, **kwargs),
        node_noise=VectorHead(F) if model_cfg.denoise_head else None,
    )
