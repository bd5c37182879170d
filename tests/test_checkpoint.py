"""georecon_jax/training/checkpoint.py: corrupt and partial checkpoints, non-finite parameters."""

import os

import pytest

from conftest import toy_state as _state
from georecon_jax.training.checkpoint import CheckpointError, Checkpointer


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(1, _state(1.0))
    ck.save(2, _state(2.0))
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2"):
        for f in files:
            open(os.path.join(root, f), "wb").write(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        step, state = ck.restore_latest(_state(0.0))
    assert step == 1 and float(state.params["w"][0]) == 1.0


def test_partial_checkpoint_is_never_the_latest(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(1, _state(1.0))
    os.makedirs(tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp" / "default")
    ck2 = Checkpointer(str(tmp_path))
    assert ck2.latest_step() == 1
    step, _ = ck2.restore_latest(_state(0.0))
    assert step == 1


def test_non_finite_parameters_are_never_saved(tmp_path):
    ck = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.save(3, _state(float("nan")))
    assert ck.all_steps() == []
