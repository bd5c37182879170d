"""A radius neighbour list, built from the clean positions, cannot leak the clean geometry
(issue 14, item 4).

With ``graph.neighbor_list=radius`` the candidate pairs are those within cutoff + skin of each
other in the clean structure. Noise that can move two atoms relative to each other by more than
the skin would be evaluated on pairs chosen from the clean geometry: the config is refused,
naming the skin and the noise, unless skin >= 4·σ·√2·√3 (objectives/noise.py). GeoRecon's
sampler, which starts from pure noise, only ever runs on all pairs.
"""

import math

import numpy as np
import pytest

from experiments.configs import coord, coord_ladder, finetune_qm9, georecon
from georecon_jax.data.records import Molecules
from georecon_jax.graphs.batching import Budget, molecule_edges, pack_graphs
from georecon_jax.objectives.georecon import require_all_pairs
from georecon_jax.objectives.noise import (
    SKIN_MISS_PROBABILITY,
    SKIN_PER_SIGMA,
    neighbor_list_problems,
    required_skin,
)
from georecon_jax.objectives.registry import get_objective
from georecon_jax.tasks.pretrain import PretrainTask
from georecon_jax.tasks.property_data import denoise_neighbor_list_problems, make_batchers
from georecon_jax.training import runner


def radius(config, skin):
    config.graph.neighbor_list = "radius"
    config.graph.skin = skin
    return config


def test_georecon_noise_on_a_radius_list_is_refused_naming_both_numbers():
    config = radius(georecon.get_config("tiny"), 1.0)  # sigma_max = 2 Å
    problems = PretrainTask(get_objective(config)).validate(config)
    assert len(problems) == 1, problems
    message = problems[0]
    assert "graph.skin=1 Å" in message and "objective.sigma_max=2 Å" in message
    assert "graph.neighbor_list=all_pairs" in message and "19.6 Å" in message  # 4·2·√6
    with pytest.raises(ValueError, match=r"graph\.skin=1 Å .* objective\.sigma_max=2 Å"):
        runner.check_config(PretrainTask(get_objective(config)), config)


def test_coord_noise_is_covered_by_the_default_skin():
    config = radius(coord.get_config("tiny"), 1.0)  # σ = 0.04 Å needs 0.392 Å
    assert PretrainTask(get_objective(config)).validate(config) == []
    runner.check_config(PretrainTask(get_objective(config)), config)  # no error


def test_coord_with_a_thin_skin_is_refused():
    config = radius(coord.get_config("tiny"), 0.3)
    (message,) = get_objective(config).problems()
    assert "graph.skin=0.3 Å" in message and "objective.sigma_max=0.04 Å" in message
    assert "0.392 Å" in message


@pytest.mark.parametrize("skin, ok", [(9.0, False), (9.8, True)])
def test_every_objective_with_a_sigma_max_is_checked(skin, ok):
    """coord_ladder overrides validate() without knowing of the check: it still applies (σ up to
    1 Å needs 9.80 Å)."""
    config = radius(coord_ladder.get_config("tiny"), skin)
    assert (PretrainTask(get_objective(config)).validate(config) == []) == ok


def test_all_pairs_is_never_refused():
    config = georecon.get_config("tiny")
    assert config.graph.neighbor_list == "all_pairs"
    assert PretrainTask(get_objective(config)).validate(config) == []


def test_an_unknown_neighbor_list_is_named():
    config = georecon.get_config("tiny")
    config.graph.neighbor_list = "knn"
    assert any("graph.neighbor_list='knn'" in p for p in PretrainTask(get_objective(config)).validate(config))


def test_the_finetuning_regulariser_is_checked():
    config = radius(finetune_qm9.get_config("tiny"), 0.01)
    config.loss.denoise_weight, config.loss.denoise_sigma = 0.1, 0.005  # Coord's regulariser
    (message,) = denoise_neighbor_list_problems(config)
    assert "graph.skin=0.01 Å" in message and "loss.denoise_sigma=0.005 Å" in message
    assert "0.049 Å" in message
    # The training batchers refuse it too (before any data is read), whoever calls them.
    with pytest.raises(ValueError, match="loss.denoise_sigma=0.005"):
        make_batchers(config, None, 1)
    config.graph.skin = 1.0
    assert denoise_neighbor_list_problems(config) == []
    config.graph.skin, config.loss.denoise_weight = 0.01, 0.0  # no regulariser: no noise
    assert denoise_neighbor_list_problems(config) == []


def test_the_criterion_is_four_standard_deviations_of_the_relative_displacement():
    sigma = 0.04
    assert required_skin(sigma) == pytest.approx(4 * sigma * math.sqrt(2) * math.sqrt(3))
    assert SKIN_PER_SIGMA == pytest.approx(9.798, abs=1e-3)
    # |σ(ε_i - ε_j)| / (σ√2) is χ with 3 degrees of freedom: its tail beyond 4√3.
    x = 4 * math.sqrt(3)
    tail = math.erfc(x / math.sqrt(2)) + math.sqrt(2 / math.pi) * x * math.exp(-x * x / 2)
    assert SKIN_MISS_PROBABILITY == pytest.approx(tail, rel=1e-2)
    graph = dict(neighbor_list="radius", skin=required_skin(sigma))
    assert neighbor_list_problems(_Section(graph), sigma, "s") == []
    graph["skin"] *= 0.999
    assert neighbor_list_problems(_Section(graph), sigma, "s") != []


class _Section(dict):
    """A config section as a dict with attribute access (what the check reads)."""

    __getattr__ = dict.__getitem__


def _cloud(n_atoms=40, box=14.0, seed=0):
    """Atoms spread uniformly in a box (no two closer than 0.9 Å): many pairs beyond 5 Å."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n_atoms:
        p = rng.uniform(0, box, 3)
        if all(np.linalg.norm(p - q) > 0.9 for q in pos):
            pos.append(p)
    return np.asarray(pos, np.float32)


def _missed_pairs(clean, noisy, cutoff, skin):
    """Pairs within the cutoff at the noisy positions that the clean radius list left out."""
    s, r = molecule_edges(clean, "radius", cutoff, skin)
    listed = set(zip(r.tolist(), s.tolist()))
    s, r = molecule_edges(noisy, "radius", cutoff, 0.0)
    return set(zip(r.tolist(), s.tolist())) - listed


def test_the_leak_is_real_and_the_criterion_closes_it():
    """GeoRecon's noise on a 1 Å skin: pairs the clean list left out come within the cutoff (the
    model would see a graph shaped by the clean geometry). At the required skin none does."""
    clean, rng = _cloud(), np.random.default_rng(1)
    leaks = sum(
        len(_missed_pairs(clean, clean + 2.0 * rng.normal(size=clean.shape), 5.0, 1.0)) for _ in range(20)
    )
    assert leaks > 0
    sigma = 0.04
    for _ in range(200):
        noisy = clean + sigma * rng.normal(size=clean.shape)
        assert not _missed_pairs(clean, noisy, 5.0, required_skin(sigma))


def test_sampling_from_pure_noise_refuses_a_radius_list():
    """GeoRecon's reconstruction and z diagnostic take all-pairs graphs only (tasks.pretrain
    builds them so, whatever graph.neighbor_list says)."""
    pos = np.concatenate([_cloud(12, 12.0, seed=2), _cloud(9, 12.0, seed=3)])
    mols = Molecules(np.full(len(pos), 6, np.int32), pos, np.array([0, 12, 21]))
    budget = Budget(n_node=32, n_edge=256, n_graph=3)
    require_all_pairs([pack_graphs(mols, [0, 1], budget, "all_pairs")])
    graph = pack_graphs(mols, [0, 1], budget, "radius", cutoff=5.0, skin=1.0)
    assert graph.n_edge[:2].sum() < 66 + 36  # the radius list did leave pairs out
    with pytest.raises(ValueError, match="all atom pairs"):
        require_all_pairs([graph])
