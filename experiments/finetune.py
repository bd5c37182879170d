"""Fine-tune an encoder on QM9 or MD17:

  python -m experiments.finetune --config=experiments/configs/finetune_qm9.py --config.target=homo \
      --config.pretrained=runs/georecon --workdir=runs/ft_homo
  python -m experiments.finetune --config=experiments/configs/finetune_md17.py:quick \
      --config.data.data_dir=../shared/data/rmd17 --workdir=runs/ft_aspirin

Running the same command again resumes from the newest checkpoint in the workdir.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import setup_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (path[:size]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, plots and results are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.tasks import finetune
    finetune.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
