"""georecon_jax/training/loop.py: too many consecutive non-finite steps stop the run."""

import pytest

from conftest import nan_step as _nan_step, toy_state as _state
from georecon_jax.training.checkpoint import Checkpointer
from georecon_jax.training.loop import MetricsWriter, fit
from georecon_jax.training.state import replicate


def test_too_many_consecutive_non_finite_steps_stop_the_run(tmp_path):
    mesh, step, batch = _nan_step(3)
    state = replicate(_state(1.0), mesh)
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    with pytest.raises(FloatingPointError, match="consecutive steps"):
        fit(
            state=state,
            train_step=step,
            make_batch=lambda k: batch(1.0),
            place=lambda b: b,
            num_steps=50,
            checkpointer=Checkpointer(str(tmp_path)),
            writer=writer,
            max_consecutive_nonfinite=3,
            progress=False,
        )
    assert Checkpointer(str(tmp_path)).all_steps() == []  # nothing non-finite was written
