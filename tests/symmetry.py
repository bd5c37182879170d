"""Symmetry checks for the tests: E(3) equivariance with e3nn-jax, translation invariance.

`assert_symmetric(fn, inputs, outputs)` checks a function of plain arrays against the kinds of
its inputs and outputs, i.e. how an orthogonal 3×3 matrix R acts on them:

  ``"0e"``       scalars [..., F]           unchanged
  ``"1o"``       vectors [..., 3]           x -> R x          (positions, forces, displacements)
  ``"1e"``       pseudovectors [..., 3]     x -> det(R) R x   (only the rotation part of R acts)
  ``"channels"`` vector channels [..., 3, F] (F × 1o: the ET's ``vec``), each v -> R v

The rotation check is e3nn-jax's ``e3nn_jax.utils.assert_equivariant`` (0.21: ``fun(*IrrepsArray)
-> IrrepsArray``, one random R = -rotation, i.e. a rotation times the inversion, so that "1o"
inputs check O(3) equivariance, reflections included). Non-geometric arguments (atomic numbers,
masks, parameters) are closed over in ``fn``; include padding atoms in them.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("0e", "1o", "1e", "channels")


def to_irreps(x, kind: str) -> e3nn.IrrepsArray:
    """A plain array of the given kind as an IrrepsArray (leading axes kept)."""
    assert kind in KINDS, kind
    x = jnp.asarray(x)
    if kind == "0e":
        return e3nn.IrrepsArray(f"{x.shape[-1]}x0e", x)
    if kind in ("1o", "1e"):
        assert x.shape[-1] == 3, (kind, x.shape)
        return e3nn.IrrepsArray(kind, x)
    assert x.ndim >= 2 and x.shape[-2] == 3, (kind, x.shape)  # [..., 3, F] -> [..., F·3] (F × 1o)
    F = x.shape[-1]
    return e3nn.IrrepsArray(f"{F}x1o", jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], 3 * F))


def from_irreps(a: e3nn.IrrepsArray, kind: str, like) -> jax.Array:
    """The inverse of `to_irreps`, back to the shape of ``like``."""
    if kind == "channels":
        return jnp.swapaxes(a.array.reshape(*like.shape[:-2], like.shape[-1], 3), -1, -2)
    return a.array.reshape(like.shape)


def flat_irreps(x, kind: str) -> e3nn.IrrepsArray:
    """Every leading axis folded into the multiplicity: one 1-d IrrepsArray per output."""
    if kind == "channels":
        x = jnp.swapaxes(x, -1, -2)  # [..., F, 3]
    flat = x.reshape(-1)
    ir = "0e" if kind == "0e" else ("1e" if kind == "1e" else "1o")
    return e3nn.IrrepsArray(f"{flat.size // e3nn.Irrep(ir).dim}x{ir}", flat)


def transform(x, kind: str, matrix):
    """A 3×3 matrix acting on a (numpy) array of the given kind, any matrix, not only orthogonal."""
    x, matrix = np.asarray(x), np.asarray(matrix)
    if kind == "0e":
        return x
    if kind == "channels":
        return np.einsum("ij,...jf->...if", matrix, x)
    sign = np.linalg.det(matrix) if kind == "1e" else 1.0
    return sign * x @ matrix.T


def jitter(params, scale: float = 0.1, seed: int = 0):
    """Parameters plus N(0, scale²) noise. Flax initialises biases (and some gates) to zero, so a
    symmetry test on fresh parameters cannot see a bias wrongly added to a vector channel. Drawn
    with numpy: jax.random (one threefry per leaf) cost 1.5-4.4 s of XLA compilation per parameter
    tree under jit, and eagerly one compile per leaf shape. Returns numpy arrays (flax applies
    them as they are)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda x: (np.asarray(x) + scale * rng.normal(size=x.shape)).astype(x.dtype), params
    )


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_symmetric(
    fn: Callable,
    inputs: Sequence[Tuple[jax.Array, str]],
    outputs: Sequence[str],
    *,
    translate: Sequence[int] = (),
    seed: int = 0,
    atol: float = 2e-4,
    rtol: float = 1e-4,
    nontrivial: float = 1e-3,
    can_fail: float = 1e-2,
):
    """Checks the symmetries of ``fn(*arrays) -> array or tuple of arrays``.

    Args:
      fn: a function of the arrays of ``inputs`` (jitted here, once).
      inputs: (array, kind) per argument of ``fn``; kinds in `KINDS`.
      outputs: the kind of each output of ``fn`` (one per element when it returns a tuple).
      translate: indices of the inputs that are positions (Å): shifting all of them by one random
        vector (about 10 Å, padding atoms included) must leave every output unchanged.
      seed: the random rotation-inversion, shift and distortion.
      atol, rtol: tolerances of the comparisons.
      nontrivial: every output must reach this magnitude somewhere (a zero output is equivariant).
      can_fail: a random non-orthogonal linear map A (I + 0.3 N(0, 1)) acting on the inputs must
        change the outputs by more than this from A acting on the outputs: the inputs do reach the
        outputs through geometry that a wrong module could break, and the tolerances are tighter
        than what breaking it would cost.

    Raises AssertionError, with numpy's message, where a check fails.
    """
    arrays = [np.asarray(x) for x, _ in inputs]
    in_kinds = [kind for _, kind in inputs]
    outputs = tuple(outputs)
    assert all(k in KINDS for k in in_kinds + list(outputs)), (in_kinds, outputs)
    jfn = jax.jit(lambda *xs: _as_tuple(fn(*xs)))
    out = [np.asarray(y) for y in jfn(*arrays)]
    assert len(out) == len(outputs), (len(out), outputs)
    for y, kind in zip(out, outputs):
        assert np.abs(y).max() > nontrivial, f"an output of kind {kind} is (almost) zero"

    def irreps_fn(*irreps_args):
        xs = [from_irreps(a, k, x) for a, k, x in zip(irreps_args, in_kinds, arrays)]
        return e3nn.concatenate([flat_irreps(y, k) for y, k in zip(jfn(*xs), outputs)])

    e3nn.utils.assert_equivariant(
        irreps_fn, jax.random.PRNGKey(seed), *[to_irreps(x, k) for x, k in inputs], atol=atol, rtol=rtol
    )

    rng = np.random.default_rng(seed)
    if translate:
        shift = (10.0 * rng.normal(size=3)).astype(np.float32)
        moved = [x + shift if i in translate else x for i, x in enumerate(arrays)]
        for y, y_moved in zip(out, jfn(*moved)):
            # atol in units of the output's largest entry (when above 1): float32 rounds positions
            # shifted to ~20 Å by ~1e-6 Å, and a jittered decoder with outputs of ~50 moves them by
            # ~5e-4 for that (measured: 1e-6 Å random perturbations change them by 1e-4 to 6e-4). A
            # module that reads absolute positions changes them by O(1) of their scale.
            scale = max(1.0, float(np.abs(y).max()))
            np.testing.assert_allclose(y_moved, y, atol=atol * scale, rtol=rtol)

    if can_fail:
        a = (np.eye(3) + 0.3 * rng.normal(size=(3, 3))).astype(np.float32)
        distorted = jfn(*[transform(x, k, a).astype(x.dtype) for x, k in zip(arrays, in_kinds)])
        err = max(
            float(np.abs(np.asarray(y2) - transform(y, k, a)).max())
            for y, y2, k in zip(out, distorted, outputs)
        )
        assert err > can_fail, (
            f"a non-orthogonal map changes the outputs by only {err:.2e}: "
            "this check could not see a broken module"
        )
