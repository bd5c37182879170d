"""The registry of pretraining objectives, and the contract each one fulfils.

An objective is one file in ``georecon_jax/objectives/`` that subclasses `Objective` and
registers itself with `@register` (the package's ``__init__`` imports every file in it, so this
module imports none of them). It owns:

  * ``validate()``: the problems with its config section (messages naming the field);
  * ``heads()``: the modules it adds on top of the shared encoder (``{name: module}``; they
    appear in the parameters as ``heads_<name>/``);
  * ``forward(model, graph, key)``: draws its noise from ``key``, runs the model, and returns
    typed outputs (a NamedTuple). It runs inside ``model.apply`` / ``model.init``, so the heads
    it calls are exactly the parameters that exist;
  * ``loss(outputs, graph)``: a pure function of those outputs and the batch ->
    (per-graph loss [n_graph], {metric: per-graph values [n_graph]}); the training step averages
    both over real molecules and devices;
  * optionally ``report(model, params, graphs)``: numbers for ``summary.json`` at the end of a run;
  * ``noise_scales()``: the largest σ (Å) of each Gaussian displacement it applies to the clean
    structure (default: ``objective.sigma_max`` when the section has one). `problems` refuses a
    radius neighbour list whose skin does not cover them (`noise.neighbor_list_problems`).

``experiments/configs/coord_ladder.py`` with ``objectives/coord_ladder.py`` is the worked example
of adding one (README, "Adding an objective").
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Optional, Type

import flax.linen as nn
import jax
import ml_collections

from georecon_jax.models.pretrain import create_model
from georecon_jax.objectives.noise import NoiseNormaliser, neighbor_list_problems

_REGISTRY: Dict[str, Type["Objective"]] = {}


class Objective:
    """Base class of a pretraining objective on molecular graphs (see the module docstring)."""

    name: str = ""
    #: the job that trains it: the module of ``georecon_jax.tasks`` whose ``run(config, workdir,
    #: objective=...)`` runs it, "pretrain" (padded molecular GraphsTuples of QM9 or an SDF file) or
    #: "mrl3d" (`PairBatch`es of two molecules)
    task: str = "pretrain"
    #: panels of the learning-curve plot: {title: ((split, metric, label), ...)}
    curves: Mapping[str, tuple] = {}

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config  # the whole run config; the objective reads its sections
        self.cfg = config.objective

    def validate(self) -> List[str]:
        return []

    def noise_scales(self) -> Dict[str, float]:
        """{config field: σ (Å)}: the largest scale of each per-coordinate Gaussian displacement
        ``forward`` applies to the clean positions (evaluated on the batch's candidate pairs)."""
        sigma = self.cfg.get("sigma_max")
        return {"objective.sigma_max": sigma} if sigma is not None else {}

    def heads(self) -> Dict[str, nn.Module]:
        return {}

    def create_model(self):
        """The model: the shared encoder of ``config.model`` plus this objective's heads."""
        return create_model(self.config.model, self.heads())

    def forward(self, model, graph, key):
        raise NotImplementedError

    def loss(self, outputs, graph):
        raise NotImplementedError

    def report(self, model, params, graphs: Iterable) -> Dict:
        """End-of-run numbers (held-out graphs, one device); none by default."""
        return {}

    def noise_normaliser(self) -> Optional[NoiseNormaliser]:
        """The statistics of the displacements its node-noise head learns (written to the
        workdir for fine-tuning's denoising regulariser); None when it has no such head."""
        return None

    # -- derived, not overridden -------------------------------------------------------------
    def problems(self) -> List[str]:
        """``validate()`` plus what every objective is checked for: that a radius neighbour list
        (``graph.neighbor_list='radius'``, built from the clean positions) has a skin covering each
        of its `noise_scales` (`noise.neighbor_list_problems`), so that it cannot leak the clean
        geometry. What the pretraining task refuses a config for."""
        problems = list(self.validate())
        for field, sigma in self.noise_scales().items():
            problems += neighbor_list_problems(self.config.get("graph"), sigma, field)
        return problems

    def loss_fn(self, model) -> Callable:
        """``loss_fn(params, graph, key) -> (per_graph_loss, metrics)`` for the training step."""

        def loss_fn(params, graph, key):
            return self.loss(model.apply(params, graph, key, method=self.forward), graph)

        return loss_fn

    def init(self, model, graph, key):
        """Parameters of ``model``: exactly those that ``forward`` touches."""
        return jax.jit(lambda k, g: model.init(k, g, k, method=self.forward))(key, graph)


def register(cls: Type[Objective]) -> Type[Objective]:
    """Class decorator: makes an objective available as ``objective.name = cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"two objectives are named {cls.name!r}: {_REGISTRY[cls.name].__name__} and {cls.__name__}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def names() -> List[str]:
    return sorted(_REGISTRY)


def get_objective(config: ml_collections.ConfigDict) -> Objective:
    """The objective named by ``config.objective.name``, built on ``config``."""
    name = config.objective.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"objective.name={name!r}: unknown objective; registered: {names()}")
    return _REGISTRY[name](config)
