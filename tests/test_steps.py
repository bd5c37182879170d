"""georecon_jax/training/steps.py: a non-finite step is skipped and counted."""

import numpy as np

from conftest import nan_step as _nan_step, toy_state as _state
from georecon_jax.training.state import replicate


def test_non_finite_step_is_skipped_and_counted():
    mesh, step, batch = _nan_step(3)
    state = replicate(_state(1.0), mesh)
    state, m = step(state, batch(1.0))
    assert float(m["nonfinite"]) == 1.0 and int(state.skipped_steps) == 1
    np.testing.assert_array_equal(np.asarray(state.params["w"]), 1.0)  # untouched
    state, m = step(state, batch(0.0))
    assert float(m["nonfinite"]) == 0.0
    assert float(state.params["w"][0]) < 1.0  # a finite step is applied
