"""The one place that talks to orbax: save, find, and restore training states.

Checkpoints live in ``<workdir>/checkpoints/<step>``. Orbax writes each into a temporary folder
and renames it only when complete, so a run killed mid-save never leaves a checkpoint that looks
finished. If the newest checkpoint cannot be read, `restore_latest` falls back to the one before
(with a warning). Arrays are restored onto the shardings of the target you pass, so a run saved
on 4 devices resumes on 1 and vice versa.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    pass


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
    """Wraps an orbax ``CheckpointManager`` that keeps the newest ``max_to_keep`` checkpoints."""

    def __init__(self, workdir: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = checkpoint_dir(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self):
        return sorted(self._manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, force: bool = True) -> bool:
        leaves = jax.tree_util.tree_leaves(state)
        if not all(
            np.all(np.isfinite(_local_values(x)))
            for x in leaves
            if hasattr(x, "dtype") and np.issubdtype(x.dtype, np.floating)
        ):
            raise CheckpointError(f"refusing to save step {step}: the state holds non-finite values")
        saved = self._manager.save(int(step), args=ocp.args.StandardSave(state), force=force)
        self._manager.wait_until_finished()
        return saved

    def restore(self, step: int, target: Any) -> Any:
        """Restores step into the structure, dtypes and shardings of ``target``."""
        abstract = jax.tree_util.tree_map(
            lambda x: (
                jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                if hasattr(x, "shape")
                else x
            ),
            target,
        )
        return self._manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

    def restore_latest(self, target: Any) -> Tuple[Optional[int], Any]:
        """(step, state) of the newest readable checkpoint, or (None, target) if there is none."""
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, target)
            except Exception as e:  # corrupt or incompatible: try the one before
                if _is_shape_mismatch(e):
                    raise CheckpointError(
                        f"checkpoint {self.directory}/{step} does not match this model: {e}"
                    ) from e
                warnings.warn(
                    f"checkpoint {self.directory}/{step} is unreadable "
                    f"({type(e).__name__}: {str(e)[:200]}); trying the one before"
                )
        return None, target

    def close(self):
        self._manager.close()


def _local_values(x) -> np.ndarray:
    """The values of ``x`` this process holds: all of it on one host; on several hosts its
    addressable shards (a replicated state holds all of it on every host)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.concatenate([np.ravel(np.asarray(s.data)) for s in x.addressable_shards])
    return np.asarray(x)


def _is_shape_mismatch(e: Exception) -> bool:
    text = str(e).lower()
    return "shape" in text and ("mismatch" in text or "does not match" in text or "incompatible" in text)


def restore_params(path: str) -> Tuple[int, Any]:
    """Raw (step, pytree of numpy arrays) of a checkpoint, without a target: for loading weights.

    ``path`` is a workdir, its ``checkpoints`` folder, or one step folder.
    """
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if os.path.basename(path).isdigit() and os.path.isdir(path):
        step_dir = path
    else:
        steps = sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []
        if not steps:
            raise CheckpointError(f"no checkpoint found under {path}")
        step_dir = os.path.join(path, str(steps[-1]))
    ckptr = ocp.StandardCheckpointer()
    item = os.path.join(step_dir, "default") if os.path.isdir(os.path.join(step_dir, "default")) else step_dir
    # Every array onto this process's first device, whatever devices saved it: a checkpoint of a
    # 4-device or a 2-host run holds their device ids, which orbax would otherwise look for.
    meta = ckptr.metadata(item)
    meta = getattr(meta, "item_metadata", meta)
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: (
            jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here)
            if hasattr(m, "shape") and hasattr(m, "dtype")
            else m
        ),
        meta,
    )
    # as host numpy arrays: the same kind of values an export (np.load) gives, so that a jitted
    # function sees one input placement whichever way the weights came
    return int(os.path.basename(step_dir)), jax.device_get(ckptr.restore(item, target))
