"""3DMRL pretraining objective: two-way InfoNCE between the 2D pair embedding and the 3D embedding of
a freshly sampled virtual environment, plus α · force prediction.

  loss_pair = InfoNCE_{2D→3D} + InfoNCE_{3D→2D} + α · mean_{copy atoms} |f̂ − f|²

InfoNCE uses cosine similarity / τ (τ = 0.2) with the other real pairs of the same device's
sub-batch as negatives (padding pairs are neither anchors nor negatives), the positive left out of
the denominator, both directions summed: the reference's form (``objective.contrastive``; see
`info_nce`). The force target f is the unit vector anchor -> atom; |·|² sums the three components
and the mean runs over the real atoms of the placed copies of that pair. As in the reference
(MI/pretrainers/MRL3D.py), the force head is not optimised (``objective.train_force_head=False``):
it stays at its initialisation and the force loss trains the 2D encoder through it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from georecon_jax.models.mrl3d import MRL3DOutputs, create_mrl3d_model
from georecon_jax.objectives.environment import sample_environments
from georecon_jax.objectives.registry import Objective, register

NEG = -1e9


CONTRASTIVE = ("reference", "symmetric")


def info_nce(z_a, z_b, mask, temperature: float = 0.2, form: str = "reference"):
    """Per-pair two-way InfoNCE with cosine similarity, [B] (0 on padding pairs).

    ``form='reference'`` (Namkyeong/3DMRL MI/pretrainers/MRL3D.py, ``contrastive_loss`` called both
    ways and summed): -log(e_ii / Σ_{j≠i} e_ij) for 2D→3D plus the same for 3D→2D, the positive
    left out of the denominator; a pair with no negative (alone in its sub-batch) adds 0.
    ``'symmetric'``: ½ (InfoNCE_{a→b} + InfoNCE_{b→a}) with the positive in the denominator (CLIP's).

    Args: z_a, z_b [B, D] (row i of each is the positive pair), mask [B] bool (real pairs).
    """
    # sqrt(|z|² + ε): a finite gradient also for all-zero rows (padding pairs)
    a = z_a / jnp.sqrt(jnp.sum(z_a**2, axis=-1, keepdims=True) + 1e-12)
    b = z_b / jnp.sqrt(jnp.sum(z_b**2, axis=-1, keepdims=True) + 1e-12)
    logits = a @ b.T / temperature  # [B, B]
    valid = mask[:, None] & mask[None, :]
    diag = jnp.diagonal(logits)
    if form == "symmetric":
        logits = jnp.where(valid, logits, NEG)
        a_to_b = jax.nn.logsumexp(logits, axis=1) - diag
        b_to_a = jax.nn.logsumexp(logits, axis=0) - diag
        return jnp.where(mask, 0.5 * (a_to_b + b_to_a), 0.0)
    if form != "reference":
        raise ValueError(f"objective.contrastive={form!r}: use one of {CONTRASTIVE}")
    negatives = valid & ~jnp.eye(mask.shape[0], dtype=bool)
    logits = jnp.where(negatives, logits, NEG)
    a_to_b = jax.nn.logsumexp(logits, axis=1) - diag
    b_to_a = jax.nn.logsumexp(logits, axis=0) - diag
    has_negative = jnp.sum(negatives, axis=1) > 0
    return jnp.where(mask & has_negative, a_to_b + b_to_a, 0.0)


def environment_for(batch, key, env_cfg):
    """Samples the environments of a PairBatch (dense [B, N, ...] views of its two graphs)."""
    B = batch.pair_mask.shape[0]
    g1, g2 = batch.graph1.nodes, batch.graph2.nodes
    d = lambda x: x.reshape((B, -1) + x.shape[1:])
    env = sample_environments(
        key,
        d(g1.positions),
        d(g1.mask) & batch.pair_mask[:, None],
        d(g1.in_ring),
        d(g2.positions),
        d(g2.mask) & batch.pair_mask[:, None],
        num_copies=env_cfg.num_copies,
        min_radius=env_cfg.min_radius,
        min_distance=env_cfg.min_distance,
        num_trials=env_cfg.num_trials,
        max_atoms=env_cfg.get("max_atoms") or None,
        anchors=env_cfg.anchors,
        rotations=env_cfg.rotations,
    )
    z1 = jnp.take_along_axis(
        d(g1.atomic_numbers), jnp.minimum(env.slot_atom, d(g1.mask).shape[1] - 1), axis=1
    )
    z2 = jnp.take_along_axis(
        d(g2.atomic_numbers), jnp.minimum(env.slot_atom, d(g2.mask).shape[1] - 1), axis=1
    )
    z = jnp.where(env.molecule == 0, z1, z2)
    return env, jnp.where(env.node_mask, z, 0)


class MRL3DForward(NamedTuple):
    out: MRL3DOutputs
    force_target: jax.Array  # [B, M, 3] unit vectors anchor -> atom
    force_mask: jax.Array  # [B, M] the copies' real atoms
    copies: jax.Array  # [B] copies placed
    clashes: jax.Array  # [B]
    copies_cut: jax.Array  # [B] copies dropped by the atom budget


@register
class MRL3D(Objective):
    """3DMRL on pairs of molecules (`PairBatch`es): see the module docstring."""

    name = "3dmrl"
    task = "mrl3d"

    def validate(self):
        problems = []
        if self.cfg.temperature <= 0:
            problems.append(f"objective.temperature={self.cfg.temperature}: must be positive")
        if self.cfg.force_weight < 0:
            problems.append(f"objective.force_weight={self.cfg.force_weight}: must be >= 0")
        if self.cfg.contrastive not in CONTRASTIVE:
            problems.append(f"objective.contrastive={self.cfg.contrastive!r}: use one of {CONTRASTIVE}")
        if self.config.model.encoder3d.name not in ("schnet", "et"):
            problems.append(
                f"model.encoder3d.name={self.config.model.encoder3d.name!r}: use 'schnet' or 'et'"
            )
        return problems

    def frozen_modules(self):
        """The reference optimises the 2D and 3D encoders only (MRL3D.py: ``model_param_group``);
        its force head ("denoiser") stays at its initialisation, so only the 2D representations can
        lower the force loss. ``objective.train_force_head=True`` trains it too."""
        return () if self.cfg.train_force_head else ("force_head",)

    def create_model(self):
        return create_mrl3d_model(self.config.model)

    def forward(self, model, batch, key):
        env, z = environment_for(batch, key, self.config.environment)
        return MRL3DForward(
            model(batch, env, z),
            env.targets,
            env.target_mask,
            jnp.sum(env.copy_mask, axis=1),
            env.clashes,
            env.copies_cut,
        )

    def loss(self, f: MRL3DForward, batch):
        out, mask = f.out, batch.pair_mask
        contrastive = info_nce(out.z2d, out.z3d, mask, self.cfg.temperature, self.cfg.contrastive)
        err = jnp.sum((out.force - f.force_target) ** 2, axis=-1)  # [B, M]
        tm = f.force_mask & mask[:, None]
        force = jnp.sum(jnp.where(tm, err, 0.0), axis=1) / jnp.maximum(jnp.sum(tm, axis=1), 1)
        per_pair = contrastive + self.cfg.force_weight * force
        # Retrieval accuracy 2D -> 3D within the sub-batch (a readable sign of alignment).
        a = out.z2d / jnp.linalg.norm(out.z2d, axis=-1, keepdims=True)
        b = out.z3d / jnp.linalg.norm(out.z3d, axis=-1, keepdims=True)
        sims = jnp.where(mask[None, :], a @ b.T, -jnp.inf)
        top1 = (jnp.argmax(sims, axis=1) == jnp.arange(mask.shape[0])).astype(jnp.float32)
        metrics = dict(
            contrastive=contrastive,
            force_mse=force,
            retrieval_top1=top1,
            env_edges=out.n_edges.astype(jnp.float32),
            copies=f.copies.astype(jnp.float32),
            clashes=f.clashes.astype(jnp.float32),
            copies_cut=f.copies_cut.astype(jnp.float32),
        )
        return per_pair, metrics
