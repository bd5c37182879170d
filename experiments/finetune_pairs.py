"""Fine-tune the 2D relational model on a pair task and write results.json / results.md:

  python -m experiments.finetune_pairs --config=experiments/configs/mrl_finetune.py:quick \
      --config.data.preset=freesolv --config.init_from=runs/mrl3d_quick --workdir=runs/ft_freesolv
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the config and the results table are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    from georecon_jax.workflows.finetune_pairs import run
    run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
