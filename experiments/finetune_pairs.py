"""Fine-tune the 2D relational model on a pair task and write results.json / results.md:

  python -m experiments.finetune_pairs --config=experiments/configs/mrl_finetune.py:quick \
      --config.data.preset=freesolv --config.init_from=runs/mrl3d_quick --workdir=runs/ft_freesolv

Each split is its own run in <workdir>/splits/<split>/ with checkpoints: running the same command
again skips the finished splits and resumes the interrupted one.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import setup_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the splits' runs and the results table are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.tasks.finetune_pairs import run
    run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
