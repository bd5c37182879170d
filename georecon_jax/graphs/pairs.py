"""Pair records -> padded batches of two jraph.GraphsTuples (host side, numpy).

Every molecule of side s (1: solute / chromophore / drug 1, 2: solvent / drug 2) is padded to the
same ``n_node_s`` atoms and ``n_edge_s`` directed bonds, so a batch of B pairs is two GraphsTuples
whose nodes reshape to [B, n_node_s, ...]: message passing uses the flat edge lists, while the
interaction map, Set2Set and the 3D environment use the dense [B, N, ...] view. Static shapes:
budgets are fixed once from the data (`PairBudget.from_dataset`); pairs that do not fit are left
out and counted. Masks mark real atoms (``nodes.mask``), real bonds (``edges.mask``) and real
pairs (``pair_mask``; a last partial batch is filled with padding pairs).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple, Optional

import jraph
import numpy as np

from georecon_jax.chem.features import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
from georecon_jax.data.pairs import PairDataset
from georecon_jax.graphs.batching import round_up


class AtomFeatures(NamedTuple):
    features: np.ndarray  # [n, ATOM_FEATURE_DIM] one-hot atom features
    positions: np.ndarray  # [n, 3] Å, the molecule's cached conformer
    atomic_numbers: np.ndarray  # [n] int32 (0 on padding)
    in_ring: np.ndarray  # [n] bool
    mask: np.ndarray  # [n] bool, real atom


class BondFeatures(NamedTuple):
    features: np.ndarray  # [e, BOND_FEATURE_DIM]
    mask: np.ndarray  # [e] bool, real bond


class PairBatch(NamedTuple):
    graph1: jraph.GraphsTuple
    graph2: jraph.GraphsTuple
    labels: np.ndarray  # [B, n_labels] (NaN where unlabeled)
    pair_mask: np.ndarray  # [B] bool, real pair
    pair_id: np.ndarray  # [B] int, index into the dataset (-1 on padding)


@dataclasses.dataclass(frozen=True)
class PairBudget:
    """Atoms and directed bonds per molecule, for each side."""

    n_node1: int
    n_edge1: int
    n_node2: int
    n_edge2: int

    @classmethod
    def from_dataset(
        cls, ds: PairDataset, max_atoms: Optional[int] = None, multiple: int = 4
    ) -> "PairBudget":
        """The largest molecule of each side (capped at ``max_atoms``), rounded up to ``multiple``."""
        n = ds.n_atoms()
        e = np.asarray([len(m["senders"]) for m in ds.molecules], np.int64)
        sides = []
        for idx in (ds.index1, ds.index2):
            na = int(n[idx].max()) if len(idx) else 1
            ne = int(e[idx].max()) if len(idx) else 0
            if max_atoms:
                na = min(na, max_atoms)
                ne = min(ne, int(e[idx][n[idx] <= max_atoms].max(initial=0)))
            sides += [round_up(max(na, 1), multiple), round_up(max(ne, 1), multiple)]
        return cls(*sides)

    def fits(self, ds: PairDataset) -> np.ndarray:
        """[n_pairs] bool: the pair's molecules fit this budget."""
        n = ds.n_atoms()
        e = np.asarray([len(m["senders"]) for m in ds.molecules], np.int64)
        return (
            (n[ds.index1] <= self.n_node1)
            & (e[ds.index1] <= self.n_edge1)
            & (n[ds.index2] <= self.n_node2)
            & (e[ds.index2] <= self.n_edge2)
        )


def pack_side(molecules, mol_ids, real, n_node: int, n_edge: int) -> jraph.GraphsTuple:
    """One side of a batch: B molecules (``mol_ids`` [B]; ``real`` [B] bool) padded to
    ``n_node`` atoms and ``n_edge`` bonds each, as one GraphsTuple with B graphs."""
    B = len(mol_ids)
    feats = np.zeros((B, n_node, ATOM_FEATURE_DIM), np.float32)
    pos = np.zeros((B, n_node, 3), np.float32)
    z = np.zeros((B, n_node), np.int32)
    ring = np.zeros((B, n_node), bool)
    amask = np.zeros((B, n_node), bool)
    bfeats = np.zeros((B, n_edge, BOND_FEATURE_DIM), np.float32)
    bmask = np.zeros((B, n_edge), bool)
    senders = np.zeros((B, n_edge), np.int32)
    receivers = np.zeros((B, n_edge), np.int32)
    for b, (m, ok) in enumerate(zip(mol_ids, real)):
        if not ok:
            continue
        rec = molecules[m]
        n, e = len(rec["atomic_numbers"]), len(rec["senders"])
        feats[b, :n], pos[b, :n], z[b, :n] = rec["atom_features"], rec["positions"], rec["atomic_numbers"]
        ring[b, :n], amask[b, :n] = rec["in_ring"], True
        bfeats[b, :e], bmask[b, :e] = rec["bond_features"], True
        senders[b, :e], receivers[b, :e] = rec["senders"], rec["receivers"]
    offset = (np.arange(B, dtype=np.int32) * n_node)[:, None]  # padding bonds: self-loops on atom 0
    return jraph.GraphsTuple(
        nodes=AtomFeatures(
            feats.reshape(B * n_node, -1),
            pos.reshape(B * n_node, 3),
            z.reshape(-1),
            ring.reshape(-1),
            amask.reshape(-1),
        ),
        edges=BondFeatures(bfeats.reshape(B * n_edge, -1), bmask.reshape(-1)),
        senders=(senders + offset).reshape(-1),
        receivers=(receivers + offset).reshape(-1),
        n_node=np.full((B,), n_node, np.int32),
        n_edge=np.full((B,), n_edge, np.int32),
        globals=None,
    )


def pack_pairs(ds: PairDataset, pair_ids, batch_size: int, budget: PairBudget) -> PairBatch:
    """``pair_ids`` (≤ batch_size) -> a PairBatch of exactly ``batch_size`` pairs."""
    ids = np.full((batch_size,), -1, np.int64)
    ids[: len(pair_ids)] = pair_ids
    real = ids >= 0
    safe = np.where(real, ids, 0)
    labels = np.where(real[:, None], ds.labels[safe], np.nan).astype(np.float32)
    return PairBatch(
        pack_side(ds.molecules, ds.index1[safe], real, budget.n_node1, budget.n_edge1),
        pack_side(ds.molecules, ds.index2[safe], real, budget.n_node2, budget.n_edge2),
        labels,
        real,
        ids,
    )


def stack_devices(batches):
    import jax

    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches)


class PairBatcher:
    """Batches ``k = 0, 1, ...`` of a pair set, with a leading [num_devices] axis.

    Shuffled per epoch from (seed, epoch) when ``shuffle``; batch k depends only on k.
    """

    def __init__(
        self,
        ds: PairDataset,
        indices,
        batch_size: int,
        budget: PairBudget,
        *,
        num_devices: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = True,
    ):
        if batch_size % num_devices:
            raise ValueError(f"batch size {batch_size} is not divisible by {num_devices} devices")
        indices = np.asarray(indices, np.int64)
        fits = budget.fits(ds)[indices] if len(indices) else np.zeros(0, bool)
        self.num_dropped = int((~fits).sum())  # pairs with a molecule over the budget
        self.indices = indices[fits]
        self.ds, self.batch_size, self.budget = ds, batch_size, budget
        self.num_devices, self.shuffle, self.seed = num_devices, shuffle, seed
        n = len(self.indices)
        self.steps_per_epoch = max(n // batch_size if drop_remainder else -(-n // batch_size), 1)

    def batch_indices(self, k: int) -> np.ndarray:
        epoch, i = divmod(k, self.steps_per_epoch)
        order = (
            np.random.default_rng((self.seed, epoch)).permutation(len(self.indices))
            if self.shuffle
            else np.arange(len(self.indices))
        )
        return self.indices[order[i * self.batch_size : (i + 1) * self.batch_size]]

    def batch(self, k: int) -> PairBatch:
        ids = self.batch_indices(k)
        per = self.batch_size // self.num_devices
        return stack_devices(
            [
                pack_pairs(self.ds, ids[d * per : (d + 1) * per], per, self.budget)
                for d in range(self.num_devices)
            ]
        )

    def epoch_batches(self) -> Iterator[PairBatch]:
        for k in range(self.steps_per_epoch):
            yield self.batch(k)


def dense(x, batch: int):
    """[B·N, ...] -> [B, N, ...] (works on numpy and jax arrays)."""
    return x.reshape((batch, -1) + tuple(x.shape[1:]))
