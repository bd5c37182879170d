"""Evaluate fine-tuned checkpoints on their test split:

  python -m experiments.evaluate --workdir=runs/ft_homo [--checkpoint=best|latest|<step>]
  python -m experiments.evaluate --workdir=runs/ft_homo,runs/ft_lumo --table=runs/table.md

Writes results.json, results.md and parity plots (PNG) into each workdir (into
<workdir>/eval_<checkpoint> for a checkpoint other than the best); with several workdirs and
--table, also one combined Markdown table. A folder that is not a fine-tuning workdir (a
pretraining run, a pair fine-tuning run, anything else) is refused with one line saying what it is
and where its own results are, before any workdir is evaluated.
"""

from absl import app, flags

from experiments.cli import apply_accelerator_settings, exit_with_error, parse_flags, setup_logging

FLAGS = flags.FLAGS
flags.DEFINE_list("workdir", None, "Fine-tuning workdir(s), comma-separated.")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
flags.DEFINE_string("split", "test", "'test' or 'validation'.")
flags.DEFINE_string("table", None, "Also write one Markdown table of all workdirs here.")
flags.DEFINE_string(
    "matmul_precision", None, "float32 matrix-product precision; default: the first workdir's config's."
)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from georecon_jax.tasks import evaluation

    try:
        configs = [evaluation.check_finetune_workdir(w) for w in FLAGS.workdir]  # all, before the first runs
        precision = FLAGS.matmul_precision or configs[0].get("matmul_precision")
        try:
            apply_accelerator_settings(dict(configs[0], matmul_precision=precision))
        except ValueError as e:  # an unknown precision, named
            exit_with_error(e)
        results = [evaluation.evaluate(w, FLAGS.checkpoint, FLAGS.split) for w in FLAGS.workdir]
    except (evaluation.WorkdirError, evaluation.CheckpointError) as e:
        exit_with_error(e)
    table = evaluation.markdown_table(results)
    print(table)
    if FLAGS.table:
        with open(FLAGS.table, "w") as f:
            f.write(table)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
