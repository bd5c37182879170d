"""Does the decoder use the graph code? The z-variants study's spec: GeoRecon's objective variants
side by side (run by ``python -m experiments.z_variants``).

For each variant of ``experiments/configs/georecon.py`` (``caption``, the paper's, and each name
the entry point allows) it pretrains ``georecon.py:SIZE+VARIANT`` into WORKDIR/VARIANT, optionally
fine-tunes one QM9 target (or an rMD17 molecule) from it, and writes the table of the z diagnostic
(own/other error ratios by σ, reconstruction from z with the own code against another same-size
molecule's) to OUT/SIZE.md, the raw numbers to OUT/SIZE.json and the ratios by σ to OUT/SIZE.png.
Every cell runs through `cells.run_cell`: a finished workdir is not redone, an interrupted one
continues from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import List

from georecon_jax import plots
from georecon_jax.studies import cells, report


@dataclasses.dataclass(frozen=True)
class Options:
    """The study's settings (experiments/z_variants.py's flags)."""

    workdir: str  # one folder per variant
    size: str  # a size of georecon.py
    variants: List[str]  # 'caption' and georecon.py variants
    finetune_steps: int = 0  # 0: no fine-tuning
    target: str = "homo"  # QM9 target of the fine-tuning
    molecule: str = ""  # an rMD17 molecule instead of a QM9 target
    md17_dir: str = "../shared/data/rmd17"
    out: str = "results/z_variants"
    extra: List[str] = dataclasses.field(default_factory=list)  # a=b overrides of every pretraining
    refresh_report: bool = False  # re-run the report of finished pretrainings


SHOW_SIGMAS = (0.3, 1.0, 2.0, 8.0)  # Å, the table's columns (where the variant measured them)


def stale(work: str) -> bool:
    """A finished pretraining whose z diagnostic predates the sorted-distance fields."""
    s = cells.read_json(os.path.join(work, "summary.json"))
    return "spec_own_over_other" not in s.get("z_diagnostic", {})


def pretrain(o: Options, variant: str) -> str:
    """The variant's pretraining workdir, pretrained (or its report refreshed) where needed."""
    work = os.path.join(o.workdir, variant)
    if cells.steps_reached(work) is not None or o.refresh_report or stale(work):
        size = o.size if variant == "caption" else f"{o.size}+{variant}"
        cmd = [
            sys.executable,
            "-m",
            "experiments.pretrain",
            f"--config=experiments/configs/georecon.py:{size}",
        ]
        extra = list(o.extra)
        if o.molecule and not any(kv.startswith("model.encoder.vec_norm=") for kv in extra):
            extra.append("model.encoder.vec_norm=none")  # what finetune_md17.py loads
        cmd += [f"--config.{kv}" for kv in extra] + [f"--workdir={work}"]
        _run(o, cells.Cell(variant, "pretrain", variant, 0, cmd))
    return work


def _run(o: Options, cell: cells.Cell):
    print("$ " + " ".join(cell.cmd), flush=True)
    record = cells.run_cell(o.workdir, cell)
    print(f"  done in {record['wall_seconds']:.0f} s", flush=True)


def task_name(o: Options) -> str:
    return f"rMD17 {o.molecule}" if o.molecule else f"QM9 {o.target}"


def finetune(o: Options, variant: str, pretrained: str) -> dict:
    """The test MAE of the fine-tuning from ``pretrained`` ('': from scratch), run where needed."""
    steps = o.finetune_steps
    name = f"{o.molecule or o.target}_{variant}"
    work = os.path.join(o.workdir, name)
    if o.molecule:
        task = [
            "--config=experiments/configs/finetune_md17.py:quick",
            f"--config.molecule={o.molecule}",
            f"--config.data.data_dir={o.md17_dir}",
        ]
    else:
        task = ["--config=experiments/configs/finetune_qm9.py:quick", f"--config.target={o.target}"]
    if not os.path.exists(os.path.join(work, "results.json")):
        cmd = [
            sys.executable,
            "-m",
            "experiments.finetune",
            *task,
            f"--config.num_steps={steps}",
            f"--config.eval_every={max(steps // 2, 1)}",
            f"--config.checkpoint_every={max(steps // 2, 1)}",
            f"--workdir={work}",
        ]
        if pretrained:
            cmd.insert(-1, f"--config.pretrained={pretrained}")
        done = lambda w: os.path.exists(os.path.join(w, "results.json"))  # noqa: E731
        _run(o, cells.Cell(name, "finetune", variant, 0, cmd, task=o.molecule or o.target, finished=done))
    r = cells.read_json(os.path.join(work, "results.json"))
    if o.molecule:  # forces first: the quantity MD17 results are ranked by
        f, e = r["metrics"]["force_mae"], r["metrics"]["energy_mae"]
        return {
            "value": f["value"],
            "unit": f["unit"],
            "energy_mae": e["value"],
            "energy_unit": e["unit"],
            "num_molecules": r["num_molecules"],
            "steps": steps,
        }
    m = r["metrics"][f"{o.target}_mae"]
    return {"value": m["value"], "unit": m["unit"], "num_molecules": r["num_molecules"], "steps": steps}


def fmt_finetune(o: Options, f) -> str:
    if not f:
        return "–"
    text = f"{f['value']:.2f} {f['unit']}" if o.molecule else f"{f['value']:.1f} {f['unit']}"
    if "energy_mae" in f:
        text += f" (energy {f['energy_mae']:.2f} {f['energy_unit']})"
    return text


def at(diag, key, sigma):
    sig = diag.get("sigmas") or []
    for s, v in zip(sig, diag.get(key) or []):
        if abs(s - sigma) < 1e-9:
            return v
    return None


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def table(o: Options, rows) -> str:
    head = (
        "| variant | ε-MSE own/other at σ = "
        + " / ".join(f"{s:g}" for s in SHOW_SIGMAS)
        + " Å | distance error own/other at σ = "
        + " / ".join(f"{s:g}" for s in SHOW_SIGMAS)
        + " Å | sorted-distance error own/other at σ = "
        + " / ".join(f"{s:g}" for s in SHOW_SIGMAS)
        + " Å | reconstruction from z, Kabsch RMSD own / other (Å) | own closer | sorted-distance"
        " RMSE of the reconstruction own / other (Å) | pure noise (Å) |"
    )
    out = [head, "|---|---|---|---|---|---:|---|---:|"]
    ft = any("finetune" in r for r in rows)
    if ft:
        out[0] += f" {task_name(o)} test MAE{' (forces)' if o.molecule else ''} |"
        out[1] += "---:|"
    for r in rows:
        d = r["z_diagnostic"]
        line = (
            f"| {r['variant']}{'' if r.get('sampler', 'ddim') == 'ddim' else ' (' + r['sampler'] + ' sampler)'} | "
            + " / ".join(fmt(at(d, "own_over_other", s)) for s in SHOW_SIGMAS)
            + " | "
            + " / ".join(fmt(at(d, "dist_own_over_other", s)) for s in SHOW_SIGMAS)
            + " | "
            + " / ".join(fmt(at(d, "spec_own_over_other", s)) for s in SHOW_SIGMAS)
            + f" | {fmt(d.get('recon_rmsd_own'), '.2f')} / {fmt(d.get('recon_rmsd_other'), '.2f')}"
            + f" ({d.get('n_pairs_same_size', 0)} pairs) | {fmt(d.get('recon_own_closer_fraction'), '.2f')}"
            + f" | {fmt(d.get('recon_spectrum_rmse_own'), '.3f')} / {fmt(d.get('recon_spectrum_rmse_other'), '.3f')}"
            + f" | {fmt(d.get('pure_noise_rmsd'), '.1f')} |"
        )
        if ft:
            line += f" {fmt_finetune(o, r.get('finetune'))} |"
        out.append(line)
    return "\n".join(out) + "\n"


def plot(rows, path):
    """The own/other ratios by σ of every variant: decoder ε-MSE, distance and sorted-distance
    error of x̂₀."""
    panels = []
    for key, name in (
        ("own_over_other", "decoder ε-MSE"),
        ("dist_own_over_other", "distance error of x̂₀"),
        ("spec_own_over_other", "sorted-distance error of x̂₀"),
    ):
        series = [
            dict(x=r["z_diagnostic"]["sigmas"], y=r["z_diagnostic"][key], fmt="o-", label=r["variant"])
            for r in rows
            if r["z_diagnostic"].get(key)
        ]
        panels.append((f"{name}: own / other code", series))
    plots.line_panels(
        path,
        panels,
        "σ (Å)",
        "ratio (< 1: the decoder uses z)",
        xscale="log",
        hlines=[(1.0, "k", "--"), (0.9, "C3", ":")],
        size=(5, 3.8),
        sharey=True,
        grid=True,
    )


def run(o: Options, command: str) -> str:
    """Runs every variant (and the fine-tunings) and writes OUT/SIZE.md, .json and .png; returns
    the Markdown. ``command``: the command line, for the report."""
    os.makedirs(o.workdir, exist_ok=True)
    rows = []
    scratch = finetune(o, "scratch", "") if o.finetune_steps else None
    for v in o.variants:
        work = pretrain(o, v)
        s = cells.read_json(os.path.join(work, "summary.json"))
        row = {
            "variant": v,
            "config": f"georecon.py:{o.size}" + ("" if v == "caption" else f"+{v}"),
            "steps": s.get("steps"),
            "final_train_loss": s.get("final_train_loss"),
            "reconstruction_rmsd_angstrom": s.get("reconstruction_rmsd_angstrom"),
            "sampler": s.get("sampler", "ddim"),  # of the reconstruction (objective.sampler)
            "z_diagnostic": s.get("z_diagnostic", {}),
        }
        if o.finetune_steps:
            row["finetune"] = finetune(o, v, work)
        rows.append(row)
    os.makedirs(o.out, exist_ok=True)
    meta = {
        "command": command,
        "date": report.today(),
        "machine": report.machine(),
        "seed": "config default (one seed)",
    }
    base = os.path.join(o.out, o.size)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "scratch_finetune": scratch, "rows": rows}, f, indent=1)
    text = (
        f"GeoRecon objective variants, size {o.size}; {meta['date']}, {meta['machine']}; "
        f"`{meta['command']}`\n\n" + table(o, rows)
    )
    if scratch:
        text += f"\n{task_name(o)} from scratch, same fine-tuning: {fmt_finetune(o, scratch)}\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    plot(rows, base + ".png")
    print(text)
    return text
