"""The ET on unordered pairs equals torchmd-net's formulation: every ordered pair and self-loop.

`georecon_jax.models.et` computes the radial filters once per unordered pair and the self-edges per
atom. The reference below is written independently, densely over [n, n] ordered pairs with the
self-loops on the diagonal, as torchmd-net's ``TorchMD_ET`` (``loop=True``) does it, from the same
parameters. Outputs and forces (gradients with respect to positions) must agree.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.graphs.masks import graph_masks
from georecon_jax.models.et import EquivariantTransformer

CUTOFF = 5.0


def _dense(p, x):
    return x @ p["kernel"] + p.get("bias", 0.0)


def _layer_norm(p, x, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _silu(x):
    return x * jax.nn.sigmoid(x)


def directed_reference(params, z, pos, same_graph, num_layers, num_heads):
    """torchmd-net's ET over all ordered pairs (i receives from j) of one batch, self-loops included."""
    p = params["params"]
    n = z.shape[0]
    diff = pos[None, :, :] - pos[:, None, :]                       # [i, j] = pos_j - pos_i
    d2 = jnp.sum(diff ** 2, -1)
    off_diag = ~jnp.eye(n, dtype=bool)
    apart = d2 > 0                                                 # padding atoms coincide
    dist = jnp.where(apart, jnp.sqrt(jnp.where(apart, d2, 1.0)), 0.0)
    unit = jnp.where(apart[..., None], diff / jnp.where(apart, dist, 1.0)[..., None], 0.0)
    edge = same_graph & (dist < CUTOFF)                            # includes the diagonal
    cut = jnp.where(edge, 0.5 * (jnp.cos(dist * math.pi / CUTOFF) + 1.0), 0.0)
    alpha = 5.0 / CUTOFF
    rbf = cut[..., None] * jnp.exp(-p["rbf"]["betas"] * (jnp.exp(-alpha * dist)[..., None]
                                                         - p["rbf"]["means"]) ** 2)   # [n, n, R]
    x = p["embedding"]["embedding"][z]
    ne = p["neighbor_embedding"]
    w = _dense(ne["distance_proj"], rbf) * (cut * off_diag)[..., None]
    agg = jnp.einsum("ijf,jf->if", w, ne["embedding"]["embedding"][z])
    x = _dense(ne["combine"], jnp.concatenate([x, agg], -1))
    F = x.shape[-1]
    H, D = num_heads, F // num_heads
    vec = jnp.zeros((n, 3, F))
    for layer in range(num_layers):
        a = p[f"attention_{layer}"]
        h = _layer_norm(a["layernorm"], x)
        q = _dense(a["q_proj"], h).reshape(n, H, D)
        k = _dense(a["k_proj"], h).reshape(n, H, D)
        v = _dense(a["v_proj"], h).reshape(n, H, 3 * D)
        vp = _dense(a["vec_proj"], vec)
        vec1, vec2, vec3 = vp[..., :F], vp[..., F:2 * F], vp[..., 2 * F:]
        dk = _silu(_dense(a["dk_proj"], rbf)).reshape(n, n, H, D)
        dv = _silu(_dense(a["dv_proj"], rbf)).reshape(n, n, H, 3 * D)
        attn = _silu(jnp.einsum("ihd,jhd,ijhd->ijh", q, k, dk)) * cut[..., None]
        vals = v[None, :] * dv                                     # [i, j, H, 3D]
        mx = (vals[..., :D] * attn[..., None]).reshape(n, n, F)
        m1, m2 = vals[..., D:2 * D].reshape(n, n, F), vals[..., 2 * D:].reshape(n, n, F)
        mvec = (vec[None, :, :, :] * m1[:, :, None, :] + m2[:, :, None, :] * unit[..., None]) \
            * edge[..., None, None]
        o = _dense(a["o_proj"], mx.sum(1))
        x = x + jnp.sum(vec1 * vec2, axis=1) * o[:, F:2 * F] + o[:, 2 * F:]
        vec = vec + vec3 * o[:, None, :F] + mvec.sum(1)
    return _layer_norm(p["out_norm"], x), vec


@pytest.mark.parametrize("neighbor_list", ["all_pairs", "radius"])
def test_pair_layout_equals_directed_reference(qm9_small, neighbor_list):
    mols, _ = qm9_small
    idx = [5, 123, 321]
    n_pairs = mols.n_atoms * (mols.n_atoms - 1) // 2
    budget = estimate_budgets(mols.n_atoms, n_pairs, len(idx), num_buckets=1)[-1]
    g = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, idx, budget, neighbor_list,
                                                        cutoff=CUTOFF, skin=0.5))
    m = graph_masks(g)
    assert int(m.edge_mask.sum()) < g.senders.shape[0]             # padding pairs are present
    assert bool(jnp.all(g.receivers[m.edge_mask] < g.senders[m.edge_mask]))  # each pair once
    layers, heads = 2, 4
    et = EquivariantTransformer(num_layers=layers, features=32, num_heads=heads, num_rbf=16, cutoff=CUTOFF)
    z, pos = g.nodes.atomic_numbers, g.nodes.positions
    params = et.init(jax.random.PRNGKey(0), z, pos, g.senders, g.receivers, m.edge_mask, m.node_mask)
    # Non-zero biases, so that masked-out pairs with a zero radial basis would still show up.
    params = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(a.size), a.shape), params)
    real = m.node_mask
    same = (m.node_graph[:, None] == m.node_graph[None, :]) & real[:, None] & real[None, :]

    @jax.jit
    def ours(pos):
        return et.apply(params, z, pos, g.senders, g.receivers, m.edge_mask, m.node_mask)

    @jax.jit
    def ref(pos, same=same):
        return directed_reference(params, z, pos, same, layers, heads)

    x, vec = ours(pos)
    x_ref, vec_ref = ref(pos)
    assert float(jnp.abs(x_ref[real]).max()) > 0.1 and float(jnp.abs(vec_ref[real]).max()) > 1e-2
    np.testing.assert_allclose(x[real], x_ref[real], atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(vec[real], vec_ref[real], atol=2e-4, rtol=1e-4)
    # The comparison can fail: the reference without its self-loops is a different function.
    x_no_loops, _ = ref(pos, same & ~jnp.eye(len(z), dtype=bool))
    assert float(jnp.abs(x[real] - x_no_loops[real]).max()) > 1e-3
    # Forces: the backward pass through the shared filters and the self-edges.
    energy = lambda f: lambda pos: jnp.sum(jnp.where(real[:, None], f(pos)[0], 0.0) ** 2) \
        + jnp.sum(jnp.where(real[:, None, None], f(pos)[1], 0.0) ** 2)
    f_ours, f_ref = jax.jit(jax.grad(energy(ours)))(pos), jax.jit(jax.grad(energy(ref)))(pos)
    assert float(jnp.abs(f_ref[real]).max()) > 1e-2
    np.testing.assert_allclose(f_ours[real], f_ref[real], atol=2e-3, rtol=2e-3)
