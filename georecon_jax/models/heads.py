"""Output heads on (scalars [n, F], vectors [n, 3, F]) node features (pooling: `models.graph`)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from georecon_jax.models.et import Dense, silu


def safe_norm(vec, axis=-2, eps=1e-8):
    """Vector norm with a finite gradient at zero (padding nodes have zero vectors)."""
    return jnp.sqrt(jnp.sum(vec**2, axis=axis) + eps)


class GatedEquivariantBlock(nn.Module):
    """PaiNN's gated equivariant block, as torchmd-net's ``GatedEquivariantBlock``.

    (x [n, F], vec [n, 3, F]) -> (x' [n, out], vec' [n, 3, out]); vec' is equivariant because it is
    a linear map of vec scaled by invariant gates.
    """

    hidden: int
    out: int
    scalar_activation: bool = False
    zero_update: bool = False  # zero weights in the last layer: x' = 0 and gates 0 at init

    @nn.compact
    def __call__(self, x, vec):
        vec1 = safe_norm(Dense(self.hidden, use_bias=False, name="vec1_proj")(vec))  # [n, hidden]
        vec2 = Dense(self.out, use_bias=False, name="vec2_proj")(vec)  # [n, 3, out]
        h = silu(Dense(self.hidden, name="update_0")(jnp.concatenate([x, vec1], axis=-1)))
        x_out, gate = jnp.split(Dense(2 * self.out, name="update_1", zero=self.zero_update)(h), 2, axis=-1)
        vec_out = gate[..., None, :] * vec2
        if self.scalar_activation:
            x_out = silu(x_out)
        return x_out, vec_out


class EquivariantHead(nn.Module):
    """torchmd-net's ``EquivariantScalar`` output network: two gated equivariant blocks,
    (x [n, F], vec [n, 3, F]) -> (scalar [n], vector [n, 3]).

    Widths as torchmd-net (``output_modules.py``): block_0 maps F -> hidden // 2 with hidden-wide
    vector projections and update MLP, block_1 maps hidden // 2 -> 1; ``hidden`` = F there.
    ``EquivariantScalar`` reads the scalar, ``EquivariantVectorOutput`` (Coord's noise head) the
    vector, ``EquivariantDipoleMoment`` both.
    """

    hidden: int
    zero_output: bool = False  # block_1's last layer starts at zero: outputs 0 at init

    @nn.compact
    def __call__(self, x, vec):
        return _two_gated_blocks(self.hidden, x, vec, self.zero_output)


class VectorHead(nn.Module):
    """Equivariant per-atom vector output [n, 3] (torchmd-net's ``EquivariantVectorOutput``: the
    `EquivariantHead` blocks, read as a vector). Parameters ``block_0``, ``block_1``."""

    hidden: int

    @nn.compact
    def __call__(self, x, vec):
        return _two_gated_blocks(self.hidden, x, vec)[1]


def _two_gated_blocks(hidden: int, x, vec, zero_output: bool = False):
    """block_0 (F -> hidden // 2, scalar activation) then block_1 (-> 1), created in the calling
    module's scope: (scalar [n], vector [n, 3]); ``zero_output``: block_1's last layer starts at 0."""
    half = max(hidden // 2, 1)
    x, vec = GatedEquivariantBlock(hidden, half, scalar_activation=True, name="block_0")(x, vec)
    x, vec = GatedEquivariantBlock(half, 1, zero_update=zero_output, name="block_1")(x, vec)
    return x[..., 0], vec[..., 0]


class ScalarHead(nn.Module):
    """Invariant per-atom scalars [n, out] from the scalar channel (an MLP)."""

    hidden: int
    out: int = 1
    zero_output: bool = False  # the last layer starts at zero: outputs 0 at init

    @nn.compact
    def __call__(self, x):
        return Dense(self.out, name="out", zero=self.zero_output)(silu(Dense(self.hidden, name="hidden")(x)))
