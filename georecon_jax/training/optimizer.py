"""The optimizer of every job: AdamW with a learning-rate schedule, and gradient clipping.

Configured by the ``optim`` section of a config: optimizer ('adamw', or 'sgd': plain SGD with the
same schedule, clipping and decoupled weight decay, an update proportional to the gradient, which
is what the tests compare two layouts of one step with), learning_rate, warmup_steps, weight_decay,
grad_clip (global norm; <= 0: none), schedule, final_lr_fraction (cosine), plateau_factor,
plateau_patience, min_learning_rate (plateau), ema_decay (used by the train step, not here).

Schedules (``optim.schedule``):

  cosine   linear warm-up from 0 over ``warmup_steps``, then cosine decay to
           ``final_lr_fraction`` x ``learning_rate`` at the last step (the default).
  plateau  torchmd-net's ``lr_schedule: reduce_on_plateau`` (``torchmdnet/module.py``:
           ``configure_optimizers`` and ``optimizer_step``; ``examples/ET-MD17.yaml``): update k
           (from 0) uses ``learning_rate x min(1, (k + 1) / warmup_steps) x scale``; ``scale``
           starts at 1 and is lowered by torch's ``ReduceLROnPlateau`` on a validation metric,
           stepped once per evaluation (`plateau_step`, called by the runner): mode
           ``plateau_mode`` ('min', or 'max' for a score such as ROC-AUC: 3DMRL's DDI
           fine-tuning), threshold 1e-4 relative, cooldown 0, eps 1e-8. After ``plateau_patience``
           evaluations without an improvement the next one without multiplies the rate by
           ``plateau_factor``, never below ``min_learning_rate``. A reduction decided while
           warm-up steps remain is lost, as in torchmd-net (its warm-up sets the rate outright).

The plateau's state (`PlateauState`: scale, best value, evaluations without improvement) is a
part of the optimizer state, so it is saved in every checkpoint with the parameters and a resumed
run continues with the reduced rate and the same patience counter.
"""

from __future__ import annotations

import logging
import math
from typing import List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "plateau")
OPTIMIZERS = ("adamw", "sgd")

# torch.optim.lr_scheduler.ReduceLROnPlateau's defaults, which torchmd-net keeps: a value must be
# below best x (1 - PLATEAU_THRESHOLD) to count as an improvement; a reduction smaller than
# PLATEAU_EPS (in learning rate) is not applied.
PLATEAU_THRESHOLD = 1e-4
PLATEAU_EPS = 1e-8


# Not optax.contrib.reduce_on_plateau: it has no 'max' mode, reduces an evaluation early and has no eps.
class PlateauState(NamedTuple):
    """What `plateau_step` carries from one evaluation to the next (scalars, in the opt state)."""

    scale: jax.Array  # float32 []: the rate after warm-up is learning_rate x scale
    best: jax.Array  # float32 []: the best monitored value (torch: inf before the first one)
    has_best: jax.Array  # int32 []: 1 once a finite value has been seen
    num_bad: jax.Array  # int32 []: evaluations since the best without improvement (num_bad_epochs)


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by the state's ``scale``; `plateau_step` changes it between steps.

    Placed after AdamW (whose last stage multiplies by -lr, weight decay included), so that the
    update equals AdamW's at the rate ``lr x scale``."""

    def init(params):
        del params
        return PlateauState(
            scale=jnp.ones((), jnp.float32),
            best=jnp.zeros((), jnp.float32),
            has_best=jnp.zeros((), jnp.int32),
            num_bad=jnp.zeros((), jnp.int32),
        )

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def torch_warmup(learning_rate: float, warmup_steps: int):
    """torchmd-net's warm-up: update k (from 0) at ``learning_rate x min(1, (k + 1) / warmup_steps)``
    (``LNNP.optimizer_step``); no warm-up for ``warmup_steps`` <= 0."""
    if warmup_steps <= 0:
        return optax.constant_schedule(learning_rate)
    return lambda count: learning_rate * jnp.minimum(1.0, (count + 1) / warmup_steps)


def optimizer_problems(cfg: ml_collections.ConfigDict) -> List[str]:
    """Problems with the schedule fields of an ``optim`` section (messages naming the field)."""
    schedule = cfg.schedule
    if schedule not in SCHEDULES:
        return [f"optim.schedule={schedule!r}: use one of {SCHEDULES}"]
    problems = []
    if schedule == "plateau":
        factor, patience, min_lr = cfg.plateau_factor, cfg.plateau_patience, cfg.min_learning_rate
        if cfg.plateau_mode not in ("min", "max"):
            problems.append(f"optim.plateau_mode={cfg.plateau_mode!r}: use 'min' or 'max'")
        if factor is None or not 0 < factor < 1:
            problems.append(f"optim.plateau_factor={factor}: need 0 < factor < 1 (torch refuses >= 1)")
        if patience is None or patience < 0:
            problems.append(f"optim.plateau_patience={patience}: need >= 0 evaluations")
        if min_lr is None or min_lr < 0:
            problems.append(f"optim.min_learning_rate={min_lr}: need >= 0")
        if cfg.warmup_steps < 0:
            problems.append(f"optim.warmup_steps={cfg.warmup_steps}: need >= 0")
    return problems


def create_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW (or SGD: ``cfg.optimizer``) with the schedule of ``cfg.schedule`` (see the module
    docstring), and global-norm gradient clipping."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}: use one of {OPTIMIZERS}")
    problems = optimizer_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    # grad_clip <= 0: no clipping (torchmd-net's fine-tuning); identity keeps the state's structure
    clip = (
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip and cfg.grad_clip > 0 else optax.identity()
    )
    if cfg.schedule == "plateau":
        base = _base_optimizer(cfg, torch_warmup(cfg.learning_rate, cfg.warmup_steps))
        return optax.chain(clip, base, scale_by_plateau())
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction,
    )
    return optax.chain(clip, _base_optimizer(cfg, schedule))


def _base_optimizer(cfg: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    """AdamW, or SGD whose update is -lr x (gradient + weight_decay x parameters): AdamW's
    decoupled decay without the per-element scaling (``cfg.optimizer == 'sgd'``)."""
    if cfg.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.sgd(schedule))
    return optax.adamw(schedule, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------------------------------------
# The plateau schedule's evaluation step (host side, between train steps).


def _is_plateau(x) -> bool:
    return isinstance(x, PlateauState)


def find_plateau(opt_state) -> Optional[PlateauState]:
    """The `PlateauState` inside an optimizer state, or None (another schedule)."""
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
    if len(found) > 1:
        raise ValueError(f"{len(found)} plateau states in one optimizer state")
    return found[0] if found else None


def replace_plateau(opt_state, new: PlateauState):
    """``opt_state`` with its `PlateauState` replaced by ``new`` (host values), each leaf placed
    with the dtype and sharding of the one it replaces, so that the jitted step does not compile
    again."""

    def put(old, value):
        value = np.asarray(value, dtype=old.dtype)
        return jax.device_put(value, old.sharding) if hasattr(old, "sharding") else jnp.asarray(value)

    def visit(x):
        if not _is_plateau(x):
            return x
        return PlateauState(*(put(o, v) for o, v in zip(x, new)))

    return jax.tree_util.tree_map(visit, opt_state, is_leaf=_is_plateau)


def _round_up_f32(x: float) -> np.float32:
    """The smallest float32 >= x (the rate never falls below min_learning_rate by rounding)."""
    y = np.float32(x)
    return y if float(y) >= x else np.nextafter(y, np.float32(np.inf))


def plateau_step(
    state: PlateauState, value: float, step: int, cfg: ml_collections.ConfigDict
) -> Tuple[PlateauState, bool]:
    """One ``ReduceLROnPlateau.step(value)`` (mode ``cfg.plateau_mode``, default 'min'; threshold
    1e-4 'rel', cooldown 0, eps 1e-8) after ``step`` training steps; returns (new state as numpy
    scalars, reduced?).

    ``reduced`` is True when the rate was lowered. A value that is not finite never improves (torch:
    nan never does; -inf would). A reduction decided while warm-up steps remain (``step`` <
    ``warmup_steps``: the next update's rate is set by the warm-up) counts (the patience counter
    restarts) but leaves the scale at 1, as in torchmd-net."""
    scale, best = float(state.scale), float(state.best)
    has_best, num_bad = bool(state.has_best), int(state.num_bad)
    value = float(value)
    if cfg.plateau_mode == "max":  # torch: a > best x (1 + threshold)
        better = math.isfinite(value) and (not has_best or value > best * (1.0 + PLATEAU_THRESHOLD))
    else:
        better = math.isfinite(value) and (not has_best or value < best * (1.0 - PLATEAU_THRESHOLD))
    if better:
        best, has_best, num_bad = value, True, 0
    else:
        num_bad += 1
    reduced = False
    if num_bad > cfg.plateau_patience:
        num_bad = 0
        if step >= cfg.warmup_steps:  # else the warm-up overwrites the rate at the next step
            old = cfg.learning_rate * scale
            new = max(old * cfg.plateau_factor, cfg.min_learning_rate)
            if old - new > PLATEAU_EPS:
                scale, reduced = float(_round_up_f32(new / cfg.learning_rate)), True
    out = PlateauState(
        scale=np.float32(scale),
        best=np.float32(best if has_best else 0.0),
        has_best=np.int32(has_best),
        num_bad=np.int32(num_bad),
    )
    return out, reduced


def plateau_learning_rate(state: PlateauState, step: int, cfg: ml_collections.ConfigDict) -> float:
    """The rate of the update after ``step`` training steps (update index ``step``)."""
    warm = 1.0 if cfg.warmup_steps <= 0 else min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.learning_rate * warm * float(state.scale)


def freeze(tx: optax.GradientTransformation, params, names) -> optax.GradientTransformation:
    """``tx`` with the updates of the modules ``names`` (top-level modules of the model, under
    ``params['params']``) set to zero after it: those parameters never change, weight decay
    included, while gradients still flow through them into the others. Refuses a name the
    parameters lack."""
    top = params.get("params", params)
    missing = [n for n in names if n not in top]
    if missing:
        raise ValueError(f"cannot freeze {missing}: the model's modules are {sorted(top)}")

    def frozen(path, _):
        keys = [getattr(k, "key", None) for k in path]
        keys = keys[1:] if keys and keys[0] == "params" and "params" in params else keys
        return bool(keys) and keys[0] in names

    mask = jax.tree_util.tree_map_with_path(frozen, params)
    return optax.chain(tx, optax.masked(optax.set_to_zero(), mask))
