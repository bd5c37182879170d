"""The optimizer of every job: AdamW with warm-up and cosine decay, and gradient clipping.

Configured by the ``optim`` section of a config: learning_rate,
warmup_steps, weight_decay, grad_clip (global norm), final_lr_fraction, ema_decay (used by the
train step, not here).
"""

from __future__ import annotations

import ml_collections
import optax


def create_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay, and global-norm gradient clipping."""
    if cfg.optimizer != "adamw":
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: only 'adamw' is implemented")
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.get("final_lr_fraction", 0.0),
    )
    # grad_clip <= 0: no clipping (torchmd-net's fine-tuning); identity keeps the state's structure
    clip = (
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip and cfg.grad_clip > 0 else optax.identity()
    )
    return optax.chain(clip, optax.adamw(schedule, weight_decay=cfg.weight_decay))
