"""The 2D relational model (CIGIN, Pathak et al., AAAI 2020) for pairs of molecular graphs, and the
3DMRL force head.

`RelationalEncoder` (named ``relational`` in both the 3DMRL pretrainer and the fine-tuning model, so
its parameters transfer by name):

  1. per molecule, an edge-conditioned message-passing encoder (`MPNNEncoder`, separate weights for
     side 1 and side 2): h_i <- GRU(h_i, Σ_j MLP([h_j, e_ji])), ``num_steps`` rounds with shared
     weights. (CIGIN uses NNConv + GRU; an edge MLP message is used here to avoid the per-edge F×F
     matrices of NNConv, a documented simplification.)
  2. the interaction map I = tanh(H1 H2ᵀ) [B, N1, N2], zero wherever either atom is padding;
     H1' = I H2 and H2' = Iᵀ H1; node features [H, H'] (2F).
  3. Set2Set readout (masked attention over real atoms) per side -> 4F each; the pair embedding is
     their concatenation (8F).

`PairPredictor` adds the MLP head (regression outputs or classification logits).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from georecon_jax.models.et import Dense, silu

NEG = -1e9


class MPNNEncoder(nn.Module):
    """GraphsTuple (nodes: `AtomFeatures`, edges: `BondFeatures`) -> atom features [n, F], 0 on padding."""

    features: int = 64
    num_steps: int = 3

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        nodes, edges = graph.nodes, graph.edges
        n = nodes.features.shape[0]
        node_mask = nodes.mask[:, None]
        h = jnp.where(node_mask, nn.relu(Dense(self.features, name="embed")(nodes.features)), 0.0)
        msg_0 = Dense(self.features, name="message_0")
        msg_1 = Dense(self.features, name="message_1")
        gru = nn.GRUCell(features=self.features, name="gru")
        for _ in range(self.num_steps):
            m = msg_1(nn.relu(msg_0(jnp.concatenate([h[graph.senders], edges.features], axis=-1))))
            m = jnp.where(edges.mask[:, None], m, 0.0)  # [n_edge, F]
            agg = jax.ops.segment_sum(m, graph.receivers, num_segments=n)  # [n, F]
            h, _ = gru(h, agg)
            h = jnp.where(node_mask, h, 0.0)
        return h


class Set2Set(nn.Module):
    """Set2Set (Vinyals et al. 2016) over padded sets: x [B, N, F], mask [B, N] -> [B, 2F]."""

    steps: int = 2

    @nn.compact
    def __call__(self, x, mask):
        B, _, F = x.shape
        lstm = nn.OptimizedLSTMCell(features=F, name="lstm")
        carry = (jnp.zeros((B, F), x.dtype), jnp.zeros((B, F), x.dtype))
        q_star = jnp.zeros((B, 2 * F), x.dtype)
        for _ in range(self.steps):
            carry, q = lstm(carry, q_star)
            e = jnp.where(mask, jnp.einsum("bnf,bf->bn", x, q), NEG)
            a = jax.nn.softmax(e, axis=-1) * mask  # 0 on padding
            r = jnp.einsum("bn,bnf->bf", a, x)
            q_star = jnp.concatenate([q, r], axis=-1)
        return q_star


class RelationalEncoder(nn.Module):
    """PairBatch -> dict(pair_embedding [B, 8F], nodes1 [B, N1, 2F], nodes2 [B, N2, 2F],
    interaction [B, N1, N2])."""

    features: int = 64
    num_steps: int = 3
    set2set_steps: int = 2

    @nn.compact
    def __call__(self, batch):
        g1, g2 = batch.graph1, batch.graph2
        B = batch.pair_mask.shape[0]
        h1 = MPNNEncoder(self.features, self.num_steps, name="encoder1")(g1).reshape(B, -1, self.features)
        h2 = MPNNEncoder(self.features, self.num_steps, name="encoder2")(g2).reshape(B, -1, self.features)
        m1, m2 = g1.nodes.mask.reshape(B, -1), g2.nodes.mask.reshape(B, -1)
        inter = jnp.tanh(jnp.einsum("bif,bjf->bij", h1, h2))
        inter = jnp.where(m1[:, :, None] & m2[:, None, :], inter, 0.0)  # mask padding
        p1 = jnp.einsum("bij,bjf->bif", inter, h2)
        p2 = jnp.einsum("bij,bif->bjf", inter, h1)
        n1 = jnp.concatenate([h1, p1], axis=-1)
        n2 = jnp.concatenate([h2, p2], axis=-1)
        r1 = Set2Set(self.set2set_steps, name="set2set1")(n1, m1)
        r2 = Set2Set(self.set2set_steps, name="set2set2")(n2, m2)
        return dict(
            pair_embedding=jnp.concatenate([r1, r2], axis=-1), nodes1=n1, nodes2=n2, interaction=inter
        )


class MLP(nn.Module):
    hidden: Sequence[int]
    out: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        for i, h in enumerate(self.hidden):
            x = nn.relu(Dense(h, name=f"hidden_{i}")(x))
            if self.dropout:
                x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return Dense(self.out, name="out")(x)


class PairPredictor(nn.Module):
    """CIGIN for prediction: PairBatch -> [B, num_outputs] (values, or logits for classification)."""

    features: int = 64
    num_steps: int = 3
    set2set_steps: int = 2
    head_hidden: Sequence[int] = (256, 128)
    num_outputs: int = 1
    dropout: float = 0.0

    @nn.compact
    def __call__(self, batch, deterministic: bool = True):
        enc = RelationalEncoder(self.features, self.num_steps, self.set2set_steps, name="relational")(batch)
        return MLP(tuple(self.head_hidden), self.num_outputs, self.dropout, name="head")(
            enc["pair_embedding"], deterministic
        )


class ForceHead(nn.Module):
    """3DMRL's force prediction: for each environment atom i, an equivariant vector

        f_i = Σ_j w_ij (x_i − x_j) / |x_i − x_j|,   w_ij = MLP(s_i ⊕ φ(d_ij)),  s_i = MLP([h_i, h_a(i)])

    over the other environment atoms j within the cutoff, where h_i and h_a(i) are the 2D features
    of the atom and of its anchor atom in the first molecule, and φ a Gaussian expansion of the
    distance. Rotating the environment rotates f. It is trained (on the copies' atoms) to be the
    unit vector anchor -> atom.

    Args (call): atom2d [B, M, D], anchor2d [B, M, D] (2D features per environment slot),
      positions [B, M, 3] Å, node_mask [B, M]. Returns: [B, M, 3].
    """

    features: int = 64
    num_gaussians: int = 32
    cutoff: float = 10.0

    @nn.compact
    def __call__(self, atom2d, anchor2d, positions, node_mask):
        from georecon_jax.models.et import cosine_cutoff
        from georecon_jax.models.schnet import GaussianSmearing

        s = Dense(self.features, name="pair_1")(
            silu(Dense(self.features, name="pair_0")(jnp.concatenate([atom2d, anchor2d], axis=-1)))
        )  # [B, M, F]
        M = positions.shape[1]
        diffs = [positions[:, :, None, c] - positions[:, None, :, c] for c in range(3)]  # 3 × [B, M, M]
        d2 = sum(x**2 for x in diffs)
        ok = (d2 > 1e-8) & ~jnp.eye(M, dtype=bool) & node_mask[:, None, :] & node_mask[:, :, None]
        d = jnp.sqrt(jnp.where(ok, d2, 1.0))
        rbf = GaussianSmearing(0.0, self.cutoff, self.num_gaussians)(d)  # [B, M, M, G]
        h = silu(Dense(self.features, name="filter")(rbf) + s[:, :, None, :])
        w = Dense(1, name="weight")(h)[..., 0] * cosine_cutoff(d, self.cutoff) * ok / d  # [B, M, M]
        return jnp.stack([jnp.sum(w * x, axis=-1) for x in diffs], axis=-1)  # [B, M, 3]
