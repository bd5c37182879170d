"""The training loop and its helpers: metrics writer, workdir lock, config record. No chemistry.

One loop serves pretraining and fine-tuning: it pulls batch k from a background prefetcher,
runs the jitted step, and around it logs (progress bar, ``metrics.jsonl``, TensorBoard events),
evaluates, and checkpoints every N steps, at the end, and on SIGTERM (preemption).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from typing import Callable, Dict, Mapping, Optional, Sequence

import filelock
import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from georecon_jax.training.prefetch import Prefetcher
from georecon_jax.training.checkpoint import Checkpointer


class ConfigMismatchError(RuntimeError):
    pass


class MetricsWriter:
    """Appends metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars (``tb/``)."""

    def __init__(self, workdir: str, tensorboard: bool = True, enabled: bool = True):
        """``enabled=False``: writes nothing (the other processes of a multi-host run)."""
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a") if enabled else None
        self._tb = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, split: str, metrics: Dict[str, float]):
        row = {
            "step": int(step),
            "split": split,
            "time": time.time(),
            **{k: float(v) for k, v in metrics.items()},
        }
        if self._file is None:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def close(self):
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str, split: Optional[str] = None):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Refuses a second run in the same workdir while one is active (filelock's OS file lock on
    ``<workdir>/.lock``, released even if the process is killed)."""
    os.makedirs(workdir, exist_ok=True)
    lock = filelock.FileLock(os.path.join(workdir, ".lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RuntimeError(f"another run is using the workdir {workdir} (it holds {workdir}/.lock)") from None
    try:
        yield
    finally:
        lock.release()


def flatten_dict(d, sep: str = ".", prefix: str = ""):
    """{"a": {"b": 1}} -> {"a.b": 1} (nested dicts only; other values are leaves)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, sep, f"{prefix}{k}{sep}"))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Fields that change only what a run reports at its end (GeoRecon's reconstruction and z
# diagnostic), never the training: a resume may change them, or add them to an older run's config.
REPORT_ONLY = frozenset(
    {
        "objective.sampler",
        "objective.num_sampling_steps",
        "objective.num_recon_molecules",
        "objective.diagnostic_sigmas",
        "data.num_workers",
        "data.workers",  # who makes the batches, not which
        "data.store_chunk_size",  # how the store is written, not what it holds
        "data.data_root",  # where the same files are (moved data, another machine)
        "data.cache_dir",
    }
)

# Fields added after runs were saved, with the value that means the behaviour such a run had: a
# saved config without the field reads (`complete_saved_config`) and compares as if it held this
# value. The current defaults live in the config files (experiments/configs); these are the
# values of the code before each field existed, so the library can read every field directly.
ADDED_FIELDS = {
    "objective.code_source": "clean",
    # 3DMRL runs saved before issue 16 trained the force head with the halved symmetric InfoNCE
    "objective.contrastive": "symmetric",
    "objective.train_force_head": True,
    # DDI fine-tunings saved before issue 16 used the files' negatives and the 80/10/10 split
    "data.negatives": "file",
    "data.negative_seed": 0,
    "data.held_out": "three_way",
    "data.keep_eval_pairs": False,
    # pair fine-tunings saved before the reference recipe standardised their targets
    "data.standardize_targets": True,
    "optim.plateau_mode": "min",
    # pair fine-tunings saved before their optim section kept the (unused) EMA field
    "optim.ema_decay": 0.0,
    # 3DMRL pretrainings saved before data.observed_fraction used every observed pair
    "data.observed_fraction": 1.0,
    "data.orient_by_radius": False,
    # (the corrected forms were the only ones before these options)
    "environment.anchors": "atom",
    "environment.rotations": "uniform",
    # the 2D relational model before it followed the reference's CIGIN (3DMRL pretraining, and pair
    # fine-tuning, whose model section is the relational config itself)
    "model.relational.architecture": "edge_mlp_gru",
    "model.architecture": "edge_mlp_gru",
    # the ET before torchmd-net's vector_cutoff option weighed the attention by the cutoff
    "model.encoder.vector_cutoff": False,
    # the ET before its options: plain torchmd-net ET (no vector layer norm), N(0, 1) embeddings,
    # a fixed radial basis, elements up to Z = 99
    "model.encoder.vec_norm": "none",
    "model.encoder.embedding_init": "normal",
    "model.encoder.trainable_rbf": False,
    "model.encoder.max_z": 100,
    # fine-tunings before the denoising regulariser, the head's width option and the loss options
    "model.denoise_head": False,
    "model.head.hidden": 0,
    "model.head.zero_init": False,  # torchmd-net's Xavier init of the head's last layer
    "loss.denoise_weight": 0.0,
    "loss.denoise_normaliser": "pretraining",
    "loss.divide_by_std": False,
    "loss.atom_average": "batch",
    "loss.energy_loss_scale": 1.0,
    # runs before the dense layout trained on pair lists
    "graph.layout": "pairs",
    "graph.dense_max_atoms": 32,
    # data loading before these options: corrupt records raised nothing, MD17's split as given,
    # its target std from the energies
    "data.strict": False,
    # runs before batches could be prepared in worker processes
    "data.workers": 0,
    # runs before the SDF store's chunk size was a config field (store.DEFAULT_CHUNK)
    "data.store_chunk_size": 50_000,
    "data.shrink_split": False,
    "data.std_from": "energies",
}


def complete_saved_config(saved: Mapping) -> dict:
    """A run's saved config (its ``config.json``, perhaps written by older code) as a dict with
    every `ADDED_FIELDS` field it lacks set to the value that means the behaviour that run had, in
    the sections it has (a section it lacks stays absent): the one place an older config is
    brought up to date, so that the library reads its fields directly. ``saved`` is not modified."""
    out = json.loads(json.dumps(dict(saved)))  # a deep copy of plain JSON values
    for name, value in ADDED_FIELDS.items():
        *path, key = name.split(".")
        section = out
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and key not in section:
            section[key] = value
    return out


def record_config(
    config: ml_collections.ConfigDict,
    workdir: str,
    compare_sections=("model", "objective"),
    allow_change: bool = False,
    write: bool = True,
):
    """Saves the resolved config as ``config.json``; on resume, refuses a config whose listed
    sections differ from the saved one (naming every difference, `REPORT_ONLY` fields aside)
    unless ``allow_change``."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        with open(path) as f:
            old = complete_saved_config(json.load(f))
        current = complete_saved_config(new)  # an added field this kind of run lacks compares equal
        diffs = []
        for section in compare_sections:
            a, b = flatten_dict(old.get(section) or {}), flatten_dict(current.get(section) or {})
            for key in sorted(set(a) | set(b)):
                name = f"{section}.{key}"
                if a.get(key) != b.get(key) and name not in REPORT_ONLY:
                    diffs.append(f"{section}.{key}: saved {a.get(key)!r}, now {b.get(key)!r}")
        if diffs and not allow_change:
            raise ConfigMismatchError(
                f"{workdir} holds a run with a different configuration:\n  "
                + "\n  ".join(diffs)
                + "\nUse another --workdir, or pass --config.allow_config_change=True to resume anyway."
            )
    if not write:  # another process of a multi-host run: compares, process 0 writes
        return
    with open(path + ".tmp", "w") as f:
        json.dump(new, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class NonfiniteWatch:
    """Counts consecutive non-finite steps from the steps' device flags, read in bulk at log,
    evaluation and checkpoint time (no device-to-host sync per step)."""

    def __init__(self, limit: int):
        self.limit, self.consecutive, self._pending = limit, 0, []

    def add(self, step: int, flag):
        self._pending.append((step, flag))

    def check(self):
        """Raises FloatingPointError when more than ``limit`` steps in a row were non-finite."""
        flags = jax.device_get([f for _, f in self._pending])
        for (step, _), bad in zip(self._pending, flags):
            self.consecutive = self.consecutive + 1 if bool(bad) else 0
            if self.consecutive > self.limit:
                raise FloatingPointError(
                    f"{self.consecutive} consecutive steps (up to step {step}) had a non-finite "
                    "loss or gradient; they were not applied. Lower the learning rate or check "
                    "the data; the last good state is in the latest checkpoint."
                )
        self._pending = []


def fit(
    *,
    state,
    train_step: Callable,
    make_batch: Callable[[int], object],
    place: Callable,
    num_steps: int,
    checkpointer: Checkpointer,
    writer: MetricsWriter,
    eval_fn: Optional[Callable] = None,
    eval_every: int = 0,
    checkpoint_every: int = 1000,
    log_every: int = 50,
    max_consecutive_nonfinite: int = 10,
    prefetch: int = 4,
    workers: int = 0,
    progress: bool = True,
    desc: str = "train",
    stop_after: Optional[int] = None,
    on_eval: Sequence[Callable] = (),
    adapt: Optional[Callable] = None,
):
    """Runs steps ``state.step .. num_steps - 1``; returns (final state, whether a hook stopped it).

    ``stop_after`` ends the run early at that step (with a checkpoint) while keeping the schedule
    of ``num_steps``: the same command without it later resumes and finishes the run.

    Args:
      make_batch: k -> host batch (numpy pytree with a leading device axis); runs in a thread,
        or in ``workers`` processes (`Prefetcher`).
      place: host batch -> device batch (sharded over the mesh).
      eval_fn: (state, step) -> metrics dict, written under split "validation".
      on_eval: hooks ``(step, state, metrics) -> bool`` called after each evaluation (best
        checkpoint, early stopping); any True ends training there, with a checkpoint.
      adapt: ``(step, state, metrics) -> (state, metrics)`` after each evaluation, before the
        metrics are written and the hooks run: changes the state from what the evaluation found
        (the plateau schedule). What it changes is in the next checkpoint, like the parameters.
    """
    start = int(jax.device_get(state.step))
    end = num_steps if stop_after is None else min(stop_after, num_steps)
    if start >= end:
        return state, False
    fetcher = Prefetcher(make_batch, start, end, depth=prefetch, workers=workers)
    bar = tqdm(total=num_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True)
    window, t_last, steps_last = [], time.time(), start
    watch = NonfiniteWatch(max_consecutive_nonfinite)
    step, stopped = start, False
    try:
        with _Preemption() as preempt:
            while step < end:
                try:
                    k, host_batch = fetcher.get()
                except Exception:
                    if not preempt.requested:
                        raise
                    # SIGTERM to the whole process group (a scheduler, `timeout`): the batch
                    # workers died with it while this process waited; checkpoint as on any SIGTERM
                    if step > start and step not in checkpointer.all_steps():
                        checkpointer.save(step, state)
                    bar.write(f"SIGTERM: the checkpoint at step {step} is the last; exiting")
                    break
                assert k == step, (k, step)
                state, metrics = train_step(state, place(host_batch))
                step += 1
                window.append(metrics)
                watch.add(step, metrics["nonfinite"])
                if step % log_every == 0 or step == num_steps:
                    watch.check()
                    host = jax.device_get(window)
                    mean = {key: float(np.mean([m[key] for m in host])) for key in host[0]}
                    now = time.time()
                    mean["steps_per_second"] = (step - steps_last) / max(now - t_last, 1e-9)
                    t_last, steps_last, window = now, step, []
                    writer.write(step, "train", mean)
                    bar.set_postfix(loss=f"{mean['loss']:.4f}", it_s=f"{mean['steps_per_second']:.1f}")
                bar.update(1)
                if eval_fn is not None and eval_every and (step % eval_every == 0 or step == num_steps):
                    watch.check()
                    metrics = eval_fn(state, step)
                    if adapt is not None:
                        state, metrics = adapt(step, state, metrics)
                    writer.write(step, "validation", metrics)
                    stopped = any([bool(hook(step, state, metrics)) for hook in on_eval])
                if step % checkpoint_every == 0 or step == end or preempt.requested or stopped:
                    watch.check()
                    checkpointer.save(step, state)
                if preempt.requested:
                    bar.write(f"SIGTERM: saved a checkpoint at step {step}; exiting")
                    break
                if stopped:
                    break
    finally:
        fetcher.close()
        bar.close()
    return state, stopped


def first_and_last(workdir: str, key: str = "loss", split: str = "train"):
    rows = [r for r in read_metrics(workdir, split) if key in r and math.isfinite(r[key])]
    return (rows[0][key], rows[-1][key]) if rows else (None, None)
