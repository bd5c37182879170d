"""The typed, padded molecular graph as the models see it, and masked reductions over it.

A batch is a `jraph.GraphsTuple` whose ``nodes`` are `graphs.batching.NodeFeatures` (positions
[n, 3] Å, atomic_numbers [n], atom_index [n], optional forces [n, 3]) and whose ``globals`` are
`graphs.batching.GraphFeatures` (graph_id [n_graph], -1 on padding; targets [n_graph, T]).
``senders``/``receivers`` list each unordered atom pair once. Padding follows jraph: the last
graph owns every padding node and edge. Everything here is jnp and jit-safe; shapes are static.

**Dense layout** (issue 18, `graphs.batching.pack_dense`): every graph owns N consecutive atom
slots (``n_node`` = N for all), padding atoms have atomic number 0 and may sit inside any graph's
slots, and there is no pair list (``senders``/``receivers`` have length 0): the models take every
pair of a molecule's real atoms. `dense_shape` tells the layouts apart from static shapes, and
`graph_masks` gives the same masks for both, so losses, heads and pooling need not know.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

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


def dense_shape(graph: jraph.GraphsTuple) -> Optional[Tuple[int, int]]:
    """(B, N) for a graph in the dense layout (B molecules in N atom slots each), None for the pair
    layout. Static: read from shapes only."""
    if graph.senders is None or graph.senders.shape[-1] != 0:
        return None
    n_graph, n_node_total = graph.n_node.shape[-1], graph.nodes.atomic_numbers.shape[-1]
    assert n_node_total % n_graph == 0, (n_node_total, n_graph)
    return n_graph, n_node_total // n_graph


def to_dense(graph: jraph.GraphsTuple, per_atom):
    """[B·N, ...] per-atom array of a dense-layout graph -> [B, N, ...]."""
    return per_atom.reshape(dense_shape(graph) + per_atom.shape[1:])


def graph_masks(graph: jraph.GraphsTuple) -> GraphMasks:
    """Masks of a padded GraphsTuple (jraph convention: the last graph owns the padding; in the
    dense layout padding atoms are those of atomic number 0, and a graph is real if it has one)."""
    n_node_total = graph.nodes.atomic_numbers.shape[0]
    n_graph = graph.n_node.shape[0]
    dense = dense_shape(graph)
    if dense is not None:
        return slot_masks((graph.nodes.atomic_numbers > 0).reshape(dense))
    node_graph = jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=n_node_total)
    return GraphMasks(
        node_mask=jraph.get_node_padding_mask(graph),
        edge_mask=jraph.get_edge_padding_mask(graph),
        graph_mask=jraph.get_graph_padding_mask(graph),
        node_graph=node_graph,
        n_graph=n_graph,
    )


def slot_masks(atom_mask) -> GraphMasks:
    """Masks of B molecules in N atom slots each (``atom_mask`` [B, N] bool: a real atom), over the
    B·N slots flattened in order: the dense layout's, and what `masked_mean` needs for per-slot
    arrays [B, N, ...] reshaped to [B·N, ...]."""
    n_graph, n_slots = atom_mask.shape
    return GraphMasks(
        node_mask=atom_mask.reshape(-1),
        edge_mask=jnp.zeros((0,), bool),
        graph_mask=atom_mask.any(axis=1),
        node_graph=jnp.repeat(jnp.arange(n_graph), n_slots),
        n_graph=n_graph,
    )


def real_graph_mask(graph: jraph.GraphsTuple):
    """[n_graph] bool: the graphs that are molecules, not padding (either layout)."""
    return graph_masks(graph).graph_mask


def masked_mean(values, masks: GraphMasks):
    """Mean over each graph's real nodes: [n, ...] -> [n_graph, ...] (0 for a graph without any).

    The one masked mean of the library: per-atom losses [n] -> per-molecule losses, node
    features [n, F] -> pooled graph features (slots [B, N, F]: ``values.reshape(B * N, F)`` with
    `slot_masks`)."""
    w = masks.node_mask.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
    total = jax.ops.segment_sum(values * w, masks.node_graph, num_segments=masks.n_graph)
    count = jax.ops.segment_sum(w, masks.node_graph, num_segments=masks.n_graph)
    return total / jnp.maximum(count, 1.0)


def masked_sum(values, masks: GraphMasks):
    """Sum over each graph's real nodes: [n, ...] -> [n_graph, ...]."""
    w = masks.node_mask.astype(values.dtype).reshape((-1,) + (1,) * (values.ndim - 1))
    return jax.ops.segment_sum(values * w, masks.node_graph, num_segments=masks.n_graph)
