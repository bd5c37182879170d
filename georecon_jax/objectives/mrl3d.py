"""3DMRL pretraining objective: two-way InfoNCE between the 2D pair embedding and the 3D embedding of
a freshly sampled virtual environment, plus α · force prediction.

  loss_pair = ½ (InfoNCE_{2D→3D} + InfoNCE_{3D→2D}) + α · mean_{copy atoms} |f̂ − f|²

InfoNCE uses cosine similarity / τ (τ = 0.2) with the other real pairs of the same device's
sub-batch as negatives (padding pairs are neither anchors nor negatives). The force target f is the
unit vector anchor -> atom; |·|² sums the three components and the mean runs over the real atoms of
the placed copies of that pair. All parameters (2D encoder, both projection heads, 3D encoder and
force head) live in one flax module, so the optimiser sees every one of them (the reference
implementation forgot the force head).
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from georecon_jax.models.et import EquivariantTransformer
from georecon_jax.models.relational import MLP, ForceHead, RelationalEncoder
from georecon_jax.models.schnet import SchNet, masked_mean
from georecon_jax.objectives.environment import radius_adjacency, sample_environments

NEG = -1e9


def info_nce(z_a, z_b, mask, temperature: float = 0.2):
    """Per-pair two-way InfoNCE with cosine similarity, [B] (0 on padding pairs).

    Args: z_a, z_b [B, D] (row i of each is the positive pair), mask [B] bool (real pairs).
    """
    # sqrt(|z|² + ε): a finite gradient also for all-zero rows (padding pairs)
    a = z_a / jnp.sqrt(jnp.sum(z_a ** 2, axis=-1, keepdims=True) + 1e-12)
    b = z_b / jnp.sqrt(jnp.sum(z_b ** 2, axis=-1, keepdims=True) + 1e-12)
    logits = a @ b.T / temperature                                                # [B, B]
    valid = mask[:, None] & mask[None, :]
    logits = jnp.where(valid, logits, NEG)
    diag = jnp.diagonal(logits)
    a_to_b = jax.nn.logsumexp(logits, axis=1) - diag
    b_to_a = jax.nn.logsumexp(logits, axis=0) - diag
    return jnp.where(mask, 0.5 * (a_to_b + b_to_a), 0.0)


class Encoder3D(nn.Module):
    """Environment -> [B, D] embedding pooled (mean) over the first molecule's real atoms."""
    cfg: ml_collections.ConfigDict

    @nn.compact
    def __call__(self, env, atomic_numbers):
        c = self.cfg
        adjacency = radius_adjacency(env.positions, env.node_mask, c.cutoff)        # [B, M, M]
        labels = env.molecule if c.atom_labels == "molecule" else atomic_numbers
        if c.name == "schnet":
            x = SchNet(c.features, c.num_interactions, c.num_gaussians, c.cutoff,
                       num_labels=2 if c.atom_labels == "molecule" else 101, name="schnet")(
                labels, env.positions, env.node_mask, adjacency)
        elif c.name == "et":
            B, M = labels.shape
            # Every pair of atom slots of each environment once (the ET adds both directions and
            # the self-edges), masked by the radius graph.
            i, j = np.triu_indices(M, k=1)
            offs = (np.arange(B) * M)[:, None]
            senders = jnp.asarray((j[None, :] + offs).reshape(-1), jnp.int32)
            receivers = jnp.asarray((i[None, :] + offs).reshape(-1), jnp.int32)
            edge_mask = adjacency[:, i, j].reshape(-1)
            z = labels + 1 if c.atom_labels == "molecule" else labels
            x, _ = EquivariantTransformer(c.num_layers, c.features, c.num_heads, c.num_rbf, c.cutoff,
                                          trainable_rbf=c.get("trainable_rbf", False),
                                          name="encoder")(
                z.reshape(-1), env.positions.reshape(-1, 3), senders, receivers, edge_mask,
                env.node_mask.reshape(-1))
            x = x.reshape(B, M, -1)
        else:
            raise ValueError(f"unknown 3D encoder {c.name!r}: use 'schnet' or 'et'")
        first = env.node_mask & (env.molecule == 0)
        return masked_mean(x, first), adjacency


class MRL3DPretrainer(nn.Module):
    """(PairBatch, Environment, env atomic numbers) -> dict(z2d, z3d [B, P], force [B, M, 3])."""
    cfg: ml_collections.ConfigDict   # config.model

    @nn.compact
    def __call__(self, batch, env, env_atomic_numbers):
        c = self.cfg
        enc = RelationalEncoder(c.relational.features, c.relational.num_steps, c.relational.set2set_steps,
                                name="relational")(batch)
        z2d = MLP(tuple(c.projection_hidden), c.projection_dim, name="proj2d")(enc["pair_embedding"])
        h3d, adjacency = Encoder3D(c.encoder3d, name="encoder3d")(env, env_atomic_numbers)
        z3d = MLP(tuple(c.projection_hidden), c.projection_dim, name="proj3d")(h3d)
        # 2D features of every environment slot's atom and of its copy's anchor atom.
        gather = lambda x, idx: jnp.take_along_axis(x, idx[..., None], axis=1)
        slot_atom = jnp.where(env.node_mask, env.slot_atom, 0)
        atom1 = gather(enc["nodes1"], jnp.minimum(slot_atom, enc["nodes1"].shape[1] - 1))
        atom2 = gather(enc["nodes2"], jnp.minimum(slot_atom, enc["nodes2"].shape[1] - 1))
        atom2d = jnp.where((env.molecule == 0)[..., None], atom1, atom2)               # [B, M, D]
        anchor_atom = jnp.take_along_axis(env.anchors, env.slot_copy, axis=1)          # [B, M]
        anchor2d = gather(enc["nodes1"], anchor_atom)
        force = ForceHead(c.force.features, c.force.num_gaussians, c.force.cutoff, name="force_head")(
            atom2d, anchor2d, env.positions, env.node_mask)
        n_edges = jnp.sum(adjacency, axis=(1, 2))
        return dict(z2d=z2d, z3d=z3d, force=force, n_edges=n_edges)


def environment_for(batch, key, env_cfg):
    """Samples the environments of a PairBatch (dense [B, N, ...] views of its two graphs)."""
    B = batch.pair_mask.shape[0]
    g1, g2 = batch.graph1.nodes, batch.graph2.nodes
    d = lambda x: x.reshape((B, -1) + x.shape[1:])
    env = sample_environments(key, d(g1.positions), d(g1.mask) & batch.pair_mask[:, None], d(g1.in_ring),
                              d(g2.positions), d(g2.mask) & batch.pair_mask[:, None],
                              num_copies=env_cfg.num_copies, min_radius=env_cfg.min_radius,
                              min_distance=env_cfg.min_distance, num_trials=env_cfg.num_trials,
                              max_atoms=env_cfg.get("max_atoms") or None)
    z1 = jnp.take_along_axis(d(g1.atomic_numbers), jnp.minimum(env.slot_atom, d(g1.mask).shape[1] - 1), axis=1)
    z2 = jnp.take_along_axis(d(g2.atomic_numbers), jnp.minimum(env.slot_atom, d(g2.mask).shape[1] - 1), axis=1)
    z = jnp.where(env.molecule == 0, z1, z2)
    return env, jnp.where(env.node_mask, z, 0)


def make_loss_fn(model: MRL3DPretrainer, config: ml_collections.ConfigDict):
    """``loss_fn(params, batch, key) -> (per_pair_loss [B], metrics {name: [B]})``."""
    o = config.objective

    def loss_fn(params, batch, key):
        env, z = environment_for(batch, key, config.environment)
        out = model.apply(params, batch, env, z)
        mask = batch.pair_mask
        contrastive = info_nce(out["z2d"], out["z3d"], mask, o.temperature)
        err = jnp.sum((out["force"] - env.targets) ** 2, axis=-1)                   # [B, M]
        tm = env.target_mask & mask[:, None]
        force = jnp.sum(jnp.where(tm, err, 0.0), axis=1) / jnp.maximum(jnp.sum(tm, axis=1), 1)
        per_pair = contrastive + o.force_weight * force
        # Retrieval accuracy 2D -> 3D within the sub-batch (a readable sign of alignment).
        a = out["z2d"] / jnp.linalg.norm(out["z2d"], axis=-1, keepdims=True)
        b = out["z3d"] / jnp.linalg.norm(out["z3d"], axis=-1, keepdims=True)
        sims = jnp.where(mask[None, :], a @ b.T, -jnp.inf)
        top1 = (jnp.argmax(sims, axis=1) == jnp.arange(mask.shape[0])).astype(jnp.float32)
        metrics = dict(contrastive=contrastive, force_mse=force, retrieval_top1=top1,
                       env_edges=out["n_edges"].astype(jnp.float32),
                       copies=jnp.sum(env.copy_mask, axis=1).astype(jnp.float32),
                       clashes=env.clashes.astype(jnp.float32),
                       copies_cut=env.copies_cut.astype(jnp.float32))
        return per_pair, metrics

    return loss_fn
