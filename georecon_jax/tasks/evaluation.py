"""Test-set evaluation of a fine-tuned checkpoint: MAE with units, results.json, results.md, parity PNGs.

Everything comes from the workdir: ``config.json`` (the model and data), ``target_stats.json``
(references and target statistics; nothing is refitted) and the checkpoint (``best`` by default,
``latest`` or a step number). One device, fixed batch order, float64 sums on the host: the same
checkpoint gives the same numbers every time.

Units: QM9 energies (homo, lumo, gap, zpve, U0, U, H, G) are reported in meV, other targets in
their own unit (D, a0³, a0², cal/(mol K)); MD17 energies in kcal/mol and forces in kcal/mol/Å
(and meV, meV/Å).

A folder that is not a fine-tuning workdir (a pretraining run, a pair fine-tuning run, anything
else) is refused with a `WorkdirError` that names its kind and where its own results are.
"""

from __future__ import annotations

import logging
import json
import os
from typing import List, Optional, Union

import jax
import ml_collections
import numpy as np

from georecon_jax import plots
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.supervised import TargetStats, make_predict_fn
from georecon_jax.tasks.metrics import energy_unit_scale, property_metrics
from georecon_jax.tasks.property_data import (
    STATS_FILE,
    load_task_data,
    make_batchers,
    read_target_stats,
    resolve_config,
    run_label,
)
from georecon_jax.training.checkpoint import CheckpointError, checkpoint_dir, restore_params
from georecon_jax.training.loop import complete_saved_config
from georecon_jax.training.state import is_primary

log = logging.getLogger(__name__)


def find_checkpoint(workdir: str, checkpoint: Union[str, int] = "best"):
    """(step folder, label). ``best`` falls back to ``latest`` when no best checkpoint exists."""

    def steps_in(d):
        return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []

    main = checkpoint_dir(workdir)
    if str(checkpoint) == "best":
        best = os.path.join(workdir, "best", "checkpoints")
        if steps_in(best):
            return os.path.join(best, str(steps_in(best)[-1])), "best"
        checkpoint = "latest"
    if str(checkpoint) == "latest":
        if not steps_in(main):
            raise CheckpointError(f"no checkpoint under {main}")
        return os.path.join(main, str(steps_in(main)[-1])), "latest"
    step = int(checkpoint)
    if step not in steps_in(main):
        raise CheckpointError(f"no checkpoint of step {step} under {main} (have {steps_in(main)})")
    return os.path.join(main, str(step)), f"step{step}"


class WorkdirError(ValueError):
    """A folder read as a fine-tuning workdir is of another kind, or no workdir at all; the message
    (one line) names the folder, its kind and where that kind's results are."""


FINETUNE_TASKS = ("qm9", "md17")
PRETRAINING_OBJECTIVES = {
    "georecon": "GeoRecon",
    "coord": "Coord",
    "coord_ladder": "Coord (noise ladder)",
    "3dmrl": "3DMRL",
}
_USE = "`evaluate` reads fine-tuning workdirs (made by experiments.finetune)"


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _pretraining_report(workdir: str) -> str:
    path = os.path.join(workdir, "summary.json")
    summary = _read_json(path)
    if not isinstance(summary, dict):
        return f"its own report, {path}, is written when the run ends (there is none yet)"
    if summary.get("reconstruction_rmsd_angstrom") is not None:
        what = (
            f"reconstruction RMSD {summary['reconstruction_rmsd_angstrom']:.3g} Å over "
            f"{summary.get('num_molecules', '?')} held-out molecules"
        )
    elif summary.get("final_train_loss") is not None:
        what = f"final training loss {summary['final_train_loss']:.4g}"
    else:
        what = "its summary"
    return f"its own report is {path} ({what})"


def check_finetune_workdir(workdir: str) -> dict:
    """The raw ``config.json`` of a fine-tuning workdir (QM9 or MD17 task, ``target_stats.json``).

    Raises:
      WorkdirError naming the kind of the folder otherwise: a pretraining run (GeoRecon, Coord,
      3DMRL; its report is its ``summary.json``), a pair fine-tuning run or one of its splits (their
      results are in ``results.json`` / ``summary.json``), or no workdir at all.
    """
    if not os.path.isdir(workdir):
        raise WorkdirError(f"{workdir}: no such folder; {_USE}")
    config = _read_json(os.path.join(workdir, "config.json"))
    if not isinstance(config, dict):
        if os.path.isdir(os.path.join(workdir, "splits")) or os.path.exists(
            os.path.join(workdir, "results.json")
        ):
            results = os.path.join(workdir, "results.json")
            where = (
                f"its results are already in {results} and results.md"
                if os.path.exists(results)
                else f"its results go to {results} when every split has finished (none yet)"
            )
            raise WorkdirError(
                f"{workdir} is a pair fine-tuning run (experiments.finetune_pairs), not a "
                f"QM9/MD17 fine-tuning workdir: {where}; {_USE}"
            )
        raise WorkdirError(f"{workdir} is not a workdir (no readable config.json); {_USE}")
    objective = config.get("objective")
    if isinstance(objective, dict):
        name = objective.get("name")
        kind = PRETRAINING_OBJECTIVES.get(name, f"{name!r}")
        raise WorkdirError(
            f"{workdir} is a {kind} pretraining run, not a fine-tuning workdir: {_USE}; "
            f"{_pretraining_report(workdir)}"
        )
    if config.get("task") in FINETUNE_TASKS:
        if not os.path.exists(os.path.join(workdir, STATS_FILE)):
            raise WorkdirError(
                f"{workdir} is a {config['task']} fine-tuning run without {STATS_FILE} (it has "
                "not started training): run experiments.finetune in it first"
            )
        return config
    if isinstance(config.get("data"), dict) and "init_from" in config:
        summary = os.path.join(workdir, "summary.json")
        parent = os.path.dirname(os.path.dirname(os.path.abspath(workdir)))
        raise WorkdirError(
            f"{workdir} is one split of a pair fine-tuning run (experiments.finetune_pairs), not a "
            f"QM9/MD17 fine-tuning workdir: its test metrics are in {summary}, all splits' in "
            f"{os.path.join(parent, 'results.json')}; {_USE}"
        )
    raise WorkdirError(
        f"{workdir} is not a fine-tuning workdir (its config.json has task="
        f"{config.get('task')!r}, no objective section); {_USE}"
    )


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config of a fine-tuning workdir, its fields added since it was saved filled in
    (`loop.complete_saved_config`); `WorkdirError` for a folder of another kind."""
    return resolve_config(ml_collections.ConfigDict(complete_saved_config(check_finetune_workdir(workdir))))


def predict_split(workdir: str, checkpoint: Union[str, int] = "best", split: str = "test"):
    """Predictions and references (totals, target units) of every molecule of ``split``."""
    config = load_workdir_config(workdir)
    saved = read_target_stats(workdir)
    data = load_task_data(config, saved)
    batcher = make_batchers(config, data, 1, names=(split,))[split]
    step_dir, label = find_checkpoint(workdir, checkpoint)
    step, raw = restore_params(step_dir)
    params = raw.get("ema_params") or raw["params"]
    model = create_property_model(config.model)
    with_forces = config.task == "md17"
    predict = jax.jit(make_predict_fn(model, TargetStats(**saved["stats"]), with_forces))
    s = data.splits[split]
    ids, y_pred, f_pred, f_ref = [], [], [], []
    for batch in batcher.epoch_batches():
        graph = jax.tree_util.tree_map(lambda x: x[0], batch)
        y, forces, _ = predict(params, graph, graph.nodes.positions)
        real = graph.globals.graph_id >= 0
        ids.append(graph.globals.graph_id[real])
        y_pred.append(np.asarray(y, np.float64)[real])
        if with_forces:
            node_real = np.arange(len(graph.nodes.atomic_numbers)) < int(np.sum(graph.n_node[real]))
            f_pred.append(np.asarray(forces, np.float64)[node_real])
            f_ref.append(np.asarray(graph.nodes.forces, np.float64)[node_real])
    ids = np.concatenate(ids)
    ref_total = s.reference[ids]
    out = {
        "config": config,
        "saved": saved,
        "step": int(step),
        "label": label,
        "step_dir": step_dir,
        "ids": ids,
        "reference": s.molecules.targets[ids, 0].astype(np.float64) + ref_total,
        "predicted": np.concatenate(y_pred) + ref_total,
    }
    if with_forces:
        out["forces_reference"], out["forces_predicted"] = np.concatenate(f_ref), np.concatenate(f_pred)
    return out


def results_record(workdir: str, config, p: dict, split: str, metrics: dict) -> dict:
    """What results.json holds for one evaluation (``p``: `predict_split`'s output). ``label`` (and,
    for MD17, ``molecule``) is `property_data.run_label`: the data's own name, never a default."""
    label = run_label(config)
    return {
        "workdir": os.path.abspath(workdir),
        "task": config.task,
        "target": config.target,
        "label": label,
        "molecule": label if config.task == "md17" else None,
        "checkpoint": p["label"],
        "step": p["step"],
        "split": split,
        "num_molecules": int(len(p["ids"])),
        "metrics": metrics,
        "pretrained": config.get("pretrained"),
    }


def _save_errors(path: str, p: dict, metrics: dict) -> None:
    """Per-molecule absolute errors in the units of results.json (``ids``, ``abs_error``; MD17 also
    ``force_abs_error``: the mean over a frame's force components), whose means are the reported
    MAEs: what paired comparisons and bootstraps over test molecules need (`experiments.study`)."""
    out = {"ids": np.asarray(p["ids"])}
    err = np.abs(p["predicted"] - p["reference"])
    key = "energy_mae" if "forces_predicted" in p else f"{p['config'].target}_mae"
    out["abs_error"] = err * (metrics[key]["value"] / max(float(err.mean()), 1e-300))
    out["abs_error_unit"] = np.asarray(metrics[key]["unit"])
    if "forces_predicted" in p:
        f = np.abs(p["forces_predicted"] - p["forces_reference"]).reshape(len(err), -1)
        fe = f.mean(axis=1)
        out["force_abs_error"] = fe * (metrics["force_mae"]["value"] / max(float(f.mean()), 1e-300))
        out["force_abs_error_unit"] = np.asarray(metrics["force_mae"]["unit"])
    np.savez(path + ".tmp.npz", **out)
    os.replace(path + ".tmp.npz", path)


def markdown_table(results: List[dict]) -> str:
    """A Markdown table, one row per (run, metric)."""
    lines = [
        "| task | target | checkpoint | split | molecules | metric | value | unit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = (
            r["task"] if r["task"] == "qm9" else f"{r['task']} ({r.get('label') or r.get('molecule') or ''})"
        )
        for k, m in r["metrics"].items():
            lines.append(
                f"| {name} | {r['target']} | {r['checkpoint']} (step {r['step']}) | "
                f"{r['split']} | {r['num_molecules']} | {k} | {m['value']:.5g} | {m['unit']} |"
            )
    return "\n".join(lines) + "\n"


def evaluate(
    workdir: str,
    checkpoint: Union[str, int] = "best",
    split: str = "test",
    output_dir: Optional[str] = None,
    make_plots: bool = True,
    verbose: bool = True,
) -> dict:
    """Evaluates one fine-tuning workdir; writes results.json, results.md and parity plots into
    ``output_dir`` (default: the workdir for the best checkpoint, ``<workdir>/eval_<checkpoint>``
    otherwise). Returns the results dict."""
    p = predict_split(workdir, checkpoint, split)
    config = p["config"]
    output_dir = output_dir or (
        workdir if p["label"] == "best" else os.path.join(workdir, f"eval_{p['label']}")
    )
    metrics = property_metrics(
        config.task,
        config.target,
        p["saved"]["unit"],
        p["predicted"],
        p["reference"],
        p.get("forces_predicted"),
        p.get("forces_reference"),
    )
    results = results_record(workdir, config, p, split, metrics)
    if not is_primary():  # the other processes of a multi-host run computed the same; 0 writes
        return results
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    _save_errors(os.path.join(output_dir, f"errors_{split}.npz"), p, metrics)
    table = markdown_table([results])
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(f"# Fine-tuning results: {os.path.abspath(workdir)}\n\n{table}")
    if make_plots:
        saved = p["saved"]
        if config.task == "qm9":
            unit, scale = energy_unit_scale(saved["unit"])
            key = f"{config.target}_mae"
            plots.parity_plot(
                p["reference"] * scale,
                p["predicted"] * scale,
                os.path.join(output_dir, f"parity_{config.target}.png"),
                config.target,
                unit,
                metrics[key]["value"],
                title=f"QM9 {split}, {p['label']} step {p['step']}",
            )
        else:
            unit, name = saved["unit"], run_label(config)
            plots.parity_plot(
                p["reference"] - saved["energy_offset"],
                p["predicted"] - saved["energy_offset"],
                os.path.join(output_dir, "parity_energy.png"),
                "energy - mean train energy",
                unit,
                metrics["energy_mae"]["value"],
                title=f"{name} {split}, {p['label']} step {p['step']}",
            )
            plots.parity_plot(
                p["forces_reference"],
                p["forces_predicted"],
                os.path.join(output_dir, "parity_forces.png"),
                "force component",
                f"{unit}/Å",
                metrics["force_mae"]["value"],
                title=f"{name} {split}, {p['label']} step {p['step']}",
            )
    if verbose:
        log.info(
            f"{workdir}: {split} split, {len(p['ids'])} molecules, {p['label']} checkpoint (step {p['step']}): "
            + ", ".join(f"{k} {m['value']:.4g} {m['unit']}" for k, m in metrics.items())
        )
    return results
