"""Workdirs made from torchmd-net checkpoints (`georecon_jax.interop.torchmd`), as this library's
own runs leave them, so that its commands take them as they take its own:

  fine-tuned  (a model trained on QM9 or MD17 with an output model): ``config.json`` (task, target,
              the encoder and head of the checkpoint), ``target_stats.json`` (its Atomref as the
              per-element references, its mean/std as the target statistics; the elements of the
              training split), ``checkpoints/<step>`` (orbax). ``experiments.evaluate``,
              ``experiments.predict``, ``load_model`` and ``--config.pretrained`` read it.
  pretrained  (e.g. Coord's denoising pretraining on PCQM4Mv2): a Coord pretraining workdir,
              ``config.json`` (objective coord, σ = position_noise_scale), ``checkpoints/<step>``
              with ``encoder`` and ``heads_node_noise``. ``--config.pretrained`` reads it.

Both get ``noise_normaliser.json`` (the checkpoint's ``pos_normalizer``, read by fine-tuning's
denoising regulariser) when the checkpoint has one, and ``imported.json`` (source file, format,
hyper-parameters, where the JAX model departs from the reference's code).

The parameters are checked against the model this library builds from the written config (every
name and shape) before anything is saved.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from georecon_jax.data.records import Molecules
from georecon_jax.graphs.batching import Budget, pack_graphs
from georecon_jax.interop.torchmd import TorchmdImportError, TorchmdModel
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.noise import NoiseNormaliser
from georecon_jax.objectives.registry import get_objective
from georecon_jax.objectives.supervised import init_params
from georecon_jax.tasks.pretrain import write_noise_normaliser
from georecon_jax.tasks.property_data import load_task_data, resolve_config, write_target_stats
from georecon_jax.training.checkpoint import Checkpointer
from georecon_jax.training.loop import record_config
from georecon_jax.training.state import create_train_state

log = logging.getLogger(__name__)

KINDS = ("auto", "finetuned", "pretrained")
IMPORTED_FILE = "imported.json"


def resolve_kind(model: TorchmdModel, kind: str = "auto") -> str:
    """'finetuned' or 'pretrained'. auto: fine-tuned when the checkpoint has an output model and
    was trained on QM9 or MD17 (its ``dataset``), pretrained otherwise (e.g. Coord's PCQM4Mv2
    pretraining, whose property head was never trained)."""
    if kind not in KINDS:
        raise TorchmdImportError(f"kind={kind!r}: use one of {KINDS}")
    if kind != "auto":
        return kind
    return "finetuned" if model.head is not None and model.task is not None else "pretrained"


def _set_encoder(config: ml_collections.ConfigDict, model: TorchmdModel):
    for key, value in model.encoder.items():
        config.model.encoder[key] = value


def finetune_config(
    base: ml_collections.ConfigDict,
    model: TorchmdModel,
    target: Optional[str] = None,
    molecule: Optional[str] = None,
) -> ml_collections.ConfigDict:
    """``base`` (a QM9 or MD17 fine-tuning config) with the checkpoint's encoder, head, noise head
    and target; raises TorchmdImportError where they disagree."""
    if model.head is None:
        raise TorchmdImportError(
            "the checkpoint has no output model (no output_model.* keys): import it as a pretrained encoder "
            "(--kind=pretrained)"
        )
    c = base.copy_and_resolve_references()
    task = c.get("task")
    if model.task is not None and task != model.task:
        raise TorchmdImportError(
            f"the checkpoint was trained on {model.hparams.get('dataset')} (task {model.task}), the config is "
            f"for task {task!r}: use --config=experiments/configs/finetune_{model.task}.py"
        )
    with c.unlocked():
        if task == "qm9":
            c.target = target or model.target or c.target
            if model.target is not None and c.target != model.target:
                raise TorchmdImportError(
                    f"target={c.target!r} but the checkpoint was trained on dataset_arg="
                    f"{model.hparams.get('dataset_arg')!r} ({model.target})"
                )
        elif task == "md17":
            if molecule or model.molecule:
                c.molecule = molecule or model.molecule
            if c.data.energy_unit != "kcal/mol":
                raise TorchmdImportError(
                    f"data.energy_unit={c.data.energy_unit!r}: torchmd-net's MD17 models are in kcal/mol"
                )
            if model.atomref is not None and np.any(model.atomref != 0):
                raise TorchmdImportError(
                    "prior_model=Atomref on MD17: the JAX MD17 task has one energy offset, no per-element "
                    "references"
                )
        else:
            raise TorchmdImportError(f"task={task!r}: the config must be a QM9 or MD17 fine-tuning config")
        _set_encoder(c, model)
        c.model.head.kind = model.head
        c.model.head.hidden = 0
        c.model.denoise_head = model.has_noise_head
        if not model.has_noise_head:
            c.loss.denoise_weight = 0.0
        else:
            if model.hparams.get("denoising_weight") is not None:
                c.loss.denoise_weight = float(model.hparams["denoising_weight"])
            if model.noise_scale:
                c.loss.denoise_sigma = float(model.noise_scale)
        if task == "qm9":
            c.model.reference = "least_squares" if model.atomref is not None else "none"
        c.pretrained = None
    return c


def pretraining_config(base: ml_collections.ConfigDict, model: TorchmdModel) -> ml_collections.ConfigDict:
    """``base`` (a Coord pretraining config) with the checkpoint's encoder and noise scale."""
    c = base.copy_and_resolve_references()
    if "objective" not in c or c.objective.name != "coord":
        raise TorchmdImportError(
            "a pretrained checkpoint is written as a Coord run: pass the coord.py config"
        )
    with c.unlocked():
        _set_encoder(c, model)
        if model.noise_scale:
            c.objective.sigma_min = c.objective.sigma_max = float(model.noise_scale)
    return c


def _probe_graph():
    """One padded methane (Å), to build the model's parameter shapes on."""
    z = np.array([6, 1, 1, 1, 1])
    pos = np.array(
        [[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]]
    )
    return pack_graphs(Molecules.from_lists([z], [pos]), [0], Budget(8, 16, 2))


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = tuple(v.shape)
    return out


def check_tree(ours, expected, what: str):
    """Raises TorchmdImportError listing every parameter whose name or shape differs."""
    a, b = _flat(ours), _flat(jax.tree_util.tree_map(lambda x: x, expected))
    problems = [f"{k}: imported {a[k]}, model {b[k]}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    problems += [f"{k}: imported, not in the model" for k in sorted(set(a) - set(b))]
    problems += [f"{k}: in the model, not imported" for k in sorted(set(b) - set(a))]
    if problems:
        raise TorchmdImportError(
            f"the imported parameters do not fit the {what}: " + "; ".join(problems[:10])
        )


def _prepare(workdir: str):
    for name in ("config.json", "checkpoints"):
        if os.path.exists(os.path.join(workdir, name)):
            raise TorchmdImportError(f"{workdir} already holds a run ({name}): use a new --workdir")
    os.makedirs(workdir, exist_ok=True)


def _save(workdir: str, params, step: int, model: TorchmdModel, extra: dict):
    params = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
    state = create_train_state(None, params, optax.identity(), use_ema=False).replace(step=jnp.asarray(step))
    ckpt = Checkpointer(workdir, max_to_keep=1)
    try:
        ckpt.save(step, state)
    finally:
        ckpt.close()
    if model.noise_mean is not None:
        source = f"pos_normalizer of {model.source} (AccumulatedNormalization, Å)"
        write_noise_normaliser(workdir, NoiseNormaliser(model.noise_mean, model.noise_std, source))
    with open(os.path.join(workdir, IMPORTED_FILE), "w") as f:
        json.dump({**model.provenance(), **extra}, f, indent=1)


def write_finetune_workdir(model: TorchmdModel, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """A fine-tuning workdir (see the module doc) from a converted checkpoint and its config
    (`finetune_config`). Loads the task's data once, to record the training elements. Returns
    what ``imported.json`` holds."""
    _prepare(workdir)
    resolved = resolve_config(config)
    module = create_property_model(resolved.model)
    shapes = jax.eval_shape(
        lambda g: init_params(module, g, jax.random.PRNGKey(0), with_denoise=model.has_noise_head),
        _probe_graph(),
    )
    check_tree(model.params, shapes["params"], "fine-tuning model of this config")
    stats = {"mean": float(model.mean), "std": float(model.std)}
    if resolved.task == "qm9":
        rows = resolved.model.encoder.max_z + 1
        atomref = np.zeros(rows)
        if model.atomref is not None:
            k = min(rows, len(model.atomref))
            atomref[:k] = model.atomref[:k]
            if np.any(model.atomref[k:] != 0):
                log.warning(
                    "Atomref values beyond Z = %d dropped (the encoder has no embedding for them)", rows - 1
                )
        partial = {"target": resolved.target, "atomref": atomref.tolist(), "stats": stats}
    else:  # the mean as the energy offset, added on the host in float64 (torch adds it in float32)
        partial = {"target": "energy", "energy_offset": float(model.mean), "stats": {**stats, "mean": 0.0}}
    record_config(config, workdir)
    data = load_task_data(resolved, partial)
    write_target_stats(workdir, data.saved)
    extra = {"kind": "finetuned", "workdir": os.path.abspath(workdir)}
    _save(workdir, model.params, model.step, model, extra)
    log.info(
        "%s -> %s: fine-tuned %s %s model (%s head%s), step %d",
        model.source,
        workdir,
        resolved.task,
        resolved.target,
        model.head,
        ", noise head" if model.has_noise_head else "",
        model.step,
    )
    return {**model.provenance(), **extra}


def write_pretraining_workdir(model: TorchmdModel, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """A Coord pretraining workdir (see the module doc) from a converted checkpoint and its config
    (`pretraining_config`); the checkpoint's output model, if any, is left out (fine-tuning
    starts its head afresh). Returns what ``imported.json`` holds."""
    _prepare(workdir)
    objective = get_objective(config)
    module = objective.create_model()
    shapes = jax.eval_shape(
        lambda g: module.init(jax.random.PRNGKey(0), g, jax.random.PRNGKey(1), method=objective.forward),
        _probe_graph(),
    )["params"]
    params = {"encoder": model.params["encoder"]}
    if model.has_noise_head:
        params["heads_node_noise"] = model.params["node_noise"]
    else:
        log.warning("the checkpoint has no noise head: the workdir holds the encoder only")
        shapes = {"encoder": shapes["encoder"]}
    check_tree(params, shapes, "Coord pretraining model of this config")
    record_config(config, workdir)
    extra = {"kind": "pretrained", "workdir": os.path.abspath(workdir)}
    if model.head is not None:
        extra["left_out"] = "output_model (the property head): fine-tuning starts its head afresh"
    _save(workdir, params, model.step, model, extra)
    log.info(
        "%s -> %s: Coord pretraining workdir (encoder%s), step %d",
        model.source,
        workdir,
        " + noise head" if model.has_noise_head else "",
        model.step,
    )
    return {**model.provenance(), **extra}
