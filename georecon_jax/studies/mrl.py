"""The 3DMRL study's spec: its cells, metrics and report (run by ``python -m experiments.study``
with ``experiments/configs/study_mrl.py``; see that file for the design).

Every fine-tuning cell is one ``experiments.finetune_pairs`` command whose splits write
``predictions_test.npz`` (test labels and predictions by pair, at the best validation epoch). The
results are rebuilt from those files alone:

  * mean ± std over seeds of each cell's test metric (mean over its splits: RMSE for regression,
    as the paper reports, and MAE; ROC-AUC and accuracy for DDI);
  * the paired difference of each pretrained arm to scratch: the same seed's cells share their
    pairs, splits and test pairs, so the metric of each replicate (seed × fold or split) is
    compared arm to arm, with a t-interval over seeds (stats.py) and verdict lines generated
    from it;
  * the 3DMRL pretraining losses (contrastive, force) per group and arm;
  * figures: bars with seed dots, and validation curves by epoch.

The arms and tasks come in as a `Design` (the library never imports experiments/):
experiments/study.py builds it from experiments/configs/study_mrl.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from georecon_jax import plots
from georecon_jax.studies import report, stats
from georecon_jax.studies.cells import Cell, gather, read_json, read_jsonl

FIGURES = ("study_mrl_bars.png", "study_mrl_curves.png")


@dataclasses.dataclass(frozen=True)
class Design:
    """What experiments/configs/study_mrl.py names.

    Attributes:
      arms: ARMS, name -> the pretraining's extra flags (None: no pretraining).
      tasks: TASKS, task -> (its pretraining group, the fine-tuning preset, the split).
      groups: GROUPS, pretraining group -> its mrl3d.py variant ('+...').
      finetune_variants: FINETUNE_VARIANTS, group -> its mrl_finetune.py variant.
    """

    arms: Mapping[str, Optional[Sequence[str]]]
    tasks: Mapping[str, Tuple[str, str, str]]
    groups: Mapping[str, str]
    finetune_variants: Mapping[str, str]


def _size(size: str, variant: str = "") -> str:
    return (size or "") + variant


def build_cells(c, workdir: str, design: Design) -> List[Cell]:
    """Every cell of the study: per group, arm and seed a pretraining; per task, arm and seed a
    fine-tuning from the pretraining of its group."""
    ARMS, TASKS, GROUPS = design.arms, design.tasks, design.groups
    FINETUNE_VARIANTS = design.finetune_variants
    for arm in c.arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}: use names of study_mrl.ARMS ({', '.join(ARMS)})")
    for task in c.tasks:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: use names of study_mrl.TASKS ({', '.join(TASKS)})")
    py, cache = sys.executable, os.path.abspath(os.path.join(workdir, "xla_cache"))
    common = [f"--config.compilation_cache_dir={cache}"]
    groups = sorted({TASKS[t][0] for t in c.tasks}, key=list(GROUPS).index)
    cells: List[Cell] = []
    for group in groups:
        for arm in c.arms:
            if ARMS[arm] is None:
                continue
            for seed in c.seeds:
                name = f"pretrain/{group}/{arm}/seed{seed}"
                spec = _size(c.pretrain_size, GROUPS[group])
                cmd = [py, "-m", "experiments.pretrain", f"--config=experiments/configs/mrl3d.py:{spec}"]
                if c.pretrain_steps:
                    n = c.pretrain_steps
                    cmd += [
                        "--config.num_epochs=0",
                        f"--config.num_steps={n}",
                        f"--config.eval_every={max(n // 2, 1)}",
                        f"--config.checkpoint_every={max(n // 4, 1)}",
                    ]
                cmd += [f"--config.seed={seed}", *common, *ARMS[arm], *c.pretrain_overrides]
                cmd += list(c.group_overrides.get(group, ()))
                cmd.append(f"--workdir={os.path.join(workdir, name)}")
                cells.append(Cell(name, "pretrain", arm, seed, cmd, task=group, finished=finished))
    for task in c.tasks:
        group, preset, split = TASKS[task]
        for arm in c.arms:
            for seed in c.seeds:
                name = f"finetune/{task}/{arm}/seed{seed}"
                split_seeds = (
                    [seed + k * len(c.seeds) for k in range(c.ddi_repeats)] if split != "cv" else [seed]
                )
                cmd = [
                    py,
                    "-m",
                    "experiments.finetune_pairs",
                    f"--config=experiments/configs/mrl_finetune.py:{c.finetune_size}{FINETUNE_VARIANTS[group]}",
                    f"--config.data.preset={preset}",
                    f"--config.split={split}",
                    f"--config.seeds=({','.join(map(str, split_seeds))},)",
                    f"--config.seed={seed}",
                    f"--config.num_epochs={c.num_epochs}",
                    f"--config.early_stopping={c.early_stopping}",
                    f"--config.num_folds={c.num_folds}",
                    f"--config.max_splits={c.max_folds if split == 'cv' else 0}",
                    *common,
                    *c.finetune_overrides,
                ]
                n_pairs = (c.ddi_max_pairs or c.max_pairs) if split != "cv" else c.max_pairs
                if n_pairs:
                    cmd.append(f"--config.data.max_pairs={n_pairs}")
                needs = None
                if ARMS[arm] is not None:
                    needs = f"pretrain/{group}/{arm}/seed{seed}"
                    cmd.append(f"--config.init_from={os.path.abspath(os.path.join(workdir, needs))}")
                cmd.append(f"--workdir={os.path.join(workdir, name)}")
                cells.append(
                    Cell(name, "finetune", arm, seed, cmd, task=task, needs=needs, finished=finished)
                )
    return cells


def finished(work: str) -> bool:
    """A fine-tuning cell wrote its results.json (only after every split ended) and each split
    ended (its last epoch or early stopping); a pretraining reached its last step."""
    from georecon_jax.tasks.finetune_pairs import split_finished

    try:
        if os.path.exists(os.path.join(work, "splits")) or "finetune" in work.split(os.sep)[-4:]:
            r = read_json(os.path.join(work, "results.json"))
            return len(r["splits"]) > 0 and all(
                split_finished(os.path.join(work, "splits", x["split"])) for x in r["splits"]
            )
        s = read_json(os.path.join(work, "summary.json"))
        return s.get("steps") == s.get("num_steps")
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


# ---------------------------------------------------------------------------------------------
# Results


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def task_metrics(kind: str):
    """(name, function of (labels, predictions), lower is better?) per task type."""
    from georecon_jax.tasks.metrics import roc_auc

    if kind == "regression":
        return [
            ("rmse", lambda y, p: float(np.sqrt(np.mean((p - y) ** 2))), True),
            ("mae", lambda y, p: float(np.mean(np.abs(p - y))), True),
        ]
    return [
        ("roc_auc", lambda y, p: roc_auc(y, p), False),
        ("accuracy", lambda y, p: float(np.mean((p > 0) == (y > 0.5))), False),
    ]


def collect(c, workdir: str, cells: List[Cell]) -> dict:
    """What the finished cells left: per pretraining its final losses; per fine-tuning its test
    metrics, test labels and predictions by pair (sorted) and its first split's validation curve."""
    return gather(workdir, cells, c.records, _read_cell)


def _read_cell(cell: Cell, rec: dict, work: str):
    """(keys, value) of a finished cell for `cells.gather`."""
    if cell.kind == "pretrain":
        s = read_json(os.path.join(work, "summary.json"))
        keys = (
            "final_train_contrastive",
            "final_train_force_mse",
            "first_train_force_mse",
            "train_pairs",
            "steps",
        )
        yield (
            (cell.task, cell.arm, cell.seed),
            {k: s.get(k) for k in keys} | {"wall_seconds": rec["wall_seconds"]},
        )
        return
    r = read_json(os.path.join(work, "results.json"))
    rows, ys, ps, curves = [], [], [], []
    for split in r["splits"]:
        sdir = os.path.join(work, "splits", split["split"])
        z = np.load(os.path.join(sdir, "predictions_test.npz"))
        rows.append(np.char.add(f"{split['split']}|", z["rows"].astype(str)))
        ys.append(z["label"][:, 0])
        ps.append(z["pred"][:, 0])
        val = read_jsonl(os.path.join(sdir, "metrics.jsonl"))
        key = "rmse" if r["task_type"] == "regression" else "roc_auc"
        curves.append([(v["step"], v[key]) for v in val if v.get("split") == "validation" and key in v])
    rows, y, p = np.concatenate(rows), np.concatenate(ys), np.concatenate(ps)
    order = np.argsort(rows)
    yield (
        (cell.task, cell.arm, cell.seed),
        {
            "metrics": {k: v[0] for k, v in r["test_mean_std"].items()},
            "rows": rows[order],
            "y": y[order],
            "p": p[order],
            "kind": r["task_type"],
            "units": r["units"],
            "num_pairs": r["num_pairs"],
            "splits": len(r["splits"]),
            "best_epochs": [s["best_epoch"] for s in r["splits"]],
            "curve": curves[0] if curves else [],
            "steps_per_epoch": max(r["splits"][0]["best_step"], 1) / max(r["splits"][0]["best_epoch"], 1),
            "wall_seconds": rec["wall_seconds"],
        },
    )


def replicate_differences(a: List[tuple], b: List[tuple], seeds: List[int], fn):
    """Per replicate (seed × split: a CV fold or a DDI split), the metric of arm a minus that of
    arm b on the same test pairs, and the seed of each (its pretraining: the cluster).

    Args: a, b: per seed (rows, y, p) on the same test pairs, rows prefixed by their split."""
    diffs, clusters = [], []
    for seed, (rows, y, pa), (_, _, pb) in zip(seeds, a, b):
        split = np.array([r.split("|", 1)[0] for r in rows])
        for name in dict.fromkeys(split):
            k = split == name
            diffs.append(fn(y[k], pa[k]) - fn(y[k], pb[k]))
            clusters.append(seed)
    return diffs, clusters


def summarise(c, data: dict) -> dict:
    """mean ± std over seeds per task, arm and metric; each arm minus scratch per replicate (seed ×
    split) with a t-interval over the seeds (the replicates of one seed share its pretraining)."""
    table = {}
    for task, arms in data["finetune"].items():
        table[task] = {}
        for arm, seeds in arms.items():
            first = next(iter(seeds.values()))
            entry = {"kind": first["kind"], "units": first["units"], "seeds": sorted(seeds)}
            for name, fn, lower in task_metrics(first["kind"]):
                values = [seeds[s]["metrics"].get(name, np.nan) for s in sorted(seeds)]
                entry[name] = report.mean_std(values) | {"lower_is_better": lower}
                if arm == "scratch" or "scratch" not in arms:
                    continue
                common = sorted(set(seeds) & set(arms["scratch"]))
                a, b = [], []
                for s_ in common:
                    x, ref = seeds[s_], arms["scratch"][s_]
                    rows = np.intersect1d(x["rows"], ref["rows"])
                    ia, ib = np.searchsorted(x["rows"], rows), np.searchsorted(ref["rows"], rows)
                    a.append((rows, x["y"][ia], x["p"][ia]))
                    b.append((rows, ref["y"][ib], ref["p"][ib]))
                if common:
                    d, clusters = replicate_differences(a, b, common, fn)
                    e = stats.paired_interval(d, c.interval, clusters, cluster_name="seeds")
                    entry[name]["minus_scratch"] = e.to_json() | {
                        "seeds": common,
                        "test_pairs": int(np.mean([len(y) for _, y, _ in a])),
                    }
            entry["wall_seconds"] = float(np.mean([seeds[s]["wall_seconds"] for s in seeds]))
            entry["best_epochs"] = [e for s in sorted(seeds) for e in seeds[s]["best_epochs"]]
            entry["num_pairs"] = first["num_pairs"]
            table[task][arm] = entry
    return {"table": table}


def write_results(c, design: Design, workdir: str, cells: List[Cell], out_dirs: List[str]) -> dict:
    """WORKDIR/results.md, results.json and the figures from the finished cells (also copied to
    each of ``out_dirs``); returns the record written to results.json."""
    data = collect(c, workdir, cells)
    s = summarise(c, data)
    tasks = [t for t in c.tasks if t in s["table"]]
    arms = [a for a in c.arms if any(a in s["table"][t] for t in tasks)]
    seeds = f"seeds {', '.join(map(str, c.seeds))}; "
    lines = report.heading("3DMRL study", c, "study_mrl.py", workdir, data, len(cells), seeds)
    lines += [
        "",
        f"3DMRL pretraining: mrl3d.py size `{c.pretrain_size or 'paper'}`, "
        f"{c.pretrain_steps or 'the config’s'} steps {' '.join(c.pretrain_overrides)}; fine-tuning: "
        f"mrl_finetune.py size `{c.finetune_size or 'paper'}` {' '.join(c.finetune_overrides)}, at most "
        f"{c.num_epochs} epochs (early stopping {c.early_stopping or 'off'}), "
        f"{f'a random {c.max_pairs} pairs per task and seed' if c.max_pairs else 'all pairs'}"
        f"{f' ({c.ddi_max_pairs} for DDI)' if c.ddi_max_pairs else ''}; "
        f"regression: {c.num_folds}-fold CV of the cell's seed ({c.max_folds or c.num_folds} folds run), "
        f"DDI: {c.ddi_repeats} split(s) per cell. Test metrics at the best validation epoch.",
    ]
    rows = []
    for t in tasks:
        first = next(iter(s["table"][t].values()))
        for name, _, lower in task_metrics(first["kind"]):
            unit = f" ({first['units']})" if first["kind"] == "regression" else ""
            cells_ = [report.pm(s["table"][t][a][name], ".3f") if a in s["table"][t] else "–" for a in arms]
            rows.append([t, f"{name}{unit} {'↓' if lower else '↑'}", *cells_])
    lines += report.section("Test metrics, mean ± std over seeds")
    lines += report.table(["task", "metric", *arms], rows, numeric_from=2)
    if "scratch" in arms:
        lines += difference_lines(c, s, tasks, arms)
    lines += pretraining_lines(data)
    rows = [
        [t, a, e["num_pairs"], ", ".join(map(str, e["best_epochs"])), f"{e['wall_seconds']:.0f}"]
        for t in tasks
        for a in arms
        if (e := s["table"][t].get(a))
    ]
    lines += report.section("Fine-tuning cells")
    head = ["task", "arm", "pairs", "best epochs (all splits)", "wall per cell (s)"]
    lines += report.table(head, rows, align="|---|---|---:|---|---:|")
    lines += report.not_finished_lines(data["missing"])
    lines += report.drift_lines(data["drifted"])
    tasks_ = {t: list(design.tasks[t]) for t in tasks}
    record = report.record(c, data, tasks=tasks_, table=s["table"], pretrain=data["pretrain"])
    report.clear_figures(workdir, FIGURES)
    figures(data, s, workdir, tasks, arms)
    return report.write(workdir, lines, record, FIGURES, out_dirs)


def difference_lines(c, s: dict, tasks: List[str], arms: List[str]) -> List[str]:
    """Each arm minus scratch per task and metric, as a table of intervals and as verdicts."""
    lines = report.section(
        "Paired difference to scratch (arm − scratch)",
        "Per replicate (seed × CV fold or DDI split) the metric on its test pairs, arm minus "
        f"scratch; mean over replicates, {int(round(100 * c.interval))} % t-interval over seeds (the "
        "replicates of one seed share its pretraining and are averaged first). RMSE/MAE: negative "
        "is better; ROC-AUC/accuracy: positive is better. **Bold**: the interval excludes 0.",
    )
    others = [a for a in arms if a != "scratch"]
    rows, verdicts = [], []
    for t in tasks:
        first = next(iter(s["table"][t].values()))
        unit = first["units"] if first["kind"] == "regression" else ""
        for name, _, lower in task_metrics(first["kind"]):
            row = [t, name]
            for a in others:
                iv = stats.Interval.from_json(s["table"][t].get(a, {}).get(name, {}).get("minus_scratch"))
                row.append(stats.format_cell(iv, "+.3f"))
                if iv is not None:
                    verdicts.append(f"- {t} {name}: " + stats.verdict(iv, a, "scratch", unit, lower, ".3f"))
            rows.append(row)
    return (
        lines
        + report.table(["task", "metric", *others], rows, numeric_from=2)
        + report.verdicts_lines(verdicts)
    )


def pretraining_lines(data: dict) -> List[str]:
    """The 3DMRL pretrainings' final training losses per group and arm (mean over seeds)."""
    if not data["pretrain"]:
        return []
    rows = []
    for group, by_arm in data["pretrain"].items():
        for arm, seeds in by_arm.items():
            v = list(seeds.values())

            def mean(k):
                x = [d[k] for d in v if d.get(k) is not None]
                return float(np.mean(x)) if x else float("nan")

            rows.append(
                [
                    group,
                    arm,
                    v[0].get("train_pairs"),
                    v[0].get("steps"),
                    f"{mean('final_train_contrastive'):.3f}",
                    f"{mean('first_train_force_mse'):.3f} → {mean('final_train_force_mse'):.3f}",
                    f"{mean('wall_seconds'):.0f}",
                ]
            )
    head = ["group", "arm", "training pairs", "steps", "contrastive", "force MSE first → final", "wall (s)"]
    return report.section("3DMRL pretraining (final training losses, mean over seeds)") + report.table(
        head, rows, numeric_from=2
    )


def figures(data: Dict, s: Dict, workdir: str, tasks: List[str], arms: List[str]):
    """study_mrl_bars.png (RMSE or ROC-AUC per arm, dots: seeds) and study_mrl_curves.png
    (validation curves by epoch, first split, mean over seeds)."""
    if not tasks:
        return
    bars, curves = [], []
    for t in tasks:
        here = [a for a in arms if a in s["table"][t]]
        name = "rmse" if next(iter(s["table"][t].values()))["kind"] == "regression" else "roc_auc"
        unit = s["table"][t][here[0]]["units"]
        vals = [v for a in here for v in s["table"][t][a][name]["values"]]
        bottom = 0.9 * min(vals) if name == "roc_auc" else 0
        title = f"{t}\n{name}{f' ({unit})' if name == 'rmse' else ''}"
        bars.append((title, {a: s["table"][t][a][name] for a in here}, bottom))
        series = []
        for i, a in enumerate(arms):
            seeds = data["finetune"][t].get(a, {})
            x, y = report.mean_curve(v["curve"] for v in seeds.values())
            if len(x):
                spe = next(iter(seeds.values()))["steps_per_epoch"]
                series.append(dict(x=x / spe, y=y, color=plots.color(i), label=a))
        curves.append((t, series))
    plots.seed_bars(os.path.join(workdir, FIGURES[0]), bars, size=(2.6, 3.4), rotation=45)
    plots.line_panels(
        os.path.join(workdir, FIGURES[1]),
        curves,
        "epoch",
        "validation RMSE / ROC-AUC\n(first split, mean over seeds)",
        size=(2.8, 3.2),
    )
