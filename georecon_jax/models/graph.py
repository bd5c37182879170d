"""The typed, padded molecular graph as the models see it, and masked reductions over it.

A batch is a `jraph.GraphsTuple` whose ``nodes`` are `graphs.batching.NodeFeatures` (positions
[n, 3] Å, atomic_numbers [n], atom_index [n], optional forces [n, 3]) and whose ``globals`` are
`graphs.batching.GraphFeatures` (graph_id [n_graph], -1 on padding; targets [n_graph, T]).
``senders``/``receivers`` list each unordered atom pair once. Padding follows jraph: the last
graph owns every padding node and edge. Everything here is jnp and jit-safe; shapes are static.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph


class GraphMasks(NamedTuple):
    node_mask: jax.Array  # [n_node] bool, False on padding nodes
    edge_mask: jax.Array  # [n_edge] bool, False on padding edges
    graph_mask: jax.Array  # [n_graph] bool, False on padding graphs
    node_graph: jax.Array  # [n_node] int, graph index of every node
    n_graph: int  # static number of graphs (padding included)


class NodeEmbedding(NamedTuple):
    """What an equivariant encoder returns per atom (zero on padding atoms)."""

    scalars: jax.Array  # [n, F] rotation invariant
    vectors: jax.Array  # [n, 3, F] rotation equivariant


def graph_masks(graph: jraph.GraphsTuple) -> GraphMasks:
    """Masks of a padded GraphsTuple (jraph convention: the last graph owns the padding)."""
    n_node_total = graph.nodes.atomic_numbers.shape[0]
    n_graph = graph.n_node.shape[0]
    node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=n_node_total)
    return GraphMasks(
        node_mask=jraph.get_node_padding_mask(graph),
        edge_mask=jraph.get_edge_padding_mask(graph),
        graph_mask=jraph.get_graph_padding_mask(graph),
        node_graph=node_graph,
        n_graph=n_graph,
    )


def masked_mean(values, masks: GraphMasks):
    """Mean over each graph's real nodes: [n, ...] -> [n_graph, ...] (0 for a graph without any).

    The one masked mean of the library: per-atom losses [n] -> per-molecule losses, node
    features [n, F] -> pooled graph features."""
    w = masks.node_mask.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
    total = jax.ops.segment_sum(values * w, masks.node_graph, num_segments=masks.n_graph)
    count = jax.ops.segment_sum(w, masks.node_graph, num_segments=masks.n_graph)
    return total / jnp.maximum(count, 1.0)


def masked_sum(values, masks: GraphMasks):
    """Sum over each graph's real nodes: [n, ...] -> [n_graph, ...]."""
    w = masks.node_mask.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
    return jax.ops.segment_sum(values * w, masks.node_graph, num_segments=masks.n_graph)
