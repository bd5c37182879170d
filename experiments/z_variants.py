"""Does the decoder use the graph code? GeoRecon's objective variants side by side (issue 20).

  python -m experiments.z_variants --workdir=runs/z_variants --size=quick
  python -m experiments.z_variants --workdir=runs/z_variants --size=quick --finetune_steps=400

For each variant of ``experiments/configs/georecon.py`` (``caption``, the paper's, and each name
of ``VARIANTS``) it pretrains ``georecon.py:SIZE+VARIANT`` into WORKDIR/VARIANT, optionally
fine-tunes one QM9 target from it (``finetune_qm9.py:quick``, the labels and test molecules of
``experiments/compare_quick.sh``), and writes the table of the z diagnostic (own/other error
ratios by σ, reconstruction from z with the own code against another same-size molecule's) to
OUT/SIZE.md, the raw numbers to OUT/SIZE.json and the ratios by σ to OUT/SIZE.png. Every step
resumes: a finished workdir is not redone, an interrupted one continues from its checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags

from experiments.configs import georecon

flags.DEFINE_string("workdir", "runs/z_variants", "Where the runs go (one folder per variant).")
flags.DEFINE_string("size", "quick", "A size of georecon.py (quick, tiny, ...).")
flags.DEFINE_list(
    "variants", ["caption", *georecon.VARIANTS], "Variants: 'caption' and names of georecon.VARIANTS."
)
flags.DEFINE_integer("finetune_steps", 0, "QM9 fine-tuning steps from each variant (0: none).")
flags.DEFINE_string("target", "homo", "QM9 target of the fine-tuning.")
flags.DEFINE_string(
    "molecule",
    "",
    "Fine-tune on this rMD17 molecule (energies and forces, finetune_md17.py:quick) instead of a "
    "QM9 target. The pretrainings then use the MD17 recipe's encoder (no vector norm: "
    "model.encoder.vec_norm=none), so give them their own --workdir.",
)
flags.DEFINE_string("md17_dir", "../shared/data/rmd17", "Folder of the rMD17 .npz files.")
flags.DEFINE_string("out", "results/z_variants", "Where the table, raw numbers and plot go.")
flags.DEFINE_list("extra", [], "More --config overrides for every pretraining (a=b,...).")
flags.DEFINE_bool(
    "refresh_report",
    False,
    "Re-run the end-of-run report (z diagnostic) of finished pretrainings with the current code "
    "(the pretraining command on a finished workdir trains nothing and reports again); a report "
    "without the current diagnostic's fields is re-run anyway.",
)
FLAGS = flags.FLAGS

SHOW_SIGMAS = (0.3, 1.0, 2.0, 8.0)  # Å, the table's columns (where the variant measured them)


def run(cmd, log_path):
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log_path, "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc:
        raise SystemExit(f"failed ({rc}) after {time.time() - t0:.0f} s; see {log_path}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)


def finished(work: str) -> bool:
    """A pretraining workdir whose run reached its last step (a SIGTERM also writes summary.json)."""
    try:
        s = json.load(open(os.path.join(work, "summary.json")))
    except FileNotFoundError:
        return False
    return s.get("steps") == s.get("num_steps") or bool(s.get("stopped_by_hook"))


def stale(work: str) -> bool:
    """A finished pretraining whose z diagnostic predates the sorted-distance fields."""
    s = json.load(open(os.path.join(work, "summary.json")))
    return "spec_own_over_other" not in s.get("z_diagnostic", {})


def pretrain(variant: str) -> str:
    work = os.path.join(FLAGS.workdir, variant)
    size = FLAGS.size if variant == "caption" else f"{FLAGS.size}+{variant}"
    if not finished(work) or FLAGS.refresh_report or stale(work):
        os.makedirs(work, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "experiments.pretrain",
            f"--config=experiments/configs/georecon.py:{size}",
        ]
        extra = list(FLAGS.extra)
        if FLAGS.molecule and not any(kv.startswith("model.encoder.vec_norm=") for kv in extra):
            extra.append("model.encoder.vec_norm=none")  # what finetune_md17.py loads
        cmd += [f"--config.{kv}" for kv in extra] + [f"--workdir={work}"]
        run(cmd, work + ".log")
    return work


def task_name() -> str:
    return f"rMD17 {FLAGS.molecule}" if FLAGS.molecule else f"QM9 {FLAGS.target}"


def finetune(variant: str, pretrained: str):
    steps = FLAGS.finetune_steps
    work = os.path.join(FLAGS.workdir, f"{FLAGS.molecule or FLAGS.target}_{variant}")
    if FLAGS.molecule:
        task = [
            "--config=experiments/configs/finetune_md17.py:quick",
            f"--config.molecule={FLAGS.molecule}",
            f"--config.data.data_dir={FLAGS.md17_dir}",
        ]
    else:
        task = ["--config=experiments/configs/finetune_qm9.py:quick", f"--config.target={FLAGS.target}"]
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
        run(cmd, work + ".log")
    r = json.load(open(os.path.join(work, "results.json")))
    if FLAGS.molecule:  # forces first: the quantity MD17 results are ranked by
        f, e = r["metrics"]["force_mae"], r["metrics"]["energy_mae"]
        return {
            "value": f["value"],
            "unit": f["unit"],
            "energy_mae": e["value"],
            "energy_unit": e["unit"],
            "num_molecules": r["num_molecules"],
            "steps": steps,
        }
    m = r["metrics"][f"{FLAGS.target}_mae"]
    return {"value": m["value"], "unit": m["unit"], "num_molecules": r["num_molecules"], "steps": steps}


def fmt_finetune(f) -> str:
    if not f:
        return "–"
    text = f"{f['value']:.2f} {f['unit']}" if FLAGS.molecule else f"{f['value']:.1f} {f['unit']}"
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


def table(rows) -> str:
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
        out[0] += f" {task_name()} test MAE{' (forces)' if FLAGS.molecule else ''} |"
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
            line += f" {fmt_finetune(r.get('finetune'))} |"
        out.append(line)
    return "\n".join(out) + "\n"


def plot(rows, path):
    from georecon_jax.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8), sharey=True)
    keys = ("own_over_other", "dist_own_over_other", "spec_own_over_other")
    for r in rows:
        d = r["z_diagnostic"]
        for ax, key in zip(axes, keys):
            if d.get(key):
                ax.plot(d["sigmas"], d[key], marker="o", ms=3, label=r["variant"])
    names = ("decoder ε-MSE", "distance error of x̂₀", "sorted-distance error of x̂₀")
    for ax, name in zip(axes, names):
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axhline(0.9, color="C3", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="σ (Å)", title=f"{name}: own / other code")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ratio (< 1: the decoder uses z)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    unknown = [v for v in FLAGS.variants if v != "caption" and v not in georecon.VARIANTS]
    if unknown:
        raise app.UsageError(f"unknown variants {unknown}: use caption or {', '.join(georecon.VARIANTS)}")
    os.makedirs(FLAGS.workdir, exist_ok=True)
    rows = []
    scratch = finetune("scratch", "") if FLAGS.finetune_steps else None
    for v in FLAGS.variants:
        work = pretrain(v)
        s = json.load(open(os.path.join(work, "summary.json")))
        row = {
            "variant": v,
            "config": f"georecon.py:{FLAGS.size}" + ("" if v == "caption" else f"+{v}"),
            "steps": s.get("steps"),
            "final_train_loss": s.get("final_train_loss"),
            "reconstruction_rmsd_angstrom": s.get("reconstruction_rmsd_angstrom"),
            "sampler": s.get("sampler", "ddim"),  # of the reconstruction (objective.sampler)
            "z_diagnostic": s.get("z_diagnostic", {}),
        }
        if FLAGS.finetune_steps:
            row["finetune"] = finetune(v, work)
        rows.append(row)
    os.makedirs(FLAGS.out, exist_ok=True)
    meta = {
        "command": "python -m experiments.z_variants " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "seed": "config default (one seed)",
    }
    base = os.path.join(FLAGS.out, FLAGS.size)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "scratch_finetune": scratch, "rows": rows}, f, indent=1)
    text = (
        f"GeoRecon objective variants, size {FLAGS.size}; {meta['date']}, {meta['machine']}; "
        f"`{meta['command']}`\n\n" + table(rows)
    )
    if scratch:
        text += f"\n{task_name()} from scratch, same fine-tuning: {fmt_finetune(scratch)}\n"
    with open(base + ".md", "w") as f:
        f.write(text)
    plot(rows, base + ".png")
    print(text)


if __name__ == "__main__":
    app.run(main)
