"""Records -> padded `jraph.GraphsTuple` batches with static shapes (host side, numpy).

Shapes. A batch holds ``batch_size`` molecules split evenly over ``num_devices``; each device's
sub-batch is padded to one of a few *budgets* (node, edge, graph counts estimated once from the
data), and the sub-batches are stacked along a leading device axis. A jitted step therefore sees
at most ``len(budgets)`` distinct shapes: after warm-up nothing recompiles.

Padding follows jraph's convention: one extra graph at the end owns all padding nodes and edges,
so ``jraph.get_graph_padding_mask`` / ``get_node_padding_mask`` / ``get_edge_padding_mask`` give
the masks. Padding edges are self-edges of the first padding node.

Edges. Each molecule contributes a candidate list of atom pairs, each unordered pair of distinct
atoms once (``senders``/``receivers``; the models send messages both ways along each pair and add
every atom's self-edge, which is TorchMD-Net's ordered edge list with ``loop=True``): all
n(n-1)/2 pairs (``neighbor_list="all_pairs"``), or the pairs closer than ``cutoff + skin`` at the
record's positions (``"radius"``). The models recompute distances from
the positions they are given and weight every edge by a cosine cutoff that vanishes beyond the
cutoff, so the effective graph is the radius graph *at the positions the model sees*. With
all pairs this is exact for perturbed and sampled coordinates alike. A radius list is chosen at
the clean positions: it is exact only while no pair's relative displacement exceeds the skin, and
otherwise leaks the clean geometry (which atoms are near) and loses pairs. Configs whose noise
could exceed it are refused (skin >= 4·σ·√2·√3, ``objectives.noise.neighbor_list_problems``), and
GeoRecon's sampling from pure noise always runs on all pairs.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, NamedTuple, Optional, Sequence

import jraph
import numpy as np

from georecon_jax.data.records import Molecules


class NodeFeatures(NamedTuple):
    positions: np.ndarray  # [n_node, 3] float32, Å
    atomic_numbers: np.ndarray  # [n_node] int32 (0 on padding)
    atom_index: np.ndarray  # [n_node] int32: index of the atom within its molecule
    forces: Optional[np.ndarray] = None  # [n_node, 3] float32, labelled force data only


class GraphFeatures(NamedTuple):
    graph_id: np.ndarray  # [n_graph] int32: index of the molecule in its data set; -1 padding
    targets: np.ndarray  # [n_graph, n_targets] float32 (n_targets may be 0)


@dataclasses.dataclass(frozen=True)
class Budget:
    """Static sizes of one padded (per-device) sub-batch; n_graph includes the padding graph."""

    n_node: int
    n_edge: int
    n_graph: int

    def fits(self, n_node: int, n_edge: int) -> bool:
        # One node is reserved for the padding graph (jraph requires it to own >= 1 node).
        return n_node + 1 <= self.n_node and n_edge <= self.n_edge

    @classmethod
    def covering(cls, n_node: int, n_edge: int, n_graph: int) -> "Budget":
        """The padded shape of ``n_graph`` molecules with ``n_node`` atoms and ``n_edge`` pairs in
        all: one node and one graph more for jraph's padding graph, nodes rounded up to
        NODE_MULTIPLE, edges to EDGE_MULTIPLE (at least one multiple)."""
        return cls(
            round_up(n_node + 1, NODE_MULTIPLE),
            max(round_up(n_edge, EDGE_MULTIPLE), EDGE_MULTIPLE),
            n_graph + 1,
        )


# Padded sizes are multiples of these: small enough that QM9 micro-batches of 4 molecules (~72
# atoms, ~620 pairs) pad by 5-8 %, large enough that budgets do not multiply.
NODE_MULTIPLE, EDGE_MULTIPLE = 4, 32


def round_up(x: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= x."""
    return int(-(-x // multiple) * multiple)


def molecule_edges(
    positions: np.ndarray, neighbor_list: str = "all_pairs", cutoff: float = 5.0, skin: float = 0.0
):
    """Candidate atom pairs (senders, receivers) of one molecule, local atom indices.

    Each unordered pair of distinct atoms is listed once, receiver < sender, in receiver-major
    order; the models send messages both ways and add the self-edges themselves
    (`georecon_jax.models.et`). ``all_pairs``: all n(n-1)/2 pairs. ``radius``: the pairs closer
    than cutoff + skin (Å) at these positions.
    """
    n = len(positions)
    receivers, senders = np.triu_indices(n, k=1)
    if neighbor_list == "radius":
        d = np.linalg.norm(positions[receivers] - positions[senders], axis=-1)
        keep = d < cutoff + skin
        receivers, senders = receivers[keep], senders[keep]
    elif neighbor_list != "all_pairs":
        raise ValueError(f"unknown neighbor_list {neighbor_list!r}: use 'all_pairs' or 'radius'")
    return senders.astype(np.int32), receivers.astype(np.int32)


RADIUS_CHUNK = 2_000_000  # pair distances computed at once by `edge_counts` (~100 MB at the peak)


def edge_counts(molecules: Molecules, neighbor_list: str, cutoff: float, skin: float) -> np.ndarray:
    """[n_molecules] int64: the number of pairs `molecule_edges` lists for each molecule. For
    ``radius``, computed for all molecules of one atom count at a time, in chunks of
    ``RADIUS_CHUNK`` pairs (a Python loop per molecule took minutes for millions of molecules):
    the same arithmetic as `molecule_edges`, so the same counts."""
    n = molecules.n_atoms.astype(np.int64)
    if neighbor_list == "all_pairs":
        return n * (n - 1) // 2
    if neighbor_list != "radius":
        raise ValueError(f"unknown neighbor_list {neighbor_list!r}: use 'all_pairs' or 'radius'")
    out = np.zeros(len(n), np.int64)
    starts = np.asarray(molecules.offsets[:-1], np.int64)
    for k in np.unique(n):
        if k < 2:
            continue
        which = np.flatnonzero(n == k)
        receivers, senders = np.triu_indices(int(k), k=1)
        per = max(1, RADIUS_CHUNK // len(receivers))
        for lo in range(0, len(which), per):
            chunk = which[lo : lo + per]
            pos = np.asarray(molecules.positions[starts[chunk][:, None] + np.arange(k)])  # [M, k, 3]
            d = np.linalg.norm(pos[:, receivers] - pos[:, senders], axis=-1)
            out[chunk] = np.count_nonzero(d < cutoff + skin, axis=1)
    return out


def balanced_split(n_edges: np.ndarray, num_groups: int, per_group: int) -> List[np.ndarray]:
    """Positions 0..k-1 of a batch's molecules split into ``num_groups`` sub-batches of at most
    ``per_group``, balancing their edge counts (largest first, each to the lightest sub-batch
    with room). All sub-batches of a step share the padded shape of the fullest one, so balance
    means less padding; which sub-batch a molecule lands in changes no result (gradients are
    summed, noise is keyed by molecule). Deterministic; ties keep the batch order."""
    n_edges = np.asarray(n_edges)
    if len(n_edges) > num_groups * per_group:
        raise ValueError(f"{len(n_edges)} molecules do not fit {num_groups} x {per_group}")
    groups = [[] for _ in range(num_groups)]
    load = np.zeros(num_groups)
    for i in np.argsort(-n_edges, kind="stable"):
        room = [g for g in range(num_groups) if len(groups[g]) < per_group]
        g = min(room, key=lambda g: (load[g], g))
        groups[g].append(i)
        load[g] += n_edges[i]
    return [np.sort(np.asarray(g, np.int64)) for g in groups]


def estimate_budgets(
    n_atoms: np.ndarray,
    n_edges: np.ndarray,
    graphs_per_device: int,
    num_buckets: int = 3,
    num_samples: int = 2000,
    seed: int = 0,
    sub_batches: int = 1,
) -> List[Budget]:
    """A few budgets covering random batches of ``sub_batches`` x ``graphs_per_device`` molecules.

    Budgets sit at evenly spaced quantiles of the largest node and edge totals among the
    (balanced, see ``balanced_split``) sub-batches of sampled batches; the last one is the worst
    case (the largest molecules together), so every batch fits.
    """
    rng = np.random.default_rng(seed)
    if sub_batches == 1:
        idx = rng.integers(0, len(n_atoms), size=(num_samples, graphs_per_device))
        nodes, edges = n_atoms[idx].sum(1), n_edges[idx].sum(1)
    else:
        nodes, edges = np.zeros(num_samples, np.int64), np.zeros(num_samples, np.int64)
        for s in range(num_samples):
            batch = rng.integers(0, len(n_atoms), size=sub_batches * graphs_per_device)
            for g in balanced_split(n_edges[batch], sub_batches, graphs_per_device):
                nodes[s] = max(nodes[s], n_atoms[batch[g]].sum())
                edges[s] = max(edges[s], n_edges[batch[g]].sum())
    budgets = []
    for q in np.linspace(0.5, 0.995, max(num_buckets - 1, 0)) if num_buckets > 1 else []:
        budgets.append(
            Budget.covering(int(np.quantile(nodes, q)), int(np.quantile(edges, q)), graphs_per_device)
        )
    k = min(graphs_per_device, len(n_atoms))
    worst = Budget.covering(
        int(np.sort(n_atoms)[-k:].sum()), int(np.sort(n_edges)[-k:].sum()), graphs_per_device
    )
    budgets.append(worst)
    # Drop duplicates / dominated entries, keep ascending order.
    out = []
    for b in sorted(set(budgets), key=lambda b: (b.n_node, b.n_edge)):
        if not out or (b.n_node > out[-1].n_node or b.n_edge > out[-1].n_edge):
            out.append(
                Budget(
                    max(b.n_node, out[-1].n_node) if out else b.n_node,
                    max(b.n_edge, out[-1].n_edge) if out else b.n_edge,
                    b.n_graph,
                )
            )
    return out


def pack_graphs(
    molecules: Molecules,
    indices: Sequence[int],
    budget: Budget,
    neighbor_list: str = "all_pairs",
    cutoff: float = 5.0,
    skin: float = 0.0,
    forces: Optional[np.ndarray] = None,
) -> jraph.GraphsTuple:
    """One padded GraphsTuple of the given molecules (numpy arrays, jraph padding convention)."""
    if budget.n_edge < 1:  # an empty pair list marks the dense layout (models.graph.dense_shape)
        raise ValueError(f"budget {budget} has no edge slot: the pair layout needs at least one")
    n_graph_real = len(indices)
    if n_graph_real + 1 > budget.n_graph:
        raise ValueError(f"{n_graph_real} molecules do not fit a budget of {budget.n_graph - 1} graphs")
    n_node = molecules.n_atoms[np.asarray(indices, np.int64)] if n_graph_real else np.zeros(0, np.int64)
    senders, receivers, n_edge, rows = [], [], [], []
    offset = 0
    for m, n in zip(indices, n_node):
        a = molecules.offsets[m]
        rows.append(np.arange(a, a + n))
        s, r = molecule_edges(molecules.positions[a : a + n], neighbor_list, cutoff, skin)
        senders.append(s + offset)
        receivers.append(r + offset)
        n_edge.append(len(s))
        offset += n
    total_nodes, total_edges = offset, int(sum(n_edge))
    if not budget.fits(total_nodes, total_edges):
        raise ValueError(f"batch of {total_nodes} nodes / {total_edges} edges exceeds budget {budget}")
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    pad_nodes, pad_edges = budget.n_node - total_nodes, budget.n_edge - total_edges

    def pad(x, n, value=0):
        return np.concatenate([x, np.full((n,) + x.shape[1:], value, x.dtype)])

    atom_index = (
        np.concatenate([np.arange(n) for n in n_node]).astype(np.int32)
        if n_graph_real
        else np.zeros(0, np.int32)
    )
    node_forces = None
    if forces is not None:
        node_forces = pad(forces[rows].astype(np.float32), pad_nodes)
    nodes = NodeFeatures(
        positions=pad(molecules.positions[rows].astype(np.float32), pad_nodes),
        atomic_numbers=pad(molecules.atomic_numbers[rows].astype(np.int32), pad_nodes),
        atom_index=pad(atom_index, pad_nodes),
        forces=node_forces,
    )
    n_targets = 0 if molecules.targets is None else molecules.targets.shape[1]
    targets = (
        molecules.targets[np.asarray(indices, np.int64)].astype(np.float32)
        if n_targets
        else np.zeros((n_graph_real, 0), np.float32)
    )
    pad_graphs = budget.n_graph - n_graph_real
    graph_ids = np.asarray(indices, np.int32)
    globals_ = GraphFeatures(graph_id=pad(graph_ids, pad_graphs, -1), targets=pad(targets, pad_graphs))
    pad_index = total_nodes  # padding edges are self-edges of the first padding node
    cat = lambda xs: np.concatenate(xs).astype(np.int32) if xs else np.zeros(0, np.int32)
    return jraph.GraphsTuple(
        nodes=nodes,
        edges=None,
        senders=pad(cat(senders), pad_edges, pad_index),
        receivers=pad(cat(receivers), pad_edges, pad_index),
        n_node=np.concatenate([n_node, [pad_nodes], np.zeros(pad_graphs - 1, np.int64)]).astype(np.int32),
        n_edge=np.concatenate([n_edge, [pad_edges], np.zeros(pad_graphs - 1, np.int64)]).astype(np.int32),
        globals=globals_,
    )


LAYOUTS = ("auto", "dense", "pairs")


def resolve_layout(
    layout: str, max_atoms: int, neighbor_list: str, dense_max_atoms: int, platform: str
) -> str:
    """``graph.layout`` -> "dense" or "pairs". ``auto``: dense on a TPU when every molecule has at
    most ``dense_max_atoms`` atoms and the candidate list is all pairs; pairs otherwise. The pair
    layout is faster where it was measured (benchmarks/results/NOTES.md, issue 18): 2.2x on this
    project's 2-core CPU and 1.13x on an H200 at CPU scale. TPUs are not measured: dense is chosen
    there because TPUs run gathers and scatters poorly and batched dense work well. ``dense`` is
    refused with a radius list (the dense layout always takes every pair)."""
    if layout not in LAYOUTS:
        raise ValueError(f"graph.layout={layout!r}: use one of {LAYOUTS}")
    if layout == "dense" and neighbor_list != "all_pairs":
        raise ValueError(
            f"graph.layout='dense' takes every pair of a molecule; graph.neighbor_list={neighbor_list!r} "
            "needs graph.layout='pairs'"
        )
    if layout == "auto":
        fits = max_atoms <= dense_max_atoms and neighbor_list == "all_pairs"
        return "dense" if fits and platform == "tpu" else "pairs"
    return layout


def training_layout(graph_cfg, max_atoms: int) -> str:
    """The layout of a run's training batches from its ``graph`` config section (``layout``,
    ``neighbor_list``, ``dense_max_atoms``) on this JAX backend: `resolve_layout`."""
    import jax

    return resolve_layout(
        graph_cfg.layout,
        max_atoms,
        graph_cfg.neighbor_list,
        graph_cfg.dense_max_atoms,
        jax.default_backend(),
    )


def estimate_widths(
    n_atoms: np.ndarray, batch_size: int, num_buckets: int = 3, num_samples: int = 2000, seed: int = 0
) -> List[int]:
    """Atom-slot widths N of the dense layout: a few quantiles of the largest molecule of random
    batches of ``batch_size`` (every sub-batch of a step shares the width of the batch's largest
    molecule), the last the largest molecule of all, so every batch fits."""
    n_atoms = np.asarray(n_atoms, np.int64)
    rng = np.random.default_rng(seed)
    k = min(batch_size, len(n_atoms))
    maxes = n_atoms[rng.integers(0, len(n_atoms), size=(num_samples, k))].max(axis=1)
    qs = np.linspace(0.5, 0.995, max(num_buckets - 1, 0)) if num_buckets > 1 else []
    widths = {int(np.ceil(np.quantile(maxes, q))) for q in qs} | {int(n_atoms.max())}
    return sorted(widths)


def pack_dense(
    molecules: Molecules,
    indices: Sequence[int],
    n_slots: int,
    width: int,
    forces: Optional[np.ndarray] = None,
) -> jraph.GraphsTuple:
    """One GraphsTuple in the dense layout (`models.graph.dense_shape`): ``n_slots`` graphs of
    ``width`` atom slots each; molecule k fills the first atoms of slots [k·width, (k+1)·width),
    padding atoms have atomic number 0 and position 0, slots without a molecule have graph_id -1.
    No pair list: ``senders``/``receivers`` are empty."""
    indices = np.asarray(indices, np.int64)
    if len(indices) > n_slots:
        raise ValueError(f"{len(indices)} molecules do not fit {n_slots} dense slots")
    n_atoms = molecules.n_atoms[indices]
    if len(indices) and n_atoms.max() > width:
        raise ValueError(f"a molecule of {n_atoms.max()} atoms does not fit dense width {width}")
    total = n_slots * width
    positions = np.zeros((total, 3), np.float32)
    z = np.zeros(total, np.int32)
    atom_index = np.zeros(total, np.int32)
    node_forces = None if forces is None else np.zeros((total, 3), np.float32)
    for k, (m, n) in enumerate(zip(indices, n_atoms)):
        a, slot = molecules.offsets[m], k * width
        positions[slot : slot + n] = molecules.positions[a : a + n]
        z[slot : slot + n] = molecules.atomic_numbers[a : a + n]
        atom_index[slot : slot + n] = np.arange(n)
        if forces is not None:
            node_forces[slot : slot + n] = forces[a : a + n]
    n_targets = 0 if molecules.targets is None else molecules.targets.shape[1]
    targets = np.zeros((n_slots, n_targets), np.float32)
    if n_targets:
        targets[: len(indices)] = molecules.targets[indices]
    graph_id = np.full(n_slots, -1, np.int32)
    graph_id[: len(indices)] = indices
    empty = np.zeros(0, np.int32)
    return jraph.GraphsTuple(
        nodes=NodeFeatures(positions, z, atom_index, node_forces),
        edges=None,
        senders=empty,
        receivers=empty,
        n_node=np.full(n_slots, width, np.int32),
        n_edge=np.zeros(n_slots, np.int32),
        globals=GraphFeatures(graph_id=graph_id, targets=targets),
    )


def stack_graphs(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Stacks same-shaped GraphsTuples along a new leading (device) axis."""
    import jax

    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *graphs)


def micro_batches_for(
    per_device: int, requested: int = 0, platform: str = "cpu", molecules_per_micro_batch: int = 4
) -> int:
    """How many sequential micro-batches each device's ``per_device`` molecules are split into.

    ``requested`` > 0 is taken as is (it must divide ``per_device``). 0 means automatic: on CPU
    the largest divisor of ``per_device`` that leaves at least ``molecules_per_micro_batch``
    molecules per micro-batch (their per-edge tensors then stay in cache:
    benchmarks/results/NOTES.md); on accelerators 1.
    """
    if requested < 0:
        raise ValueError(f"micro_batches={requested}: must be >= 0 (0: automatic)")
    if requested:
        if per_device % requested:
            raise ValueError(
                f"micro_batches={requested} does not divide the {per_device} molecules per device"
            )
        return requested
    if platform != "cpu":
        return 1
    return max(
        m
        for m in range(1, per_device + 1)
        if per_device % m == 0 and (per_device // m >= molecules_per_micro_batch or m == 1)
    )


class GraphBatcher:
    """Deterministic padded batches of a molecule set: batch ``k`` is a pure function of ``k``.

    Epoch ``e`` visits the molecules in the order of a permutation seeded by (seed, e); the
    last incomplete batch of an epoch is dropped in training (``drop_remainder``) and kept,
    padded, in evaluation. Each batch is split over ``num_devices`` sub-batches (devices, or
    devices x micro-batches) of ``batch_size / num_devices`` molecules with balanced edge counts
    (``balanced_split``).

    Several hosts: ``num_devices`` counts the devices of every host; host ``process_index`` of
    ``process_count`` (default: JAX's) packs only its own ``num_devices // process_count``
    sub-batches (a contiguous slice, matching ``make_mesh``'s host-by-host device order). All
    hosts choose the same padded shape, since the budget is chosen over the whole batch.
    """

    def __init__(
        self,
        molecules: Molecules,
        indices,
        batch_size: int,
        *,
        num_devices: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = True,
        neighbor_list: str = "all_pairs",
        cutoff: float = 5.0,
        skin: float = 0.0,
        num_buckets: int = 3,
        budgets: Optional[List[Budget]] = None,
        forces: Optional[np.ndarray] = None,
        process_index: Optional[int] = None,
        process_count: Optional[int] = None,
        layout: str = "pairs",
        widths: Optional[List[int]] = None,
    ):
        if layout not in ("pairs", "dense"):
            raise ValueError(
                f"layout={layout!r}: use 'pairs' or 'dense' (resolve 'auto' first: resolve_layout)"
            )
        self.layout = layout
        if process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        self.process_index, self.process_count = process_index or 0, process_count
        if num_devices % process_count:
            raise ValueError(f"{num_devices} devices do not split evenly over {process_count} hosts")
        self.local_devices = num_devices // process_count
        if batch_size % num_devices:
            raise ValueError(f"batch_size {batch_size} is not divisible by {num_devices} devices")
        self.molecules, self.indices = molecules, np.asarray(indices, np.int64)
        if len(self.indices) == 0:
            raise ValueError("no molecules to batch")
        self.batch_size, self.num_devices = batch_size, num_devices
        self.per_device = batch_size // num_devices
        self.shuffle, self.seed, self.drop_remainder = shuffle, seed, drop_remainder
        self.neighbor_list, self.cutoff, self.skin = neighbor_list, cutoff, skin
        self.forces = forces
        n_atoms = molecules.n_atoms[self.indices]
        self._n_edges = edge_counts(molecules, neighbor_list, cutoff, skin)
        self.budgets = budgets or estimate_budgets(
            n_atoms,
            self._n_edges[self.indices],
            self.per_device,
            num_buckets,
            seed=seed,
            num_samples=2000 if num_devices == 1 else 500,
            sub_batches=num_devices,
        )
        self.widths = None
        if layout == "dense":
            if neighbor_list != "all_pairs":
                raise ValueError("the dense layout takes every pair: use neighbor_list='all_pairs'")
            self.widths = widths or estimate_widths(n_atoms, batch_size, num_buckets, seed=seed)
            if max(self.widths) < n_atoms.max():
                raise ValueError(f"dense widths {self.widths} miss molecules of {n_atoms.max()} atoms")
        n = len(self.indices)
        self.steps_per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} molecules make no full batch of {batch_size}")

    def describe_layout(self) -> str:
        """'pairs layout' or 'dense layout, atom-slot widths [...]' (for the run's log)."""
        return f"{self.layout} layout" + (f", atom-slot widths {self.widths}" if self.widths else "")

    def batch_indices(self, k: int) -> np.ndarray:
        epoch, i = divmod(k, self.steps_per_epoch)
        order = (
            np.random.default_rng([self.seed, epoch]).permutation(self.indices)
            if self.shuffle
            else self.indices
        )
        return order[i * self.batch_size : (i + 1) * self.batch_size]

    def _budget_for(self, groups) -> Budget:
        need_n = max(int(self.molecules.n_atoms[g].sum()) for g in groups)
        need_e = max(int(self._n_edges[g].sum()) for g in groups)
        for b in self.budgets:
            if b.fits(need_n, need_e):
                return b
        raise ValueError(f"sub-batch of {need_n} nodes / {need_e} edges exceeds every budget")

    def batch(self, k: int) -> jraph.GraphsTuple:
        """Batch k: a GraphsTuple whose arrays have a leading [num_devices] axis (on several hosts:
        this host's devices only)."""
        idx = self.batch_indices(k)
        groups = [idx[g] for g in balanced_split(self._n_edges[idx], self.num_devices, self.per_device)]
        local = groups[
            self.process_index * self.local_devices : (self.process_index + 1) * self.local_devices
        ]
        if self.layout == "dense":  # all sub-batches share the width of the batch's largest molecule
            need = int(self.molecules.n_atoms[idx].max())
            width = next(w for w in self.widths if w >= need)
            return stack_graphs(
                [pack_dense(self.molecules, g, self.per_device, width, self.forces) for g in local]
            )
        budget = self._budget_for(groups)
        return stack_graphs(
            [
                pack_graphs(
                    self.molecules, g, budget, self.neighbor_list, self.cutoff, self.skin, self.forces
                )
                for g in local
            ]
        )

    def epoch_batches(self) -> Iterator[jraph.GraphsTuple]:
        """One pass in fixed order (evaluation)."""
        for k in range(self.steps_per_epoch):
            yield self.batch(k)

    def padding_fraction(self, num_batches: int = 50):
        """Mean fractions (nodes, edges) of the padded arrays that are padding, over the first batches."""
        pn, pe = [], []
        for k in range(min(num_batches, self.steps_per_epoch)):
            g = self.batch(k)
            if self.layout == "dense":  # pairs: ordered pairs of distinct real atoms of N(N-1) slots
                z = g.nodes.atomic_numbers  # [devices, B·N]
                n = self.molecules.n_atoms[g.globals.graph_id[g.globals.graph_id >= 0]]
                width = z.shape[-1] // g.n_node.shape[-1]
                pn.append(1.0 - (z > 0).sum() / z.size)
                pe.append(1.0 - (n * (n - 1)).sum() / (g.n_node.size * width * (width - 1)))
                continue
            real = g.globals.graph_id >= 0  # [devices, n_graph]
            pn.append(1.0 - g.n_node[real].sum() / g.n_node.sum())
            pe.append(1.0 - g.n_edge[real].sum() / max(g.n_edge.sum(), 1))
        return float(np.mean(pn)), float(np.mean(pe))
