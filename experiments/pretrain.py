"""Pretrain an encoder: python -m experiments.pretrain --config=experiments/configs/georecon.py --workdir=runs/x

Running the same command again resumes from the newest checkpoint in the workdir.
"""
import importlib

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the config are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    # config.workflow names the module of georecon_jax.workflows that runs this kind of pretraining.
    workflow = importlib.import_module(f"georecon_jax.workflows.{FLAGS.config.get('workflow', 'pretrain')}")
    workflow.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
