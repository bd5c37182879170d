"""Fine-tune the 2D relational model on a pair task and write results.json / results.md:

  python -m experiments.finetune_pairs --config=experiments/configs/mrl_finetune.py:quick \
      --config.data.preset=freesolv --config.init_from=runs/mrl3d_quick --workdir=runs/ft_freesolv

Each split is its own run in <workdir>/splits/<split>/ with checkpoints: running the same command
again skips the finished splits and resumes the interrupted one.
"""

from experiments import cli

cli.define_config_and_workdir("Where the splits' runs and the results table are written.")


def run(config, workdir):
    from georecon_jax.tasks import finetune_pairs

    return finetune_pairs.run(config, workdir)


if __name__ == "__main__":
    cli.run_with_config(run)
