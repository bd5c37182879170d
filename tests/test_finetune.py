"""Fine-tuning: forces as -dE/dR, head symmetries, pretrained checkpoints, and end-to-end runs."""

import importlib.util
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import coord, finetune_md17, finetune_qm9, georecon
from georecon_jax.data import md17
from georecon_jax.graphs.batching import pack_graphs, estimate_budgets
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.registry import get_objective
from georecon_jax.objectives.supervised import TargetStats, init_params, make_predict_fn
from georecon_jax.tasks import evaluation as evaluate
from georecon_jax.tasks import finetune
from georecon_jax.training.checkpoint import Checkpointer
from georecon_jax.training.loop import record_config
from georecon_jax.training.optimizer import create_optimizer
from georecon_jax.training.state import create_train_state
from georecon_jax.training.transfer import PretrainedMismatchError, load_pretrained_encoder
from symmetry import assert_symmetric, jitter


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RMD17 = SHARED / "rmd17"


def need(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared reference data ship beside the repo, not in it)")
    return str(path)


def need_qm9() -> str:
    cache = os.environ.get("GEORECON_CACHE")
    if (
        not (cache and os.path.exists(os.path.join(cache, "qm9_first400.npz")))
        and importlib.util.find_spec("qm9pack") is None
    ):
        pytest.skip("QM9 needs the qm9pack package or a $GEORECON_CACHE holding qm9_first400.npz")
    return cache


def ethanol_graph(n_frames=2):
    """A padded GraphsTuple (no device axis) of the first rMD17 ethanol frames, and their forces."""
    frames, _ = md17.read_force_file(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    mols, forces = frames.subset(np.arange(n_frames)).to_molecules(float(frames.energies.mean()))
    budget = estimate_budgets(mols.n_atoms, mols.n_atoms**2, n_frames, 1)[0]
    return pack_graphs(mols, np.arange(n_frames), budget, forces=forces)


def tiny_model(kind="equivariant_scalar"):
    """One attention layer of 8 features: enough for the symmetry checks, quick to compile. No
    vector norm: these tests are about the heads (tests/test_vec_norm.py tests the norm, whose
    float32 conditioning at random initialisation would blur them)."""
    cfg = finetune_qm9.get_config("tiny").model
    cfg.head.kind = kind
    cfg.encoder.update(num_layers=1, features=8, num_rbf=8, vec_norm="none")
    cfg.denoise_head = False
    return create_property_model(cfg)


def tiny_finetune_model_config(**encoder):
    cfg = finetune_qm9.get_config("tiny")
    cfg.model.head.kind = "scalar"
    cfg.model.encoder.update(**encoder)
    return cfg


def init(model, graph, seed=0):
    """Fresh parameters, jittered (zero-initialised biases would hide symmetry errors)."""
    return jitter(
        init_params(model, graph, jax.random.PRNGKey(seed), with_denoise=model.node_noise is not None),
        seed=seed,
    )


def shapes_of(model, graph):
    """The parameters' shapes and dtypes (``jax.eval_shape``: nothing compiles), for the checks that
    refuse a checkpoint before reading any value."""
    return jax.eval_shape(
        lambda g: init_params(model, g, jax.random.PRNGKey(0), with_denoise=model.node_noise is not None),
        graph,
    )


def with_positions(graph, positions):
    """The graph (as jax arrays: jraph indexes its arrays with traced values) at other positions."""
    graph = jax.tree_util.tree_map(jnp.asarray, graph)
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
            graph,
        )
        predict = jax.jit(make_predict_fn(model, TargetStats(mean=0.0, std=3.0), with_forces=True))
        _, forces, _ = predict(p64, g64, g64.nodes.positions)
        energy = lambda pos: predict(p64, g64, pos)[0][0]
        pos0 = np.asarray(g64.nodes.positions)
        h = 1e-5
        for atom, axis in [(0, 0), (5, 2), (8, 1)]:
            dp = np.zeros_like(pos0)
            dp[atom, axis] = h
            fd = -(energy(jnp.asarray(pos0 + dp)) - energy(jnp.asarray(pos0 - dp))) / (2 * h)
            assert abs(float(fd) - float(forces[atom, axis])) < 1e-6 * max(1.0, abs(float(fd)))
        assert float(jnp.max(jnp.abs(forces))) > 1e-3  # not trivially zero


def test_forces_rotate_with_the_molecule_and_sum_to_zero():
    graph = ethanol_graph(2)
    model = tiny_model()
    params = init(model, graph)
    predict = make_predict_fn(model, TargetStats(mean=0.0, std=3.0), with_forces=True)

    def energies_and_forces(pos):
        y, forces, _ = predict(params, with_positions(graph, pos), pos)
        return y[:2], forces

    # E invariant (0e), F = -dE/dR equivariant (1o), both unchanged by a translation (e3nn-jax).
    assert_symmetric(energies_and_forces, [(graph.nodes.positions, "1o")], ["0e", "1o"], translate=[0])
    _, forces = jax.jit(energies_and_forces)(graph.nodes.positions)
    scale = float(jnp.max(jnp.abs(forces)))
    for a, b in ((0, 9), (9, 18)):  # per molecule: translation invariance => Σ F = 0
        np.testing.assert_allclose(np.asarray(forces[a:b]).sum(0), 0.0, atol=1e-4 * scale)
    assert np.all(np.asarray(forces[18:]) == 0.0)  # padding atoms carry no force


@pytest.mark.parametrize("kind", ["dipole", "spatial_extent"])
def test_dipole_and_spatial_extent_heads_are_invariant(kind):
    graph = ethanol_graph(2)
    model = tiny_model(kind)
    params = init(model, graph, seed=3)
    predict = make_predict_fn(model, TargetStats(), with_forces=False)
    value = lambda pos: predict(params, with_positions(graph, pos), pos)[0][:2]
    assert_symmetric(value, [(graph.nodes.positions, "1o")], ["0e"], translate=[0])
    y = np.asarray(jax.jit(value)(graph.nodes.positions))
    assert np.all(np.abs(y) > 1e-4) and abs(y[0] - y[1]) > 1e-6  # depends on the geometry


def test_dipole_head_vector_is_equivariant():
    """Σ q_i (r_i - c) + μ_i rotates with the molecule: check it through the gradient of |μ|,
    which is equivariant exactly when the vector is (and the norm invariant)."""
    graph = ethanol_graph(1)
    model = tiny_model("dipole")
    params = init(model, graph, seed=5)
    predict = make_predict_fn(model, TargetStats(), with_forces=False)
    grad = jax.grad(lambda pos: predict(params, with_positions(graph, pos), pos)[0][0])
    assert_symmetric(grad, [(graph.nodes.positions, "1o")], ["1o"], translate=[0])


# ------------------------------------------------------------------------ pretrained checkpoints


def _pretraining_checkpoint(workdir, config_fn):
    """Writes a pretraining workdir exactly as tasks.pretrain does (config.json + orbax state)."""
    cfg = config_fn("tiny")
    objective = get_objective(cfg)
    model = objective.create_model()
    params = objective.init(model, ethanol_graph(2), jax.random.PRNGKey(7))
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
    return {
        name: (str(root / name), _pretraining_checkpoint(str(root / name), fn))
        for name, fn in (("georecon", georecon.get_config), ("coord", coord.get_config))
    }


@pytest.mark.parametrize("objective", ["georecon", "coord"])
def test_pretrained_encoder_loads(pretrained, objective):
    path, saved = pretrained[objective]
    cfg = tiny_finetune_model_config()
    model = create_property_model(cfg.model)  # denoise_head on: the node-noise head carries over
    params = init(model, ethanol_graph(2), seed=11)
    new, info = load_pretrained_encoder(params, path, cfg.model.encoder, verbose=False)
    assert info["step"] == 4 and info["loaded"] == ["encoder", "node_noise"]
    for mine, theirs in (("encoder", "encoder"), ("node_noise", "heads_node_noise")):
        jax.tree_util.tree_map(np.testing.assert_array_equal, new["params"][mine], saved["params"][theirs])
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, new["params"]["readout"], params["params"]["readout"]
    )
    # vector_cutoff may differ (issue 35): the same parameters under another function, e.g.
    # torchmd-net's MD17 fine-tuning (True) from a pre-training-via-denoising-style run (False).
    assert cfg.model.encoder.vector_cutoff is False
    cfg.model.encoder.vector_cutoff = True
    again, _ = load_pretrained_encoder(params, path, cfg.model.encoder, verbose=False)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, again["params"]["encoder"], new["params"]["encoder"]
    )


def test_pretrained_encoder_of_another_width_fails_clearly(pretrained):
    path, _ = pretrained["coord"]
    cfg = tiny_finetune_model_config(features=32)
    params = shapes_of(create_property_model(cfg.model), ethanol_graph(2))
    with pytest.raises(PretrainedMismatchError) as e:
        load_pretrained_encoder(params, path, cfg.model.encoder, verbose=False)
    text = str(e.value)
    assert "checkpoint: features=16, num_layers=2" in text and "this model: features=32" in text
    assert "embedding/embedding: checkpoint (101, 16), model (101, 32)" in text
    # Same shapes, different setting recorded in the pretraining config.json: also refused.
    cfg = tiny_finetune_model_config(num_heads=4)
    params = shapes_of(create_property_model(cfg.model), ethanol_graph(2))
    with pytest.raises(PretrainedMismatchError, match="num_heads: pretrained 2, model 4"):
        load_pretrained_encoder(params, path, cfg.model.encoder, verbose=False)


# ------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_qm9_finetune_from_coord_then_evaluate_twice_identically(pretrained, tmp_path):
    cache = need_qm9()
    cfg = finetune_qm9.get_config("tiny")
    cfg.target = "U0"  # least-squares atom references path
    cfg.num_steps = 4
    cfg.eval_every = 2
    cfg.checkpoint_every = 2
    cfg.data.cache_dir = cache
    cfg.pretrained = pretrained["coord"][0]
    workdir = str(tmp_path / "ft")
    summary = finetune.run(cfg, workdir)
    assert summary["pretrained"]["loaded"] == ["encoder", "node_noise"]
    assert summary["test"]["U0_mae"]["unit"] == "meV" and np.isfinite(summary["test"]["U0_mae"]["value"])
    for f in (
        "results.json",
        "results.md",
        "parity_U0.png",
        "learning_curves.png",
        "summary.json",
        "best.json",
        "target_stats.json",
    ):
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


@pytest.mark.slow
def test_finetune_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Fine-tuning on rMD17 ethanol: kill -9 after a checkpoint, rerun, same parameters as a straight run."""
    import subprocess
    import sys
    from conftest import ROOT, kill_after_first_checkpoint, require_shared
    from georecon_jax.training.checkpoint import restore_params

    data_dir = require_shared("rmd17")

    def cmd(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.finetune",
            "--config=experiments/configs/finetune_md17.py:tiny",
            f"--config.data.data_dir={data_dir}",
            "--config.molecule=ethanol",
            "--config.num_steps=8",
            "--config.checkpoint_every=2",
            "--config.eval_every=100",
            f"--workdir={workdir}",
        ]

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    straight = tmp_path / "straight"
    out = subprocess.run(cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(cmd(killed), killed / "checkpoints", env)[-1] < 8
    out = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    (sa, a), (sb, b) = restore_params(str(straight)), restore_params(str(killed))
    assert sa == sb == 8
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
