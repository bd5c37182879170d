"""Train state and the device mesh; no chemistry here (the optimizer: `training.optimizer`)."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
    """flax TrainState plus an optional EMA of the parameters and a count of skipped steps."""

    ema_params: Any = None
    skipped_steps: jax.Array = None  # steps whose loss or gradient was non-finite (not applied)


def strong_types(tree):
    """Copies every array with a strong (non-weak) dtype. A weak-typed leaf (e.g. from
    ``jnp.full(shape, 0.5)`` in an initialiser) turns strong after one update, and that change of
    type would make the second step compile again."""
    return jax.tree_util.tree_map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), tree)


def create_train_state(apply_fn, params, tx, use_ema: bool) -> TrainState:
    params = strong_types(params)
    state = TrainState.create(
        apply_fn=apply_fn,
        params=params,
        tx=tx,
        ema_params=jax.tree_util.tree_map(jnp.copy, params) if use_ema else None,
        skipped_steps=jnp.zeros((), jnp.int32),
    )
    # A strong int32 step: flax's Python-int 0 would make the first step trace a second time.
    return state.replace(step=jnp.zeros((), jnp.int32))


def initialize_distributed(force: bool = False) -> bool:
    """Joins a multi-host run (``jax.distributed.initialize()``) when the launch asks for one.

    A multi-host launch is detected from the environment: ``JAX_COORDINATOR_ADDRESS`` (with
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, read by JAX itself), or ``GEORECON_MULTIHOST=1``
    for clusters JAX configures on its own (TPU pod slices, SLURM, Open MPI). Must run before
    anything else touches the devices; a no-op on one host and when already initialised.
    Returns whether this process is part of a multi-process run.
    """
    wanted = (
        force
        or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
        or os.environ.get("GEORECON_MULTIHOST", "") not in ("", "0")
    )
    if wanted and not jax.distributed.is_initialized():
        kwargs = {}
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
        # How long the others wait for a process that stopped answering before they stop too
        # (JAX's default: 100 s).
        if os.environ.get("GEORECON_HEARTBEAT_TIMEOUT"):
            kwargs["heartbeat_timeout_seconds"] = int(os.environ["GEORECON_HEARTBEAT_TIMEOUT"])
        jax.distributed.initialize(**kwargs)
        log.info(
            "process %d of %d (coordinator %s), %d local device(s)",
            jax.process_index(),
            jax.process_count(),
            os.environ.get("JAX_COORDINATOR_ADDRESS", "from the cluster"),
            jax.local_device_count(),
        )
    return jax.process_count() > 1


def is_primary() -> bool:
    """Whether this process writes the workdir's files (config, metrics, summaries, plots): process
    0 of a multi-host run, and the only process otherwise. Checkpoints are written by every process
    together (orbax)."""
    return jax.process_index() == 0


def make_mesh(num_devices: Optional[int] = None) -> Mesh:
    """A 1-D data-parallel mesh over the first ``num_devices`` devices (default: all, every host).

    On several hosts (see `initialize_distributed`, called here) the mesh spans every host's
    devices, ordered host by host, so that host p feeds the mesh positions of its own devices.
    """
    initialize_distributed()
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"asked for {n} devices but only {len(devices)} are visible")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"a multi-host run uses every device: num_devices must be 0 or {len(devices)}")
    return Mesh(np.array(devices[:n]), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch, mesh: Mesh):
    """Places a batch with a leading [num_devices] axis so that device d holds sub-batch d.

    On several hosts each host passes only its own devices' sub-batches (leading axis = its
    local device count, see ``GraphBatcher(process_index=...)``) and gets the global array back.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() > 1:
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
        )
    return jax.device_put(batch, sharding)


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
