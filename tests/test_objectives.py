"""Pretraining objectives and the jitted step: finite losses, parameters move, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_rotation
from experiments.configs import coord as coord_config
from experiments.configs import georecon as georecon_config
from georecon_jax.graphs.batching import GraphBatcher
from georecon_jax.models.graph import graph_masks
from georecon_jax.objectives.georecon import Denoiser, kabsch_rmsd, make_reconstruct_fn
from georecon_jax.objectives.noise import per_atom_normal
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.optimizer import create_optimizer
from georecon_jax.training.state import create_train_state, make_mesh, replicate, shard_batch
from georecon_jax.objectives.registry import get_objective
from georecon_jax.tasks.pretrain import init_model


def _setup(qm9_small, config, num_buckets=2):
    mols, splits = qm9_small
    batcher = GraphBatcher(mols, splits["train"], config.batch_size, num_buckets=num_buckets)
    objective = get_objective(config)
    model, params = init_model(objective, batcher, jax.random.PRNGKey(0))
    return mols, batcher, model, params, objective


@pytest.mark.parametrize("make_config", [georecon_config.get_config, coord_config.get_config])
def test_one_step_finite_and_parameters_change(qm9_small, make_config):
    config = make_config("tiny")
    _, batcher, model, params, objective = _setup(qm9_small, config)
    mesh = make_mesh(1)
    counter = []
    state = replicate(
        create_train_state(model.apply, params, create_optimizer(config.optim, 10), False), mesh
    )
    step = steps_lib.make_train_step(
        objective.loss_fn(model), mesh, jax.random.PRNGKey(1), trace_counter=counter
    )
    before = jax.device_get(state.params)
    state, metrics = step(state, shard_batch(batcher.batch(0), mesh))
    state, metrics = step(state, shard_batch(batcher.batch(0), mesh))  # lr is 0 at step 0 (warm-up)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
    assert float(metrics["num_graphs"]) == config.batch_size
    after = jax.device_get(state.params)
    moved = [
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before))
    ]
    assert max(moved) > 0
    enc_moved = [
        float(np.abs(a - b).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(after["params"]["encoder"]),
            jax.tree_util.tree_leaves(before["params"]["encoder"]),
        )
    ]
    assert max(enc_moved) > 0
    if config.objective.name == "georecon":
        for part in ("heads_decoder", "heads_graph_code", "heads_node_noise"):
            d = [
                float(np.abs(a - b).max())
                for a, b in zip(
                    jax.tree_util.tree_leaves(after["params"][part]),
                    jax.tree_util.tree_leaves(before["params"][part]),
                )
            ]
            assert max(d) > 0, f"{part} received no update"
        assert {"recon_mse", "clean_mse", "node_denoise_mse"} <= set(metrics)


def test_no_recompilation_after_warm_up(qm9_small):
    config = coord_config.get_config("tiny")  # the same step machinery as GeoRecon, cheaper to compile
    _, batcher, model, params, objective = _setup(qm9_small, config, num_buckets=2)
    mesh = make_mesh(1)
    counter = []
    state = replicate(
        create_train_state(model.apply, params, create_optimizer(config.optim, 100), False), mesh
    )
    step = steps_lib.make_train_step(
        objective.loss_fn(model), mesh, jax.random.PRNGKey(1), trace_counter=counter
    )
    shapes = []
    for k in range(3 * batcher.steps_per_epoch):
        batch = batcher.batch(k)
        shapes.append(batch.nodes.positions.shape)
        state, _ = step(state, shard_batch(batch, mesh))
    assert len(counter) == len(set(shapes)) <= len(batcher.budgets)
    n = len(counter)
    for k in range(5):  # warm: every shape seen, nothing new compiles
        state, _ = step(state, shard_batch(batcher.batch(k), mesh))
    assert len(counter) == n


def test_loss_of_a_molecule_does_not_depend_on_its_batch(qm9_small):
    """Noise is keyed by molecule id and atom index: same molecule, same loss, alone or batched."""
    config = georecon_config.get_config("tiny")
    mols, batcher, model, params, objective = _setup(qm9_small, config)
    loss_fn = jax.jit(objective.loss_fn(model))
    from georecon_jax.graphs.batching import pack_graphs

    key = jax.random.PRNGKey(5)
    b = batcher.budgets[-1]
    alone = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, [42], b))
    batch = jax.tree_util.tree_map(jnp.asarray, pack_graphs(mols, [7, 42, 99], b))
    la, ma = loss_fn(params, alone, key)
    lb, mb = loss_fn(params, batch, key)
    np.testing.assert_allclose(lb[1], la[0], rtol=1e-4)
    np.testing.assert_allclose(mb["sigma"][1], ma["sigma"][0], rtol=1e-6)
    assert float(mb["sigma"].min()) >= config.objective.sigma_min * 0.999
    assert float(mb["sigma"][:3].max()) <= config.objective.sigma_max * 1.001


def test_kabsch_rmsd():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(12, 3))
    rot = random_rotation(4).astype(np.float64)
    assert kabsch_rmsd(ref @ rot.T + 5.0, ref) < 1e-6
    noisy = ref + 0.1 * rng.normal(size=ref.shape)
    assert 0.0 < kabsch_rmsd(noisy @ rot.T, ref) <= np.sqrt(np.mean(np.sum((noisy - ref) ** 2, 1))) + 1e-9
    mirror = ref * np.array([-1.0, 1.0, 1.0])  # a reflection is not a rotation
    assert kabsch_rmsd(mirror, ref) > 0.1


def test_reconstruction_sampler_starts_from_noise_and_is_deterministic(qm9_small):
    config = georecon_config.get_config("tiny")
    mols, batcher, model, params, _ = _setup(qm9_small, config)
    ob, den = config.objective, Denoiser.of(config)
    recon = jax.jit(make_reconstruct_fn(model, ob.sigma_min, ob.sigma_max, 3, den, "ddim"))
    graph = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), batcher.batch(0))
    a = np.asarray(recon(params, graph, jax.random.PRNGKey(0)))
    b = np.asarray(recon(params, graph, jax.random.PRNGKey(0)))
    assert np.all(np.isfinite(a)) and np.array_equal(a, b)
    assert not np.allclose(np.asarray(recon(params, graph, jax.random.PRNGKey(1))), a)
    real = np.asarray(graph.globals.graph_id >= 0)
    assert a.shape == graph.nodes.positions.shape
    assert real.sum() == config.batch_size
    # With the decoder's output layer zeroed (ε̂ ≡ 0) every DDIM step keeps x: the sampler returns
    # its start, σ_max·ε drawn per molecule and atom, 0 on padding. It never sees the answer.
    m = graph_masks(graph)
    zeroed = jax.tree_util.tree_map(lambda x: x, params)
    zeroed["params"]["heads_decoder"]["out"] = jax.tree_util.tree_map(
        jnp.zeros_like, params["params"]["heads_decoder"]["out"]
    )
    eps0 = per_atom_normal(
        jax.random.PRNGKey(0), graph.globals.graph_id[m.node_graph], graph.nodes.atom_index
    )
    start = np.where(np.asarray(m.node_mask)[:, None], config.objective.sigma_max * np.asarray(eps0), 0.0)
    np.testing.assert_allclose(np.asarray(recon(zeroed, graph, jax.random.PRNGKey(0))), start, atol=1e-5)
    assert float(np.abs(a - start).max()) > 1e-3  # the real decoder moves the atoms
    # The renoise sampler puts fresh noise back at each level instead: with ε̂ ≡ 0 it returns the
    # same start plus independent noise of variance Σ σ_k² over the levels after the first.
    renoise = jax.jit(make_reconstruct_fn(model, ob.sigma_min, ob.sigma_max, 3, den, "renoise"))
    r = np.asarray(renoise(zeroed, graph, jax.random.PRNGKey(0)))
    assert np.array_equal(r, np.asarray(renoise(zeroed, graph, jax.random.PRNGKey(0))))
    node = np.asarray(m.node_mask)
    assert np.all(r[~node] == 0.0)
    added = (r - start)[node]
    sigmas = np.geomspace(ob.sigma_max, ob.sigma_min, 3)
    expected = np.sqrt(np.sum(sigmas[1:] ** 2))  # 0.14 Å for 2 -> 0.01 Å
    assert 0.85 < added.std() / expected < 1.15, (added.std(), expected, added.size)
    assert abs(added.mean()) < 0.2 * expected
    with pytest.raises(ValueError, match="sampler='ancestral'"):
        make_reconstruct_fn(model, ob.sigma_min, ob.sigma_max, 3, den, "ancestral")


def test_every_registered_objective_refuses_an_unknown_name():
    from georecon_jax.objectives.registry import get_objective, names

    assert {"georecon", "coord", "coord_ladder", "3dmrl"} <= set(names())
    config = coord_config.get_config("tiny")
    config.objective.name = "cord"
    with pytest.raises(ValueError, match="unknown objective.*registered"):
        get_objective(config)


def test_a_new_objective_file_registers_itself(tmp_path):
    """A file dropped into objectives/ is registered on import, with no edit to the registry or
    the package (a copy of the package, run in a fresh interpreter)."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    shutil.copytree(
        ROOT / "georecon_jax", tmp_path / "georecon_jax", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "georecon_jax" / "objectives" / "my_denoiser.py").write_text(
        "from georecon_jax.objectives.coord import Coord\n"
        "from georecon_jax.objectives.registry import register\n\n\n"
        "@register\nclass MyDenoiser(Coord):\n    name = 'my_denoiser'\n"
    )
    code = "from georecon_jax.objectives.registry import names; print(','.join(names()))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True
    )
    assert {"coord", "georecon", "my_denoiser"} <= set(out.stdout.split()[-1].split(","))


def test_adding_an_objective_is_one_file_and_one_config(qm9_small):
    """The README's worked example: objectives/coord_ladder.py + configs/coord_ladder.py train."""
    from experiments.configs import coord_ladder as ladder_config

    config = ladder_config.get_config("tiny")
    mols, batcher, model, params, objective = _setup(qm9_small, config, num_buckets=1)
    assert objective.name == "coord_ladder" and set(params["params"]) == {"encoder", "heads_node_noise"}
    mesh = make_mesh(1)
    state = replicate(
        create_train_state(model.apply, params, create_optimizer(config.optim, 10), False), mesh
    )
    step = steps_lib.make_train_step(objective.loss_fn(model), mesh, jax.random.PRNGKey(1))
    for k in range(2):  # the learning rate is 0 at step 0 (warm-up)
        state, metrics = step(state, shard_batch(batcher.batch(k), mesh))
    assert np.isfinite(float(metrics["loss"]))
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(jax.device_get(state.params)), jax.tree_util.tree_leaves(params)
        )
    )
    assert moved > 0
    # σ comes from the ladder: every molecule's σ is one of its num_levels levels.
    graph = jax.tree_util.tree_map(lambda x: x[0], batcher.batch(0))
    sigma = np.asarray(objective.draw_sigma(graph, jax.random.PRNGKey(3)))
    levels = np.geomspace(config.objective.sigma_max, config.objective.sigma_min, config.objective.num_levels)
    assert np.all(np.min(np.abs(sigma[:, None] - levels[None, :]), axis=1) < 1e-5 * levels.max())
    assert len(np.unique(np.round(sigma, 6))) > 1


# -- the z diagnostic (does the decoder use the graph code?) --------------------------------------


def _diagnostic_setup(qm9_small):
    config = georecon_config.get_config("tiny")
    mols, batcher, model, params, objective = _setup(qm9_small, config, num_buckets=1)
    graph = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), batcher.batch(0))
    return config, model, params, graph


def test_z_diagnostic_is_the_objectives_error_and_is_blind_to_an_ignored_code(qm9_small):
    """On the real GeoRecon model: the own-code MSE at σ is the loss's recon_mse with the same key
    (same noise, same code); the other code is another real molecule's; with the code rows of
    fuse_hidden zeroed (the decoder ignores z) own = other = zero up to float rounding."""
    from georecon_jax.objectives.georecon import make_decoder_errors_fn
    from georecon_jax.objectives.graph_code_diagnostic import aggregate_decoder_errors
    from georecon_jax.objectives.registry import get_objective

    config, model, params, graph = _diagnostic_setup(qm9_small)
    sigmas = (0.1, 1.0)
    errors = jax.jit(make_decoder_errors_fn(model, sigmas, Denoiser.of(config)))
    key = jax.random.PRNGKey(3)
    res = errors(params, graph, key)
    real = np.asarray(graph.globals.graph_id >= 0)
    other = np.asarray(res["other"])
    assert real.sum() >= 2 and np.all(np.asarray(res["has_other"]) == real)
    assert np.all(other[real] != np.flatnonzero(real)) and sorted(other[real]) == list(np.flatnonzero(real))
    fixed = georecon_config.get_config("tiny")
    fixed.objective.update(schedule="fixed", sigma_max=sigmas[-1])
    _, metrics = jax.jit(get_objective(fixed).loss_fn(model))(params, graph, key)
    np.testing.assert_allclose(
        np.asarray(res["mse_own"][-1])[real], np.asarray(metrics["recon_mse"])[real], rtol=1e-4
    )
    # an untrained decoder does read z: another code changes ε̂
    assert float(np.abs(np.asarray(res["mse_own"] - res["mse_other"])[:, real]).max()) > 1e-6
    # the decoder with its code input cut: exactly blind
    blind = jax.tree_util.tree_map(lambda x: x, params)
    fuse = dict(params["params"]["heads_decoder"]["fuse_hidden"])
    f, c = config.model.encoder.features, config.model.decoder.code_dim
    fuse["kernel"] = fuse["kernel"].at[f : f + c].set(0.0)
    blind["params"]["heads_decoder"] = dict(params["params"]["heads_decoder"], fuse_hidden=fuse)
    r = errors(blind, graph, key)
    for k in ("mse_other", "mse_zero"):
        np.testing.assert_allclose(np.asarray(r[k]), np.asarray(r["mse_own"]), rtol=1e-5, atol=1e-7)
    agg = aggregate_decoder_errors([jax.device_get(r)], sigmas)
    np.testing.assert_allclose(agg["own_over_other"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(agg["own_over_zero"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(agg["own_minus_other"], 0.0, atol=1e-6)
    assert agg["n_molecules_decoder"] == real.sum()
    seen = aggregate_decoder_errors([jax.device_get(res)], sigmas)  # the untrained decoder reads z
    assert np.abs(np.asarray(seen["own_minus_other"])).max() > 1e-7
    np.testing.assert_allclose(
        seen["own_minus_other"], np.asarray(seen["mse_own"]) - np.asarray(seen["mse_other"])
    )


def test_code_source_noisy_pools_z_from_the_perturbed_structure(qm9_small, monkeypatch):
    """objective.code_source='noisy' (the study's noisy_code ablation) pools z from the perturbed
    structure the decoder sees, which changes with the key. (The caption's clean z is checked by
    test_z_diagnostic_is_the_objectives_error...: the loss's recon_mse equals the decoder's error
    with the clean molecule's code.)"""
    source = "noisy"
    assert georecon_config.get_config("tiny").objective.code_source == "clean"
    from georecon_jax.objectives import georecon as georecon_lib
    from georecon_jax.objectives.registry import get_objective

    config = georecon_config.get_config("tiny")
    config.objective.code_source = source
    assert not get_objective(config).validate()
    _, batcher, model, params, objective = _setup(qm9_small, config)
    objective = get_objective(config)
    graph = jax.tree_util.tree_map(lambda x: x[0], batcher.batch(0))
    pooled = []
    real_code = georecon_lib.graph_code
    monkeypatch.setattr(
        georecon_lib,
        "graph_code",
        lambda mdl, g, feats: pooled.append(feats.scalars) or real_code(mdl, g, feats),
    )
    for k in (1, 2):
        model.apply(
            params, graph, jax.random.PRNGKey(k), method=lambda mdl, g, key: objective.forward(mdl, g, key)
        )
    clean = model.apply(params, graph, method=lambda mdl, g: mdl.encode(g).scalars)
    real = np.asarray(graph_masks(graph).node_mask)
    a, b = (np.asarray(x)[real] for x in pooled)
    assert np.abs(a - b).max() > 1e-4 and np.abs(a - np.asarray(clean)[real]).max() > 1e-4
    config.objective.code_source = "perturbed"
    assert any("code_source" in p for p in get_objective(config).validate())


def test_z_diagnostic_tells_a_decoder_that_uses_z_from_one_that_cannot(qm9_small):
    """A toy decoder whose only source of the clean structure is z: ε̂ = (x - x̂₀(z)) / σ, x̂₀ a
    small trainable map from the code (the tiny GeoRecon encoder + graph_code of the clean
    molecule) to per-atom positions, trained briefly by denoising. Its twin gets a constant code.
    The library's `decoder_errors` must find own/other well below 1 for the first and 1 for the
    second."""
    import flax.linen as nn
    import optax

    from georecon_jax.objectives.georecon import make_code_fn
    from georecon_jax.objectives.graph_code_diagnostic import aggregate_decoder_errors, decoder_errors
    from georecon_jax.objectives.noise import perturb

    config, model, params, graph = _diagnostic_setup(qm9_small)
    max_atoms = 29  # QM9

    class CleanFromCode(nn.Module):
        @nn.compact
        def __call__(self, z):
            z = nn.LayerNorm()(z)
            return nn.Dense(max_atoms * 3)(nn.silu(nn.Dense(128)(z))).reshape(-1, max_atoms, 3)

    net = CleanFromCode()
    m = graph_masks(graph)
    true_code = jax.jit(make_code_fn(model))(params, graph)

    def train(code_fn):
        def decode_fn(p):
            def decode(g, pos, codes, log_sigma):
                sigma = jnp.exp(log_sigma)[:, None]
                return [(pos - net.apply(p, c)[m.node_graph, g.nodes.atom_index]) / sigma for c in codes]

            return decode

        p = net.init(jax.random.PRNGKey(0), code_fn(graph))
        tx = optax.adam(3e-3)

        def loss(p, key):  # denoising at σ = 1 Å: (ε̂ - ε)² = (x₀ - x̂₀(z))²
            pos, eps = perturb(graph, key, jnp.ones(m.n_graph))
            (e,) = decode_fn(p)(graph, pos, [code_fn(graph)], jnp.zeros(pos.shape[0]))
            return jnp.sum(jnp.where(m.node_mask[:, None], (e - eps) ** 2, 0.0)) / jnp.sum(m.node_mask)

        @jax.jit
        def fit(p):
            def step(carry, key):
                p, s = carry
                g = jax.grad(loss)(p, key)
                u, s = tx.update(g, s, p)
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), jax.random.split(jax.random.PRNGKey(1), 400))
            return p

        p = fit(p)
        sigmas = (0.04, 0.3, 1.0)
        res = jax.jit(lambda g, k: decoder_errors(code_fn, decode_fn(p), g, k, sigmas))(
            graph, jax.random.PRNGKey(7)
        )
        return aggregate_decoder_errors([jax.device_get(res)], sigmas)

    uses = train(lambda g: true_code)
    blind = train(lambda g: jnp.ones_like(true_code))
    assert max(uses["own_over_other"]) < 0.2, uses
    assert max(uses["own_over_zero"]) < 0.2, uses
    np.testing.assert_allclose(blind["own_over_other"], 1.0, rtol=1e-5)
    assert np.all(np.asarray(blind["mse_own"]) > 10 * np.asarray(uses["mse_own"])), (uses, blind)


def test_z_diagnostic_partners():
    """The derangement skips padding graphs (several may be empty, not only the last); same-size
    partners prefer the same composition and never pair a molecule with itself."""
    from georecon_jax.objectives.graph_code_diagnostic import derangement, same_size_partners

    other, has = derangement(jnp.array([True, False, True, True, False, False]))
    assert np.asarray(other).tolist() == [2, 1, 3, 0, 4, 5]
    assert np.asarray(has).tolist() == [True, False, True, True, False, False]
    other, has = derangement(jnp.array([True, False, False]))
    assert np.asarray(other).tolist() == [0, 1, 2] and not np.asarray(has).any()
    mols = [np.array(z) for z in ([6, 1, 1], [1, 6, 1], [8, 1, 1], [6, 6], [7, 7, 7, 1])]
    partner, same = same_size_partners(mols)
    assert partner.tolist() == [1, 0, 0, -1, -1] and same.tolist() == [True, True, False, False, False]
