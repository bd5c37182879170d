"""Pretrain an encoder: python -m experiments.pretrain --config=experiments/configs/georecon.py --workdir=runs/x

The objective (``config.objective.name``: georecon, coord, coord_ladder, 3dmrl, or any registered
in ``georecon_jax.objectives``) decides what a batch is: molecular graphs (QM9) or pairs of
molecules (3DMRL). Running the same command again resumes from the newest checkpoint in the workdir.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import setup_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.objectives.registry import get_objective
    if get_objective(FLAGS.config).batch_kind == "pairs":
        from georecon_jax.tasks import mrl3d as task
    else:
        from georecon_jax.tasks import pretrain as task
    task.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
