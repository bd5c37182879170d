"""Fine-tuning: forces as -dE/dR, head symmetries, pretrained checkpoints, and end-to-end runs."""
import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted, jitter, random_rotation
from experiments.configs import coord, finetune_md17, finetune_qm9, georecon
from georecon_jax.data import md17
from georecon_jax.graphs.batching import pack_graphs, estimate_budgets
from georecon_jax.graphs.masks import graph_masks
from georecon_jax.models.pretrain import DenoisingPretrainer
from georecon_jax.models.property import PropertyModel
from georecon_jax.objectives.supervised import TargetStats, make_predict_fn
from georecon_jax.training.checkpoint import Checkpointer
from georecon_jax.training.loop import record_config
from georecon_jax.training.state import create_optimizer, create_train_state
from georecon_jax.workflows import evaluate, finetune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RMD17 = SHARED / "rmd17"


def need(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared reference data ship beside the repo, not in it)")
    return str(path)


def need_qm9() -> str:
    cache = os.environ.get("GEORECON_CACHE")
    if not (cache and os.path.exists(os.path.join(cache, "qm9_first400.npz"))) and \
            importlib.util.find_spec("qm9pack") is None:
        pytest.skip("QM9 needs the qm9pack package or a $GEORECON_CACHE holding qm9_first400.npz")
    return cache


def ethanol_graph(n_frames=2):
    """A padded GraphsTuple (no device axis) of the first rMD17 ethanol frames, and their forces."""
    frames, _ = md17.read_force_file(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    mols, forces = frames.subset(np.arange(n_frames)).to_molecules(float(frames.energies.mean()))
    budget = estimate_budgets(mols.n_atoms, mols.n_atoms ** 2, n_frames, 1)[0]
    return pack_graphs(mols, np.arange(n_frames), budget, forces=forces)


def tiny_model(kind="scalar"):
    """One attention layer of 8 features: enough for the symmetry checks, quick to compile."""
    cfg = finetune_qm9.get_config("tiny").model
    cfg.head.kind = kind
    cfg.encoder.update(num_layers=1, features=8, num_rbf=8)
    cfg.denoise_head = False
    return PropertyModel(cfg)


def tiny_finetune_model_config(**encoder):
    cfg = finetune_qm9.get_config("tiny")
    cfg.model.head.kind = "scalar"
    cfg.model.encoder.update(**encoder)
    return cfg


def init(model, graph, seed=0):
    """Fresh parameters, jittered (zero-initialised biases would hide symmetry errors)."""
    m = graph_masks(graph)
    n = graph.nodes
    return jitter(jitted(model.init, (8,))(jax.random.PRNGKey(seed), n.atomic_numbers, n.positions, graph.senders,
                             graph.receivers, m.edge_mask, m.node_mask, m.node_graph, m.n_graph), seed=seed)


def with_positions(graph, positions):
    return graph._replace(nodes=graph.nodes._replace(positions=positions))


# ------------------------------------------------------------------------ forces and heads

def test_forces_are_the_exact_negative_gradient_float64():
    graph = ethanol_graph(1)
    model = tiny_model()
    params = init(model, graph)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        g64 = jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x),
            graph)
        predict = jax.jit(make_predict_fn(model, TargetStats(mean=0.0, std=3.0), with_forces=True))
        _, forces, _, _ = predict(p64, g64, g64.nodes.positions)
        energy = lambda pos: predict(p64, g64, pos)[0][0]
        pos0 = np.asarray(g64.nodes.positions)
        h = 1e-5
        for atom, axis in [(0, 0), (5, 2), (8, 1)]:
            dp = np.zeros_like(pos0)
            dp[atom, axis] = h
            fd = -(energy(jnp.asarray(pos0 + dp)) - energy(jnp.asarray(pos0 - dp))) / (2 * h)
            assert abs(float(fd) - float(forces[atom, axis])) < 1e-6 * max(1.0, abs(float(fd)))
        assert float(jnp.max(jnp.abs(forces))) > 1e-3   # not trivially zero


def test_forces_rotate_with_the_molecule_and_sum_to_zero():
    graph = ethanol_graph(2)
    model = tiny_model()
    params = init(model, graph)
    predict = jax.jit(make_predict_fn(model, TargetStats(mean=0.0, std=3.0), with_forces=True))
    y, forces, _, _ = predict(params, graph, graph.nodes.positions)
    rot = random_rotation(1)
    shift = np.array([3.0, -1.0, 2.0], np.float32)
    pos_r = (graph.nodes.positions @ rot.T + shift).astype(np.float32)
    y_r, forces_r, _, _ = predict(params, with_positions(graph, pos_r), pos_r)
    scale = float(jnp.max(jnp.abs(forces)))
    np.testing.assert_allclose(np.asarray(forces_r), np.asarray(forces) @ rot.T, atol=2e-4 * scale)
    np.testing.assert_allclose(np.asarray(y_r)[:2], np.asarray(y)[:2], rtol=1e-4, atol=1e-4)
    for a, b in ((0, 9), (9, 18)):  # per molecule: translation invariance => Σ F = 0
        np.testing.assert_allclose(np.asarray(forces[a:b]).sum(0), 0.0, atol=1e-4 * scale)
    assert np.all(np.asarray(forces[18:]) == 0.0)     # padding atoms carry no force


@pytest.mark.parametrize("kind", ["dipole", "spatial_extent"])
def test_dipole_and_spatial_extent_heads_are_invariant(kind):
    graph = ethanol_graph(2)
    model = tiny_model(kind)
    params = init(model, graph, seed=3)
    predict = jax.jit(make_predict_fn(model, TargetStats(), with_forces=False))
    y = np.asarray(predict(params, graph, graph.nodes.positions)[0])[:2]
    rot = random_rotation(2)
    pos_r = (graph.nodes.positions @ rot.T + np.array([5.0, 1.0, -4.0])).astype(np.float32)
    y_r = np.asarray(predict(params, with_positions(graph, pos_r), pos_r)[0])[:2]
    np.testing.assert_allclose(y_r, y, rtol=1e-4)
    assert np.all(np.abs(y) > 1e-4) and abs(y[0] - y[1]) > 1e-6  # depends on the geometry


def test_dipole_head_vector_is_equivariant():
    """Σ q_i (r_i - c) + μ_i rotates with the molecule: check it through the gradient of |μ|,
    which is equivariant exactly when the vector is (and the norm invariant)."""
    graph = ethanol_graph(1)
    model = tiny_model("dipole")
    params = init(model, graph, seed=5)
    predict = make_predict_fn(model, TargetStats(), with_forces=False)
    grad = jax.jit(jax.grad(lambda pos, g: predict(params, g, pos)[0][0]))
    g0 = np.asarray(grad(graph.nodes.positions, graph))
    rot = random_rotation(4)
    pos_r = (graph.nodes.positions @ rot.T).astype(np.float32)
    g_r = np.asarray(grad(pos_r, with_positions(graph, pos_r)))
    np.testing.assert_allclose(g_r, g0 @ rot.T, atol=2e-4 * np.abs(g0).max())


# ------------------------------------------------------------------------ pretrained checkpoints

def _pretraining_checkpoint(workdir, config_fn):
    """Writes a pretraining workdir exactly as workflows.pretrain does (config.json + orbax state)."""
    cfg = config_fn("tiny")
    graph = ethanol_graph(2)
    m = graph_masks(graph)
    n = graph.nodes
    model = DenoisingPretrainer(cfg.model)
    params = jitted(model.init, (8,))(jax.random.PRNGKey(7), n.atomic_numbers, n.positions, graph.senders,
                        graph.receivers, m.edge_mask, m.node_mask, m.node_graph, m.n_graph)
    state = create_train_state(model.apply, params, create_optimizer(cfg.optim, 10), False)
    os.makedirs(workdir, exist_ok=True)
    record_config(cfg, workdir)
    ckpt = Checkpointer(workdir)
    ckpt.save(4, state)
    ckpt.close()
    return params


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    return {name: (str(root / name), _pretraining_checkpoint(str(root / name), fn))
            for name, fn in (("georecon", georecon.get_config), ("coord", coord.get_config))}


@pytest.mark.parametrize("objective", ["georecon", "coord"])
def test_pretrained_encoder_loads(pretrained, objective):
    path, saved = pretrained[objective]
    cfg = tiny_finetune_model_config()
    model = PropertyModel(cfg.model)                      # denoise_head on: node_head carries over
    params = init(model, ethanol_graph(2), seed=11)
    new, info = finetune.load_pretrained(params, path, cfg.model.encoder, verbose=False)
    assert info["step"] == 4 and info["loaded"] == ["encoder", "node_head"]
    for name in ("encoder", "node_head"):
        jax.tree_util.tree_map(np.testing.assert_array_equal, new["params"][name], saved["params"][name])
    jax.tree_util.tree_map(np.testing.assert_array_equal, new["params"]["head"], params["params"]["head"])


def test_pretrained_encoder_of_another_width_fails_clearly(pretrained):
    path, _ = pretrained["coord"]
    cfg = tiny_finetune_model_config(features=32)
    params = init(PropertyModel(cfg.model), ethanol_graph(2))
    with pytest.raises(finetune.PretrainedMismatchError) as e:
        finetune.load_pretrained(params, path, cfg.model.encoder, verbose=False)
    text = str(e.value)
    assert "checkpoint: features=16, num_layers=2" in text and "this model: features=32" in text
    assert "embedding/embedding: checkpoint (101, 16), model (101, 32)" in text
    # Same shapes, different setting recorded in the pretraining config.json: also refused.
    cfg = tiny_finetune_model_config(num_heads=4)
    params = init(PropertyModel(cfg.model), ethanol_graph(2))
    with pytest.raises(finetune.PretrainedMismatchError, match="num_heads: pretrained 2, model 4"):
        finetune.load_pretrained(params, path, cfg.model.encoder, verbose=False)


# ------------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_qm9_finetune_from_coord_then_evaluate_twice_identically(pretrained, tmp_path):
    cache = need_qm9()
    cfg = finetune_qm9.get_config("tiny")
    cfg.target = "U0"                          # least-squares atom references path
    cfg.num_steps = 4
    cfg.eval_every = 2
    cfg.checkpoint_every = 2
    cfg.data.cache_dir = cache
    cfg.pretrained = pretrained["coord"][0]
    workdir = str(tmp_path / "ft")
    summary = finetune.run(cfg, workdir)
    assert summary["pretrained"]["loaded"] == ["encoder", "node_head"]
    assert summary["test"]["U0_mae"]["unit"] == "meV" and np.isfinite(summary["test"]["U0_mae"]["value"])
    for f in ("results.json", "results.md", "parity_U0.png", "learning_curves.png", "summary.json",
              "best.json", "target_stats.json"):
        assert os.path.getsize(os.path.join(workdir, f)) > 0, f
    stats = json.load(open(os.path.join(workdir, "target_stats.json")))
    assert stats["reference"] == "least_squares" and stats["atomref"][6] < -1000  # carbon, eV
    first = json.load(open(os.path.join(workdir, "results.json")))
    again = evaluate.evaluate(workdir, make_plots=False)
    assert again["metrics"] == first["metrics"] and again["step"] == first["step"]
    assert "| qm9 | U0 | best" in open(os.path.join(workdir, "results.md")).read()


@pytest.mark.slow
def test_rmd17_finetune_and_evaluate(tmp_path):
    cfg = finetune_md17.get_config("tiny")
    cfg.data.data_dir = os.path.dirname(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    cfg.num_steps = 4
    cfg.eval_every = 2
    cfg.checkpoint_every = 2
    workdir = str(tmp_path / "md17")
    summary = finetune.run(cfg, workdir)
    test = summary["test"]
    assert test["energy_mae"]["unit"] == "kcal/mol" and test["force_mae"]["unit"] == "kcal/mol/Å"
    assert 0 < test["force_mae"]["value"] < 100 and np.isfinite(test["energy_mae"]["value"])
    assert test["energy_mae_meV"]["value"] == pytest.approx(test["energy_mae"]["value"] / 23.060548 * 1000)
    for f in ("parity_energy.png", "parity_forces.png", "learning_curves.png"):
        assert os.path.getsize(os.path.join(workdir, f)) > 0, f
    stats = json.load(open(os.path.join(workdir, "target_stats.json")))
    assert stats["test_file"].endswith("rmd17_ethanol_test_01.npz")
    again = evaluate.evaluate(workdir, make_plots=False, verbose=False)
    assert again["metrics"] == summary["test"]
