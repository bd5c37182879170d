"""Does the decoder use the graph code z? The z diagnostic of every GeoRecon run.

Two measurements on held-out molecules, both from a fixed key:

  1. Decoder error by σ (`decoder_errors`): at each σ of a fixed list, every real molecule is
     perturbed once (the same ε for every σ and for all three codes) and the decoder's ε-MSE is
     taken with (a) its own code, (b) another real molecule's code of the same batch (a
     derangement: the next real molecule, cyclically) and (c) a zero code. A decoder that ignores
     z gives own = other = zero; one that uses it gives own < other.
  2. Reconstruction from z alone (in `georecon.GeoRecon.report`): the same start noise and the
     same molecular graph, rebuilt once with the molecule's own code and once with the code of
     another held-out molecule with the same atom count (the same composition when one exists),
     scored against the molecule's own structure (Kabsch RMSD). The sampler starts from pure
     noise σ_max·ε that holds nothing of the structure, so only z and the graph can inform it.

`decoder_errors` is generic over how codes and ε̂ are computed (``code_fn``, ``decode_fn``), so
that the tests can run it on a toy decoder whose only source of the target is z;
`georecon.make_decoder_errors_fn` binds it to a GeoRecon model.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from georecon_jax.models.graph import dense_shape, graph_masks, to_dense
from georecon_jax.objectives.noise import perturb

DEFAULT_SIGMAS = (0.01, 0.04, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0)  # Å


def _pair_distances(x0_hat, graph):
    """(masks, real pairs [P], distances of x̂₀ [P], clean distances [P], molecule of each pair
    [P]) on the graph's pair list; in the dense layout on every pair i < j of each molecule's
    slots (P = B·N·N)."""
    m = graph_masks(graph)
    ref = graph.nodes.positions
    dense = dense_shape(graph)
    if dense is not None:
        b, n = dense

        def dist(x):
            x = to_dense(graph, x)
            return jnp.sqrt(jnp.sum((x[:, :, None] - x[:, None, :]) ** 2, axis=-1) + 1e-8).reshape(-1)

        real = to_dense(graph, m.node_mask)
        real = real[:, :, None] & real[:, None, :] & jnp.triu(jnp.ones((n, n), bool), k=1)
        pair_graph = jnp.repeat(jnp.arange(b), n * n)
        return m, real.reshape(-1), dist(x0_hat), dist(ref), pair_graph
    s, r = graph.senders, graph.receivers
    d_hat = jnp.sqrt(jnp.sum((x0_hat[s] - x0_hat[r]) ** 2, axis=-1) + 1e-8)
    d = jnp.sqrt(jnp.sum((ref[s] - ref[r]) ** 2, axis=-1) + 1e-8)
    return m, m.edge_mask & (s != r), d_hat, d, m.node_graph[s]


def distance_errors(x0_hat, graph):
    """Per molecule, mean over its pairs of (|x̂₀_i - x̂₀_j| - |x_i - x_j|)² [n_graph] (Å²): the
    frame-free reconstruction error on the graph's pair list (every pair on all-pairs graphs)."""
    m, real, d_hat, d, edge_graph = _pair_distances(x0_hat, graph)
    w = real.astype(d.dtype)
    total = jax.ops.segment_sum(w * (d_hat - d) ** 2, edge_graph, num_segments=m.n_graph)
    count = jax.ops.segment_sum(w, edge_graph, num_segments=m.n_graph)
    return total / jnp.maximum(count, 1.0)


def spectrum_errors(x0_hat, graph):
    """Per molecule, mean over its pairs of the squared difference between the **sorted** pair
    distances of x̂₀ and of the clean structure [n_graph] (Å²): the 1-D Wasserstein-2 distance
    between the two distance distributions. Frame-free and blind to which atom is which, so a
    decoder need not solve the atom correspondence; only the molecule's shape (its distance
    spectrum) is asked for."""
    m, real, d_hat, d, edge_graph = _pair_distances(x0_hat, graph)
    edge_graph = jnp.where(real, edge_graph, m.n_graph)  # padding pairs sort last
    # sort each molecule's pairs by distance, separately for x̂₀ and the reference; equal counts per
    # molecule, so position k holds the k-th shortest of the same molecule in both
    by_hat = jnp.lexsort((jax.lax.stop_gradient(d_hat), edge_graph))
    by_ref = jnp.lexsort((d, edge_graph))
    g_sorted = edge_graph[by_ref]
    w = (g_sorted < m.n_graph).astype(d.dtype)
    diff2 = w * (d_hat[by_hat] - d[by_ref]) ** 2
    g_idx = jnp.minimum(g_sorted, m.n_graph - 1)
    total = jax.ops.segment_sum(diff2, g_idx, num_segments=m.n_graph)
    count = jax.ops.segment_sum(w, g_idx, num_segments=m.n_graph)
    return total / jnp.maximum(count, 1.0)


def derangement(real):
    """(other [n_graph], has_other [n_graph]) for ``real`` [n_graph] bool, the real graphs: other is
    the index of another real graph for each real graph, the next one cyclically (itself when the
    batch holds a single real graph; padding graphs map to themselves); has_other: real, and the
    batch holds at least two real graphs."""
    n_graph = real.shape[0]
    n_real = real.astype(jnp.int32).sum()
    rank = jnp.cumsum(real.astype(jnp.int32)) - 1  # the rank of each real graph among the real
    real_idx = jnp.nonzero(real, size=n_graph, fill_value=0)[0]  # the real graphs, in order
    nxt = real_idx[(rank + 1) % jnp.maximum(n_real, 1)]
    other = jnp.where(real, nxt, jnp.arange(n_graph))
    return other, real & (n_real >= 2)


def decoder_errors(
    code_fn: Callable, decode_fn: Callable, graph, key, sigmas: Sequence[float]
) -> Dict[str, jax.Array]:
    """Per-molecule decoder ε-MSE with its own, another molecule's and a zero code (jittable).

    Args:
      code_fn(graph) -> z [n_graph, C], the codes of the clean molecules;
      decode_fn(graph, positions, codes, log_sigma_per_node) -> a list of ε̂ [n, 3], one for each
        code of the list ``codes`` (each [n_graph, C]) at the same perturbed ``positions``;
      graph: a padded graph batch; key: the noise key; sigmas: the σ levels (Å).

    Returns {"mse_own", "mse_other", "mse_zero": [S, n_graph] (mean over atoms and axes),
    "dist_own", "dist_other", "dist_zero": [S, n_graph] (`distance_errors` of x̂₀ = x - σ ε̂, Å²:
    frame-free, so also fair to decoders trained on a frame-free loss), "spec_own", "spec_other",
    "spec_zero" (`spectrum_errors` of x̂₀, Å²: also blind to which atom is which),
    "has_other": [n_graph] bool (a real molecule with a partner), "other": [n_graph] int}.
    The noise is the objective's (`noise.perturb`, keyed by molecule id and atom index): at σ it is
    exactly the ε that `GeoRecon.forward` draws from the same key.
    """
    m = graph_masks(graph)
    # real molecules: a batch may hold several empty padding graphs (graph_id -1), not only the last
    other, has_other = derangement(m.graph_mask & (graph.globals.graph_id >= 0))
    z = code_fn(graph)
    codes = [z, z[other], jnp.zeros_like(z)]
    sigmas = jnp.asarray(sigmas, jnp.float32)
    count = jax.ops.segment_sum(m.node_mask.astype(jnp.float32), m.node_graph, num_segments=m.n_graph)

    def at(sigma):
        pos, eps = perturb(graph, key, jnp.full(m.n_graph, sigma))
        log_sigma = jnp.full(pos.shape[0], jnp.log(sigma))
        outs = decode_fn(graph, pos, codes, log_sigma)

        def mse(e):
            per_atom = jnp.where(m.node_mask, jnp.mean((e - eps) ** 2, axis=-1), 0.0)
            total = jax.ops.segment_sum(per_atom, m.node_graph, num_segments=m.n_graph)
            return total / jnp.maximum(count, 1.0)

        mses = jnp.stack([mse(e) for e in outs])  # [3, n_graph]
        dists = jnp.stack([distance_errors(pos - sigma * e, graph) for e in outs])
        specs = jnp.stack([spectrum_errors(pos - sigma * e, graph) for e in outs])
        return jnp.stack([mses, dists, specs])  # [3, 3, n_graph]

    errs = jax.lax.map(at, sigmas)  # [S, 3, 3, n_graph]
    return {
        "mse_own": errs[:, 0, 0],
        "mse_other": errs[:, 0, 1],
        "mse_zero": errs[:, 0, 2],
        "dist_own": errs[:, 1, 0],
        "dist_other": errs[:, 1, 1],
        "dist_zero": errs[:, 1, 2],
        "spec_own": errs[:, 2, 0],
        "spec_other": errs[:, 2, 1],
        "spec_zero": errs[:, 2, 2],
        "has_other": has_other,
        "other": other,
    }


def aggregate_decoder_errors(results: List[Dict], sigmas: Sequence[float]) -> Dict:
    """Host side: mean MSE own / other / zero per σ over the real molecules with a partner, and
    the ratios own/other and own/zero (ratios of the means). ``results``: `decoder_errors` of
    each batch, on the host."""
    keep = [np.asarray(r["has_other"]) for r in results]
    cat = {
        k: np.concatenate([np.asarray(r[k])[:, h] for r, h in zip(results, keep)], axis=1)
        for k in (
            "mse_own",
            "mse_other",
            "mse_zero",
            "dist_own",
            "dist_other",
            "dist_zero",
            "spec_own",
            "spec_other",
            "spec_zero",
        )
        if k in results[0]
    }
    n = int(sum(h.sum() for h in keep))
    if not n:  # no batch held two real molecules
        return {"sigmas": [float(s) for s in sigmas], "n_molecules_decoder": 0}
    mean = {k: v.mean(axis=1) for k, v in cat.items()}
    out = {
        "sigmas": [float(s) for s in sigmas],
        "mse_own": mean["mse_own"].tolist(),
        "mse_other": mean["mse_other"].tolist(),
        "mse_zero": mean["mse_zero"].tolist(),
        "own_over_other": (mean["mse_own"] / mean["mse_other"]).tolist(),
        "own_over_zero": (mean["mse_own"] / mean["mse_zero"]).tolist(),
        # what z adds, as differences of the decoder's ε-MSE (negative: the own code helps)
        "own_minus_other": (mean["mse_own"] - mean["mse_other"]).tolist(),
        "own_minus_zero": (mean["mse_own"] - mean["mse_zero"]).tolist(),
        "n_molecules_decoder": n,
    }
    if "dist_own" in mean:  # the frame-free error of x̂₀ (Å²)
        out.update(
            dist_mse_own=mean["dist_own"].tolist(),
            dist_mse_other=mean["dist_other"].tolist(),
            dist_mse_zero=mean["dist_zero"].tolist(),
            dist_own_over_other=(mean["dist_own"] / mean["dist_other"]).tolist(),
        )
    if "spec_own" in mean:  # the same, blind to the atom correspondence (Å²)
        out.update(
            spec_mse_own=mean["spec_own"].tolist(),
            spec_mse_other=mean["spec_other"].tolist(),
            spec_mse_zero=mean["spec_zero"].tolist(),
            spec_own_over_other=(mean["spec_own"] / mean["spec_other"]).tolist(),
        )
    return out


def same_size_partners(atomic_numbers: List[np.ndarray]) -> tuple:
    """For each molecule (its atomic numbers), another molecule with the same atom count, preferring
    the same composition: (partner index or -1 [N], same_composition bool [N]). Partners are
    chosen cyclically within each group, so no molecule is its own partner."""
    n = len(atomic_numbers)
    partner = np.full(n, -1, np.int64)
    same_comp = np.zeros(n, bool)
    by_comp, by_size = {}, {}
    for i, z in enumerate(atomic_numbers):
        by_comp.setdefault(tuple(sorted(int(a) for a in z)), []).append(i)
        by_size.setdefault(len(z), []).append(i)
    for group in by_comp.values():
        if len(group) > 1:
            for k, i in enumerate(group):
                partner[i] = group[(k + 1) % len(group)]
                same_comp[i] = True
    for group in by_size.values():
        for k, i in enumerate(group):
            if partner[i] < 0 and len(group) > 1:
                partner[i] = group[(k + 1) % len(group)]
    return partner, same_comp
