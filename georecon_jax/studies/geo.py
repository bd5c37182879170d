"""The GeoRecon study's spec: pretraining arms × fine-tuning tasks × seeds, its cells, metrics and
report (run by ``python -m experiments.study`` with ``experiments/configs/study.py``).

Cells (each its own workdir under WORKDIR, each one single command of this codebase):
  pretrain/<arm>[_md17]/seed<p>      experiments.pretrain (georecon.py / coord.py / coord_ladder.py
                                     at the preset's size, the arm's ablation overlay,
                                     config.seed=p); _md17: the MD17 fine-tuning encoder (no vector
                                     norm) when the preset does not set one norm for every cell
  finetune/<task>/<arm>/seed<k>      experiments.finetune (finetune_qm9.py or finetune_md17.py,
                                     config.seed=k) from pretraining seed pretrain_seeds[k mod P],
                                     or from scratch

The results are rebuilt from the cells' own results.json, errors_test.npz, metrics.jsonl and
summary.json: mean ± std over seeds per arm and task; the paired differences of `comparisons`
(each arm to scratch, GeoRecon to each control, each ablation to its base) with t-intervals over
seeds (stats.py) and verdict lines generated from them; the z diagnostic of every GeoRecon
pretraining; the pretraining curves; the wall time of every cell.

The arms and the configs the cells load come in as a `Design` (the library never imports
experiments/): experiments/study.py builds it from experiments/configs/study.py.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, List, Mapping, Sequence

import numpy as np

from georecon_jax import plots
from georecon_jax.studies import report, stats
from georecon_jax.studies.cells import Cell, gather, read_json, read_jsonl

FIGURES = ("study_bars.png", "study_curves.png", "study_z_diagnostic.png", "study_pretraining.png")
# a pretraining counts as flattened when its validation loss fell by less than this fraction over
# the last quarter of its steps
FLAT = 0.05


@dataclasses.dataclass(frozen=True)
class Design:
    """What experiments/configs/study.py names, and how a cell's config is loaded.

    Attributes:
      arms: ARMS, name -> what the arm pretrains (config file, '+' overlays), whose pretraining
        it reuses, and its fine-tuning changes (``finetune``: flags after the study's own;
        ``extra_steps``: fine-tuning steps beyond the preset's; ``compare``: an arm, or a tuple of
        arms, it is compared with besides scratch).
      main_arms: MAIN_ARMS, fine-tuned on every task with every seed.
      every_task_arms: EVERY_TASK_ARMS, fine-tuned on every task.
      load_config: (config file, spec) -> the ConfigDict that ``--config=experiments/configs/
        <file>:<spec>`` loads (for the intervals a cell's command keeps or shortens).
    """

    arms: Mapping[str, dict]
    main_arms: Sequence[str]
    every_task_arms: Sequence[str]
    load_config: Callable[[str, str], Any]


# ---------------------------------------------------------------------------------------------
# Cells


def tasks_of(c, design: Design, arm: str) -> List[str]:
    """The tasks an arm is fine-tuned on (every task, or the ablations' ``ablation_tasks``)."""
    every = list(c.qm9_targets) + ([c.md17_molecule] if c.md17_molecule else [])
    return every if arm in design.every_task_arms else [t for t in every if t in tuple(c.ablation_tasks)]


def seeds_of(c, design: Design, arm: str) -> List[int]:
    """Fine-tuning seeds of an arm (the main arms': ``seeds``; the ablations': ``ablation_seeds``)."""
    return list(c.seeds if arm in design.main_arms else c.ablation_seeds)


def pretrain_seed(c, seed: int) -> int:
    """The pretraining a fine-tuning seed starts from: ``pretrain_seeds[seed mod P]``."""
    return int(c.pretrain_seeds[seed % len(c.pretrain_seeds)])


def _loop_overrides(base, steps: int, eval_every: int = 0) -> List[str]:
    """num_steps, and eval/checkpoint intervals (``eval_every``, else no longer than half the run;
    ``base``: the config the command loads)."""
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


def _pretrain_cells(c, design: Design, workdir: str, common: List[str]):
    """The pretraining cells, and (arm, encoder, pretraining seed) -> cell name."""
    ARMS = design.arms
    py = sys.executable
    cells, pretrained = [], {}
    for arm in c.arms:
        spec_ = ARMS[arm]
        file, overlays = spec_.get("pretrain"), spec_.get("overlays", ())
        if file is None or spec_.get("reuse"):
            continue
        tasks = tasks_of(c, design, arm)
        for other, o in ARMS.items():  # fine-tuning-only arms that reuse this pretraining
            if o.get("reuse") == arm and other in c.arms:
                tasks += tasks_of(c, design, other)
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
                cmd += _loop_overrides(design.load_config(file, spec), c.pretrain_steps)
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


def _finetune_command(c, design: Design, task: str, extra_steps: int = 0) -> List[str]:
    """The single fine-tuning command of a task at the preset's size and budget."""
    steps = c.md17_finetune_steps if task == c.md17_molecule else c.finetune_steps
    file = "finetune_md17.py" if task == c.md17_molecule else "finetune_qm9.py"
    loop = _loop_overrides(design.load_config(file, c.size), steps + extra_steps, c.eval_every)
    if task == c.md17_molecule:
        cmd = [
            "-m",
            "experiments.finetune",
            f"--config=experiments/configs/finetune_md17.py:{c.size}",
            f"--config.molecule={task}",
            f"--config.data.data_dir={os.path.abspath(c.md17_dir)}",
        ]
        cmd += loop
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
        cmd += loop
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


def build_cells(c, workdir: str, design: Design) -> List[Cell]:
    """Every cell of the study: the pretrainings, then the fine-tunings (module docstring)."""
    ARMS = design.arms
    for arm in c.arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}: use names of study.ARMS ({', '.join(ARMS)})")
    cache = os.path.abspath(os.path.join(workdir, "xla_cache"))
    common = [f"--config.compilation_cache_dir={cache}"]
    cells, pretrained = _pretrain_cells(c, design, workdir, common)
    for arm in c.arms:
        spec = ARMS[arm]
        source = spec.get("reuse") or arm
        for task in tasks_of(c, design, arm):
            md17 = task == c.md17_molecule
            for seed in seeds_of(c, design, arm):
                name = f"finetune/{task}/{arm}/seed{seed}"
                extra = spec.get("extra_steps", 0)
                if spec.get("compute_matched"):
                    extra += c.compute_matched_extra_steps
                cmd = [sys.executable, *_finetune_command(c, design, task, extra)]
                cmd.append(f"--config.loss.denoise_normaliser={spec.get('normaliser', c.denoise_normaliser)}")
                cmd += [f"--config.seed={seed}", *common, *_encoder_overrides(c)]
                cmd += list(spec.get("finetune", ()))
                enc = "md17" if md17 and not c.vec_norm else "qm9"
                needs = pretrained.get((source, enc, pretrain_seed(c, seed)))
                if spec.get("pretrain") and needs is None:
                    raise ValueError(f"arm {arm} reuses {source}'s pretraining: add {source} to the arms")
                if needs:
                    cmd.append(f"--config.pretrained={os.path.abspath(os.path.join(workdir, needs))}")
                cmd.append(f"--workdir={os.path.join(workdir, name)}")
                cells.append(Cell(name, "finetune", arm, seed, cmd, task=task, needs=needs))
    return cells


# ---------------------------------------------------------------------------------------------
# Results


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
    """What the finished cells left: per pretraining arm and seed its summary and validation curve;
    per column, arm and seed the test MAE, per-molecule errors and learning curves."""
    return gather(workdir, cells, c.records, lambda cell, rec, work: _read_cell(c, cell, rec, work))


def _read_cell(c, cell: Cell, rec: dict, work: str):
    """(keys, value) of a finished cell for `cells.gather`."""
    if cell.kind == "pretrain":
        s = read_json(os.path.join(work, "summary.json"))
        value = {
            "final_train_loss": s.get("final_train_loss"),
            "z_diagnostic": s.get("z_diagnostic"),
            "reconstruction_rmsd_angstrom": s.get("reconstruction_rmsd_angstrom"),
            "wall_seconds": rec["wall_seconds"],
            "curve": validation_curve(os.path.join(work, "metrics.jsonl")),
        }
        yield (cell.arm + ("_md17" if "_md17/" in cell.name else ""), cell.seed), value
        return
    r = read_json(os.path.join(work, "results.json"))
    summary = read_json(os.path.join(work, "summary.json"))
    ending = {k: summary.get(k) for k in ("steps", "num_steps", "best_step", "stopped_by_hook")}
    errors = np.load(os.path.join(work, "errors_test.npz"))
    order = np.argsort(errors["ids"])
    rows = read_jsonl(os.path.join(work, "metrics.jsonl"))
    for col, metric, arr in _metric_names(c, cell.task):
        m = r["metrics"][metric]
        key = "mae" if metric.endswith(f"{cell.task}_mae") else metric  # metrics.jsonl's name
        curve = {
            split: [(row["step"], row[key]) for row in rows if row.get("split") == split and key in row]
            for split in ("train", "validation")
        }
        yield (
            (col, cell.arm, cell.seed),
            {
                "value": m["value"],
                "unit": m["unit"],
                "ids": errors["ids"][order],
                "errors": errors[arr][order],
                "curve": curve,
                "num_molecules": r["num_molecules"],
                "wall_seconds": rec["wall_seconds"],
                "ending": ending,
            },
        )


def validation_curve(path: str) -> List[tuple]:
    """(step, validation loss) of a run's metrics.jsonl ([] when it has none)."""
    try:
        rows = read_jsonl(path)
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


def ending_lines(data: dict, cols: List[str], arms: List[str]) -> List[str]:
    """How the fine-tunings ended, per task and arm: stopped early by the validation metric, or at
    the step budget; and how many had their best validation at the last evaluation (then the
    budget, not convergence, ended them, and the table compares arms at that budget)."""
    rows = []
    for col in cols:
        for arm in arms:
            runs = [
                v["ending"] for v in data["finetune"].get(col, {}).get(arm, {}).values() if v.get("ending")
            ]
            if not runs or any(e.get("steps") is None for e in runs):
                continue
            early = sum(bool(e["stopped_by_hook"]) for e in runs)
            at_end = sum(e["best_step"] is not None and e["best_step"] == e["steps"] for e in runs)
            best = np.mean([e["best_step"] for e in runs if e["best_step"] is not None])
            rows.append(
                f"| {col} | {arm} | {len(runs)} | {early} | {at_end} | {best:.0f} | {runs[0]['num_steps']} |"
            )
    if not rows:
        return []
    return [
        "",
        "## How the fine-tunings ended",
        "",
        "Early stopped: the validation metric stopped improving (the preset's patience). Best at the "
        "last evaluation: the run ended while still improving, so the step budget, not convergence, "
        "ended it, and its row of the table is a comparison at that budget.",
        "",
        "| task | arm | seeds | early stopped | best at the last evaluation | mean best step | budget (steps) |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


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


def summarise(c, design: Design, data: dict) -> dict:
    """mean ± std per (task, arm); the paired differences of `comparisons` with t-intervals; the
    z diagnostic of every GeoRecon pretraining."""
    table = {}
    for col, arms in data["finetune"].items():
        table[col] = {}
        for arm, seeds in arms.items():
            table[col][arm] = report.mean_std([seeds[s]["value"] for s in sorted(seeds)]) | {
                "seeds": sorted(seeds),
                "unit": next(iter(seeds.values()))["unit"],
                "num_test_molecules": next(iter(seeds.values()))["num_molecules"],
            }
    return {"table": table, "differences": differences(c, design, data), "z": z_summary(data)}


def comparisons(c, design: Design) -> List[tuple]:
    """(arm, reference) pairs the study reports: every arm against scratch; GeoRecon against each
    control; each ablation against the arm it changes one thing of."""
    arms = list(c.arms)
    out = [(a, "scratch") for a in arms if a != "scratch"]
    for ref in ("scratch_compute_matched", "coord", "coord_ladder"):
        if "georecon" in arms and ref in arms:
            out.append(("georecon", ref))
    if "coord_ladder" in arms and "coord" in arms:
        out.append(("coord_ladder", "coord"))
    for a in arms:
        spec = design.arms[a]
        base = spec.get("reuse") or ("georecon" if a.startswith("georecon_") else None)
        for b in (base, *_compared(spec)):
            if b and b in arms and (a, b) not in out:
                out.append((a, b))
    return [p for p in out if p[0] in arms and p[1] in arms]


def differences(c, design: Design, data: dict) -> dict:
    """(arm, ref) -> column -> `stats.Interval` of the per-seed paired differences of test MAE
    (the mean over the test molecules both cells have, arm − ref), over the pretrainings when
    fine-tuning seeds share one."""
    out = {}
    for arm, ref in comparisons(c, design):
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
            pretrained = any(design.arms[a].get("pretrain") for a in (arm, ref))
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


def _arm_change(spec: dict) -> str:
    """What an arm's fine-tuning changes, in words and flags."""
    flags = [f"`{f.removeprefix('--config.')}`" for f in spec.get("finetune", ())]
    if spec.get("extra_steps"):
        flags.append(f"{spec['extra_steps']} more steps")
    compared = " and ".join(f"`{b}`" for b in _compared(spec))
    return ", ".join(flags) + (f"; compared with {compared}" if compared else "")


def _compared(spec: dict) -> tuple:
    """The arms an arm's ``compare`` names (one name or a tuple of them)."""
    b = spec.get("compare") or ()
    return (b,) if isinstance(b, str) else tuple(b)


def method_lines(c, design: Design) -> List[str]:
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
        *(
            (f"arm `{a}`", _arm_change(design.arms[a]))
            for a in c.arms
            if design.arms[a].get("finetune") or design.arms[a].get("extra_steps")
        ),
        (
            "intervals",
            f"{int(round(100 * c.interval))} % Student-t over seeds of the per-seed paired "
            "differences (over the pretrainings when seeds share one)",
        ),
    ]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def write_results(c, design: Design, workdir: str, cells: List[Cell], out_dirs: List[str]) -> dict:
    """WORKDIR/results.md, results.json and the figures from the finished cells (also copied to
    each of ``out_dirs``); returns the record written to results.json."""
    data = collect(c, workdir, cells)
    s = summarise(c, design, data)
    walls = {name: rec["wall_seconds"] for name, rec in data["cells"].items()}
    cols = list(s["table"])
    units = {col: next(iter(s["table"][col].values()))["unit"] for col in cols}
    arms = [a for a in c.arms if any(a in s["table"][col] for col in cols)]
    lines = report.heading(c.title, c, "study.py", workdir, data, len(cells))
    lines += ["", *method_lines(c, design)]
    if cols:
        lines += report.section("Test MAE, mean ± std over seeds")
        lines += report.table(
            ["arm", *(f"{col} ({units[col]})" for col in cols)],
            (
                [
                    arm,
                    *(
                        report.pm(s["table"][col][arm], ".3g", ".2g") if arm in s["table"][col] else "–"
                        for col in cols
                    ),
                ]
                for arm in arms
            ),
        )
    lines += report.difference_lines(
        s["differences"], cols, units, c.interval, "test MAE on the same test molecules"
    )
    lines += ending_lines(data, cols, arms)
    lines += pretraining_lines(data)
    lines += z_lines(s["z"])
    kinds = {}
    for name, w in walls.items():
        kinds.setdefault("/".join(name.split("/")[:-1]), []).append(w)
    lines += report.section("Wall time per cell (s, mean over seeds)")
    lines += report.table(
        ["cells", "seeds", "wall (s)"], ([k, len(ws), f"{np.mean(ws):.0f}"] for k, ws in kinds.items())
    )
    lines += report.not_finished_lines(data["missing"])
    lines += report.drift_lines(data["drifted"])
    record = report.record(
        c,
        data,
        main_arms=list(design.main_arms),
        table=s["table"],
        differences={k: {col: e.to_json() for col, e in v.items()} for k, v in s["differences"].items()},
        z_diagnostic=s["z"],
    )
    report.clear_figures(workdir, FIGURES)
    figures(data, s, workdir, cols, arms)
    return report.write(workdir, lines, record, FIGURES, out_dirs)


def z_lines(zs: dict) -> List[str]:
    """The z diagnostic of every GeoRecon pretraining arm as a table with a verdict per arm."""
    if not zs:
        return []
    sig = sorted({x for z in zs.values() for x in z["sigmas"]})
    rows = []
    for arm, z in zs.items():
        by_sigma = dict(zip(z["sigmas"], zip(z["own_over_other_mean"], z["own_over_other_std"])))
        ratios = [f"{by_sigma[x][0]:.3f} ± {by_sigma[x][1]:.3f}" if x in by_sigma else "–" for x in sig]
        own = [v for v in z["recon_rmsd_own"] if v is not None]
        oth = [v for v in z["recon_rmsd_other"] if v is not None]
        rec = f"{np.mean(own):.2f} / {np.mean(oth):.2f}" if own and oth else "–"
        if z["largest_gain"] < 0.01:
            verdict = "z adds nothing (< 1 % at every σ)"
        else:
            verdict = (
                f"own code lowers the error by {100 * z['largest_gain']:.1f} % at "
                f"σ = {z['largest_gain_sigma']:g} Å"
            )
        rows.append([arm, *ratios, rec, verdict])
    lines = report.section(
        "What the graph code adds (z diagnostic of every GeoRecon pretraining)",
        "Decoder ε-MSE with the molecule's own code over that with another molecule's code, "
        "on the held-out molecules, by σ (mean ± std over seeds; below 1: the own code helps); "
        "reconstruction from z alone, Kabsch RMSD own / other code (Å, mean over seeds).",
    )
    head = ["pretraining", *(f"σ = {x:g} Å" for x in sig), "recon own / other (Å)", "verdict"]
    return lines + report.table(head, rows, align="|---|" + "---:|" * len(sig) + "---|---|")


def figures(data: dict, s: dict, workdir: str, cols: List[str], arms: List[str]):
    """study_bars.png (test MAE per arm, dots: seeds), study_curves.png (fine-tuning curves),
    study_z_diagnostic.png and study_pretraining.png."""
    path = [os.path.join(workdir, f) for f in FIGURES]
    if cols:
        panels = []
        for col in cols:
            bars = {a: s["table"][col][a] for a in arms if a in s["table"][col]}
            unit = next(iter(s["table"][col].values()))["unit"]
            panels.append((f"{col} ({unit})", bars, 0.8 * min(min(e["values"]) for e in bars.values())))
        plots.seed_bars(path[0], panels, "test MAE (mean ± std; dots: seeds)")
        panels = []
        for col in cols:
            series = []
            for i, arm in enumerate(arms):
                for split, fmt in (("train", "-"), ("validation", "o")):
                    x, y = report.mean_curve(
                        [v["curve"][split] for v in data["finetune"][col].get(arm, {}).values()]
                    )
                    if len(x):
                        label = arm if split == "train" else None
                        series.append(dict(x=x, y=y, fmt=fmt, color=plots.color(i), label=label, ms=5))
            panels.append((col, series))
        plots.line_panels(
            path[1],
            panels,
            "fine-tuning step",
            "MAE, training units\n(lines: train batches; dots: validation)",
            yscale="log",
        )
    z_series = []
    for i, (arm, z) in enumerate(s["z"].items()):
        m, sd = np.array(z["own_over_other_mean"]), np.array(z["own_over_other_std"])
        z_series.append(
            dict(x=z["sigmas"], y=m, fmt="o-", color=plots.color(i), label=arm, band=(m - sd, m + sd))
        )
    pre_series = []
    curves = {
        arm: [v["curve"] for v in seeds.values() if v.get("curve")] for arm, seeds in data["pretrain"].items()
    }
    for i, (arm, cs) in enumerate(x for x in curves.items() if x[1]):
        for k, cv in enumerate(cs):
            steps, loss = np.array(cv, dtype=float).T
            label = arm if k == 0 else None
            pre_series.append(dict(x=steps, y=loss, fmt="o-", color=plots.color(i), ms=2, lw=1, label=label))
    for where, title, series, xlabel, ylabel, scales in (
        (
            path[2], "What z adds (below 1: the own code helps)", z_series, "σ (Å)",
            "decoder ε-MSE, own code / other's", dict(xscale="log", hlines=[(1.0, "k", "--")]),
        ),
        (
            path[3], "Pretraining curves (one line per seed)", pre_series, "pretraining step",
            "validation loss (the objective's)", dict(yscale="log"),
        ),
    ):  # fmt: skip
        if series:
            plots.line_panels(where, [(title, series)], xlabel, ylabel, size=(5, 3.8), **scales)


# ---------------------------------------------------------------------------------------------
# --list


def rate_key(cell: Cell) -> str:
    """Which measured step rate a cell runs at: pretrain_<config stem> or finetune_<qm9|md17>."""
    if cell.kind == "pretrain":
        spec = next(a for a in cell.cmd if a.startswith("--config="))
        return "pretrain_" + os.path.basename(spec.split(":", 1)[0]).removesuffix(".py")
    return "finetune_md17" if "finetune_md17.py" in " ".join(cell.cmd) else "finetune_qm9"


def expected_time(c, cells: List[Cell]) -> str:
    """The cells' expected wall time from the preset's step rates, one cell at a time: an upper
    bound from measured rates (early stopping may end fine-tunings sooner), an estimate from
    derived ones."""
    total, unknown = 0.0, set()
    for cell in cells:
        steps = int(next(a for a in reversed(cell.cmd) if a.startswith("--config.num_steps=")).split("=")[1])
        rate = c.rates.get(rate_key(cell))
        if not rate:
            unknown.add(rate_key(cell))
            continue
        total += steps / rate + c.rates.cell_overhead_s
    bound = "at most" if c.rates.kind == "measured" else "about"  # derived rates: an estimate
    out = (
        f"{len(cells)} cells to run: {bound} {total / 3600:.1f} h one at a time on {c.rates.machine} "
        f"({c.rates.source})"
    )
    if unknown:
        out += f"; no measured rate for {', '.join(sorted(unknown))}"
    return out
