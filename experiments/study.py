"""The studies from one command: the GeoRecon study (``experiments/configs/study.py``: pretraining
arms x fine-tuning tasks x seeds) and, with ``--config=experiments/configs/study_mrl.py:<preset>``,
the 3DMRL study, with the same flags and cell rules.

  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study
  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study \\
      --rebuild_only --out=results/study_cpu        # tables and figures from the cells alone
  python -m experiments.study --config=experiments/configs/study.py:cpu --workdir=runs/study --list

Each cell is its own workdir under WORKDIR and one single command of this codebase; the studies'
cells, metrics and reports are georecon_jax/studies/geo.py and mrl.py. A cell is finished when it
holds ``study_cell.json`` (written after its command succeeded): a finished cell is never run
again; an interrupted one is resumed by its own command (every command resumes from its last
complete checkpoint). So the study may be stopped at any moment (Ctrl-C, SIGTERM, SIGKILL: the
running command dies with it) and the same command finishes it (georecon_jax/studies/cells.py).
A finished cell whose record another command made (the config changed since:
`cells.command_drift`, paths aside) stops the study with a one-line error unless
--keep_changed_records; --list marks it "changed" and the report names it.

At the end (and with --rebuild_only) WORKDIR/results.md, results.json and the figures are written
from the cells' own files: mean ± std over seeds, paired differences with t-intervals over seeds
(georecon_jax/studies/stats.py) and verdict lines generated from them. With
``--config.records=DIR`` each finished cell's small files are copied to DIR as it finishes.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import List

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
flags.DEFINE_bool(
    "keep_changed_records",
    False,
    "Run although finished cells were made by a command other than this config's (they stay finished).",
)
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS

from experiments.configs import study as study_config  # noqa: E402
from experiments.configs import study_mrl as mrl_config  # noqa: E402
from georecon_jax.studies import cells as cells_  # noqa: E402
from georecon_jax.studies import geo, mrl  # noqa: E402


def load_config(file: str, spec: str):
    """The config ``--config=experiments/configs/<file>:<spec>`` loads."""
    return importlib.import_module(f"experiments.configs.{file.removesuffix('.py')}").get_config(spec)


GEORECON = geo.Design(study_config.ARMS, study_config.MAIN_ARMS, study_config.EVERY_TASK_ARMS, load_config)
MRL3D = mrl.Design(mrl_config.ARMS, mrl_config.TASKS, mrl_config.GROUPS, mrl_config.FINETUNE_VARIANTS)


def spec_of(c):
    """(the study's spec module, its design): 3DMRL when ``c.study == "3dmrl"``, else GeoRecon."""
    return (mrl, MRL3D) if c.get("study") == "3dmrl" else (geo, GEORECON)


def build_cells(c, workdir: str) -> List[cells_.Cell]:
    spec, design = spec_of(c)
    return spec.build_cells(c, workdir, design)


def write_results(c, workdir: str, cells: List[cells_.Cell], out_dirs: List[str]) -> dict:
    spec, design = spec_of(c)
    return spec.write_results(c, design, workdir, cells, out_dirs)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    c, workdir = FLAGS.config, FLAGS.workdir

    def stop(signum, frame):  # SIGTERM as Ctrl-C: the running command is told to checkpoint
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        cells = build_cells(c, workdir)
    except ValueError as e:  # an unknown arm or task: one line, no usage text
        sys.exit(f"error: {e}")
    drifted = dict(cells_.drifted_cells(workdir, cells, c.records))
    if FLAGS.list:
        for cell in cells:
            state = "finished" if cells_.cell_record(workdir, cell, c.records) else "to run"
            state = "changed" if cell.name in drifted else state
            print(f"{state:9s} {cell.name}: {' '.join(cell.cmd[2:])}")
            if cell.name in drifted:
                print(f"          made by another command: {'; '.join(drifted[cell.name])}")
        if c.get("rates"):
            todo = [x for x in cells if not cells_.cell_record(workdir, x, c.records)]
            print(geo.expected_time(c, todo))
        return
    if drifted and not FLAGS.rebuild_only and not FLAGS.keep_changed_records:
        name, drift = next(iter(drifted.items()))
        sys.exit(
            f"error: {len(drifted)} finished cells were made by a command other than this config's "
            f"(e.g. {name}: {'; '.join(drift)}): move their records ({c.records or workdir}/<cell>) "
            "and workdirs aside to run them again, or pass --keep_changed_records to keep them"
        )
    if not FLAGS.rebuild_only:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "study_config.json"), "w") as f:
            f.write(c.to_json_best_effort(indent=1))
        cells_.run_study(c, workdir, cells, FLAGS.jobs, c.records)
    write_results(c, workdir, cells, [FLAGS.out] if FLAGS.out else [])


if __name__ == "__main__":
    from experiments.cli import resolve_config_paths

    sys.argv[:] = resolve_config_paths(sys.argv)
    app.run(main)
