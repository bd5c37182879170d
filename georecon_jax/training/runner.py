"""The one experiment runner: every training job of the library runs through `run_experiment`.

The runner owns what every job shares: the workdir lock, the config record (resuming with another
model is refused), the device mesh, the optimizer and train state, the jitted data-parallel train
step, the loop with its progress bar, metrics (``metrics.jsonl``, TensorBoard), checkpoints,
resume from the newest complete checkpoint, SIGTERM, and ``summary.json``.

A job is described by a *task* (``georecon_jax.tasks``), which supplies what differs:

  * ``validate(config) -> [problem, ...]``: refused before anything runs, naming each field;
  * ``build(config, workdir, mesh, key) -> Job``: data, model, initial parameters, loss and the
    hooks (evaluation, best checkpoint, early stopping);
  * ``finish(config, workdir, job, state) -> dict``: reports and plots, merged into the summary;
  * ``compare_sections``: the config sections that must match to resume a workdir.

Everything in here is chemistry-free: batches are opaque pytrees with a leading device axis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import jax
import jraph
import ml_collections

from georecon_jax.training import steps as steps_lib
from georecon_jax.training.checkpoint import Checkpointer
from georecon_jax.training.loop import MetricsWriter, first_and_last, fit, record_config, workdir_lock
from georecon_jax.training.prefetch import resolve_workers
from georecon_jax.training.optimizer import (
    create_optimizer,
    find_plateau,
    freeze,
    optimizer_problems,
    plateau_learning_rate,
    plateau_step,
    replace_plateau,
)
from georecon_jax.training.state import (
    create_train_state,
    initialize_distributed,
    is_primary,
    make_mesh,
    replicate,
    shard_batch,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Job:
    """What a task hands the runner for one training run.

    Attributes:
      params: fresh initial parameters (a checkpoint in the workdir replaces them on resume).
      apply_fn: the model's apply (kept in the train state).
      loss_fn: ``(params, batch, key) -> (per-example loss [B], {metric: [B]})`` on one device's
        sub-batch; the step averages over the real examples of all devices (``mask_fn``).
      train_batch: ``k -> host batch`` with a leading device axis (runs in a prefetch thread).
      num_steps: total training steps (the learning-rate schedule's length).
      eval_fn: ``(state, step) -> metrics`` on held-out data (see `loss_evaluator`), or None.
      on_eval: hooks ``(step, state, metrics) -> stop?`` after each evaluation.
      done: the run has already ended for good (e.g. early stopping): do not train further.
      closers: objects whose ``close()`` runs at the end (e.g. a best-checkpoint hook).
      mask_fn, fold_in_device, count_name: see `training.steps.make_train_step`.
      plateau_metric: the validation metric that ``optim.schedule='plateau'`` follows (default
        the validation loss, torchmd-net's ``val_total_mse_loss``).
    """

    params: Any
    apply_fn: Callable
    loss_fn: Callable
    train_batch: Callable[[int], Any]
    num_steps: int
    eval_fn: Optional[Callable] = None
    on_eval: Sequence[Callable] = ()
    done: bool = False
    closers: Sequence[Any] = ()
    mask_fn: Callable = jraph.get_graph_padding_mask
    fold_in_device: bool = False
    count_name: str = "num_graphs"
    desc: str = "train"
    # Loop intervals in steps when the job sets them (e.g. once per epoch); else the config's.
    eval_every: Optional[int] = None
    checkpoint_every: Optional[int] = None
    log_every: Optional[int] = None
    plateau_metric: str = "loss"
    # top-level modules whose parameters the optimizer never changes (`optimizer.freeze`)
    frozen: Sequence[str] = ()


def loop_problems(config: ml_collections.ConfigDict) -> List[str]:
    """Problems with the settings every run shares (positive sizes, a positive learning rate)."""
    problems = [
        f"{field}={config[field]}: must be positive"
        for field in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints")
        if field in config and config[field] <= 0
    ]
    if config.optim.learning_rate <= 0:
        problems.append(f"optim.learning_rate={config.optim.learning_rate}: must be positive")
    if config.optim.schedule == "plateau" and "eval_every" in config and config.eval_every <= 0:
        problems.append(
            f"optim.schedule='plateau' with eval_every={config.eval_every}: the schedule lowers the rate "
            "from validation evaluations; evaluate (eval_every > 0) or use 'cosine'"
        )
    try:  # before any data is read, not when training starts
        resolve_workers(config.data.workers)
    except ValueError as e:
        problems.append(str(e))
    return problems + optimizer_problems(config.optim)


class ConfigError(ValueError):
    """A config that cannot run; the message names each field and why."""


def check_config(task, config: ml_collections.ConfigDict):
    problems = loop_problems(config) + list(task.validate(config))
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def params_for_eval(state):
    """The EMA parameters when the run keeps them, else the parameters."""
    return state.ema_params if state.ema_params is not None else state.params


def loss_evaluator(
    loss_fn: Callable,
    mesh,
    batches: Callable[[], Iterable],
    key,
    mask_fn: Callable = jraph.get_graph_padding_mask,
    fold_in_device: bool = False,
):
    """``eval_fn(state, step)``: the loss and metrics averaged over the real examples of
    ``batches()`` (host batches with a leading device axis), with the evaluation parameters."""
    eval_step = steps_lib.make_eval_step(loss_fn, mesh, key, mask_fn, fold_in_device)

    def eval_fn(state, _step):
        params = params_for_eval(state)
        return steps_lib.combine_eval_sums(
            [eval_step(params, shard_batch(b, mesh), i) for i, b in enumerate(batches())]
        )

    return eval_fn


class BestCheckpoint:
    """An evaluation hook: keeps the state with the best validation ``metric`` in
    ``<workdir>/best/checkpoints/<step>`` (``best.json`` names it) and, with ``patience``, stops
    after that many evaluations without an improvement of more than ``min_delta`` (writing
    ``early_stopped.json``, so that running the command again does not train further)."""

    def __init__(
        self,
        workdir: str,
        metric: str,
        mode: str = "min",
        patience: int = 0,
        min_delta: float = 0.0,
        min_evaluations: int = 0,
        also: Optional["BestCheckpoint"] = None,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r}: use 'min' or 'max'")
        self.workdir, self.metric, self.mode = workdir, metric, mode
        self.patience, self.min_delta = patience, min_delta
        self.min_evaluations = min_evaluations  # stop no earlier than after more evaluations than this
        self.also = also  # another metric's hook (run before this one) that must have stalled too
        if is_primary():
            os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "best.json")
        self.best = {
            "step": None,
            "value": None,
            "metric": metric,
            "mode": mode,
            "evals_since": 0,
            "evaluations": 0,
        }
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.best.update(json.load(f))
        self.checkpointer = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)

    @property
    def early_stopped_path(self) -> str:
        return os.path.join(self.workdir, "early_stopped.json")

    @property
    def stopped(self) -> bool:
        return os.path.exists(self.early_stopped_path)

    def improved(self, value: float) -> bool:
        old = self.best["value"]
        if old is None:
            return True
        return value < old - self.min_delta if self.mode == "min" else value > old + self.min_delta

    def __call__(self, step, state, metrics) -> bool:
        value = float(metrics[self.metric])
        self.best["evaluations"] += 1  # from 0 (above) for an older best.json without it
        if self.improved(value):
            self.best.update(step=int(step), value=value, evals_since=0)
            self.checkpointer.save(step, state)
        else:
            self.best["evals_since"] += 1
        if is_primary():
            _write_json(self.path, self.best)
        if (
            self.patience
            and self.best["evals_since"] >= self.patience
            and self.best["evaluations"] > self.min_evaluations
            and (self.also is None or self.also.best["evals_since"] >= self.patience)
        ):
            if is_primary():
                _write_json(self.early_stopped_path, {"step": int(step), **self.best})
            log.info(
                "early stopping at step %d: no validation improvement in %d evaluations (best step %s)",
                step,
                self.patience,
                self.best["step"],
            )
            return True
        return False

    def close(self):
        self.checkpointer.close()


def plateau_adapter(cfg: ml_collections.ConfigDict, metric: str = "loss") -> Callable:
    """``adapt(step, state, metrics) -> (state, metrics)`` for `loop.fit`: one step of the plateau
    schedule (`optimizer.plateau_step`) on the validation ``metric``, written into the optimizer
    state (so checkpoints carry it); adds ``learning_rate`` (of the next update) and
    ``plateau_bad_evaluations`` to the validation metrics."""

    def adapt(step, state, metrics):
        if metric not in metrics:
            raise KeyError(
                f"optim.schedule='plateau' follows validation {metric!r}, not among {sorted(metrics)}"
            )
        old = find_plateau(state.opt_state)
        if old is None:
            raise ValueError("optim.schedule='plateau' but the optimizer state has no plateau state")
        new, reduced = plateau_step(jax.device_get(old), float(metrics[metric]), int(step), cfg)
        if reduced:
            log.info(
                "step %d: validation %s has not improved on %.6g for %d evaluations; learning rate "
                "%.4g -> %.4g",
                step,
                metric,
                float(new.best),
                cfg.plateau_patience + 1,
                cfg.learning_rate * float(old.scale),
                cfg.learning_rate * float(new.scale),
            )
        state = state.replace(opt_state=replace_plateau(state.opt_state, new))
        extra = {
            "learning_rate": plateau_learning_rate(new, int(step), cfg),
            "plateau_bad_evaluations": new.num_bad,
        }
        return state, dict(metrics, **extra)

    return adapt


def _first(*values):
    return next(v for v in values if v is not None)


def _write_json(path: str, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def run_experiment(
    task, config: ml_collections.ConfigDict, workdir: str, stop_after: Optional[int] = None
) -> Dict:
    """Trains (or resumes) ``task`` in ``workdir``; returns the summary (also ``summary.json``).

    ``stop_after`` ends the run early at that step (checkpointed) while keeping the schedule of
    the full run: the same call without it resumes and finishes.
    """
    check_config(task, config)
    os.makedirs(workdir, exist_ok=True)
    # Several hosts: every process runs this; they share the workdir (a file system all of them
    # see), process 0 holds the lock and writes the files, all of them write the checkpoints.
    initialize_distributed()
    primary = is_primary()
    with workdir_lock(workdir) if primary else contextlib.nullcontext():
        record_config(
            config,
            workdir,
            compare_sections=task.compare_sections,
            allow_change=config.allow_config_change,
            write=primary,
        )
        mesh = make_mesh(config.get("num_devices") or None)
        key = jax.random.PRNGKey(config.seed)
        job = task.build(config, workdir, mesh, key)
        ema = config.optim.ema_decay
        tx = create_optimizer(config.optim, job.num_steps)
        if job.frozen:
            tx = freeze(tx, job.params, tuple(job.frozen))
        state = replicate(create_train_state(job.apply_fn, job.params, tx, ema > 0), mesh)
        checkpointer = Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
        step, state = checkpointer.restore_latest(state)
        if step is not None:
            log.info("resuming from the checkpoint at step %d", step)
        train_step = steps_lib.make_train_step(
            job.loss_fn,
            mesh,
            jax.random.fold_in(key, 1),
            ema,
            mask_fn=job.mask_fn,
            fold_in_device=job.fold_in_device,
            count_name=job.count_name,
        )
        eval_every = _first(job.eval_every, config.get("eval_every"))
        adapt = None
        if config.optim.schedule == "plateau":
            if job.eval_fn is None or not eval_every:
                raise ValueError(
                    "optim.schedule='plateau' lowers the learning rate from validation evaluations, "
                    "and this job has none (eval_every=0 or no validation data): use 'cosine'"
                )
            adapt = plateau_adapter(config.optim, job.plateau_metric)
        writer = MetricsWriter(workdir, tensorboard=config.tensorboard, enabled=primary)
        t0, stopped = time.time(), False
        try:
            if job.done:
                log.info("%s: this run has ended before (early stopping); not training further", workdir)
            else:
                state, stopped = fit(
                    state=state,
                    train_step=train_step,
                    make_batch=job.train_batch,
                    place=lambda b: shard_batch(b, mesh),
                    num_steps=job.num_steps,
                    checkpointer=checkpointer,
                    writer=writer,
                    eval_fn=job.eval_fn,
                    eval_every=eval_every,
                    checkpoint_every=_first(job.checkpoint_every, config.get("checkpoint_every")),
                    log_every=_first(job.log_every, config.get("log_every")),
                    max_consecutive_nonfinite=config.max_consecutive_nonfinite,
                    workers=resolve_workers(config.data.workers, jax.local_device_count()),
                    desc=job.desc,
                    stop_after=stop_after,
                    on_eval=job.on_eval,
                    adapt=adapt,
                )
        finally:
            writer.close()
            checkpointer.close()
            for c in job.closers:
                c.close()
        first, last = first_and_last(workdir)
        summary = {
            "steps": int(jax.device_get(state.step)),
            "num_steps": job.num_steps,
            "first_train_loss": first,
            "final_train_loss": last,
            "skipped_nonfinite_steps": int(jax.device_get(state.skipped_steps)),
            "stopped_by_hook": bool(stopped),
            "wall_seconds_this_run": time.time() - t0,
        }
        summary.update(task.finish(config, workdir, job, state) or {})
        if primary:
            _write_json(os.path.join(workdir, "summary.json"), summary)
        log.info("summary: %s", json.dumps(summary, indent=1))
        return summary
