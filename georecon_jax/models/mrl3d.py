"""The 3DMRL pretraining model (Lee et al., NeurIPS 2025): the 2D relational model, a 3D encoder
of the virtual environment, the two projection heads and the force head.

`MRL3DPretrainer` is called on a `PairBatch` (two padded molecular graphs per pair) and the
sampled `Environment` of each pair, and returns a typed `MRL3DOutputs`. Its parts are modules
given by `create_mrl3d_model(model_cfg)`; their parameters are named ``relational/`` (what pair
fine-tuning restores), ``proj2d/``, ``encoder3d/``, ``proj3d/`` and ``force_head/``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from georecon_jax.models.et import EquivariantTransformer
from georecon_jax.models.relational import MLP, ForceHead, RelationalEncoder
from georecon_jax.models.graph import masked_mean, slot_masks
from georecon_jax.models.schnet import SchNet


def radius_adjacency(positions, node_mask, cutoff: float):
    """[..., M, M] bool: both atoms real, distinct slots, distance < cutoff (Å)."""
    # Per-coordinate differences: XLA:CPU is ~10x slower reducing a trailing axis of size 3.
    d2 = sum((positions[..., :, None, c] - positions[..., None, :, c]) ** 2 for c in range(3))
    M = positions.shape[-2]
    both = node_mask[..., :, None] & node_mask[..., None, :]
    return both & (d2 < cutoff**2) & ~jnp.eye(M, dtype=bool)


class MRL3DOutputs(NamedTuple):
    z2d: jax.Array  # [B, P] projection of the 2D pair embedding
    z3d: jax.Array  # [B, P] projection of the 3D environment embedding
    force: jax.Array  # [B, M, 3] predicted force on every environment atom slot
    n_edges: jax.Array  # [B] directed edges of each environment's radius graph


class Encoder3D(nn.Module):
    """Environment -> [B, D] embedding, pooled (mean) over the first molecule's real atoms.

    ``kind``: 'schnet' (3DMRL) or 'et' (this project's equivariant transformer, which can start
    from a GeoRecon/Coord checkpoint). ``atom_labels``: 'molecule' (which molecule an atom belongs
    to, as 3DMRL) or 'element' (atomic numbers, for a pretrained ET)."""

    kind: str = "schnet"
    atom_labels: str = "molecule"
    features: int = 64
    cutoff: float = 5.0
    num_interactions: int = 6  # SchNet
    num_gaussians: int = 50  # SchNet
    num_layers: int = 4  # ET
    num_heads: int = 4  # ET
    num_rbf: int = 32  # ET
    trainable_rbf: bool = False  # ET

    @nn.compact
    def __call__(self, env, atomic_numbers):
        adjacency = radius_adjacency(env.positions, env.node_mask, self.cutoff)  # [B, M, M]
        labels = env.molecule if self.atom_labels == "molecule" else atomic_numbers  # [B, M]
        if self.kind == "schnet":
            x = SchNet(
                self.features,
                self.num_interactions,
                self.num_gaussians,
                self.cutoff,
                num_labels=2 if self.atom_labels == "molecule" else 101,
                name="schnet",
            )(labels, env.positions, env.node_mask, adjacency)
        elif self.kind == "et":
            B, M = labels.shape
            # Every pair of atom slots of each environment once (the ET adds both directions and
            # the self-edges), masked by the radius graph.
            i, j = np.triu_indices(M, k=1)
            offs = (np.arange(B) * M)[:, None]
            senders = jnp.asarray((j[None, :] + offs).reshape(-1), jnp.int32)
            receivers = jnp.asarray((i[None, :] + offs).reshape(-1), jnp.int32)
            edge_mask = adjacency[:, i, j].reshape(-1)
            z = labels + 1 if self.atom_labels == "molecule" else labels
            x, _ = EquivariantTransformer(
                self.num_layers,
                self.features,
                self.num_heads,
                self.num_rbf,
                self.cutoff,
                trainable_rbf=self.trainable_rbf,
                name="encoder",
            )(
                z.reshape(-1),
                env.positions.reshape(-1, 3),
                senders,
                receivers,
                edge_mask,
                env.node_mask.reshape(-1),
            )
            x = x.reshape(B, M, -1)
        else:
            raise ValueError(f"unknown 3D encoder {self.kind!r}: use 'schnet' or 'et'")
        first = env.node_mask & (env.molecule == 0)  # [B, M]
        return masked_mean(x.reshape(first.size, -1), slot_masks(first)), adjacency


class MRL3DPretrainer(nn.Module):
    """(PairBatch, Environment, environment atomic numbers [B, M]) -> `MRL3DOutputs`."""

    relational: nn.Module
    proj2d: nn.Module
    encoder3d: nn.Module
    proj3d: nn.Module
    force_head: nn.Module

    def __call__(self, batch, env, env_atomic_numbers) -> MRL3DOutputs:
        enc = self.relational(batch)
        z2d = self.proj2d(enc["pair_embedding"])
        h3d, adjacency = self.encoder3d(env, env_atomic_numbers)
        z3d = self.proj3d(h3d)
        # 2D features of every environment slot's atom and of its copy's anchor atom.
        gather = lambda x, idx: jnp.take_along_axis(x, idx[..., None], axis=1)
        slot_atom = jnp.where(env.node_mask, env.slot_atom, 0)
        atom1 = gather(enc["nodes1"], jnp.minimum(slot_atom, enc["nodes1"].shape[1] - 1))
        atom2 = gather(enc["nodes2"], jnp.minimum(slot_atom, enc["nodes2"].shape[1] - 1))
        atom2d = jnp.where((env.molecule == 0)[..., None], atom1, atom2)  # [B, M, D]
        anchor_atom = jnp.take_along_axis(env.anchors, env.slot_copy, axis=1)  # [B, M]
        anchor2d = gather(enc["nodes1"], anchor_atom)
        force = self.force_head(atom2d, anchor2d, env.positions, env.node_mask)
        return MRL3DOutputs(z2d, z3d, force, jnp.sum(adjacency, axis=(1, 2)))


def create_mrl3d_model(model_cfg) -> MRL3DPretrainer:
    """The model from a 3DMRL config's ``model`` section."""
    r, e, f = model_cfg.relational, model_cfg.encoder3d, model_cfg.force
    hidden: Sequence[int] = tuple(model_cfg.projection_hidden)
    return MRL3DPretrainer(
        relational=RelationalEncoder(r.features, r.num_steps, r.set2set_steps, r.architecture),
        proj2d=MLP(hidden, model_cfg.projection_dim),
        encoder3d=Encoder3D(
            kind=e.name,
            atom_labels=e.atom_labels,
            features=e.features,
            cutoff=e.cutoff,
            num_interactions=e.num_interactions,
            num_gaussians=e.num_gaussians,
            num_layers=e.num_layers,
            num_heads=e.num_heads,
            num_rbf=e.num_rbf,
            trainable_rbf=e.trainable_rbf,
        ),
        proj3d=MLP(hidden, model_cfg.projection_dim),
        force_head=ForceHead(f.features, f.num_gaussians, f.cutoff),
    )
