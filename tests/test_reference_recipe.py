"""The fine-tuning recipe of the references (issue 14): the EquivariantScalar head's symmetries and
padding independence, the loss in the target's unit averaged over atoms, the regulariser's target
scaled by the pretraining's noise normaliser, and pretrain -> MD17 fine-tuning at matching sizes."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jitted
from experiments.configs import coord, finetune_md17, finetune_qm9, georecon
from georecon_jax.graphs.batching import estimate_budgets, pack_graphs
from georecon_jax.models.graph import graph_masks
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.noise import NOISE_NORMALISER_FILE, NoiseNormaliser, per_atom_normal
from georecon_jax.objectives.registry import get_objective
from georecon_jax.objectives.supervised import TargetStats, init_params, make_loss_fn
from georecon_jax.tasks import finetune
from georecon_jax.tasks.finetune import read_noise_normaliser
from georecon_jax.tasks.pretrain import write_noise_normaliser
from symmetry import assert_symmetric, jitter


def small_config(**loss):
    cfg = finetune_qm9.get_config("tiny")
    cfg.model.head.kind = "equivariant_scalar"
    cfg.loss.update(**loss)
    return cfg


@pytest.fixture(scope="module")
def molecules(qm9_small):
    mols, _ = qm9_small
    return mols


def packed(mols, idx, extra_nodes=0, targets=None):
    budget = estimate_budgets(mols.n_atoms, mols.n_atoms**2, len(idx), num_buckets=1)[-1]
    budget = dataclasses.replace(budget, n_node=budget.n_node + extra_nodes)
    g = pack_graphs(mols, idx, budget)
    if targets is not None:
        t = np.zeros_like(np.asarray(g.globals.targets))
        t[: len(idx), 0] = targets
        g = g._replace(globals=g.globals._replace(targets=t))
    return jax.tree_util.tree_map(jnp.asarray, g)


@pytest.fixture(scope="module")
def model_and_params(molecules):
    cfg = small_config()
    model = create_property_model(cfg.model)
    graph = packed(molecules, [5, 40])
    params = jitter(init_params(model, graph, jax.random.PRNGKey(0), with_denoise=True), seed=4)
    return cfg, model, params


def test_equivariant_scalar_head_reads_vectors_and_has_torchmd_widths(model_and_params):
    cfg, model, params = model_and_params
    F = cfg.model.encoder.features
    head = params["params"]["readout"]["head"]
    assert head["block_0"]["vec1_proj"]["kernel"].shape == (F, F)  # hidden = F (torchmd-net)
    assert head["block_0"]["vec2_proj"]["kernel"].shape == (F, F // 2)
    assert head["block_1"]["update_1"]["kernel"].shape == (F // 2, 2)
    noise = params["params"]["node_noise"]
    assert noise["block_0"]["vec1_proj"]["kernel"].shape == (F, F)  # EquivariantVectorOutput


def test_the_property_is_invariant_and_padding_independent(model_and_params, molecules):
    cfg, model, params = model_and_params
    graph = packed(molecules, [5, 40])
    apply = jitted(model.apply)

    def value(pos):
        g = graph._replace(nodes=graph.nodes._replace(positions=pos))
        return apply(params, g, pos).value[:2]

    # O(3) (rotations and reflections) and translations: the output is invariant.
    assert_symmetric(value, [(graph.nodes.positions, "1o")], ["0e"], translate=[0])
    base = np.asarray(value(graph.nodes.positions))
    # Padding: more padding atoms, and the two molecules in the other order, change nothing.
    more = packed(molecules, [5, 40], extra_nodes=13)
    np.testing.assert_allclose(np.asarray(apply(params, more).value[:2]), base, rtol=2e-5, atol=1e-6)
    swapped = packed(molecules, [40, 5])
    np.testing.assert_allclose(np.asarray(apply(params, swapped).value[:2]), base[::-1], rtol=2e-5, atol=1e-6)
    # The vectors reach the output (the MLP head would not see them): zeroing the head's vector
    # path changes the value.
    p2 = jax.tree_util.tree_map(lambda x: x, params)
    p2["params"]["readout"]["head"]["block_0"]["vec1_proj"]["kernel"] = jnp.zeros_like(
        params["params"]["readout"]["head"]["block_0"]["vec1_proj"]["kernel"]
    )
    assert np.max(np.abs(np.asarray(apply(p2, graph).value[:2]) - base)) > 1e-4


def test_the_loss_is_in_the_target_unit_and_atoms_weigh_the_same(model_and_params, molecules):
    cfg, model, params = model_and_params
    idx = [5, 40, 77]
    assert len(set(molecules.n_atoms[idx])) > 1  # molecules of different sizes
    graph = packed(molecules, idx, targets=[0.3, -0.2, 0.1])
    stats = TargetStats(mean=0.05, std=4.0)
    key = jax.random.PRNGKey(3)
    m = graph_masks(graph)
    real = np.asarray(m.graph_mask)

    def run(**loss):
        c = small_config(**loss)
        loss_fn = jax.jit(make_loss_fn(model, c, stats, train=True))
        per_graph, metrics = loss_fn(params, graph, key)
        return np.asarray(per_graph)[real], {k: np.asarray(v)[real] for k, v in metrics.items()}

    plain, metrics = run(denoise_weight=0.0)
    err = metrics["mae"]
    np.testing.assert_allclose(plain, err**2, rtol=1e-5)  # MSE in the unit, not divided by std
    scaled, _ = run(denoise_weight=0.0, divide_by_std=True)
    np.testing.assert_allclose(scaled, err**2 / 16.0, rtol=1e-5)

    # The regulariser: the step's mean over molecules of each molecule's share equals the mean
    # over the batch's atoms ('batch'), and the per-molecule mean with 'molecule'.
    with_reg, metrics = run(denoise_weight=1.0, denoise_normaliser="sigma")
    n_atoms = molecules.n_atoms[idx].astype(np.float64)
    share = metrics["denoise_mse"]  # per molecule: Σ_atoms · n_graphs / n_atoms
    _, metrics_m = run(denoise_weight=1.0, denoise_normaliser="sigma", atom_average="molecule")
    mol_means = metrics_m["denoise_mse"]
    np.testing.assert_allclose(share.mean(), np.sum(mol_means * n_atoms) / n_atoms.sum(), rtol=1e-5)
    assert abs(share.mean() - mol_means.mean()) > 1e-4 * mol_means.mean()  # the two differ here
    # total = property term (at the displaced input) + weight 1 x the regulariser's share
    np.testing.assert_allclose(with_reg, metrics["mae"] ** 2 + share, rtol=1e-4)


def test_the_regulariser_target_follows_the_pretraining_normaliser(model_and_params, molecules):
    """With the node head's output at zero the regulariser is ⟨target²⟩: with the pretraining
    normaliser std 0.04 Å and σ = 0.005 Å, (0.005 / 0.04)² = 1/64 of ⟨ε²⟩ (and a mean shifts it)."""
    cfg, model, params = model_and_params
    p0 = jax.tree_util.tree_map(lambda x: x, params)
    p0["params"]["node_noise"]["block_1"]["vec2_proj"]["kernel"] = jnp.zeros_like(
        params["params"]["node_noise"]["block_1"]["vec2_proj"]["kernel"]
    )
    graph = packed(molecules, [5, 40])
    m = graph_masks(graph)
    key = jax.random.PRNGKey(9)
    stats = TargetStats()
    c = small_config(denoise_weight=1.0, denoise_sigma=0.005, atom_average="batch")
    eps = per_atom_normal(key, graph.globals.graph_id[m.node_graph], graph.nodes.atom_index)
    eps = np.asarray(eps)[np.asarray(m.node_mask)]
    real = np.asarray(m.graph_mask)

    def regulariser(normaliser):
        fn = jax.jit(make_loss_fn(model, c, stats, train=True, noise_normaliser=normaliser))
        return float(np.asarray(fn(p0, graph, key)[1]["denoise_mse"])[real].mean())

    from_sigma = regulariser(None)
    np.testing.assert_allclose(from_sigma, np.mean(eps**2), rtol=1e-4)
    coord_norm = NoiseNormaliser.of_sigma(0.04, "test")
    np.testing.assert_allclose(regulariser(coord_norm), np.mean(eps**2) / 64.0, rtol=1e-4)
    shifted = NoiseNormaliser((0.001, 0.0, -0.002), (0.04, 0.02, 0.04), "test")
    want = ((0.005 * eps - np.array(shifted.mean)) / np.array(shifted.std)) ** 2
    np.testing.assert_allclose(regulariser(shifted), want.mean(), rtol=1e-4)
    c.loss.denoise_normaliser = "sigma"  # ignores the pretraining's
    np.testing.assert_allclose(regulariser(coord_norm), from_sigma, rtol=1e-6)


@pytest.mark.parametrize("config_fn, std", [(coord.get_config, 0.04), (georecon.get_config, 0.614)])
def test_pretraining_records_its_normaliser_and_finetuning_finds_it(tmp_path, config_fn, std):
    """Coord: σ = 0.04 Å; GeoRecon: the rms σ of log-uniform [0.01, 2] Å,
    sqrt((σ_max² - σ_min²) / (2 ln(σ_max / σ_min))) = 0.614 Å."""
    normaliser = get_objective(config_fn("tiny")).noise_normaliser()
    np.testing.assert_allclose(normaliser.std, [std] * 3, rtol=0.01)
    write_noise_normaliser(str(tmp_path), normaliser)
    step = tmp_path / "checkpoints" / "4"
    step.mkdir(parents=True)
    assert read_noise_normaliser(str(step)) == normaliser  # from a step folder of the run
    (tmp_path / NOISE_NORMALISER_FILE).write_text(json.dumps({"mean": [0, 0], "std": [1, 1, 1]}))
    with pytest.raises(ValueError, match="noise_normaliser.json: not a noise normaliser"):
        read_noise_normaliser(str(tmp_path))


def pretraining_workdir(workdir, config, mols):
    """A pretraining workdir as tasks.pretrain leaves it (config.json, noise_normaliser.json, an
    orbax state at step 4), without spending a training run on it."""
    from georecon_jax.training.checkpoint import Checkpointer
    from georecon_jax.training.loop import record_config
    from georecon_jax.training.optimizer import create_optimizer
    from georecon_jax.training.state import create_train_state

    objective = get_objective(config)
    model = objective.create_model()
    params = objective.init(model, packed(mols, [5, 40]), jax.random.PRNGKey(7))
    state = create_train_state(model.apply, params, create_optimizer(config.optim, 10), False)
    os.makedirs(workdir, exist_ok=True)
    record_config(config, workdir)
    write_noise_normaliser(workdir, objective.noise_normaliser())
    ckpt = Checkpointer(workdir)
    ckpt.save(4, state)
    ckpt.close()


@pytest.mark.slow
def test_georecon_pretraining_to_md17_finetuning_loads_at_matching_sizes(tmp_path, molecules):
    """A georecon.py:tiny run (without the vector norm, as georecon.py:md17) -> finetune_md17.py:tiny
    with --config.pretrained (the default sizes agree field by field: tests/test_configs.py)."""
    from conftest import require_shared

    data_dir = require_shared("rmd17")
    pre = georecon.get_config("tiny")
    pre.model.encoder.vec_norm = "none"  # as georecon.py:md17 (MD17's encoder has no vector norm)
    pretraining_workdir(str(tmp_path / "pre"), pre, molecules)
    cfg = finetune_md17.get_config("tiny")
    cfg.data.data_dir = str(data_dir)
    cfg.update(num_steps=2, eval_every=2, checkpoint_every=2, pretrained=str(tmp_path / "pre"))
    summary = finetune.run(cfg, str(tmp_path / "ft"))
    assert summary["pretrained"]["loaded"] == ["encoder"] and summary["pretrained"]["step"] == 4
    assert np.isfinite(summary["test"]["force_mae"]["value"])


@pytest.mark.parametrize("kind", ["equivariant_scalar", "mlp", "spatial_extent"])
def test_zero_init_head_starts_at_zero_and_trains(molecules, kind):
    """model.head.zero_init: the head's last layer starts at zero, so every molecule's output is 0
    at init, while the gradient reaches that layer; the parameters have the same names and shapes
    as the default (Xavier, torchmd-net's) head, whose outputs are not 0. The dipole head refuses
    it: |Σ q r + μ| at 0 has no gradient, so it would never train."""
    graph = packed(molecules, [5, 40, 77])
    real = np.asarray(graph_masks(graph).graph_mask)
    out = {}
    for zero in (False, True):
        cfg = small_config()
        cfg.model.encoder.vec_norm = "whitened"
        cfg.model.head.update(kind=kind, zero_init=zero)
        model = create_property_model(cfg.model)
        params = init_params(model, graph, jax.random.PRNGKey(0), with_denoise=False)
        value = lambda p: model.apply(p, graph).value
        out[zero] = (params, np.asarray(value(params))[real])
        if zero:
            grads = jax.grad(lambda p: jnp.sum(jnp.where(real, value(p), 0.0) ** 2 + value(p)[0]))(params)
            last = grads["params"]["readout"]["head"]
            last = last["block_1"]["update_1"] if "block_1" in last else last["out"]
            assert float(jnp.max(jnp.abs(last["kernel"]))) > 0, kind
    shapes = lambda p: jax.tree_util.tree_map(jnp.shape, p)
    assert shapes(out[False][0]) == shapes(out[True][0])
    assert np.max(np.abs(out[True][1])) < 1e-5, out[True][1]
    assert np.min(np.abs(out[False][1])) > 1e-4, out[False][1]

    if kind == "equivariant_scalar":
        cfg = small_config()
        cfg.model.head.update(kind="dipole", zero_init=True)
        with pytest.raises(ValueError, match="dipole head"):
            create_property_model(cfg.model)


def test_init_scale_example_measures_every_setting():
    """examples/init_scale.py (the step-0 table in docs/results.md) at the tiny size: one row per
    vector norm, head and seed, with a finite positive loss and gradient norm."""
    import runpy

    example = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "examples", "init_scale.py"))
    rows = example["main"](["--size=tiny", "--batches=1", "--seeds=0", "--vec_norms=whitened,none"])
    assert [(r["vec_norm"], r["head"]) for r in rows] == [
        ("whitened", "Xavier"),
        ("whitened", "zeros"),
        ("none", "Xavier"),
        ("none", "zeros"),
    ]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["grad_norm"] > 0 for r in rows)


def test_planarity_example_bins_paired_errors_by_thickness(qm9_small, tmp_path):
    """examples/planarity.py: arm a's error exceeds arm b's by 10 meV on planar molecules (every
    3-atom molecule is planar) and by 0 elsewhere, in both seeds; the table finds +10 in the
    planar bin, 0 in the others, and only the molecules and seeds both arms have."""
    import runpy

    mols, splits = qm9_small
    rows = np.asarray(splits["train"])[:120]
    example = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "examples", "planarity.py"))
    th = example["thickness"](mols, rows)
    planar = th < 0.01
    assert planar.any() and (~planar).any()
    assert th[mols.n_atoms[rows] == 3].max() < 1e-3
    for arm, extra in (("a", 10.0), ("b", 0.0)):
        for seed in ("seed0", "seed1") + (("seed2",) if arm == "a" else ()):
            d = tmp_path / "homo" / arm / seed
            d.mkdir(parents=True)
            keep = rows if arm == "a" else rows[:-5]  # b lacks 5 molecules
            err = 50.0 + extra * (th[: len(keep)] < 0.01)
            np.savez(d / "errors_test.npz", ids=keep.astype(np.int32), abs_error=err)
    (r,) = example["main"]([f"--cells={tmp_path / 'homo'}", "--pairs=a:b", "--limit=400"])
    assert r["seeds"] == ["seed0", "seed1"] and r["molecules"] == len(rows) - 5
    for b in r["bins"]:
        assert b["diff"] == pytest.approx(10.0 if b["hi"] <= 0.01 else 0.0), b
    assert sum(b["n"] for b in r["bins"]) == len(rows) - 5
