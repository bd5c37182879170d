"""What the studies' reports share: mean ± std over seeds, Markdown tables, the paired differences
as interval tables and generated verdicts (`stats.format_cell`, `stats.verdict`), and writing
results.md, results.json and the figures (copied to ``--out``)."""

from __future__ import annotations

import calendar
import json
import os
import platform
import shutil
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from georecon_jax.studies import stats


def today() -> str:
    return time.strftime("%Y-%m-%d")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores"


def busy_seconds(records: Iterable[dict]) -> Tuple[float, int]:
    """(seconds during which at least one cell ran, cells left out): the union of the cells' run
    intervals, so that cells run side by side with ``--jobs`` count once and the time between
    sessions, when none ran, not at all. A record's ``spans`` (one per attempt) are used; a record
    from before they were kept gives [finished − wall, finished], exact for one attempt; one with
    no finishing time (before 2026-12-06) is left out and counted."""
    spans, left_out = [], 0
    for rec in records:
        if rec.get("spans"):  # written from 2026-12-07
            spans += [tuple(x) for x in rec["spans"]]
        elif rec.get("finished"):
            end = calendar.timegm(time.strptime(rec["finished"], "%Y-%m-%d %H:%M:%S UTC"))
            spans.append((end - rec["wall_seconds"], end))
        else:
            left_out += 1
    total, reach = 0.0, -np.inf
    for a, b in sorted(spans):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total, left_out


def heading(title: str, c, config_file: str, workdir: str, data: dict, num_cells: int, more: str = ""):
    """The report's title and its first paragraph: date, machine, the command, ``more``, how many
    cells finished, their wall time and the time during which any of them ran."""
    wall = sum(rec["wall_seconds"] for rec in data["cells"].values())
    busy, left_out = busy_seconds(data["cells"].values())
    without = f", {left_out} cells without times left out" if left_out else ""
    return [
        f"# {title}, preset `{c.preset}`",
        "",
        f"{today()}, {machine()}; `python -m experiments.study "
        f"--config=experiments/configs/{config_file}:{c.preset} --workdir={workdir}`; {more}cells "
        f"finished {len(data['cells'])} of {num_cells}; cell wall time in all {wall / 3600:.2f} h, "
        f"{busy / 3600:.2f} h while any cell ran (cells side by side count once{without}).",
    ]


def record(c, data: dict, **fields) -> dict:
    """What results.json holds: the preset, its config, date, machine, ``fields`` and the cells'
    records (and the names of the unfinished)."""
    head = {"preset": c.preset, "config": json.loads(c.to_json_best_effort()), "date": today()}
    drifted = dict(data["drifted"])
    return head | {
        "machine": machine(),
        **fields,
        "cells": data["cells"],
        "missing": data["missing"],
        "drifted": drifted,
    }


def mean_std(values: Sequence[float]) -> dict:
    """{"mean", "std" (over seeds, ddof 1; nan for one value), "values"}."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
        "values": v.tolist(),
    }


def pm(e: dict, fmt: str = ".3g", std_fmt: Optional[str] = None) -> str:
    """A `mean_std` entry as "mean ± std" (the mean alone for one seed)."""
    if not np.isfinite(e["std"]):
        return f"{e['mean']:{fmt}}"
    return f"{e['mean']:{fmt}} ± {e['std']:{std_fmt or fmt}}"


def table(head: Sequence[str], rows: Iterable[Sequence], numeric_from: int = 1, align: str = "") -> List[str]:
    """A Markdown table; the columns from ``numeric_from`` on are right-aligned (``align``: the
    separator row as written, e.g. "|---|---:|---|")."""
    align = align or "|" + "|".join(["---"] * numeric_from + ["---:"] * (len(head) - numeric_from)) + "|"
    return [
        "| " + " | ".join(head) + " |",
        align,
        *("| " + " | ".join(str(x) for x in row) + " |" for row in rows),
    ]


def section(title: str, *text: str) -> List[str]:
    """A blank line, a ``##`` heading and its paragraphs, each followed by a blank line."""
    out = ["", f"## {title}", ""]
    for t in text:
        out += [t, ""]
    return out


def difference_lines(
    differences: Dict[str, Dict[str, stats.Interval]],
    columns: Sequence[str],
    units: Dict[str, str],
    level: float,
    what: str,
) -> List[str]:
    """The paired differences ({"arm − ref": {column: interval}}) as a table and as verdicts.

    Args:
      columns: the table's columns (a comparison without one shows "–").
      units: column -> the unit of its differences.
      level: the intervals' coverage.
      what: what the differences are of, after "Mean over seeds of the per-seed difference of".
    """
    if not differences:
        return []
    lines = section(
        "Paired differences (arm − reference; negative: the arm is better)",
        f"Mean over seeds of the per-seed difference of {what}, with a {int(round(100 * level))} % "
        "t-interval over seeds (over pretrainings where seeds share one). **Bold**: the interval "
        "excludes 0.",
    )
    lines += table(
        ["comparison", *columns],
        ([name, *(stats.format_cell(per.get(col)) for col in columns)] for name, per in differences.items()),
    )
    verdicts = []
    for name, per_col in differences.items():
        arm, ref = name.split(" − ")
        for col, e in per_col.items():
            verdicts.append(f"- {col}: " + stats.verdict(e, arm, ref, units[col]))
    return lines + verdicts_lines(verdicts)


def verdicts_lines(verdicts: List[str]) -> List[str]:
    return ["", "## Verdicts (generated from the intervals)", "", *verdicts]


def mean_curve(curves: Iterable[list]):
    """(steps, mean over the curves) of [(step, value), ...] curves, over the steps every one of
    them reached (two empty arrays when there is none)."""
    curves = [np.array(x) for x in curves if len(x)]
    n = min(len(x) for x in curves) if curves else 0
    if not n:
        return np.zeros(0), np.zeros(0)
    return curves[0][:n, 0], np.mean([x[:n, 1] for x in curves], axis=0)


def clear_figures(workdir: str, figures: Sequence[str]) -> None:
    """Removes ``figures`` from ``workdir`` before a report draws them, so that `write` links only
    what this report drew (not an earlier run's)."""
    for f in figures:
        if os.path.exists(os.path.join(workdir, f)):
            os.remove(os.path.join(workdir, f))


def drift_lines(drifted: List[tuple]) -> List[str]:
    """A warning section naming the finished cells whose record a command other than this
    config's made (`cells.command_drift`), empty when there are none."""
    if not drifted:
        return []
    lines = [
        "",
        f"**Warning: {len(drifted)} finished cells were made by a different command** than this "
        "config gives (their rows mix settings; move their records aside to run them again):",
        "",
    ]
    for name, drift in drifted[:12]:
        lines.append(f"- {name}: {'; '.join(drift)}")
    if len(drifted) > 12:
        lines.append(f"- ... and {len(drifted) - 12} more")
    return lines


def not_finished_lines(missing: List[str]) -> List[str]:
    if not missing:
        return []
    more = " ..." if len(missing) > 8 else ""
    return ["", f"Not finished: {len(missing)} cells ({', '.join(missing[:8])}{more})."]


def write(
    workdir: str, md_lines: List[str], record: dict, figures: Sequence[str], out_dirs: Sequence[str]
) -> dict:
    """Writes WORKDIR/results.md (ending with links to ``figures``) and results.json, copies them and
    the figures that exist to each of ``out_dirs``, prints the Markdown and returns ``record``. Only
    figures that exist in ``workdir`` are linked (a study without pretraining draws no pretraining
    curve; the studies clear them before drawing) and those that do not are removed from
    ``out_dirs``."""
    drawn = [f for f in figures if os.path.exists(os.path.join(workdir, f))]
    for d in out_dirs:  # an earlier report's figure that this one did not draw
        for f in set(figures) - set(drawn):
            if os.path.exists(os.path.join(d, f)):
                os.remove(os.path.join(d, f))
    figures = drawn
    md = "\n".join([*md_lines, "", "Figures: " + ", ".join(f"![{f}]({f})" for f in figures), ""])
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(record, f, indent=1, default=float)
    for d in out_dirs:
        os.makedirs(d, exist_ok=True)
        for name in ("results.md", "results.json", *figures):
            if os.path.exists(os.path.join(workdir, name)):
                shutil.copy(os.path.join(workdir, name), os.path.join(d, name))
    print(md)
    return record
