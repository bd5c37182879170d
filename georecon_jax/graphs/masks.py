"""Device-side views of a padded GraphsTuple: masks and node->graph indices (jnp, jit-safe)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph


class GraphMasks(NamedTuple):
    node_mask: jax.Array   # [n_node] bool, False on padding nodes
    edge_mask: jax.Array   # [n_edge] bool, False on padding edges
    graph_mask: jax.Array  # [n_graph] bool, False on padding graphs
    node_graph: jax.Array  # [n_node] int, graph index of every node
    n_graph: int           # static number of graphs (padding included)


def graph_masks(graph: jraph.GraphsTuple) -> GraphMasks:
    """Masks of a padded GraphsTuple (jraph convention: the last graph owns the padding)."""
    n_node_total = graph.nodes.atomic_numbers.shape[0]
    n_graph = graph.n_node.shape[0]
    node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=n_node_total)
    return GraphMasks(node_mask=jraph.get_node_padding_mask(graph),
                      edge_mask=jraph.get_edge_padding_mask(graph),
                      graph_mask=jraph.get_graph_padding_mask(graph),
                      node_graph=node_graph, n_graph=n_graph)


def per_graph_mean(values, masks: GraphMasks):
    """Mean over each graph's real nodes of per-node values [n] -> [n_graph]."""
    w = masks.node_mask.astype(values.dtype)
    total = jax.ops.segment_sum(values * w, masks.node_graph, num_segments=masks.n_graph)
    count = jax.ops.segment_sum(w, masks.node_graph, num_segments=masks.n_graph)
    return total / jnp.maximum(count, 1.0)
