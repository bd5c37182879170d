"""Fine-tune an encoder on QM9 or MD17:

  python -m experiments.finetune --config=experiments/configs/finetune_qm9.py --config.target=homo \
      --config.pretrained=runs/georecon --workdir=runs/ft_homo
  python -m experiments.finetune --config=experiments/configs/finetune_md17.py:quick \
      --config.data.data_dir=../shared/data/rmd17 --workdir=runs/ft_aspirin

Running the same command again resumes from the newest checkpoint in the workdir.
"""

from experiments import cli

cli.define_config_and_workdir("Where checkpoints, metrics, plots and results are written.")


def run(config, workdir):
    from georecon_jax.tasks import finetune

    return finetune.run(config, workdir)


if __name__ == "__main__":
    cli.run_with_config(run)
