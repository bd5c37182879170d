"""Fine-tuning model: the ET encoder plus one property head (TorchMD-Net's output models).

Heads (``config.head.kind``), each returning one number per graph, before target statistics:

  ``scalar``          Σ_i h(x_i): an MLP per atom, summed over real atoms (TorchMD-Net ``Scalar``).
                      Energies, HOMO/LUMO, ... The caller applies std, per-element references and
                      the mean (TorchMD-Net's convention, `objectives.supervised.predict`).
  ``dipole``          |Σ_i q_i (r_i - c) + μ_i| with c the centre of mass: charges q_i (invariant) and
                      atomic dipoles μ_i (equivariant) from gated equivariant blocks (TorchMD-Net
                      ``EquivariantDipoleMoment``). Positions in Å, charges in e; output in debye.
  ``spatial_extent``  Σ_i q_i |r_i - c|² (TorchMD-Net ``ElectronicSpatialExtent``), output in a0².

Parameters live under ``encoder/`` (restored from pretraining), ``head/`` and, when the denoising
auxiliary loss is on, ``node_head/`` (the same module as pretraining's, so Coord's head carries over).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from georecon_jax.models.heads import GatedEquivariantBlock, ScalarHead, VectorHead
from georecon_jax.models.pretrain import make_encoder

E_ANGSTROM_TO_DEBYE = 4.803204544      # 1 e·Å in debye
ANGSTROM2_TO_BOHR2 = 1.0 / 0.529177210903 ** 2
HEAD_KINDS = ("scalar", "dipole", "spatial_extent")

# Standard atomic weights (u) for Z = 0..36; heavier elements use 2.4 Z (only the centre of mass
# of the dipole and spatial-extent heads uses them).
_MASSES = np.array([
    0.0, 1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180, 22.990,
    24.305, 26.982, 28.085, 30.974, 32.06, 35.45, 39.948, 39.098, 40.078, 44.956, 47.867, 50.942,
    51.996, 54.938, 55.845, 58.933, 58.693, 63.546, 65.38, 69.723, 72.630, 74.922, 78.971, 79.904,
    83.798])


def atomic_masses(max_z: int) -> np.ndarray:
    """[max_z + 1] atomic masses (u); index 0 (padding) is 0."""
    out = 2.4 * np.arange(max_z + 1, dtype=np.float64)
    k = min(len(_MASSES), max_z + 1)
    out[:k] = _MASSES[:k]
    return out.astype(np.float32)


def centre_of_mass(positions, atomic_numbers, node_graph, node_mask, n_graph: int, max_z: int):
    """[n_node, 3] the centre of mass of each node's graph (0 weight on padding)."""
    m = jnp.asarray(atomic_masses(max_z))[atomic_numbers] * node_mask
    total = jax.ops.segment_sum(positions * m[:, None], node_graph, num_segments=n_graph)
    mass = jax.ops.segment_sum(m, node_graph, num_segments=n_graph)
    return (total / jnp.maximum(mass, 1e-9)[:, None])[node_graph]


class PropertyModel(nn.Module):
    """ET encoder + property head. ``config`` is the ``model`` section of a fine-tuning config:
    ``encoder`` (as pretraining), ``head.kind``, ``head.hidden`` (0: features // 2) and
    ``denoise_head`` (bool)."""
    config: ml_collections.ConfigDict

    def setup(self):
        cfg = self.config
        F = cfg.encoder.features
        hidden = cfg.head.get("hidden", 0) or max(F // 2, 1)
        kind = cfg.head.kind
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}: use one of {HEAD_KINDS}")
        self.encoder = make_encoder(cfg.encoder)
        if kind == "scalar" or kind == "spatial_extent":
            self.head = ScalarHead(hidden, 1)
        else:
            self.head = _DipoleHead(hidden)
        if cfg.get("denoise_head", False):
            self.node_head = VectorHead(F)

    def encode(self, atomic_numbers, positions, senders, receivers, edge_mask, node_mask):
        return self.encoder(atomic_numbers, positions, senders, receivers, edge_mask, node_mask)

    def readout(self, x, vec, atomic_numbers, positions, node_graph, node_mask, n_graph: int):
        """Per-graph head output [n_graph] (padding atoms contribute nothing)."""
        kind = self.config.head.kind
        max_z = self.config.encoder.get("max_z", 100)
        w = node_mask.astype(x.dtype)
        if kind == "scalar":
            per_atom = self.head(x)[:, 0] * w                                        # [n]
            return jax.ops.segment_sum(per_atom, node_graph, num_segments=n_graph)
        rel = positions - centre_of_mass(positions, atomic_numbers, node_graph, node_mask, n_graph, max_z)
        rel = rel * w[:, None]                                                      # [n, 3]
        if kind == "spatial_extent":
            q = self.head(x)[:, 0] * w
            per_atom = q * jnp.sum(rel ** 2, axis=-1) * ANGSTROM2_TO_BOHR2
            return jax.ops.segment_sum(per_atom, node_graph, num_segments=n_graph)
        q, mu = self.head(x, vec)                                                   # [n], [n, 3]
        dipole = q[:, None] * rel + mu * w[:, None]
        total = jax.ops.segment_sum(dipole, node_graph, num_segments=n_graph)     # [n_graph, 3] e·Å
        return jnp.sqrt(jnp.sum(total ** 2, axis=-1) + 1e-12) * E_ANGSTROM_TO_DEBYE

    def denoise_nodes(self, x, vec):
        return self.node_head(x, vec)

    def __call__(self, atomic_numbers, positions, senders, receivers, edge_mask, node_mask,
                 node_graph, n_graph: int):
        """(per-graph head output [n_graph], x [n, F], vec [n, 3, F]); touches every submodule."""
        x, vec = self.encode(atomic_numbers, positions, senders, receivers, edge_mask, node_mask)
        out = self.readout(x, vec, atomic_numbers, positions, node_graph, node_mask, n_graph)
        if self.config.get("denoise_head", False):
            out = out + 0.0 * jnp.sum(self.denoise_nodes(x, vec))
        return out, x, vec


class _DipoleHead(nn.Module):
    """Two gated equivariant blocks -> (charge q [n], atomic dipole μ [n, 3])."""
    hidden: int

    @nn.compact
    def __call__(self, x, vec):
        x, vec = GatedEquivariantBlock(self.hidden, self.hidden // 2 or 1, scalar_activation=True,
                                       name="block_0")(x, vec)
        q, mu = GatedEquivariantBlock(self.hidden // 2 or 1, 1, name="block_1")(x, vec)
        return q[:, 0], mu[..., 0]
