"""The 2D relational model (CIGIN, Pathak et al., AAAI 2020, as 3DMRL's reference code builds it)
for pairs of molecular graphs, and the 3DMRL force head.

`RelationalEncoder` (named ``relational`` in both the 3DMRL pretrainer and the fine-tuning model, so
its parameters transfer by name) has two forms, chosen by ``architecture`` (config field
``model.relational.architecture`` in 3DMRL pretraining, ``model.architecture`` in pair fine-tuning):

``"reference"`` (the default) follows 3DMRL's MI/models_2d/CIGIN.py and MI/layers/MPNN.py:

  1. per molecule, `MPNNEncoder` (separate weights for side 1 and side 2), with x the input atom
     features and F = ``features``::

         h  = relu(lin0(x))
         Θ(e) = reshape(Linear(relu(Linear(e))), [F, F])       edge network: E -> E -> F·F
         repeat num_steps times (shared weights):
             m_i = relu(W_root h_i + b + Σ_{j->i} h_j Θ(e_ji))  NNConv(aggr="add", root_weight=True)
             h_i = message_layer([m_i, h_i])                   Linear 2F -> F, no activation
         out = h + x            (no GRU)

     Input widths: our atom features (`georecon_jax.chem.features`) are ``ATOM_FEATURE_DIM`` = 52
     wide and bond features ``BOND_FEATURE_DIM`` = 14 (CIGIN's defaults in the reference: 56 and
     10, with hidden width 56 = its input width). The skip ``+ x`` needs x in F dimensions: when the input width
     equals F, x itself is added, as in the reference; otherwise (e.g. 52 -> 64) a linear projection
     of x without bias (``input_skip``) is added instead, the one necessary departure.
     Molecules without bonds: the reference replaces the NNConv by relu(conv.bias + h) (no W_root)
     when the *whole batch* of that side holds no bond, and applies the NNConv (root term
     included, zero messages) to a bond-less molecule of any other batch. Here every molecule gets
     the NNConv formula, relu(W_root h + b), whatever the rest of its batch: outputs do not depend on
     batch composition. This differs from the reference only for batches in which no molecule of a
     side has a bond.
     Initialisation as the reference's: Xavier-uniform weights and zero biases for its Linear
     layers; NNConv's root weight uniform(±1/sqrt(F)) and its bias zero, as PyG 2 initialises them.
  2. node features L2-normalised per atom (x / max(|x|, 1e-12), as ``F.normalize``); the interaction
     map is the plain dot product I = H1 H2ᵀ [B, N1, N2] (no tanh), zero wherever either atom is
     padding; H1' = I H2 and H2' = Iᵀ H1; node features [H, H'] (2F).
  3. Set2Set readout (masked attention over real atoms) per side -> 4F each; the pair embedding is
     their concatenation (8F).

``"reference_ddi"`` follows 3DMRL's DDI/models_2d/CIGIN.py and DDI/layers/GIN.py (its DDI
pretraining and fine-tuning): one `GINEEncoder` shared by both drugs (F = 300 there), the same
normalisation and interaction map, one Set2Set shared by both sides, and a single linear predictor
on the 8F pair embedding (``head_hidden=()``).

``"edge_mlp_gru"`` (this project's form before the reference was followed; saved runs without the
field resume with it): h_i <- GRU(h_i, Σ_j MLP([h_j, e_ji])) for ``num_steps`` rounds (an edge MLP
message instead of NNConv's per-edge F×F matrices), no input skip, no normalisation, and the
interaction map I = tanh(H1 H2ᵀ); steps 2 and 3 are otherwise the same.

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
ARCHITECTURES = ("reference", "reference_ddi", "edge_mlp_gru")
NORMALIZE_EPS = 1e-12  # F.normalize's default

# NNConv's root weight: PyG initialises it uniform(±1/sqrt(fan_in)), not Xavier.
_root_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown relational architecture {architecture!r}; expected one of {ARCHITECTURES}")


def l2_normalize(x, axis: int = -1, eps: float = NORMALIZE_EPS):
    """x / max(|x|, eps) along ``axis`` (``F.normalize``), with a finite gradient at x = 0 (padding)."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


class MPNNEncoder(nn.Module):
    """GraphsTuple (nodes: `AtomFeatures`, edges: `BondFeatures`) -> atom features [n, F], 0 on
    padding. ``architecture``: ``"reference"`` (NNConv + message layer + input skip) or
    ``"edge_mlp_gru"`` (see the module docstring)."""

    features: int = 64
    num_steps: int = 3
    architecture: str = "reference"

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        _check_architecture(self.architecture)
        nodes, edges = graph.nodes, graph.edges
        x = nodes.features
        n, F = x.shape[0], self.features
        node_mask = nodes.mask[:, None]
        edge_mask = edges.mask[:, None]
        if self.architecture == "edge_mlp_gru":
            h = jnp.where(node_mask, nn.relu(Dense(F, name="embed")(x)), 0.0)
            msg_0 = Dense(F, name="message_0")
            msg_1 = Dense(F, name="message_1")
            gru = nn.GRUCell(features=F, name="gru")
            for _ in range(self.num_steps):
                m = msg_1(nn.relu(msg_0(jnp.concatenate([h[graph.senders], edges.features], axis=-1))))
                m = jnp.where(edge_mask, m, 0.0)  # [n_edge, F]
                agg = jax.ops.segment_sum(m, graph.receivers, num_segments=n)  # [n, F]
                h, _ = gru(h, agg)
                h = jnp.where(node_mask, h, 0.0)
            return h

        # "reference": MI/layers/MPNN.py
        h = jnp.where(node_mask, nn.relu(Dense(F, name="lin0")(x)), 0.0)
        e = edges.features
        e = nn.relu(Dense(e.shape[-1], name="edge_network_0")(e))
        theta = Dense(F * F, name="edge_network_1")(e).reshape(-1, F, F)  # Θ(e) [n_edge, F, F], once
        root = nn.Dense(F, kernel_init=_root_init, name="conv_root")  # W_root h_i + NNConv's bias
        message_layer = Dense(F, name="message_layer")
        for _ in range(self.num_steps):
            msg = jnp.einsum("ef,efg->eg", h[graph.senders], theta)  # h_j Θ(e_ji)
            msg = jnp.where(edge_mask, msg, 0.0)  # padding bonds (self-loops on atom 0) carry nothing
            agg = jax.ops.segment_sum(msg, graph.receivers, num_segments=n)
            m = nn.relu(root(h) + agg)
            h = jnp.where(node_mask, message_layer(jnp.concatenate([m, h], axis=-1)), 0.0)
        skip = x if x.shape[-1] == F else Dense(F, use_bias=False, name="input_skip")(x)
        return jnp.where(node_mask, h + skip, 0.0)


class GINEEncoder(nn.Module):
    """3DMRL's DDI encoder (DDI/layers/GIN.py GINE, GINEConv): GraphsTuple -> atom features
    [n, F], 0 on padding::

        h0 = Linear(x)                                           node_encoder, no activation
        layer l = 1..L:  h_l = relu(MLP_l((1 + ε_l) h_{l-1} + Σ_{j->i} relu(h_{l-1,j} + Lin_l(e_ji))))
                         MLP_l: Linear F -> 2F, relu, Linear 2F -> F; ε_l learnt, from 0
        out = Linear([h0, h1, ..., hL])                          out_lin (L+1)F -> F

    (the reference's batch norms are commented out there, and absent here)."""

    features: int = 300
    num_steps: int = 3

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple):
        nodes, edges = graph.nodes, graph.edges
        n, F = nodes.features.shape[0], self.features
        node_mask = nodes.mask[:, None]
        h = jnp.where(node_mask, Dense(F, name="node_encoder")(nodes.features), 0.0)
        hs = [h]
        for i in range(self.num_steps):
            e = Dense(F, name=f"edge_encoder_{i}")(edges.features)
            m = jnp.where(edges.mask[:, None], nn.relu(h[graph.senders] + e), 0.0)
            agg = jax.ops.segment_sum(m, graph.receivers, num_segments=n)
            eps = self.param(f"eps_{i}", nn.initializers.zeros, (1,))
            z = (1.0 + eps) * h + agg
            z = Dense(F, name=f"mlp_{i}_1")(nn.relu(Dense(2 * F, name=f"mlp_{i}_0")(z)))
            h = jnp.where(node_mask, nn.relu(z), 0.0)
            hs.append(h)
        return jnp.where(node_mask, Dense(F, name="out_lin")(jnp.concatenate(hs, axis=-1)), 0.0)


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
    interaction [B, N1, N2]). ``architecture``: ``"reference"`` or ``"edge_mlp_gru"`` (module
    docstring)."""

    features: int = 64
    num_steps: int = 3
    set2set_steps: int = 2
    architecture: str = "reference"

    @nn.compact
    def __call__(self, batch):
        _check_architecture(self.architecture)
        g1, g2 = batch.graph1, batch.graph2
        B, F = batch.pair_mask.shape[0], self.features
        if self.architecture == "reference_ddi":  # one encoder for both drugs (DDI/models_2d/CIGIN.py)
            encoder = GINEEncoder(F, self.num_steps, name="encoder")
            h1, h2 = encoder(g1).reshape(B, -1, F), encoder(g2).reshape(B, -1, F)
        else:
            h1 = MPNNEncoder(F, self.num_steps, self.architecture, name="encoder1")(g1).reshape(B, -1, F)
            h2 = MPNNEncoder(F, self.num_steps, self.architecture, name="encoder2")(g2).reshape(B, -1, F)
        m1, m2 = g1.nodes.mask.reshape(B, -1), g2.nodes.mask.reshape(B, -1)
        if self.architecture in ("reference", "reference_ddi"):
            h1, h2 = l2_normalize(h1), l2_normalize(h2)  # per atom; padding stays 0
            inter = jnp.einsum("bif,bjf->bij", h1, h2)  # plain dot product
        else:
            inter = jnp.tanh(jnp.einsum("bif,bjf->bij", h1, h2))
        inter = jnp.where(m1[:, :, None] & m2[:, None, :], inter, 0.0)  # mask padding
        p1 = jnp.einsum("bij,bjf->bif", inter, h2)
        p2 = jnp.einsum("bij,bif->bjf", inter, h1)
        n1 = jnp.concatenate([h1, p1], axis=-1)
        n2 = jnp.concatenate([h2, p2], axis=-1)
        if self.architecture == "reference_ddi":  # one Set2Set for both sides
            readout = Set2Set(self.set2set_steps, name="set2set")
            r1, r2 = readout(n1, m1), readout(n2, m2)
        else:
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
    architecture: str = "reference"

    @nn.compact
    def __call__(self, batch, deterministic: bool = True):
        enc = RelationalEncoder(
            self.features, self.num_steps, self.set2set_steps, self.architecture, name="relational"
        )(batch)
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
