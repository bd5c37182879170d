"""The GeoRecon study from one command (issue 15): pretraining arms x fine-tuning tasks x seeds.
With ``--config=experiments/configs/study_mrl.py:<preset>``, the 3DMRL study (issue 16; cells and
results in experiments/study_mrl.py) with the same flags and cell rules.

  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study
  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study \\
      --rebuild_only --out=results/study_cpu        # tables and figures from the cells alone
  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study --list

Cells (each its own workdir under WORKDIR, each one single command of this codebase):
  pretrain/<arm>[_md17]/seed<p>      experiments.pretrain (georecon.py / coord.py / coord_ladder.py
                                     at the preset's size, the arm's ablation overlay,
                                     config.seed=p); _md17: the MD17 fine-tuning encoder (no vector
                                     norm) when the preset does not set one norm for every cell
  finetune/<task>/<arm>/seed<k>      experiments.finetune (finetune_qm9.py or finetune_md17.py,
                                     config.seed=k) from pretraining seed pretrain_seeds[k mod P],
                                     or from scratch

A cell is finished when it holds ``study_cell.json`` (written after its command succeeded): a
finished cell is never run again; an interrupted one is resumed by its own command (every command
resumes from its last complete checkpoint). So the study may be stopped at any moment (Ctrl-C,
SIGTERM, SIGKILL: the running command dies with it) and the same command finishes it.

At the end (and with --rebuild_only) WORKDIR/results.md, results.json and the figures are written
from the cells' own results.json, errors_test.npz, metrics.jsonl and summary.json: mean ± std over
seeds per arm and task; the paired differences of `comparisons` (each arm to scratch, GeoRecon to
each control, each ablation to its base) with t-intervals over seeds (georecon_jax/studies/stats.py)
and verdict lines generated from them; the z diagnostic of every GeoRecon pretraining; the wall
time of every cell. With ``--config.records=DIR`` each finished cell's small files are copied to
DIR as it finishes (experiments/study_common.py).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import sys
import time
from typing import List

import numpy as np
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "experiments/configs/study.py:<preset>", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the cells and the study's results go.")
flags.DEFINE_bool("rebuild_only", False, "Only rebuild results.md/json and figures from the cells.")
flags.DEFINE_bool("list", False, "Print the cells and their state, run nothing.")
flags.DEFINE_integer(
    "jobs", 1, "Cells run at once (pretrainings first, then fine-tunings); 2 gains ~1.2x on 2 cores."
)
flags.DEFINE_string("out", "", "Also copy results.md, results.json and the figures here.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

from experiments.study_common import (  # noqa: E402,F401  (also this module's names)
    CELL_FILE,
    RUNNING,
    Cell,
    _read,
    _steps_reached,
    cell_dir,
    cell_record,
    run_cell,
    run_study,
)

FIGURES = ("study_bars.png", "study_curves.png", "study_z_diagnostic.png", "study_pretraining.png")
# a pretraining counts as flattened when its validation loss fell by less than this fraction over
# the last quarter of its steps
FLAT = 0.05


# ---------------------------------------------------------------------------------------------
# Cells


def tasks_of(c, arm: str) -> List[str]:
    from experiments.configs.study import EVERY_TASK_ARMS

    every = list(c.qm9_targets) + ([c.md17_molecule] if c.md17_molecule else [])
    return every if arm in EVERY_TASK_ARMS else [t for t in every if t in tuple(c.ablation_tasks)]


def seeds_of(c, arm: str) -> List[int]:
    """Fine-tuning seeds of an arm (the main arms': ``seeds``; the ablations': ``ablation_seeds``)."""
    from experiments.configs.study import MAIN_ARMS

    return list(c.seeds if arm in MAIN_ARMS else c.ablation_seeds)


def pretrain_seed(c, seed: int) -> int:
    """The pretraining a fine-tuning seed starts from: ``pretrain_seeds[seed mod P]``."""
    return int(c.pretrain_seeds[seed % len(c.pretrain_seeds)])


def _loop_overrides(config_module, size: str, steps: int, eval_every: int = 0) -> List[str]:
    """num_steps, and eval/checkpoint intervals (``eval_every``, else no longer than half the run)."""
    base = config_module.get_config(size)
    out = [f"--config.num_steps={steps}"]
    for field in ("eval_every", "checkpoint_every"):
        every = eval_every or min(base[field], max(steps // 2, 1))
        if every != base[field]:
            out.append(f"--config.{field}={every}")
    return out


def _encoder_overrides(c) -> List[str]:
    out = [f"--config.model.encoder.{k}={v}" for k, v in c.encoder.items()]
    if c.vec_norm:
        out.append(f"--config.model.encoder.vec_norm={c.vec_norm}")
    return out


def _pretrain_cells(c, workdir: str, common: List[str]):
    """The pretraining cells, and (arm, encoder, pretraining seed) -> cell name."""
    from experiments.configs import coord, coord_ladder, georecon
    from experiments.configs.study import ARMS

    modules = {"georecon.py": georecon, "coord.py": coord, "coord_ladder.py": coord_ladder}
    py = sys.executable
    cells, pretrained = [], {}
    for arm in c.arms:
        spec_ = ARMS[arm]
        file, overlays = spec_.get("pretrain"), spec_.get("overlays", ())
        if file is None or spec_.get("reuse"):
            continue
        tasks = tasks_of(c, arm)
        for other, o in ARMS.items():  # fine-tuning-only arms that reuse this pretraining
            if o.get("reuse") == arm and other in c.arms:
                tasks += tasks_of(c, other)
        # one pretraining serves QM9 and MD17 when every cell has the same vector norm
        encoders = (["qm9"] if any(t in c.qm9_targets for t in tasks) else []) + (
            ["md17"] if c.md17_molecule in tasks and not c.vec_norm else []
        )
        if c.md17_molecule in tasks and c.vec_norm and "qm9" not in encoders:
            encoders.append("qm9")
        for enc in encoders:
            size = "md17" if enc == "md17" and not c.size else c.size  # paper-scale MD17 encoder
            spec = size + "".join("+" + o for o in overlays)
            for seed in c.pretrain_seeds:
                name = f"pretrain/{arm}{'_md17' if enc == 'md17' else ''}/seed{seed}"
                cmd = [py, "-m", "experiments.pretrain", f"--config=experiments/configs/{file}:{spec}"]
                cmd += _loop_overrides(modules[file], spec, c.pretrain_steps)
                cmd += [f"--config.seed={seed}", *common, *_encoder_overrides(c)]
                if c.pretrain_batch:
                    cmd.append(f"--config.batch_size={c.pretrain_batch}")
                if enc == "md17" and c.size:
                    cmd.append("--config.model.encoder.vec_norm=none")  # what finetune_md17 loads
                if file == "georecon.py":
                    cmd += [
                        f"--config.objective.num_recon_molecules={c.num_recon_molecules}",
                        f"--config.objective.num_sampling_steps={c.num_sampling_steps}",
                    ]
                cmd.append(f"--workdir={os.path.join(workdir, name)}")
                cells.append(Cell(name, "pretrain", arm, seed, cmd))
                pretrained[(arm, enc, seed)] = name
    return cells, pretrained


def _finetune_command(c, task: str, extra_steps: int = 0) -> List[str]:
    """The single fine-tuning command of a task at the preset's size and budget."""
    from experiments.configs import finetune_md17, finetune_qm9

    if task == c.md17_molecule:
        cmd = [
            "-m",
            "experiments.finetune",
            f"--config=experiments/configs/finetune_md17.py:{c.size}",
            f"--config.molecule={task}",
            f"--config.data.data_dir={os.path.abspath(c.md17_dir)}",
        ]
        cmd += _loop_overrides(finetune_md17, c.size, c.md17_finetune_steps + extra_steps, c.eval_every)
        for field, value in (
            ("num_train", c.md17_train_frames),
            ("num_val", c.md17_val_frames),
            ("num_test_molecules", c.md17_test_frames),
        ):
            if value:
                cmd.append(f"--config.data.{field}={value}")
    else:
        cmd = [
            "-m",
            "experiments.finetune",
            f"--config=experiments/configs/finetune_qm9.py:{c.size}",
            f"--config.target={task}",
        ]
        cmd += _loop_overrides(finetune_qm9, c.size, c.finetune_steps + extra_steps, c.eval_every)
        if c.qm9_labels:
            cmd.append(f"--config.data.num_train_labels={c.qm9_labels}")
        if c.qm9_eval_molecules:
            cmd.append(f"--config.data.num_eval_molecules={c.qm9_eval_molecules}")
        if c.qm9_test_molecules is not None:  # 0: the whole test split
            cmd.append(f"--config.data.num_test_molecules={c.qm9_test_molecules}")
    if c.patience:  # on the validation MAE for QM9, the reference's validation loss for MD17
        cmd.append(f"--config.early_stopping.patience={c.patience}")
        if task != c.md17_molecule:
            cmd.append("--config.select_on=mae")
    return cmd


def build_cells(c, workdir: str) -> List[Cell]:
    from experiments.configs.study import ARMS

    for arm in c.arms:
        if arm not in ARMS:
            raise app.UsageError(f"unknown arm {arm!r}: use names of study.ARMS ({', '.join(ARMS)})")
    cache = os.path.abspath(os.path.join(workdir, "xla_cache"))
    common = [f"--config.compilation_cache_dir={cache}"]
    cells, pretrained = _pretrain_cells(c, workdir, common)
    for arm in c.arms:
        spec = ARMS[arm]
        source = spec.get("reuse") or arm
        for task in tasks_of(c, arm):
            md17 = task == c.md17_molecule
            for seed in seeds_of(c, arm):
                name = f"finetune/{task}/{arm}/seed{seed}"
                extra = c.compute_matched_extra_steps if spec.get("compute_matched") else 0
                cmd = [sys.executable, *_finetune_command(c, task, extra)]
                cmd.append(f"--config.loss.denoise_normaliser={spec.get('normaliser', c.denoise_normaliser)}")
                cmd += [f"--config.seed={seed}", *common, *_encoder_overrides(c)]
                enc = "md17" if md17 and not c.vec_norm else "qm9"
                needs = pretrained.get((source, enc, pretrain_seed(c, seed)))
                if spec.get("pretrain") and needs is None:
                    raise app.UsageError(f"arm {arm} reuses {source}'s pretraining: add {source} to the arms")
                if needs:
                    cmd.append(f"--config.pretrained={os.path.abspath(os.path.join(workdir, needs))}")
                cmd.append(f"--workdir={os.path.join(workdir, name)}")
                cells.append(Cell(name, "finetune", arm, seed, cmd, task=task, needs=needs))
    return cells


# ---------------------------------------------------------------------------------------------
# Results


def _metric_names(c, task: str) -> List[tuple]:
    """(column name, results.json metric, errors_test.npz array) of a task."""
    if task == c.md17_molecule:
        return [
            (f"{task} forces", "force_mae", "force_abs_error"),
            (f"{task} energy", "energy_mae", "abs_error"),
        ]
    return [(task, f"{task}_mae", "abs_error")]


def collect(c, workdir: str, cells: List[Cell]) -> dict:
    out = {"finetune": {}, "pretrain": {}, "cells": {}, "missing": []}
    for cell in cells:
        rec = cell_record(workdir, cell, c.records)
        if rec is None:
            out["missing"].append(cell.name)
            continue
        out["cells"][cell.name] = rec
        work = cell_dir(workdir, cell, c.records)
        if cell.kind == "pretrain":
            s = _read(os.path.join(work, "summary.json"))
            out["pretrain"].setdefault(cell.arm + ("_md17" if "_md17/" in cell.name else ""), {})[
                cell.seed
            ] = {
                "final_train_loss": s.get("final_train_loss"),
                "z_diagnostic": s.get("z_diagnostic"),
                "reconstruction_rmsd_angstrom": s.get("reconstruction_rmsd_angstrom"),
                "wall_seconds": rec["wall_seconds"],
                "curve": validation_curve(os.path.join(work, "metrics.jsonl")),
            }
            continue
        r = _read(os.path.join(work, "results.json"))
        errors = np.load(os.path.join(work, "errors_test.npz"))
        order = np.argsort(errors["ids"])
        with open(os.path.join(work, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for col, metric, arr in _metric_names(c, cell.task):
            m = r["metrics"][metric]
            key = "mae" if metric.endswith(f"{cell.task}_mae") else metric  # metrics.jsonl's name
            curve = {
                split: [(row["step"], row[key]) for row in rows if row.get("split") == split and key in row]
                for split in ("train", "validation")
            }
            out["finetune"].setdefault(col, {}).setdefault(cell.arm, {})[cell.seed] = {
                "value": m["value"],
                "unit": m["unit"],
                "ids": errors["ids"][order],
                "errors": errors[arr][order],
                "curve": curve,
                "num_molecules": r["num_molecules"],
                "wall_seconds": rec["wall_seconds"],
            }
    return out


def validation_curve(path: str) -> List[tuple]:
    """(step, validation loss) of a run's metrics.jsonl ([] when it has none)."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [(r["step"], r["loss"]) for r in rows if r.get("split") == "validation" and "loss" in r]


def last_quarter_drop(curve: List[tuple]) -> float:
    """The relative fall of the validation loss over the last quarter of the steps (nan if unknown)."""
    if len(curve) < 2:
        return float("nan")
    steps, loss = np.array(curve, dtype=float).T
    before = loss[steps <= steps[-1] * 0.75]
    return float((before[-1] - loss[-1]) / before[-1]) if len(before) else float("nan")


def pretraining_lines(data: dict) -> List[str]:
    """Per pretraining arm: the final validation loss and whether the curve had flattened."""
    rows = []
    for arm, seeds in data["pretrain"].items():
        curves = [v["curve"] for v in seeds.values() if v.get("curve")]
        if not curves:
            continue
        final = np.mean([c_[-1][1] for c_ in curves])
        drop = np.array([last_quarter_drop(c_) for c_ in curves])
        verdict = "flattened" if np.all(drop < FLAT) else "still falling"
        rows.append(
            f"| {arm} | {len(curves)} | {curves[0][-1][0]} | {final:.4g} | "
            f"{', '.join(f'{100 * d:.1f} %' for d in drop)} | {verdict} |"
        )
    if not rows:
        return []
    return [
        "",
        "## Pretraining curves",
        "",
        f"Validation loss at the last step (mean over seeds) and its fall over the last quarter of the "
        f"steps per seed; criterion: below {100 * FLAT:.0f} % = flattened. Figure: study_pretraining.png.",
        "",
        "| pretraining | seeds | steps | final validation loss | fall over the last quarter | |",
        "|---|---:|---:|---:|---|---|",
        *rows,
    ]


def summarise(c, data: dict) -> dict:
    """mean ± std per (task, arm); the paired differences of `comparisons` with t-intervals; the
    z diagnostic of every GeoRecon pretraining."""
    table = {}
    for col, arms in data["finetune"].items():
        table[col] = {}
        for arm, seeds in arms.items():
            v = np.array([seeds[s]["value"] for s in sorted(seeds)])
            table[col][arm] = {
                "mean": float(v.mean()),
                "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                "values": v.tolist(),
                "seeds": sorted(seeds),
                "unit": next(iter(seeds.values()))["unit"],
                "num_test_molecules": next(iter(seeds.values()))["num_molecules"],
            }
    return {"table": table, "differences": differences(c, data), "z": z_summary(data)}


def comparisons(c) -> List[tuple]:
    """(arm, reference) pairs the study reports: every arm against scratch; GeoRecon against each
    control; each ablation against the arm it changes one thing of."""
    from experiments.configs.study import ARMS

    arms = list(c.arms)
    out = [(a, "scratch") for a in arms if a != "scratch"]
    for ref in ("scratch_compute_matched", "coord", "coord_ladder"):
        if "georecon" in arms and ref in arms:
            out.append(("georecon", ref))
    if "coord_ladder" in arms and "coord" in arms:
        out.append(("coord_ladder", "coord"))
    for a in arms:
        base = ARMS[a].get("reuse") or ("georecon" if a.startswith("georecon_") else None)
        if base and base in arms and (a, base) not in out:
            out.append((a, base))
    return [p for p in out if p[0] in arms and p[1] in arms]


def differences(c, data: dict) -> dict:
    """(arm, ref) -> column -> `stats.Interval` of the per-seed paired differences of test MAE
    (the mean over the test molecules both cells have, arm − ref), over the pretrainings when
    fine-tuning seeds share one."""
    from experiments.configs.study import ARMS
    from georecon_jax.studies import stats

    out = {}
    for arm, ref in comparisons(c):
        for col, arms in data["finetune"].items():
            if arm not in arms or ref not in arms:
                continue
            common = sorted(set(arms[arm]) & set(arms[ref]))
            if not common:
                continue
            d = []
            for s_ in common:
                x, y = arms[arm][s_], arms[ref][s_]
                ea, eb = stats.aligned(x["ids"], x["errors"], y["ids"], y["errors"])
                d.append(float(np.mean(ea - eb)))
            pretrained = any(ARMS[a].get("pretrain") for a in (arm, ref))
            clusters = [pretrain_seed(c, s_) for s_ in common] if pretrained else None
            out.setdefault(f"{arm} − {ref}", {})[col] = stats.paired_interval(d, c.interval, clusters)
    return out


def z_summary(data: dict) -> dict:
    z = {}
    for arm, seeds in data["pretrain"].items():
        diags = [seeds[s]["z_diagnostic"] for s in sorted(seeds) if seeds[s].get("z_diagnostic")]
        if not diags:
            continue
        sig = diags[0]["sigmas"]
        ratio = np.array([d["own_over_other"] for d in diags])
        diff = np.array([np.array(d["mse_own"]) - np.array(d["mse_other"]) for d in diags])
        gain = 1 - ratio.mean(axis=0)
        best = int(np.argmax(gain))
        z[arm] = {
            "sigmas": sig,
            "own_over_other_mean": ratio.mean(axis=0).tolist(),
            "own_over_other_std": (
                ratio.std(axis=0, ddof=1) if len(diags) > 1 else np.zeros_like(gain)
            ).tolist(),
            "own_minus_other_mean": diff.mean(axis=0).tolist(),
            "recon_rmsd_own": [d.get("recon_rmsd_own") for d in diags],
            "recon_rmsd_other": [d.get("recon_rmsd_other") for d in diags],
            "largest_gain": float(gain[best]),
            "largest_gain_sigma": sig[best],
            "seeds": len(diags),
        }
    return z


def _fmt_pm(e) -> str:
    return f"{e['mean']:.3g} ± {e['std']:.2g}" if np.isfinite(e["std"]) else f"{e['mean']:.3g}"


def method_lines(c) -> List[str]:
    """What every cell ran, as a short method table."""
    test = "all" if c.qm9_test_molecules == 0 else (c.qm9_test_molecules or "the config's")
    rows = [
        (
            "model",
            f"size `{c.size or 'paper'}`"
            + (f", encoder {dict(c.encoder)}" if c.encoder else "")
            + (f", vector norm `{c.vec_norm}` in every cell" if c.vec_norm else ""),
        ),
        ("pretraining", f"{c.pretrain_steps} steps, seeds {', '.join(map(str, c.pretrain_seeds))}"),
        (
            "fine-tuning seeds",
            f"main arms {', '.join(map(str, c.seeds))}; other arms "
            f"{', '.join(map(str, c.ablation_seeds))}; seed k starts from pretraining seed "
            f"pretrain_seeds[k mod {len(c.pretrain_seeds)}]",
        ),
        (
            "QM9",
            f"at most {c.finetune_steps} steps on {c.qm9_labels or 'the config’s'} labels, "
            f"tested on {test} test molecules (the same for every cell)",
        ),
        (
            "rMD17",
            f"{c.md17_molecule or '–'}: at most {c.md17_finetune_steps} steps"
            + (f" on {c.md17_train_frames} frames" if c.md17_train_frames else ""),
        ),
        (
            "early stopping",
            f"patience {c.patience} evaluations (QM9: validation MAE; MD17: the validation loss, 0.2 energy + 0.8 force MSE), every "
            f"{c.eval_every} steps; the test set at the best"
            if c.patience
            else "none (the last step's best checkpoint)",
        ),
        (
            "regulariser target",
            f"`loss.denoise_normaliser={c.denoise_normaliser}` in every arm"
            + (
                " (ε in every arm: no confound)"
                if c.denoise_normaliser == "sigma"
                else " (differs between arms)"
            )
            + "; the `*_pretraining_normaliser` arms use the reference's per-pretraining normaliser",
        ),
        ("compute-matched scratch", f"{c.compute_matched_extra_steps} more supervised steps"),
        (
            "intervals",
            f"{int(round(100 * c.interval))} % Student-t over seeds of the per-seed paired "
            "differences (over the pretrainings when seeds share one)",
        ),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def difference_lines(c, s: dict) -> List[str]:
    """The paired differences as a table and as generated verdicts."""
    from georecon_jax.studies import stats

    diffs = s["differences"]
    if not diffs:
        return []
    cols = list(s["table"])
    lvl = int(round(100 * c.interval))
    lines = [
        "",
        "## Paired differences (arm − reference; negative: the arm is better)",
        "",
        f"Mean over seeds of the per-seed difference of test MAE on the same test molecules, with a "
        f"{lvl} % t-interval over seeds (over pretrainings where seeds share one). **Bold**: the "
        "interval excludes 0.",
        "",
        "| comparison | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, per_col in diffs.items():
        lines.append(f"| {name} | " + " | ".join(stats.format_cell(per_col.get(col)) for col in cols) + " |")
    lines += ["", "## Verdicts (generated from the intervals)", ""]
    for name, per_col in diffs.items():
        arm, ref = name.split(" − ")
        for col, e in per_col.items():
            unit = next(iter(s["table"][col].values()))["unit"]
            lines.append(f"- {col}: " + stats.verdict(e, arm, ref, unit))
    return lines


def write_results(c, workdir: str, cells: List[Cell], out_dirs: List[str]):
    from experiments.configs.study import MAIN_ARMS

    data = collect(c, workdir, cells)
    s = summarise(c, data)
    walls = {name: rec["wall_seconds"] for name, rec in data["cells"].items()}
    total = sum(walls.values())
    cols = list(s["table"])
    arms = [a for a in c.arms if any(a in s["table"][col] for col in cols)]
    lines = [
        f"# GeoRecon study, preset `{c.preset}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPU cores; "
        f"`python -m experiments.study --config=experiments/configs/study.py:{c.preset} "
        f"--workdir={workdir}`; cells finished {len(data['cells'])} of {len(cells)}; cell wall "
        f"time in all {total / 3600:.2f} h.",
        "",
        *method_lines(c),
    ]
    if cols:
        lines += [
            "",
            "## Test MAE, mean ± std over seeds",
            "",
            "| arm | "
            + " | ".join(f"{col} ({next(iter(s['table'][col].values()))['unit']})" for col in cols)
            + " |",
            "|---|" + "---:|" * len(cols),
        ]
    for arm in arms:
        row = [_fmt_pm(s["table"][col][arm]) if arm in s["table"][col] else "–" for col in cols]
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    lines += difference_lines(c, s)
    lines += pretraining_lines(data)
    if s["z"]:
        sig = sorted({x for z in s["z"].values() for x in z["sigmas"]})
        lines += [
            "",
            "## What the graph code adds (z diagnostic of every GeoRecon pretraining)",
            "",
            "Decoder ε-MSE with the molecule's own code over that with another molecule's code, "
            "on the held-out molecules, by σ (mean ± std over seeds; below 1: the own code helps); "
            "reconstruction from z alone, Kabsch RMSD own / other code (Å, mean over seeds).",
            "",
            "| pretraining | "
            + " | ".join(f"σ = {x:g} Å" for x in sig)
            + " | recon own / other (Å) | verdict |",
            "|---|" + "---:|" * len(sig) + "---|---|",
        ]
        for arm, z in s["z"].items():
            cells_ = []
            for x in sig:
                if x in z["sigmas"]:
                    i = z["sigmas"].index(x)
                    cells_.append(f"{z['own_over_other_mean'][i]:.3f} ± {z['own_over_other_std'][i]:.3f}")
                else:
                    cells_.append("–")
            own = [v for v in z["recon_rmsd_own"] if v is not None]
            oth = [v for v in z["recon_rmsd_other"] if v is not None]
            rec = f"{np.mean(own):.2f} / {np.mean(oth):.2f}" if own and oth else "–"
            if z["largest_gain"] < 0.01:
                verdict = "z adds nothing (< 1 % at every σ)"
            else:
                verdict = f"own code lowers the error by {100 * z['largest_gain']:.1f} % at σ = {z['largest_gain_sigma']:g} Å"
            lines.append(f"| {arm} | " + " | ".join(cells_) + f" | {rec} | {verdict} |")
    kinds = {}
    for name, w in walls.items():
        key = "/".join(name.split("/")[:-1])
        kinds.setdefault(key, []).append(w)
    lines += [
        "",
        "## Wall time per cell (s, mean over seeds)",
        "",
        "| cells | seeds | wall (s) |",
        "|---|---:|---:|",
    ]
    for key, ws in kinds.items():
        lines.append(f"| {key} | {len(ws)} | {np.mean(ws):.0f} |")
    if data["missing"]:
        lines += [
            "",
            f"Not finished: {len(data['missing'])} cells ({', '.join(data['missing'][:8])}{' ...' if len(data['missing']) > 8 else ''}).",
        ]
    lines += ["", "Figures: " + ", ".join(f"![{f}]({f})" for f in FIGURES), ""]
    md = "\n".join(lines)

    record = {
        "preset": c.preset,
        "config": json.loads(c.to_json_best_effort()),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "main_arms": list(MAIN_ARMS),
        "table": s["table"],
        "differences": {k: {col: e.to_json() for col, e in v.items()} for k, v in s["differences"].items()},
        "z_diagnostic": s["z"],
        "cells": data["cells"],
        "missing": data["missing"],
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(record, f, indent=1)
    figures(c, data, s, workdir, cols, arms)
    for d in out_dirs:
        os.makedirs(d, exist_ok=True)
        for name in ("results.md", "results.json", *FIGURES):
            if os.path.exists(os.path.join(workdir, name)):
                shutil.copy(os.path.join(workdir, name), os.path.join(d, name))
    print(md)
    return record


def figures(c, data, s, workdir, cols, arms):
    from georecon_jax.plots import _pyplot

    plt = _pyplot()
    if cols:
        fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols) + 1, 3.6), squeeze=False)
        for ax, col in zip(axes[0], cols):
            here = [a for a in arms if a in s["table"][col]]
            for i, arm in enumerate(here):
                e = s["table"][col][arm]
                ax.bar(i, e["mean"], yerr=e["std"] if np.isfinite(e["std"]) else 0, color=f"C{i}", capsize=3)
                ax.plot([i] * len(e["values"]), e["values"], "k.", ms=3)
            ax.set_xticks(range(len(here)))
            ax.set_xticklabels(here, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{col} ({next(iter(s['table'][col].values()))['unit']})", fontsize=9)
            lo = min(min(s["table"][col][a]["values"]) for a in here)
            ax.set_ylim(bottom=0.8 * lo)
        axes[0][0].set_ylabel("test MAE (mean ± std; dots: seeds)", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, FIGURES[0]), dpi=110)
        plt.close(fig)

        fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols) + 1, 3.4), squeeze=False)
        for ax, col in zip(axes[0], cols):
            for i, arm in enumerate(arms):
                seeds = data["finetune"][col].get(arm)
                if not seeds:
                    continue
                for split, style in (("train", "-"), ("validation", "o")):
                    curves = [np.array(v["curve"][split]) for v in seeds.values() if v["curve"][split]]
                    n = min(len(x) for x in curves) if curves else 0
                    if n:
                        y = np.mean([x[:n, 1] for x in curves], axis=0)
                        label = arm if split == "train" else None
                        ax.plot(curves[0][:n, 0], y, style, color=f"C{i}", label=label, ms=5)
            ax.set_title(col, fontsize=9)
            ax.set_xlabel("fine-tuning step")
            ax.set_yscale("log")
        axes[0][0].set_ylabel("MAE, training units\n(lines: train batches; dots: validation)", fontsize=8)
        axes[0][-1].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, FIGURES[1]), dpi=110)
        plt.close(fig)
    if s["z"]:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for i, (arm, z) in enumerate(s["z"].items()):
            m, sd = np.array(z["own_over_other_mean"]), np.array(z["own_over_other_std"])
            ax.plot(z["sigmas"], m, "o-", color=f"C{i}", label=arm, ms=3)
            ax.fill_between(z["sigmas"], m - sd, m + sd, color=f"C{i}", alpha=0.15)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("σ (Å)")
        ax.set_ylabel("decoder ε-MSE, own code / other's")
        ax.set_title("What z adds (below 1: the own code helps)", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, FIGURES[2]), dpi=110)
        plt.close(fig)
    curves = {
        arm: [v["curve"] for v in seeds.values() if v.get("curve")] for arm, seeds in data["pretrain"].items()
    }
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for i, (arm, cs) in enumerate(x for x in curves.items() if x[1]):
            for k, cv in enumerate(cs):
                steps, loss = np.array(cv, dtype=float).T
                ax.plot(steps, loss, "o-", color=f"C{i}", ms=2, lw=1, label=arm if k == 0 else None)
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("validation loss (the objective's)")
        ax.set_yscale("log")
        ax.set_title("Pretraining curves (one line per seed)", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, FIGURES[3]), dpi=110)
        plt.close(fig)


def rate_key(cell: Cell) -> str:
    """Which measured step rate a cell runs at: pretrain_<config stem> or finetune_<qm9|md17>."""
    if cell.kind == "pretrain":
        spec = next(a for a in cell.cmd if a.startswith("--config="))
        return "pretrain_" + os.path.basename(spec.split(":", 1)[0]).removesuffix(".py")
    return "finetune_md17" if "finetune_md17.py" in " ".join(cell.cmd) else "finetune_qm9"


def expected_time(c, cells: List[Cell]) -> str:
    """The cells' expected wall time from the preset's measured step rates (an upper bound for
    fine-tunings, which early stopping may end sooner), one cell at a time."""
    total, unknown = 0.0, set()
    for cell in cells:
        steps = int(next(a for a in reversed(cell.cmd) if a.startswith("--config.num_steps=")).split("=")[1])
        rate = c.rates.get(rate_key(cell))
        if not rate:
            unknown.add(rate_key(cell))
            continue
        total += steps / rate + c.rates.get("cell_overhead_s", 0.0)
    out = (
        f"{len(cells)} cells to run: at most {total / 3600:.1f} h one at a time on {c.rates.machine} "
        f"({c.rates.source})"
    )
    if unknown:
        out += f"; no measured rate for {', '.join(sorted(unknown))}"
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c, workdir = FLAGS.config, FLAGS.workdir

    def stop(signum, frame):  # SIGTERM as Ctrl-C: the running command is told to checkpoint
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    if c.get("study") == "3dmrl":  # experiments/configs/study_mrl.py
        from experiments import study_mrl

        build, write = study_mrl.build_cells, study_mrl.write_results
    else:
        build, write = build_cells, write_results
    cells = build(c, workdir)
    if FLAGS.list:
        for cell in cells:
            state = "finished" if cell_record(workdir, cell, c.records) else "to run"
            print(f"{state:9s} {cell.name}: {' '.join(cell.cmd[2:])}")
        if c.get("rates"):
            todo = [x for x in cells if not cell_record(workdir, x, c.records)]
            print(expected_time(c, todo))
        return
    if not FLAGS.rebuild_only:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "study_config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=1))
        run_study(c, workdir, cells, FLAGS.jobs, c.records)
    write(c, workdir, cells, [FLAGS.out] if FLAGS.out else [])


if __name__ == "__main__":
    from experiments.cli import resolve_config_paths

    sys.argv[:] = resolve_config_paths(sys.argv)
    app.run(main)
