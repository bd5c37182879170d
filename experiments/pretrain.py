"""Pretrain an encoder: python -m experiments.pretrain --config=experiments/configs/georecon.py --workdir=runs/x

The objective (``config.objective.name``: georecon, coord, coord_ladder, 3dmrl, or any registered
in ``georecon_jax.objectives``) decides what a batch is: molecular graphs (QM9) or pairs of
molecules (3DMRL). Running the same command again resumes from the newest checkpoint in the workdir.
"""

from experiments import cli

cli.define_config_and_workdir("Where checkpoints, metrics and the config are written.")


def run(config, workdir):
    from georecon_jax.objectives.registry import get_objective

    if get_objective(config).batch_kind == "pairs":
        from georecon_jax.tasks import mrl3d as task
    else:
        from georecon_jax.tasks import pretrain as task
    return task.run(config, workdir)


if __name__ == "__main__":
    cli.run_with_config(run)
