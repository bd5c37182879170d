"""Comparing parameters that two computations of the same SGD steps reach (micro-batches vs the
whole batch, several devices or processes vs one, resumed vs uninterrupted).

What the code guarantees is the same gradient up to float32 summation order. Under SGD the
parameters then differ by lr x that rounding, so the comparison has a tolerance from the float32
scale of the quantities; under Adam it has none (its first step moves an element by about lr
whatever the size of its gradient, so a near-zero gradient's rounding flips the move), which is why
these tests run with ``optim.optimizer='sgd'``.
"""

import jax
import numpy as np

EPS = float(np.finfo(np.float32).eps)


def leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(leaves(a), leaves(b)))


def sgd_params_mismatch(a, b, update_scale: float, steps: int = 1, rtol: float = 1e-4) -> float:
    """The largest |a - b| over its tolerance, element by element (<= 1: agree).

    Args:
      a, b: parameter pytrees after ``steps`` SGD steps from the same start.
      update_scale: the largest change of one parameter in one step (the gradient's scale x lr).
      steps: the steps over which a and b may have drifted apart.
      rtol: relative to ``update_scale``: a gradient is a sum of per-molecule terms that cancel, and
        summed in another order it differs by a few float32 eps of those terms, far below 1e-4 of the
        largest element; a molecule lost or counted twice changes it by ~1/batch.

    The tolerance of an element is ``steps x (rtol x update_scale + 4 eps |a|)``: the gradient's
    rounding, and two roundings of p + u in each run."""
    worst = 0.0
    for x, y in zip(leaves(a), leaves(b)):
        tolerance = np.maximum(steps * (rtol * update_scale + 4 * EPS * np.abs(x)), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.max(np.abs(x - y) / tolerance)))
    return worst
