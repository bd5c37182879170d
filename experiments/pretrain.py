"""Pretrain an encoder: python -m experiments.pretrain --config=experiments/configs/georecon.py --workdir=runs/x

The objective (``config.objective.name``: georecon, coord, coord_ladder, 3dmrl, or any registered
in ``georecon_jax.objectives``) is built once and names the job that trains it (``objective.task``:
``georecon_jax.tasks.pretrain`` on molecular graphs, ``georecon_jax.tasks.mrl3d`` on pairs of
molecules). Running the same command again resumes from the newest checkpoint in the workdir.
"""

import importlib

from experiments import cli

cli.define_config_and_workdir("Where checkpoints, metrics and the config are written.")


def run(config, workdir):
    from georecon_jax.objectives.registry import get_objective

    objective = get_objective(config)
    task = importlib.import_module(f"georecon_jax.tasks.{objective.task}")
    return task.run(config, workdir, objective=objective)


if __name__ == "__main__":
    cli.run_with_config(run)
