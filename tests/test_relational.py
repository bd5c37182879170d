"""The 2D relational model (CIGIN) in its reference form (3DMRL's MI/models_2d/CIGIN.py and
MI/layers/MPNN.py) against an independent numpy implementation, its padding and permutation
invariances, and the earlier edge-MLP + GRU form, still selectable (saved runs resume with it)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from georecon_jax.chem.conformers import molecule_record
from georecon_jax.chem.features import ATOM_FEATURE_DIM, BOND_FEATURE_DIM
from georecon_jax.data.pairs import PairDataset
from georecon_jax.graphs.pairs import PairBudget, pack_pairs
from georecon_jax.models.relational import MPNNEncoder, RelationalEncoder, l2_normalize

# phenol / ethanol, paracetamol / chloroform, ethanol / water (water: one atom, no bond)
SMILES = [("c1ccccc1O", "CCO"), ("CC(=O)Nc1ccc(O)cc1", "ClC(Cl)Cl"), ("CCO", "O")]
STEPS, S2S = 2, 2


@pytest.fixture(scope="module")
def records():
    out = {}
    for pair in SMILES:
        for s in pair:
            rec, reason = molecule_record(s)
            assert rec is not None, reason
            out[s] = rec
    return out


def dataset(pairs, records):
    mols = [records[a] for a, _ in pairs] + [records[b] for _, b in pairs]
    n = len(pairs)
    return PairDataset(
        "t",
        mols,
        np.arange(n),
        np.arange(n, 2 * n),
        np.zeros((n, 1), np.float32),
        ("y",),
        np.asarray(["t"] * n, dtype=object),
    )


def batch_of(ds, batch_size, budget=None):
    budget = budget or PairBudget.from_dataset(ds)
    return jax.tree_util.tree_map(jnp.asarray, pack_pairs(ds, np.arange(len(ds)), batch_size, budget))


def init(model, batch, seed=0):
    """Random parameters of the model's shapes, biases included (`model.init` starts them at 0);
    drawn in numpy from the traced shapes, which saves compiling the initialisation."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    rng = np.random.default_rng(seed)
    draw = lambda s: (
        rng.standard_normal(s.shape).astype(np.float32) / np.sqrt(s.shape[0] if len(s.shape) == 2 else 10)
    )
    return jax.tree_util.tree_map(lambda s: jnp.asarray(draw(s)), shapes)


@pytest.fixture(scope="module")
def setup(records):
    ds = dataset(SMILES, records)
    batch = batch_of(ds, len(SMILES) + 1)  # one padding pair
    model = RelationalEncoder(16, STEPS, S2S)
    params = init(model, batch)
    return ds, batch, model, params, jax.jit(model.apply)(params, batch)


# ---------------------------------------------------------------------------------------------
# numpy, one unpadded molecule / pair at a time, from the formulas of the reference


def np_mpnn(p, rec):
    """relu(lin0(x)); NNConv(add, root) + relu; message_layer([m, h]); + x (or its projection)."""
    lin = lambda q, v: (
        v @ np.asarray(q["kernel"], np.float64) + (np.asarray(q["bias"], np.float64) if "bias" in q else 0.0)
    )
    x = rec["atom_features"].astype(np.float64)
    F = p["lin0"]["kernel"].shape[1]
    h = np.maximum(lin(p["lin0"], x), 0.0)
    e = np.maximum(lin(p["edge_network_0"], rec["bond_features"].astype(np.float64)), 0.0)
    theta = lin(p["edge_network_1"], e).reshape(-1, F, F)
    for _ in range(STEPS):
        agg = np.zeros_like(h)
        for k, (j, i) in enumerate(zip(rec["senders"], rec["receivers"])):  # bond j -> i
            agg[i] += h[j] @ theta[k]
        m = np.maximum(lin(p["conv_root"], h) + agg, 0.0)
        h = lin(p["message_layer"], np.concatenate([m, h], axis=1))
    skip = x if x.shape[1] == F else x @ np.asarray(p["input_skip"]["kernel"], np.float64)
    return h + skip


def np_lstm(p, x, c, h):
    g = lambda name, v: (
        v @ np.asarray(p[name]["kernel"], np.float64)
        + (np.asarray(p[name]["bias"], np.float64) if "bias" in p[name] else 0.0)
    )
    sig = lambda v: 1 / (1 + np.exp(-v))
    i = sig(g("ii", x) + g("hi", h))
    f = sig(g("if", x) + g("hf", h))
    u = np.tanh(g("ig", x) + g("hg", h))
    o = sig(g("io", x) + g("ho", h))
    c = f * c + i * u
    return c, o * np.tanh(c)


def np_set2set(p, x):
    F = x.shape[1]
    c, h, q_star = np.zeros(F), np.zeros(F), np.zeros(2 * F)
    for _ in range(S2S):
        c, q = np_lstm(p["lstm"], q_star, c, h)
        h = q
        e = x @ q
        a = np.exp(e - e.max())
        a /= a.sum()
        q_star = np.concatenate([q, a @ x])
    return q_star


def np_pair(params, rec1, rec2):
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    h1, h2 = np_mpnn(p["encoder1"], rec1), np_mpnn(p["encoder2"], rec2)
    h1 = h1 / np.maximum(np.linalg.norm(h1, axis=1, keepdims=True), 1e-12)
    h2 = h2 / np.maximum(np.linalg.norm(h2, axis=1, keepdims=True), 1e-12)
    inter = h1 @ h2.T
    n1 = np.concatenate([h1, inter @ h2], axis=1)
    n2 = np.concatenate([h2, inter.T @ h1], axis=1)
    emb = np.concatenate([np_set2set(p["set2set1"], n1), np_set2set(p["set2set2"], n2)])
    return n1, n2, inter, emb


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------------------------


def test_reference_form_matches_numpy(records, setup):
    ds, batch, model, params, out = setup
    assert "input_skip" in params["params"]["encoder1"]  # 52 atom features -> 16: projected skip
    for b, (s1, s2) in enumerate(SMILES):
        r1, r2 = records[s1], records[s2]
        k1, k2 = len(r1["atomic_numbers"]), len(r2["atomic_numbers"])
        n1, n2, inter, emb = np_pair(params, r1, r2)
        close(out["nodes1"][b, :k1], n1)
        close(out["nodes2"][b, :k2], n2)
        close(out["interaction"][b, :k1, :k2], inter)
        close(out["pair_embedding"][b], emb)
        # padding atoms: zero features and zero interaction rows / columns
        assert not np.asarray(out["nodes1"][b, k1:]).any() and not np.asarray(out["nodes2"][b, k2:]).any()
        assert not np.asarray(out["interaction"][b, k1:]).any()
        assert not np.asarray(out["interaction"][b, :, k2:]).any()
    # atoms are unit vectors, the interaction map is a cosine (no tanh)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["nodes1"][0, :7, :16]), axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(out["pair_embedding"])))


def test_reference_encoder_adds_the_input_itself_when_the_widths_agree(records, setup):
    ds, batch, _, _, _ = setup
    assert (ATOM_FEATURE_DIM, BOND_FEATURE_DIM) == (52, 14)  # the widths the docstring names
    enc = MPNNEncoder(ATOM_FEATURE_DIM, STEPS)
    params = init(enc, batch.graph1, seed=3)
    assert "input_skip" not in params["params"]
    h = np.asarray(jax.jit(enc.apply)(params, batch.graph1)).reshape(len(SMILES) + 1, -1, ATOM_FEATURE_DIM)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    for b, (s1, _) in enumerate(SMILES):
        close(h[b, : len(records[s1]["atomic_numbers"])], np_mpnn(p, records[s1]))


def test_padding_changes_nothing_for_real_atoms(records, setup):
    ds, batch, model, params, out = setup
    small = PairBudget.from_dataset(ds)
    big = PairBudget(small.n_node1 + 8, small.n_edge1 + 12, small.n_node2 + 4, small.n_edge2 + 8)
    out2 = jax.jit(model.apply)(params, batch_of(ds, len(SMILES) + 3, big))
    n = len(SMILES)
    close(out2["pair_embedding"][:n], np.asarray(out["pair_embedding"][:n]))
    close(out2["nodes1"][:n, : small.n_node1], np.asarray(out["nodes1"][:n]))
    close(out2["nodes2"][:n, : small.n_node2], np.asarray(out["nodes2"][:n]))
    assert not np.asarray(out2["nodes1"][:n, small.n_node1 :]).any()
    # the normalisation of a padding atom (a zero vector) is 0 with a finite gradient
    x = jnp.zeros((2, 3)).at[0].set(jnp.asarray([3.0, 0.0, 4.0]))
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.0, 0.8], [0.0, 0.0, 0.0]], rtol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(lambda v: jnp.sum(l2_normalize(v) ** 2))(x))).all()


def permuted(rec, perm):
    """``rec`` with atom ``perm[k]`` as its atom k (and its bonds listed in reverse order)."""
    inv = np.argsort(perm)
    out = dict(rec)
    for key in ("atom_features", "atomic_numbers", "in_ring", "positions"):
        out[key] = rec[key][perm]
    out["senders"] = inv[rec["senders"]][::-1].astype(np.int32)
    out["receivers"] = inv[rec["receivers"]][::-1].astype(np.int32)
    out["bond_features"] = rec["bond_features"][::-1]
    return out


def test_atom_permutation_permutes_nodes_and_keeps_the_pair_embedding(records, setup):
    ds, batch, model, params, out = setup
    s1, s2 = SMILES[1]  # paracetamol / chloroform
    k1, k2 = len(records[s1]["atomic_numbers"]), len(records[s2]["atomic_numbers"])
    p1, p2 = np.random.default_rng(0).permutation(k1), np.random.default_rng(1).permutation(k2)
    recs = dict(records)
    recs[s1], recs[s2] = permuted(records[s1], p1), permuted(records[s2], p2)
    out2 = jax.jit(model.apply)(
        params, batch_of(dataset(SMILES, recs), len(SMILES) + 1, PairBudget.from_dataset(ds))
    )
    close(out2["nodes1"][1, :k1], np.asarray(out["nodes1"][1, :k1])[p1])
    close(out2["nodes2"][1, :k2], np.asarray(out["nodes2"][1, :k2])[p2])
    close(out2["interaction"][1, :k1, :k2], np.asarray(out["interaction"][1, :k1, :k2])[p1][:, p2])
    close(out2["pair_embedding"], np.asarray(out["pair_embedding"]))


def test_edge_mlp_gru_form_is_still_selectable_and_differs(setup, tmp_path):
    from georecon_jax.training.loop import ConfigMismatchError, record_config
    from georecon_jax.training.transfer import (
        ConfigCheck,
        PretrainedCheckpoint,
        PretrainedMismatchError,
        config_mismatches,
        transfer_subtrees,
    )

    ds, batch, model, params, out = setup
    old = RelationalEncoder(16, STEPS, S2S, "edge_mlp_gru")
    old_params = init(old, batch)
    old_out = jax.jit(old.apply)(old_params, batch)
    # the earlier form's parameter names, as its checkpoints hold them
    assert set(old_params["params"]["encoder1"]) == {"embed", "message_0", "message_1", "gru"}
    assert old_out["pair_embedding"].shape == out["pair_embedding"].shape
    assert np.abs(np.asarray(old_out["interaction"])).max() < 1  # tanh
    assert not np.allclose(np.asarray(old_out["pair_embedding"]), np.asarray(out["pair_embedding"]))
    with pytest.raises(ValueError, match="architecture"):
        RelationalEncoder(16, architecture="gru").init(jax.random.PRNGKey(0), batch)

    # fine-tuning a pretraining of the other form is refused: by the config check ...
    from experiments.configs import common

    ft = common.relational(head_hidden=(8,), dropout=0.0)
    assert ft.architecture == "reference"
    saved = {"model": {"relational": dict(common.relational(architecture="edge_mlp_gru"))}}
    pre = PretrainedCheckpoint("/x", 1, {"params": {"relational": old_params["params"]}}, False, saved)
    diffs, _ = config_mismatches(pre, [ConfigCheck("model.relational", ft)])
    assert diffs == ["model.relational.architecture: pretrained 'edge_mlp_gru', model 'reference'"]
    # ... also for a checkpoint saved before the field existed (it compares as edge_mlp_gru) ...
    del saved["model"]["relational"]["architecture"]
    assert config_mismatches(pre, [ConfigCheck("model.relational", ft)])[0] == diffs
    # ... and by the parameter names
    with pytest.raises(PretrainedMismatchError, match="not in the checkpoint"):
        transfer_subtrees({"params": {"relational": params["params"]}}, pre, [("params/relational",) * 2])

    # a run saved without the field resumes as the earlier form only
    for section, make in (
        ("model", lambda a: common.relational(architecture=a)),  # pair fine-tuning
        (
            "model.relational",
            lambda a: ml_collections.ConfigDict({"relational": common.relational(architecture=a)}),
        ),
    ):
        work = tmp_path / section
        work.mkdir()
        stored = json.loads(ml_collections.ConfigDict({"model": make("x")}).to_json())
        target = stored["model"]["relational"] if section != "model" else stored["model"]
        del target["architecture"]
        (work / "config.json").write_text(json.dumps(stored))
        record_config(ml_collections.ConfigDict({"model": make("edge_mlp_gru")}), str(work), write=False)
        with pytest.raises(ConfigMismatchError, match="architecture"):
            record_config(ml_collections.ConfigDict({"model": make("reference")}), str(work), write=False)


def np_gine(p, rec):
    """DDI/layers/GIN.py: h0 = node_encoder(x); h_l = relu(MLP((1+ε)h + Σ relu(h_j + Lin(e)))); out_lin."""
    lin = lambda q, v: v @ np.asarray(q["kernel"], np.float64) + np.asarray(q["bias"], np.float64)
    h = lin(p["node_encoder"], rec["atom_features"].astype(np.float64))
    hs = [h]
    for i in range(STEPS):
        e = lin(p[f"edge_encoder_{i}"], rec["bond_features"].astype(np.float64))
        agg = np.zeros_like(h)
        for k, (j, t) in enumerate(zip(rec["senders"], rec["receivers"])):
            agg[t] += np.maximum(h[j] + e[k], 0.0)
        z = (1 + float(np.asarray(p[f"eps_{i}"])[0])) * h + agg
        h = np.maximum(lin(p[f"mlp_{i}_1"], np.maximum(lin(p[f"mlp_{i}_0"], z), 0.0)), 0.0)
        hs.append(h)
    return lin(p["out_lin"], np.concatenate(hs, axis=1))


def test_reference_ddi_form_matches_numpy_and_is_symmetric_in_the_two_drugs(records):
    """DDI/models_2d/CIGIN.py: one GINE encoder and one Set2Set for both drugs, so swapping the
    drugs swaps the two halves of the pair embedding; the encoder equals the numpy formulas."""
    pairs = [("c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"), ("CCO", "O")]
    ds, swapped = dataset(pairs, records), dataset([(b, a) for a, b in pairs], records)
    a, b = PairBudget.from_dataset(ds), PairBudget.from_dataset(swapped)
    n, e = max(a.n_node1, a.n_node2), max(a.n_edge1, a.n_edge2, b.n_edge1, b.n_edge2)
    budget = PairBudget(n, e, n, e)  # the same padding on both sides
    batch, batch_sw = batch_of(ds, 2, budget), batch_of(swapped, 2, budget)
    model = RelationalEncoder(16, STEPS, S2S, architecture="reference_ddi")
    params = init(model, batch)
    assert {"encoder", "set2set"} <= set(params["params"]) and "encoder1" not in params["params"]
    out, out_sw = (jax.jit(model.apply)(params, b) for b in (batch, batch_sw))
    emb, emb_sw = np.asarray(out["pair_embedding"]), np.asarray(out_sw["pair_embedding"])
    half = emb.shape[1] // 2
    np.testing.assert_allclose(emb[:, :half], emb_sw[:, half:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb[:, half:], emb_sw[:, :half], rtol=1e-5, atol=1e-5)
    from georecon_jax.models.relational import GINEEncoder

    enc_params = {"params": params["params"]["encoder"]}
    rec = records["CC(=O)Nc1ccc(O)cc1"]
    g = batch.graph2  # paracetamol is the first pair's second drug
    h = np.asarray(GINEEncoder(16, STEPS).apply(enc_params, g))[: len(rec["atomic_numbers"])]
    np.testing.assert_allclose(h, np_gine(params["params"]["encoder"], rec), rtol=1e-4, atol=1e-5)
